"""Round-to-nearest 4-bit block-wise quantization: per block a scale (and a zero point).

Symmetric blocks map ``[-max|w|, max|w|]`` onto codes ``8 +- 7`` (zero point 8, code 0 unused so
that negating a weight never saturates); asymmetric blocks map ``[min(w, 0), max(w, 0)]`` onto
0..15, the range holding 0.0 so that a zero weight stays exactly zero. Rounding is half to even,
as the ONNX spec's QuantizeLinear.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantcli.blockwise.layout import CODE_MAX, SYMMETRIC_ZERO_POINT, BlockQuantized

__all__ = ["block_params", "encode", "padded_blocks", "rtn"]

# As scheme's: a smaller scale (an all-zero block) would divide by zero; any positive one
# represents 0.0 exactly.
_MIN_SCALE = np.float32(1e-12)


def padded_blocks(weight: npt.NDArray[np.floating], block_size: int) -> npt.NDArray[np.float64]:
    """``[N, K]`` as ``[N, blocks, block_size]`` float64, the tail block padded with zeros."""
    n, k = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), np.float64)
    padded[:, :k] = weight
    return padded.reshape(n, blocks, block_size)


def block_params(
    blocks: npt.NDArray[np.floating], *, symmetric: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Scale (float32) and zero point (uint8) of each block: the last axis is one block."""
    if symmetric:
        bound = np.max(np.abs(blocks), axis=-1)
        scale = np.maximum(bound / (SYMMETRIC_ZERO_POINT - 1), _MIN_SCALE).astype(np.float32)
        return scale, np.full(scale.shape, SYMMETRIC_ZERO_POINT, np.uint8)
    low = np.minimum(np.min(blocks, axis=-1), 0.0)
    high = np.maximum(np.max(blocks, axis=-1), 0.0)
    scale = np.maximum((high - low) / CODE_MAX, _MIN_SCALE).astype(np.float32)
    zero_point = np.clip(np.rint(-low / scale), 0, CODE_MAX).astype(np.uint8)
    return scale, zero_point


def encode(
    values: npt.NDArray[np.floating], scale: npt.NDArray[np.float32], zero_point: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """Codes of ``values`` under ``scale`` and ``zero_point`` (broadcast against them)."""
    shifted = np.rint(np.asarray(values, np.float64) / scale) + zero_point
    codes: npt.NDArray[np.uint8] = np.clip(shifted, 0, CODE_MAX).astype(np.uint8)
    return codes


def rtn(
    weight: npt.NDArray[np.floating],
    block_size: int,
    *,
    symmetric: bool,
    input_scale: npt.NDArray[np.float32] | None = None,
) -> BlockQuantized:
    """Quantize ``weight`` (``[N, K]``, rows of output channels) block by block along K.

    ``input_scale`` (AWQ's ``s``): quantize ``W x diag(s)`` instead, recorded so that the written
    model divides its activation by ``s``.
    """
    n, k = weight.shape
    scaled = weight if input_scale is None else weight * input_scale[np.newaxis, :]
    blocks = padded_blocks(scaled, block_size)
    scale, zero_point = block_params(blocks, symmetric=symmetric)
    codes = encode(blocks, scale[:, :, np.newaxis], zero_point[:, :, np.newaxis])
    return BlockQuantized(
        codes.reshape(n, -1), scale, zero_point, block_size, k, symmetric, input_scale=input_scale
    )
