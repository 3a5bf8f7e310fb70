"""Deciding what to quantize: :func:`select`, over a target's op rules and a mode's placement.

With the default target, :data:`~quantcli.target.ORT_CPU`, placement follows what onnxruntime's
CPU provider fuses into integer kernels (its QDQ selectors):

* compute ops (Conv, MatMul, Gemm) are the reason to quantize at all: int8 weights and inputs;
  Conv's output must be quantized too for QLinearConv, MatMul's and Gemm's need not be
  (MatMulIntegerToFloat / QGemm take a float output);
* element-wise ops with integer kernels (Add, Mul, Concat, pooling, Sigmoid, LeakyRelu) are
  quantized only when every input is already quantized: then the integer path continues, while
  quantizing a float input would add a rounding step and a Q node and save nothing;
* data-movement ops (Reshape, Transpose, MaxPool, Resize, ...) carry their input's scale, so
  onnxruntime drops the Q/DQ pair around them and moves int8 data;
* Relu and Clip(0, x) after a quantized output are folded into that output's range: a uint8
  (or int8 from -128) quantizer saturating at zero is exactly a Relu;
* Gather on a constant table reads an int8 table (the Q/DQ around Gather share the table's scale);
* ops that carry a large weight but have no integer kernel (GRU, RNN, ConvTranspose, Einsum with a
  constant operand) store it int8 behind a DequantizeLinear in every mode; LSTM runs as
  DynamicQuantizeLSTM (outside weight-only mode), which is faster than the float LSTM.

That is the static mode. The dynamic mode instead gives MatMul/Gemm int8 weights and lets
onnxruntime quantize their inputs at run time (DynamicQuantizeLinear + MatMulInteger, fused into
DynamicQuantizeMatMul); mixed combines dynamic MatMul/Gemm with static everything else; and
weight-only stores every weight in int8 behind a DequantizeLinear and computes in float. In the
dynamic and weight-only modes a Gather table is stored in int8 and only the gathered rows are
dequantized.

Everything else stays float, and every node gets a sentence saying why.

The decision is a sequence of pure phases over an immutable placement (:mod:`.phases`,
:mod:`.assemble`): seed, propagate, prune, keep outputs float, assemble. What is
specific to the runtime is a :class:`~quantcli.target.Target` value, what is specific to the mode
a :class:`~quantcli.modes.ModeStrategy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import onnx_ir as ir

# The registry of modes imports this package's values; imported as a module (not its names) so
# that either package may be imported first.
from quantcli import modes as _modes
from quantcli.config import ActivationType, QuantConfig, QuantMode
from quantcli.errors import ConfigError
from quantcli.graph.branches import branch_graphs, planned_nodes
from quantcli.plan import values
from quantcli.plan.assemble import assemble
from quantcli.plan.facts import check_patterns, constant, is_float, matches
from quantcli.plan.phases import drop_unread_outputs, keep_outputs_float, propagate, prune, seed
from quantcli.plan.placement import Context, Placement
from quantcli.plan.values import *  # noqa: F403  (the plan's values, listed in values.__all__)
from quantcli.plan.values import QuantPlan
from quantcli.target import ORT_CPU, TARGETS, Target

__all__ = ["PHASES", "candidate_tensors", "matches", "select", "target_of"]
__all__ += values.__all__

Phase = Callable[[Context, Placement], Placement]
# In order; assemble turns the last placement into the plan.
PHASES: tuple[Phase, ...] = (seed, propagate, prune, drop_unread_outputs, keep_outputs_float)

_ACTIVATION_TYPES = {ActivationType.UINT8: ir.DataType.UINT8, ActivationType.INT8: ir.DataType.INT8}


def _strategy(config: QuantConfig, mode: QuantMode | _modes.ModeStrategy | None) -> _modes.ModeStrategy:
    if isinstance(mode, _modes.ModeStrategy):
        return mode
    chosen = config.mode if mode is None else mode
    # A plan of QuantConfig() (mode auto) shows auto's static candidate.
    return _modes.strategy(QuantMode.STATIC if chosen is QuantMode.AUTO else chosen)


def target_of(config: QuantConfig) -> Target:
    """The :class:`~quantcli.target.Target` ``config`` names."""
    return TARGETS[config.target]


def _check_target(config: QuantConfig, target: Target) -> None:
    if not target.runs(config.mode):
        allowed = ", ".join(sorted(target.modes or ()))
        raise ConfigError(
            f"target {target.name} takes only {allowed} models ({target.modes_rule}), not "
            f"{config.mode} ones: convert with --mode {allowed} (or auto) and calibration data"
        )
    # A target whose zero points are all 0 chooses each activation's type itself.
    if (
        not target.zero_point_zero
        and _ACTIVATION_TYPES[config.activation_type] not in target.activation_types
    ):
        raise ConfigError(f"target {target.name} takes no {config.activation_type} activations")


def select(
    model: ir.Model,
    config: QuantConfig,
    keep_float: Mapping[str, str] | None = None,
    *,
    mode: QuantMode | _modes.ModeStrategy | None = None,
    target: Target | None = None,
) -> QuantPlan:
    """Decide, for every node of the main graph, whether and how it is quantized.

    The model must carry value types (run shape inference first); it is not modified. The nodes
    of If branches, at any depth, are decided like the main graph's (a branch output counts as a
    graph output); the bodies of Loop and Scan are not entered and stay float, the Loop or Scan
    node saying why (:mod:`quantcli.graph.branches`). ``keep_float`` names
    nodes a later stage decided to leave float (by node name), each with the sentence the plan
    gives as its reason: a measured decision rather than a rule of the op. ``mode`` is the
    concrete mode to plan for (default: ``config.mode``), or a strategy of one's own; a plan is
    never for mode auto, whose static candidate is what a plan of ``QuantConfig()`` shows.
    ``target`` is the runtime the model is quantized for (default: the one ``config`` names).
    """
    target = target_of(config) if target is None else target
    strategy = _strategy(config, mode)
    config = replace(config, mode=strategy.mode)
    _check_target(config, target)
    check_patterns(model, config.exclude, "--exclude")
    check_patterns(model, config.include, "--include")
    check_patterns(model, config.per_tensor, "a per_channel = false override")
    for override in config.block_overrides:
        check_patterns(model, override.patterns, override.source or "a bits/block_size override")
    ctx = Context(
        nodes=tuple(planned_nodes(model.graph)),
        config=config,
        target=target,
        strategy=strategy,
        keep_float=dict(keep_float or {}),
        graph_outputs=frozenset(
            v.name or ""
            for graph in (model.graph, *(b for _, _, b in branch_graphs(model.graph)))
            for v in graph.outputs
        ),
    )
    placement = Placement()
    for phase in PHASES:
        placement = phase(ctx, placement)
    return strategy.with_block_weights(model, assemble(ctx, placement), config)


def candidate_tensors(model: ir.Model, target: Target = ORT_CPU) -> tuple[str, ...]:
    """Every float activation any plan for this model could quantize or take a range from.

    A calibration file records all of them, so ``convert --calibration`` works whatever nodes a
    later run excludes.
    """
    names: set[str] = set()
    for node in planned_nodes(model.graph):
        if target.rule(node) is None or node.domain not in ("", "ai.onnx"):
            continue
        for value in (*node.inputs, *node.outputs):
            if value is not None and is_float(value) and constant(value) is None and value.name:
                names.add(value.name)
    return tuple(sorted(names))
