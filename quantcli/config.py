"""Typed, frozen configuration of a quantization run.

A run is described by one :class:`QuantConfig`; the CLI builds it from flags and the library takes
it whole, so there is no dict of options whose typos pass silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcli.errors import ConfigError
from quantcli.files import parse_json, parse_toml, read_bounded

if TYPE_CHECKING:
    from quantcli.calibration.file import CalibrationFile

__all__ = [
    "DEFAULT_MAX_DROP",
    "DEFAULT_MAX_TRIALS",
    "DEFAULT_MIN_CHANNEL_SQNR",
    "ActivationType",
    "BlockMethod",
    "BlockOverride",
    "CalibrationMethod",
    "CompareConfig",
    "GateMetric",
    "Overrides",
    "QuantConfig",
    "QuantMode",
    "Recipe",
    "SpeedSource",
    "TargetName",
    "WeightMethod",
    "config_settings",
    "expand_patterns",
    "load_recipe",
    "merge",
    "pattern_files",
    "recipe_from_report",
]

# The accuracy bound --mode auto keeps to when the user sets none: one point of the gate metric
# (top-1 points against labels, or of an explicitly chosen drop metric).
DEFAULT_MAX_DROP = 1.0
# ... and without labels: the worst output's per-channel SQNR, averaged in dB, must reach this.
# Whole-output cosine misses a detector losing its small class scores beside pixel-sized boxes
# (YOLOv8n: cosine 0.999 at a 14% box F1 loss). One point of cosine is ~17 dB on one channel; the
# channel mean sits lower, as channels that barely fire carry little signal. On the bench models
# (bench/RESULTS.md) 15 dB separates every candidate that keeps the task metric within 1% from
# every one that does not (the closest: MiniLM static passes at 16.7, YOLO static fails at 13.8).
DEFAULT_MIN_CHANNEL_SQNR = 15.0
# Quantize-and-measure rounds --auto-fallback may spend after the first model.
DEFAULT_MAX_TRIALS = 8


class ActivationType(StrEnum):
    """Integer type of quantized activations.

    uint8 is asymmetric (zero point anywhere in 0..255) and is what onnxruntime's x86 kernels are
    fastest with; int8 is symmetric (zero point 0) except for tensors known to be non-negative.
    """

    UINT8 = "uint8"
    INT8 = "int8"


class CalibrationMethod(StrEnum):
    """How an activation's observed values become a quantization range.

    minmax takes the observed range; the others clip it using a histogram of the values
    (see :mod:`quantcli.calibration.methods`).
    """

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"

    @property
    def needs_histogram(self) -> bool:
        return self is not CalibrationMethod.MINMAX

    def describe(self, percentile: float) -> str:
        """The method as reports show it: ``percentile(99.99)``, ``entropy``."""
        return f"percentile({percentile:g})" if self is CalibrationMethod.PERCENTILE else self.value


class WeightMethod(StrEnum):
    """How a weight channel's values become its symmetric int8 range.

    minmax uses the largest magnitude; mse the clipping bound of least squared rounding and
    clipping error over the channel's values.
    """

    MINMAX = "minmax"
    MSE = "mse"


class BlockMethod(StrEnum):
    """How a 4-bit block-wise weight is rounded (``--weight-bits 4``; see :mod:`quantcli.blockwise`).

    rtn rounds each block to nearest; hqq fits each block's scale (and zero point) to the weight
    with a sparsity-promoting loss, without data; gptq compensates each column's rounding error on
    the columns after it, from the layer's input statistics ``X^T X``; awq scales input channels by
    their activation magnitude first; awq+gptq scales, then rounds with GPTQ. gptq and the awq
    methods observe the calibration data (--data).
    """

    RTN = "rtn"
    HQQ = "hqq"
    GPTQ = "gptq"
    AWQ = "awq"
    AWQ_GPTQ = "awq+gptq"

    @property
    def needs_statistics(self) -> bool:
        return self not in (BlockMethod.RTN, BlockMethod.HQQ)


# Weight bit widths: 8 (int8 per channel, the default) or 4 (block-wise, weight-only mode).
WEIGHT_BITS = (4, 8)
# Block sizes of 4-bit weights (onnxruntime's MatMulNBits takes powers of two from 16).
BLOCK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True, kw_only=True)
class BlockOverride:
    """Bits and block size for the MatMul/Gemm/Gather nodes a recipe's ``[[override]]`` names
    (node names, globs or op types); None: the run's own. ``source`` names where it came from
    (the recipe file, or ``--auto-fallback``), for the error when a pattern names no node.
    Overrides apply in order, a later one over an earlier one."""

    patterns: frozenset[str]
    bits: int | None = None
    block_size: int | None = None
    source: str = ""

    def check(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if self.bits is not None and self.bits not in WEIGHT_BITS:
            raise ConfigError(f"{where}bits must be 4 or 8, got {self.bits}")
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            sizes = ", ".join(map(str, BLOCK_SIZES))
            raise ConfigError(f"{where}block_size must be one of {sizes}, got {self.block_size}")

    def to_dict(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"patterns": sorted(self.patterns)}
        settings.update({k: v for k, v in (("bits", self.bits), ("block_size", self.block_size)) if v})
        return settings


class QuantMode(StrEnum):
    """Where int8 arithmetic happens.

    static: activations get calibrated Q/DQ pairs and run through integer kernels (best on
    convolutional networks). dynamic: MatMul/Gemm weights are int8 and their inputs are quantized
    at run time (no calibration; best on transformer encoders on CPU). mixed: dynamic MatMul/Gemm,
    static everything else. weight-only: int8 weights, float compute; smaller, never faster.
    auto (the default): try the candidates on the data and keep the fastest one within the
    accuracy bound (see :mod:`quantcli.choice` for what it does with no data to measure on).
    """

    STATIC = "static"
    DYNAMIC = "dynamic"
    MIXED = "mixed"
    WEIGHT_ONLY = "weight-only"
    AUTO = "auto"

    @property
    def needs_calibration(self) -> bool:
        return self in (QuantMode.STATIC, QuantMode.MIXED)

    @property
    def uses_calibration(self) -> bool:
        """Calibration data serves this mode (auto: for its static candidates), so part of it
        is held back for evaluation rather than all of it measuring fidelity."""
        return self.needs_calibration or self is QuantMode.AUTO


class TargetName(StrEnum):
    """The runtime the model is quantized for (its facts: :data:`quantcli.target.TARGETS`).

    ort-cpu (the default): onnxruntime's CPU provider. openvino: OpenVINO's CPU plugin, by the
    placement read from its runtime graph (docs/openvino.md). tensorrt: TensorRT's explicit
    quantization rules (int8 symmetric, zero point 0). The last two choose every activation's
    type themselves, so ``activation_type`` applies to ort-cpu only.
    """

    ORT_CPU = "ort-cpu"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class SpeedSource(StrEnum):
    """How ``--mode auto`` compares its candidates' speed.

    predicted (the default): by :mod:`quantcli.cost`, a cost model of the runtime over the
    kernels it runs for each candidate; the same inputs give the same choice on any machine load.
    measured: by timing the candidates on this machine, interleaved. Closer to this machine's
    truth, but a busy machine can change the choice, so the output is not reproducible.
    """

    PREDICTED = "predicted"
    MEASURED = "measured"


class GateMetric(StrEnum):
    """The measure an accuracy bound is stated in; every one is a drop, in points.

    accuracy: top-1 accuracy against labels, float minus quantized.
    top1: 100 x the share of samples whose arg-max changed (class-score outputs).
    cosine: 100 x (1 - mean cosine similarity) of the worst output.
    sqnr: not a drop: the worst output's SQNR in dB must reach ``min_sqnr`` (higher is better,
        so it gets its own bound instead of an awkward "dB below a target" drop).
    channel-sqnr: like sqnr, per channel (axis 1) averaged in dB, so small-valued channels count
        as much as large ones.
    auto: accuracy when labels are given; else cosine under --max-drop, sqnr under --min-sqnr,
        and with no bound stated (auto mode choosing) channel-sqnr >= DEFAULT_MIN_CHANNEL_SQNR.
        top1 only when asked: an embedding is shaped like class scores, and its arg-max means
        nothing.
    """

    AUTO = "auto"
    ACCURACY = "accuracy"
    TOP1 = "top1"
    COSINE = "cosine"
    SQNR = "sqnr"
    CHANNEL_SQNR = "channel-sqnr"

    @property
    def in_db(self) -> bool:
        """Bounded from below in dB (--min-sqnr), not a drop in points."""
        return self in (GateMetric.SQNR, GateMetric.CHANNEL_SQNR)


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Everything that decides what a conversion produces.

    Attributes:
        activation_type: integer type of quantized activations.
        method: calibration method turning observed values into ranges.
        percentile: share of values (in percent) the percentile method keeps inside the range.
        weight_method: how weight channels get their range.
        bias_correction: subtract from every quantized Conv's bias the mean shift its int8 weight
            and input quantizer add to its output, measured on the calibration data (see
            :mod:`quantcli.correction`).
        per_channel: quantize Conv/Gemm/MatMul weights with one scale per output channel.
        batch_size: calibration samples fed to onnxruntime at once when the batch axis is dynamic.
        max_samples: use at most this many calibration samples (None: all).
        seed: shuffle the samples with this seed before --max-samples and sharding pick them
            (None: file order).
        eval_fraction: share of --data held back for evaluation when no evaluation data is given.
        exclude: node names, fnmatch globs over node names, or op types kept in float.
        include: if not empty, only nodes matching these (names, globs, op types) are quantized;
            data-movement nodes and folded activations still follow their inputs.
        per_tensor: nodes (names, globs, op types) whose weights get one scale per tensor even
            when ``per_channel`` is on (a recipe override).
        skip_nonfinite: drop data samples holding NaN or Inf (counted in the log) instead of
            refusing the data.
        allow_noop: write a model with nothing to quantize unchanged instead of failing.
        mode: where int8 arithmetic happens (see :class:`QuantMode`).
        metric: what the accuracy bound measures.
        max_drop: the accuracy bound in points of ``metric``; None: no gate (auto mode then
            chooses by the default of :meth:`gate`, and never fails the run).
        min_sqnr: the bound of the ``sqnr`` metric, in dB (the worst output must reach it).
        auto_fallback: when the model misses the bound (the one stated, else the default of
            :meth:`gate`), return the most harmful nodes to float a few at a time until it passes
            (see :mod:`quantcli.repair`). In auto mode it also repairs a candidate that missed
            the bound but ran clearly faster than the one that met it.
        speed: how auto mode compares its candidates' speed (see :class:`SpeedSource`).
        max_trials: rounds --auto-fallback may spend after the first model.
        per_layer: diagnose every quantized tensor against its float twin (see
            :mod:`quantcli.diagnose`).
        top_k: how many of the worst tensors the diagnosis measures alone and reports.
        weight_bits: 8 (int8 weights) or 4 (block-wise int4 MatMul/Gemm weights and Gather tables;
            weight-only mode, or dynamic mode's weights).
        block_size: values per block of a 4-bit weight, along its reduction axis.
        weight_symmetric: 4-bit blocks without a zero point (False: a zero point per block).
        block_method: how 4-bit weights are rounded (see :class:`BlockMethod`).
        block_overrides: bits and block size per node or op type (recipe overrides), in order.
        target: the runtime the model is quantized for (see :class:`TargetName`).
    """

    activation_type: ActivationType = ActivationType.UINT8
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    weight_method: WeightMethod = WeightMethod.MINMAX
    bias_correction: bool = False
    per_channel: bool = True
    batch_size: int = 16
    max_samples: int | None = None
    seed: int | None = None
    eval_fraction: float = 0.2
    exclude: frozenset[str] = field(default_factory=frozenset)
    skip_nonfinite: bool = False
    allow_noop: bool = False
    mode: QuantMode = QuantMode.AUTO
    metric: GateMetric = GateMetric.AUTO
    max_drop: float | None = None
    include: frozenset[str] = field(default_factory=frozenset)
    per_tensor: frozenset[str] = field(default_factory=frozenset)
    min_sqnr: float | None = None
    auto_fallback: bool = False
    speed: SpeedSource = SpeedSource.PREDICTED
    max_trials: int = DEFAULT_MAX_TRIALS
    per_layer: bool = False
    top_k: int = 10
    weight_bits: int = 8
    block_size: int = 32
    weight_symmetric: bool = True
    block_method: BlockMethod = BlockMethod.RTN
    target: TargetName = TargetName.ORT_CPU
    block_overrides: tuple[BlockOverride, ...] = ()

    @property
    def four_bits(self) -> bool:
        """Some weights may be written in 4-bit blocks: by default, or by a node's override."""
        return self.weight_bits == 4 or any(o.bits == 4 for o in self.block_overrides)

    @property
    def has_gate(self) -> bool:
        """The user stated a bound, so a miss fails the run (exit 3)."""
        return self.max_drop is not None or self.min_sqnr is not None

    def __post_init__(self) -> None:
        # Validated here so that a library user gets the same errors as the CLI.
        self._check_counts()
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile:g} (e.g. 99.99)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval fraction must be in [0, 1), got {self.eval_fraction}")
        for name in ("max_drop", "min_sqnr", "percentile"):
            bound = getattr(self, name)
            if bound is not None and not math.isfinite(bound):
                raise ConfigError(f"{name.replace('_', ' ')} must be a finite number, got {bound}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError(f"max drop must be >= 0 points, got {self.max_drop}")
        self._check_rounds()
        self._check_gate()
        self._check_bits()

    def _check_bits(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            raise ConfigError(f"--weight-bits must be 4 or 8, got {self.weight_bits}")
        if self.block_size not in BLOCK_SIZES:
            sizes = ", ".join(map(str, BLOCK_SIZES))
            raise ConfigError(f"--block-size must be one of {sizes}, got {self.block_size}")
        for override in self.block_overrides:
            override.check()
        if not self.four_bits:
            given = [
                flag
                for flag, differs in (
                    (f"--block-size {self.block_size}", self.block_size != 32),
                    ("--weight-asymmetric", not self.weight_symmetric),
                    (f"--block-method {self.block_method}", self.block_method is not BlockMethod.RTN),
                )
                if differs
            ]
            sized = next((o for o in self.block_overrides if o.block_size is not None), None)
            if sized is not None:
                given.append(f"{sized.source}: block_size")
            if given:
                raise ConfigError(f"{given[0]} is for 4-bit weights: add --weight-bits 4 (8-bit is int8)")
            return
        if self.mode not in (QuantMode.WEIGHT_ONLY, QuantMode.DYNAMIC):
            raise ConfigError(f"--weight-bits 4 needs --mode weight-only or dynamic (got --mode {self.mode})")
        if self.weight_method is not WeightMethod.MINMAX:
            raise ConfigError(
                f"--weight-method {self.weight_method} is for int8 weights; 4-bit weights take --block-method"
            )

    def _check_counts(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max samples must be at least 1, got {self.max_samples}")

    def _check_rounds(self) -> None:
        if self.max_trials < 1:
            raise ConfigError(f"max trials must be at least 1, got {self.max_trials}")
        if self.top_k < 1:
            raise ConfigError(f"top k must be at least 1, got {self.top_k}")

    def _check_gate(self) -> None:
        sqnr = self.metric.in_db
        if sqnr and self.min_sqnr is None:
            raise ConfigError(f"--metric {self.metric} needs its bound in dB: --min-sqnr DB (e.g. 30)")
        if sqnr and self.max_drop is not None:
            raise ConfigError(f"--metric {self.metric} is bounded by --min-sqnr, not --max-drop")
        if self.min_sqnr is not None and not (sqnr or self.metric is GateMetric.AUTO):
            raise ConfigError(f"--min-sqnr bounds the sqnr metric, not {self.metric}")
        if self.min_sqnr is not None and self.max_drop is not None:
            raise ConfigError("give one bound: --max-drop (points of a drop metric) or --min-sqnr (dB)")

    def gate(self, *, has_labels: bool) -> tuple[GateMetric, float]:
        """The metric and bound a quantized model is measured against: the user's, or with none
        stated (auto mode still has to choose) accuracy within DEFAULT_MAX_DROP against labels,
        else channel-sqnr of at least DEFAULT_MIN_CHANNEL_SQNR. AUTO left in the metric resolves
        to accuracy or cosine on the measured fidelity."""
        if self.min_sqnr is not None:
            return (GateMetric.SQNR if self.metric is GateMetric.AUTO else self.metric), self.min_sqnr
        if self.max_drop is not None:
            return self.metric, self.max_drop
        if self.metric is GateMetric.AUTO and not has_labels:
            return GateMetric.CHANNEL_SQNR, DEFAULT_MIN_CHANNEL_SQNR
        return self.metric, DEFAULT_MAX_DROP


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """Settings one layer gives (command-line flags, a recipe, a calibration file's method), to
    lay over a :class:`QuantConfig` with :func:`merge`. Every field is a QuantConfig field; None
    means "not given here", so a lower layer's value, or the default, stands.

    A misspelt setting is a type error here, not a dict key nobody reads.
    """

    activation_type: ActivationType | None = None
    method: CalibrationMethod | None = None
    percentile: float | None = None
    weight_method: WeightMethod | None = None
    bias_correction: bool | None = None
    per_channel: bool | None = None
    batch_size: int | None = None
    max_samples: int | None = None
    seed: int | None = None
    eval_fraction: float | None = None
    exclude: frozenset[str] | None = None
    skip_nonfinite: bool | None = None
    allow_noop: bool | None = None
    mode: QuantMode | None = None
    metric: GateMetric | None = None
    max_drop: float | None = None
    include: frozenset[str] | None = None
    per_tensor: frozenset[str] | None = None
    min_sqnr: float | None = None
    auto_fallback: bool | None = None
    speed: SpeedSource | None = None
    max_trials: int | None = None
    per_layer: bool | None = None
    top_k: int | None = None
    weight_bits: int | None = None
    block_size: int | None = None
    weight_symmetric: bool | None = None
    block_method: BlockMethod | None = None
    target: TargetName | None = None
    block_overrides: tuple[BlockOverride, ...] | None = None

    def given(self) -> dict[str, Any]:
        """The settings this layer gives, by QuantConfig field."""
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}

    def over(self, lower: Overrides) -> Overrides:
        """This layer on top of ``lower``: a value given here wins; the node patterns kept float
        (``exclude``) or per tensor (``per_tensor``) are those of both layers."""
        values = self.given()
        for name in _ADDED_UP:
            values[name] = (getattr(lower, name) or frozenset()) | (getattr(self, name) or frozenset())
        return replace(lower, **values)


# Pattern settings every layer adds to rather than replaces (a recipe's skipped nodes and the
# --exclude flag both stay float).
_ADDED_UP = ("exclude", "per_tensor")


def merge(
    base: QuantConfig | Recipe,
    overrides: Overrides | None = None,
    *,
    calibration: CalibrationFile | None = None,
) -> QuantConfig:
    """The config a run uses: ``overrides`` (flags) over the method ``calibration`` records over
    ``base`` (a recipe over the defaults, or a whole config) -- flag > calibration file > recipe >
    default. The calibration method thus comes from the calibration file unless given; the
    command line and :func:`quantcli.quantize` both resolve it here.

    The result is validated once, whole: a recipe may name a metric whose bound a flag gives.
    """
    recorded = Overrides(method=None if calibration is None else calibration.method)
    layer = (overrides or Overrides()).over(recorded)
    if isinstance(base, Recipe):
        layer, base = layer.over(base.overrides), QuantConfig()
    values = layer.given()
    for name in _ADDED_UP:
        values[name] = getattr(base, name) | values.get(name, frozenset())
    return replace(base, **values)


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Everything that decides what :func:`quantcli.compare` measures.

    Attributes:
        threads: onnxruntime intra-op threads for both models (None: onnxruntime's choice).
        batch_size: samples per run when the batch axis is dynamic.
        latency_runs: timed runs per model, after warm-up.
        per_layer: diagnose every quantized tensor against its float twin.
        top_k: how many of the worst tensors the diagnosis measures alone.
        metric, max_drop, min_sqnr: the accuracy bound, as in :class:`QuantConfig` (no bound: no
            verdict).
        target: the runtime whose engine runs and times both models (``openvino``: OpenVINO's
            CPU plugin; see :mod:`quantcli.engine`).
    """

    threads: int | None = None
    batch_size: int = 16
    latency_runs: int = 30
    per_layer: bool = False
    top_k: int = 10
    metric: GateMetric = GateMetric.AUTO
    max_drop: float | None = None
    min_sqnr: float | None = None
    target: TargetName = TargetName.ORT_CPU

    def __post_init__(self) -> None:
        for flag, value in (("--threads", self.threads), ("--runs", self.latency_runs)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.per_layer and self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")
        _ = self.bounds  # checks the metric and bound combination

    @property
    def bounds(self) -> QuantConfig:
        """The accuracy bound as a QuantConfig, whose :meth:`QuantConfig.gate` judges exactly as
        ``quantize`` judges its own output."""
        return QuantConfig(metric=self.metric, max_drop=self.max_drop, min_sqnr=self.min_sqnr)


# Recipes and @FILE selection lists larger than these are refused unread.
MAX_RECIPE_BYTES = 2**20
MAX_REPORT_BYTES = 64 * 2**20  # a report read as a recipe (its per-layer tables make it larger)
MAX_LIST_BYTES = 16 * 2**20


def pattern_files(values: Iterable[str]) -> list[Path]:
    """The ``@FILE`` selection files among ``values`` (read by :func:`expand_patterns`)."""
    return [Path(value[1:]) for value in values if value.startswith("@")]


def expand_patterns(values: Iterable[str]) -> frozenset[str]:
    """Selection patterns with every ``@FILE`` replaced by the file's lines.

    A file holds one node name, glob or op type per line; blank lines and ``#`` comments are
    skipped. This is the format ``--write-exclude`` writes.
    """
    patterns: set[str] = set()
    for value in values:
        if not value.startswith("@"):
            patterns.add(value)
            continue
        path = Path(value[1:])
        raw = read_bounded(path, MAX_LIST_BYTES, "selection file", ConfigError)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: the selection file is not UTF-8 text (byte {exc.start})") from exc
        for line in text.splitlines():
            entry = line.split("#", 1)[0].strip()
            if entry:
                patterns.add(entry)
    return frozenset(patterns)


# Recipe keys: [defaults] takes these QuantConfig fields; [[override]] the keys below.
_RECIPE_DEFAULTS: dict[str, type] = {
    "mode": QuantMode,
    "activation_type": ActivationType,
    "method": CalibrationMethod,
    "per_channel": bool,
    "metric": GateMetric,
    "max_drop": float,
    "min_sqnr": float,
    "batch_size": int,
    "max_samples": int,
    "max_trials": int,
    "percentile": float,
    "weight_method": WeightMethod,
    "bias_correction": bool,
    "seed": int,
    "speed": SpeedSource,
    "weight_bits": int,
    "block_size": int,
    "weight_symmetric": bool,
    "block_method": BlockMethod,
    "target": TargetName,
}
_OVERRIDE_KEYS = ("match", "op", "skip", "per_channel", "bits", "block_size")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A TOML recipe (or a report's settings): validated settings for QuantConfig fields, the
    node patterns its per-node or per-op overrides skip (``overrides.exclude``) or keep per
    tensor (``overrides.per_tensor``). :func:`merge` lays flags over it.
    """

    path: str
    overrides: Overrides = field(default_factory=Overrides)

    @property
    def defaults(self) -> dict[str, Any]:
        """The [defaults] settings the recipe gives, by QuantConfig field."""
        return {k: v for k, v in self.overrides.given().items() if k not in _ADDED_UP}


def _unknown(where: str, keys: Iterable[str], valid: Iterable[str], path: Path) -> None:
    bad = sorted(set(keys) - set(valid))
    if bad:
        raise ConfigError(
            f"{path}: unknown key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} in {where} "
            f"(valid keys: {', '.join(sorted(valid))})"
        )


def _typed(key: str, value: Any, kind: type, path: Path) -> Any:
    if issubclass(kind, StrEnum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise ConfigError(f"{path}: {key} = {value!r} is not one of {choices}") from None
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: {key} must be a {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class _Entry:
    """One validated ``[[override]]``: the patterns it names and what it sets on them."""

    targets: frozenset[str]
    skip: bool | None
    per_channel: bool | None
    layout: BlockOverride | None


def _optional(entry: dict[str, Any], key: str, kind: type, where: str, path: Path) -> Any:
    return _typed(f"{where} {key}", entry[key], kind, path) if key in entry else None


def _override(entry: Any, index: int, path: Path) -> _Entry:
    where = f"[[override]] #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    _unknown(where, entry, _OVERRIDE_KEYS, path)
    targets = frozenset(str(entry[k]) for k in ("match", "op") if k in entry)
    if not targets:
        raise ConfigError(f'{path}: {where} needs match = "<node name or glob>" or op = "<op type>"')
    skip = _optional(entry, "skip", bool, where, path)
    per_channel = _optional(entry, "per_channel", bool, where, path)
    if per_channel is True:
        raise ConfigError(
            f"{path}: {where}: per_channel = true cannot be set per node; set it in [defaults] "
            "and use per_channel = false on the nodes that need one scale per tensor"
        )
    bits, block_size = (_optional(entry, key, int, where, path) for key in ("bits", "block_size"))
    layout = None
    if bits is not None or block_size is not None:
        layout = BlockOverride(patterns=targets, bits=bits, block_size=block_size, source=f"{path}: {where}")
        layout.check()
    if skip is None and per_channel is None and layout is None:
        raise ConfigError(f"{path}: {where} changes nothing: set skip, per_channel, bits or block_size")
    return _Entry(targets, skip, per_channel, layout)


def load_recipe(path: Path) -> Recipe:
    """Read and strictly validate a TOML recipe; unknown keys are errors listing the valid ones."""
    document = parse_toml(
        read_bounded(path, MAX_RECIPE_BYTES, "recipe", ConfigError), path, "TOML recipe", ConfigError
    )
    _unknown("the recipe", document, ("defaults", "override"), path)
    raw = document.get("defaults", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [defaults] must be a table")
    _unknown("[defaults]", raw, _RECIPE_DEFAULTS, path)
    defaults = {k: _typed(k, v, _RECIPE_DEFAULTS[k], path) for k, v in raw.items()}
    overrides = document.get("override", [])
    if not isinstance(overrides, list):
        raise ConfigError(f"{path}: write overrides as [[override]] tables")
    skip: set[str] = set()
    per_tensor: set[str] = set()
    layouts: list[BlockOverride] = []
    for index, raw_entry in enumerate(overrides):
        entry = _override(raw_entry, index, path)
        if entry.skip:
            skip |= entry.targets
        if entry.per_channel is False:
            per_tensor |= entry.targets
        if entry.layout is not None:
            layouts.append(entry.layout)
    assert set(_RECIPE_DEFAULTS) <= {f.name for f in fields(QuantConfig)}
    settings = Overrides(
        **defaults,
        exclude=frozenset(skip),
        per_tensor=frozenset(per_tensor),
        block_overrides=tuple(layouts) or None,
    )
    return Recipe(path=str(path), overrides=settings)


# What a report's "config" holds beyond the recipe keys: every setting that changes the result.
_REPORT_SETTINGS: dict[str, type] = {
    **_RECIPE_DEFAULTS,
    "eval_fraction": float,
    "skip_nonfinite": bool,
    "allow_noop": bool,
    "auto_fallback": bool,
    "per_layer": bool,
    "top_k": int,
}
_REPORT_PATTERNS = ("exclude", "include", "per_tensor")
# The 4-bit weight settings, recorded only when --weight-bits 4 is in effect.
_BLOCK_SETTINGS = ("weight_bits", "block_size", "weight_symmetric", "block_method")


def config_settings(config: QuantConfig) -> dict[str, Any]:
    """``config`` as JSON values: every setting, so a report can reproduce its run."""
    settings: dict[str, Any] = {}
    for name in sorted((*_REPORT_SETTINGS, *_REPORT_PATTERNS)):
        if name in _BLOCK_SETTINGS and not config.four_bits:
            continue  # int8 weights: their defaults (config refuses others); int8 reports unchanged
        value = getattr(config, name)
        settings[name] = sorted(value) if isinstance(value, frozenset) else value
    if config.block_overrides:
        settings[_LAYOUTS] = [o.to_dict() for o in config.block_overrides]
    return settings


# A report's per-node bits and block sizes (recipe overrides), in order.
_LAYOUTS = "block_overrides"


def _layouts(value: Any, path: Path) -> tuple[BlockOverride, ...] | None:
    """The report's ``block_overrides``, checked as a recipe's are."""
    if value is None:
        return None
    entries = value if isinstance(value, list) else [None]
    layouts = []
    for entry in entries:
        patterns = entry.get("patterns") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(patterns, list)
            or not all(isinstance(p, str) for p in patterns)
        ):
            raise ConfigError(f"{path}: config {_LAYOUTS} must list tables of patterns, bits and block_size")
        _unknown(f"config {_LAYOUTS}", entry, ("patterns", "bits", "block_size"), path)
        bits, size = (_optional(entry, key, int, _LAYOUTS, path) for key in ("bits", "block_size"))
        layout = BlockOverride(patterns=frozenset(patterns), bits=bits, block_size=size, source=str(path))
        layout.check()
        layouts.append(layout)
    return tuple(layouts) or None


def recipe_from_report(path: Path) -> Recipe:
    """The settings a JSON report's ``config`` records, as a recipe (flags still win over it).

    The mode is the one the report's model was written in, not ``auto``: rerunning a report
    reproduces its model without measuring again.
    """
    document = parse_json(
        read_bounded(path, MAX_REPORT_BYTES, "report", ConfigError), path, "JSON report", ConfigError
    )
    settings = document.get("config") if isinstance(document, dict) else None
    if not isinstance(settings, dict) or document.get("kind") != "convert":
        raise ConfigError(f'{path}: not a quantcli convert report (no "config" of kind convert)')
    _unknown("the report's config", settings, (*_REPORT_SETTINGS, *_REPORT_PATTERNS, _LAYOUTS), path)
    defaults = {
        k: _typed(k, v, _REPORT_SETTINGS[k], path)
        for k, v in settings.items()
        if k in _REPORT_SETTINGS and v is not None
    }
    if isinstance(document.get("mode"), str):
        defaults["mode"] = _typed("mode", document["mode"], QuantMode, path)
    patterns: dict[str, frozenset[str]] = {}
    for key in _REPORT_PATTERNS:
        value = settings.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: config {key} must be a list of node names or patterns")
        patterns[key] = frozenset(value)
    if patterns["include"]:
        defaults["include"] = patterns["include"]
    settings = Overrides(
        **defaults,
        exclude=patterns["exclude"],
        per_tensor=patterns["per_tensor"],
        block_overrides=_layouts(settings.get(_LAYOUTS), path),
    )
    return Recipe(path=str(path), overrides=settings)
