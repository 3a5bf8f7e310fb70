"""Round-to-nearest 4-bit block-wise quantization: per block a scale (and a zero point).

The block math is scheme's (:func:`quantcli.scheme.block_params`, :func:`quantcli.scheme.quantize`),
on uint4 codes: symmetric blocks (zero point 8) use all 16 codes, the block's extremum on code 0
with ``scale = extremum / -8`` (negative when the extremum is positive; a step ``max|w| / 8``);
asymmetric blocks map ``[min(w, 0), max(w, 0)]`` onto 0..15, so a zero weight stays exactly zero.
Rounding is half to even, as the ONNX spec's QuantizeLinear.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantcli.blockwise.layout import CODE_TYPE, BlockQuantized
from quantcli.scheme import QParams, block_params, quantize

__all__ = ["block_codes", "column_params", "rtn"]


def column_params(qparams: QParams, block: int) -> QParams:
    """The per-output-channel parameters of block ``block`` of a block-wise ``[N, K]`` weight:
    what every column of that block is rounded with."""
    return QParams(qparams.scale[:, block], qparams.zero_point[:, block], 0, qparams.dtype)


def block_codes(weight: npt.NDArray[np.floating], qparams: QParams) -> npt.NDArray[np.uint8]:
    """Codes of ``weight`` (``[N, K]``) under block-wise ``qparams``, the last block padded to its
    full size with its zero point (which dequantizes to 0.0)."""
    n, k = weight.shape
    assert qparams.block_size is not None
    codes = np.empty((n, qparams.scale.shape[1] * qparams.block_size), np.uint8)
    codes[:, :k] = quantize(weight, qparams)
    codes[:, k:] = qparams.zero_point[:, -1:]
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
    scaled = weight if input_scale is None else weight * input_scale[np.newaxis, :]
    qparams = block_params(scaled, CODE_TYPE, block_size, 1, symmetric)
    return BlockQuantized.from_qparams(
        block_codes(scaled, qparams), qparams, weight.shape[1], symmetric, input_scale
    )
