"""Orchestration only: each public function runs the stages in order and returns typed results.

load -> check data -> plan -> collect ranges -> parameters -> passes -> check -> evaluate ->
atomic write -> report. Nothing is decided or computed here that a stage module owns.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxruntime as ort

from quantcli.calibration.collect import Progress, TensorRange, collect_stats
from quantcli.calibration.data import Dataset, InputSpec, model_inputs, open_dataset
from quantcli.calibration.file import CalibrationFile, read_calibration
from quantcli.calibration.methods import choose_ranges
from quantcli.calibration.sampling import Shard, select_samples
from quantcli.config import DEFAULT_MAX_DROP, QuantConfig, QuantMode
from quantcli.errors import CalibrationFileError, ConfigError, OutputError, QuantizationError
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
from quantcli.params import PlanParams, compute_params
from quantcli.passes import (
    FoldActivationsPass,
    GatherQuantizedRowsPass,
    InsertActivationQDQPass,
    QuantizeInitializersPass,
    QuantizeMatMulDynamicallyPass,
)
from quantcli.plan import QuantPlan, candidate_tensors, select
from quantcli.report import CalibrationSummary, CandidateSummary, QuantReport, SizeSummary

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
    if calibration is not None and not config.mode.needs_calibration:
        # Nothing to calibrate: every sample of --data measures fidelity instead.
        return _Data(None, calibration, f"{data} (not needed for calibration in {config.mode} mode)")
    if calibration is not None and calibration.num_samples > 1 and config.eval_fraction > 0:
        kept, held = calibration.split(config.eval_fraction)
        return _Data(kept, held, f"last {held.num_samples} samples of {data}, held back from calibration")
    return _Data(calibration, None, "")


def _ranges(
    *,
    loaded: ModelFile,
    observed: list[str],
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
        return choose_ranges(cal.stats, observed, config), CalibrationSummary(
            method, cal.num_samples, str(calibration)
        )
    assert data.calibration is not None
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


# Candidate modes --mode auto tries, in the order ties are broken (most integer work first).
_AUTO_MODES = (QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)
# Time auto may spend timing candidates against each other.
_AUTO_LATENCY_BUDGET_SECONDS = 20.0
# Latencies within this factor of the fastest count as equal.
_LATENCY_TIE = 1.03


def _rewrite(model: ir.Model, plan: QuantPlan, params: PlanParams) -> None:
    """Carry out ``plan`` on ``model`` in place."""
    ir.passes.Sequential(
        FoldActivationsPass(plan.folds),
        QuantizeInitializersPass(params.initializers),
        QuantizeMatMulDynamicallyPass(plan.dynamic),
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
    payload: bytes
    session: ort.InferenceSession
    int8_weight_fraction: float
    fidelity: Fidelity | None = None
    gate: GateResult | None = None
    latency: Latency | None = None


def _plans(model: ir.Model, config: QuantConfig) -> list[QuantPlan]:
    """The plans to build: the configured mode's, or every distinct non-empty one for auto."""
    modes = _AUTO_MODES if config.mode is QuantMode.AUTO else (config.mode,)
    plans: list[QuantPlan] = []
    seen: set[tuple[str, ...]] = set()
    for mode in modes:
        plan = select(model, replace(config, mode=mode))
        signature = tuple(d.role.value for d in plan.decisions)
        if plan.is_noop or signature in seen:
            continue  # e.g. mixed is static again on a model without MatMul
        seen.add(signature)
        plans.append(plan)
    return plans


def _build(
    model: ir.Model, plan: QuantPlan, ranges: dict[str, TensorRange], config: QuantConfig, input_bytes: int
) -> _Candidate:
    """Quantize ``model`` (modified in place) by ``plan``; check it and refuse it if it grew."""
    params = compute_params(model, plan, ranges, config)
    float_params = _parameter_count(model)
    int8_params = _parameter_count(model, [w.name for w in plan.weights])
    _rewrite(model, plan, params)
    proto = serialize(model, keep_value_info=False)
    session = check_model_proto(proto)
    payload = proto.SerializeToString(deterministic=True)
    if len(payload) >= input_bytes:
        raise QuantizationError(
            f"the quantized model ({len(payload)} bytes) would not be smaller than the input "
            f"({input_bytes} bytes); nothing written"
        )
    return _Candidate(plan, payload, session, int8_params / float_params if float_params else 0.0)


def _choose(candidates: list[_Candidate], config: QuantConfig, evaluation: Dataset | None) -> _Candidate:
    """The fastest candidate within the accuracy bound; if none is, the most faithful one."""
    if len(candidates) == 1:
        return candidates[0]
    if evaluation is None or any(c.gate is None for c in candidates):
        raise ConfigError("--mode auto measures its candidates: give --eval-data or --data with 2+ samples")
    latencies = measure_latency(
        {c.plan.mode.value: c.session for c in candidates},
        first_sample(evaluation),
        runs=30,
        budget_seconds=_AUTO_LATENCY_BUDGET_SECONDS,
    )
    timed = [replace(c, latency=latencies[c.plan.mode.value]) for c in candidates]
    candidates[:] = timed
    passing = [c for c in timed if c.gate is not None and c.gate.passed]
    if not passing:
        return min(timed, key=lambda c: c.gate.drop if c.gate else float("inf"))
    fastest = min(c.latency.median_ms for c in passing if c.latency is not None)
    # Timings a few percent apart are noise on a shared machine: among those, the smaller model
    # wins, then the earlier mode (more integer work).
    close = [c for c in passing if c.latency is not None and c.latency.median_ms <= fastest * _LATENCY_TIE]
    return min(close, key=lambda c: len(c.payload))


