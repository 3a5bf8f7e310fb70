"""Repair: return the most harmful nodes to float until the accuracy gate passes (fallback).

Start from the full plan. The per-layer diagnosis ranks the quantized tensors (by their effect on
the output when quantized alone, then by their own error) and says which nodes carry each one.
Groups of nodes, worst first, go back to float in growing prefixes (1, 2, 4, ... groups) until the
gate passes; then the prefix is narrowed by bisection while trials remain, so as much of the
model as the bound allows stays int8. Every trial is a full build, check and evaluation, and every
one is reported with its cost. It assumes that returning more to float never hurts, which holds
closely enough in practice; a trial that contradicts it is still reported as measured.

With 4-bit weights (``--weight-bits 4``) the 4-bit layers, ranked by their effect alone, first
return to 8 bits in the same growing prefixes, and only when every one of them is at 8 bits do
the groups go on to float: so a model keeps as many 4-bit layers as the bound allows, then as
many int8 ones.

The loop knows nothing about how a model is built: the caller gives a function from the
:class:`Trial` (nodes excluded, nodes widened to 8 bits) and the ranges known so far to a
measured result and the ranges it needed. So it composes with any mode whose plan honours
exclusions, and it is a function from ranges in to ranges out: nothing it is given is changed.
:func:`repair` runs the per-layer diagnosis that ranks the groups, then the loop, on builds of
:func:`quantcli.build.build_variant`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import onnx

from quantcli.build import Builds, Built, Candidate, LocalBuilds, Order, Variant, Workshop
from quantcli.calibration.collect import TensorRange, stage
from quantcli.config import QuantConfig
from quantcli.diagnose import LayerDiagnosis, diagnose
from quantcli.errors import QuantCliError
from quantcli.evaluate import GateResult

__all__ = [
    "FallbackResult",
    "FallbackStep",
    "Measured",
    "Ranges",
    "Repaired",
    "Trial",
    "fall_back",
    "repair",
]

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

    ``excluded`` are the nodes returned to float beyond the user's own exclusions, ``widened``
    the 4-bit nodes returned to 8 bits; ``gate`` is None when the trial could not be built
    (``note`` says why).
    """

    trial: int
    groups: int
    excluded: tuple[str, ...]
    gate: GateResult | None
    int8_weight_fraction: float
    output_bytes: int
    chosen: bool = False
    note: str = ""
    widened: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trial:
    """One model fallback asks for: the nodes returned to float, and the 4-bit nodes returned
    to 8 bits (none of them in float), each in ranked order."""

    excluded: tuple[str, ...]
    widened: tuple[str, ...] = ()


@dataclass(frozen=True)
class FallbackResult(Generic[M]):
    """The model kept and every step that led to it."""

    chosen: M
    steps: tuple[FallbackStep, ...]
    passed: bool
    summary: str


def _step(trial: int, groups: int, asked: Trial, measured: Measured) -> FallbackStep:
    return FallbackStep(
        trial=trial,
        groups=groups,
        excluded=asked.excluded,
        gate=measured.gate,
        int8_weight_fraction=measured.int8_weight_fraction,
        output_bytes=measured.size_bytes,
        widened=asked.widened,
    )


Ranges = Mapping[str, TensorRange]


# A batch of trial builds: the trials and the ranges known so far in, the measured model and the
# ranges it needed out (or why it could not be built), in the same order.
BuildMany = Callable[[Sequence[Trial], Ranges], Sequence[tuple[M, Ranges] | QuantCliError]]


def _search(first_passed: bool, available: int, max_trials: int) -> Generator[int, bool | None, int | None]:
    """The search as a sequence of prefixes to try: sent each one's outcome (True: it passes;
    None: it could not be built), it yields the next; returns the passing prefix (None: none)."""
    failing, passing = 0, 0 if first_passed else None
    size, count = 1, 0
    # Grow: 1, 2, 4, ... groups in float, until the gate passes or the groups run out.
    while passing is None and count < max_trials and failing < available:
        prefix = min(failing + size, available)
        count += 1
        outcome = yield prefix
        if outcome is None:
            return passing
        if outcome:
            passing = prefix
        else:
            failing, size = prefix, size * 2
    # Narrow: bisect between the last failing and the first passing prefix.
    while passing is not None and count < max_trials and passing - failing > 1:
        middle = (failing + passing) // 2
        count += 1
        outcome = yield middle
        if outcome is None:
            return passing
        if outcome:
            passing = middle
        else:
            failing = middle
    return passing


