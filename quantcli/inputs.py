"""What a run reads, checked before any work: the model (loaded, named, typed), the files it
declares to the output guard, its data opened and split, and the statistics observed on it.

Statistics and ranges each have one function here (:func:`observe`, :func:`ranges_for`), used by
the main path, by fallback's trials, by auto's decision in ``calibrate`` and by ``calibrate``
itself, so that every caller observes the same way and a range means the same everywhere.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from quantcli.calibration.collect import Advance, Progress, TensorRange, collect_stats, stage
from quantcli.calibration.data import Dataset, InputSpec, model_inputs
from quantcli.calibration.file import CalibrationFile, read_calibration
from quantcli.calibration.methods import choose_ranges
from quantcli.calibration.observers import TensorStats
from quantcli.calibration.sampling import Part, Selection, Shard, select_samples
from quantcli.calibration.sources import DataSource, open_source, source_paths
from quantcli.config import QuantConfig, QuantMode, SpeedSource
from quantcli.engine import require
from quantcli.errors import CalibrationFileError, ConfigError, ModelLoadError, QuantizationError
from quantcli.evaluate import load_labels
from quantcli.graph.branches import initializer_owner
from quantcli.graph.guard import PathGuard
from quantcli.graph.io import ModelFile, external_files, fingerprint, load_model, unmap
from quantcli.graph.output import StagedOutput, check_writable, data_file_name
from quantcli.graph.quantized import refuse_quantized
from quantcli.modes import strategy, uses_calibration
from quantcli.passes import (
    EinsumToMatMulPass,
    FoldBatchNormPass,
    FoldComputedWeightsPass,
    ReduceMeanToGlobalPoolPass,
)
from quantcli.plan import QuantPlan, target_of
from quantcli.report import CalibrationSummary

__all__ = [
    "INLINE_LIMIT",
    "CalibrationRequest",
    "Collector",
    "Datasets",
    "Observer",
    "Remote",
    "Request",
    "Run",
    "ShardResult",
    "ShardWork",
    "calibrated_ranges",
    "check_data_path",
    "check_request",
    "check_weights",
    "guard_inputs",
    "guard_model_files",
    "labels_for",
    "load_checked",
    "naming",
    "needs_external_data",
    "observe_shard",
    "open_data",
    "open_request",
    "prepare",
    "ranges_for",
    "read_calibration_for",
    "split_data",
]

logger = logging.getLogger(__name__)


def prepare(path: Path) -> ModelFile:
    """Load a model and give every value a type: plan rules look at dtypes and ranks."""
    loaded = load_model(path)
    passes = ir.passes.Sequential(
        # Exported graphs repeat node names or leave them empty; onnxruntime refuses repeats, and
        # the report and --exclude need one name per node.
        common_passes.NameFixPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        FoldComputedWeightsPass(),
        FoldBatchNormPass(),
        common_passes.ShapeInferencePass(strict_mode=False),
        # After shape inference: the rewrite needs the input's rank.
        ReduceMeanToGlobalPoolPass(),
        EinsumToMatMulPass(),
    )
    try:
        passes(loaded.model)
    except Exception as exc:  # onnx's shape inference raises on malformed graphs
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"{path}: shape inference fails on this model ({first_line})") from exc
    return loaded


def guard_inputs(
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


def guard_model_files(guard: PathGuard, loaded: ModelFile) -> None:
    for path in external_files(loaded.model):
        guard.reads(path, "the model's external data")


_FINITE_SLICE = 1 << 22  # elements of a weight checked for NaN/Inf at a time


def check_weights(loaded: ModelFile, plans: list[QuantPlan]) -> None:
    """Refuse NaN or Inf in a weight that would be quantized: its scale would be meaningless,
    and the failure would otherwise surface as NaN activations blamed on the data. (Non-finite
    constants left in float, such as attention masks of -inf, are fine.)"""
    names = sorted({w.name for plan in plans for w in plan.weights})
    for name in names:
        holder = initializer_owner(loaded.model.graph, name)  # the main graph or an If branch
        value = holder.initializers.get(name) if holder is not None else None
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


def check_data_path(loaded: ModelFile, output: Path, staging: StagedOutput) -> None:
    """The output's external data file must not replace one the input reads, nor exist unasked."""
    if not needs_external_data(loaded):
        return
    data = output.with_name(data_file_name(output))
    staging.guard.writes(data, "the output's data file")
    check_writable(data, force=staging.force)