def _summaries(
    candidates: list[_Candidate], winner: _Candidate, input_bytes: int
) -> tuple[CandidateSummary, ...]:
    if len(candidates) == 1:
        return ()
    fastest_passing = [c for c in candidates if c.gate is not None and c.gate.passed]
    summaries = []
    for c in candidates:
        if c is winner and fastest_passing:
            why = "fastest within the accuracy bound (timings 3% apart tie; then the smallest)"
        elif c is winner:
            why = "no candidate met the accuracy bound; this one lost the least"
        elif c.gate is not None and not c.gate.passed:
            why = f"misses the accuracy bound by {c.gate.missed_by:.2f} points"
        else:
            why = "within the accuracy bound but slower"
        summaries.append(
            CandidateSummary(
                mode=c.plan.mode.value,
                output_bytes=len(c.payload),
                size_ratio=input_bytes / len(c.payload),
                int8_weight_fraction=c.int8_weight_fraction,
                gate=c.gate,
                latency=c.latency,
                chosen=c is winner,
                reason=why,
            )
        )
    return tuple(summaries)


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
    """Quantize ``model_path`` to int8 and write it to ``output``, checked and atomically.

    Ranges come from ``data`` (calibrated now) or ``calibration`` (a file from :func:`calibrate`);
    the dynamic and weight-only modes need neither. Fidelity is measured on ``eval_data``, or on
    a held-back part of ``data``. With ``mode=auto`` every candidate mode is built and measured
    and the fastest one within the accuracy bound is written.
    """
    config = config or QuantConfig()
    if data is not None and calibration is not None:
        raise ConfigError("give calibration data (--data) or a calibration file (--calibration), not both")
    if config.mode.needs_calibration and data is None and calibration is None:
        raise ConfigError(
            f"{config.mode} mode calibrates activations: give --data or --calibration "
            "(or choose --mode dynamic or --mode weight-only, which need no data)"
        )
    _check_output_path(model_path, output, force=force)
    loaded = _prepare(model_path)
    specs = model_inputs(loaded.model)
    datasets = _open_data(specs, data, eval_data, config)
    label_array = None
    if labels is not None:
        if datasets.evaluation is None:
            raise ConfigError("--labels needs evaluation data (--eval-data, or --data with 2+ samples)")
        label_array = load_labels(labels, datasets.evaluation.num_samples)
    plans = _plans(loaded.model, config)
    if not plans:
        raise QuantizationError(
            f"{model_path}: nothing to quantize in {config.mode} mode "
            "(no Conv, MatMul, Gemm or Gather on float weights)"
        )
    observed = sorted({name for plan in plans for name in plan.observed})
    ranges: dict[str, TensorRange] = {}
    calibration_summary = CalibrationSummary("none", 0, f"not needed in {config.mode} mode")
    if observed:
        ranges, calibration_summary = _ranges(
            loaded=loaded,
            observed=observed,
            data=datasets,
            calibration=calibration,
            config=config,
            progress=progress,
        )
    reference = serialize(loaded.model) if datasets.evaluation is not None or len(plans) > 1 else None
    reference_session = open_session(reference) if reference is not None and datasets.evaluation else None
    candidates = []
    for index, plan in enumerate(plans):
        # Every candidate but the last rewrites a fresh copy; the last may consume the original.
        model = loaded.model if index == len(plans) - 1 else _copy(reference)
        try:
            candidate = _build(model, plan, ranges, config, loaded.size_bytes)
        except QuantizationError as exc:
            if len(plans) == 1:
                raise QuantizationError(f"{model_path}: {exc}") from exc
            logger.warning("%s mode candidate dropped: %s", plan.mode, exc)
            continue
        if reference_session is not None and datasets.evaluation is not None:
            fidelity = compare_models(
                reference_session,
                candidate.session,
                datasets.evaluation,
                batch_size=config.batch_size,
                source=datasets.evaluation_source,
                labels=label_array,
            )
            bound = config.max_drop if config.max_drop is not None else DEFAULT_MAX_DROP
            candidate = replace(candidate, fidelity=fidelity, gate=gate(fidelity, config.metric, bound))
        candidates.append(candidate)
    if not candidates:
        raise QuantizationError(f"{model_path}: no candidate mode produced a smaller, valid model")
    winner = _choose(candidates, config, datasets.evaluation)
    write_atomic(winner.payload, output, force=force)
    report = QuantReport(
        model=str(model_path),
        output=str(output),
        size=SizeSummary(loaded.size_bytes, len(winner.payload)),
        config=config,
        calibration=calibration_summary,
        plan=winner.plan,
        int8_weight_fraction=winner.int8_weight_fraction,
        fidelity=winner.fidelity,
        fidelity_note="" if winner.fidelity else "not measured: give --eval-data (or --data with 2+ samples)",
        gate=winner.gate if config.max_drop is not None else None,
        candidates=_summaries(candidates, winner, loaded.size_bytes),
    )
    return QuantResult(output=output, report=report)


def _copy(proto: onnx.ModelProto | None) -> ir.Model:
    """A model independent of ``proto``: onnx_ir's tensors write renames through to the proto they
    wrap, so deserializing ``proto`` itself would let one candidate's rewrite corrupt the next."""
    assert proto is not None
    fresh = onnx.ModelProto()
    fresh.CopyFrom(proto)
    return ir.serde.deserialize_model(fresh)


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
