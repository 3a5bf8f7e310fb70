"""Repair: return the most harmful nodes to float until the accuracy gate passes (fallback).

Start from the full plan. The per-layer diagnosis ranks the quantized tensors (by their effect on
the output when quantized alone, then by their own error) and says which nodes carry each one.
Groups of nodes, worst first, go back to float in growing prefixes (1, 2, 4, ... groups) until the
gate passes; then the prefix is narrowed by bisection while trials remain, so as much of the
model as the bound allows stays int8. Every trial is a full build, check and evaluation, and every
one is reported with its cost. It assumes that returning more to float never hurts, which holds
closely enough in practice; a trial that contradicts it is still reported as measured.

The loop knows nothing about how a model is built: the caller gives a function from a set of
excluded nodes and the ranges known so far to a measured result and the ranges it needed. So it
composes with any mode whose plan honours exclusions, and it is a function from ranges in to
ranges out: nothing it is given is changed. :func:`repair` runs the per-layer diagnosis that
ranks the groups, then the loop, on builds of :func:`quantcli.build.build_variant`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import onnx

from quantcli.build import Candidate, Variant, Workshop, build_variant
from quantcli.calibration.collect import TensorRange, stage
from quantcli.config import QuantConfig
from quantcli.diagnose import LayerDiagnosis, diagnose
from quantcli.errors import QuantCliError
from quantcli.evaluate import GateResult

__all__ = ["FallbackResult", "FallbackStep", "Measured", "Ranges", "Repaired", "fall_back", "repair"]

logger = logging.getLogger(__name__)


class Measured(Protocol):
    """What a trial must report: its gate, its share of int8 weights and its bytes."""

    @property
    def gate(self) -> GateResult | None: ...

    @property
    def int8_weight_fraction(self) -> float: ...

    @property
    def size_bytes(self) -> int: ...


M = TypeVar("M", bound=Measured)


@dataclass(frozen=True)
class FallbackStep:
    """One model built and measured: which nodes were float, and what that gave.

    ``excluded`` are the nodes returned to float beyond the user's own exclusions; ``gate`` is None
    when the trial could not be built (``note`` says why).
    """

    trial: int
    groups: int
    excluded: tuple[str, ...]
    gate: GateResult | None
    int8_weight_fraction: float
    output_bytes: int
    chosen: bool = False
    note: str = ""


@dataclass(frozen=True)
class FallbackResult(Generic[M]):
    """The model kept and every step that led to it."""

    chosen: M
    steps: tuple[FallbackStep, ...]
    passed: bool
    summary: str


def _step(trial: int, groups: int, excluded: tuple[str, ...], measured: Measured) -> FallbackStep:
    return FallbackStep(
        trial=trial,
        groups=groups,
        excluded=excluded,
        gate=measured.gate,
        int8_weight_fraction=measured.int8_weight_fraction,
        output_bytes=measured.size_bytes,
    )


Ranges = Mapping[str, TensorRange]


def fall_back(
    first: M,
    groups: Sequence[tuple[str, ...]],
    build: Callable[[frozenset[str], Ranges], tuple[M, Ranges]],
    ranges: Ranges,
    *,
    max_trials: int,
) -> tuple[FallbackResult[M], Ranges]:
    """Search the smallest prefix of ``groups`` whose exclusion passes the gate.

    ``first`` is the full plan's measured model; ``build`` makes and measures the model with the
    given nodes in float from the ranges known so far, and returns it with the ranges it needed.
    At most ``max_trials`` builds. If none passes, the model that missed the bound by the least
    is kept, and the result says so. Returns the result and the ranges after every trial.
    """
    assert first.gate is not None
    trials = _Trials(first, groups, build, ranges)
    failing, passing = 0, 0 if first.gate.passed else None
    size = 1
    # Grow: 1, 2, 4, ... groups in float, until the gate passes or the groups run out.
    while passing is None and trials.count < max_trials and failing < len(groups):
        prefix = min(failing + size, len(groups))
        outcome = trials.attempt(prefix)
        if outcome is None:
            break
        if outcome:
            passing = prefix
        else:
            failing, size = prefix, size * 2
    # Narrow: bisect between the last failing and the first passing prefix.
    while passing is not None and trials.count < max_trials and passing - failing > 1:
        middle = (failing + passing) // 2
        outcome = trials.attempt(middle)
        if outcome is None:
            break
        if outcome:
            passing = middle
        else:
            failing = middle
    return _finish(trials.results, trials.steps, passing, len(groups)), trials.ranges


class _Trials(Generic[M]):
    """The trials of one search: each build, its step, and the ranges known after it."""

    def __init__(
        self,
        first: M,
        groups: Sequence[tuple[str, ...]],
        build: Callable[[frozenset[str], Ranges], tuple[M, Ranges]],
        ranges: Ranges,
    ) -> None:
        self.groups, self.build, self.ranges = groups, build, ranges
        self.results: dict[int, M] = {0: first}
        self.steps = [_step(0, 0, (), first)]
        self.count = 0

    def attempt(self, prefix: int) -> bool | None:
        """Build with ``prefix`` groups in float; True if it passes, None if it cannot be built."""
        self.count += 1
        excluded = tuple(n for group in self.groups[:prefix] for n in group)
        try:
            measured, self.ranges = self.build(frozenset(excluded), self.ranges)
        except QuantCliError as exc:
            logger.info("fallback trial with %d groups in float failed: %s", prefix, exc)
            self.steps.append(FallbackStep(len(self.steps), prefix, excluded, None, 0.0, 0, note=str(exc)))
            return None
        assert measured.gate is not None
        self.results[prefix] = measured
        self.steps.append(_step(len(self.steps), prefix, excluded, measured))
        return measured.gate.passed


def _shortfall(measured: Measured) -> float:
    return measured.gate.shortfall if measured.gate is not None else float("inf")


def _finish(
    results: dict[int, M], steps: list[FallbackStep], passing: int | None, available: int
) -> FallbackResult[M]:
    if passing is not None:
        kept = passing
        summary = f"the gate passes with {kept} of {available} ranked groups of nodes returned to float"
    else:
        kept = min(results, key=lambda p: _shortfall(results[p]))
        summary = (
            f"no trial passed the gate; kept the one that missed it by the least "
            f"({kept} of {available} ranked groups in float)"
        )
    # A prefix is built at most once, so exactly one step is marked.
    marked = tuple(replace(s, chosen=s.groups == kept and s.gate is not None) for s in steps)
    return FallbackResult(chosen=results[kept], steps=marked, passed=passing is not None, summary=summary)


# Samples per-layer diagnosis runs on: as asked (--per-layer, --auto-fallback), and for the
# repair auto makes on its own (tensor statistics settle on a few samples; each costs a pass of
# every tensor measured alone).
_DIAGNOSIS_SAMPLES = 32
_UNASKED_DIAGNOSIS_SAMPLES = 8


@dataclass(frozen=True)
class Repaired:
    """What :func:`repair` made of a candidate: the model kept (the candidate itself when nothing
    was tried), the diagnosis, the search, and the ranges known after it."""

    candidate: Candidate
    diagnosis: LayerDiagnosis | None
    fallback: FallbackResult[Candidate] | None
    ranges: Ranges


def repair(
    start: Candidate, shop: Workshop, config: QuantConfig, ranges: Ranges, *, auto: bool = False
) -> Repaired:
    """--per-layer: rank ``start``'s tensors. --auto-fallback, when ``start`` misses the bound:
    return the nodes behind the worst ones to float, on its mode's plan. Ranges in, ranges out.

    ``auto``: in auto mode fallback runs unasked too (auto never settles for a slow mode that
    passed while a faster one might be repaired). Unasked, its ranking runs on fewer samples and
    measures fewer tensors alone, so that the default stays affordable on a large model
    (PP-OCRv4 det at 640x640: 743 s of diagnosis with 32 samples and 32 tensors alone).
    """
    reference = shop.reference
    evaluation, proto = reference.datasets.evaluation, reference.proto
    missed = start.gate is not None and not start.gate.passed
    falls_back = config.auto_fallback or auto
    wanted = config.per_layer or (falls_back and missed)
    if evaluation is None or proto is None or reference.session is None or not wanted:
        return Repaired(start, None, None, ranges)
    few = auto and not config.auto_fallback and not config.per_layer
    # Fallback chooses among the tensors measured alone: more of them than the report shows.
    top_k = max(config.top_k, (2 if few else 4) * config.max_trials) if falls_back else config.top_k
    stage("diagnose")
    diagnosis = diagnose(
        proto,
        onnx.load(str(start.staged.path)),
        evaluation,
        top_k=top_k,
        max_samples=_UNASKED_DIAGNOSIS_SAMPLES if few else _DIAGNOSIS_SAMPLES,
        data_folder=shop.target.data_folder,
    )
    if not (falls_back and missed):
        return Repaired(start, diagnosis, None, ranges)
    trials = iter(range(1, config.max_trials + 1))
    kept_float = dict(start.plan.kept_float)

    def build(excluded: frozenset[str], known: Ranges) -> tuple[Candidate, Ranges]:
        stage("fallback trial", next(trials, config.max_trials), config.max_trials)
        return build_variant(Variant(start.plan.mode, excluded, kept_float), config, shop, known)

    fallback, ranges = fall_back(start, diagnosis.node_groups(), build, ranges, max_trials=config.max_trials)
    return Repaired(fallback.chosen, replace(diagnosis, top_k=config.top_k), fallback, ranges)
