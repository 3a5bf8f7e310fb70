"""LSTM with int8 weights as onnxruntime's DynamicQuantizeLSTM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from quantcli.graph.branches import owner
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, producers
from quantcli.passes._qdq import add_initializer, constant_array, quantized_weight, require_quantized
from quantcli.plan import LstmSpec

__all__ = ["MICROSOFT_DOMAIN", "QuantizeLSTMDynamicallyPass"]

MICROSOFT_DOMAIN = "com.microsoft"

# LSTM attributes DynamicQuantizeLSTM takes as they are (it has no ``layout``; the plan keeps
# batch-first LSTMs in their DequantizeLinear form).
_ATTRIBUTES = (
    "activation_alpha",
    "activation_beta",
    "activations",
    "clip",
    "direction",
    "hidden_size",
    "input_forget",
)


class QuantizeLSTMDynamicallyPass(MainGraphPass[ir.Node]):
    """Replace each planned LSTM by com.microsoft DynamicQuantizeLSTM on its int8 W and R.

    Runs after QuantizeInitializersPass (``requires`` checks it), whose int8 tensor, scale and
    zero point it reads from the DequantizeLinear in front of W and R (left for
    RemoveUnusedNodesPass when nothing else reads it). The kernel wants each weight as
    [directions, size, 4 x hidden], the transpose of the ONNX layout, and its scale per direction
    ([directions]) or per direction and gate row ([directions, 4 x hidden]): the plan's per-tensor
    scale or per-row scale (axis 1, shared by the directions) is repeated to that shape. A weight
    shared by several LSTMs is transposed once.
    """

    def __init__(self, specs: Sequence[LstmSpec]) -> None:
        super().__init__()
        self.specs = tuple(specs)

    def requires(self, model: ir.Model) -> None:
        weights: dict[str, ir.Value | None] = {}
        for spec, node in zip(self.specs, producers(model.graph, self._outputs()), strict=True):
            found = [v.name if v is not None else None for v in node.inputs[1:3]]
            if node.op_type != "LSTM" or found != [spec.weight, spec.recurrence]:
                raise ir.passes.PreconditionError(f"'{node.name}' reads {found}, not the planned W and R")
            weights.update({spec.weight: node.inputs[1], spec.recurrence: node.inputs[2]})
        require_quantized(type(self).__name__, weights)

    def _outputs(self) -> list[str]:
        return [spec.output for spec in self.specs]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # Kernel-layout weights made so far in this run, by weight name (shared weights once).
        self._converted: dict[str, tuple[ir.Value, ir.Value, ir.Value]] = {}
        result = super().call(model)
        if result.modified and MICROSOFT_DOMAIN not in model.opset_imports:
            model.opset_imports[MICROSOFT_DOMAIN] = 1
        return result

    def targets(self, graph: ir.Graph) -> Iterator[ir.Node]:
        return producers(graph, self._outputs())

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: ir.Node) -> bool:
        weights = [self._kernel_weight(graph, names, target.inputs[i], self._converted) for i in (1, 2)]
        self._replace(graph, names, target, weights)
        return True

    @staticmethod
    def _kernel_weight(
        graph: ir.Graph,
        names: NameAllocator,
        value: ir.Value | None,
        converted: dict[str, tuple[ir.Value, ir.Value, ir.Value]],
    ) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(int8 [D, size, 4H] weight, scale, zero point) in DynamicQuantizeLSTM's layout."""
        assert value is not None
        name = value.name or ""
        # Beside the weight's DequantizeLinear: an LSTM of another If branch may read it too.
        graph = owner(value) or graph
        if name not in converted:
            weight, scale, zero_point = quantized_weight(value)
            integers = constant_array(weight)
            directions, rows = integers.shape[0], integers.shape[1]
            shape = (directions,) if constant_array(scale).size == 1 else (directions, rows)
            converted[name] = (
                add_initializer(
                    graph, names, f"{name}_quantized_t", np.ascontiguousarray(integers.transpose(0, 2, 1))
                ),
                add_initializer(
                    graph, names, f"{name}_scale_lstm", np.broadcast_to(constant_array(scale), shape).copy()
                ),
                add_initializer(
                    graph,
                    names,
                    f"{name}_zero_point_lstm",
                    np.broadcast_to(constant_array(zero_point), shape).copy(),
                ),
            )
        return converted[name]

    @staticmethod
    def _replace(
        graph: ir.Graph,
        names: NameAllocator,
        node: ir.Node,
        weights: list[tuple[ir.Value, ir.Value, ir.Value]],
    ) -> None:
        (w, w_scale, w_zero), (r, r_scale, r_zero) = weights
        inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
        # An omitted optional output (no name) stays omitted.
        outputs = [
            ir.Value(name=names.fresh(f"{out.name}_lstm") if out.name else "", shape=out.shape, type=out.type)
            for out in node.outputs
        ]
        replacement = ir.Node(
            MICROSOFT_DOMAIN,
            "DynamicQuantizeLSTM",
            [inputs[0], w, r, *inputs[3:8], w_scale, w_zero, r_scale, r_zero],
            [a for key, a in node.attributes.items() if key in _ATTRIBUTES],
            outputs=outputs,
            name=names.fresh(f"{node.name}_dynamic"),
        )
        graph.insert_before(node, replacement)
        originals = list(node.outputs)
        for original, new in zip(originals, outputs, strict=True):
            original.replace_all_uses_with(new, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        for original, new in zip(originals, outputs, strict=True):
            new.name = original.name
