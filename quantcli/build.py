"""One candidate: copy, parameters, bias correction (when asked), rewrite, check, measure.

The main path, every candidate of ``--mode auto`` and every fallback trial build through
:func:`build_candidate`, so a model is quantized one way whoever asks for it. What a build is made
of is plain, picklable data (a :class:`Job`: plan and ranges; a config; the :class:`BuildTarget`);
the :class:`Workshop` adds what lives in one process (the float model's session, the scratch
folders staged files wait in). So another process (a Ray task) can build a candidate from the
same values with a workshop of its own, and the choice reads only the figures measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxruntime as ort

from quantcli.calibration.collect import TensorRange, stage
from quantcli.calibration.data import Batch, Dataset
from quantcli.calibration.observers import TensorStats
from quantcli.config import QuantConfig, QuantMode, SpeedSource
from quantcli.correction import bias_corrections
from quantcli.cost import Prediction, default_cost_model, profile_kernels
from quantcli.errors import ModelLoadError, QuantizationError
from quantcli.evaluate import (
    Fidelity,
    GateResult,
    Latency,
    compare_models,
    first_sample,
    gate,
    measure_latency,
)
from quantcli.graph.exchange import ir_copy
from quantcli.graph.io import ModelFile, check_model_file, external_folder, open_session, serialize
from quantcli.graph.output import StagedModel, StagedOutput
from quantcli.inputs import Datasets, Observer, Run, naming, needs_external_data, ranges_for
from quantcli.params import PlanParams, compute_params
from quantcli.passes import (
    CorrectBiasesPass,
    FoldActivationsPass,
    GatherQuantizedRowsPass,
    InsertActivationQDQPass,
    OmitZeroPointsPass,
    QuantizeInitializersPass,
    QuantizeLSTMDynamicallyPass,
    QuantizeMatMulDynamicallyPass,
)
from quantcli.plan import QuantPlan, select

__all__ = [
    "BuildTarget",
    "Candidate",
    "Job",
    "Reference",
    "Variant",
    "Workshop",
    "build_candidate",
    "build_variant",
    "copy_model",
    "reference_for",
    "time_side_by_side",
    "workshop_for",
]

# Time auto may spend timing candidates against each other.
_LATENCY_BUDGET_SECONDS = 20.0


@dataclass(frozen=True)
class Candidate:
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


@dataclass(frozen=True)
class Job:
    """One candidate to build: its plan and the ranges its parameters come from."""

    plan: QuantPlan
    ranges: Mapping[str, TensorRange]


@dataclass(frozen=True)
class Variant:
    """A plan of ``mode`` with more nodes float than its rules leave: ``excluded`` by fallback,
    ``kept_float`` by the cost model (node name -> the reason the plan gives)."""

    mode: QuantMode
    excluded: frozenset[str] = frozenset()
    kept_float: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildTarget:
    """Where a candidate goes: its final path (staged apart until chosen), and what building it
    reads besides the model."""

    output: Path
    external_data: bool
    input_bytes: int
    # What --bias-correction measures input means on (None: no correction).
    calibration: Dataset | None = None
    data_folder: Path | None = None
    # The sample the cost model profiles each candidate on (None: no prediction).
    feed: Batch | None = None


@dataclass(frozen=True)
class Reference:
    """The float model: what fallback trials are copied from and every candidate is measured
    against (``proto`` None: nothing to measure against)."""

    loaded: ModelFile
    proto: onnx.ModelProto | None
    session: ort.InferenceSession | None
    datasets: Datasets
    labels: npt.NDArray[np.int64] | None

    @property
    def measures(self) -> bool:
        return self.session is not None and self.datasets.evaluation is not None


@dataclass(frozen=True)
class Workshop:
    """What every build of one run shares: the target, the reference, and the scratch folders
    candidates are staged in until one of them is adopted (closed with ``scratches``)."""

    target: BuildTarget
    reference: Reference
    scratches: contextlib.ExitStack
    force: bool

    def scratch(self) -> StagedOutput:
        return self.scratches.enter_context(StagedOutput(force=self.force))


def reference_for(run: Run, *, needed: bool) -> Reference:
    """The float model candidates are measured against: a reference to its files, not a copy
    of its weights (``proto`` None when nothing is measured and only one candidate is built)."""
    proto = serialize(run.loaded.model) if needed else None
    session = None
    if proto is not None and run.datasets.evaluation:
        with naming(run.loaded.path):
            session = open_session(proto, data_folder=external_folder(run.loaded.model))
    return Reference(run.loaded, proto, session, run.datasets, run.labels)


def workshop_for(run: Run, reference: Reference, output: Path, force: bool) -> Workshop:
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
    return Workshop(target, reference, contextlib.ExitStack(), force)


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
        OmitZeroPointsPass(),
        common_passes.RemoveUnusedNodesPass(),
        # Parameters repeat: activations' zero points, the shared scale of a data-movement
        # chain. One copy each keeps small models small.
        common_passes.DeduplicateInitializersPass(size_limit=4096),
    )(model)


def _quantized(model: ir.Model, job: Job, config: QuantConfig, target: BuildTarget) -> PlanParams:
    """Parameters for ``job`` and, with --bias-correction, the corrected biases put into
    ``model``; then the rewrite. Returns the parameters."""
    params = compute_params(model, job.plan, job.ranges, config)
    if config.bias_correction and target.calibration is not None:
        stage("bias correction")
        corrections = bias_corrections(
            model, params, target.calibration, batch_size=config.batch_size, data_folder=target.data_folder
        )
        CorrectBiasesPass(corrections.biases)(model)
    return params


def _predicted(staged: StagedModel, feed: Batch | None) -> Prediction | None:
    if feed is None:
        return None
    stage("predict speed")
    try:
        kernels = profile_kernels(staged.path, feed)
    except ModelLoadError as exc:  # the float model ran this sample: the candidate is at fault
        raise QuantizationError(f"the quantized model fails to run: {exc}") from exc
    return default_cost_model().predict(kernels)


def _built(
    model: ir.Model, job: Job, config: QuantConfig, target: BuildTarget, scratch: StagedOutput
) -> Candidate:
    """Quantize ``model`` (modified in place) by ``job``; stage it, check the staged file, and
    refuse it if it grew. Staging first means a model of any size is checked as it will be read."""
    params = _quantized(model, job, config, target)
    float_params = _parameter_count(model)
    int8_params = _parameter_count(model, [w.name for w in job.plan.weights])
    _rewrite(model, job.plan, params)
    staged = scratch.write_model(model, target.output, external_data=target.external_data)
    stage("check")
    session = check_model_file(staged.path)
    if staged.size_bytes >= target.input_bytes:
        raise QuantizationError(
            f"the quantized model ({staged.size_bytes} bytes) would not be smaller than the input "
            f"({target.input_bytes} bytes); nothing written"
        )
    fraction = int8_params / float_params if float_params else 0.0
    return Candidate(job.plan, staged, scratch, session, fraction, predicted=_predicted(staged, target.feed))


def _measured(candidate: Candidate, reference: Reference, config: QuantConfig) -> Candidate:
    """The candidate with its fidelity against the float model and its gate."""
    evaluation = reference.datasets.evaluation
    assert evaluation is not None and reference.session is not None
    fidelity = compare_models(
        reference.session,
        candidate.session,
        evaluation,
        batch_size=config.batch_size,
        source=reference.datasets.evaluation_source,
        labels=reference.labels,
    )
    metric, bound = config.gate(has_labels=reference.labels is not None)
    return replace(candidate, fidelity=fidelity, gate=gate(fidelity, metric, bound))


def build_candidate(
    model: ir.Model, job: Job, config: QuantConfig, shop: Workshop, *, trial: bool = False
) -> Candidate:
    """Build ``job`` on ``model`` (consumed: rewritten in place), check it, and measure it
    against the float model when there is evaluation data. ``trial``: a fallback trial, whose
    progress shows as the trial rather than as an evaluation of its own."""
    candidate = _built(model, job, config, shop.target, shop.scratch())
    if not shop.reference.measures:
        return candidate
    if not trial:
        stage(f"evaluate {job.plan.mode}")
    return _measured(candidate, shop.reference, config)


def copy_model(proto: onnx.ModelProto | None, data_folder: Path | None) -> ir.Model:
    """A model independent of ``proto``, free to rewrite: onnx_ir's tensors write renames through
    to the proto they wrap, so deserializing ``proto`` itself would let one candidate's rewrite
    corrupt the next. External weights stay references to the input's files."""
    assert proto is not None
    return ir_copy(proto, data_folder)


