"""AWQ (Lin et al. 2023): scale input channels by their activation magnitude before rounding.

A weight column that meets large activations (an outlier channel) costs the output most when
rounded. Multiplying column ``k`` by ``s_k`` and dividing the activation by it leaves the float
product unchanged but gives that column finer steps within its block. ``s = a^alpha`` with ``a``
the mean absolute activation per channel; ``alpha`` is searched on a grid, each candidate scored
by the output error ``tr(dW H dW^T)`` computed from the observed statistics. ``alpha = 0`` is
plain RTN, so the search never does worse than RTN on those statistics. The scaled weights can
then be rounded by GPTQ instead of RTN (AWQ scales, GPTQ rounding).

Layers reading the same activation (attention's Q, K and V) share one ``s``: the written model
divides that activation once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from quantcli.blockwise.layout import BlockQuantized
from quantcli.blockwise.metrics import output_error
from quantcli.blockwise.rtn import rtn

__all__ = ["GRID", "awq", "awq_scale"]

# alpha = 0, 1/20, ..., 1: the paper's grid.
GRID = 20

# Rounds a weight [N, K] with an input scale: RTN, or GPTQ given the layer's statistics.
Rounder = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32] | None], BlockQuantized]


def awq_scale(mean_abs: npt.NDArray[np.floating], alpha: float) -> npt.NDArray[np.float32] | None:
    """``a^alpha``, normalized so that its largest and smallest entries straddle 1; None for 1."""
    if alpha == 0.0:
        return None
    magnitude = np.asarray(mean_abs, np.float64)
    positive = magnitude[magnitude > 0]
    floor = float(positive.min()) if positive.size else 1.0
    s = np.maximum(magnitude, floor) ** alpha
    normalized: npt.NDArray[np.float32] = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
    return normalized


def awq(
    weights: Sequence[npt.NDArray[np.float32]],
    hessian: npt.NDArray[np.float64],
    mean_abs: npt.NDArray[np.floating],
    block_size: int,
    *,
    symmetric: bool,
    grid: int = GRID,
    rounder: Rounder | None = None,
) -> tuple[float, list[BlockQuantized]]:
    """The best ``alpha`` for the layers ``weights`` (each ``[N_i, K]``) reading one activation
    with statistics ``hessian`` and ``mean_abs``, and their weights quantized with it.

    The search rounds with RTN (cheap, and what the scale is meant to help); ``rounder``, when
    given (GPTQ on the layer's statistics), rounds the scaled weights once alpha is chosen.
    """
    best: tuple[float, float, list[BlockQuantized]] | None = None
    for step in range(grid + 1):
        alpha = step / grid
        scale = awq_scale(mean_abs, alpha)
        quantized = [rtn(w, block_size, symmetric=symmetric, input_scale=scale) for w in weights]
        loss = sum(output_error(q.dequantize() - w, hessian) for q, w in zip(quantized, weights, strict=True))
        if best is None or loss < best[0]:
            best = (loss, alpha, quantized)
    assert best is not None
    _, alpha, quantized = best
    if rounder is not None:
        scale = quantized[0].input_scale
        quantized = [rounder(w, scale) for w in weights]
    return alpha, quantized
