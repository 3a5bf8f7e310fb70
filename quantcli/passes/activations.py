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
            use.node.replace_input_with(use.idx, output)
        if as_output:
            for index, out in enumerate(graph.outputs):
                if out is value:
                    graph.outputs[index] = output
        return True