@dataclass(frozen=True)
class _Replay:
    """The search replayed over the outcomes known: the prefixes it tried, in order, and the next
    one whose outcome is not known (None: the search is over, and ``passing`` is its answer)."""

    tried: tuple[int, ...]
    next: int | None
    passing: int | None


def _replay(first_passed: bool, available: int, max_trials: int, known: Mapping[int, bool | None]) -> _Replay:
    search = _search(first_passed, available, max_trials)
    tried: list[int] = []
    try:
        prefix = next(search)
        while prefix in known:
            tried.append(prefix)
            prefix = search.send(known[prefix])
    except StopIteration as done:
        return _Replay(tuple(tried), None, done.value)
    return _Replay(tuple(tried), prefix, None)


# Outcomes a round's lookahead considers at most (the tree of outcomes doubles with each trial).
_LOOKAHEAD_BRANCHES = 256


def _lookahead(
    first_passed: bool, available: int, max_trials: int, known: Mapping[int, bool | None], width: int
) -> list[int]:
    """Up to ``width`` prefixes to build in one round: the next the search tries, then those it
    would try after it whichever way the unknown outcomes turn out, nearest first. With width 1
    this is the plain search; wider, a build the search turns out not to need is discarded."""
    wanted: list[int] = []
    branches: list[dict[int, bool | None]] = [dict(known)]
    for branch in branches:
        if len(wanted) >= width or len(branches) > _LOOKAHEAD_BRANCHES:
            break
        prefix = _replay(first_passed, available, max_trials, branch).next
        if prefix is None:
            continue
        if prefix not in wanted:
            wanted.append(prefix)
        branches += [{**branch, prefix: False}, {**branch, prefix: True}]
    return wanted


def fall_back(
    first: M,
    groups: Sequence[tuple[str, ...]],
    build: BuildMany[M],
    ranges: Ranges,
    *,
    max_trials: int,
    width: int = 1,
    widening: int = 0,
) -> tuple[FallbackResult[M], Ranges]:
    """Search the smallest prefix of ``groups`` whose exclusion passes the gate.

    The first ``widening`` groups are 4-bit nodes: a prefix returns them to 8 bits, not float;
    the groups after them return to float (a node in both is in float).

    ``first`` is the full plan's measured model; ``build`` makes and measures models with the
    given nodes in float from the ranges known so far, and returns each with the ranges it
    needed. At most ``max_trials`` trials. If none passes, the model that missed the bound by
    the least is kept, and the result says so. Returns the result and the ranges after it.

    Each round builds up to ``width`` prefixes at once (the next trial and those that may follow
    it); the trials reported, and the model kept, are those of the search one trial at a time.
    A tensor's range does not depend on which trial observed it, so the order is immaterial.
    """
    assert first.gate is not None
    passed, available = first.gate.passed, len(groups)
    built: dict[int, tuple[M, Ranges] | QuantCliError] = {}
    known: dict[int, bool | None] = {}
    while wanted := _lookahead(passed, available, max_trials, known, max(1, width)):
        asked = [_trial(groups, prefix, widening) for prefix in wanted]
        for prefix, outcome in zip(wanted, build(asked, ranges), strict=True):
            built[prefix] = outcome
            if isinstance(outcome, QuantCliError):
                known[prefix] = None
                continue
            measured, needed = outcome
            assert measured.gate is not None
            known[prefix] = measured.gate.passed
            ranges = {**ranges, **needed}
    replay = _replay(passed, available, max_trials, known)
    results: dict[int, M] = {0: first}
    steps = [_step(0, 0, Trial(()), first)]
    for prefix in replay.tried:
        outcome, trial = built[prefix], _trial(groups, prefix, widening)
        if isinstance(outcome, QuantCliError):
            logger.info("fallback trial with %d groups returned failed: %s", prefix, outcome)
            failed = FallbackStep(len(steps), prefix, trial.excluded, None, 0.0, 0, note=str(outcome))
            steps.append(replace(failed, widened=trial.widened))
            continue
        results[prefix] = outcome[0]
        steps.append(_step(len(steps), prefix, trial, outcome[0]))
    return _finish(results, steps, replay.passing, available), ranges


