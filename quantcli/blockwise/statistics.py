"""What GPTQ and AWQ need of a layer's input, observed streaming: ``H = sum x^T x`` and the mean
absolute value of each input channel.

Each batch's activation is reduced into a ``K x K`` sum and a ``K`` sum, then dropped: memory is
``8 K^2`` bytes per layer whatever the number of samples, and no activation is kept. Sums in
float64, added in the order the data is read, so the same data gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.calibration.collect import MEMORY_BUDGET, Advance, observe
from quantcli.calibration.data import Dataset

__all__ = ["GramObserver", "InputStatistics", "collect_input_statistics"]


@dataclass(frozen=True, eq=False)
class InputStatistics:
    """A layer input's ``H = sum x^T x`` (``[K, K]`` float64), ``sum |x|`` per channel and the
    number of rows (vectors of K) seen."""

    gram: npt.NDArray[np.float64]
    abs_sum: npt.NDArray[np.float64]
    rows: int

    @property
    def mean_abs(self) -> npt.NDArray[np.float64]:
        mean: npt.NDArray[np.float64] = self.abs_sum / max(self.rows, 1)
        return mean

    def merged(self, other: InputStatistics) -> InputStatistics:
        return InputStatistics(self.gram + other.gram, self.abs_sum + other.abs_sum, self.rows + other.rows)


class GramObserver:
    """Accumulates :class:`InputStatistics` of a tensor whose last axis is the layer's K."""

    def __init__(self, k: int) -> None:
        self._gram = np.zeros((k, k), np.float64)
        self._abs_sum = np.zeros(k, np.float64)
        self._rows = 0
        self._nan = False

    @property
    def finite(self) -> bool:
        """False once a batch held a NaN."""
        return not self._nan

    def update(self, values: npt.NDArray[np.floating]) -> None:
        """Add a batch; a row holding an infinity (a saturated value) is left out, as calibration
        leaves infinite values out of its statistics."""
        rows = np.asarray(values, np.float64).reshape(-1, self._gram.shape[0])
        if np.isnan(rows).any():
            self._nan = True
            return
        rows = rows[np.isfinite(rows).all(axis=1)]
        self._gram += rows.T @ rows
        self._abs_sum += np.abs(rows).sum(axis=0)
        self._rows += rows.shape[0]

    def result(self) -> InputStatistics:
        return InputStatistics(self._gram.copy(), self._abs_sum.copy(), self._rows)


def collect_input_statistics(
    model: ir.Model,
    tensors: dict[str, int],
    dataset: Dataset,
    *,
    batch_size: int,
    progress: Advance | None = None,
    budget: int = MEMORY_BUDGET,
    threads: int | None = None,
) -> dict[str, InputStatistics]:
    """Observe each tensor (name -> its K) over every sample of ``dataset``, in bounded memory
    as calibration's statistics are (passes that each return at most ``budget`` bytes)."""
    observers = {name: GramObserver(k) for name, k in sorted(tensors.items())}
    observe(
        model, observers, dataset, batch_size=batch_size, progress=progress, budget=budget, threads=threads
    )
    return {name: observer.result() for name, observer in observers.items()}
