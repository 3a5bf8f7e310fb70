"""Which samples a run calibrates on: ``--max-samples``, ``--seed`` and ``--shard K/N``.

Observers do not depend on the order of samples, so only the choice of samples matters: with a
seed, the samples are shuffled before the first ``max_samples`` are taken; shard K of N then takes
every N-th of those, starting at the K-th. The N shards of one choice are disjoint and together
are exactly the samples one unsharded run uses, which is what makes merged shards equal one run.

A :class:`Selection` writes that choice down (with the part a run holds back for evaluation), so
that another process, a Ray worker say, opens the same source and picks the same samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from quantcli.calibration.data import Dataset
from quantcli.errors import CalibrationDataError, ConfigError

__all__ = ["Part", "Selection", "Shard", "select_samples"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ConfigError(f"shard {self.index}/{self.count} does not exist (use K/N with 1 <= K <= N)")

    @staticmethod
    def parse(text: str) -> Shard:
        match = _SHARD.match(text)
        if match is None:
            raise ConfigError(f"shard '{text}' is not K/N (e.g. --shard 2/8)")
        return Shard(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def select_samples(
    dataset: Dataset, *, max_samples: int | None, seed: int | None, shard: Shard | None = None
) -> Dataset:
    """The samples of ``dataset`` this run uses."""
    order = (
        np.random.default_rng(seed).permutation(dataset.num_samples)
        if seed is not None
        else np.arange(dataset.num_samples)
    )
    chosen = order[:max_samples] if max_samples is not None else order
    if shard is not None:
        chosen = chosen[shard.index - 1 :: shard.count]
        if chosen.size == 0:
            raise CalibrationDataError(
                f"{dataset.source}: shard {shard} gets no samples ({dataset.num_samples} in all); "
                "use fewer shards"
            )
    if seed is None and shard is None:
        return dataset.limit(max_samples)
    return dataset.subset([int(i) for i in chosen])


class Part(StrEnum):
    """Which samples of a run's choice: all, or one side of the evaluation hold-back."""

    ALL = "all"
    KEPT = "kept"  # the first part, which calibrates
    HELD_BACK = "held-back"  # the last ``eval_fraction``, which measures fidelity


@dataclass(frozen=True)
class Selection:
    """The samples a run uses, as a rule any process can apply to the same source.

    ``Part.ALL`` with a shard is exactly ``--shard K/N``. The two sides of the hold-back are split
    as :meth:`Dataset.split` splits them, and shard K/N of a side takes every N-th of its samples
    from the K-th: either way the N shards are disjoint and together are the whole part.
    """

    max_samples: int | None
    seed: int | None
    part: Part = Part.ALL
    eval_fraction: float = 0.0

    def apply(self, dataset: Dataset, shard: Shard | None = None) -> Dataset:
        """The samples of ``dataset`` (a freshly opened source) this selection names."""
        if self.part is Part.ALL:
            return select_samples(dataset, max_samples=self.max_samples, seed=self.seed, shard=shard)
        chosen = select_samples(dataset, max_samples=self.max_samples, seed=self.seed)
        kept, held = chosen.split(self.eval_fraction)
        side = kept if self.part is Part.KEPT else held
        if shard is None:
            return side
        positions = range(shard.index - 1, side.num_samples, shard.count)
        if not positions:
            raise CalibrationDataError(
                f"{dataset.source}: shard {shard} of the {self.part} samples gets none "
                f"({side.num_samples} in all); use fewer shards"
            )
        return side.subset(positions)
