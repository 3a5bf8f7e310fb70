"""Typed, frozen configuration of a quantization run.

A run is described by one :class:`QuantConfig`; the CLI builds it from flags and the library takes
it whole, so there is no dict of options whose typos pass silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from quantcli.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_DROP",
    "ActivationType",
    "CalibrationMethod",
    "GateMetric",
    "QuantConfig",
    "QuantMode",
    "WeightMethod",
]

# The accuracy bound --mode auto keeps to when the user sets none: one point of the gate metric
# (top-1 points, or 1% of cosine similarity).
DEFAULT_MAX_DROP = 1.0


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


class QuantMode(StrEnum):
    """Where int8 arithmetic happens.

    static: activations get calibrated Q/DQ pairs and run through integer kernels (best on
    convolutional networks). dynamic: MatMul/Gemm weights are int8 and their inputs are quantized
    at run time (no calibration; best on transformer encoders on CPU). mixed: dynamic MatMul/Gemm,
    static everything else. weight-only: int8 weights, float compute; smaller, never faster.
    auto: try the candidates on the data and keep the fastest one within the accuracy bound.
    """

    STATIC = "static"
    DYNAMIC = "dynamic"
    MIXED = "mixed"
    WEIGHT_ONLY = "weight-only"
    AUTO = "auto"

    @property
    def needs_calibration(self) -> bool:
        return self in (QuantMode.STATIC, QuantMode.MIXED, QuantMode.AUTO)


class GateMetric(StrEnum):
    """The measure an accuracy bound is stated in; every one is a drop, in points.

    accuracy: top-1 accuracy against labels, float minus quantized.
    top1: 100 x the share of samples whose arg-max changed (class-score outputs).
    cosine: 100 x (1 - mean cosine similarity) of the worst output.
    auto: accuracy when labels are given, else top1 for class-score outputs, else cosine.
    """

    AUTO = "auto"
    ACCURACY = "accuracy"
    TOP1 = "top1"
    COSINE = "cosine"


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Everything that decides what a conversion produces.

    Attributes:
        activation_type: integer type of quantized activations.
        method: calibration method turning observed values into ranges.
        percentile: share of values (in percent) the percentile method keeps inside the range.
        weight_method: how weight channels get their range.
        per_channel: quantize Conv/Gemm/MatMul weights with one scale per output channel.
        batch_size: calibration samples fed to onnxruntime at once when the batch axis is dynamic.
        max_samples: use at most this many calibration samples (None: all).
        seed: shuffle the samples with this seed before --max-samples and sharding pick them
            (None: file order).
        eval_fraction: share of --data held back for evaluation when no evaluation data is given.
        exclude: node names or op types kept in float.
        mode: where int8 arithmetic happens (see :class:`QuantMode`).
        metric: what the accuracy bound measures.
        max_drop: the accuracy bound in points of ``metric``; None: no gate (auto mode then uses
            DEFAULT_MAX_DROP to choose, and never fails the run).
    """

    activation_type: ActivationType = ActivationType.UINT8
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    weight_method: WeightMethod = WeightMethod.MINMAX
    per_channel: bool = True
    batch_size: int = 16
    max_samples: int | None = None
    seed: int | None = None
    eval_fraction: float = 0.2
    exclude: frozenset[str] = field(default_factory=frozenset)
    mode: QuantMode = QuantMode.STATIC
    metric: GateMetric = GateMetric.AUTO
    max_drop: float | None = None

    def __post_init__(self) -> None:
        # Validated here so that a library user gets the same errors as the CLI.
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max samples must be at least 1, got {self.max_samples}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile:g} (e.g. 99.99)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError(f"max drop must be >= 0 points, got {self.max_drop}")
