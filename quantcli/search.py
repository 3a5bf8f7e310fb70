"""Choosing among candidates, and why: one function, pure over the figures measured.

:func:`decide` picks the candidate ``--mode auto`` keeps (the fastest within the accuracy bound;
if none is, the most faithful), names the one worth repairing by fallback, and gives every
candidate the sentence the report shows, all from one reading of the rules. Called again with
what fallback made of the candidate it named (:class:`Repair`), it settles whether the repaired
model replaces the winner. It reads plain values only, so the same figures give the same choice
wherever they were measured, and no list is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quantcli.choice import LATENCY_TIE
from quantcli.config import QuantMode, SpeedSource
from quantcli.evaluate import GateResult

__all__ = ["Decision", "Figures", "Repair", "decide"]

_TIE = f"{round(100 * (LATENCY_TIE - 1))}%"


@dataclass(frozen=True)
class Figures:
    """What the choice reads of one candidate. ``speed_ms`` is by the source compared (the
    cost model's prediction, or a timing); ``integer_heavy``: most of its multiply-accumulates
    run in integer kernels."""

    mode: QuantMode
    gate: GateResult | None
    speed_ms: float | None
    size_bytes: int
    integer_heavy: bool

    @property
    def passed(self) -> bool:
        return self.gate is not None and self.gate.passed

    @property
    def missed(self) -> bool:
        return self.gate is not None and not self.gate.passed

    @property
    def speed(self) -> float:
        return float("inf") if self.speed_ms is None else self.speed_ms

    @property
    def shortfall(self) -> float:
        return self.gate.shortfall if self.gate is not None else float("inf")


@dataclass(frozen=True)
class Repair:
    """What fallback made of candidate ``start``: the repaired model's figures, whether it is
    another model than the one fallback began with, how many nodes it returned to float, and,
    when speeds are timed, the winner's and the repaired model's medians timed side by side."""

    start: int
    figures: Figures
    changed: bool
    returned: int = 0
    timed: tuple[float, float] | None = None


@dataclass(frozen=True)
class Decision:
    """The candidate chosen (``winner``: the one the written model comes from, itself or repaired
    by fallback, as ``repaired`` says), the one to hand to fallback (``start``), every
    candidate's reason, and ``note``: why a repaired candidate won or lost."""

    winner: int
    start: int
    repaired: bool
    reasons: tuple[str, ...]
    note: str = ""

    @property
    def reason(self) -> str:
        """Why the winner was chosen, as the report's mode reason says it."""
        return self.reasons[self.winner] if self.reasons else "the only mode that changes this model"


def decide(figures: Sequence[Figures], source: SpeedSource, repair: Repair | None = None) -> Decision:
    """Choose among ``figures`` (at least one), and, given ``repair``, settle it."""
    rules = _Rules(figures)
    first = rules.first()
    start = rules.worth_repairing(first)
    winner, repaired, note = first, False, ""
    if repair is not None:
        winner, repaired, note = rules.settle(first, repair, source)
    reasons = rules.reasons(winner, repaired, source) if len(figures) > 1 else ()
    return Decision(winner, first if start is None else start, repaired, reasons, note)


class _Rules:
    """The rules over one set of figures, each derived once."""

    def __init__(self, figures: Sequence[Figures]) -> None:
        self.figures = tuple(figures)
        self.passing = [i for i, f in enumerate(self.figures) if f.passed]
        speeds = [s for i in self.passing if (s := self.figures[i].speed_ms) is not None]
        # The fastest that passed, which every other speed is stated against.
        self.fastest = min(speeds, default=None)

    def _speed(self) -> Callable[[int], float]:
        return lambda i: self.figures[i].speed

    def first(self) -> int:
        """The fastest candidate within the bound (if none is, the most faithful one)."""
        figures, speed = self.figures, self._speed()
        if len(figures) == 1:
            return 0
        if not self.passing:
            return min(range(len(figures)), key=lambda i: figures[i].shortfall)
        # A mode that leaves the heavy compute in float (weight-only; dynamic on a convolutional
        # network) wins only when no mode that runs it in integer kernels meets the bound.
        heavy = [i for i in self.passing if figures[i].integer_heavy] or self.passing
        fastest = min(speed(i) for i in heavy)
        # Speeds a few percent apart are within the error of a prediction (or the noise of a
        # shared machine): among those the most faithful wins (fidelity does not vary), then the
        # smaller.
        close = [i for i in heavy if speed(i) <= fastest * LATENCY_TIE]
        return min(close, key=lambda i: (figures[i].shortfall, figures[i].size_bytes))  # all have gates

    def worth_repairing(self, winner: int) -> int | None:
        """The candidate to repair by fallback when the winner met the bound: the fastest that
        missed it, if clearly (beyond the tie) faster than the winner; or, when the winner leaves
        the heavy compute in float, the fastest that missed it and runs that compute in integer
        kernels."""
        chosen, speed = self.figures[winner], self._speed()
        if not chosen.passed or chosen.speed_ms is None:
            return None
        missed = [i for i, f in enumerate(self.figures) if f.missed]
        if not chosen.integer_heavy:  # any mode with integer kernels is worth repairing
            return min((i for i in missed if self.figures[i].integer_heavy), key=speed, default=None)
        faster = [i for i in missed if speed(i) * LATENCY_TIE < chosen.speed_ms]
        return min(faster, key=speed, default=None)

    def settle(self, first: int, repair: Repair, source: SpeedSource) -> tuple[int, bool, str]:
        """The winner after fallback, whether it is repaired, and the note: a repaired candidate
        other than the first choice replaces it if it passes and is still clearly faster."""
        if repair.start == first:
            return first, repair.changed, ""
        mode, other, repaired = self.figures[repair.start].mode, self.figures[first].mode, repair.figures
        if not repaired.passed:
            return (
                first,
                False,
                f"{other}: {mode} missed the bound and fallback did not repair it within --max-trials",
            )
        ratio = self.figures[first].speed / repaired.speed
        if repair.timed is not None:
            ratio = repair.timed[0] / repair.timed[1]
        runs = "is predicted to run" if source is SpeedSource.PREDICTED else "runs"
        integer_gain = repaired.integer_heavy and not self.figures[first].integer_heavy
        if ratio > LATENCY_TIE or (ratio > 1.0 and integer_gain):
            note = (
                f"{mode} missed the bound; with {repair.returned} node(s) returned to float by fallback "
                f"it passes and {runs} {ratio:.2f}x as fast as {other}, the fastest mode that passed as built"
            )
            return repair.start, True, note
        return first, False, f"{other}: {mode} repaired by fallback passes but is not faster ({ratio:.2f}x)"

    def reasons(self, winner: int, repaired: bool, source: SpeedSource) -> tuple[str, ...]:
        """Every candidate with why it won or lost."""
        return tuple(self._reason(i, winner, repaired, source) for i in range(len(self.figures)))

    def _reason(self, index: int, winner: int, repaired: bool, source: SpeedSource) -> str:
        figures = self.figures[index]
        own = figures.speed_ms
        speed = None if own is None or self.fastest is None else own / self.fastest
        slower = "predicted slower" if source is SpeedSource.PREDICTED else "slower"
        if index == winner and repaired:
            return "missed the bound; repaired by fallback and written (see why this mode)"
        if repaired and figures.passed:
            return f"within the bound, {slower} than {self.figures[winner].mode} repaired"
        if index == winner and self.passing:
            if speed is None or speed <= 1.0:
                return "fastest within the bound"
            return f"within {_TIE} of the fastest (a tie), more faithful"
        if index == winner:
            return "no mode met the bound; this one lost the least"
        if figures.gate is not None and not figures.gate.passed:
            return f"misses the bound by {figures.gate.missed_by:.2f} {figures.gate.unit}"
        if speed is not None and speed <= LATENCY_TIE:
            return f"within {_TIE} of the fastest (a tie), less faithful"
        return f"within the bound, {speed:.2f}x {slower}" if speed is not None else "within the bound"
