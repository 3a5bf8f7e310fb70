"""Orchestration only: each public function runs the stages in order and returns typed results.

load -> check data -> plan -> collect ranges -> parameters -> passes -> check -> evaluate ->
atomic write -> report. Nothing is decided or computed here that a stage module owns.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxruntime as ort

from quantcli.calibration.collect import (
    Advance,
    Progress,
    TensorRange,
    collect_stats,
    reporting,
    stage,
    within,
)
from quantcli.calibration.data import Batch, Dataset, InputSpec, model_inputs
from quantcli.calibration.file import CalibrationFile, read_calibration
from quantcli.calibration.methods import choose_ranges
from quantcli.calibration.observers import TensorStats
from quantcli.calibration.sampling import Part, Selection, Shard, select_samples
from quantcli.calibration.sources import DataSource, open_source, source_paths
from quantcli.choice import LATENCY_TIE, ModeChoice, unmeasured_mode
from quantcli.config import Overrides, QuantConfig, QuantMode, SpeedSource, merge
from quantcli.correction import CorrectBiasesPass, bias_corrections
from quantcli.cost import Prediction, default_cost_model, profile_kernels
from quantcli.diagnose import LayerDiagnosis, diagnose
from quantcli.errors import (
    CalibrationFileError,
    ConfigError,
    ModelLoadError,
    QuantizationError,
)
from quantcli.evaluate import (
    Fidelity,
    GateResult,
    Latency,
    compare_models,
    first_sample,
    gate,
    load_labels,
    measure_latency,
)
from quantcli.fallback import FallbackResult, fall_back
from quantcli.graph.exchange import ir_copy
from quantcli.graph.guard import PathGuard
from quantcli.graph.io import (
    ModelFile,
    check_model_file,
    external_files,
    external_folder,
    fingerprint,
    load_model,
    open_session,
    serialize,
    unmap,
)
from quantcli.graph.output import StagedModel, StagedOutput, check_writable, data_file_name
from quantcli.graph.quantized import refuse_quantized
from quantcli.params import PlanParams, compute_params
from quantcli.passes import (
    EinsumToMatMulPass,
    FoldActivationsPass,
    GatherQuantizedRowsPass,
    InsertActivationQDQPass,
    QuantizeInitializersPass,
    QuantizeLSTMDynamicallyPass,
    QuantizeMatMulDynamicallyPass,
    ReduceMeanToGlobalPoolPass,
)
from quantcli.plan import NodeRole, QuantPlan, candidate_tensors, select
from quantcli.report import (
    CalibrationSummary,
    CandidateSummary,
    FallbackSummary,
    QuantReport,
    SizeSummary,
    SpeedSummary,
)

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


def _prepare(path: Path) -> ModelFile:
    """Load a model and give every value a type: plan rules look at dtypes and ranks."""
    loaded = load_model(path)
    prepare = ir.passes.Sequential(
        # Exported graphs repeat node names or leave them empty; onnxruntime refuses repeats, and
        # the report and --exclude need one name per node.
        common_passes.NameFixPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        common_passes.ShapeInferencePass(strict_mode=False),
        # After shape inference: the rewrite needs the input's rank.
        ReduceMeanToGlobalPoolPass(),
        EinsumToMatMulPass(),
    )
    try:
        prepare(loaded.model)
    except Exception as exc:  # onnx's shape inference raises on malformed graphs
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"{path}: shape inference fails on this model ({first_line})") from exc
    return loaded


def _guard_inputs(
    guard: PathGuard,
    model_path: Path,
    *,
    sources: tuple[tuple[DataSource | None, str], ...] = (),
    files: tuple[tuple[Path | None, str], ...] = (),
) -> None:
    """Declare what this run reads to the output guard, before any work."""
    guard.reads(model_path, "the input model")
    for source, what in sources:
        for path in source_paths(source) if source is not None else ():
            guard.reads(path, what)
    for file, what in files:
        if file is not None:
            guard.reads(file, what)


_FINITE_SLICE = 1 << 22  # elements of a weight checked for NaN/Inf at a time


def _check_weights(loaded: ModelFile, plans: list[QuantPlan]) -> None:
    """Refuse NaN or Inf in a weight that would be quantized: its scale would be meaningless,
    and the failure would otherwise surface as NaN activations blamed on the data. (Non-finite
    constants left in float, such as attention masks of -inf, are fine.)"""
    names = sorted({w.name for plan in plans for w in plan.weights})
    initializers = loaded.model.graph.initializers
    for name in names:
        value = initializers.get(name)
        tensor = value.const_value if value is not None else None
        if tensor is None or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
            continue
        flat = tensor.numpy().reshape(-1)
        # In slices: np.isfinite of a whole 1 GB weight would allocate 250 MB of booleans.
        bad = sum(
            int(part.size - np.count_nonzero(np.isfinite(part)))
            for part in (flat[start : start + _FINITE_SLICE] for start in range(0, flat.size, _FINITE_SLICE))
        )
        del flat
        unmap(tensor)
        if bad:
            raise QuantizationError(
                f"{loaded.path}: weight '{name}' holds {bad} NaN or Inf value(s); the model itself is "
                "broken (--skip-nonfinite skips data samples, not weights): fix the model, or keep its "
                "node in float with --exclude"
            )


def _guard_model_files(guard: PathGuard, loaded: ModelFile) -> None:
    for path in external_files(loaded.model):
        guard.reads(path, "the model's external data")


def _check_data_path(loaded: ModelFile, output: Path, staging: StagedOutput) -> None:
    """The output's external data file must not replace one the input reads, nor exist unasked."""
    if not _needs_external_data(loaded):
        return
    data = output.with_name(data_file_name(output))
    staging.guard.writes(data, "the output's data file")
    check_writable(data, force=staging.force)


# Above this many bytes of weights, the output is written with external data even when the
# input was one file: protobuf cannot hold 2 GiB, and the margin covers the graph itself.
INLINE_LIMIT = 1_800_000_000


