"""Building QuantizeLinear/DequantizeLinear nodes and their parameter initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.scheme import QParams, QuantType

__all__ = [
    "QDQParameters",
    "add_initializer",
    "add_parameters",
    "constant_array",
    "dequantize_node",
    "ir_type",
    "quantize_node",
    "quantized_weight",
]

_IR_TYPES = {
    QuantType.UINT4: ir.DataType.UINT4,
    QuantType.INT4: ir.DataType.INT4,
    QuantType.UINT8: ir.DataType.UINT8,
    QuantType.INT8: ir.DataType.INT8,
    QuantType.UINT16: ir.DataType.UINT16,
    QuantType.INT16: ir.DataType.INT16,
    QuantType.INT32: ir.DataType.INT32,
}


def ir_type(dtype: QuantType) -> ir.DataType:
    """The ONNX element type of ``dtype``'s codes (4-bit codes are held wider in numpy)."""
    return _IR_TYPES[dtype]


# (scale, zero point) initializers shared by the Q and DQ nodes of one tensor.
QDQParameters = tuple[ir.Value, ir.Value]


def add_initializer(
    graph: ir.Graph, names: NameAllocator, base: str, array: np.ndarray, dtype: QuantType | None = None
) -> ir.Value:
    """Register ``array`` as a new initializer named after ``base``; ``dtype`` gives the ONNX type
    of integer codes whose numpy array is wider (4-bit codes in an int8 array)."""
    name = names.fresh(base)
    tensor = (
        ir.tensor(array, name=name) if dtype is None else ir.tensor(array, dtype=ir_type(dtype), name=name)
    )
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def add_parameters(graph: ir.Graph, names: NameAllocator, base: str, qparams: QParams) -> QDQParameters:
    """Scale and zero-point initializers for one tensor; its Q and DQ nodes both read them.

    The zero point is always explicit, even where it is ONNX's default (int8 0): onnxruntime's
    QDQ selectors do not fuse a DequantizeLinear without one (tested).
    """
    scale = add_initializer(graph, names, f"{base}_scale", qparams.scale.astype(np.float32))
    zero_point = add_initializer(graph, names, f"{base}_zero_point", qparams.zero_point, qparams.dtype)
    return scale, zero_point


def _axis_attributes(qparams: QParams) -> dict[str, ir.Attr]:
    attributes = {}
    if qparams.axis is not None:
        attributes["axis"] = ir.AttrInt64("axis", qparams.axis)
    if qparams.block_size is not None:
        attributes["block_size"] = ir.AttrInt64("block_size", qparams.block_size)
    return attributes


def _node(
    op_type: str,
    names: NameAllocator,
    source: ir.Value,
    *,
    parameters: QDQParameters,
    qparams: QParams,
    out: ir.Value,
    base: str,
) -> ir.Node:
    return ir.Node(
        "",
        op_type,
        [source, *parameters],
        _axis_attributes(qparams),
        outputs=[out],
        name=names.fresh(f"{base}_{op_type}"),
    )


def quantize_node(
    names: NameAllocator, value: ir.Value, parameters: QDQParameters, qparams: QParams
) -> tuple[ir.Node, ir.Value]:
    """A QuantizeLinear node reading ``value``, and its integer output."""
    base = value.name or "tensor"
    out = ir.Value(
        name=names.fresh(f"{base}_quantized"), shape=value.shape, type=ir.TensorType(ir_type(qparams.dtype))
    )
    return _node(
        "QuantizeLinear", names, value, parameters=parameters, qparams=qparams, out=out, base=base
    ), out


def dequantize_node(
    names: NameAllocator,
    quantized: ir.Value,
    parameters: QDQParameters,
    qparams: QParams,
    *,
    base: str,
    output_name: str | None = None,
) -> tuple[ir.Node, ir.Value]:
    """A DequantizeLinear node reading ``quantized``, and its float output."""
    out = ir.Value(
        name=output_name or names.fresh(f"{base}_dequantized"),
        shape=quantized.shape,
        type=ir.TensorType(ir.DataType.FLOAT),
    )
    return _node(
        "DequantizeLinear", names, quantized, parameters=parameters, qparams=qparams, out=out, base=base
    ), out


def quantized_weight(value: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(integer weight, scale, zero point) behind the DequantizeLinear that produces ``value``."""
    producer = value.producer()
    assert producer is not None and producer.op_type == "DequantizeLinear", value.name
    weight, scale, zero_point = producer.inputs
    assert weight is not None and scale is not None and zero_point is not None
    return weight, scale, zero_point


def constant_array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None, value.name
    return value.const_value.numpy()
