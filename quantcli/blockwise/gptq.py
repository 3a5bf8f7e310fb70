"""GPTQ (Frantar et al. 2022): 4-bit rounding that compensates each column's error on the rest.

Columns of the weight (input channels, along K) are rounded one at a time; the error a column's
rounding makes is spread over the columns not yet rounded, weighted by the inverse of the layer's
``H = sum x^T x``, so the layer's output error ``tr(dW H dW^T)`` stays small. A block's scale
and zero point are fixed when its first column is reached, from the weights as updated so far.

Only ``H`` (``K x K``) is needed, never the activations. Deterministic: fixed column order (no
activation ordering, which would scatter a block's columns), numpy's LAPACK, no randomness.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantcli.blockwise.layout import CODE_TYPE, BlockQuantized
from quantcli.blockwise.rtn import column_params
from quantcli.scheme import QParams, block_params, dequantize, quantize

__all__ = ["DAMPING", "gptq", "inverse_cholesky"]

# Added to H's diagonal as a fraction of its mean, so that it inverts (the paper's 1%).
DAMPING = 0.01
# Columns rounded between two updates of the columns beyond them (the paper's lazy batches).
_BATCH = 128


def inverse_cholesky(hessian: npt.NDArray[np.float64], damping: float = DAMPING) -> npt.NDArray[np.float64]:
    """Upper Cholesky factor ``U`` of ``(H + damping x mean(diag H) x I)^-1`` (``U^T U``)."""
    h = np.array(hessian, np.float64)
    diagonal = np.diag(h).copy()
    dead = diagonal <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    # With J the reversal permutation and J H J = L L^T, U = J L^-1 J is upper triangular and
    # U^T U = J L^-T L^-1 J = H^-1: one Cholesky and one triangular inverse, no explicit H^-1.
    # Each K x K intermediate is dropped as soon as the next exists (8 K^2 bytes each: 128 MB
    # at K = 4096, and a model past memory rounds such layers one after another).
    lower = np.linalg.cholesky(h[::-1, ::-1])
    del h
    inverse = np.linalg.inv(lower)
    del lower
    upper: npt.NDArray[np.float64] = np.triu(inverse[::-1, ::-1])
    return upper


def gptq(
    weight: npt.NDArray[np.floating],
    hessian: npt.NDArray[np.float64],
    block_size: int,
    *,
    symmetric: bool,
    input_scale: npt.NDArray[np.float32] | None = None,
    damping: float = DAMPING,
) -> BlockQuantized:
    """Quantize ``weight`` (``[N, K]``) with GPTQ on ``hessian`` (``[K, K]``, the layer's input
    ``sum x^T x``).

    ``input_scale`` (AWQ's ``s``): quantize ``W x diag(s)``, whose input is ``x / s``, so ``H``
    becomes ``diag(1/s) H diag(1/s)``.
    """
    n, k = weight.shape
    h = np.asarray(hessian, np.float64)
    if input_scale is not None:
        inverse = 1.0 / input_scale.astype(np.float64)
        h = h * inverse[:, np.newaxis] * inverse[np.newaxis, :]
    dead = np.diag(h) <= 0  # an input that was always 0: its weights do not matter
    upper = inverse_cholesky(h, damping)
    del h
    # Transposed, [K, N]: each column of the weight is a contiguous row here (one copy).
    w = np.asarray(weight).T.astype(np.float64, order="C")
    if input_scale is not None:
        w *= input_scale[:, np.newaxis]
    w[dead, :] = 0.0
    blocks = -(-k // block_size)
    codes = np.empty((blocks * block_size, n), np.uint8)
    scale = np.empty((n, blocks), np.float32)
    zero_point = np.empty((n, blocks), np.uint8)
    batch = block_size * max(1, _BATCH // block_size)
    column_qparams: QParams | None = None
    for start in range(0, k, batch):
        end = min(start + batch, k)
        errors = np.zeros((end - start, n), np.float64)
        for column in range(start, end):
            block = column // block_size
            if column % block_size == 0:
                stop = min(column + block_size, k)
                found = block_params(w[column:stop].T, CODE_TYPE, block_size, 1, symmetric)
                scale[:, block], zero_point[:, block] = found.scale[:, 0], found.zero_point[:, 0]
                column_qparams = column_params(found, 0)
            assert column_qparams is not None
            code = quantize(w[column], column_qparams)
            codes[column] = code
            rounded = dequantize(code, column_qparams).astype(np.float64)
            error = (w[column] - rounded) / upper[column, column]
            w[column + 1 : end] -= np.outer(upper[column, column + 1 : end], error)
            errors[column - start] = error
        w[end:] -= upper[start:end, end:].T @ errors
    codes[k:] = zero_point[:, -1]  # the tail of the last block dequantizes to 0.0
    return BlockQuantized(
        np.ascontiguousarray(codes.T), scale, zero_point, block_size, k, symmetric, input_scale=input_scale
    )
