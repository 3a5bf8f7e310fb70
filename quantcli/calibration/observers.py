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


def _finite_values(values: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """``values`` without infinities (an attention mask's -inf saturates whatever the range), and
    with NaN kept, so the observer reports it."""
    if values.size == 0 or (np.isfinite(values.min()) and np.isfinite(values.max())):
        return values
    finite: npt.NDArray[np.floating] = values[~np.isinf(values)]
    return finite


class MinMaxObserver:
    """Smallest and largest value: two floats per tensor, the cheapest observer."""

    def __init__(self) -> None:
        self._min = np.inf
        self._max = -np.inf
        self._count = 0
        self._nan = False

    def update(self, values: npt.NDArray[np.floating]) -> None:
        values = _finite_values(values)
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        if np.isnan(low) or np.isnan(high):
            self._nan = True
            return
        self._min = min(self._min, low)
        self._max = max(self._max, high)
        self._count += int(values.size)

    @property
    def finite(self) -> bool:
        """False while no finite value was seen, or once a NaN was."""
        return bool(not self._nan and np.isfinite(self._min) and np.isfinite(self._max))

    def result(self) -> TensorStats:
        assert self.finite, "result() of an observer that saw no finite values"
        return TensorStats(self._min, self._max, self._count)


class HistogramObserver(MinMaxObserver):
    """Min, max and a power-of-two-width histogram: what entropy, percentile and mse need."""

    def __init__(self) -> None:
        super().__init__()
        self._histogram = Histogram.empty()

    def update(self, values: npt.NDArray[np.floating]) -> None:
        super().update(values)
        if values.size and self.finite:  # a NaN is reported by the caller, not binned
            self._histogram = self._histogram.added(_finite_values(values))

    def result(self) -> TensorStats:
        stats = super().result()
        return TensorStats(stats.min, stats.max, stats.count, self._histogram)


Observer = MinMaxObserver
