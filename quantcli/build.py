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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from quantcli.blockwise.layers import (
    BlockedWeights,
    BlockLayer,
    quantize_layers,
    quantize_tables,
    statistics_needed,
)
from quantcli.blockwise.statistics import collect_input_statistics
from quantcli.blockwise.streaming import quantize_streaming, streams
from quantcli.calibration.collect import TensorRange, stage
from quantcli.calibration.data import Batch, Dataset
from quantcli.calibration.observers import TensorStats
from quantcli.config import BlockOverride, QuantConfig, QuantMode, SpeedSource
from quantcli.correction import bias_corrections
from quantcli.cost import Prediction, default_cost_model, profile_kernels
from quantcli.engine import Session, engine_name, timing_session
from quantcli.errors import EngineCrashError, ModelLoadError, QuantCliError, QuantizationError
from quantcli.evaluate import (
    Fidelity,
    GateResult,
    Latency,
    compare_models,
    first_sample,
    gate,
    measure_latency,
)
from quantcli.graph.branches import branch_graphs
from quantcli.graph.exchange import ir_copy
from quantcli.graph.io import ModelFile, check_model_file, external_folder, open_session, serialize
from quantcli.graph.output import StagedModel, StagedOutput
from quantcli.graph.segments import SegmentedSession
from quantcli.graph.spill import Spill
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
    RemoveUnusedBranchInitializersPass,
    WriteBlockwiseTablesPass,
    WriteBlockwiseWeightsPass,
)
from quantcli.plan import QuantPlan, select, target_of
from quantcli.target import ORT_CPU, Target

