"""A mergeable histogram whose counts do not depend on how the data was split or ordered.

Bins have a width of ``2**exponent`` and are aligned on multiples of it: value ``x`` falls in bin
``floor(x / 2**exponent)``, stored at index ``floor(x / 2**exponent) + BINS // 2``. The exponent is
the smallest one whose ``BINS`` bins cover ``[-absmax, absmax)`` of everything seen, so it depends
only on the largest magnitude seen, never on the order of the batches. When a batch exceeds the
current range, bins are joined in pairs (width doubled): since ``floor(floor(x / w) / 2) ==
floor(x / 2w)``, the coarsened counts are exactly the counts a direct pass at the wider width gives.
Merging coarsens both to the wider width and adds, so merging shards gives, bit for bit, the
histogram of one pass over all the data.

Scaling by a power of two is exact in binary floating point, so no value can land in a different
bin on another machine or in another order. The range is symmetric around zero because a
quantization range always contains zero: resolution relative to the largest magnitude is what
matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BINS", "MIN_EXPONENT", "Histogram", "exponent_for"]

# Signed bins; 2048 on each side of zero, of which at least 1024 are in the observed range.
BINS = 4096
_HALF = BINS // 2
# The narrowest bins (all-zero or tiny tensors); keeps indices exact in float32.
_MIN_EXPONENT = -120
MIN_EXPONENT = _MIN_EXPONENT  # the narrowest bins a histogram has
# Elements per step when binning a large tensor, so temporaries stay small.
_CHUNK = 1 << 20
_JOINS_TO_STABLE = int(math.log2(BINS))

Counts = npt.NDArray[np.int64]


def exponent_for(absmax: float) -> int:
    """The smallest exponent ``e >= _MIN_EXPONENT`` with ``absmax < (BINS / 2) * 2**e``."""
    if not math.isfinite(absmax):
        raise ValueError(f"histogram range must be finite, got {absmax}")
    if absmax <= 0.0:
        return _MIN_EXPONENT
    mantissa, exp = math.frexp(absmax / _HALF)  # absmax / _HALF = mantissa * 2**exp, 0.5 <= m < 1
    del mantissa  # 2**(exp - 1) <= absmax / _HALF < 2**exp, so exp is the smallest that fits
    return max(exp, _MIN_EXPONENT)


def _coarsen(counts: Counts, steps: int) -> Counts:
    """Join bins in pairs ``steps`` times; bins stay aligned on the wider width."""
    out = counts
    # After log2(BINS) joins every value sits in bin -1 or 0, which further joins leave alone.
    for _ in range(min(steps, _JOINS_TO_STABLE)):
        joined = np.zeros(BINS, np.int64)
        # Bins 2j and 2j+1 hold indices n = 2j - HALF and 2j + 1 - HALF; floor(n / 2) = j - HALF / 2.
        joined[_HALF // 2 : _HALF // 2 + _HALF] = out.reshape(_HALF, 2).sum(axis=1)
        out = joined
    return out


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts of values in ``BINS`` bins of width ``2**exponent`` centred on zero."""

    exponent: int
    counts: Counts

    @staticmethod
    def empty() -> Histogram:
        return Histogram(_MIN_EXPONENT, np.zeros(BINS, np.int64))

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> npt.NDArray[np.float64]:
        """The ``BINS + 1`` bin edges."""
        return (np.arange(BINS + 1, dtype=np.float64) - _HALF) * self.width

    def coarsened(self, exponent: int) -> Histogram:
        """The same counts in bins of width ``2**exponent`` (never narrower than now)."""
        assert exponent >= self.exponent, "a histogram can only be coarsened"
        if exponent == self.exponent:
            return self
        return Histogram(exponent, _coarsen(self.counts, exponent - self.exponent))

    def merged(self, other: Histogram) -> Histogram:
        """The histogram of both sets of values."""
        exponent = max(self.exponent, other.exponent)
        counts = self.coarsened(exponent).counts + other.coarsened(exponent).counts
        return Histogram(exponent, counts)

    def added(self, values: npt.NDArray[np.floating], absmax: float | None = None) -> Histogram:
        """This histogram with ``values`` (finite) counted in, widened first if they need it.

        ``absmax``, the largest magnitude of ``values``, saves a pass when the caller knows it.
        """
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return self
        if absmax is None:
            absmax = float(max(-float(flat.min()), float(flat.max())))
        widened = self.coarsened(max(self.exponent, exponent_for(absmax)))
        counts = widened.counts.copy()
        for start in range(0, flat.size, _CHUNK):
            counts += _bin_counts(flat[start : start + _CHUNK], widened.exponent)
        return Histogram(widened.exponent, counts)


def _bin_counts(values: npt.NDArray[np.floating], exponent: int) -> Counts:
    x = values.astype(np.float32, copy=False)
    scaled = np.floor(x * np.float32(math.ldexp(1.0, -exponent)))
    if exponent > 0:
        # A product too small for float32 rounds to -0.0 for a negative value: its floor is -1.
        # (Only when scaling down: multiplying by 2**-e >= 1 cannot underflow.)
        np.putmask(scaled, (scaled == 0) & (x < 0), np.float32(-1))
    index = scaled.astype(np.intp) + _HALF
    return np.bincount(index, minlength=BINS).astype(np.int64)
