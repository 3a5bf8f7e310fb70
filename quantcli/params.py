"""Turning a plan and observed ranges into the quantization parameters of every tensor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from quantcli.calibration.collect import TensorRange
from quantcli.config import QuantConfig, WeightMethod
from quantcli.errors import CalibrationFileError
from quantcli.graph.branches import initializer_owner
from quantcli.graph.io import unmap
from quantcli.plan import QuantPlan, target_of
from quantcli.scheme import (
    QParams,
    QuantType,
    activation_qparams,
    bias_qparams,
    quantize,
    weight_qparams,
)

__all__ = ["PlanParams", "compute_params"]

# Weights are stored as symmetric int8 (the only weight precision exposed so far); activations
# take the config's type, whose values are QuantType's.
_WEIGHT_TYPE = QuantType.INT8


@dataclass(frozen=True)
class PlanParams:
    """Parameters for the activations (Q/DQ pairs) and initializers (stored as integers).

    ``integers`` holds the weights already quantized: a weight's parameters and its integer
    tensor come from one read, so a memory-mapped weight is read once and unmapped.
    """

    activations: dict[str, QParams]
    initializers: dict[str, QParams]
    integers: dict[str, np.ndarray] = field(default_factory=dict)


def compute_params(
    model: ir.Model, plan: QuantPlan, ranges: Mapping[str, TensorRange], config: QuantConfig
) -> PlanParams:
    """Compute every QParams of ``plan``; ranges must cover ``plan.observed``."""
    missing = [name for name in plan.observed if name not in ranges]
    if missing:
        raise CalibrationFileError(
            f"the calibration has no range for {len(missing)} tensor(s), e.g. '{missing[0]}'; "
            "re-run calibrate on this model"
        )
    act_type = QuantType(config.activation_type.value)
    target = target_of(config)

    def activation(low: float, high: float, nonnegative: bool = False) -> QParams:
        if not target.zero_point_zero:
            return activation_qparams(low, high, act_type, nonnegative=nonnegative)
        # Every zero point 0: a tensor from 0 (folded, or so calibrated) in the target's
        # non-negative type, the rest int8 symmetric.
        if (nonnegative or low >= 0.0) and target.nonnegative_type is not None:
            return activation_qparams(0.0, high, QuantType(target.nonnegative_type.name.lower()))
        return activation_qparams(low, high, QuantType.INT8)

    weights: dict[str, QParams] = {}
    integers: dict[str, np.ndarray] = {}
    for spec in plan.weights:
        # A weight of an If branch is an initializer of that branch.
        holder = initializer_owner(model.graph, spec.name)
        assert holder is not None, spec.name
        tensor = holder.initializers[spec.name].const_value
        assert tensor is not None
        array = tensor.numpy()
        if spec.symmetric:
            weights[spec.name] = weight_qparams(
                array, spec.axis, minimize_mse=config.weight_method is WeightMethod.MSE, dtype=_WEIGHT_TYPE
            )
        else:
            weights[spec.name] = activation(float(np.min(array)), float(np.max(array)))
        integers[spec.name] = quantize(array, weights[spec.name])
        del array
        unmap(tensor)
    activations: dict[str, QParams] = {}
    for act in plan.activations:
        if act.table is not None:
            activations[act.name] = weights[act.table]
            continue
        observed = ranges[act.range_of]
        for name in act.shared:  # one scale for a Concat's inputs: the union of their ranges
            observed = observed.merge(ranges[name])
        activations[act.name] = activation(observed.min, observed.max, act.nonnegative)
    biases = {b.name: bias_qparams(activations[b.activation].scale, weights[b.weight]) for b in plan.biases}
    return PlanParams(activations=activations, initializers={**weights, **biases}, integers=integers)
