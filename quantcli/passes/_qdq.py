"""Building QuantizeLinear/DequantizeLinear nodes and their parameter initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.scheme import QParams, QuantType

__all__ = ["add_initializer", "dequantize_node", "quantize_node"]

_IR_TYPES = {
    QuantType.UINT8: ir.DataType.UINT8,
    QuantType.INT8: ir.DataType.INT8,
    QuantType.INT32: ir.DataType.INT32,
}


def add_initializer(graph: ir.Graph, names: NameAllocator, base: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer named after ``base``."""
    name = names.fresh(base)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _parameters(
    graph: ir.Graph, names: NameAllocator, base: str, qparams: QParams
) -> tuple[ir.Value, ir.Value]:
    scale = add_initializer(graph, names, f"{base}_scale", qparams.scale.astype(np.float32))
    zero_point = add_initializer(graph, names, f"{base}_zero_point", qparams.zero_point)
    return scale, zero_point


def _axis_attributes(qparams: QParams) -> dict[str, ir.Attr]:
    if qparams.axis is None:
        return {}
    return {"axis": ir.AttrInt64("axis", qparams.axis)}


def quantize_node(
    graph: ir.Graph, names: NameAllocator, value: ir.Value, qparams: QParams
) -> tuple[ir.Node, ir.Value]:
    """A QuantizeLinear node reading ``value``, and its integer output."""
    base = value.name or "tensor"
    scale, zero_point = _parameters(graph, names, base, qparams)
    out = ir.Value(
        name=names.fresh(f"{base}_quantized"), shape=value.shape, type=ir.TensorType(_IR_TYPES[qparams.dtype])
    )
    node = ir.Node(
        "",
        "QuantizeLinear",
        [value, scale, zero_point],
        _axis_attributes(qparams),
        outputs=[out],
        name=names.fresh(f"{base}_QuantizeLinear"),
    )
    return node, out


def dequantize_node(
    graph: ir.Graph,
    names: NameAllocator,
    quantized: ir.Value,
    qparams: QParams,
    *,
    base: str,
    output_name: str | None = None,
) -> tuple[ir.Node, ir.Value]:
    """A DequantizeLinear node reading ``quantized``, and its float output.

    Parameters get their own initializers even when a QuantizeLinear with equal values exists:
    onnxruntime compares parameter values, not names, and separate initializers keep each node
    self-contained for later passes.
    """
    scale, zero_point = _parameters(graph, names, f"{base}_dq" if output_name is None else base, qparams)
    out = ir.Value(
        name=output_name or names.fresh(f"{base}_dequantized"),
        shape=quantized.shape,
        type=ir.TensorType(ir.DataType.FLOAT),
    )
    node = ir.Node(
        "",
        "DequantizeLinear",
        [quantized, scale, zero_point],
        _axis_attributes(qparams),
        outputs=[out],
        name=names.fresh(f"{base}_DequantizeLinear"),
    )
    return node, out
