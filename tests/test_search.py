"""The choice among candidates (quantcli.search.decide) and fallback's ranges in, ranges out
(quantcli.repair.fall_back): both are functions of plain values, tested here without a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pytest

from quantcli.calibration.observers import TensorRange
from quantcli.config import GateMetric, QuantMode, SpeedSource
from quantcli.errors import QuantCliError, QuantizationError
from quantcli.evaluate import GateResult
from quantcli.repair import Trial, fall_back
from quantcli.search import Figures, Repair, decide

PREDICTED = SpeedSource.PREDICTED


def _figures(mode: QuantMode, drop: float, ms: float, *, heavy: bool = True, size: int = 100) -> Figures:
    """A candidate whose cosine drop is ``drop`` points against a bound of 1 point."""
    return Figures(mode, GateResult(GateMetric.COSINE, drop, 1.0), ms, size, heavy)


def test_the_fastest_passing_integer_mode_wins_and_every_candidate_says_why() -> None:
    figures = [
        _figures(QuantMode.STATIC, 0.5, 10.0),
        _figures(QuantMode.DYNAMIC, 0.2, 20.0),
        _figures(QuantMode.MIXED, 3.0, 5.0),
        # Fastest of all, within the bound, but its heavy compute stays float.
        _figures(QuantMode.WEIGHT_ONLY, 0.1, 4.0, heavy=False),
    ]
    given = list(figures)
    decision = decide(figures, PREDICTED)
    assert figures == given  # nothing is reordered or replaced
    assert decision.winner == 0 and not decision.repaired
    assert decision.reasons[1] == "within the bound, 5.00x predicted slower"
    assert decision.reasons[2] == "misses the bound by 2.00 points"
    # mixed missed the bound but is clearly faster than static: it is the one to repair.
    assert decision.start == 2
    assert decide(figures, PREDICTED) == decision  # deterministic


def test_a_tie_goes_to_the_most_faithful_then_the_smaller() -> None:
    figures = [
        _figures(QuantMode.STATIC, 0.5, 10.0, size=90),
        _figures(QuantMode.MIXED, 0.3, 10.4, size=120),  # within 5% of static, more faithful
    ]
    decision = decide(figures, PREDICTED)
    assert decision.winner == 1
    assert decision.reasons == (
        "within 5% of the fastest (a tie), less faithful",
        "within 5% of the fastest (a tie), more faithful",
    )
    assert decision.reason == decision.reasons[1]


def test_with_none_passing_the_least_shortfall_wins() -> None:
    figures = [_figures(QuantMode.STATIC, 3.0, 10.0), _figures(QuantMode.DYNAMIC, 1.5, 30.0)]
    decision = decide(figures, PREDICTED)
    assert decision.winner == 1 and decision.start == 1  # nothing passed: repair the winner itself
    assert decision.reasons[1] == "no mode met the bound; this one lost the least"


def test_a_repaired_faster_candidate_replaces_the_winner_only_when_clearly_faster() -> None:
    figures = [_figures(QuantMode.STATIC, 3.0, 5.0), _figures(QuantMode.DYNAMIC, 0.5, 10.0)]
    first = decide(figures, PREDICTED)
    assert first.winner == 1 and first.start == 0
    repaired = Repair(0, _figures(QuantMode.STATIC, 0.8, 6.0), changed=True, returned=3)
    kept = decide(figures, PREDICTED, repaired)
    assert kept.winner == 0 and kept.repaired
    assert "with 3 node(s) returned to float" in kept.note and "1.67x as fast as dynamic" in kept.note
    assert kept.reasons[0].startswith("missed the bound; repaired by fallback")
    slow = Repair(0, _figures(QuantMode.STATIC, 0.8, 9.8), changed=True, returned=3)
    lost = decide(figures, PREDICTED, slow)
    assert lost.winner == 1 and not lost.repaired
    assert lost.note == "dynamic: static repaired by fallback passes but is not faster (1.02x)"
    # Timed side by side, the timing decides, not the figures given.
    timed = Repair(0, _figures(QuantMode.STATIC, 0.8, 9.8), changed=True, returned=3, timed=(10.0, 5.0))
    assert decide(figures, SpeedSource.MEASURED, timed).winner == 0


@dataclass(frozen=True)
class _Trial:
    gate: GateResult | None
    int8_weight_fraction: float
    size_bytes: int


def test_fallback_takes_ranges_in_and_gives_ranges_out() -> None:
    known: Mapping[str, TensorRange] = {"a": TensorRange(-1.0, 1.0)}
    seen: list[frozenset[str]] = []

    def build(
        trials: Sequence[Trial], ranges: Mapping[str, TensorRange]
    ) -> list[tuple[_Trial, dict[str, TensorRange]]]:
        assert len(trials) == 1  # one trial at a time by default
        excluded = [frozenset(trials[0].excluded)]
        seen.append(excluded[0])
        extended = {**ranges, f"t{len(seen)}": TensorRange(0.0, float(len(seen)))}
        drop = 2.0 if len(excluded[0]) < 2 else 0.5
        return [(_Trial(GateResult(GateMetric.COSINE, drop, 1.0), 0.5, 10), extended)]

    first = _Trial(GateResult(GateMetric.COSINE, 3.0, 1.0), 1.0, 8)
    result, ranges = fall_back(first, [("n1",), ("n2",), ("n3",)], build, known, max_trials=4)
    assert known == {"a": TensorRange(-1.0, 1.0)}  # what it was given is not changed
    assert set(ranges) == {"a"} | {f"t{i}" for i in range(1, len(seen) + 1)}
    assert seen[0] == frozenset({"n1"}) and frozenset({"n1", "n2"}) in seen
    assert result.passed and [s.excluded for s in result.steps if s.chosen] == [("n1", "n2")]


def _search_rounds(width: int, passes_from: int, broken: int | None = None) -> tuple[object, int, int]:
    """A fallback over 12 groups whose trials pass from ``passes_from`` groups in float (the trial
    of ``broken`` groups cannot be built), run ``width`` builds a round: its steps, rounds, builds."""
    rounds = builds = 0

    def build(
        trials: Sequence[Trial], ranges: Mapping[str, TensorRange]
    ) -> list[tuple[_Trial, Mapping[str, TensorRange]] | QuantCliError]:
        nonlocal rounds, builds
        excluded = [t.excluded for t in trials]
        assert 1 <= len(excluded) <= width
        rounds, builds = rounds + 1, builds + len(excluded)
        out: list[tuple[_Trial, Mapping[str, TensorRange]] | QuantCliError] = []
        for names in excluded:
            if len(names) == broken:
                out.append(QuantizationError("the quantized model fails to run"))
                continue
            drop = 0.5 if len(names) >= passes_from else 2.0 + 1.0 / (1 + len(names))
            out.append((_Trial(GateResult(GateMetric.COSINE, drop, 1.0), 1.0 - len(names) / 12, 10), ranges))
        return out

    first = _Trial(GateResult(GateMetric.COSINE, 3.0, 1.0), 1.0, 8)
    groups = [(f"n{i}",) for i in range(1, 13)]
    result, _ = fall_back(first, groups, build, {}, max_trials=8, width=width)
    return result, rounds, builds


@pytest.mark.parametrize(("passes_from", "broken"), [(1, None), (5, None), (11, None), (13, None), (6, 4)])
def test_fallback_builds_ahead_in_rounds_and_reports_the_one_at_a_time_search(
    passes_from: int, broken: int | None
) -> None:
    alone, one_rounds, one_builds = _search_rounds(1, passes_from, broken)
    assert one_rounds == one_builds
    for width in (2, 3, 7):
        wide, rounds, builds = _search_rounds(width, passes_from, broken)
        assert wide == alone  # the same trials, in the same order, the same model kept
        assert rounds <= one_rounds and builds >= one_builds
    _, rounds, _ = _search_rounds(7, passes_from, broken)
    if one_rounds >= 3:
        assert rounds < one_rounds  # three levels of the search per round


def test_fallback_widens_4_bit_groups_before_any_goes_to_float() -> None:
    """With three 4-bit groups ranked first, trials return them to 8 bits in growing prefixes;
    the gate passes once "a" and "b" are at 8 bits, so nothing goes to float and "c" stays 4-bit."""
    asked: list[Trial] = []

    def build(
        trials: Sequence[Trial], ranges: Mapping[str, TensorRange]
    ) -> list[tuple[_Trial, Mapping[str, TensorRange]]]:
        asked.extend(trials)
        out = []
        for trial in trials:
            wide = {"a", "b"} <= set(trial.widened) | set(trial.excluded)
            out.append((_Trial(GateResult(GateMetric.COSINE, 0.5 if wide else 2.0, 1.0), 1.0, 10), ranges))
        return out

    first = _Trial(GateResult(GateMetric.COSINE, 3.0, 1.0), 1.0, 8)
    groups = [("a",), ("b",), ("c",), ("a",), ("b",), ("c",)]
    result, _ = fall_back(first, groups, build, {}, max_trials=6, widening=3)
    assert all(not t.excluded for t in asked)  # the widening alone passes: nothing to float
    chosen = next(s for s in result.steps if s.chosen)
    assert result.passed and chosen.widened == ("a", "b") and chosen.excluded == ()
    assert "2 4-bit nodes returned to 8 bits and 0 nodes to float" in result.summary
