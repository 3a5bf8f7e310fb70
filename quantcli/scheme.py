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
    "dequantize",
    "quantize",
    "weight_qparams",
]

# The smallest scale we emit. A smaller one (an all-zero channel, a constant tensor) would make
# x / scale overflow or divide by zero; any positive scale represents 0.0 exactly.
_MIN_SCALE = np.float32(1e-12)

ScalarT = TypeVar("ScalarT", bound=np.generic)


class QuantType(StrEnum):
    """Integer storage type of a quantized tensor."""

    UINT8 = "uint8"
    INT8 = "int8"
    INT32 = "int32"

    @property
    def numpy_dtype(self) -> np.dtype[np.integer]:
        return np.dtype(self.value)

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.numpy_dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.numpy_dtype).max)


@dataclass(frozen=True, eq=False)
class QParams:
    """Scale and zero point of one quantized tensor.

    ``scale`` and ``zero_point`` are 0-d for per-tensor quantization and 1-d along ``axis`` for
    per-channel quantization. ``eq=False`` because numpy arrays do not compare to a bool.
    """

    scale: npt.NDArray[np.float32]
    zero_point: npt.NDArray[np.integer]
    axis: int | None
    dtype: QuantType


def _finite_range(rmin: float, rmax: float) -> tuple[float, float]:
    if not (np.isfinite(rmin) and np.isfinite(rmax)) or rmin > rmax:
        raise ValueError(f"invalid range [{rmin}, {rmax}]")
    # The range must contain 0.0 so that zero (padding, ReLU output) is represented exactly.
    return min(rmin, 0.0), max(rmax, 0.0)


def activation_qparams(rmin: float, rmax: float, dtype: QuantType, *, nonnegative: bool = False) -> QParams:
    """Per-tensor parameters for an activation observed in ``[rmin, rmax]``.

    uint8 is asymmetric. int8 is symmetric (zero point 0), except for a tensor known to be
    non-negative (the output of a folded Relu/Clip), which uses the whole int8 range from zero
    point -128: a symmetric range would waste half of the codes and the fold needs saturation
    exactly at 0.0.
    """
    lo, hi = _finite_range(rmin, rmax)
    if dtype is QuantType.INT8 and not nonnegative:
        bound = max(-lo, hi)
        scale = np.float32(max(bound / 127.0, float(_MIN_SCALE)))
        return QParams(np.array(scale, np.float32), np.array(0, np.int8), None, dtype)
    if dtype not in (QuantType.UINT8, QuantType.INT8):
        raise ValueError(f"activations cannot be {dtype}")
    if nonnegative:
        lo = 0.0
    scale = np.float32(max((hi - lo) / float(dtype.qmax - dtype.qmin), float(_MIN_SCALE)))
    zero_point = np.clip(np.rint(dtype.qmin - np.float32(lo) / scale), dtype.qmin, dtype.qmax)
    return QParams(np.array(scale, np.float32), np.array(zero_point, dtype.numpy_dtype), None, dtype)


# Clipping bounds the weight mse search tries, as fractions of a channel's largest magnitude.
_MSE_FRACTIONS = np.linspace(0.2, 1.0, 81, dtype=np.float32)


def _mse_bounds(channels: npt.NDArray[np.float32], bound: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per row of ``channels``, the bound of least squared error after int8 [-127, 127] rounding.

    Clipping a few large weights can buy every other weight finer steps; the search tries
    fractions of the largest magnitude and keeps, per channel, the first best one.
    """
    best = bound.copy()
    best_error = np.full(bound.shape, np.inf, dtype=np.float64)
    for fraction in _MSE_FRACTIONS[::-1]:
        candidate = np.maximum(bound * fraction, _MIN_SCALE * 127).astype(np.float32)
        scale = (candidate / np.float32(127))[:, np.newaxis]
        codes = np.clip(np.rint(channels / scale), -127, 127)
        error = np.sum(((codes * scale - channels).astype(np.float64)) ** 2, axis=1)
        better = error < best_error
        best[better], best_error[better] = candidate[better], error[better]
    return best


def weight_qparams(
    weight: npt.NDArray[np.floating], axis: int | None, *, minimize_mse: bool = False
) -> QParams:
    """Symmetric int8 parameters for a weight, per channel along ``axis`` or per tensor.

    Codes are restricted to [-127, 127] so that the range is symmetric around 0 and negating a
    weight never saturates. ``minimize_mse`` clips each channel where the squared error of the
    quantized weight is least, instead of at its largest magnitude.
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
        bound = _mse_bounds(channels, bound)
    scale = np.maximum(bound / np.float32(127), _MIN_SCALE).astype(np.float32)
    if axis is None:
        return QParams(np.asarray(scale[0], np.float32), np.array(0, np.int8), None, QuantType.INT8)
    return QParams(scale, np.zeros(scale.shape, np.int8), channel_axis, QuantType.INT8)


def bias_qparams(input_scale: npt.NDArray[np.float32], weight: QParams) -> QParams:
    """int32 parameters for a Conv/Gemm bias: scale = input scale x weight scale, zero point 0.

    This is the scale of the integer accumulator, so the bias is added without rescaling.
    """
    scale = (np.float32(input_scale) * weight.scale).astype(np.float32)
    scale = np.maximum(scale, _MIN_SCALE).astype(np.float32)
    axis = 0 if scale.ndim == 1 else None
    return QParams(scale, np.zeros(scale.shape, np.int32), axis, QuantType.INT32)


def _broadcast(values: npt.NDArray[ScalarT], axis: int | None, ndim: int) -> npt.NDArray[ScalarT]:
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = values.shape[0]
    return values.reshape(shape)


def quantize(x: npt.NDArray[np.floating], qparams: QParams) -> npt.NDArray[np.integer]:
    """QuantizeLinear: round half to even, add the zero point, saturate to the type's range."""
    x32 = np.asarray(x, dtype=np.float32)
    scale = _broadcast(qparams.scale, qparams.axis, x32.ndim)
    zero_point = _broadcast(qparams.zero_point, qparams.axis, x32.ndim).astype(np.float64)
    dtype = qparams.dtype
    # Division in float32 as the spec and onnxruntime do; rounding and offset in float64 so
    # int32 bias values are exact.
    scaled = np.rint((x32 / scale).astype(np.float64)) + zero_point
    clipped: npt.NDArray[np.integer] = np.clip(scaled, dtype.qmin, dtype.qmax).astype(dtype.numpy_dtype)
    return clipped


def dequantize(q: npt.NDArray[np.integer], qparams: QParams) -> npt.NDArray[np.float32]:
    """DequantizeLinear: (q - zero_point) x scale, in float32."""
    scale = _broadcast(qparams.scale, qparams.axis, q.ndim)
    zero_point = _broadcast(qparams.zero_point, qparams.axis, q.ndim).astype(np.int64)
    result: npt.NDArray[np.float32] = ((q.astype(np.int64) - zero_point).astype(np.float32) * scale).astype(
        np.float32
    )
    return result
