"""--target openvino and --target tensorrt: each test names the rule of its target it checks.

OpenVINO's rules are docs/openvino.md's (read from its CPU plugin's runtime graph); TensorRT's, from
its documentation (docs/tensorrt.md), are checked rule by rule in test_tensorrt.py. No OpenVINO or TensorRT
is needed: the structure is checked on the written graph, and the written model runs in
onnxruntime's CPU provider, whose QuantizeLinear/DequantizeLinear arithmetic is the one the
rules imply.
"""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from quantcli import Overrides, quantize
from quantcli.cli.app import app
from quantcli.config import QuantConfig, QuantMode, TargetName
from quantcli.plan import NodeRole, QuantPlan, select
from quantcli.report import QuantReport

runner = CliRunner()


def _report(model: onnx.ModelProto, data: dict[str, np.ndarray], folder: Path, target: str) -> QuantReport:
    source = models.save(model, folder, f"{target}.float.onnx")
    np.savez(folder / "calib.npz", **data)
    result = quantize(
        source,
        folder / f"{target}.onnx",
        data=folder / "calib.npz",
        config=Overrides(mode=QuantMode.STATIC, target=TargetName(target)),
        force=True,
    )
    return result.report


def _convert(model: onnx.ModelProto, data: dict[str, np.ndarray], folder: Path, target: str) -> Path:
    """The model written for ``target`` (static mode)."""
    _report(model, data, folder, target)
    return folder / f"{target}.onnx"


def _plan(model: onnx.ModelProto, target: TargetName) -> QuantPlan:
    graph = ir.serde.deserialize_model(model)
    common_passes.ShapeInferencePass(strict_mode=False)(graph)
    return select(graph, QuantConfig(target=target), mode=QuantMode.STATIC)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _qdq(path: Path, op: str) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(path).graph.node if n.op_type == op]


def _activation_quantizers(path: Path) -> list[tuple[onnx.NodeProto, np.ndarray, np.ndarray]]:
    """Every QuantizeLinear of the model (weights are stored as integers: these are activations)."""
    inits = _initializers(path)
    return [(n, inits[n.input[1]], inits[n.input[2]]) for n in _qdq(path, "QuantizeLinear")]


def _sqnr_db(model: onnx.ModelProto, quantized: Path, feed: dict[str, np.ndarray]) -> float:
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    got = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]).run(None, feed)
    signal = float(np.sum(np.square(ref[0], dtype=np.float64)))
    noise = float(np.sum(np.square(ref[0].astype(np.float64) - got[0])))
    return float(10 * np.log10(signal / noise))