def _needs_external_data(loaded: ModelFile) -> bool:
    if loaded.external_data:
        return True
    weights = sum(
        v.const_value.nbytes
        for g in loaded.model.graphs()
        for v in g.initializers.values()
        if v.const_value is not None
    )
    return weights > INLINE_LIMIT


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """onnxruntime's refusals do not name the file: add it."""
    try:
        yield
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def _parameter_count(model: ir.Model, names: list[str] | None = None) -> int:
    """Elements of the named initializers, or of every float initializer."""
    total = 0
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None:
            continue
        if (names is None and tensor.dtype == ir.DataType.FLOAT) or (names is not None and name in names):
            total += int(tensor.size)
    return total


@dataclass(frozen=True)
class QuantResult:
    """What :func:`quantize` wrote and what it measured."""

    output: Path
    report: QuantReport


@dataclass(frozen=True)
class _Data:
    calibration: Dataset | None
    evaluation: Dataset | None
    evaluation_source: str
    # Which samples of the run's choice ``calibration`` is (for a collector that reopens the data).
    calibration_part: Part = Part.ALL


@dataclass(frozen=True)
class ShardWork:
    """One statistics pass described so that another process can run it: the model and the data
    source by path (both must be readable there), the tensors, and the rule picking the samples."""

    model: Path
    source: DataSource
    tensors: tuple[str, ...]
    selection: Selection
    skip_nonfinite: bool
    batch_size: int
    histograms: bool
    # What the driver saw: every shard must load this model, and the shards' samples add up to this.
    model_fingerprint: str
    num_samples: int


@dataclass(frozen=True)
class ShardResult:
    """What one shard observed, with the fingerprint of the model it loaded (to catch a worker
    that sees another file at the same path)."""

    model_fingerprint: str
    num_samples: int
    stats: dict[str, TensorStats]


# Runs a statistics pass elsewhere (on Ray, see quantcli.distributed) and returns its merged stats.
Collector = Callable[[ShardWork, Advance | None], dict[str, TensorStats]]


def observe_shard(work: ShardWork, shard: Shard | None = None, *, threads: int | None = None) -> ShardResult:
    """Open ``work``'s model and data afresh and observe shard ``shard`` of its samples (all of
    them with None): what a worker runs. The same loading as a local run, so tensor names match."""
    loaded = _prepare(work.model)
    opened = open_source(
        work.source,
        model_inputs(loaded.model),
        skip_nonfinite=work.skip_nonfinite,
        max_samples=work.selection.max_samples,
    )
    dataset = work.selection.apply(opened, shard)
    with _naming(work.model):
        stats = collect_stats(
            loaded.model,
            work.tensors,
            dataset,
            batch_size=work.batch_size,
            histograms=work.histograms,
            threads=threads,
        )
    return ShardResult(fingerprint(loaded.model), dataset.num_samples, stats)


def _open_data(
    specs: tuple[InputSpec, ...], data: DataSource | None, eval_data: DataSource | None, config: QuantConfig
) -> _Data:
    calibration = (
        select_samples(
            open_source(data, specs, skip_nonfinite=config.skip_nonfinite, max_samples=config.max_samples),
            max_samples=config.max_samples,
            seed=config.seed,
        )
        if data is not None
        else None
    )
    return _split_data(calibration, data, specs, eval_data, config)


def _split_data(
    calibration: Dataset | None,
    data: DataSource | None,
    specs: tuple[InputSpec, ...],
    eval_data: DataSource | None,
    config: QuantConfig,
) -> _Data:
    """Which samples calibrate and which measure fidelity: ``eval_data`` when given, else the
    last ``eval_fraction`` of ``calibration`` held back (all of it in modes that calibrate nothing)."""
    if eval_data is not None:
        evaluation = open_source(eval_data, specs, skip_nonfinite=config.skip_nonfinite)
        return _Data(calibration, evaluation, str(eval_data))
    if calibration is not None and not config.mode.uses_calibration:
        # Nothing to calibrate: every sample of --data measures fidelity instead.
        return _Data(None, calibration, f"{data} (not needed for calibration in {config.mode} mode)")
    if calibration is not None and calibration.num_samples > 1 and config.eval_fraction > 0:
        kept, held = calibration.split(config.eval_fraction)
        return _Data(
            kept, held, f"last {held.num_samples} samples of {data}, held back from calibration", Part.KEPT
        )
    return _Data(calibration, None, "")


def _ranges(
    *,
    loaded: ModelFile,
    observed: list[str],
    data: _Data,
    calibration: tuple[Path, CalibrationFile] | None,
    config: QuantConfig,
    progress: Progress | None,
    source: DataSource | None = None,
    collector: Collector | None = None,
) -> tuple[dict[str, TensorRange], CalibrationSummary]:
    if calibration is not None:
        path, cal = calibration
        method = config.method.describe(config.percentile)
        return choose_ranges(cal.stats, observed, config), CalibrationSummary(
            method, cal.num_samples, str(path)
        )
    assert data.calibration is not None
    stage("calibrate", total=data.calibration.num_samples)
    if collector is not None and source is not None:
        work = ShardWork(
            loaded.path,
            source,
            tuple(observed),
            _selection(config, data.calibration_part),
            config.skip_nonfinite,
            config.batch_size,
            config.method.needs_histogram,
            fingerprint(loaded.model),
            data.calibration.num_samples,
        )
        stats = collector(work, progress)
    else:
        with _naming(loaded.path):
            stats = collect_stats(
                loaded.model,
                observed,
                data.calibration,
                batch_size=config.batch_size,
                histograms=config.method.needs_histogram,
                progress=progress,
            )
    return choose_ranges(stats, observed, config), CalibrationSummary(
        config.method.describe(config.percentile), data.calibration.num_samples, str(data.calibration.source)
    )


def _selection(config: QuantConfig, part: Part) -> Selection:
    return Selection(config.max_samples, config.seed, part, config.eval_fraction)


def _read_calibration_for(loaded: ModelFile, path: Path) -> CalibrationFile:
    cal = read_calibration(path)
    if cal.model_fingerprint != fingerprint(loaded.model):
        raise CalibrationFileError(
            f"{path}: made for another model than {loaded.path}; re-run calibrate on this model"
        )
    return cal