def _trial(groups: Sequence[tuple[str, ...]], prefix: int, widening: int) -> Trial:
    """The prefix's nodes: the first ``widening`` groups' to 8 bits, the others' to float."""
    excluded = tuple(dict.fromkeys(n for group in groups[widening:prefix] for n in group))
    floated = set(excluded)
    widened = (n for group in groups[: min(prefix, widening)] for n in group if n not in floated)
    return Trial(excluded, tuple(dict.fromkeys(widened)))


def _shortfall(measured: Measured) -> float:
    return measured.gate.shortfall if measured.gate is not None else float("inf")


def _finish(
    results: dict[int, M], steps: list[FallbackStep], passing: int | None, available: int
) -> FallbackResult[M]:
    kept = passing if passing is not None else min(results, key=lambda p: _shortfall(results[p]))
    # A prefix is built at most once, so exactly one step is marked.
    marked = tuple(replace(s, chosen=s.groups == kept and s.gate is not None) for s in steps)
    chosen = next(s for s in marked if s.chosen)
    if any(s.widened for s in steps):
        returned = (
            f"{len(chosen.widened)} 4-bit nodes returned to 8 bits and {len(chosen.excluded)} nodes "
            f"to float ({kept} of {available} ranked steps)"
        )
        passed, missed = returned, returned
    else:
        passed = f"{kept} of {available} ranked groups of nodes returned to float"
        missed = f"{kept} of {available} ranked groups in float"
    if passing is not None:
        summary = f"the gate passes with {passed}"
    else:
        summary = f"no trial passed the gate; kept the one that missed it by the least ({missed})"
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
    start: Candidate,
    shop: Workshop,
    config: QuantConfig,
    ranges: Ranges,
    *,
    auto: bool = False,
    builds: Builds | None = None,
) -> Repaired:
    """--per-layer: rank ``start``'s tensors. --auto-fallback, when ``start`` misses the bound:
    return the nodes behind the worst ones to float, on its mode's plan. Ranges in, ranges out.

    ``auto``: in auto mode fallback runs unasked too (auto never settles for a slow mode that
    passed while a faster one might be repaired). Unasked, its ranking runs on fewer samples and
    measures fewer tensors alone, so that the default stays affordable on a large model
    (PP-OCRv4 det at 640x640: 743 s of diagnosis with 32 samples and 32 tensors alone).
    """
    builds = builds if builds is not None else LocalBuilds()
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
        runtime=reference.runtime,
    )
    if not (falls_back and missed):
        return Repaired(start, diagnosis, None, ranges)
    trials = iter(range(1, config.max_trials + 1))
    kept_float = dict(start.plan.kept_float)

    def build(asked: Sequence[Trial], known: Ranges) -> list[Built | QuantCliError]:
        orders = [
            Order(
                Variant(start.plan.mode, frozenset(t.excluded), kept_float, frozenset(t.widened)),
                known,
                progress=(
                    "fallback trial",
                    min(next(trials, config.max_trials), config.max_trials),
                    config.max_trials,
                ),
            )
            for t in asked
        ]
        return builds(orders, config, shop)

    # 4-bit layers return to 8 bits first (worst first), then groups to float.
    widen = diagnosis.block_groups()
    fallback, ranges = fall_back(
        start,
        [*widen, *diagnosis.node_groups()],
        build,
        ranges,
        max_trials=config.max_trials,
        width=builds.width,
        widening=len(widen),
    )
    return Repaired(fallback.chosen, replace(diagnosis, top_k=config.top_k), fallback, ranges)
