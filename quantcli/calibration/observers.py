"""Streaming observers: each batch of a tensor is reduced into a small summary, then dropped.

An observer keeps a :class:`TensorStats` (the exact min and max, and for histogram methods a
:class:`~quantcli.calibration.histogram.Histogram`); its size does not depend on the number of
samples. Every summary is independent of the order of the batches and merges exactly, so
calibrating shards of the data and merging their files equals one run over all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantcli.calibration.histogram import Histogram

__all__ = ["HistogramObserver", "MinMaxObserver", "Observer", "TensorRange", "TensorStats"]


@dataclass(frozen=True)
class TensorRange:
    """The range a tensor is quantized over (observed, or clipped by a calibration method)."""

    min: float
    max: float

    def merge(self, other: TensorRange) -> TensorRange:
        return TensorRange(min(self.min, other.min), max(self.max, other.max))


@dataclass(frozen=True, eq=False)
class TensorStats:
    """What calibration keeps of one tensor: exact extremes, the values seen, maybe a histogram."""

    min: float
    max: float
    count: int
    histogram: Histogram | None = None

    @property
    def range(self) -> TensorRange:
        return TensorRange(self.min, self.max)

    def merged(self, other: TensorStats) -> TensorStats:
        histogram = None
        if self.histogram is not None and other.histogram is not None:
            histogram = self.histogram.merged(other.histogram)
        return TensorStats(
            min(self.min, other.min), max(self.max, other.max), self.count + other.count, histogram
        )


class MinMaxObserver:
    """Smallest and largest value: two floats per tensor, the cheapest observer."""

    def __init__(self) -> None:
        self._min = np.inf
        self._max = -np.inf
        self._count = 0
        self._nan = False

    def update(self, values: npt.NDArray[np.floating]) -> None:
        self._observe(values)

    def _observe(self, values: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.floating], float, float]:
        """Fold ``values`` into min and max; return the finite values with their min and max."""
        if values.size == 0:
            return values, 0.0, 0.0
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            # An attention mask's -inf saturates whatever the range: leave it out; keep NaN.
            values = values[~np.isinf(values)]
            if values.size == 0:
                return values, 0.0, 0.0
            low, high = float(values.min()), float(values.max())
        if np.isnan(low) or np.isnan(high):
            self._nan = True
            return values[:0], 0.0, 0.0
        self._min = min(self._min, low)
        self._max = max(self._max, high)
        self._count += int(values.size)
        return values, low, high

    @property
    def finite(self) -> bool:
        """False once a NaN was seen."""
        return not self._nan

    def result(self) -> TensorStats:
        assert self.finite, "result() of an observer that saw NaN"
        if self._count == 0:  # an empty tensor (a Resize's empty roi): any range will do
            return TensorStats(0.0, 0.0, 0)
        return TensorStats(self._min, self._max, self._count)


class HistogramObserver(MinMaxObserver):
    """Min, max and a power-of-two-width histogram: what entropy, percentile and mse need."""

    def __init__(self) -> None:
        super().__init__()
        self._histogram = Histogram.empty()

    def update(self, values: npt.NDArray[np.floating]) -> None:
        finite, low, high = self._observe(values)
        if finite.size:
            self._histogram = self._histogram.added(finite, max(-low, high))

    def result(self) -> TensorStats:
        stats = super().result()
        return TensorStats(stats.min, stats.max, stats.count, self._histogram)


Observer = MinMaxObserver
