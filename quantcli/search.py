"""Choosing among candidates, and why: one function, pure over the figures measured.

:func:`decide` picks the candidate ``--mode auto`` keeps (the fastest within the accuracy bound;
if none is, the most faithful), names the one worth repairing by fallback, and gives every
candidate the sentence the report shows, all from one reading of the rules. Called again with
what fallback made of the candidate it named (:class:`Repair`), it settles whether the repaired
model replaces the winner. It reads plain values only, so the same figures give the same choice
wherever they were measured, and no list is changed.

:func:`search_candidates` is the search around it: build every candidate (one
:func:`quantcli.build.build_candidate` each, independent of the others), time them when asked,
decide, repair (:func:`quantcli.repair.repair`), decide again. :func:`report_for` and
:func:`measured_choice` turn its result into what ``convert`` reports and ``calibrate`` records.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from quantcli.blockwise.layout import BITS
from quantcli.build import (
    Builds,
    Built,
    Candidate,
    Job,
    LocalBuilds,
    Order,
    Reference,
    Workshop,
    reference_for,
    time_side_by_side,
    workshop_for,
)
from quantcli.calibration.branches import untaken_float
from quantcli.calibration.collect import stage
from quantcli.calibration.data import Dataset, model_inputs
from quantcli.calibration.observers import TensorStats
from quantcli.calibration.sampling import Part
from quantcli.choice import LATENCY_TIE, ModeChoice, candidate_plans, recorded_config, roles, unmeasured_mode
from quantcli.config import QuantConfig, QuantMode, SpeedSource
from quantcli.cost import Prediction, default_cost_model, profile_kernels
from quantcli.diagnose import LayerDiagnosis
from quantcli.engine import summary
from quantcli.errors import ConfigError, QuantCliError, QuantizationError
from quantcli.evaluate import GateResult, load_labels
from quantcli.graph.io import ModelFile
from quantcli.graph.output import StagedOutput
from quantcli.inputs import CalibrationRequest, Run, naming, ranges_for, split_data
from quantcli.passes.nbits import DEFAULT_FORM
from quantcli.plan import NodeRole, select, target_of
from quantcli.repair import FallbackResult, repair
from quantcli.report import (
    BlockwiseSummary,
    CalibrationSummary,
    CandidateSummary,
    FallbackSummary,
    QuantReport,
    SizeSummary,
    SpeedSummary,
)

__all__ = [
    "Decision",
    "Figures",
    "Repair",
    "Searched",
    "auto_choice",
    "decide",
    "figures_of",
    "measured_choice",
    "predicted_speed",
    "report_for",
    "search_candidates",
    "summaries",
]

logger = logging.getLogger(__name__)

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


def figures_of(candidate: Candidate, source: SpeedSource) -> Figures:
    """What the choice reads of a built candidate."""
    return Figures(
        mode=candidate.plan.mode,
        gate=candidate.gate,
        speed_ms=candidate.speed_ms(source),
        size_bytes=candidate.size_bytes,
        # Most multiply-accumulates in integer kernels, by the profile auto predicts from (a
        # timed candidate has none, and counts as such).
        integer_heavy=candidate.predicted is None or candidate.predicted.integer_mac_share >= 0.5,
    )


@dataclass(frozen=True)
class Searched:
    """Every candidate built, the final decision, the model written, and how it was reached."""

    candidates: tuple[Candidate, ...]
    decision: Decision
    written: Candidate
    diagnosis: LayerDiagnosis | None
    fallback: FallbackResult[Candidate] | None
    float_prediction: Prediction | None  # the float model's, when auto predicted speeds


def _built(run: Run, jobs: list[Job], shop: Workshop, builds: Builds) -> list[Candidate]:
    """Every job built and measured, ``builds.width`` at a time; among several, one that fails
    is dropped with a warning. Every candidate but the last rewrites a fresh copy; the last may
    consume the original."""
    last = len(jobs) - 1
    orders = [
        Order(
            job,
            model=run.loaded.model if index == last else None,
            progress=(f"build candidate {job.plan.mode}", index + 1, len(jobs)),
        )
        for index, job in enumerate(jobs)
    ]
    width = max(1, builds.width)
    outcomes: list[Built | QuantCliError] = []
    for start in range(0, len(orders), width):
        outcomes += builds(orders[start : start + width], run.config, shop)
    candidates = []
    for job, built in zip(jobs, outcomes, strict=True):
        if isinstance(built, QuantizationError) and len(jobs) > 1:
            logger.warning("%s mode candidate dropped: %s", job.plan.mode, built)
        elif isinstance(built, QuantizationError):
            raise QuantizationError(f"{run.loaded.path}: {built}") from built
        elif isinstance(built, QuantCliError):
            raise built
        else:
            candidates.append(built[0])
    if not candidates:
        raise QuantizationError(f"{run.loaded.path}: no candidate mode produced a smaller, valid model")
    return candidates


def _timed(run: Run, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates to compare: with ``--speed measured`` timed here against each other."""
    evaluation = run.datasets.evaluation
    if len(candidates) == 1:
        return candidates
    if evaluation is None or any(c.gate is None for c in candidates):
        raise ConfigError("--mode auto measures its candidates: give --eval-data or --data with 2+ samples")
    if run.config.speed is not SpeedSource.MEASURED:
        return candidates
    stage("time candidates")
    latencies = time_side_by_side({c.plan.mode.value: c.session for c in candidates}, evaluation)
    return [replace(c, latency=latencies[c.plan.mode.value]) for c in candidates]


