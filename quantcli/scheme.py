"""Quantization math: ranges to :class:`QParams`, and quantize/dequantize.

Pure numpy, no graph. Everything here follows the ONNX QuantizeLinear definition
``q = saturate(round_half_to_even(x / scale) + zero_point)`` computed in float32, so values
quantized offline (weights) match what onnxruntime computes at run time bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "QParams",
    "QuantType",
    "activation_qparams",
    "bias_qparams",
    "block_params",
    "dequantize",
    "min_opset",
    "quantize",
    "weight_qparams",
]

# The smallest scale we emit. A smaller one (an all-zero channel, a constant tensor) would make
# x / scale overflow or divide by zero; any positive scale represents 0.0 exactly.
_MIN_SCALE = np.float32(1e-12)

ScalarT = TypeVar("ScalarT", bound=np.generic)


class QuantType(StrEnum):
    """Integer storage type of a quantized tensor.

    Bit width and signedness come from the name; everything else (code range, the numpy array
    that holds the codes, the opset that defines the type) is derived from them, so a new width
    is one line here. numpy has no 4-bit integer: 4-bit codes are held in int8/uint8 arrays.
    """

    UINT4 = "uint4"
    INT4 = "int4"
    UINT8 = "uint8"
    INT8 = "int8"
    UINT16 = "uint16"
    INT16 = "int16"
    INT32 = "int32"

    @property
    def signed(self) -> bool:
        return not self.value.startswith("u")

    @property
    def bits(self) -> int:
        return int(self.value.removeprefix("u").removeprefix("int"))

    @property
    def numpy_dtype(self) -> np.dtype[np.integer]:
        """The numpy type that holds the codes (the next width numpy has, for 4 bits)."""
        prefix = "int" if self.signed else "uint"
        return np.dtype(f"{prefix}{max(self.bits, 8)}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def half_range(self) -> int:
        """Codes on each side of a symmetric zero point: 127 for (u)int8, so that the range is
        symmetric around 0 and negating a value never saturates."""
        return (1 << (self.bits - 1)) - 1

    @property
    def symmetric_zero_point(self) -> int:
        """The zero point of a symmetric range: 0 when signed, the middle code when unsigned."""
        return 0 if self.signed else 1 << (self.bits - 1)


# The first opset whose QuantizeLinear/DequantizeLinear take each type (13: per-axis parameters;
# 21: 4- and 16-bit integers and block-wise parameters).
_TYPE_OPSET = {
    QuantType.UINT4: 21,
    QuantType.INT4: 21,
    QuantType.UINT8: 13,
    QuantType.INT8: 13,
    QuantType.UINT16: 21,
    QuantType.INT16: 21,
    QuantType.INT32: 13,
}
_BLOCK_OPSET = 21


def min_opset(dtype: QuantType, *, block_wise: bool = False) -> int:
    """The lowest default-domain opset whose Q/DQ nodes can carry ``dtype`` (block-wise or not)."""
    return max(_TYPE_OPSET[dtype], _BLOCK_OPSET if block_wise else 0)


@dataclass(frozen=True, eq=False)
class QParams:
    """Scale and zero point of one quantized tensor.

    ``scale`` and ``zero_point`` are 0-d for per-tensor quantization and 1-d along ``axis`` for
    per-channel quantization. With ``block_size`` they have the tensor's rank, with
    ``ceil(dim / block_size)`` entries along ``axis`` (ONNX's blocked quantization: every
    ``block_size`` consecutive elements along ``axis`` share one scale). ``eq=False`` because
    numpy arrays do not compare to a bool.
    """

    scale: npt.NDArray[np.float32]
    zero_point: npt.NDArray[np.integer]
    axis: int | None
    dtype: QuantType
    block_size: int | None = None


def _finite_range(rmin: float, rmax: float) -> tuple[float, float]:
    if not (np.isfinite(rmin) and np.isfinite(rmax)) or rmin > rmax:
        raise ValueError(f"invalid range [{rmin}, {rmax}]")
    # The range must contain 0.0 so that zero (padding, ReLU output) is represented exactly.
    return min(rmin, 0.0), max(rmax, 0.0)


def _asymmetric(
    lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64], dtype: QuantType
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.integer]]:
    """(scale, zero point) mapping ``[lo, hi]`` (which contain 0) onto all of ``dtype``'s codes.

    The step is computed in float64 and stored as float32; the zero point from the float32 scale,
    as onnxruntime will use it.
    """
    steps = float(dtype.qmax - dtype.qmin)
    scale = np.maximum((hi - lo) / steps, float(_MIN_SCALE)).astype(np.float32)
    zero_point = np.clip(np.rint(dtype.qmin - lo.astype(np.float32) / scale), dtype.qmin, dtype.qmax)
    return scale, zero_point.astype(dtype.numpy_dtype)


def activation_qparams(rmin: float, rmax: float, dtype: QuantType, *, nonnegative: bool = False) -> QParams:
    """Per-tensor parameters for an activation observed in ``[rmin, rmax]``.

    Unsigned types are asymmetric. Signed ones are symmetric (zero point 0), except for a tensor
    known to be non-negative (the output of a folded Relu/Clip), which uses the whole range from
    the lowest code: a symmetric range would waste half of the codes and the fold needs
    saturation exactly at 0.0.
    """
    lo, hi = _finite_range(rmin, rmax)
    if dtype is QuantType.INT32:
        raise ValueError(f"activations cannot be {dtype}")
    if dtype.signed and not nonnegative:
        bound = max(-lo, hi)
        step = np.float32(max(bound / float(dtype.half_range), float(_MIN_SCALE)))
        return QParams(np.array(step, np.float32), np.array(0, dtype.numpy_dtype), None, dtype)
    scale, zero_point = _asymmetric(np.array(0.0 if nonnegative else lo), np.array(hi), dtype)
    return QParams(scale, zero_point, None, dtype)


# Clipping bounds the weight mse search tries, as fractions of a channel's largest magnitude.
_MSE_FRACTIONS = np.linspace(0.2, 1.0, 81, dtype=np.float32)


def _mse_bounds(
    channels: npt.NDArray[np.float32], bound: npt.NDArray[np.float32], dtype: QuantType
) -> npt.NDArray[np.float32]:
    """Per row of ``channels``, the bound of least squared error after symmetric rounding to
    ``dtype`` ([-127, 127] for int8).

    Clipping a few large weights can buy every other weight finer steps; the search tries
    fractions of the largest magnitude and keeps, per channel, the first best one.
    """
    codes_max = dtype.half_range
    best = bound.copy()
    best_error = np.full(bound.shape, np.inf, dtype=np.float64)
    for fraction in _MSE_FRACTIONS[::-1]:
        candidate = np.maximum(bound * fraction, _MIN_SCALE * codes_max).astype(np.float32)
        scale = (candidate / np.float32(codes_max))[:, np.newaxis]
        codes = np.clip(np.rint(channels / scale), -codes_max, codes_max)
        error = np.sum(((codes * scale - channels).astype(np.float64)) ** 2, axis=1)
        better = error < best_error
        best[better], best_error[better] = candidate[better], error[better]
    return best


def _symmetric_scale(bound: npt.NDArray[np.float32], dtype: QuantType) -> npt.NDArray[np.float32]:
    scale: npt.NDArray[np.float32] = np.maximum(bound / np.float32(dtype.half_range), _MIN_SCALE).astype(
        np.float32
    )
    return scale


def weight_qparams(
    weight: npt.NDArray[np.floating],
    axis: int | None,
    *,
    minimize_mse: bool = False,
    dtype: QuantType = QuantType.INT8,
) -> QParams:
    """Symmetric parameters for a weight, per channel along ``axis`` or per tensor.

    Codes are restricted to ``dtype.half_range`` either side of the zero point ([-127, 127] for
    int8) so that the range is symmetric around 0 and negating a weight never saturates.
    ``minimize_mse`` clips each channel where the squared error of the quantized weight is least,
    instead of at its largest magnitude.
    """
    w = np.asarray(weight, dtype=np.float32)
    channel_axis = 0 if axis is None else axis % w.ndim
    channels = (
        w.reshape(1, -1)
        if axis is None
        else np.moveaxis(w, channel_axis, 0).reshape(w.shape[channel_axis], -1)
    )
    bound = (
        np.max(np.abs(channels), axis=1) if channels.size else np.zeros(channels.shape[0], np.float32)
    ).astype(np.float32)
    if minimize_mse and channels.size:
        bound = _mse_bounds(channels, bound, dtype)
    scale = _symmetric_scale(bound, dtype)
    zero = dtype.symmetric_zero_point
    if axis is None:
        return QParams(np.asarray(scale[0], np.float32), np.array(zero, dtype.numpy_dtype), None, dtype)
    return QParams(scale, np.full(scale.shape, zero, dtype.numpy_dtype), channel_axis, dtype)


def _blocks(values: npt.NDArray[np.float32], axis: int, block_size: int) -> npt.NDArray[np.float32]:
    """``values`` with ``axis`` moved last and cut into blocks: [..., blocks, block_size].

    A last, partial block is padded with zeros, which change neither a block's largest magnitude
    nor its range (a range always contains 0).
    """
    moved = np.moveaxis(values, axis, -1)
    count = -(-moved.shape[-1] // block_size)
    padding = [(0, 0)] * (moved.ndim - 1) + [(0, count * block_size - moved.shape[-1])]
    padded = np.pad(moved, padding)
    return padded.reshape(*moved.shape[:-1], count, block_size)


def _signed_block_scale(blocks: npt.NDArray[np.float32], qtype: QuantType) -> npt.NDArray[np.float32]:
    """Per block (last axis), ``extremum / -2^(bits-1)``: the value of largest magnitude (the
    first of two with equal magnitudes and opposite signs) lands on the lowest code."""
    largest = np.argmax(np.abs(blocks), axis=-1)[..., np.newaxis]
    extremum = np.take_along_axis(blocks, largest, axis=-1)[..., 0]
    scale = (extremum / np.float32(-(1 << (qtype.bits - 1)))).astype(np.float32)
    tiny = np.abs(scale) < _MIN_SCALE
    scale[tiny] = _MIN_SCALE
    return scale


def block_params(
    weights: npt.NDArray[np.floating], qtype: QuantType, block_size: int, axis: int, symmetric: bool
) -> QParams:
    """Block-wise parameters: every ``block_size`` consecutive values along ``axis`` (a weight's
    reduction axis, K of a MatMul's [K, N]) get their own scale and zero point.

    Symmetric blocks use all ``2^bits`` codes: the block's extremum (its value of largest
    magnitude, with its sign) goes onto the lowest code, ``zero point - 2^(bits-1)`` (code 0 of
    uint4, -8 of int4), so ``scale = extremum / -2^(bits-1)``, *negative* when the extremum is
    positive. A block of 4-bit codes then has 16 levels and a step ``max|w| / 8``, not 15 levels
    at ``max|w| / 7`` (what ``half_range`` would give): the extremum's side of zero gets 8 codes,
    the other side 7, and a value of the other sign as large as the extremum saturates one step
    short of it. onnxruntime's own 4-bit quantizer does the same. Dequantization,
    ``(code - zero point) x scale``, does not care about the sign; an all-zero block gets the
    smallest positive scale. Asymmetric blocks map their range (with 0) onto every code, with a
    positive scale. ``scale`` and ``zero_point`` have the weight's shape with
    ``ceil(dim / block_size)`` along ``axis``, as ONNX's blocked DequantizeLinear reads them.
    """
    w = np.asarray(weights, dtype=np.float32)
    if block_size < 1 or w.ndim == 0:
        raise ValueError(f"block size {block_size} on a {w.ndim}-d tensor")
    if qtype is QuantType.INT32:
        raise ValueError(f"block-wise weights cannot be {qtype}")
    block_axis = axis % w.ndim
    blocks = _blocks(w, block_axis, block_size)
    if symmetric:
        scale = _signed_block_scale(blocks, qtype)
        zero_point = np.full(scale.shape, qtype.symmetric_zero_point, qtype.numpy_dtype)
    else:
        lo = np.minimum(np.min(blocks, axis=-1), 0.0).astype(np.float64)
        hi = np.maximum(np.max(blocks, axis=-1), 0.0).astype(np.float64)
        scale, zero_point = _asymmetric(lo, hi, qtype)
    return QParams(
        np.ascontiguousarray(np.moveaxis(scale, -1, block_axis)),
        np.ascontiguousarray(np.moveaxis(zero_point, -1, block_axis)),
        block_axis,
        qtype,
        block_size,
    )


def bias_qparams(input_scale: npt.NDArray[np.float32], weight: QParams) -> QParams:
    """int32 parameters for a Conv/Gemm bias: scale = input scale x weight scale, zero point 0.

    This is the scale of the integer accumulator, so the bias is added without rescaling.
    """
    scale = (np.float32(input_scale) * weight.scale).astype(np.float32)
    scale = np.maximum(scale, _MIN_SCALE).astype(np.float32)
    axis = 0 if scale.ndim == 1 else None
    return QParams(scale, np.zeros(scale.shape, np.int32), axis, QuantType.INT32)


def _broadcast(
    values: npt.NDArray[ScalarT], qparams: QParams, shape: tuple[int, ...]
) -> npt.NDArray[ScalarT]:
    """``values`` (a scale or zero point of ``qparams``) shaped to combine with a tensor of ``shape``."""
    axis = qparams.axis
    if axis is None or values.ndim == 0:
        return values
    if qparams.block_size is not None:
        return np.repeat(values, qparams.block_size, axis=axis).take(range(shape[axis]), axis=axis)
    broadcast = [1] * len(shape)
    broadcast[axis] = values.shape[0]
    return values.reshape(broadcast)


def quantize(x: npt.NDArray[np.floating], qparams: QParams) -> npt.NDArray[np.integer]:
    """QuantizeLinear: round half to even, add the zero point, saturate to the type's range."""
    x32 = np.asarray(x, dtype=np.float32)
    scale = _broadcast(qparams.scale, qparams, x32.shape)
    zero_point = _broadcast(qparams.zero_point, qparams, x32.shape).astype(np.float64)
    dtype = qparams.dtype
    # Division in float32 as the spec and onnxruntime do; rounding and offset in float64 so
    # int32 bias values are exact.
    scaled = np.rint((x32 / scale).astype(np.float64)) + zero_point
    clipped: npt.NDArray[np.integer] = np.clip(scaled, dtype.qmin, dtype.qmax).astype(dtype.numpy_dtype)
    return clipped


def dequantize(q: npt.NDArray[np.integer], qparams: QParams) -> npt.NDArray[np.float32]:
    """DequantizeLinear: (q - zero_point) x scale, in float32."""
    scale = _broadcast(qparams.scale, qparams, q.shape)
    zero_point = _broadcast(qparams.zero_point, qparams, q.shape).astype(np.int64)
    result: npt.NDArray[np.float32] = ((q.astype(np.int64) - zero_point).astype(np.float32) * scale).astype(
        np.float32
    )
    return result
