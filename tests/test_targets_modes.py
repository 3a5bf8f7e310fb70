"""A target and a mode are data the planner reads: new ones are written here, not in the core."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import models
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

from quantcli import engine
from quantcli.config import ActivationType, QuantConfig, QuantMode
from quantcli.errors import ConfigError
from quantcli.graph.io import open_session
from quantcli.modes import (
    MODES,
    ModeStrategy,
    Placed,
    StaticStrategy,
    auto_candidates,
    strategy,
    uses_calibration,
)
from quantcli.plan import PHASES, NodeRole, Overridden, QuantPlan, select
from quantcli.plan.placement import Context, Placement
from quantcli.target import ORT_CPU, OpRule, Target

INTEGER, FOLDED, FLOAT = NodeRole.INTEGER, NodeRole.FOLDED, NodeRole.FLOAT

# A runtime with no integer Add: a residual Add never joins the integer path.
NO_INTEGER_ADD = replace(
    ORT_CPU,
    name="no-integer-add",
    runtime="a toy runtime",
    rules=MappingProxyType({op: rule for op, rule in ORT_CPU.rules.items() if op != "Add"}),
)


class ConvolutionsOnly(StaticStrategy):
    """A toy mode: static, but a matrix product stays float."""

    def place_compute(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        if node.op_type != "Conv":
            return Placed(NodeRole.FLOAT, "float: the toy mode quantizes convolutions only")
        return super().place_compute(node, rule, target)


def _model(proto: onnx.ModelProto) -> ir.Model:
    model = ir.serde.deserialize_model(proto)
    common_passes.ShapeInferencePass(strict_mode=False)(model)
    return model


def _decisions(plan: QuantPlan) -> dict[str, tuple[NodeRole, str]]:
    return {d.name: (d.role, d.reason) for d in plan.decisions}


def test_a_target_without_integer_add_keeps_the_residual_float() -> None:
    model = _model(models.tiny_cnn())
    ort = select(model, QuantConfig(), mode=QuantMode.STATIC)
    toy = select(model, QuantConfig(), mode=QuantMode.STATIC, target=NO_INTEGER_ADD)
    assert _decisions(ort)["residual"][0] is INTEGER
    roles = {d.name: d.role for d in toy.decisions}
    assert roles == {
        "conv1": INTEGER,
        "relu1": FOLDED,
        "conv2": INTEGER,
        "relu2": FOLDED,
        "residual": FLOAT,
        # the Add's output is float, so nothing after it moves or computes int8 until the Gemm
        "pool": FLOAT,
        "gap": FLOAT,
        "flatten": FLOAT,
        "fc": INTEGER,
    }
    assert _decisions(toy)["residual"][1] == "float: no integer kernel for Add"
    assert _decisions(toy)["pool"][1] == "float: its input is a float tensor"
    # The Gemm quantizes its own (float) input; the Add's output is never quantized.
    assert set(toy.observed) == {"image", "r1", "r2", "flat"}
    assert set(ort.observed) == {"image", "r1", "r2", "sum", "gap"}


def test_keeping_final_outputs_float_is_a_target_fact() -> None:
    model = _model(models.single_conv())
    ort = select(model, QuantConfig(), mode=QuantMode.STATIC)
    [decision] = ort.decisions
    assert decision.role is FLOAT and "clip values beyond the calibrated range" in decision.reason
    # The later phase kept what the seed had decided, and why.
    assert decision.overrides == (Overridden(INTEGER, "int8: integer kernel (QLinearConv)", "conv"),)
    quantized_outputs = replace(ORT_CPU, name="toy", keep_final_outputs_float=False)
    [kept] = select(model, QuantConfig(), mode=QuantMode.STATIC, target=quantized_outputs).decisions
    assert kept.role is INTEGER and kept.overrides == ()


def test_a_toy_mode_plans_without_editing_the_core() -> None:
    model = _model(models.tiny_cnn())
    plan = select(model, QuantConfig(), mode=ConvolutionsOnly())
    decisions = {d.name: d for d in plan.decisions}
    assert {name: d.role for name, d in decisions.items()} == {
        "conv1": INTEGER,
        "relu1": FOLDED,
        # nothing after conv2 reads int8 once the Gemm is float: it keeps its output float
        "conv2": FLOAT,
        "relu2": FLOAT,
        "residual": FLOAT,
        "pool": FLOAT,
        "gap": FLOAT,
        "flatten": FLOAT,
        "fc": FLOAT,
    }
    assert decisions["fc"].reason == "float: the toy mode quantizes convolutions only"
    assert plan.mode is QuantMode.STATIC and not plan.dynamic
    assert {w.name for w in plan.weights} == {"conv1.w"}
    # relu2 was folded into conv2's quantizer, then had to run again when conv2's output
    # stayed float: its decision names conv2 as the cause and keeps the folded one.
    relu2 = decisions["relu2"]
    assert relu2.reason == "float: its input is not quantized" and relu2.cause == "conv2"
    assert [o.role for o in relu2.overrides] == [FOLDED]
    # The residual Add joined the integer path, then was pruned: both reasons are kept.
    residual = decisions["residual"]
    assert residual.reason == "float: nothing after it takes int8, so an integer kernel saves nothing"
    assert [(o.role, o.reason) for o in residual.overrides] == [
        (INTEGER, "int8: integer kernel (QLinearAdd); its inputs are int8 already")
    ]


def test_every_concrete_mode_has_a_strategy_and_auto_has_none() -> None:
    assert set(MODES) == set(QuantMode) - {QuantMode.AUTO}
    assert all(MODES[mode].mode is mode for mode in MODES)
    with pytest.raises(ValueError, match="auto"):
        strategy(QuantMode.AUTO)
    for mode in QuantMode:
        assert uses_calibration(mode) == mode.uses_calibration, mode
        if mode is not QuantMode.AUTO:
            assert strategy(mode).needs_calibration == mode.needs_calibration, mode


def test_auto_candidates_without_ranges_need_no_calibration() -> None:
    every = [QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY]
    assert [s.mode for s in auto_candidates(has_ranges=True)] == every
    assert [s.mode for s in auto_candidates(has_ranges=False)] == [QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY]


def test_a_mode_decides_whether_it_changes_the_model() -> None:
    model = _model(models.single_conv())
    dynamic = strategy(QuantMode.DYNAMIC)
    assert not dynamic.changes(select(model, QuantConfig(), mode=dynamic))  # a Conv has no dynamic form
    weight_only = strategy(QuantMode.WEIGHT_ONLY)
    assert isinstance(weight_only, ModeStrategy)
    assert weight_only.changes(select(model, QuantConfig(), mode=weight_only))


def test_a_target_refuses_an_activation_type_it_does_not_take() -> None:
    model = _model(models.single_conv())
    signed_only = replace(ORT_CPU, name="signed-only", activation_types=frozenset({ir.DataType.INT8}))
    select(model, QuantConfig(activation_type=ActivationType.INT8), target=signed_only)
    with pytest.raises(ConfigError, match="signed-only takes no uint8 activations"):
        select(model, QuantConfig(), target=signed_only)


def test_sessions_run_on_the_targets_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def session(source: bytes, options: object, providers: list[str]) -> object:
        asked.append(providers)
        return object()

    monkeypatch.setattr(engine.ort, "InferenceSession", session)
    elsewhere = replace(ORT_CPU, name="toy", check_providers=("CheckEP",), timing_providers=("TimeEP",))
    open_session(models.single_conv())
    open_session(models.single_conv(), target=elsewhere)
    open_session(models.single_conv(), for_timing=True, target=elsewhere)
    assert asked == [["CPUExecutionProvider"], ["CheckEP"], ["TimeEP"]]


def test_each_phase_returns_a_new_placement_and_leaves_its_input_alone() -> None:
    model = _model(models.tiny_cnn())
    ctx = Context(
        nodes=tuple(model.graph),
        config=QuantConfig(),
        target=ORT_CPU,
        strategy=ConvolutionsOnly(),
        keep_float={},
        graph_outputs=frozenset({"logits"}),
    )
    placements = [Placement()]
    for phase in PHASES:
        placement = placements[-1]
        before = (
            dict(placement.decisions),
            placement.integer,
            dict(placement.available),
            dict(placement.folds),
        )
        after = phase(ctx, placement)
        assert after is not placement
        assert (
            dict(placement.decisions),
            placement.integer,
            dict(placement.available),
            dict(placement.folds),
        ) == before
        with pytest.raises(TypeError):
            after.decisions[0] = after.decisions[id(ctx.nodes[0])]  # type: ignore[index]
        placements.append(after)
    # Propagation put the residual Add on the integer path, pruning withdrew it; both are kept.
    residual = ctx.nodes[4]
    _, seeded, propagated, pruned, _unread, final = placements
    assert seeded.role(residual) is None and propagated.role(residual) is INTEGER
    assert pruned.role(residual) is FLOAT and final.role(residual) is FLOAT