# Above this many bytes of weights, the output is written with external data even when the
# input was one file: protobuf cannot hold 2 GiB, and the margin covers the graph itself.
INLINE_LIMIT = 1_800_000_000


def needs_external_data(loaded: ModelFile) -> bool:
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
def naming(path: Path) -> Iterator[None]:
    """onnxruntime's refusals do not name the file: add it."""
    try:
        yield
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def read_calibration_for(loaded: ModelFile, path: Path) -> CalibrationFile:
    cal = read_calibration(path)
    if cal.model_fingerprint != fingerprint(loaded.model):
        raise CalibrationFileError(
            f"{path}: made for another model than {loaded.path}; re-run calibrate on this model"
        )
    return cal


@dataclass(frozen=True)
class Datasets:
    """Which samples calibrate and which measure fidelity (and where the latter came from)."""

    calibration: Dataset | None
    evaluation: Dataset | None
    evaluation_source: str
    # Which samples of the run's choice ``calibration`` is (for a collector that reopens the data).
    calibration_part: Part = Part.ALL


def open_data(
    specs: tuple[InputSpec, ...],
    data: DataSource | None,
    eval_data: DataSource | None,
    config: QuantConfig,
    mode: QuantMode,
) -> Datasets:
    """``data`` and ``eval_data`` opened and checked against ``specs``, split for ``mode``."""
    calibration = (
        select_samples(
            open_source(data, specs, skip_nonfinite=config.skip_nonfinite, max_samples=config.max_samples),
            max_samples=config.max_samples,
            seed=config.seed,
        )
        if data is not None
        else None
    )
    return split_data(calibration, (data, eval_data), specs, config, mode)


def split_data(
    calibration: Dataset | None,
    sources: tuple[DataSource | None, DataSource | None],
    specs: tuple[InputSpec, ...],
    config: QuantConfig,
    mode: QuantMode,
) -> Datasets:
    """Which samples calibrate and which measure fidelity: ``eval_data`` (the second of
    ``sources``) when given, else the last ``eval_fraction`` of ``calibration`` held back (all of
    it in modes that calibrate nothing)."""
    data, eval_data = sources
    if eval_data is not None:
        evaluation = open_source(eval_data, specs, skip_nonfinite=config.skip_nonfinite)
        return Datasets(calibration, evaluation, str(eval_data))
    observes = uses_calibration(mode) or (config.four_bits and config.block_method.needs_statistics)
    if calibration is not None and not observes:
        # Nothing to calibrate: every sample of --data measures fidelity instead.
        return Datasets(None, calibration, f"{data} (not needed for calibration in {mode} mode)")
    if calibration is not None and calibration.num_samples > 1 and config.eval_fraction > 0:
        kept, held = calibration.split(config.eval_fraction)
        return Datasets(
            kept, held, f"last {held.num_samples} samples of {data}, held back from calibration", Part.KEPT
        )
    return Datasets(calibration, None, "")


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
    loaded = prepare(work.model)
    opened = open_source(
        work.source,
        model_inputs(loaded.model),
        skip_nonfinite=work.skip_nonfinite,
        max_samples=work.selection.max_samples,
    )
    dataset = work.selection.apply(opened, shard)
    with naming(work.model):
        stats = collect_stats(
            loaded.model,
            work.tensors,
            dataset,
            batch_size=work.batch_size,
            histograms=work.histograms,
            threads=threads,
        )
    return ShardResult(fingerprint(loaded.model), dataset.num_samples, stats)


@dataclass(frozen=True)
class Remote:
    """Where a statistics pass runs instead of here: ``collector`` reopens ``source`` and takes
    the ``part`` of its samples that this run's dataset is."""

    collector: Collector
    source: DataSource
    part: Part = Part.ALL


@dataclass(frozen=True)
class Observer:
    """How a run observes statistics (min, max, histograms if asked): on ``loaded``'s model
    here, or by ``remote`` on the same samples of the same file."""

    loaded: ModelFile
    config: QuantConfig
    histograms: bool
    remote: Remote | None = None

    def stats(
        self, tensors: Sequence[str], dataset: Dataset, progress: Advance | None = None
    ) -> dict[str, TensorStats]:
        """Statistics of ``tensors`` over ``dataset``."""
        loaded, config = self.loaded, self.config
        if self.remote is not None:
            work = ShardWork(
                loaded.path,
                self.remote.source,
                tuple(tensors),
                Selection(config.max_samples, config.seed, self.remote.part, config.eval_fraction),
                config.skip_nonfinite,
                config.batch_size,
                self.histograms,
                fingerprint(loaded.model),
                dataset.num_samples,
            )
            return self.remote.collector(work, progress)
        with naming(loaded.path):
            return collect_stats(
                loaded.model,
                tensors,
                dataset,
                batch_size=config.batch_size,
                histograms=self.histograms,
                progress=progress,
            )


