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


def _silu_cnn(seed: int = 0, c: int = 16, c_in: int = 3, kernel: int = 3) -> onnx.ModelProto:
    """Conv-SiLU-Conv with the last Conv's output the graph output (a detector head); the first
    Conv has ``c_in`` inputs and a ``kernel`` x ``kernel`` window."""
    rng = np.random.default_rng(seed)
    w1 = (c, c_in, kernel, kernel)
    inits = [
        helper.make_tensor("w1", TensorProto.FLOAT, w1, rng.normal(0, 0.3 / np.sqrt(c_in / 3), w1).ravel()),
        helper.make_tensor("b1", TensorProto.FLOAT, (c,), rng.normal(0, 0.1, c)),
        helper.make_tensor("w2", TensorProto.FLOAT, (8, c, 1, 1), rng.normal(0, 0.3, (8, c, 1, 1)).ravel()),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[kernel // 2] * 4),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["m1"], name="silu1"),
        helper.make_node("Conv", ["m1", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "silu_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c_in, 8, 8])],
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


def _conv(rng: np.random.Generator, name: str, c_out: int, c_in: int) -> TensorProto:
    return helper.make_tensor(
        name, TensorProto.FLOAT, (c_out, c_in, 3, 3), rng.normal(0, 0.3, (c_out, c_in, 3, 3)).ravel()
    )


def _checked(
    nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto], inits: list[TensorProto]
) -> onnx.ModelProto:
    """A model of ``nodes`` on input x: float[batch, 3, 8, 8], checked in full."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    graph = helper.make_graph(nodes, "test", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _chain_and_concat_cnn(seed: int = 0, c: int = 16) -> onnx.ModelProto:
    """Conv-SiLU, then a Split whose halves feed two Convs (a carried chain after a float
    tensor), and a Concat of the SiLU output with a Relu output (a folded, non-negative
    tensor) feeding a third Conv: YOLOv8's C2f block in miniature."""
    rng = np.random.default_rng(seed)
    half = c // 2
    inits = [
        _conv(rng, "w1", c, 3),
        _conv(rng, "w2", c, 3),
        _conv(rng, "wa", 8, half),
        _conv(rng, "wb", 8, half),
        _conv(rng, "wc", 8, 2 * c),
        helper.make_tensor("split", TensorProto.INT64, (2,), [half, half]),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=pads),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["m1"], name="silu1"),
        helper.make_node("Split", ["m1", "split"], ["h0", "h1"], name="split", axis=1),
        helper.make_node("Conv", ["h0", "wa"], ["ya"], name="conv_a", pads=pads),
        helper.make_node("Conv", ["h1", "wb"], ["yb"], name="conv_b", pads=pads),
        helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2", pads=pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Concat", ["m1", "r2"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["yc"], name="conv_c", pads=pads),
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8, 8, 8]) for n in ("ya", "yb", "yc")
    ]
    return _checked(nodes, outputs, inits)


def test_openvino_rule_3_one_pair_per_carried_chain_at_its_root(tmp_path: Path) -> None:
    report = _report(_chain_and_concat_cnn(), _silu_data(), tmp_path, "openvino")
    quantized = {n.input[0] for n in _qdq(tmp_path / "openvino.onnx", "QuantizeLinear")}
    # The Split's input is float (SiLU) but both halves feed Convs: one pair, on the Split's input,
    # and none on the halves (OpenVINO carries the dequantization through the Split itself).
    assert "m1" in quantized and not {"h0", "h1"} & quantized
    split = next(d for d in report.plan.decisions if d.name == "split")
    assert split.role is NodeRole.CARRY and "rule 3" in split.reason
    roles = {d.name: d.role for d in report.plan.decisions}
    assert roles["conv_a"] is NodeRole.INTEGER and roles["conv_b"] is NodeRole.INTEGER


def test_openvino_rule_4_concat_inputs_share_one_scale_and_no_pair_after_it(tmp_path: Path) -> None:
    report = _report(_chain_and_concat_cnn(), _silu_data(), tmp_path, "openvino")
    out = tmp_path / "openvino.onnx"
    pairs = {node.input[0]: (float(scale), zero.dtype) for node, scale, zero in _activation_quantizers(out)}
    assert "cat" not in pairs  # the Concat is a link: its inputs' scale goes through it
    # r2 alone would be uint8 from 0 (a folded Relu); sharing with the signed m1 makes both int8
    # symmetric with one scale, the larger of the two ranges.
    assert pairs["m1"] == pairs["r2"] and pairs["m1"][1] == np.int8
    concat = next(d for d in report.plan.decisions if d.name == "concat")
    assert concat.role is NodeRole.INTEGER and "rule 4" in concat.reason  # joined on r2 alone
    spec = next(a for a in report.plan.activations if a.name == "m1")
    assert set(spec.shared) == {"r2", "cat"}
    feed = {"x": _silu_data(8)["x"].reshape(8, 3, 8, 8)}
    assert _sqnr_db(_chain_and_concat_cnn(), out, feed) > 20.0


