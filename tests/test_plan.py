"""Which nodes the plan quantizes, and the reasons it gives for the rest."""

from __future__ import annotations

import models
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

from quantcli.config import QuantConfig
from quantcli.errors import ConfigError
from quantcli.plan import NodeRole, QuantPlan, candidate_tensors, select


def _plan(proto: onnx.ModelProto, config: QuantConfig | None = None) -> QuantPlan:
    model = ir.serde.deserialize_model(proto)
    common_passes.ShapeInferencePass(strict_mode=False)(model)
    return select(model, config or QuantConfig())


def _roles(plan: QuantPlan) -> dict[str, NodeRole]:
    return {d.name: d.role for d in plan.decisions}


def test_cnn_is_integer_end_to_end() -> None:
    plan = _plan(models.tiny_cnn())
    roles = _roles(plan)
    assert roles == {
        "conv1": NodeRole.INTEGER,
        "relu1": NodeRole.FOLDED,
        "conv2": NodeRole.INTEGER,
        "relu2": NodeRole.FOLDED,
        "residual": NodeRole.INTEGER,
        "pool": NodeRole.CARRY,
        "gap": NodeRole.INTEGER,
        "flatten": NodeRole.CARRY,
        "fc": NodeRole.INTEGER,
    }
    weights = {w.name: w.axis for w in plan.weights}
    assert weights == {"conv1.w": 0, "conv2.w": 0, "fc.w": 0}
    assert {b.name for b in plan.biases} == {"conv1.b", "conv2.b", "fc.b"}
    acts = {a.name: a for a in plan.activations}
    # folded Relu outputs are non-negative; the MaxPool output carries the Add output's range
    assert acts["r1"].nonnegative and acts["r2"].nonnegative
    assert acts["pool"].range_of == "sum"
    # Gemm needs no quantized output: the logits stay float
    assert "logits" not in acts
    assert set(plan.observed) == {"image", "r1", "r2", "sum", "gap"}


def test_per_tensor_and_exclusion() -> None:
    plan = _plan(models.tiny_cnn(), QuantConfig(per_channel=False, exclude=frozenset({"conv2", "Gemm"})))
    roles = _roles(plan)
    assert roles["conv2"] is NodeRole.FLOAT and roles["fc"] is NodeRole.FLOAT
    assert next(d for d in plan.decisions if d.name == "conv2").reason == "float: excluded by the user"
    # conv2 is float, so its Relu cannot fold and the residual Add has a float input
    assert roles["relu2"] is NodeRole.FLOAT
    assert roles["residual"] is NodeRole.FLOAT
    assert all(w.axis is None for w in plan.weights)


def test_unknown_exclusion_is_an_error() -> None:
    with pytest.raises(ConfigError, match="conv9"):
        _plan(models.tiny_cnn(), QuantConfig(exclude=frozenset({"conv9"})))


def test_transformer_keeps_fragile_ops_float_with_reasons() -> None:
    plan = _plan(models.tiny_transformer())
    decisions = {d.name: d for d in plan.decisions}
    for name in ("q_proj", "k_proj", "v_proj", "qk", "attn_v", "o_proj", "classifier"):
        assert decisions[name].role is NodeRole.INTEGER, name
    assert decisions["embed"].role is NodeRole.INTEGER  # int8 table
    assert decisions["softmax"].role is NodeRole.FLOAT and "levels" in decisions["softmax"].reason
    assert decisions["ln"].role is NodeRole.FLOAT
    # the bias Add after a MatMul would need a new quantize step on the MatMul output
    assert decisions["q_bias"].role is NodeRole.FLOAT
    assert "not int8" in decisions["q_bias"].reason
    weights = {w.name: w for w in plan.weights}
    # a gathered table is stored like an activation, so its rows feed integer MatMuls
    assert weights["emb"].axis is None and not weights["emb"].symmetric
    assert weights["wq"].axis == 1 and weights["wq"].symmetric
    # integer token ids are never quantized
    assert "tokens" not in {a.name for a in plan.activations}
    assert next(a for a in plan.activations if a.name == "x").table == "emb"


def test_shared_weight_quantized_once_and_shape_tensors_untouched() -> None:
    plan = _plan(models.shared_weight_mlp())
    assert [w.name for w in plan.weights] == ["w"]
    names = {a.name for a in plan.activations}
    assert "shape" not in names
    roles = _roles(plan)
    assert roles["shape"] is NodeRole.FLOAT
    # Relu after a MatMul with a float output cannot fold: nothing saturates before it
    assert roles["relu"] is NodeRole.FLOAT


def test_custom_domain_stays_float() -> None:
    model = ir.serde.deserialize_model(models.custom_op_model())
    plan = select(model, QuantConfig())
    custom = next(d for d in plan.decisions if d.name == "custom")
    assert custom.role is NodeRole.FLOAT and "com.example" in custom.reason


def test_candidate_tensors_cover_every_plan() -> None:
    proto = models.tiny_cnn()
    model = ir.serde.deserialize_model(proto)
    common_passes.ShapeInferencePass(strict_mode=False)(model)
    candidates = set(candidate_tensors(model))
    for config in (QuantConfig(), QuantConfig(exclude=frozenset({"relu1", "conv2"}))):
        assert set(select(model, config).observed) <= candidates
