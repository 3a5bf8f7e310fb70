"""Orchestration only: each public function runs the stages in order and returns typed results.

load -> check data -> plan -> collect ranges -> build candidates -> choose -> repair -> report.
Nothing is decided or computed here that a stage module owns: what a run reads is
:mod:`quantcli.inputs`, one candidate :mod:`quantcli.build`, the choice :mod:`quantcli.search`,
fallback :mod:`quantcli.repair`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from quantcli import inputs
from quantcli.build import Builds, Job, reference_for
from quantcli.calibration.branches import untaken_float
from quantcli.calibration.collect import Progress, reporting, stage, within
from quantcli.calibration.data import Dataset, model_inputs
from quantcli.calibration.file import CalibrationFile, read_calibration
from quantcli.calibration.observers import TensorStats
from quantcli.calibration.sampling import Part, Shard, select_samples
from quantcli.calibration.sources import DataSource, open_source
from quantcli.choice import (
    ModeChoice,
    candidate_plans,
    recorded_config,
    recorded_mode,
    roles,
    unmeasured_mode,
)
from quantcli.config import Overrides, QuantConfig, QuantMode, merge
from quantcli.engine import summary
from quantcli.errors import ConfigError, QuantizationError
from quantcli.graph.guard import PathGuard
from quantcli.graph.io import ModelFile, check_model_file, fingerprint
from quantcli.graph.output import StagedOutput
from quantcli.inputs import (
    CalibrationRequest,
    Collector,
    Remote,
    Request,
    Run,
    ShardResult,
    ShardWork,
    observe_shard,
)
from quantcli.modes import strategy
from quantcli.plan import candidate_tensors, select, target_of
from quantcli.report import CalibrationSummary, QuantReport, SizeSummary
from quantcli.search import auto_choice, report_for, search_candidates

__all__ = [
    "Collector",
    "QuantResult",
    "ShardResult",
    "ShardWork",
    "calibrate",
    "observe_shard",
    "quantize",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantResult:
    """What :func:`quantize` wrote and what it measured."""

    output: Path
    report: QuantReport


def _write_unchanged(run: Run, output: Path, staging: StagedOutput) -> QuantResult:
    """``--allow-noop``: the float model, re-saved as it is, with a report saying so."""
    loaded, config = run.loaded, run.config
    staged = staging.write_model(loaded.model, output, external_data=inputs.needs_external_data(loaded))
    check_model_file(staged.path, target_of(config))
    report = QuantReport(
        engine=summary(target_of(config)),
        model=str(loaded.path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, staged.size_bytes),
        config=recorded_config(config, run.mode),
        calibration=CalibrationSummary(config.method.value, 0, "not needed: nothing to quantize"),
        plan=select(loaded.model, config, mode=run.mode),
        int8_weight_fraction=0.0,
        fidelity=None,
        fidelity_note="not measured: the model was written unchanged (nothing to quantize)",
    )
    return QuantResult(output=output, report=report)


def quantize(  # noqa: PLR0913 (the Python API's option list: every argument after * is named by the caller)
    model_path: Path,
    output: Path,
    *,
    config: QuantConfig | Overrides | None = None,
    data: DataSource | None = None,
    calibration: Path | None = None,
    eval_data: DataSource | None = None,
    labels: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    staging: StagedOutput | None = None,
    collector: Collector | None = None,
    builds: Builds | None = None,
) -> QuantResult:
    """Quantize ``model_path`` to int8 and write it to ``output``, checked and atomically.

    Ranges come from ``data`` (calibrated now) or ``calibration`` (a file from :func:`calibrate`);
    the dynamic and weight-only modes need neither. Fidelity is measured on ``eval_data``, or on
    a held-back part of ``data``. With ``mode=auto`` every candidate mode is built and measured
    and the fastest one within the accuracy bound is written. With ``staging``, the model joins
    files the caller commits together (a report, say); otherwise it is moved into place before
    returning. On any error nothing new is left behind. ``collector`` runs the calibration pass
    elsewhere (on Ray: :mod:`quantcli.distributed`), on the same samples; ``builds`` the
    candidates' and fallback trials' builds, with the same model and report as a local run.

    ``config`` is taken whole; given as :class:`Overrides` (or None), what it leaves unset comes
    from the defaults, and the calibration method from ``calibration``'s file unless given, as
    on the command line (see :func:`quantcli.config.merge`).
    """
    if not isinstance(config, QuantConfig):
        given = config or Overrides()
        recorded = read_calibration(calibration) if calibration is not None and given.method is None else None
        config = merge(QuantConfig(), given, calibration=recorded)
    request = Request(model_path, output, data, calibration, eval_data, labels, progress, collector)
    if staging is not None:
        with reporting(progress):
            return _quantize_into(staging, request, config, builds)
    with StagedOutput(force=force) as own:
        with reporting(progress):
            result = _quantize_into(own, request, config, builds)
        own.commit()
    return result


def _quantize_into(
    staging: StagedOutput, request: Request, config: QuantConfig, builds: Builds | None
) -> QuantResult:
    inputs.check_request(request, config)
    loaded, recorded = inputs.open_request(staging, request)
    mode, mode_reason, kept_float = recorded_mode(loaded.model, config, recorded)
    datasets = inputs.open_data(model_inputs(loaded.model), request.data, request.eval_data, config, mode)
    labels = inputs.labels_for(request.labels, datasets)
    has_ranges = recorded is not None or datasets.calibration is not None
    if mode is QuantMode.AUTO and datasets.evaluation is None:
        dynamic = strategy(QuantMode.DYNAMIC)
        runs = target_of(config).runs(QuantMode.DYNAMIC)
        applies = runs and dynamic.changes(select(loaded.model, config, mode=dynamic))
        mode, mode_reason = unmeasured_mode(has_ranges=has_ranges, dynamic_applies=applies)
    # Nodes of If branches no calibration sample takes have no statistics: they stay float.
    untaken = untaken_float(loaded.model, target_of(config), datasets.calibration, config.batch_size)
    kept_float = {**untaken, **kept_float}
    run = Run(loaded, config, mode, datasets, labels)
    plans = candidate_plans(loaded.model, config, mode, has_ranges=has_ranges, kept_float=kept_float)
    if not plans and config.allow_noop:
        return _write_unchanged(run, request.output, staging)
    if not plans:
        raise QuantizationError(
            f"{request.model_path}: nothing to quantize in {mode} mode (no Conv, MatMul, Gemm or Gather "
            "on float weights that would gain from it; `quantcli inspect` says why for each node); "
            "try --mode weight-only, or pass --allow-noop to write it unchanged"
        )
    inputs.check_weights(loaded, plans)
    ranges, calibration_summary = inputs.calibrated_ranges(run, plans, recorded, request)
    reference = reference_for(run, needed=datasets.evaluation is not None or len(plans) > 1)
    searched = search_candidates(
        run, reference, [Job(plan, ranges) for plan in plans], staging, request.output, builds=builds
    )
    return QuantResult(
        request.output, report_for(run, searched, calibration_summary, mode_reason, request.output)
    )


def calibrate(  # noqa: PLR0913 (the Python API's option list: every argument after * is named by the caller)
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
    request = CalibrationRequest(model_path, data, shard, eval_data, labels, progress, collector)
    with reporting(progress):
        if collector is not None and shard is not None:
            raise ConfigError("--shard observes one part here; --ray splits the samples itself: give one")
        guard = guard if guard is not None else PathGuard()
        inputs.check_engine(config or QuantConfig())
        inputs.guard_inputs(
            guard,
            model_path,
            sources=((data, "--data"), (eval_data, "--eval-data")),
            files=((labels, "--labels"),),
        )
        return _calibrate(request, inputs.load_checked(guard, model_path), config or QuantConfig())


def _calibrate(request: CalibrationRequest, loaded: ModelFile, config: QuantConfig) -> CalibrationFile:
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
    inputs.check_weights(loaded, candidate_plans(loaded.model, config, config.mode))
    tensors = candidate_tensors(loaded.model, target_of(config))
    if not tensors:
        raise QuantizationError(f"{request.model_path}: nothing to calibrate (no quantizable float tensors)")

    def observed(dataset: Dataset, offset: int = 0, part: Part = Part.ALL) -> dict[str, TensorStats]:
        """Statistics of ``dataset``, the part of ``samples`` that starts at ``offset``."""
        if offset == 0:
            stage("calibrate", total=samples.num_samples)
        advance = within(request.progress, offset, dataset.num_samples, samples.num_samples)
        remote = Remote(request.collector, request.data, part) if request.collector is not None else None
        return inputs.Observer(loaded, config, True, remote).stats(tensors, dataset, advance)

    model_fingerprint = fingerprint(loaded.model)  # before auto's last candidate rewrites the model
    choice: ModeChoice | None = None
    if request.shard is not None:
        stats = observed(samples)  # a shard cannot decide for all the data
    elif config.mode is not QuantMode.AUTO:
        stats = observed(samples)
        choice = ModeChoice(config.mode, f"{config.mode} was asked for", roles(select(loaded.model, config)))
    else:
        stats, choice = auto_choice(request, loaded, config, samples, observed)
    return CalibrationFile(
        model_fingerprint=model_fingerprint,
        method=config.method,
        percentile=config.percentile,
        num_samples=samples.num_samples,
        stats=stats,
        shards=(str(request.shard),) if request.shard is not None else (),
        choice=choice,
    )