def ranges_for(
    names: Iterable[str],
    config: QuantConfig,
    stats: Callable[[list[str]], Mapping[str, TensorStats]],
    known: Mapping[str, TensorRange] | None = None,
) -> dict[str, TensorRange]:
    """Ranges in, ranges out: ``known`` with the range of every one of ``names`` it lacks, by
    ``config``'s method over the statistics ``stats`` gives for those (names it has no statistics
    for are left out). ``known`` itself is not changed."""
    ranges = dict(known or {})
    missing = [name for name in names if name not in ranges]
    if missing:
        ranges.update(choose_ranges(stats(missing), missing, config))
    return ranges


@dataclass(frozen=True)
class Run:
    """One conversion as settled before any candidate is built: ``mode`` is the concrete mode,
    or auto when candidates are measured against each other."""

    loaded: ModelFile
    config: QuantConfig
    mode: QuantMode
    datasets: Datasets
    labels: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class Request:
    """What :func:`quantize` was asked to read and write."""

    model_path: Path
    output: Path
    data: DataSource | None
    calibration: Path | None
    eval_data: DataSource | None
    labels: Path | None
    progress: Progress | None = None
    collector: Collector | None = None


def load_checked(guard: PathGuard, model_path: Path) -> ModelFile:
    stage("load")
    loaded = prepare(model_path)
    refuse_quantized(loaded.model, model_path)
    guard_model_files(guard, loaded)
    return loaded


def calibrated_ranges(
    run: Run, plans: list[QuantPlan], recorded: tuple[Path, CalibrationFile] | None, request: Request
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
    observer = Observer(run.loaded, config, config.method.needs_histogram, remote)
    ranges = ranges_for(observed, config, lambda names: observer.stats(names, dataset, request.progress))
    return ranges, CalibrationSummary(method, dataset.num_samples, str(dataset.source))


def check_request(request: Request, config: QuantConfig) -> None:
    if request.data is not None and request.calibration is not None:
        raise ConfigError("give calibration data (--data) or a calibration file (--calibration), not both")
    calibrates = config.mode is not QuantMode.AUTO and strategy(config.mode).needs_calibration
    if calibrates and request.data is None and request.calibration is None:
        raise ConfigError(
            f"{config.mode} mode calibrates activations: give --data or --calibration "
            "(or choose --mode dynamic or --mode weight-only, which need no data)"
        )
    if config.bias_correction and request.data is None:
        raise ConfigError("--bias-correction measures Conv input means on --data; give --data")
    check_engine(config)
    if config.four_bits and config.block_method.needs_statistics and request.data is None:
        raise ConfigError(
            f"--block-method {config.block_method} observes each layer's inputs on --data; give --data "
            "(or use --block-method rtn, which needs none)"
        )


def check_engine(config: QuantConfig) -> None:
    """Auto's ``--speed measured`` times candidates on the target's engine: refused, before any
    work, when that engine is not installed (engine.require says why it is not a fallback)."""
    if config.mode is QuantMode.AUTO and config.speed is SpeedSource.MEASURED:
        require(target_of(config), "--speed measured")


def labels_for(labels: Path | None, datasets: Datasets) -> npt.NDArray[np.int64] | None:
    if labels is None:
        return None
    if datasets.evaluation is None:
        raise ConfigError("--labels needs evaluation data (--eval-data, or --data with 2+ samples)")
    return load_labels(labels, datasets.evaluation.num_samples)


def open_request(
    staging: StagedOutput, request: Request
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
    loaded = load_checked(staging.guard, request.model_path)
    check_data_path(loaded, request.output, staging)
    if request.calibration is None:
        return loaded, None
    return loaded, (request.calibration, read_calibration_for(loaded, request.calibration))


@dataclass(frozen=True)
class CalibrationRequest:
    """What :func:`calibrate` was asked to observe."""

    model_path: Path
    data: DataSource
    shard: Shard | None
    eval_data: DataSource | None
    labels: Path | None
    progress: Progress | None
    collector: Collector | None
