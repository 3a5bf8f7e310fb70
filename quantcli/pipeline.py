"""Orchestration only: each public function runs the stages in order and returns typed results.

load -> check data -> plan -> collect ranges -> build candidates -> choose -> repair -> report.
Nothing is decided or computed here that a stage module owns: what a run reads is
:mod:`quantcli.inputs`, one candidate :mod:`quantcli.build`, the choice :mod:`quantcli.search`,
fallback :mod:`quantcli.repair`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.build import (
    BuildTarget,
    Candidate,
    Job,
    Reference,
    Workshop,
    build_candidate,
    copy_model,
    time_side_by_side,
)
from quantcli.calibration.collect import Progress, TensorRange, reporting, stage, within
from quantcli.calibration.data import Dataset, InputSpec, model_inputs
from quantcli.calibration.file import CalibrationFile
from quantcli.calibration.observers import TensorStats
from quantcli.calibration.sampling import Part, Shard, select_samples
from quantcli.calibration.sources import DataSource, open_source
from quantcli.choice import ModeChoice, unmeasured_mode
from quantcli.config import QuantConfig, QuantMode, SpeedSource
from quantcli.cost import Prediction, default_cost_model, profile_kernels
from quantcli.diagnose import LayerDiagnosis
from quantcli.errors import ConfigError, QuantizationError
from quantcli.evaluate import first_sample, load_labels
from quantcli.graph.guard import PathGuard
from quantcli.graph.io import (
    ModelFile,
    check_model_file,
    external_folder,
    fingerprint,
    open_session,
    serialize,
)
from quantcli.graph.output import StagedOutput, check_writable
from quantcli.graph.quantized import refuse_quantized
from quantcli.inputs import (
    Collector,
    Datasets,
    Remote,
    ShardResult,
    ShardWork,
    check_data_path,
    check_weights,
    guard_inputs,
    guard_model_files,
    naming,
    needs_external_data,
    observe,
    observe_shard,
    open_data,
    ranges_for,
    split_data,
)
from quantcli.inputs import prepare as _prepare
from quantcli.inputs import read_calibration_for as _read_calibration_for
from quantcli.plan import NodeRole, QuantPlan, candidate_tensors, select
from quantcli.repair import FallbackResult, repair
from quantcli.report import (
    CalibrationSummary,
    CandidateSummary,
    FallbackSummary,
    QuantReport,
    SizeSummary,
    SpeedSummary,
)
from quantcli.search import Decision, Repair, decide

__all__ = [
    "Collector",
    "ModelSummary",
    "QuantResult",
    "ShardResult",
    "ShardWork",
    "calibrate",
    "inspect_model",
    "observe_shard",
    "quantize",
]

logger = logging.getLogger(__name__)

# Candidate modes --mode auto tries (most integer work first).
_AUTO_MODES = (QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)


@dataclass(frozen=True)
class QuantResult:
    """What :func:`quantize` wrote and what it measured."""

    output: Path
    report: QuantReport


@dataclass(frozen=True)
class _Request:
    """What :func:`quantize` was asked to read and write."""

    model_path: Path
    output: Path
    data: DataSource | None
    calibration: Path | None
    eval_data: DataSource | None
    labels: Path | None
    progress: Progress | None = None
    collector: Collector | None = None


@dataclass(frozen=True)
class _Run:
    """One conversion as settled before any candidate is built: ``mode`` is the concrete mode,
    or auto when candidates are measured against each other."""

    loaded: ModelFile
    config: QuantConfig
    mode: QuantMode
    datasets: Datasets
    labels: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class _Searched:
    """Every candidate built, the final decision, the model written, and how it was reached."""

    candidates: tuple[Candidate, ...]
    decision: Decision
    written: Candidate
    diagnosis: LayerDiagnosis | None
    fallback: FallbackResult[Candidate] | None
    float_prediction: Prediction | None  # the float model's, when auto predicted speeds


def _settle_recorded_mode(
    model: ir.Model, config: QuantConfig, recorded: tuple[Path, CalibrationFile] | None
) -> tuple[QuantMode, str, dict[str, str]]:
    """Auto replays the mode decision a calibration file records; any other mode is the user's.

    A replay also leaves float the nodes the decision left float beyond the plan's rules (the
    cost model's unprofitable Convs, fallback's returns), by their recorded roles, so it writes the
    model the decision measured. Returns the mode, its reason and those nodes.
    """
    if config.mode is not QuantMode.AUTO:
        return config.mode, f"{config.mode} was asked for", {}
    if recorded is None or recorded[1].choice is None:
        return config.mode, "", {}  # decided later, by measuring or by rule
    path, choice = recorded[0], recorded[1].choice
    ruled = {d.name: d.role for d in select(model, config, mode=choice.mode).decisions}
    kept = {
        name: f"float: left float by the decision recorded in {path}"
        for name, role in sorted(choice.roles.items())
        if role == NodeRole.FLOAT.value and ruled.get(name, NodeRole.FLOAT) is not NodeRole.FLOAT
    }
    return choice.mode, f"auto: the decision recorded in {path} ({choice.reason})", kept


def _plans(
    model: ir.Model,
    config: QuantConfig,
    mode: QuantMode,
    *,
    has_ranges: bool = True,
    kept_float: Mapping[str, str] | None = None,
) -> list[QuantPlan]:
    """The plans to build: ``mode``'s, or every distinct non-empty one for auto (without
    calibration ranges, only the modes that need none)."""
    modes = tuple(m for m in _AUTO_MODES if has_ranges or not m.needs_calibration)
    plans: list[QuantPlan] = []
    seen: set[tuple[str, ...]] = set()
    for each in modes if mode is QuantMode.AUTO else (mode,):
        plan = select(model, config, kept_float, mode=each)
        signature = tuple(d.role.value for d in plan.decisions)
        if plan.is_noop or signature in seen:
            continue  # e.g. mixed is static again on a model without MatMul
        seen.add(signature)
        plans.append(plan)
    return plans


def _reported(config: QuantConfig, mode: QuantMode) -> QuantConfig:
    """The settings a report records: those that reproduce its model, so in the mode settled
    before any candidate was built (a recorded decision, auto's rule without data)."""
    return replace(config, mode=mode)


def _load(guard: PathGuard, model_path: Path) -> ModelFile:
    stage("load")
    loaded = _prepare(model_path)
    refuse_quantized(loaded.model, model_path)
    guard_model_files(guard, loaded)
    return loaded


def _ranges(
    run: _Run, plans: list[QuantPlan], recorded: tuple[Path, CalibrationFile] | None, request: _Request
) -> tuple[dict[str, TensorRange], CalibrationSummary]:
    """The activation ranges every plan needs: from the calibration file, or observed now."""
    observed = sorted({name for plan in plans for name in plan.observed})
    config = run.config
    method = config.method.describe(config.percentile)
    if not observed:
        return {}, CalibrationSummary("none", 0, f"not needed in {run.mode} mode")
    if recorded is not None:
        stats = recorded[1].stats
        return ranges_for(observed, config, lambda _: stats), CalibrationSummary(
            method, recorded[1].num_samples, str(recorded[0])
        )
    dataset = run.datasets.calibration
    assert dataset is not None
    stage("calibrate", total=dataset.num_samples)
    remote = None
    if request.collector is not None and request.data is not None:
        remote = Remote(request.collector, request.data, run.datasets.calibration_part)
    histograms = config.method.needs_histogram
    ranges = ranges_for(
        observed,
        config,
        lambda names: observe(
            run.loaded,
            names,
            dataset,
            config,
            histograms=histograms,
            progress=request.progress,
            remote=remote,
        ),
    )
    return ranges, CalibrationSummary(method, dataset.num_samples, str(dataset.source))


def _reference(run: _Run, *, needed: bool) -> Reference:
    """The float model candidates are measured against: a reference to its files, not a copy
    of its weights (None when nothing is measured and only one candidate is built)."""
    proto = serialize(run.loaded.model) if needed else None
    session = None
    if proto is not None and run.datasets.evaluation:
        with naming(run.loaded.path):
            session = open_session(proto, data_folder=external_folder(run.loaded.model))
    return Reference(run.loaded, proto, session, run.datasets, run.labels)


def _workshop(run: _Run, reference: Reference, output: Path, staging: StagedOutput) -> Workshop:
    """Where this run's candidates are built. Auto compares speeds by the cost model: every
    candidate is then profiled on one sample."""
    evaluation = run.datasets.evaluation
    predicted = run.mode is QuantMode.AUTO and run.config.speed is SpeedSource.PREDICTED
    feed = first_sample(evaluation) if predicted and evaluation is not None else None
    target = BuildTarget(
        output,
        needs_external_data(run.loaded),
        run.loaded.size_bytes,
        run.datasets.calibration,
        external_folder(run.loaded.model),
        feed,
    )
    return Workshop(target, reference, contextlib.ExitStack(), staging.force)


def _built(run: _Run, jobs: list[Job], shop: Workshop) -> list[Candidate]:
    """Every job built and measured; among several, one that fails is dropped with a warning.
    Every candidate but the last rewrites a fresh copy; the last may consume the original."""
    candidates = []
    for index, job in enumerate(jobs):
        last = index == len(jobs) - 1
        model = run.loaded.model if last else copy_model(shop.reference.proto, shop.target.data_folder)
        stage(f"build candidate {job.plan.mode}", index + 1, len(jobs))
        try:
            candidates.append(build_candidate(model, job, run.config, shop))
        except QuantizationError as exc:
            if len(jobs) == 1:
                raise QuantizationError(f"{run.loaded.path}: {exc}") from exc
            logger.warning("%s mode candidate dropped: %s", job.plan.mode, exc)
    if not candidates:
        raise QuantizationError(f"{run.loaded.path}: no candidate mode produced a smaller, valid model")
    return candidates


def _timed(run: _Run, candidates: list[Candidate]) -> list[Candidate]:
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


def _repair_outcome(run: _Run, first: Decision, candidates: list[Candidate], result: Candidate) -> Repair:
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
    return Repair(first.start, result.figures(speed), changed, returned, timed)


def _search(
    run: _Run, reference: Reference, jobs: list[Job], staging: StagedOutput, output: Path
) -> _Searched:
    """Build, stage, check and measure every job; choose; repair (--per-layer, --auto-fallback,
    and in auto mode the winner or a clearly faster candidate that missed the bound); the model
    written joins ``staging``, the rest go."""
    config, auto = run.config, run.mode is QuantMode.AUTO
    shop = _workshop(run, reference, output, staging)
    float_prediction = None
    if shop.target.feed is not None and reference.proto is not None:
        with naming(run.loaded.path):
            kernels = profile_kernels(reference.proto, shop.target.feed, data_folder=shop.target.data_folder)
        float_prediction = default_cost_model().predict(kernels)
    with shop.scratches:
        candidates = _timed(run, _built(run, jobs, shop))
        first = decide([c.figures(config.speed) for c in candidates], config.speed)
        # Auto never settles for a slow mode that passed while a faster one might be repaired.
        repair_config = replace(config, auto_fallback=True) if auto else config
        start = candidates[first.start]
        repaired = repair(
            start, shop, repair_config, jobs[0].ranges, unasked=auto and not config.auto_fallback
        )
        outcome = _repair_outcome(run, first, candidates, repaired.candidate)
        final = decide([c.figures(config.speed) for c in candidates], config.speed, outcome)
        written = repaired.candidate if final.winner == first.start else candidates[final.winner]
        staging.adopt(written.scratch)
    return _Searched(
        tuple(candidates), final, written, repaired.diagnosis, repaired.fallback, float_prediction
    )


def _summaries(searched: _Searched, input_bytes: int) -> tuple[CandidateSummary, ...]:
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


def _predicted_speed(searched: _Searched, output: Path) -> tuple[SpeedSummary | None, tuple[str, ...]]:
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


def _report(
    run: _Run, searched: _Searched, calibration: CalibrationSummary, mode_reason: str, output: Path
) -> QuantReport:
    loaded, config, winner = run.loaded, run.config, searched.written
    decision = searched.decision
    if run.mode is QuantMode.AUTO:
        mode_reason = f"auto: {decision.note or decision.reason}"
    speed, warnings = _predicted_speed(searched, output)
    fallback = searched.fallback
    return QuantReport(
        model=str(loaded.path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, winner.staged.size_bytes),
        config=_reported(config, run.mode),
        calibration=calibration,
        plan=winner.plan,
        int8_weight_fraction=winner.int8_weight_fraction,
        fidelity=winner.fidelity,
        fidelity_note="" if winner.fidelity else "not measured: give --eval-data (or --data with 2+ samples)",
        gate=winner.gate if config.has_gate else None,
        candidates=_summaries(searched, loaded.size_bytes),
        mode_reason=mode_reason,
        opset_upgraded_from=loaded.upgraded_from_opset,
        per_layer=searched.diagnosis,
        fallback=FallbackSummary.of(fallback, loaded.size_bytes) if fallback is not None else None,
        speed=speed,
        warnings=warnings,
    )


def _write_unchanged(run: _Run, output: Path, staging: StagedOutput) -> QuantResult:
    """``--allow-noop``: the float model, re-saved as it is, with a report saying so."""
    loaded, config = run.loaded, run.config
    staged = staging.write_model(loaded.model, output, external_data=needs_external_data(loaded))
    check_model_file(staged.path)
    report = QuantReport(
        model=str(loaded.path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, staged.size_bytes),
        config=_reported(config, run.mode),
        calibration=CalibrationSummary(config.method.value, 0, "not needed: nothing to quantize"),
        plan=select(loaded.model, config, mode=run.mode),
        int8_weight_fraction=0.0,
        fidelity=None,
        fidelity_note="not measured: the model was written unchanged (nothing to quantize)",
    )
    return QuantResult(output=output, report=report)


def quantize(
    model_path: Path,
    output: Path,
    *,
    config: QuantConfig | None = None,
    data: DataSource | None = None,
    calibration: Path | None = None,
    eval_data: DataSource | None = None,
    labels: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    staging: StagedOutput | None = None,
    collector: Collector | None = None,
) -> QuantResult:
    """Quantize ``model_path`` to int8 and write it to ``output``, checked and atomically.

    Ranges come from ``data`` (calibrated now) or ``calibration`` (a file from :func:`calibrate`);
    the dynamic and weight-only modes need neither. Fidelity is measured on ``eval_data``, or on
    a held-back part of ``data``. With ``mode=auto`` every candidate mode is built and measured
    and the fastest one within the accuracy bound is written. With ``staging``, the model joins
    files the caller commits together (a report, say); otherwise it is moved into place before
    returning. On any error nothing new is left behind. ``collector`` runs the calibration pass
    elsewhere (on Ray: :mod:`quantcli.distributed`), on the same samples.
    """
    request = _Request(model_path, output, data, calibration, eval_data, labels, progress, collector)
    if staging is not None:
        with reporting(progress):
            return _quantize_into(staging, request, config or QuantConfig())
    with StagedOutput(force=force) as own:
        with reporting(progress):
            result = _quantize_into(own, request, config or QuantConfig())
        own.commit()
    return result


def _check_request(request: _Request, config: QuantConfig) -> None:
    if request.data is not None and request.calibration is not None:
        raise ConfigError("give calibration data (--data) or a calibration file (--calibration), not both")
    if config.mode.needs_calibration and request.data is None and request.calibration is None:
        raise ConfigError(
            f"{config.mode} mode calibrates activations: give --data or --calibration "
            "(or choose --mode dynamic or --mode weight-only, which need no data)"
        )
    if config.bias_correction and request.data is None:
        raise ConfigError("--bias-correction measures Conv input means on --data; give --data")


def _labels(labels: Path | None, datasets: Datasets) -> npt.NDArray[np.int64] | None:
    if labels is None:
        return None
    if datasets.evaluation is None:
        raise ConfigError("--labels needs evaluation data (--eval-data, or --data with 2+ samples)")
    return load_labels(labels, datasets.evaluation.num_samples)


def _opened(
    staging: StagedOutput, request: _Request
) -> tuple[ModelFile, tuple[Path, CalibrationFile] | None]:
    """The model loaded (and the calibration file read) once every path is declared and the
    output may be written."""
    guard_inputs(
        staging.guard,
        request.model_path,
        sources=((request.data, "--data"), (request.eval_data, "--eval-data")),
        files=((request.calibration, "--calibration"), (request.labels, "--labels")),
    )
    staging.guard.writes(request.output, "the output model")
    check_writable(request.output, force=staging.force)
    loaded = _load(staging.guard, request.model_path)
    check_data_path(loaded, request.output, staging)
    if request.calibration is None:
        return loaded, None
    return loaded, (request.calibration, _read_calibration_for(loaded, request.calibration))


def _quantize_into(staging: StagedOutput, request: _Request, config: QuantConfig) -> QuantResult:
    _check_request(request, config)
    loaded, recorded = _opened(staging, request)
    mode, mode_reason, kept_float = _settle_recorded_mode(loaded.model, config, recorded)
    datasets = open_data(model_inputs(loaded.model), request.data, request.eval_data, config, mode)
    labels = _labels(request.labels, datasets)
    has_ranges = recorded is not None or datasets.calibration is not None
    if mode is QuantMode.AUTO and datasets.evaluation is None:
        dynamic_plan = select(loaded.model, config, mode=QuantMode.DYNAMIC)
        mode, mode_reason = unmeasured_mode(has_ranges=has_ranges, dynamic_applies=not dynamic_plan.is_noop)
    run = _Run(loaded, config, mode, datasets, labels)
    plans = _plans(loaded.model, config, mode, has_ranges=has_ranges, kept_float=kept_float)
    if not plans and config.allow_noop:
        return _write_unchanged(run, request.output, staging)
    if not plans:
        raise QuantizationError(
            f"{request.model_path}: nothing to quantize in {mode} mode (no Conv, MatMul, Gemm or Gather "
            "on float weights that would gain from it; `quantcli inspect` says why for each node); "
            "try --mode weight-only, or pass --allow-noop to write it unchanged"
        )
    check_weights(loaded, plans)
    ranges, calibration_summary = _ranges(run, plans, recorded, request)
    reference = _reference(run, needed=datasets.evaluation is not None or len(plans) > 1)
    searched = _search(run, reference, [Job(plan, ranges) for plan in plans], staging, request.output)
    return QuantResult(
        request.output, _report(run, searched, calibration_summary, mode_reason, request.output)
    )


@dataclass(frozen=True)
class _Calibration:
    """What :func:`calibrate` was asked to observe."""

    model_path: Path
    data: DataSource
    shard: Shard | None
    eval_data: DataSource | None
    labels: Path | None
    progress: Progress | None
    collector: Collector | None


def calibrate(
    model_path: Path,
    data: DataSource,
    *,
    config: QuantConfig | None = None,
    shard: Shard | None = None,
    eval_data: DataSource | None = None,
    labels: Path | None = None,
    progress: Progress | None = None,
    collector: Collector | None = None,
    guard: PathGuard | None = None,
) -> CalibrationFile:
    """Observe every tensor any plan could quantize (min, max, histogram), for later ``convert``
    runs with any method; ``shard`` observes one of N disjoint parts of the samples.

    Over all the data (no shard) the file also records the mode decision: the mode asked for, or
    with ``mode=auto`` the one auto picks by building every candidate from the statistics of the
    calibration part and measuring it on ``eval_data`` or a held-back part, exactly as ``convert``
    would. The held-back part is observed too, so the statistics still cover every sample.
    ``collector`` observes elsewhere (on Ray: :mod:`quantcli.distributed`), the same samples.
    ``guard`` holds the file the caller will write (see :mod:`quantcli.graph.guard`).
    """
    request = _Calibration(model_path, data, shard, eval_data, labels, progress, collector)
    with reporting(progress):
        if collector is not None and shard is not None:
            raise ConfigError("--shard observes one part here; --ray splits the samples itself: give one")
        guard = guard if guard is not None else PathGuard()
        guard_inputs(
            guard,
            model_path,
            sources=((data, "--data"), (eval_data, "--eval-data")),
            files=((labels, "--labels"),),
        )
        return _calibrate(request, _load(guard, model_path), config or QuantConfig())


def _calibrate(request: _Calibration, loaded: ModelFile, config: QuantConfig) -> CalibrationFile:
    samples = select_samples(
        open_source(
            request.data,
            model_inputs(loaded.model),
            skip_nonfinite=config.skip_nonfinite,
            max_samples=config.max_samples,
        ),
        max_samples=config.max_samples,
        seed=config.seed,
        shard=request.shard,
    )
    check_weights(loaded, _plans(loaded.model, config, config.mode))
    tensors = candidate_tensors(loaded.model)
    if not tensors:
        raise QuantizationError(f"{request.model_path}: nothing to calibrate (no quantizable float tensors)")

    def observed(dataset: Dataset, offset: int = 0, part: Part = Part.ALL) -> dict[str, TensorStats]:
        """Statistics of ``dataset``, the part of ``samples`` that starts at ``offset``."""
        if offset == 0:
            stage("calibrate", total=samples.num_samples)
        advance = within(request.progress, offset, dataset.num_samples, samples.num_samples)
        remote = Remote(request.collector, request.data, part) if request.collector is not None else None
        return observe(loaded, tensors, dataset, config, histograms=True, progress=advance, remote=remote)

    model_fingerprint = fingerprint(loaded.model)  # before auto's last candidate rewrites the model
    choice: ModeChoice | None = None
    if request.shard is not None:
        stats = observed(samples)  # a shard cannot decide for all the data
    elif config.mode is not QuantMode.AUTO:
        stats = observed(samples)
        choice = ModeChoice(config.mode, f"{config.mode} was asked for", _roles(select(loaded.model, config)))
    else:
        stats, choice = _auto_choice(request, loaded, config, samples, observed)
    return CalibrationFile(
        model_fingerprint=model_fingerprint,
        method=config.method,
        percentile=config.percentile,
        num_samples=samples.num_samples,
        stats=stats,
        shards=(str(request.shard),) if request.shard is not None else (),
        choice=choice,
    )


def _auto_choice(
    request: _Calibration,
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
        return stats, ModeChoice(mode, reason, _roles(select(loaded.model, config, mode=mode)))
    # Observed before the candidates are built: the last one rewrites the model in place.
    offset = datasets.calibration.num_samples
    held = observed(datasets.evaluation, offset, Part.HELD_BACK) if request.eval_data is None else None
    labels = (
        load_labels(request.labels, datasets.evaluation.num_samples) if request.labels is not None else None
    )
    choice = _measured_choice(_Run(loaded, config, QuantMode.AUTO, datasets, labels), stats)
    if held is not None:
        stats = {name: s.merged(held[name]) for name, s in stats.items()}
    return stats, choice


def _roles(plan: QuantPlan) -> dict[str, str]:
    return {d.name: d.role.value for d in plan.decisions}


def _measured_choice(run: _Run, stats: dict[str, TensorStats]) -> ModeChoice | None:
    """What ``convert --mode auto`` would pick with these statistics and evaluation data; the
    candidates are built in a scratch folder and discarded. None: no mode changes the model."""
    loaded = run.loaded
    plans = _plans(loaded.model, run.config, QuantMode.AUTO)
    if not plans:
        return None
    observed = sorted({name for plan in plans for name in plan.observed})
    ranges = ranges_for(observed, run.config, lambda _: stats)
    reference = _reference(run, needed=True)
    with (
        tempfile.TemporaryDirectory(prefix="quantcli-candidates-") as folder,
        StagedOutput(force=True) as scratch,
    ):
        jobs = [Job(plan, ranges) for plan in plans]
        searched = _search(run, reference, jobs, scratch, Path(folder) / loaded.path.name)
        summaries = _summaries(searched, loaded.size_bytes)
    plan = searched.written.plan
    return ModeChoice(
        plan.mode, f"auto: {searched.decision.reason}", _roles(plan), tuple(s.to_dict() for s in summaries)
    )


@dataclass(frozen=True)
class ModelSummary:
    """What ``inspect`` shows: the model's interface, size, ops and the quantization plan."""

    path: str
    size_bytes: int
    opset: int
    inputs: tuple[InputSpec, ...]
    outputs: tuple[tuple[str, str, str], ...]
    parameters: int
    op_types: dict[str, int]
    plan: QuantPlan
    mode_reason: str = ""


def inspect_model(
    model_path: Path, config: QuantConfig | None = None, *, calibration: Path | None = None
) -> ModelSummary:
    """Describe a model and the plan :func:`quantize` would follow for it: in the mode asked
    for, or the one ``calibration`` records. Auto with no recorded decision decides by measuring,
    which inspect does not do: it shows the static plan and says so."""
    config = config or QuantConfig()
    loaded = _prepare(model_path)
    model = loaded.model
    recorded = (calibration, _read_calibration_for(loaded, calibration)) if calibration is not None else None
    mode, mode_reason, kept_float = _settle_recorded_mode(model, config, recorded)
    if mode is QuantMode.AUTO:
        mode = QuantMode.STATIC
        mode_reason = "auto decides by measuring every mode (convert or calibrate); this is static's plan"
    outputs = tuple(
        (
            str(v.name),
            np.dtype(v.dtype.numpy()).name if v.dtype is not None else "?",
            "[" + ",".join(str(d) if isinstance(d, int) else "?" for d in v.shape.dims) + "]"
            if v.shape
            else "[?]",
        )
        for v in model.graph.outputs
    )
    parameters = sum(
        int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None
    )
    return ModelSummary(
        path=str(model_path),
        size_bytes=loaded.size_bytes,
        opset=loaded.opset,
        inputs=model_inputs(model),
        outputs=outputs,
        parameters=parameters,
        op_types=dict(sorted(Counter(n.op_type for n in model.graph).items())),
        plan=select(model, config, kept_float, mode=mode),
        mode_reason=mode_reason,
    )
