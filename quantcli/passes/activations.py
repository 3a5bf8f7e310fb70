"""Insert QuantizeLinear -> DequantizeLinear pairs on activation tensors."""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, values_by_name
from quantcli.passes._qdq import add_parameters, dequantize_node, quantize_node
from quantcli.scheme import QParams

__all__ = ["InsertActivationQDQPass"]


class InsertActivationQDQPass(MainGraphPass[tuple[ir.Value, QParams]]):
    """Put a Q/DQ pair right after each named tensor; every consumer then reads the DQ output.

    For a tensor in ``replace_outputs`` the pair also replaces it as graph output, keeping the
    output's name: onnxruntime fuses a producer into an integer kernel only when its float output
    feeds nothing but the QuantizeLinear.

    If branches: the pair sits in the graph that defines the tensor (``scope``), read there; each
    branch reading it as an outer value gets a pair of its own at its start, with the same
    parameters, so its integer kernels fuse (a branch's float readers read it quantized, as
    float readers in the main graph do).
    """

    def __init__(self, params: Mapping[str, QParams], replace_outputs: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.params = dict(params)
        self.replace_outputs = replace_outputs

    def requires(self, model: ir.Model) -> None:
        missing = sorted(set(self.params) - set(values_by_name(model.graph)))
        if missing:
            raise ir.passes.PreconditionError(f"no graph input or node output is named '{missing[0]}'")

    def targets(self, graph: ir.Graph) -> list[tuple[ir.Value, QParams]]:
        values = values_by_name(graph)
        return [(values[name], self.params[name]) for name in sorted(self.params)]

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: tuple[ir.Value, QParams]) -> bool:
        value, qparams = target
        name = value.name or ""
        uses = list(value.uses())
        as_output = name in self.replace_outputs and value.is_graph_output()
        if as_output:
            value.name = names.fresh(f"{name}_before_quantize")
        parameters = add_parameters(graph, names, name, qparams)
        q_node, quantized = quantize_node(names, value, parameters)
        dq_node, output = dequantize_node(
            names, quantized, parameters, base=name, output_name=name if as_output else None
        )
        producer = value.producer()
        if producer is None:
            first = next(iter(graph))
            graph.insert_before(first, [q_node, dq_node])
        else:
            graph.insert_after(producer, [q_node, dq_node])
        for use in uses:
            if use.node.graph is graph or use.node.graph is None:
                use.node.replace_input_with(use.idx, output)
        outer = [(u.node, u.idx) for u in uses if u.node.graph not in (graph, None)]
        _pair_in_branches(names, value, qparams, outer)
        if as_output:
            for index, out in enumerate(graph.outputs):
                if out is value:
                    graph.outputs[index] = output
        return True


def _pair_in_branches(
    names: NameAllocator, value: ir.Value, qparams: QParams, uses: list[tuple[ir.Node, int]]
) -> None:
    """Readers of ``value`` inside If branches (an outer value they read) get a pair of their own,
    at the start of their branch: onnxruntime fuses a DequantizeLinear into the integer kernel
    that reads it only when both are in the same graph."""
    by_graph: dict[int, tuple[ir.Graph, list[tuple[ir.Node, int]]]] = {}
    for node, index in uses:
        branch = node.graph
        assert branch is not None
        by_graph.setdefault(id(branch), (branch, []))[1].append((node, index))
    for branch, readers in by_graph.values():
        base = value.name or "tensor"
        parameters = add_parameters(branch, names, base, qparams)
        q_node, quantized = quantize_node(names, value, parameters)
        dq_node, output = dequantize_node(names, quantized, parameters, base=base)
        branch.insert_before(next(iter(branch)), [q_node, dq_node])
        for node, index in readers:
            node.replace_input_with(index, output)