# Candidate modes --mode auto tries (most integer work first).
_AUTO_MODES = (QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)
# Samples per-layer diagnosis runs on: as asked (--per-layer, --auto-fallback), and for the
# repair auto makes on its own (tensor statistics settle on a few samples; each costs a pass of
# every tensor measured alone).
_DIAGNOSIS_SAMPLES = 32
_UNASKED_DIAGNOSIS_SAMPLES = 8
# Time auto may spend timing candidates against each other.
_AUTO_LATENCY_BUDGET_SECONDS = 20.0


def _rewrite(model: ir.Model, plan: QuantPlan, params: PlanParams) -> None:
    """Carry out ``plan`` on ``model`` in place."""
    ir.passes.Sequential(
        FoldActivationsPass(plan.folds),
        QuantizeInitializersPass(params.initializers, params.integers),
        QuantizeMatMulDynamicallyPass(plan.dynamic),
        QuantizeLSTMDynamicallyPass(plan.lstm),
        GatherQuantizedRowsPass(plan.gathered_tables),
        InsertActivationQDQPass(
            params.activations, frozenset(a.name for a in plan.activations if a.replaces_graph_output)
        ),
        common_passes.RemoveUnusedNodesPass(),
        # Parameters repeat: all-zero zero points of every weight with as many channels, the
        # shared scale of a data-movement chain. One copy each keeps small models small.
        common_passes.DeduplicateInitializersPass(size_limit=4096),
    )(model)


@dataclass(frozen=True)
class _Candidate:
    """One quantized model built in memory, checked, and measured."""

    plan: QuantPlan
    staged: StagedModel
    scratch: StagedOutput
    session: ort.InferenceSession
    int8_weight_fraction: float
    fidelity: Fidelity | None = None
    gate: GateResult | None = None
    latency: Latency | None = None
    predicted: Prediction | None = None

    @property
    def size_bytes(self) -> int:
        return self.staged.size_bytes

    def speed_ms(self, source: SpeedSource) -> float | None:
        """What auto compares candidates' speed by: the cost model's prediction, or a timing."""
        if source is SpeedSource.PREDICTED:
            return None if self.predicted is None else self.predicted.ms
        return None if self.latency is None else self.latency.median_ms


def _settle_recorded_mode(
    model: ir.Model, config: QuantConfig, recorded: tuple[Path, CalibrationFile] | None
) -> tuple[QuantConfig, str, dict[str, str]]:
    """Auto replays the mode decision a calibration file records; any other mode is the user's.

    A replay also leaves float the nodes the decision left float beyond the plan's rules (the
    cost model's unprofitable Convs, fallback's returns), by their recorded roles, so it writes the
    model the decision measured. Returns the config, the mode's reason and those nodes.
    """
    if config.mode is not QuantMode.AUTO:
        return config, f"{config.mode} was asked for", {}
    if recorded is None or recorded[1].choice is None:
        return config, "", {}  # decided later, by measuring or by rule
    path, cal = recorded
    choice = cal.choice
    assert choice is not None
    config = replace(config, mode=choice.mode)
    ruled = {d.name: d.role for d in select(model, config).decisions}
    kept = {
        name: f"float: left float by the decision recorded in {path}"
        for name, role in sorted(choice.roles.items())
        if role == NodeRole.FLOAT.value and ruled.get(name, NodeRole.FLOAT) is not NodeRole.FLOAT
    }
    return config, f"auto: the decision recorded in {path} ({choice.reason})", kept


def _plans(
    model: ir.Model,
    config: QuantConfig,
    *,
    has_ranges: bool = True,
    kept_float: Mapping[str, str] | None = None,
) -> list[QuantPlan]:
    """The plans to build: the configured mode's, or every distinct non-empty one for auto
    (without calibration ranges, only the modes that need none)."""
    if config.mode is QuantMode.AUTO:
        modes = tuple(m for m in _AUTO_MODES if has_ranges or not m.needs_calibration)
    else:
        modes = (config.mode,)
    plans: list[QuantPlan] = []
    seen: set[tuple[str, ...]] = set()
    for mode in modes:
        plan = select(model, replace(config, mode=mode), kept_float)
        signature = tuple(d.role.value for d in plan.decisions)
        if plan.is_noop or signature in seen:
            continue  # e.g. mixed is static again on a model without MatMul
        seen.add(signature)
        plans.append(plan)
    return plans


@dataclass(frozen=True)
class _Target:
    """Where a candidate goes: its final path, staged apart until chosen."""

    output: Path
    external_data: bool
    input_bytes: int
    scratch: StagedOutput
    # What --bias-correction measures input means on (None: no correction).
    calibration: Dataset | None = None
    data_folder: Path | None = None
    # The sample the cost model profiles each candidate on (None: no prediction).
    feed: Batch | None = None


def _build(
    model: ir.Model,
    plan: QuantPlan,
    ranges: dict[str, TensorRange],
    config: QuantConfig,
    target: _Target,
) -> _Candidate:
    """Quantize ``model`` (modified in place) by ``plan``; stage it, check the staged file, and
    refuse it if it grew. Staging first means a model of any size is checked as it will be read."""
    params = compute_params(model, plan, ranges, config)
    if config.bias_correction and target.calibration is not None:
        stage("bias correction")
        corrections = bias_corrections(
            model, params, target.calibration, batch_size=config.batch_size, data_folder=target.data_folder
        )
        CorrectBiasesPass(corrections.biases)(model)
    float_params = _parameter_count(model)
    int8_params = _parameter_count(model, [w.name for w in plan.weights])
    _rewrite(model, plan, params)
    staged = target.scratch.write_model(model, target.output, external_data=target.external_data)
    stage("check")
    session = check_model_file(staged.path)
    if staged.size_bytes >= target.input_bytes:
        raise QuantizationError(
            f"the quantized model ({staged.size_bytes} bytes) would not be smaller than the input "
            f"({target.input_bytes} bytes); nothing written"
        )
    fraction = int8_params / float_params if float_params else 0.0
    predicted: Prediction | None = None
    if target.feed is not None:
        stage("predict speed")
        try:
            kernels = profile_kernels(staged.path, target.feed)
        except ModelLoadError as exc:  # the float model ran this sample: the candidate is at fault
            raise QuantizationError(f"the quantized model fails to run: {exc}") from exc
        predicted = default_cost_model().predict(kernels)
    return _Candidate(plan, staged, target.scratch, session, fraction, predicted=predicted)