def build_variant(
    variant: Variant, config: QuantConfig, shop: Workshop, ranges: Mapping[str, TensorRange]
) -> tuple[Candidate, dict[str, TensorRange]]:
    """A fresh copy of the float model built and measured as ``variant``: ranges in, ranges
    out. With nodes float a carried chain can take its range from a tensor not yet observed: it
    is observed on the calibration data, and returned with the ranges given."""
    reference = shop.reference
    model = copy_model(reference.proto, shop.target.data_folder)
    plan = select(
        model,
        replace(config, exclude=config.exclude | variant.excluded),
        variant.kept_float,
        mode=variant.mode,
    )
    calibration = reference.datasets.calibration
    copy = replace(reference.loaded, model=model)

    def stats(names: list[str]) -> dict[str, TensorStats]:
        if calibration is None:
            return {}
        return Observer(copy, config, config.method.needs_histogram).stats(names, calibration)

    extended = ranges_for(plan.observed, config, stats, known=ranges)
    return build_candidate(model, Job(plan, extended), config, shop, trial=True), extended


def time_side_by_side(
    sessions: Mapping[str, ort.InferenceSession], evaluation: Dataset
) -> dict[str, Latency]:
    """Median latencies of ``sessions`` timed here, interleaved, on the first evaluation sample:
    what ``--speed measured`` compares."""
    return measure_latency(
        dict(sessions), first_sample(evaluation), runs=30, budget_seconds=_LATENCY_BUDGET_SECONDS
    )
