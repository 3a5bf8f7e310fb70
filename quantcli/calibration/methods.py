"""Calibration methods: from a tensor's :class:`TensorStats` to the range it is quantized over.

Pure numpy on the histogram, no data and no graph. Each method only ever narrows the observed
``[min, max]``: values outside the chosen range saturate.

- minmax: the observed range. One outlier stretches it and costs every other value resolution.
- percentile(p): clips each tail at ``100 - p`` percent of the values (two-sided, on the signed
  histogram; an upper edge of a bin on the right, a lower edge on the left).
- entropy: the magnitude threshold whose 128-level quantized histogram is closest in KL
  divergence to the float histogram with the clipped values piled into the last bin, as
  TensorRT calibrates (its 2017 GTC talk "8-bit Inference with TensorRT" describes the method).
- mse: the range minimizing the expected squared error over the histogram: uniform rounding
  noise ``scale**2 / 12`` inside, the squared distance to the bound outside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from quantcli.calibration.histogram import BINS, Histogram
from quantcli.calibration.observers import TensorRange, TensorStats
from quantcli.config import ActivationType, CalibrationMethod, QuantConfig
from quantcli.errors import CalibrationFileError
from quantcli.target import TARGETS

__all__ = [
    "choose_range",
    "choose_ranges",
    "entropy_range",
    "kl_divergences",
    "mse_range",
    "percentile_range",
]

_HALF = BINS // 2
# Levels of the magnitude of an int8 value, the target of the entropy method.
_ENTROPY_LEVELS = 128
# Steps between two codes of an 8-bit type.
_STEPS = 255
# The share of an average bin Q gives a bin it would leave empty but P does not.
_SMOOTHING = 1e-4
# Candidates of the mse method: k / _MSE_CANDIDATES of a bound, for k = 1 .. _MSE_CANDIDATES.
_MSE_CANDIDATES = 200


def _clip(stats: TensorStats, lo: float, hi: float) -> TensorRange:
    """The observed range narrowed to ``[lo, hi]``, never widened, never empty."""
    low = max(stats.min, min(lo, stats.max))
    high = min(stats.max, max(hi, stats.min))
    return TensorRange(low, max(low, high))


def _histogram(stats: TensorStats, method: CalibrationMethod) -> Histogram:
    if stats.histogram is None:
        raise ValueError(f"the {method} method needs a histogram; this tensor only has min and max")
    return stats.histogram


def percentile_range(stats: TensorStats, percentile: float) -> TensorRange:
    """Clip ``100 - percentile`` percent of the values off each end of the range."""
    hist = _histogram(stats, CalibrationMethod.PERCENTILE)
    total = hist.total
    if total == 0:
        return stats.range
    cumulative = np.cumsum(hist.counts)
    share = 1.0 - percentile / 100.0
    edges = hist.edges()
    upper = int(np.searchsorted(cumulative, (1.0 - share) * total, side="left"))
    lower = int(np.searchsorted(cumulative, share * total, side="right"))
    return _clip(stats, float(edges[lower]), float(edges[min(upper, BINS - 1) + 1]))


def _magnitudes(hist: Histogram) -> npt.NDArray[np.float64]:
    """Counts of |x| in bins ``[k w, (k + 1) w)``, trimmed after the last non-empty bin."""
    counts = hist.counts
    folded = counts[_HALF:] + counts[_HALF - 1 :: -1]
    nonzero = np.flatnonzero(folded)
    return folded[: int(nonzero[-1]) + 1 if nonzero.size else 0].astype(np.float64)


def _xlogx(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    safe = np.where(values > 0, values, 1.0)
    return np.where(values > 0, values * np.log(safe), 0.0)


def kl_divergences(magnitudes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """KL(P || Q) for every threshold after ``bins`` = 128 .. len(magnitudes) bins, at once.

    P is the histogram cut after ``bins`` bins with the clipped values added to its last bin; Q
    splits the kept bins into 128 groups and spreads each group's count evenly over its non-empty
    bins (an empty bin stays empty: no value occurs there; only the last bin, where P may hold
    clipped values, gets a small share, see below). The sums are rewritten so that every
    candidate costs one row of 128 groups instead of a pass over its bins:
    ``sum_j A_j log q_j = sum_groups G log(G / nonempty)``, with prefix sums for the rest.
    """
    a = magnitudes
    n = a.size
    bins = np.arange(_ENTROPY_LEVELS, n + 1)
    prefix = np.concatenate([[0.0], np.cumsum(a)])
    prefix_nonempty = np.concatenate([[0.0], np.cumsum(a > 0)])
    prefix_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(a))])
    total = prefix[-1]
    bounds = (np.arange(_ENTROPY_LEVELS + 1)[np.newaxis, :] * bins[:, np.newaxis]) // _ENTROPY_LEVELS
    group_sum = np.diff(prefix[bounds], axis=1)
    group_nonempty = np.diff(prefix_nonempty[bounds], axis=1)
    average = group_sum / np.maximum(group_nonempty, 1)
    log_average = np.log(np.where(average > 0, average, 1.0))  # 0 where the group is empty
    kept = prefix[bins]  # S_i: the values inside the threshold
    last = a[bins - 1]  # the last kept bin, in the last group
    # Q leaves the last bin empty when it held no value before clipping; a tiny share of an
    # average bin stands in, so that such a threshold costs much instead of being impossible
    # (otherwise one far outlier would forbid every threshold below it).
    log_last_q = np.where(last > 0, log_average[:, -1], np.log(_SMOOTHING * np.maximum(kept, 1.0) / bins))
    log_ratio = np.log(np.maximum(kept, 1.0)) - np.log(total)  # log S_i - log N (normalizing Q, P)
    # Bins before the last: sum A_j (log A_j - log q_j + log S_i - log N).
    head = (
        prefix_xlogx[bins - 1]
        + (kept - last) * log_ratio
        - (np.sum(group_sum * log_average, axis=1) - last * log_last_q)
    )
    # The last bin, with the clipped values piled in.
    piled = last + (total - kept)
    tail = np.where(piled > 0, _xlogx(piled) - piled * (log_last_q - log_ratio), 0.0)
    divergence = (head + tail) / total
    return np.where(kept == 0, np.inf, divergence)  # nothing kept: Q is empty


def entropy_range(stats: TensorStats) -> TensorRange:
    """The magnitude threshold of least KL divergence, applied to both ends of the range."""
    hist = _histogram(stats, CalibrationMethod.ENTROPY)
    magnitudes = _magnitudes(hist)
    if magnitudes.size > 1:
        # The first bin holds the exact zeros of a Relu's output, often half of all values; left
        # in, the best match would be the threshold whose grid keeps that bin alone, however much
        # it clips. Counting it like its neighbour lets the rest of the distribution decide.
        magnitudes[0] = magnitudes[1]
    if magnitudes.size <= _ENTROPY_LEVELS:
        return stats.range  # fewer bins than levels: nothing to gain by clipping
    best = _ENTROPY_LEVELS + int(np.argmin(kl_divergences(magnitudes)))
    threshold = best * hist.width
    return _clip(stats, -threshold, threshold)


def _expected_errors(
    centres: npt.NDArray[np.float64],
    counts: npt.NDArray[np.float64],
    lows: npt.NDArray[np.float64],
    highs: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Expected squared error of each candidate range ``[lows[k], highs[k]]`` over the histogram."""
    clipped = np.clip(centres[np.newaxis, :], lows[:, np.newaxis], highs[:, np.newaxis])
    rounding = ((highs - lows) / _STEPS) ** 2 / 12.0
    inside = (centres[np.newaxis, :] == clipped) * rounding[:, np.newaxis]
    errors: npt.NDArray[np.float64] = ((centres[np.newaxis, :] - clipped) ** 2 + inside) @ counts
    return errors