def _choose(
    candidates: list[_Candidate], config: QuantConfig, evaluation: Dataset | None
) -> tuple[_Candidate, list[_Candidate]]:
    """The fastest candidate within the accuracy bound (if none is, the most faithful one), and
    the candidates as compared. Fastest by the cost model's prediction, or with
    ``--speed measured`` by timing them here against each other."""
    if len(candidates) == 1:
        return candidates[0], candidates
    if evaluation is None or any(c.gate is None for c in candidates):
        raise ConfigError("--mode auto measures its candidates: give --eval-data or --data with 2+ samples")
    if config.speed is SpeedSource.MEASURED:
        stage("time candidates")
        latencies = measure_latency(
            {c.plan.mode.value: c.session for c in candidates},
            first_sample(evaluation),
            runs=30,
            budget_seconds=_AUTO_LATENCY_BUDGET_SECONDS,
        )
        candidates = [replace(c, latency=latencies[c.plan.mode.value]) for c in candidates]
    passing = [c for c in candidates if c.gate is not None and c.gate.passed]
    if not passing:
        return min(candidates, key=lambda c: c.gate.shortfall if c.gate else float("inf")), candidates
    # A mode that leaves the heavy compute in float (weight-only; dynamic on a convolutional
    # network) wins only when no mode that runs it in integer kernels meets the bound.
    passing = [c for c in passing if _integer_heavy(c)] or passing
    speed = _speed_key(config.speed)
    fastest = min(speed(c) for c in passing)
    # Speeds a few percent apart are within the error of a prediction (or the noise of a shared
    # machine): among those the most faithful wins (fidelity does not vary), then the smaller.
    close = [c for c in passing if speed(c) <= fastest * LATENCY_TIE]
    winner = min(close, key=lambda c: (c.gate.shortfall if c.gate else 0.0, c.staged.size_bytes))
    return winner, candidates


def _integer_heavy(candidate: _Candidate) -> bool:
    """Most of its multiply-accumulates run in integer kernels (by the profile auto predicts
    from; a timed candidate has none, and counts as such)."""
    return candidate.predicted is None or candidate.predicted.integer_mac_share >= 0.5


def _speed_key(source: SpeedSource) -> Callable[[_Candidate], float]:
    def key(candidate: _Candidate) -> float:
        value = candidate.speed_ms(source)
        return float("inf") if value is None else value

    return key


def _summaries(staged: _Staged, input_bytes: int, source: SpeedSource) -> tuple[CandidateSummary, ...]:
    """Every candidate with why it won or lost; the chosen one is the candidate the written model
    came from (itself, or repaired by fallback)."""
    candidates, winner = staged.candidates, staged.origin
    if len(candidates) == 1:
        return ()
    passing = [c for c in candidates if c.gate is not None and c.gate.passed]
    speeds = [v for c in passing if (v := c.speed_ms(source)) is not None]
    fastest = min(speeds, default=None)
    tie = f"{round(100 * (LATENCY_TIE - 1))}%"
    slower = "predicted slower" if source is SpeedSource.PREDICTED else "slower"
    summaries = []
    for c in candidates:
        own = c.speed_ms(source)
        speed = None if own is None or fastest is None else own / fastest
        if c is winner and staged.repaired:
            why = "missed the bound; repaired by fallback and written (see why this mode)"
        elif staged.repaired and c.gate is not None and c.gate.passed:
            why = f"within the bound, {slower} than {winner.plan.mode} repaired"
        elif c is winner and passing:
            fastest_one = speed is None or speed <= 1.0
            why = (
                "fastest within the bound"
                if fastest_one
                else f"within {tie} of the fastest (a tie), more faithful"
            )
        elif c is winner:
            why = "no mode met the bound; this one lost the least"
        elif c.gate is not None and not c.gate.passed:
            why = f"misses the bound by {c.gate.missed_by:.2f} {c.gate.unit}"
        elif speed is not None and speed <= LATENCY_TIE:
            why = f"within {tie} of the fastest (a tie), less faithful"
        else:
            why = f"within the bound, {speed:.2f}x {slower}" if speed is not None else "within the bound"
        summaries.append(
            CandidateSummary(
                mode=c.plan.mode.value,
                output_bytes=c.staged.size_bytes,
                size_ratio=input_bytes / c.staged.size_bytes,
                int8_weight_fraction=c.int8_weight_fraction,
                gate=c.gate,
                latency=c.latency,
                chosen=c is winner,
                reason=why,
                predicted=c.predicted,
            )
        )
    return tuple(summaries)


def quantize(
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
) -> QuantResult:
    """Quantize ``model_path`` to int8 and write it to ``output``, checked and atomically.

    Ranges come from ``data`` (calibrated now) or ``calibration`` (a file from :func:`calibrate`);
    the dynamic and weight-only modes need neither. Fidelity is measured on ``eval_data``, or on
    a held-back part of ``data``. With ``mode=auto`` every candidate mode is built and measured
    and the fastest one within the accuracy bound is written. With ``staging``, the model joins
    files the caller commits together (a report, say); otherwise it is moved into place before
    returning. On any error nothing new is left behind. ``collector`` runs the calibration pass
    elsewhere (on Ray: :mod:`quantcli.distributed`), on the same samples.

    ``config`` is taken whole; given as :class:`Overrides` (or None), what it leaves unset comes
    from the defaults, and the calibration method from ``calibration``'s file unless given, as
    on the command line (see :func:`quantcli.config.merge`).
    """
    if not isinstance(config, QuantConfig):
        given = config or Overrides()
        recorded = read_calibration(calibration) if calibration is not None and given.method is None else None
        config = merge(QuantConfig(), given, calibration=recorded)
    if staging is None:
        with StagedOutput(force=force) as own:
            result = quantize(
                model_path,
                output,
                config=config,
                data=data,
                calibration=calibration,
                eval_data=eval_data,
                labels=labels,
                force=force,
                progress=progress,
                staging=own,
                collector=collector,
            )
            own.commit()
        return result
    with reporting(progress):
        return _quantize_into(
            staging,
            model_path,
            output,
            config=config,
            data=data,
            calibration=calibration,
            eval_data=eval_data,
            labels=labels,
            progress=progress,
            collector=collector,
        )


