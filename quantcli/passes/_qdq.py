"""Building QuantizeLinear/DequantizeLinear nodes and their parameter initializers."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import produced_by
from quantcli.scheme import QParams, QuantType

__all__ = [
    "QDQParameters",
    "add_initializer",
    "add_parameters",
    "add_tensor",
    "constant_array",
    "dequantize_node",
    "dequantize_qparams",
    "dequantized_constant",
    "ir_type",
    "quantize_node",
    "quantized_weight",
    "require_quantized",
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


_QUANT_TYPES = {ir_dtype: dtype for dtype, ir_dtype in _IR_TYPES.items()}


def _default_type(node: ir.Node) -> QuantType | None:
    source = node.inputs[0] if node.inputs else None
    if node.op_type == "DequantizeLinear" and source is not None and source.dtype is not None:
        return _QUANT_TYPES.get(source.dtype)
    return QuantType.UINT8


def dequantize_qparams(node: ir.Node) -> QParams | None:
    """The parameters a DequantizeLinear (or QuantizeLinear) node applies, or None when its scale
    or zero point is not a constant of a type quantcli knows. Without a zero point, ONNX's
    default: zero of the integer input's type (a DequantizeLinear), or uint8 zero (a
    QuantizeLinear, whose input is float)."""
    scale = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    zero_tensor = None if zero is None else zero.const_value
    if scale is None or (zero is not None and zero_tensor is None):
        return None
    dtype = _QUANT_TYPES.get(zero_tensor.dtype) if zero_tensor is not None else _default_type(node)
    if dtype is None:
        return None
    scales = np.asarray(scale.numpy(), np.float32)
    zero_points = (
        np.zeros(scales.shape, dtype.numpy_dtype)
        if zero_tensor is None
        else zero_tensor.numpy().astype(dtype.numpy_dtype)
    )
    axis = node.attributes.get_int("axis", 1) if scales.ndim else None
    block_size = node.attributes.get_int("block_size", 0) or None
    return QParams(scales, zero_points, axis, dtype, block_size)


class QDQParameters(NamedTuple):
    """The scale and zero-point initializers shared by the Q and DQ nodes of one tensor, and the
    parameters they hold."""

    scale: ir.Value
    zero_point: ir.Value
    qparams: QParams


def add_initializer(
    graph: ir.Graph, names: NameAllocator, base: str, array: np.ndarray, dtype: QuantType | None = None
) -> ir.Value:
    """Register ``array`` as a new initializer named after ``base``; ``dtype`` gives the ONNX type
    of integer codes whose numpy array is wider (4-bit codes in an int8 array)."""
    tensor = ir.tensor(array) if dtype is None else ir.tensor(array, dtype=ir_type(dtype))
    return add_tensor(graph, names, base, tensor)


def add_tensor(graph: ir.Graph, names: NameAllocator, base: str, tensor: ir.TensorProtocol) -> ir.Value:
    """Register ``tensor`` (in memory, or external: a weight written out as it was made) as a new
    initializer named after ``base``."""
    name = names.fresh(base)
    tensor.name = name
    value = ir.Value(
        name=name, shape=ir.Shape(tensor.shape.numpy()), type=ir.TensorType(tensor.dtype), const_value=tensor
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
    return QDQParameters(scale, zero_point, qparams)


def _axis_attributes(qparams: QParams) -> dict[str, ir.Attr]:
    attributes = {}
    if qparams.axis is not None:
        attributes["axis"] = ir.AttrInt64("axis", qparams.axis)
    if qparams.block_size is not None:
        attributes["block_size"] = ir.AttrInt64("block_size", qparams.block_size)
    return attributes


def _node(op_type: str, name: str, source: ir.Value, parameters: QDQParameters, out: ir.Value) -> ir.Node:
    return ir.Node(
        "",
        op_type,
        [source, parameters.scale, parameters.zero_point],
        _axis_attributes(parameters.qparams),
        outputs=[out],
        name=name,
    )


def quantize_node(
    names: NameAllocator, value: ir.Value, parameters: QDQParameters
) -> tuple[ir.Node, ir.Value]:
    """A QuantizeLinear node reading ``value``, and its integer output."""
    base = value.name or "tensor"
    out = ir.Value(
        name=names.fresh(f"{base}_quantized"),
        shape=value.shape,
        type=ir.TensorType(ir_type(parameters.qparams.dtype)),
    )
    return _node("QuantizeLinear", names.fresh(f"{base}_QuantizeLinear"), value, parameters, out), out


def dequantize_node(
    names: NameAllocator,
    quantized: ir.Value,
    parameters: QDQParameters,
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
    return _node("DequantizeLinear", names.fresh(f"{base}_DequantizeLinear"), quantized, parameters, out), out


def dequantized_constant(value: ir.Value | None) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(integer constant, scale, zero point) behind the DequantizeLinear that produces ``value``,
    or None when ``value`` is not a constant stored as integers."""
    producer = produced_by(value, "DequantizeLinear")
    if producer is None or len(producer.inputs) != 3:
        return None
    weight, scale, zero_point = producer.inputs
    if weight is None or scale is None or zero_point is None:
        return None
    if weight.const_value is None or scale.const_value is None or zero_point.const_value is None:
        return None
    return weight, scale, zero_point


def quantized_weight(value: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(integer weight, scale, zero point) behind the DequantizeLinear that produces ``value``
    (a pass's ``requires`` has checked that there is one)."""
    found = dequantized_constant(value)
    assert found is not None, value.name
    return found


def require_quantized(pass_name: str, values: dict[str, ir.Value | None]) -> None:
    """Precondition of the passes that read what QuantizeInitializersPass left: every value of
    ``values`` (by the name the plan gives it) is an integer constant behind a DequantizeLinear."""
    for name, value in values.items():
        if dequantized_constant(value) is None:
            raise ir.passes.PreconditionError(
                f"{pass_name}: '{name}' is not an integer constant behind a DequantizeLinear "
                "(run QuantizeInitializersPass first)"
            )


def constant_array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None, value.name
    return value.const_value.numpy()
