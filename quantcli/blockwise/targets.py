"""Which nodes can take 4-bit block-wise weights, and their weights as rows of output channels.

A MatMul whose ``B`` is a 2-D float initializer, and a Gemm with ``alpha = beta = 1``,
``transA = 0`` and a constant 2-D ``B`` (its ``C`` an optional 1-D bias): both are ``y = x W^T (+ b)``
with ``W`` ``[N, K]`` and the reduction along K, the form MatMulNBits computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.graph.io import unmap

__all__ = ["BlockTarget", "block_targets"]


@dataclass(frozen=True)
class BlockTarget:
    """One node whose weight can be written in 4 bits: its activation input, its weight
    initializer, the weight's K and N, and whether the initializer is already ``[N, K]``
    (a Gemm with ``transB = 1``)."""

    node: str
    op_type: str
    activation: str
    weight: str
    k: int
    n: int
    transposed: bool

    def rows(self, graph: ir.Graph) -> npt.NDArray[np.float32]:
        """The weight as ``[N, K]`` float32 (read from the initializer; a copy). A weight in
        external data is unmapped once copied, so reading every layer in turn never holds more
        than the layer at hand."""
        tensor = graph.initializers[self.weight].const_value
        assert tensor is not None
        values = np.asarray(tensor.numpy(), np.float32)
        rows = np.array(values if self.transposed else values.T, order="C")
        del values
        unmap(tensor)
        return rows


def _float_matrix(value: ir.Value | None) -> ir.TensorProtocol | None:
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    tensor = value.const_value
    return tensor if tensor.dtype == ir.DataType.FLOAT and len(tensor.shape) == 2 else None


def _gemm_ok(node: ir.Node) -> bool:
    def attr(name: str, default: float) -> float:
        found = node.attributes.get(name)
        return default if found is None else float(found.value)

    bias = node.inputs[2] if len(node.inputs) > 2 else None
    bias_ok = bias is None or (bias.shape is not None and len(bias.shape) == 1)
    return attr("alpha", 1.0) == 1.0 and attr("beta", 1.0) == 1.0 and attr("transA", 0) == 0 and bias_ok


def block_targets(graph: ir.Graph) -> list[BlockTarget]:
    """Every MatMul and Gemm of ``graph`` (not its subgraphs) that can take block-wise weights,
    in graph order. Nodes must be named (quantcli names every node it loads)."""
    found = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
            continue
        activation = node.inputs[0]
        tensor = _float_matrix(node.inputs[1])
        if activation is None or tensor is None or (node.op_type == "Gemm" and not _gemm_ok(node)):
            continue
        transposed = node.op_type == "Gemm" and bool(
            node.attributes["transB"].value if "transB" in node.attributes else 0
        )
        rows, columns = tensor.shape.numpy()
        k, n = (columns, rows) if transposed else (rows, columns)
        weight = node.inputs[1]
        assert weight is not None and node.name and activation.name and weight.name
        found.append(BlockTarget(node.name, node.op_type, activation.name, weight.name, k, n, transposed))
    return found