def _quantize_into(
    staging: StagedOutput,
    model_path: Path,
    output: Path,
    *,
    config: QuantConfig,
    data: DataSource | None,
    calibration: Path | None,
    eval_data: DataSource | None,
    labels: Path | None,
    progress: Progress | None,
    collector: Collector | None = None,
) -> QuantResult:
    if data is not None and calibration is not None:
        raise ConfigError("give calibration data (--data) or a calibration file (--calibration), not both")
    if config.mode.needs_calibration and data is None and calibration is None:
        raise ConfigError(
            f"{config.mode} mode calibrates activations: give --data or --calibration "
            "(or choose --mode dynamic or --mode weight-only, which need no data)"
        )
    if config.bias_correction and data is None:
        raise ConfigError("--bias-correction measures Conv input means on --data; give --data")
    _guard_inputs(
        staging.guard,
        model_path,
        sources=((data, "--data"), (eval_data, "--eval-data")),
        files=((calibration, "--calibration"), (labels, "--labels")),
    )
    staging.guard.writes(output, "the output model")
    check_writable(output, force=staging.force)
    stage("load")
    loaded = _prepare(model_path)
    refuse_quantized(loaded.model, model_path)
    _guard_model_files(staging.guard, loaded)
    _check_data_path(loaded, output, staging)
    recorded = (calibration, _read_calibration_for(loaded, calibration)) if calibration is not None else None
    config, mode_reason, kept_float = _settle_recorded_mode(loaded.model, config, recorded)
    specs = model_inputs(loaded.model)
    datasets = _open_data(specs, data, eval_data, config)
    label_array = None
    if labels is not None:
        if datasets.evaluation is None:
            raise ConfigError("--labels needs evaluation data (--eval-data, or --data with 2+ samples)")
        label_array = load_labels(labels, datasets.evaluation.num_samples)
    has_ranges = recorded is not None or datasets.calibration is not None
    if config.mode is QuantMode.AUTO and datasets.evaluation is None:
        dynamic_plan = select(loaded.model, replace(config, mode=QuantMode.DYNAMIC))
        mode, mode_reason = unmeasured_mode(has_ranges=has_ranges, dynamic_applies=not dynamic_plan.is_noop)
        config = replace(config, mode=mode)
    plans = _plans(loaded.model, config, has_ranges=has_ranges, kept_float=kept_float)
    if not plans:
        if config.allow_noop:
            return _write_unchanged(loaded, output, config, staging)
        raise QuantizationError(
            f"{model_path}: nothing to quantize in {config.mode} mode (no Conv, MatMul, Gemm or Gather "
            "on float weights that would gain from it; `quantcli inspect` says why for each node); "
            "try --mode weight-only, or pass --allow-noop to write it unchanged"
        )
    _check_weights(loaded, plans)
    observed = sorted({name for plan in plans for name in plan.observed})
    ranges: dict[str, TensorRange] = {}
    calibration_summary = CalibrationSummary("none", 0, f"not needed in {config.mode} mode")
    if observed:
        ranges, calibration_summary = _ranges(
            loaded=loaded,
            observed=observed,
            data=datasets,
            calibration=recorded,
            config=config,
            progress=progress,
            source=data,
            collector=collector,
        )
    # A reference to the float model's files, not a copy of its weights.
    reference = serialize(loaded.model) if datasets.evaluation is not None or len(plans) > 1 else None
    reference_session = None
    if reference is not None and datasets.evaluation:
        with _naming(model_path):
            reference_session = open_session(reference, data_folder=external_folder(loaded.model))
    staged = _stage_candidates(
        loaded,
        plans,
        ranges,
        config,
        staging=staging,
        output=output,
        reference=reference,
        reference_session=reference_session,
        datasets=datasets,
        labels=label_array,
    )
    winner = staged.winner
    summaries = _summaries(staged, loaded.size_bytes, config.speed)
    if config.mode is QuantMode.AUTO:
        mode_reason = (
            f"auto: {staged.note}"
            if staged.note
            else next(
                (f"auto: {s.reason}" for s in summaries if s.chosen),
                "auto: the only mode that changes this model",
            )
        )
    speed, warnings = _predicted_speed(staged, output)
    report = QuantReport(
        model=str(model_path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, winner.staged.size_bytes),
        config=config,
        calibration=calibration_summary,
        plan=winner.plan,
        int8_weight_fraction=winner.int8_weight_fraction,
        fidelity=winner.fidelity,
        fidelity_note="" if winner.fidelity else "not measured: give --eval-data (or --data with 2+ samples)",
        gate=winner.gate if config.has_gate else None,
        candidates=summaries,
        mode_reason=mode_reason,
        opset_upgraded_from=loaded.upgraded_from_opset,
        per_layer=staged.diagnosis,
        fallback=FallbackSummary.of(staged.fallback, loaded.size_bytes)
        if staged.fallback is not None
        else None,
        speed=speed,
        warnings=warnings,
    )
    return QuantResult(output=output, report=report)