def _silu_cnn(seed: int = 0, c: int = 16) -> onnx.ModelProto:
    """Conv-SiLU-Conv-SiLU with the last Conv's output the graph output (a detector head)."""
    rng = np.random.default_rng(seed)
    inits = [
        helper.make_tensor("w1", TensorProto.FLOAT, (c, 3, 3, 3), rng.normal(0, 0.3, (c, 3, 3, 3)).ravel()),
        helper.make_tensor("b1", TensorProto.FLOAT, (c,), rng.normal(0, 0.1, c)),
        helper.make_tensor("w2", TensorProto.FLOAT, (8, c, 1, 1), rng.normal(0, 0.3, (8, c, 1, 1)).ravel()),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["m1"], name="silu1"),
        helper.make_node("Conv", ["m1", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "silu_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _silu_data(n: int = 32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(0, 1, (n, 1, 3, 8, 8)).astype(np.float32)}


# --- OpenVINO -------------------------------------------------------------------------------


def _up_data() -> np.ndarray:
    return np.random.default_rng(2).normal(0, 1, (24, 1, 16, 8, 8)).astype(np.float32)


def test_openvino_rule_1_activation_zero_points_zero_uint8_only_from_0(tmp_path: Path) -> None:
    out = _convert(models.tiny_cnn(), models.tiny_cnn_data(40), tmp_path, "openvino")
    types = {}
    for node, _scale, zero in _activation_quantizers(out):
        assert not zero.any(), node.name  # never a calibrated zero point, never int8 -128
        types[node.input[0]] = zero.dtype
    assert types["image"] == np.int8  # signed input: int8 symmetric
    assert types["r1"] == np.uint8  # a Relu output: uint8 from 0


def test_openvino_rule_2_no_pair_on_an_output_only_float_ops_read(tmp_path: Path) -> None:
    report = _report(_silu_cnn(), _silu_data(), tmp_path, "openvino")
    out = tmp_path / "openvino.onnx"
    quantized = {n.input[0] for n in _qdq(out, "QuantizeLinear")}
    assert quantized == {"x", "m1"}  # the Convs' inputs: no pair on c1 (Sigmoid, Mul are float)
    decisions = {d.name: d for d in report.plan.decisions}
    assert decisions["sig1"].role is NodeRole.FLOAT and "openvino.md rule 2" in decisions["sig1"].reason
    assert "OpenVINO gets a pair only where" in decisions["conv1"].reason


def test_openvino_rule_6_a_final_conv_is_quantized(tmp_path: Path) -> None:
    report = _report(_silu_cnn(), _silu_data(), tmp_path, "openvino")
    head = next(d for d in report.plan.decisions if d.name == "head")
    assert head.role is NodeRole.INTEGER
    ort = _plan(_silu_cnn(), TargetName.ORT_CPU)
    assert next(d for d in ort.decisions if d.name == "head").role is NodeRole.FLOAT
    inits = _initializers(tmp_path / "openvino.onnx")
    assert inits["w2_quantized"].dtype == np.int8


def test_openvino_rule_5_bias_float_and_rule_7_convtranspose_gets_an_input_pair(tmp_path: Path) -> None:
    report = _report(models.conv_transpose_upsampler(), {"x": _up_data()}, tmp_path, "openvino")
    out = tmp_path / "openvino.onnx"
    up = next(d for d in report.plan.decisions if d.name == "up")
    assert up.role is NodeRole.INTEGER and "rule 7" in up.reason
    assert "x" in {n.input[0] for n in _qdq(out, "QuantizeLinear")}
    assert not [name for name, array in _initializers(out).items() if array.dtype == np.int32]
    ort = _plan(models.conv_transpose_upsampler(), TargetName.ORT_CPU)
    assert next(d for d in ort.decisions if d.name == "up").role is NodeRole.WEIGHT_ONLY


def test_openvino_output_runs_in_onnxruntime_with_fidelity(tmp_path: Path) -> None:
    out = _convert(_silu_cnn(), _silu_data(), tmp_path, "openvino")
    feed = {"x": _silu_data(8)["x"].reshape(8, 3, 8, 8)}
    assert _sqnr_db(_silu_cnn(), out, feed) > 25.0


# --- the command line -----------------------------------------------------------------------


def test_target_flag_and_recipe_key_reach_the_report_and_inspect(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    result = runner.invoke(app, ["inspect", str(model), "--target", "tensorrt", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "tensorrt"
    recipe = tmp_path / "r.toml"
    recipe.write_text('[defaults]\ntarget = "openvino"\nmode = "static"\n')
    args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "--json"]
    result = runner.invoke(app, [*args, "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["target"] == "openvino"
    result = runner.invoke(app, [*args, "--recipe", str(recipe), "--target", "ort-cpu", "--force"])
    assert json.loads(result.stdout)["config"]["target"] == "ort-cpu"  # the flag wins


def test_an_unknown_target_is_refused(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, _data = cnn
    assert runner.invoke(app, ["inspect", str(model), "--target", "cuda"]).exit_code == 2
    recipe = tmp_path / "r.toml"
    recipe.write_text('[defaults]\ntarget = "cuda"\n')
    result = runner.invoke(app, ["inspect", str(model), "--recipe", str(recipe)])
    assert result.exit_code == 1
    assert "target = 'cuda' is not one of ort-cpu, openvino, tensorrt" in result.output


@pytest.mark.parametrize("target", [TargetName.OPENVINO, TargetName.TENSORRT])
def test_rule_a_matrix_product_writes_float_its_bias_add_is_fused(target: TargetName) -> None:
    model = models.tiny_transformer()
    plan = _plan(model, target)
    products = {n.output[0] for n in model.graph.node if n.op_type == "MatMul"}
    bias_adds = [n for n in model.graph.node if n.op_type == "Add" and set(n.input) & products]
    assert bias_adds
    read_by_add = {name for n in bias_adds for name in n.input if name in products}
    # the product a bias Add reads gets no pair: the Add is fused into the layer, not integer
    assert not read_by_add & {a.name for a in plan.activations}
    roles = {d.name: d.role for d in plan.decisions}
    assert all(roles[n.name] is not NodeRole.INTEGER for n in bias_adds)
    assert any(roles[n.name] is NodeRole.INTEGER for n in model.graph.node if n.op_type == "MatMul")