def _reshaped_bias_cnn(seed: int = 0, c: int = 16) -> onnx.ModelProto:
    """A Paddle export's Conv: no bias, then Add(conv, Reshape(bias initializer, Constant shape))."""
    rng = np.random.default_rng(seed)
    shape = helper.make_tensor("shape_value", TensorProto.INT64, (4,), [1, c, 1, 1])
    inits = [
        _conv(rng, "w1", c, 3),
        _conv(rng, "w2", 8, c),
        numpy_helper.from_array(rng.normal(0, 0.5, c).astype(np.float32), "bias"),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=pads),
        helper.make_node("Constant", [], ["shape"], name="shape", value=shape),
        helper.make_node("Reshape", ["bias", "shape"], ["b"], name="reshape_bias"),
        helper.make_node("Add", ["c1", "b"], ["a1"], name="bias_add"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=pads),
    ]
    return _checked(nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])], inits)


def test_openvino_a_tensor_computed_from_constants_is_no_activation(tmp_path: Path) -> None:
    # PP-OCR cls (docs/openvino.md): a pair on a reshaped bias, or between a bias-less Conv and its
    # bias Add, breaks OpenVINO's Add transformation; the Add stays float and the plugin fuses it.
    report = _report(_reshaped_bias_cnn(), _silu_data(), tmp_path, "openvino")
    quantized = {n.input[0] for n in _qdq(tmp_path / "openvino.onnx", "QuantizeLinear")}
    assert quantized == {"x", "r1"}  # the Convs' inputs only: nothing on b, nor on c1
    roles = {d.name: d.role for d in report.plan.decisions}
    assert roles["bias_add"] is NodeRole.FLOAT and roles["conv1"] is NodeRole.INTEGER


def test_openvino_an_lstm_runs_as_dynamicquantizelstm() -> None:
    # ddddocr (docs/openvino.md): OpenVINO's ONNX reader runs onnxruntime's DynamicQuantizeLSTM,
    # faster and 4x smaller there than the float LSTM
    plan = _plan(models.recurrent("LSTM"), TargetName.OPENVINO)
    (decision,) = [d for d in plan.decisions if d.op_type == "LSTM"]
    assert decision.role is NodeRole.DYNAMIC and "DynamicQuantizeLSTM" in decision.reason
    assert len(plan.lstm) == 1


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


@pytest.mark.parametrize(
    ("channels", "kernel", "paired"),
    [(64, 3, True), (32, 3, False), (64, 1, False)],
    ids=["3x3-64-channels", "3x3-32-channels", "1x1-64-channels"],
)
def test_openvino_rule_8_a_3x3_silu_conv_of_64_channels_keeps_its_output_pair(
    tmp_path: Path, channels: int, kernel: int, paired: bool
) -> None:
    data = {"x": np.random.default_rng(4).normal(0, 1, (8, 1, channels, 8, 8)).astype(np.float32)}
    model = _silu_cnn(c_in=channels, kernel=kernel)
    report = _report(model, data, tmp_path, "openvino")
    out = tmp_path / "openvino.onnx"
    quantized = {n.input[0] for n in _qdq(out, "QuantizeLinear")}
    # Rule 2 leaves the SiLU's input float unless rule 8 keeps the Conv's output pair.
    assert quantized == ({"x", "c1", "m1"} if paired else {"x", "m1"})
    conv = next(d for d in report.plan.decisions if d.name == "conv1")
    assert conv.role is NodeRole.INTEGER
    assert ("docs/openvino.md rule 8" in conv.reason) is paired
    # Both readers of the Conv's output read its dequantized form (one pair, not one per reader).
    readers = [n for n in onnx.load(out).graph.node if n.name in ("sig1", "silu1")]
    assert all(("c1" in n.input) is not paired for n in readers)
    assert _sqnr_db(model, out, {"x": data["x"][0]}) > 25


def test_openvino_rule_8_leaves_onnxruntime_and_tensorrt_placement_alone() -> None:
    model = _silu_cnn(c_in=64)
    for target in (TargetName.ORT_CPU, TargetName.TENSORRT):
        conv = next(d for d in _plan(model, target).decisions if d.name == "conv1")
        assert "rule 8" not in conv.reason, target
