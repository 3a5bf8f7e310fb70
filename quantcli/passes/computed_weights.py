"""Replace a recurrent layer's weight computed from constants by the constant it computes."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_ir as ir

from quantcli.graph.branches import owner, planned_nodes
from quantcli.graph.io import open_session
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass

__all__ = ["FoldComputedWeightsPass"]

# The weight inputs (W, R, B) of the recurrent ops.
_WEIGHT_SLOTS = {"LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3)}
# Ops that only move or convert data: a chain of them over constants is a constant.
_MOVEMENT = frozenset(
    {
        "Constant",
        "Slice",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Transpose",
        "Gather",
        "Identity",
        "Cast",
        "Split",
    }
)
# Chains longer than this are not folded (a weight is reordered by a handful of nodes).
_MAX_CHAIN = 64


def _chain(value: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``value`` from constants alone, in order, or None when some input on
    the way is computed from data (or by an op that is not plain data movement)."""
    nodes: dict[int, ir.Node] = {}

    def visit(current: ir.Value) -> bool:
        if current.is_graph_input():
            return False
        if current.const_value is not None:
            return True
        producer = current.producer()
        if producer is None or producer.domain not in ("", "ai.onnx"):
            return False
        if id(producer) in nodes:
            return True
        if producer.op_type not in _MOVEMENT or len(nodes) >= _MAX_CHAIN:
            return False
        if not all(v is None or visit(v) for v in producer.inputs):
            return False
        nodes[id(producer)] = producer
        return True

    return list(nodes.values()) if visit(value) else None


def _leaves(chain: list[ir.Node]) -> list[ir.Value]:
    found: dict[int, ir.Value] = {}
    for node in chain:
        for value in node.inputs:
            if value is not None and value.const_value is not None:
                found.setdefault(id(value), value)
    return list(found.values())


def _evaluate(model: ir.Model, chain: list[ir.Node], value: ir.Value) -> ir.TensorProtocol:
    """``value`` computed by onnxruntime from the chain's constants."""
    graph = onnx.GraphProto(name="computed_weight")
    for leaf in _leaves(chain):
        assert leaf.const_value is not None
        tensor = ir.serde.serialize_tensor(leaf.const_value)
        tensor.name = leaf.name or ""
        graph.initializer.append(tensor)
    graph.node.extend(ir.serde.serialize_node(node) for node in chain)
    output = onnx.ValueInfoProto()
    ir.serde.serialize_value_into(output, value)
    graph.output.append(output)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items() if d in ("", "ai.onnx")]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    (array,) = open_session(proto).run([value.name or ""], {})
    return ir.tensor(array, name=value.name)


class FoldComputedWeightsPass(MainGraphPass[ir.Value]):
    """Give an LSTM, GRU or RNN the constant its weight input is computed from.

    A hand-built graph may reorder PyTorch's gates at run time (Slice and Concat of the stored
    ``weight_ih``, then Unsqueeze): the LSTM then reads a computed tensor, which the plan cannot
    store in int8 and DynamicQuantizeLSTM cannot take. onnxruntime folds such a chain at load
    time anyway; folding it here (evaluated by onnxruntime on the chain's constants alone) makes
    the weight a constant the plan sees. The chain's nodes and the constants they read, once
    nothing else reads them, are removed with it, so the model stores the weight once (two
    branches that reorder one weight alike share the folded copy).
    Only chains of data-movement ops over constants are folded, and only for the recurrent ops,
    whose exporters write such chains; other weights are left as the exporter wrote them.
    """

    subgraphs = (
        "If branches too: the folded weight becomes an initializer of the graph holding the stored "
        "weight it is computed from (the layer's or an enclosing one), once per distinct value"
    )

    def __init__(self) -> None:
        super().__init__()
        self._model: ir.Model | None = None
        # Weights folded so far, by (graph, dtype, shape, bytes): one copy of each per graph.
        self._folded: dict[tuple[int, int, tuple[int, ...], bytes], ir.Value] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._model = model
        self._folded = {}
        return super().call(model)

    def targets(self, graph: ir.Graph) -> Iterator[ir.Value]:
        for node in list(planned_nodes(graph)):
            slots = _WEIGHT_SLOTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
            for index in slots:
                value = node.inputs[index] if index < len(node.inputs) else None
                if value is not None and value.const_value is None and value.producer() is not None:
                    yield value

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: ir.Value) -> bool:
        chain = _chain(target)
        if not chain or self._model is None or target.is_graph_output():
            return False
        tensor = _evaluate(self._model, chain, target)
        # Where the stored weight lives (it encloses the layer): layers of sibling branches that
        # reorder the same weight the same way then share one folded copy.
        largest = max(_leaves(chain), key=lambda leaf: leaf.const_value.size if leaf.const_value else 0)
        holder = largest.graph or owner(target) or graph
        array = tensor.numpy()
        key = (id(holder), int(tensor.dtype), tuple(array.shape), array.tobytes())
        folded = self._folded.get(key)
        if folded is None:
            name = target.name or names.fresh("computed_weight")
            target.name = names.fresh(f"{name}_computed")
            folded = ir.Value(
                name=name,
                shape=ir.Shape(list(array.shape)),
                type=ir.TensorType(tensor.dtype),
                const_value=tensor,
            )
            holder.register_initializer(folded)
            self._folded[key] = folded
        target.replace_all_uses_with(folded)
        _remove_unused(chain)
        return True


def _remove_unused(chain: list[ir.Node]) -> None:
    """Remove the chain's nodes nothing reads any more, last first, then the initializers they
    alone read."""
    leaves = _leaves(chain)
    for node in reversed(chain):
        graph = node.graph
        if graph is not None and not any(out.uses() or out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)
    for leaf in leaves:
        graph = leaf.graph
        if graph is not None and leaf.is_initializer() and not leaf.uses() and not leaf.is_graph_output():
            graph.initializers.pop(leaf.name or "")
