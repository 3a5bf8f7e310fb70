"""Leave out the zero point of a stored constant's DequantizeLinear when it is all zeros."""

from __future__ import annotations

import onnx_ir as ir

from quantcli.graph.branches import planned_nodes
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, produced_by
from quantcli.target import ORT_CPU, Target

__all__ = ["OmitZeroPointsPass"]


def _all_zero_constant(value: ir.Value | None) -> bool:
    tensor = None if value is None else value.const_value
    return tensor is not None and not tensor.numpy().any()


class OmitZeroPointsPass(MainGraphPass[ir.Node]):
    """Drop the all-zero zero point of every DequantizeLinear that reads a constant (a symmetric
    int8 weight, an int32 bias, a stored table).

    ONNX's default zero point is 0 of the quantized input's own type, so the graph means exactly
    what it meant. The bytes are what changes: a per-channel weight or bias stores one zero per
    channel (a 192-channel Conv: 192 int8 and 768 int32 bytes), which on a small CNN is a point of
    its size ratio. A reader in the target's ``explicit_zero_point_ops`` keeps it (onnxruntime
    fuses a Gemm into QGemm only with it written out). A Q/DQ pair on an activation keeps its
    zero point: QuantizeLinear's output type comes from it. Run last, after the passes that read
    weights' zero points (dynamic MatMul, LSTM, gathered rows).
    """

    subgraphs = "If branches: their DequantizeLinear nodes too (weights quantized where they live)"

    def __init__(self, target: Target = ORT_CPU) -> None:
        super().__init__()
        self.keep_for = target.explicit_zero_point_ops
        self.enabled = target.omits_zero_points

    def _read_by_kept(self, node: ir.Node) -> bool:
        return any(use.node.op_type in self.keep_for for use in node.outputs[0].uses())

    def targets(self, graph: ir.Graph) -> list[ir.Node]:
        if not self.enabled:
            return []
        return [
            node
            for node in planned_nodes(graph)
            if produced_by(node.outputs[0], "DequantizeLinear") is node
            and len(node.inputs) == 3
            and node.inputs[0] is not None
            and node.inputs[0].const_value is not None
            and _all_zero_constant(node.inputs[2])
            and not self._read_by_kept(node)
        ]

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: ir.Node) -> bool:
        target.resize_inputs(2)
        return True
