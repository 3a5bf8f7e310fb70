"""Orchestration only: each public function runs the stages in order and returns typed results.

load -> check data -> plan -> collect ranges -> build candidates -> choose -> repair -> report.
Nothing is decided or computed here that a stage module owns: what a run reads is
:mod:`quantcli.inputs`, one candidate :mod:`quantcli.build`, the choice :mod:`quantcli.search`,
fallback :mod:`quantcli.repair`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantcli import inputs
from quantcli.build import Job, reference_for
from quantcli.calibration.collect import Progress, reporting, stage, within
from quantcli.calibration.data import Dataset, InputSpec, model_inputs
from quantcli.calibration.file import CalibrationFile
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
from quantcli.config import QuantConfig, QuantMode
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
from quantcli.inputs import prepare as _prepare
from quantcli.inputs import read_calibration_for as _read_calibration_for
from quantcli.modes import strategy
from quantcli.plan import QuantPlan, candidate_tensors, select
from quantcli.report import CalibrationSummary, QuantReport, SizeSummary
from quantcli.search import auto_choice, report_for, search_candidates

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


@dataclass(frozen=True)
class QuantResult:
    """What :func:`quantize` wrote and what it measured."""

    output: Path
    report: QuantReport


def _write_unchanged(run: Run, output: Path, staging: StagedOutput) -> QuantResult:
    """``--allow-noop``: the float model, re-saved as it is, with a report saying so."""
    loaded, config = run.loaded, run.config
    staged = staging.write_model(loaded.model, output, external_data=inputs.needs_external_data(loaded))
    check_model_file(staged.path)
    report = QuantReport(
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
    request = Request(model_path, output, data, calibration, eval_data, labels, progress, collector)
    if staging is not None:
        with reporting(progress):
            return _quantize_into(staging, request, config or QuantConfig())
    with StagedOutput(force=force) as own:
        with reporting(progress):
            result = _quantize_into(own, request, config or QuantConfig())
        own.commit()
    return result


def _quantize_into(staging: StagedOutput, request: Request, config: QuantConfig) -> QuantResult:
    inputs.check_request(request, config)
    loaded, recorded = inputs.open_request(staging, request)
    mode, mode_reason, kept_float = recorded_mode(loaded.model, config, recorded)
    datasets = inputs.open_data(model_inputs(loaded.model), request.data, request.eval_data, config, mode)
    labels = inputs.labels_for(request.labels, datasets)
    has_ranges = recorded is not None or datasets.calibration is not None
    if mode is QuantMode.AUTO and datasets.evaluation is None:
        dynamic = strategy(QuantMode.DYNAMIC)
        applies = dynamic.changes(select(loaded.model, config, mode=dynamic))
        mode, mode_reason = unmeasured_mode(has_ranges=has_ranges, dynamic_applies=applies)
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
        run, reference, [Job(plan, ranges) for plan in plans], staging, request.output
    )
    return QuantResult(
        request.output, report_for(run, searched, calibration_summary, mode_reason, request.output)
    )


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
    request = CalibrationRequest(model_path, data, shard, eval_data, labels, progress, collector)
    with reporting(progress):
        if collector is not None and shard is not None:
            raise ConfigError("--shard observes one part here; --ray splits the samples itself: give one")
        guard = guard if guard is not None else PathGuard()
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
    tensors = candidate_tensors(loaded.model)
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
    mode, mode_reason, kept_float = recorded_mode(model, config, recorded)
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
