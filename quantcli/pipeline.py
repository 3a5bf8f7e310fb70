"""Orchestration only: each public function runs the stages in order and returns typed results.

load -> check data -> plan -> collect ranges -> parameters -> passes -> check -> evaluate ->
atomic write -> report. Nothing is decided or computed here that a stage module owns.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from quantcli.calibration.collect import Progress, TensorRange, collect_stats
from quantcli.calibration.data import Dataset, InputSpec, model_inputs, open_dataset
from quantcli.calibration.file import CalibrationFile, read_calibration
from quantcli.calibration.methods import choose_ranges
from quantcli.calibration.sampling import Shard, select_samples
from quantcli.config import QuantConfig
from quantcli.errors import CalibrationFileError, ConfigError, OutputError, QuantizationError
from quantcli.evaluate import Fidelity, compare_models, load_labels
from quantcli.graph.io import (
    ModelFile,
    check_model_proto,
    check_writable,
    fingerprint,
    load_model,
    open_session,
    serialize,
    write_atomic,
)
from quantcli.params import compute_params
from quantcli.passes import FoldActivationsPass, InsertActivationQDQPass, QuantizeInitializersPass
from quantcli.plan import QuantPlan, candidate_tensors, select
from quantcli.report import CalibrationSummary, QuantReport, SizeSummary

__all__ = ["ModelSummary", "QuantResult", "calibrate", "inspect_model", "quantize"]

logger = logging.getLogger(__name__)


def _prepare(path: Path) -> ModelFile:
    """Load a model and give every value a type: plan rules look at dtypes and ranks."""
    loaded = load_model(path)
    prepare = ir.passes.Sequential(
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        common_passes.ShapeInferencePass(strict_mode=False),
    )
    try:
        prepare(loaded.model)
    except Exception as exc:  # onnx's shape inference raises on malformed graphs
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"{path}: shape inference fails on this model ({first_line})") from exc
    return loaded


def _check_output_path(model_path: Path, output: Path, *, force: bool) -> None:
    """Refuse a bad output before any work is done."""
    if output.resolve() == model_path.resolve():
        raise OutputError(f"{output}: the output would overwrite the input model; choose another path")
    check_writable(output, force=force)


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


def _open_data(
    specs: tuple[InputSpec, ...], data: Path | None, eval_data: Path | None, config: QuantConfig
) -> _Data:
    calibration = (
        select_samples(open_dataset(data, specs), max_samples=config.max_samples, seed=config.seed)
        if data is not None
        else None
    )
    if eval_data is not None:
        return _Data(calibration, open_dataset(eval_data, specs), str(eval_data))
    if calibration is not None and calibration.num_samples > 1 and config.eval_fraction > 0:
        kept, held = calibration.split(config.eval_fraction)
        return _Data(kept, held, f"last {held.num_samples} samples of {data}, held back from calibration")
    return _Data(calibration, None, "")


def _ranges(
    *,
    loaded: ModelFile,
    plan: QuantPlan,
    data: _Data,
    calibration: Path | None,
    config: QuantConfig,
    progress: Progress | None,
) -> tuple[dict[str, TensorRange], CalibrationSummary]:
    if calibration is not None:
        cal = read_calibration(calibration)
        if cal.model_fingerprint != fingerprint(loaded.model):
            raise CalibrationFileError(
                f"{calibration}: made for another model than {loaded.path}; re-run calibrate on this model"
            )
        method = config.method.describe(config.percentile)
        return choose_ranges(cal.stats, plan.observed, config), CalibrationSummary(
            method, cal.num_samples, str(calibration)
        )
    assert data.calibration is not None
    stats = collect_stats(
        loaded.model,
        plan.observed,
        data.calibration,
        batch_size=config.batch_size,
        histograms=config.method.needs_histogram,
        progress=progress,
    )
    return choose_ranges(stats, plan.observed, config), CalibrationSummary(
        config.method.describe(config.percentile), data.calibration.num_samples, str(data.calibration.source)
    )


def quantize(
    model_path: Path,
    output: Path,
    *,
    config: QuantConfig | None = None,
    data: Path | None = None,
    calibration: Path | None = None,
    eval_data: Path | None = None,
    labels: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> QuantResult:
    """Quantize ``model_path`` to int8 QDQ and write it to ``output``, checked and atomically.

    Ranges come from ``data`` (calibrated now) or ``calibration`` (a file from :func:`calibrate`).
    Fidelity is measured on ``eval_data``, or on a held-back part of ``data``.
    """
    config = config or QuantConfig()
    if (data is None) == (calibration is None):
        raise ConfigError("give calibration data (--data) or a calibration file (--calibration), not both")
    _check_output_path(model_path, output, force=force)
    loaded = _prepare(model_path)
    specs = model_inputs(loaded.model)
    datasets = _open_data(specs, data, eval_data, config)
    label_array = None
    if labels is not None:
        if datasets.evaluation is None:
            raise ConfigError("--labels needs evaluation data (--eval-data, or --data with 2+ samples)")
        label_array = load_labels(labels, datasets.evaluation.num_samples)
    plan = select(loaded.model, config)
    if plan.is_noop:
        raise QuantizationError(
            f"{model_path}: nothing to quantize (no Conv, MatMul, Gemm or Gather on float weights)"
        )
    ranges, calibration_summary = _ranges(
        loaded=loaded, plan=plan, data=datasets, calibration=calibration, config=config, progress=progress
    )
    params = compute_params(loaded.model, plan, ranges, config)
    float_params = _parameter_count(loaded.model)
    int8_params = _parameter_count(loaded.model, [w.name for w in plan.weights])
    reference = serialize(loaded.model) if datasets.evaluation is not None else None
    rewrite = ir.passes.Sequential(
        FoldActivationsPass(plan.folds),
        QuantizeInitializersPass(params.initializers),
        InsertActivationQDQPass(
            params.activations, frozenset(a.name for a in plan.activations if a.replaces_graph_output)
        ),
        common_passes.RemoveUnusedNodesPass(),
        # Parameters repeat: all-zero zero points of every weight with as many channels, the
        # shared scale of a data-movement chain. One copy each keeps small models small.
        common_passes.DeduplicateInitializersPass(size_limit=4096),
    )
    rewrite(loaded.model)
    proto = serialize(loaded.model, keep_value_info=False)
    checked = check_model_proto(proto)
    payload = proto.SerializeToString(deterministic=True)
    if len(payload) >= loaded.size_bytes:
        raise QuantizationError(
            f"{model_path}: the quantized model ({len(payload)} bytes) would not be smaller than the input "
            f"({loaded.size_bytes} bytes); nothing written"
        )
    fidelity: Fidelity | None = None
    note = "not measured: give --eval-data (or --data with 2+ samples)"
    if reference is not None and datasets.evaluation is not None:
        fidelity = compare_models(
            open_session(reference),
            checked,
            datasets.evaluation,
            batch_size=config.batch_size,
            source=datasets.evaluation_source,
            labels=label_array,
        )
        note = ""
    write_atomic(payload, output, force=force)
    report = QuantReport(
        model=str(model_path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, len(payload)),
        config=config,
        calibration=calibration_summary,
        plan=plan,
        int8_weight_fraction=int8_params / float_params if float_params else 0.0,
        fidelity=fidelity,
        fidelity_note=note,
    )
    return QuantResult(output=output, report=report)


def calibrate(
    model_path: Path,
    data: Path,
    *,
    config: QuantConfig | None = None,
    shard: Shard | None = None,
    progress: Progress | None = None,
) -> CalibrationFile:
    """Observe every tensor any plan could quantize (min, max, histogram), for later ``convert``
    runs with any method; ``shard`` observes one of N disjoint parts of the samples."""
    config = config or QuantConfig()
    loaded = _prepare(model_path)
    dataset = select_samples(
        open_dataset(data, model_inputs(loaded.model)),
        max_samples=config.max_samples,
        seed=config.seed,
        shard=shard,
    )
    tensors = candidate_tensors(loaded.model)
    if not tensors:
        raise QuantizationError(f"{model_path}: nothing to calibrate (no quantizable float tensors)")
    stats = collect_stats(
        loaded.model, tensors, dataset, batch_size=config.batch_size, histograms=True, progress=progress
    )
    return CalibrationFile(
        model_fingerprint=fingerprint(loaded.model),
        method=config.method,
        percentile=config.percentile,
        num_samples=dataset.num_samples,
        stats=stats,
        shards=(str(shard),) if shard is not None else (),
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


def inspect_model(model_path: Path, config: QuantConfig | None = None) -> ModelSummary:
    """Describe a model and the plan :func:`quantize` would follow for it."""
    loaded = _prepare(model_path)
    model = loaded.model
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
        plan=select(model, config or QuantConfig()),
    )
