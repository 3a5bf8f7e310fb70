"""Automatic fallback: return the most harmful nodes to float until the accuracy gate passes.

Start from the full plan. The per-layer diagnosis ranks the quantized tensors (by their effect on
the output when quantized alone, then by their own error) and says which nodes carry each one.
Groups of nodes, worst first, go back to float in growing prefixes (1, 2, 4, ... groups) until the
gate passes; then the prefix is narrowed by bisection while trials remain, so as much of the
model as the bound allows stays int8. Every trial is a full build, check and evaluation, and every
one is reported with its cost. It assumes that returning more to float never hurts, which holds
closely enough in practice; a trial that contradicts it is still reported as measured.

The loop knows nothing about how a model is built: the caller gives a function from a set of
excluded nodes to a measured result. So it composes with any mode whose plan honours exclusions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from quantcli.errors import QuantCliError
from quantcli.evaluate import GateResult

__all__ = ["FallbackResult", "FallbackStep", "Measured", "fall_back"]

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


def fall_back(
    first: M,
    groups: Sequence[tuple[str, ...]],
    build: Callable[[frozenset[str]], M],
    *,
    max_trials: int,
) -> FallbackResult[M]:
    """Search the smallest prefix of ``groups`` whose exclusion passes the gate.

    ``first`` is the full plan's measured model; ``build`` makes and measures the model with the
    given nodes in float. At most ``max_trials`` builds. If none passes, the model that missed
    the bound by the least is kept, and the result says so.
    """
    assert first.gate is not None
    results: dict[int, M] = {0: first}
    steps = [_step(0, 0, (), first)]

    def nodes(prefix: int) -> tuple[str, ...]:
        return tuple(n for group in groups[:prefix] for n in group)

    def attempt(prefix: int) -> bool | None:
        """Build with ``prefix`` groups in float; True if it passes, None if it cannot be built."""
        excluded = nodes(prefix)
        try:
            measured = build(frozenset(excluded))
        except QuantCliError as exc:
            logger.info("fallback trial with %d groups in float failed: %s", prefix, exc)
            steps.append(FallbackStep(len(steps), prefix, excluded, None, 0.0, 0, note=str(exc)))
            return None
        assert measured.gate is not None
        results[prefix] = measured
        steps.append(_step(len(steps), prefix, excluded, measured))
        return measured.gate.passed

    failing, passing = 0, None
    if first.gate.passed:
        passing = 0
    trials, size = 0, 1
    # Grow: 1, 2, 4, ... groups in float, until the gate passes or the groups run out.
    while passing is None and trials < max_trials and failing < len(groups):
        prefix = min(failing + size, len(groups))
        outcome = attempt(prefix)
        trials += 1
        if outcome is None:
            break
        if outcome:
            passing = prefix
        else:
            failing, size = prefix, size * 2
    # Narrow: bisect between the last failing and the first passing prefix.
    while passing is not None and trials < max_trials and passing - failing > 1:
        middle = (failing + passing) // 2
        outcome = attempt(middle)
        trials += 1
        if outcome is None:
            break
        if outcome:
            passing = middle
        else:
            failing = middle
    return _finish(results, steps, passing, len(groups))


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
