"""HQQ (half-quadratic quantization, Badri & Shaji 2023): per-block parameters fitted to the
weight with a sparsity-promoting loss, no calibration data.

Round-to-nearest takes each block's scale from its range, so one outlier stretches the step for
every other value of the block. HQQ instead minimizes ``phi(W - dequantize(quantize(W)))`` with
``phi = |.|^p``, ``p < 1``, which tolerates a few large errors (an outlier clipped) in exchange
for small ones everywhere else. The loss is split half-quadratically with an auxiliary error
``E``: ``phi(E) + beta / 2 |E - (W - W_r)|^2``, solved by alternating

1. the codes ``Q = clip(round(W / s + z))`` and reconstruction ``W_r = (Q - z) s``;
2. ``E`` by generalized soft thresholding of ``W - W_r`` (the proximal step of ``|.|^p``);
3. the parameters by least squares of ``(Q - z) s`` on ``W - E``;
4. ``beta <- kappa beta``.

How this module differs from the paper's zero-point-only version, and why:
- MatMulNBits stores 4-bit integer zero points, so ``z`` is an integer code here: step 3 fits
  ``s`` and an offset by least squares, rounds the zero point to a code and refits ``s`` for it.
  Optimizing the scale too is what the integer zero point leaves free to optimize.
- With ``--weight-symmetric`` the zero point stays 8 (none is written) and only the scale is
  fitted, so symmetric HQQ is a data-free search of each block's scale.
- The threshold of step 2 is taken in units of the block's step (``|e / s|^(p-1) / beta``), so
  the same ``beta`` means the same for a layer of weights near 1e-3 and one near 1.
- Of the iterates, each block keeps the one of least squared reconstruction error, starting from
  round-to-nearest's parameters: HQQ never reconstructs a block worse than RTN does.

Deterministic: fixed iteration count, numpy float64, no randomness.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantcli.blockwise.layout import CODE_TYPE, BlockQuantized
from quantcli.blockwise.rtn import block_codes
from quantcli.scheme import QParams, block_params

__all__ = ["BETA", "ITERATIONS", "KAPPA", "P", "hqq"]

# The paper's settings: the norm's exponent, the penalty's start and growth, the iterations.
P = 0.7
BETA = 10.0
KAPPA = 1.01
ITERATIONS = 20

_QMIN, _QMAX = float(CODE_TYPE.qmin), float(CODE_TYPE.qmax)


def _shrink(x: npt.NDArray[np.float64], beta: float) -> npt.NDArray[np.float64]:
    """The proximal step of ``|x|^p``: ``sign(x) max(|x| - |x|^(p-1) / beta, 0)``."""
    magnitude = np.abs(x)
    with np.errstate(divide="ignore"):
        threshold = np.where(magnitude > 0, magnitude ** (P - 1.0), np.inf) / beta
    shrunk: npt.NDArray[np.float64] = np.sign(x) * np.maximum(magnitude - threshold, 0.0)
    return shrunk


def _codes(w: npt.NDArray[np.float64], s: npt.NDArray[np.float64], z: npt.NDArray[np.float64]) -> np.ndarray:
    return np.clip(np.rint(w / s[..., None]) + z[..., None], _QMIN, _QMAX)


def _error(w: np.ndarray, s: np.ndarray, z: np.ndarray, mask: np.ndarray) -> npt.NDArray[np.float64]:
    """Each block's squared reconstruction error with the float32 scale a kernel uses."""
    s32 = s.astype(np.float32).astype(np.float64)
    delta = (_codes(w, s32, z) - z[..., None]) * s32[..., None] - w
    error: npt.NDArray[np.float64] = np.sum(delta * delta * mask, axis=-1)
    return error


def _fit(
    w: np.ndarray, q: np.ndarray, target: np.ndarray, mask: np.ndarray, *, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``(s, z)`` of ``(q - z) s ~ target`` over each block (``z`` a code)."""
    count = np.maximum(mask.sum(axis=-1), 1.0)
    if symmetric:
        z = np.full(q.shape[:-1], float(CODE_TYPE.symmetric_zero_point))
    else:
        mean_q = np.sum(q * mask, axis=-1) / count
        mean_t = np.sum(target * mask, axis=-1) / count
        centred = (q - mean_q[..., None]) * mask
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.sum(centred * (target - mean_t[..., None]), axis=-1) / np.sum(
                centred * centred, axis=-1
            )
            z = np.clip(np.rint(mean_q - mean_t / slope), _QMIN, _QMAX)
    d = (q - z[..., None]) * mask
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sum(d * target, axis=-1) / np.sum(d * d, axis=-1)
    return s, z


def hqq(weight: npt.NDArray[np.floating], block_size: int, *, symmetric: bool) -> BlockQuantized:
    """Quantize ``weight`` (``[N, K]``) block by block along K with HQQ-fitted parameters."""
    n, k = weight.shape
    start = block_params(weight, CODE_TYPE, block_size, 1, symmetric)
    blocks = start.scale.shape[1]
    padded = np.zeros((n, blocks * block_size), np.float64)
    padded[:, :k] = weight
    w = padded.reshape(n, blocks, block_size)
    mask = np.zeros(blocks * block_size)
    mask[:k] = 1.0
    mask = mask.reshape(blocks, block_size)
    s = start.scale.astype(np.float64)
    z = start.zero_point.astype(np.float64)
    best_s, best_z, best = s.copy(), z.copy(), _error(w, s, z, mask)
    beta = BETA
    for _ in range(ITERATIONS):
        q = _codes(w, s, z)
        reconstructed = (q - z[..., None]) * s[..., None]
        sparse = _shrink((w - reconstructed) / s[..., None], beta) * s[..., None]
        fitted_s, fitted_z = _fit(w, q, w - sparse, mask, symmetric=symmetric)
        # A symmetric block's scale may be negative (scheme.block_params): a fit is valid when
        # it keeps the sign it started from.
        valid = np.isfinite(fitted_s) & (fitted_s * s > 0) & np.isfinite(fitted_z)
        s, z = np.where(valid, fitted_s, s), np.where(valid, fitted_z, z)
        error = _error(w, s, z, mask)
        better = error < best
        best_s, best_z, best = (
            np.where(better, s, best_s),
            np.where(better, z, best_z),
            np.minimum(error, best),
        )
        beta *= KAPPA
    qparams = QParams(best_s.astype(np.float32), best_z.astype(np.uint8), 1, CODE_TYPE, block_size)
    return BlockQuantized.from_qparams(block_codes(weight, qparams), qparams, k, symmetric)