def _predicted_speed(staged: _Staged, output: Path) -> tuple[SpeedSummary | None, tuple[str, ...]]:
    """The written model's predicted speed against float, and a warning (logged, so it reaches
    stderr, and kept for the report) when it is predicted no faster than the float model."""
    winner = staged.winner
    if staged.float_prediction is None or winner.predicted is None:
        return None, ()
    speed = SpeedSummary(staged.float_prediction, winner.predicted)
    if speed.ratio < 1.0:
        return speed, ()
    faster = [
        c
        for c in staged.candidates
        if c.predicted is not None and c.predicted.ms < staged.float_prediction.ms
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


def _stage_candidates(
    loaded: ModelFile,
    plans: list[QuantPlan],
    ranges: dict[str, TensorRange],
    config: QuantConfig,
    *,
    staging: StagedOutput,
    output: Path,
    reference: onnx.ModelProto | None,
    reference_session: ort.InferenceSession | None,
    datasets: _Data,
    labels: npt.NDArray[np.int64] | None,
) -> _Staged:
    """Build, stage, check and measure every plan; the winner joins ``staging``, the rest go.
    Then --per-layer diagnoses the winner and fallback, if it misses the bound, builds variants
    with nodes returned to float (see :func:`_diagnose_and_fall_back`): with --auto-fallback, and
    always in auto mode. Auto mode also repairs the fastest candidate that missed the bound when
    it is clearly faster than the winner, and keeps it if it then passes and is still faster."""
    model_path = loaded.path
    label_array = labels
    data_folder = external_folder(loaded.model)
    external = _needs_external_data(loaded)
    auto = config.mode is QuantMode.AUTO
    # Auto compares speeds by the cost model: every candidate is profiled on one sample.
    feed = (
        first_sample(datasets.evaluation)
        if auto and config.speed is SpeedSource.PREDICTED and datasets.evaluation is not None
        else None
    )
    float_prediction = None
    if feed is not None and reference is not None:
        with _naming(model_path):
            float_prediction = default_cost_model().predict(
                profile_kernels(reference, feed, data_folder=data_folder)
            )
    candidates = []
    context = _Reference(reference, reference_session, datasets, labels, ranges, data_folder)
    with contextlib.ExitStack() as scratches:

        def new_target() -> _Target:
            scratch = scratches.enter_context(StagedOutput(force=staging.force))
            return _Target(
                output, external, loaded.size_bytes, scratch, datasets.calibration, data_folder, feed
            )

        for index, plan in enumerate(plans):
            # Every candidate but the last rewrites a fresh copy; the last may consume the original.
            model = loaded.model if index == len(plans) - 1 else _copy(reference, data_folder)
            stage(f"build candidate {plan.mode}", index + 1, len(plans))
            candidate = _try_build(
                model,
                plan,
                ranges=ranges,
                config=config,
                target=new_target(),
                model_path=model_path,
                single=len(plans) == 1,
            )
            if candidate is None:
                continue
            if reference_session is not None and datasets.evaluation is not None:
                stage(f"evaluate {plan.mode}")
                candidate = _measure(candidate, reference_session, datasets, label_array, config)
            candidates.append(candidate)
        if not candidates:
            raise QuantizationError(f"{model_path}: no candidate mode produced a smaller, valid model")
        winner, candidates = _choose(candidates, config, datasets.evaluation)
        # Auto never settles for a slow mode that passed while a faster one might be repaired.
        repair = replace(config, auto_fallback=True) if auto else config
        faster = _fastest_missed(candidates, winner, config.speed) if auto else None
        start = faster if faster is not None else winner
        result, diagnosis, fallback = _diagnose_and_fall_back(
            start, context, repair, new_target, unasked=auto and not config.auto_fallback
        )
        note, origin = "", winner
        if start is winner:
            winner = result
        else:
            assert datasets.evaluation is not None
            kept, note = _repaired_or_winner(start, result, winner, datasets.evaluation, config.speed)
            origin = winner if kept is winner else start
            winner = kept
        staging.adopt(winner.scratch)
    return _Staged(candidates, winner, origin, diagnosis, fallback, note, float_prediction)


@dataclass(frozen=True)
class _Staged:
    """What :func:`_stage_candidates` built: every candidate, the one written, and how it was
    reached (``note``: why a repaired candidate won or lost, for the report's mode reason)."""

    candidates: list[_Candidate]
    winner: _Candidate
    origin: _Candidate  # the candidate ``winner`` was built from: itself, or one fallback repaired
    diagnosis: LayerDiagnosis | None
    fallback: FallbackResult[_Candidate] | None
    note: str = ""
    float_prediction: Prediction | None = None  # the float model's, when auto predicted speeds

    @property
    def repaired(self) -> bool:
        return self.origin is not self.winner and self.origin.plan.mode is self.winner.plan.mode


def _fastest_missed(
    candidates: list[_Candidate], winner: _Candidate, source: SpeedSource
) -> _Candidate | None:
    """The candidate worth repairing by fallback when the winner met the bound: the fastest that
    missed it, if clearly (beyond the tie) faster than the winner; or, when the winner leaves the
    heavy compute in float, the fastest that missed it and runs that compute in integer kernels."""
    winner_speed = winner.speed_ms(source)
    if winner.gate is None or not winner.gate.passed or winner_speed is None:
        return None
    speed = _speed_key(source)
    missed = [c for c in candidates if c.gate is not None and not c.gate.passed]
    if not _integer_heavy(winner):  # any mode with integer kernels is worth repairing
        heavy = [c for c in missed if _integer_heavy(c)]
        return min(heavy, key=speed, default=None)
    faster = [c for c in missed if speed(c) * LATENCY_TIE < winner_speed]
    return min(faster, key=speed, default=None)


def _repaired_or_winner(
    start: _Candidate, repaired: _Candidate, winner: _Candidate, evaluation: Dataset, source: SpeedSource
) -> tuple[_Candidate, str]:
    """``repaired`` (``start`` after fallback) if it passes and is still clearly faster than the
    winner (by the cost model, or timed against it again); else the winner. The note says which
    and why."""
    mode, other = repaired.plan.mode, winner.plan.mode
    if repaired.gate is None or not repaired.gate.passed:
        return (
            winner,
            f"{other}: {mode} missed the bound and fallback did not repair it within --max-trials",
        )
    speed = _speed_key(source)
    ratio = speed(winner) / speed(repaired)
    if source is SpeedSource.MEASURED:
        timed = measure_latency(
            {"repaired": repaired.session, "winner": winner.session},
            first_sample(evaluation),
            runs=30,
            budget_seconds=_AUTO_LATENCY_BUDGET_SECONDS,
        )
        repaired = replace(repaired, latency=timed["repaired"])
        ratio = timed["winner"].median_ms / timed["repaired"].median_ms
    was_float = {d.name for d in start.plan.decisions if d.role is NodeRole.FLOAT}
    returned = sum(d.role is NodeRole.FLOAT and d.name not in was_float for d in repaired.plan.decisions)
    runs = "is predicted to run" if source is SpeedSource.PREDICTED else "runs"
    if ratio > LATENCY_TIE or (ratio > 1.0 and _integer_heavy(repaired) and not _integer_heavy(winner)):
        return repaired, (
            f"{mode} missed the bound; with {returned} node(s) returned to float by fallback it "
            f"passes and {runs} {ratio:.2f}x as fast as {other}, the fastest mode that passed as built"
        )
    return winner, f"{other}: {mode} repaired by fallback passes but is not faster ({ratio:.2f}x)"


@dataclass(frozen=True)
class _Reference:
    """The float model and what every fallback trial is built from and measured against."""

    proto: onnx.ModelProto | None  # None: nothing to measure against
    session: ort.InferenceSession | None
    datasets: _Data
    labels: npt.NDArray[np.int64] | None
    ranges: dict[str, TensorRange]
    data_folder: Path | None


def _diagnose_and_fall_back(
    winner: _Candidate,
    reference: _Reference,
    config: QuantConfig,
    new_target: Callable[[], _Target],
    *,
    unasked: bool = False,
) -> tuple[_Candidate, LayerDiagnosis | None, FallbackResult[_Candidate] | None]:
    """--per-layer: rank the winner's tensors. --auto-fallback, when the winner misses the
    bound: return the nodes behind the worst ones to float, on the winner's mode's plan.

    ``unasked``: auto's own repair, which the user did not ask for. Its ranking runs on fewer
    samples and measures fewer tensors alone, so that the default stays affordable on a large
    model (PP-OCRv4 det at 640x640: 743 s of diagnosis with 32 samples and 32 tensors alone).
    """
    evaluation, proto, session = reference.datasets.evaluation, reference.proto, reference.session
    missed = winner.gate is not None and not winner.gate.passed
    wanted = config.per_layer or (config.auto_fallback and missed)
    if evaluation is None or proto is None or session is None or not wanted:
        return winner, None, None
    # Fallback chooses among the tensors measured alone: more of them than the report shows.
    alone = 2 if unasked and not config.per_layer else 4
    top_k = max(config.top_k, alone * config.max_trials) if config.auto_fallback else config.top_k
    samples = _UNASKED_DIAGNOSIS_SAMPLES if unasked and not config.per_layer else _DIAGNOSIS_SAMPLES
    stage("diagnose")
    quantized = onnx.load(str(winner.staged.path))
    diagnosis = diagnose(
        proto, quantized, evaluation, top_k=top_k, max_samples=samples, data_folder=reference.data_folder
    )
    if not (config.auto_fallback and missed):
        return winner, diagnosis, None
    reported = replace(diagnosis, top_k=config.top_k)
    trials = iter(range(1, config.max_trials + 1))

    def build(excluded: frozenset[str]) -> _Candidate:
        stage("fallback trial", next(trials, config.max_trials), config.max_trials)
        return _build_variant(
            winner.plan.mode,
            reference,
            config,
            new_target,
            excluded=excluded,
            kept_float=dict(winner.plan.kept_float),
        )

    fallback = fall_back(winner, diagnosis.node_groups(), build, max_trials=config.max_trials)
    return fallback.chosen, reported, fallback


def _build_variant(
    mode: QuantMode,
    reference: _Reference,
    config: QuantConfig,
    new_target: Callable[[], _Target],
    *,
    excluded: frozenset[str] = frozenset(),
    kept_float: Mapping[str, str],
) -> _Candidate:
    """A candidate of ``mode`` with more nodes float than the plan's rules leave (``excluded``
    by fallback, ``kept_float`` by the cost model), built from the float model and measured."""
    assert reference.proto is not None and reference.session is not None
    variant = replace(config, mode=mode, exclude=config.exclude | excluded)
    model = _copy(reference.proto, reference.data_folder)
    plan = select(model, variant, kept_float)
    # With nodes float a carried chain can take its range from a tensor not yet observed.
    missing = [name for name in plan.observed if name not in reference.ranges]
    calibration = reference.datasets.calibration
    if missing and calibration is not None:
        stats = collect_stats(
            model,
            missing,
            calibration,
            batch_size=config.batch_size,
            histograms=config.method.needs_histogram,
        )
        reference.ranges.update(choose_ranges(stats, missing, config))
    built = _build(model, plan, reference.ranges, variant, new_target())
    return _measure(built, reference.session, reference.datasets, reference.labels, config)


def _measure(
    candidate: _Candidate,
    reference_session: ort.InferenceSession,
    datasets: _Data,
    labels: npt.NDArray[np.int64] | None,
    config: QuantConfig,
) -> _Candidate:
    """The candidate with its fidelity against the float model and its gate."""
    assert datasets.evaluation is not None
    fidelity = compare_models(
        reference_session,
        candidate.session,
        datasets.evaluation,
        batch_size=config.batch_size,
        source=datasets.evaluation_source,
        labels=labels,
    )
    metric, bound = config.gate(has_labels=labels is not None)
    return replace(candidate, fidelity=fidelity, gate=gate(fidelity, metric, bound))


def _try_build(
    model: ir.Model,
    plan: QuantPlan,
    *,
    ranges: dict[str, TensorRange],
    config: QuantConfig,
    target: _Target,
    model_path: Path,
    single: bool,
) -> _Candidate | None:
    """Build one candidate; among several, one that fails is dropped with a warning."""
    try:
        return _build(model, plan, ranges, config, target)
    except QuantizationError as exc:
        if single:
            raise QuantizationError(f"{model_path}: {exc}") from exc
        logger.warning("%s mode candidate dropped: %s", plan.mode, exc)
        return None


def _write_unchanged(
    loaded: ModelFile, output: Path, config: QuantConfig, staging: StagedOutput
) -> QuantResult:
    """``--allow-noop``: the float model, re-saved as it is, with a report saying so."""
    staged = staging.write_model(loaded.model, output, external_data=_needs_external_data(loaded))
    check_model_file(staged.path)
    report = QuantReport(
        model=str(loaded.path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, staged.size_bytes),
        config=config,
        calibration=CalibrationSummary(config.method.value, 0, "not needed: nothing to quantize"),
        plan=select(loaded.model, config),
        int8_weight_fraction=0.0,
        fidelity=None,
        fidelity_note="not measured: the model was written unchanged (nothing to quantize)",
    )
    return QuantResult(output=output, report=report)


def _copy(proto: onnx.ModelProto | None, data_folder: Path | None) -> ir.Model:
    """A model independent of ``proto``: onnx_ir's tensors write renames through to the proto they
    wrap, so deserializing ``proto`` itself would let one candidate's rewrite corrupt the next.
    External weights stay references to the input's files, resolved in ``data_folder``."""
    assert proto is not None
    return ir_copy(proto, data_folder)


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
    with reporting(progress):
        return _calibrate(
            model_path,
            data,
            config=config,
            shard=shard,
            eval_data=eval_data,
            labels=labels,
            progress=progress,
            collector=collector,
            guard=guard,
        )


def _calibrate(
    model_path: Path,
    data: DataSource,
    *,
    config: QuantConfig | None,
    shard: Shard | None,
    eval_data: DataSource | None,
    labels: Path | None,
    progress: Progress | None,
    collector: Collector | None,
    guard: PathGuard | None,
) -> CalibrationFile:
    stage("load")
    config = config or QuantConfig()
    if collector is not None and shard is not None:
        raise ConfigError("--shard observes one part here; --ray splits the samples itself: give one")
    guard = guard if guard is not None else PathGuard()
    _guard_inputs(
        guard,
        model_path,
        sources=((data, "--data"), (eval_data, "--eval-data")),
        files=((labels, "--labels"),),
    )
    loaded = _prepare(model_path)
    refuse_quantized(loaded.model, model_path)
    _guard_model_files(guard, loaded)
    samples = select_samples(
        open_source(
            data,
            model_inputs(loaded.model),
            skip_nonfinite=config.skip_nonfinite,
            max_samples=config.max_samples,
        ),
        max_samples=config.max_samples,
        seed=config.seed,
        shard=shard,
    )
    _check_weights(loaded, _plans(loaded.model, config))
    tensors = candidate_tensors(loaded.model)
    if not tensors:
        raise QuantizationError(f"{model_path}: nothing to calibrate (no quantizable float tensors)")
    model_fingerprint = fingerprint(loaded.model)

    def observe(dataset: Dataset, offset: int = 0, part: Part = Part.ALL) -> dict[str, TensorStats]:
        """Statistics of ``dataset``, the part of ``samples`` that starts at ``offset``."""
        if offset == 0:
            stage("calibrate", total=samples.num_samples)
        advance = within(progress, offset, dataset.num_samples, samples.num_samples)
        if collector is not None:
            work = ShardWork(
                model_path,
                data,
                tuple(tensors),
                _selection(config, part),
                config.skip_nonfinite,
                config.batch_size,
                True,
                model_fingerprint,
                dataset.num_samples,
            )
            return collector(work, advance)
        with _naming(model_path):
            return collect_stats(
                loaded.model,
                tensors,
                dataset,
                batch_size=config.batch_size,
                histograms=True,
                progress=advance,
            )

    choice: ModeChoice | None = None
    if shard is not None:
        stats = observe(samples)  # a shard cannot decide for all the data
    elif config.mode is not QuantMode.AUTO:
        stats = observe(samples)
        plan = select(loaded.model, config)
        choice = ModeChoice(config.mode, f"{config.mode} was asked for", _roles(plan))
    else:
        datasets = _split_data(samples, data, model_inputs(loaded.model), eval_data, config)
        assert datasets.calibration is not None
        stats = observe(datasets.calibration, part=datasets.calibration_part)
        if datasets.evaluation is None:
            mode, reason = unmeasured_mode(has_ranges=True, dynamic_applies=True)
            choice = ModeChoice(mode, reason, _roles(select(loaded.model, replace(config, mode=mode))))
        else:
            held_back = eval_data is None
            # Observed before the candidates are built: the last one rewrites the model in place.
            offset = datasets.calibration.num_samples
            held_stats = observe(datasets.evaluation, offset, Part.HELD_BACK) if held_back else None
            label_array = load_labels(labels, datasets.evaluation.num_samples) if labels is not None else None
            choice = _measured_choice(loaded, config, stats, datasets, label_array)
            if held_stats is not None:
                stats = {name: s.merged(held_stats[name]) for name, s in stats.items()}
    return CalibrationFile(
        model_fingerprint=model_fingerprint,
        method=config.method,
        percentile=config.percentile,
        num_samples=samples.num_samples,
        stats=stats,
        shards=(str(shard),) if shard is not None else (),
        choice=choice,
    )


def _roles(plan: QuantPlan) -> dict[str, str]:
    return {d.name: d.role.value for d in plan.decisions}


def _measured_choice(
    loaded: ModelFile,
    config: QuantConfig,
    stats: dict[str, TensorStats],
    datasets: _Data,
    labels: npt.NDArray[np.int64] | None,
) -> ModeChoice | None:
    """What ``convert --mode auto`` would pick with these statistics and evaluation data; the
    candidates are built in a scratch folder and discarded. None: no mode changes the model."""
    plans = _plans(loaded.model, config)
    if not plans:
        return None
    observed = sorted({name for plan in plans for name in plan.observed})
    ranges = choose_ranges(stats, observed, config)
    reference = serialize(loaded.model)
    with _naming(loaded.path):
        reference_session = open_session(reference, data_folder=external_folder(loaded.model))
    scratch_folder = tempfile.TemporaryDirectory(prefix="quantcli-candidates-")
    with scratch_folder as folder, StagedOutput(force=True) as scratch:
        staged = _stage_candidates(
            loaded,
            plans,
            ranges,
            config,
            staging=scratch,
            output=Path(folder) / loaded.path.name,
            reference=reference,
            reference_session=reference_session,
            datasets=datasets,
            labels=labels,
        )
        summaries = _summaries(staged, loaded.size_bytes, config.speed)
    reason = next((s.reason for s in summaries if s.chosen), "the only mode that changes this model")
    winner = staged.winner
    return ModeChoice(
        winner.plan.mode, f"auto: {reason}", _roles(winner.plan), tuple(s.to_dict() for s in summaries)
    )