def _repair_outcome(run: Run, first: Decision, candidates: list[Candidate], result: Candidate) -> Repair:
    """What fallback made of candidate ``first.start``, as the choice reads it; a repaired model
    other than the first choice that passes is timed again beside it when speeds are timed."""
    speed, was = run.config.speed, candidates[first.start]
    changed, timed = result is not was, None
    passed = result.gate is not None and result.gate.passed
    if first.start != first.winner and speed is SpeedSource.MEASURED and passed:
        assert run.datasets.evaluation is not None
        sessions = {"repaired": result.session, "winner": candidates[first.winner].session}
        latency = time_side_by_side(sessions, run.datasets.evaluation)
        result = replace(result, latency=latency["repaired"])
        timed = (latency["winner"].median_ms, latency["repaired"].median_ms)
    was_float = {d.name for d in was.plan.decisions if d.role is NodeRole.FLOAT}
    returned = sum(d.role is NodeRole.FLOAT and d.name not in was_float for d in result.plan.decisions)
    return Repair(first.start, figures_of(result, speed), changed, returned, timed)


def search_candidates(
    run: Run,
    reference: Reference,
    jobs: list[Job],
    staging: StagedOutput,
    output: Path,
    *,
    builds: Builds | None = None,
) -> Searched:
    """Build, stage, check and measure every job; choose; repair (--per-layer, --auto-fallback,
    and in auto mode the winner or a clearly faster candidate that missed the bound); the model
    written joins ``staging``, the rest go. ``builds`` runs the builds (elsewhere: on Ray, see
    :mod:`quantcli.distributed`); timing and the choice stay here, so the outcome is the same."""
    builds = builds if builds is not None else LocalBuilds()
    config, auto = run.config, run.mode is QuantMode.AUTO
    shop = workshop_for(run, reference, output, staging.force)
    float_prediction = None
    if shop.target.feed is not None and reference.proto is not None:
        with naming(run.loaded.path):
            kernels = profile_kernels(reference.proto, shop.target.feed, data_folder=shop.target.data_folder)
        float_prediction = default_cost_model().predict(kernels)
    with shop.scratches:
        candidates = _timed(run, _built(run, jobs, shop, builds))
        first = decide([figures_of(c, config.speed) for c in candidates], config.speed)
        repaired = repair(candidates[first.start], shop, config, jobs[0].ranges, auto=auto, builds=builds)
        outcome = _repair_outcome(run, first, candidates, repaired.candidate)
        final = decide([figures_of(c, config.speed) for c in candidates], config.speed, outcome)
        written = repaired.candidate if final.winner == first.start else candidates[final.winner]
        staging.adopt(written.scratch)
    return Searched(
        tuple(candidates), final, written, repaired.diagnosis, repaired.fallback, float_prediction
    )


def summaries(searched: Searched, input_bytes: int) -> tuple[CandidateSummary, ...]:
    """Every candidate with why it won or lost (none when there was no choice)."""
    decision = searched.decision
    return tuple(
        CandidateSummary(
            mode=c.plan.mode.value,
            output_bytes=c.staged.size_bytes,
            size_ratio=input_bytes / c.staged.size_bytes,
            int8_weight_fraction=c.int8_weight_fraction,
            gate=c.gate,
            latency=c.latency,
            chosen=index == decision.winner,
            reason=reason,
            predicted=c.predicted,
        )
        for index, (c, reason) in enumerate(zip(searched.candidates, decision.reasons, strict=False))
    )


def predicted_speed(searched: Searched, output: Path) -> tuple[SpeedSummary | None, tuple[str, ...]]:
    """The written model's predicted speed against float, and a warning (logged, so it reaches
    stderr, and kept for the report) when it is predicted no faster than the float model."""
    winner, float_prediction = searched.written, searched.float_prediction
    if float_prediction is None or winner.predicted is None:
        return None, ()
    speed = SpeedSummary(float_prediction, winner.predicted)
    if speed.ratio < 1.0:
        return speed, ()
    faster = [
        c for c in searched.candidates if c.predicted is not None and c.predicted.ms < float_prediction.ms
    ]
    why = (
        f"the faster {'/'.join(str(c.plan.mode) for c in faster)} missed the accuracy bound"
        if faster
        else "no mode is predicted to run faster than float"
    )
    warning = (
        f"the {winner.plan.mode} model is predicted to run {speed.ratio:.2f}x as long as the float "
        f"model ({100 * speed.quantized.integer_mac_share:.0f}% of its multiply-adds in integer "
        f"kernels): {why}"
    )
    logger.warning("%s: %s", output, warning)
    return speed, (warning,)