def mse_range(stats: TensorStats, *, symmetric: bool = False) -> TensorRange:
    """The range of least expected squared quantization error over the histogram.

    Candidates are fractions ``k / 200`` of the observed bounds. ``symmetric`` (int8
    activations) searches ranges centred on zero; otherwise each end is searched with the other
    fixed, twice over, so a far outlier on one side does not drag the other side in.
    """
    hist = _histogram(stats, CalibrationMethod.MSE)
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    occupied = np.flatnonzero(hist.counts)
    if occupied.size == 0 or hi == lo:
        return stats.range
    counts = hist.counts[occupied].astype(np.float64)
    centres = (occupied.astype(np.float64) - _HALF + 0.5) * hist.width
    fractions = np.arange(1, _MSE_CANDIDATES + 1, dtype=np.float64) / _MSE_CANDIDATES
    if symmetric:
        bound = max(-lo, hi)
        best = float(
            fractions[
                int(np.argmin(_expected_errors(centres, counts, -fractions * bound, fractions * bound)))
            ]
        )
        return _clip(stats, -best * bound, best * bound)
    low, high = lo, hi
    for _ in range(2):
        highs = fractions * hi
        high = float(
            highs[int(np.argmin(_expected_errors(centres, counts, np.full_like(highs, low), highs)))]
        )
        lows = fractions * lo
        low = float(lows[int(np.argmin(_expected_errors(centres, counts, lows, np.full_like(lows, high))))])
    return _clip(stats, low, high)


def choose_range(
    stats: TensorStats, method: CalibrationMethod, *, percentile: float = 99.99, symmetric: bool = False
) -> TensorRange:
    """The range ``method`` picks for a tensor."""
    if method is CalibrationMethod.MINMAX:
        return stats.range
    if method is CalibrationMethod.PERCENTILE:
        return percentile_range(stats, percentile)
    if method is CalibrationMethod.ENTROPY:
        return entropy_range(stats)
    return mse_range(stats, symmetric=symmetric)


def choose_ranges(
    stats: Mapping[str, TensorStats], names: Iterable[str], config: QuantConfig
) -> dict[str, TensorRange]:
    """The range of each of ``names`` under ``config``'s method (missing names are skipped)."""
    symmetric = config.activation_type is ActivationType.INT8 or TARGETS[config.target].zero_point_zero
    ranges = {}
    for name in names:
        if name not in stats:
            continue
        if config.method.needs_histogram and stats[name].histogram is None:
            raise CalibrationFileError(
                f"the calibration of '{name}' has no histogram, which the {config.method} method needs; "
                "use --method minmax or re-run calibrate"
            )
        ranges[name] = choose_range(
            stats[name], config.method, percentile=config.percentile, symmetric=symmetric
        )
    return ranges