__all__ = [
    "BuildTarget",
    "Builds",
    "Built",
    "Candidate",
    "Detached",
    "Job",
    "LocalBuilds",
    "Order",
    "Reference",
    "Shipped",
    "Variant",
    "Workshop",
    "build_candidate",
    "build_detached",
    "build_order",
    "build_variant",
    "copy_model",
    "detach",
    "land",
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
    session: Session
    int8_weight_fraction: float
    fidelity: Fidelity | None = None
    gate: GateResult | None = None
    latency: Latency | None = None
    predicted: Prediction | None = None
    # What 4 bits cost each block-wise layer (``--weight-bits 4``), in graph order.
    blockwise: tuple[BlockLayer, ...] = ()

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
    ``kept_float`` by the cost model (node name -> the reason the plan gives); and ``widened``,
    4-bit nodes fallback returns to 8 bits."""

    mode: QuantMode
    excluded: frozenset[str] = frozenset()
    kept_float: Mapping[str, str] = field(default_factory=dict)
    widened: frozenset[str] = frozenset()

    def config(self, config: QuantConfig) -> QuantConfig:
        """``config`` with this variant's widened nodes at 8 bits."""
        widened = (
            (BlockOverride(patterns=self.widened, bits=8, source=FALLBACK_SOURCE),) if self.widened else ()
        )
        return replace(config, block_overrides=(*config.block_overrides, *widened))

    def float_reasons(self) -> dict[str, str]:
        """Why each node this variant leaves float is float: fallback's own, then the cost model's.

        Fallback's nodes are not added to the user's ``exclude``: their reason must name
        fallback, not the user."""
        returned = {name: FALLBACK_FLOAT_REASON for name in sorted(self.excluded)}
        return {**returned, **self.kept_float}


# Where a widened node's 8 bits come from, as its reason says.
FALLBACK_SOURCE = "--auto-fallback"
FALLBACK_FLOAT_REASON = "float: returned to float by --auto-fallback (its tensors ranked worst)"


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
    session: Session | None
    datasets: Datasets
    labels: npt.NDArray[np.int64] | None
    # The target whose engine runs the float model and checks every candidate.
    runtime: Target = ORT_CPU

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
    session: Session | None = None
    runtime = target_of(run.config)
    folder = external_folder(run.loaded.model)
    if proto is not None and run.datasets.evaluation and streams(run.loaded.model, run.config):
        # A model past memory is run a segment at a time (see quantcli.blockwise.streaming), on
        # onnxruntime whatever the target: the float model's arithmetic is the same there.
        session = SegmentedSession(proto, folder)
    elif proto is not None and run.datasets.evaluation:
        with naming(run.loaded.path):
            session = open_session(proto, data_folder=folder, target=runtime, label=str(run.loaded.path))
    return Reference(run.loaded, proto, session, run.datasets, run.labels, runtime)


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
    """Elements of the named initializers, or of every float initializer (If branches' too)."""
    total = 0
    graphs = (model.graph, *(branch for _, _, branch in branch_graphs(model.graph)))
    for name, value in (item for graph in graphs for item in graph.initializers.items()):
        tensor = value.const_value
        if tensor is None:
            continue
        if (names is None and tensor.dtype == ir.DataType.FLOAT) or (names is not None and name in names):
            total += int(tensor.size)
    return total


def _rewrite(
    model: ir.Model, plan: QuantPlan, params: PlanParams, blocked: BlockedWeights, runtime: Target
) -> None:
    """Carry out ``plan`` on ``model`` in place, written for ``runtime``."""
    ir.passes.Sequential(
        FoldActivationsPass(plan.folds),
        QuantizeInitializersPass(params.initializers, params.integers),
        WriteBlockwiseWeightsPass(blocked.weights, accuracy_level=plan.block_accuracy_level),
        WriteBlockwiseTablesPass(blocked.tables),
        QuantizeMatMulDynamicallyPass(plan.dynamic),
        QuantizeLSTMDynamicallyPass(plan.lstm),
        GatherQuantizedRowsPass(plan.gathered_tables),
        InsertActivationQDQPass(
            params.activations, frozenset(a.name for a in plan.activations if a.replaces_graph_output)
        ),
        OmitZeroPointsPass(runtime),
        common_passes.RemoveUnusedNodesPass(),
        RemoveUnusedBranchInitializersPass(),
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


def _block_weight_names(model: ir.Model, plan: QuantPlan) -> list[str]:
    """The weight initializers of the plan's block-wise nodes."""
    nodes = set(plan.blockwise)
    return [w.name or "" for node in model.graph if node.name in nodes and (w := node.inputs[1]) is not None]


def _spill(
    model: ir.Model, config: QuantConfig, target: BuildTarget
) -> contextlib.AbstractContextManager[Spill | None]:
    """Where a model past memory writes its 4-bit weights as they are made (None: in memory)."""
    return Spill(target.output) if streams(model, config) else contextlib.nullcontext()


def _blocked(
    model: ir.Model, plan: QuantPlan, config: QuantConfig, target: BuildTarget, spill: Spill | None
) -> BlockedWeights:
    """The 4-bit weights of ``plan``'s block-wise nodes. GPTQ and AWQ first observe each of their
    inputs' ``X^T X`` on the calibration data, streaming through calibration's observe loop (its
    memory budget bounds every pass); only the K x K statistics are kept. With ``spill`` (a model
    past memory) layers are observed, rounded and written out segment by segment instead."""
    statistics = {}
    if spill is not None and plan.blockwise:
        layers = quantize_streaming(
            model,
            plan.blockwise,
            config,
            calibration=target.calibration,
            spill=spill,
            sizes=dict(plan.block_sizes),
        )
    else:
        if plan.blockwise and config.block_method.needs_statistics:
            assert target.calibration is not None, "check_request requires --data for gptq and awq"
            stage("observe 4-bit layer inputs", total=target.calibration.num_samples)
            statistics = collect_input_statistics(
                model,
                statistics_needed(model.graph, plan.blockwise),
                target.calibration,
                batch_size=config.batch_size,
            )
        layers = quantize_layers(
            model.graph,
            plan.blockwise,
            method=config.block_method,
            block_size=config.block_size,
            symmetric=config.weight_symmetric,
            statistics=statistics,
            sizes=dict(plan.block_sizes),
        )
    return quantize_tables(
        layers,
        model.graph,
        plan.blockwise_tables,
        block_size=config.block_size,
        symmetric=config.weight_symmetric,
        sizes=dict(plan.block_sizes),
    )


def _built(
    model: ir.Model, job: Job, config: QuantConfig, target: BuildTarget, scratch: StagedOutput
) -> Candidate:
    """Quantize ``model`` (modified in place) by ``job``; stage it, check the staged file, and
    refuse it if it grew. Staging first means a model of any size is checked as it will be read."""
    with _spill(model, config, target) as spill:
        blocked = _blocked(model, job.plan, config, target, spill)
        params = _quantized(model, job, config, target)
        float_params = _parameter_count(model)
        quantized = [w.name for w in job.plan.weights] + _block_weight_names(model, job.plan)
        quantized += job.plan.blockwise_tables
        int8_params = _parameter_count(model, quantized)
        _rewrite(model, job.plan, params, blocked, target_of(config))
        staged = scratch.write_model(model, target.output, external_data=target.external_data)
    stage("check")
    session = check_model_file(staged.path, target_of(config), label=str(target.output))
    if staged.size_bytes >= target.input_bytes:
        raise QuantizationError(
            f"the quantized model ({staged.size_bytes} bytes) would not be smaller than the input "
            f"({target.input_bytes} bytes); nothing written"
        )
    fraction = int8_params / float_params if float_params else 0.0
    predicted = _predicted(staged, target.feed)
    return Candidate(
        job.plan, staged, scratch, session, fraction, predicted=predicted, blockwise=blocked.layers
    )


def _measured(candidate: Candidate, reference: Reference, config: QuantConfig) -> Candidate:
    """The candidate with its fidelity against the float model and its gate."""
    evaluation = reference.datasets.evaluation
    assert evaluation is not None and reference.session is not None
    try:
        fidelity = compare_models(
            reference.session,
            candidate.session,
            evaluation,
            batch_size=config.batch_size,
            source=reference.datasets.evaluation_source,
            labels=reference.labels,
        )
    except EngineCrashError as exc:
        if exc.label == str(reference.loaded.path):
            raise  # the float model: no candidate can be measured
        # A candidate the engine crashes on is one it refuses, as at its check (auto goes on).
        engine = engine_name(reference.runtime)
        raise QuantizationError(f"{engine} refuses the quantized model: {exc.reason}") from exc
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
    plan = select(model, variant.config(config), variant.float_reasons(), mode=variant.mode)
    calibration = reference.datasets.calibration
    copy = replace(reference.loaded, model=model)

    def stats(names: list[str]) -> dict[str, TensorStats]:
        if calibration is None:
            return {}
        return Observer(copy, config, config.method.needs_histogram).stats(names, calibration)

    extended = ranges_for(plan.observed, config, stats, known=ranges)
    return build_candidate(model, Job(plan, extended), config, shop, trial=True), extended


def time_side_by_side(sessions: Mapping[str, Session], evaluation: Dataset) -> dict[str, Latency]:
    """Median latencies of ``sessions`` timed here, interleaved, on the first evaluation sample:
    what ``--speed measured`` compares (each as its engine times it: engine.timing_session)."""
    timed = {name: timing_session(session) for name, session in sessions.items()}
    return measure_latency(timed, first_sample(evaluation), runs=30, budget_seconds=_LATENCY_BUDGET_SECONDS)


@dataclass(frozen=True)
class Order:
    """One build to make: a job (on ``model``, consumed; None: a fresh copy of the float model),
    or a variant of the float model with the ranges known so far. ``progress``: the stage it
    shows as (name, index, count)."""

    work: Job | Variant
    ranges: Mapping[str, TensorRange] = field(default_factory=dict)
    model: ir.Model | None = None
    progress: tuple[str, int, int] = ("build", 0, 0)


# A build's outcome: the candidate and the ranges it was built from, or why it could not be.
Built = tuple[Candidate, dict[str, TensorRange]]


class Builds(Protocol):
    """Runs a round of independent builds and returns their outcomes in the orders' order.
    ``width``: how many builds one round runs at once (a search asks for that many)."""

    @property
    def width(self) -> int: ...

    def __call__(
        self, orders: Sequence[Order], config: QuantConfig, shop: Workshop
    ) -> list[Built | QuantCliError]: ...


def build_order(order: Order, config: QuantConfig, shop: Workshop) -> Built | QuantCliError:
    """``order`` built here; a user-facing failure is returned, not raised, so that a build
    made elsewhere fails the same way."""
    stage(*order.progress)
    try:
        if isinstance(order.work, Variant):
            return build_variant(order.work, config, shop, order.ranges)
        model = (
            order.model
            if order.model is not None
            else copy_model(shop.reference.proto, shop.target.data_folder)
        )
        return build_candidate(model, order.work, config, shop), dict(order.work.ranges)
    except QuantCliError as exc:
        return exc


@dataclass(frozen=True)
class LocalBuilds:
    """Every build in this process, one after another (the default)."""

    width: int = 1

    def __call__(
        self, orders: Sequence[Order], config: QuantConfig, shop: Workshop
    ) -> list[Built | QuantCliError]:
        return [build_order(order, config, shop) for order in orders]


@dataclass(frozen=True)
class Detached:
    """What a build needs of a workshop, as plain picklable values, for another process to
    build in a workshop of its own (the float model as a proto, no session, no scratch)."""

    path: Path
    size_bytes: int
    proto: onnx.ModelProto
    target: BuildTarget
    datasets: Datasets
    labels: npt.NDArray[np.int64] | None
    force: bool

    def workshop(self, runtime: Target = ORT_CPU) -> Workshop:
        """A workshop of this process, whose float model runs on ``runtime``'s engine."""
        model = copy_model(self.proto, self.target.data_folder)
        loaded = ModelFile(self.path, model, self.size_bytes)
        session = None
        if self.datasets.evaluation is not None:
            with naming(self.path):
                session = open_session(
                    self.proto, data_folder=self.target.data_folder, target=runtime, label=str(self.path)
                )
        reference = Reference(loaded, self.proto, session, self.datasets, self.labels, runtime)
        return Workshop(self.target, reference, contextlib.ExitStack(), self.force)


def detach(shop: Workshop) -> Detached | None:
    """``shop`` for another process; None when its builds must stay here: no float model to
    copy, or weights in external files (the staged model would not be one file of bytes). The
    speed profile (``feed``) stays here: kernel choices depend on the CPU, and candidates are
    compared on one."""
    reference, target = shop.reference, shop.target
    if reference.proto is None or target.external_data or target.data_folder is not None:
        return None
    loaded = reference.loaded
    return Detached(
        loaded.path,
        loaded.size_bytes,
        reference.proto,
        replace(target, feed=None),
        reference.datasets,
        reference.labels,
        shop.force,
    )


@dataclass(frozen=True)
class Shipped:
    """A candidate built elsewhere: its model file's bytes and what was measured there."""

    plan: QuantPlan
    model: bytes
    int8_weight_fraction: float
    fidelity: Fidelity | None
    gate: GateResult | None
    ranges: dict[str, TensorRange]


def build_detached(order: Order, config: QuantConfig, detached: Detached) -> Shipped | QuantCliError:
    """``order`` built and measured in this process from ``detached`` (a Ray task's body)."""
    shop = detached.workshop(target_of(config))
    with shop.scratches:
        built = build_order(order, config, shop)
        if isinstance(built, QuantCliError):
            return built
        candidate, ranges = built
        data = candidate.staged.path.read_bytes()
    return Shipped(
        candidate.plan, data, candidate.int8_weight_fraction, candidate.fidelity, candidate.gate, ranges
    )


def land(shipped: Shipped | QuantCliError, shop: Workshop) -> Built | QuantCliError:
    """A candidate built elsewhere, staged and checked here as one built here is, with its
    speed profiled here when the search predicts speeds."""
    if isinstance(shipped, QuantCliError):
        return shipped
    scratch = shop.scratch()
    path = scratch.write_bytes(shop.target.output, shipped.model)
    staged = StagedModel(path, shop.target.output, len(shipped.model), external_data=False)
    try:
        session = check_model_file(path, shop.reference.runtime, label=str(shop.target.output))
        predicted = _predicted(staged, shop.target.feed)
    except QuantCliError as exc:
        return exc
    candidate = Candidate(
        shipped.plan,
        staged,
        scratch,
        session,
        shipped.int8_weight_fraction,
        fidelity=shipped.fidelity,
        gate=shipped.gate,
        predicted=predicted,
    )
    return candidate, shipped.ranges