def measured_choice(run: Run, stats: dict[str, TensorStats]) -> ModeChoice | None:
    """What ``convert --mode auto`` would pick with these statistics and evaluation data; the
    candidates are built in a scratch folder and discarded. None: no mode changes the model."""
    loaded = run.loaded
    untaken = untaken_float(
        loaded.model, target_of(run.config), run.datasets.calibration, run.config.batch_size
    )
    plans = candidate_plans(loaded.model, run.config, QuantMode.AUTO, kept_float=untaken)
    if not plans:
        return None
    observed = sorted({name for plan in plans for name in plan.observed})
    ranges = ranges_for(observed, run.config, lambda _: stats)
    reference = reference_for(run, needed=True)
    with (
        tempfile.TemporaryDirectory(prefix="quantcli-candidates-") as folder,
        StagedOutput(force=True) as scratch,
    ):
        jobs = [Job(plan, ranges) for plan in plans]
        searched = search_candidates(run, reference, jobs, scratch, Path(folder) / loaded.path.name)
        listed = summaries(searched, loaded.size_bytes)
    plan = searched.written.plan
    return ModeChoice(
        plan.mode, f"auto: {searched.decision.reason}", roles(plan), tuple(s.to_dict() for s in listed)
    )


def report_for(
    run: Run, searched: Searched, calibration: CalibrationSummary, mode_reason: str, output: Path
) -> QuantReport:
    """The report of a conversion: the model written, how it was chosen, what it cost."""
    loaded, config, winner = run.loaded, run.config, searched.written
    decision = searched.decision
    if run.mode is QuantMode.AUTO:
        mode_reason = f"auto: {decision.note or decision.reason}"
    target = target_of(config)
    speed, warnings = predicted_speed(searched, output) if target.predicted_by_onnxruntime else (None, ())
    opset = target.opset_warning(loaded.opset)
    if opset is not None:
        logger.warning("%s: %s", output, opset)
        warnings = (*warnings, opset)
    engine = summary(target)  # logs why, when it is not the target's own
    fallback = searched.fallback
    return QuantReport(
        model=str(loaded.path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, winner.staged.size_bytes),
        config=recorded_config(config, run.mode),
        calibration=calibration,
        plan=winner.plan,
        int8_weight_fraction=winner.int8_weight_fraction,
        fidelity=winner.fidelity,
        fidelity_note="" if winner.fidelity else "not measured: give --eval-data (or --data with 2+ samples)",
        gate=winner.gate if config.has_gate else None,
        candidates=summaries(searched, loaded.size_bytes),
        mode_reason=mode_reason,
        opset_upgraded_from=loaded.upgraded_from_opset,
        per_layer=searched.diagnosis,
        fallback=FallbackSummary.of(fallback, loaded.size_bytes) if fallback is not None else None,
        speed=speed,
        warnings=(*warnings, *((engine.note,) if engine.note else ())),
        blockwise=_blockwise_summary(config, winner),
        engine=engine,
    )


def _blockwise_summary(config: QuantConfig, winner: Candidate) -> BlockwiseSummary | None:
    if not config.four_bits:
        return None
    widths = dict(winner.plan.block_widths)
    return BlockwiseSummary(
        bits=BITS,
        block_size=config.block_size,
        symmetric=config.weight_symmetric,
        method=config.block_method.value,
        form=DEFAULT_FORM.value,
        accuracy_level=winner.plan.block_accuracy_level,
        layers=winner.blockwise,
        widths=tuple(
            (d.name, d.op_type, widths[d.name], d.reason) for d in winner.plan.decisions if d.name in widths
        ),
    )


def auto_choice(
    request: CalibrationRequest,
    loaded: ModelFile,
    config: QuantConfig,
    samples: Dataset,
    observed: Callable[[Dataset, int, Part], dict[str, TensorStats]],
) -> tuple[dict[str, TensorStats], ModeChoice | None]:
    """Auto's decision for ``calibrate``: candidates calibrated on all but the held-back part
    and measured on it (or on ``eval_data``); the held-back part is observed too."""
    specs = model_inputs(loaded.model)
    datasets = split_data(samples, (request.data, request.eval_data), specs, config, QuantMode.AUTO)
    assert datasets.calibration is not None
    stats = observed(datasets.calibration, 0, datasets.calibration_part)
    if datasets.evaluation is None:
        mode, reason = unmeasured_mode(has_ranges=True, dynamic_applies=True)
        return stats, ModeChoice(mode, reason, roles(select(loaded.model, config, mode=mode)))
    # Observed before the candidates are built: the last one rewrites the model in place.
    offset = datasets.calibration.num_samples
    held = observed(datasets.evaluation, offset, Part.HELD_BACK) if request.eval_data is None else None
    labels = (
        load_labels(request.labels, datasets.evaluation.num_samples) if request.labels is not None else None
    )
    choice = measured_choice(Run(loaded, config, QuantMode.AUTO, datasets, labels), stats)
    if held is not None:
        # A tensor of an If branch only held-back samples take is in ``held`` alone, and the other way round.
        stats = {name: s.merged(held[name]) if name in held else s for name, s in stats.items()} | {
            name: h for name, h in held.items() if name not in stats
        }
    return stats, choice
