"""--target tensorrt: one test per rule of docs/tensorrt.md, each named after the rule it checks.

No TensorRT is needed (none is on these machines): the structure is checked on the written graph,
and the written model runs in onnxruntime's CPU provider, whose QuantizeLinear/DequantizeLinear
arithmetic (round half to even, saturate to [-128, 127], zero point 0) is the one the rules
imply (rule 11).
"""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_runtime_targets import _convert, _initializers, _qdq, _report, _sqnr_db, _up_data
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.config import QuantConfig, QuantMode, TargetName
from quantcli.plan import NodeRole, select

runner = CliRunner()


def _quantized(path: Path) -> set[str]:
    """The tensors a QuantizeLinear reads (weights are stored as integers: these are activations)."""
    return {n.input[0] for n in _qdq(path, "QuantizeLinear")}


def _weight_axes(path: Path) -> dict[str, tuple[int | None, tuple[int, ...]]]:
    """Each stored weight's DequantizeLinear axis (None: per tensor) and its scale's shape."""
    inits = _initializers(path)
    axes = {}
    for node in _qdq(path, "DequantizeLinear"):
        if node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            scale = inits[node.input[1]]
            axes[node.input[0]] = (axis if scale.ndim else None, scale.shape)
    return axes


def _net(
    name: str, nodes: list[onnx.NodeProto], shapes: tuple[list[object], list[object]], **weights: np.ndarray
) -> onnx.ModelProto:
    """A checked model of ``nodes`` from float input x to float output y, with these initializers."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shapes[0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes[1])],
        [numpy_helper.from_array(a.astype(np.float32), n.replace("_", ".")) for n, a in weights.items()],
    )
    return models._model(graph)


def _resnet_block(seed: int = 0, c: int = 16) -> onnx.ModelProto:
    """A ResNet basic block with a 1x1 downsample shortcut: conv_a-relu-conv_b-BN, plus conv_ds(x),
    summed, relu, then a head conv. TensorRT fuses the Add into conv_b (through its BN)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["b", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bb"], name="bn"
        ),
        helper.make_node("Conv", ["x", "wds"], ["ds"], name="conv_ds"),
        helper.make_node("Add", ["bb", "ds"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["rs"], name="relu_out"),
        helper.make_node("Conv", ["rs", "wc"], ["y"], name="head"),
    ]
    return _net(
        "resnet_block",
        nodes,
        (["batch", 4, 8, 8], ["batch", 8, 8, 8]),
        wa=rng.normal(0, 0.3, (c, 4, 3, 3)),
        wb=rng.normal(0, 0.3, (c, c, 3, 3)),
        wds=rng.normal(0, 0.3, (c, 4, 1, 1)),
        wc=rng.normal(0, 0.3, (8, c, 1, 1)),
        bn_scale=rng.uniform(0.5, 1.5, c),
        bn_bias=rng.normal(0, 0.1, c),
        bn_mean=rng.normal(0, 0.1, c),
        bn_var=rng.uniform(0.5, 1.5, c),
    )


def _block_data(n: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, 1, 4, 8, 8)).astype(np.float32)}


def _pool_between_convs(c: int = 16) -> onnx.ModelProto:
    """Conv -> AveragePool -> Conv: a quantizable layer TensorRT fuses with its DQ and Q (rule 8)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["c1"], ["p"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2"),
    ]
    shapes: tuple[list[object], list[object]] = (["batch", 3, 8, 8], ["batch", 4, 4, 4])
    return _net(
        "pool", nodes, shapes, w1=rng.normal(0, 0.3, (c, 3, 3, 3)), w2=rng.normal(0, 0.3, (4, c, 1, 1))
    )


def _matmuls(rank: int) -> onnx.ModelProto:
    """x[.., 16] @ W[16, 32]: a 2-D or a 3-D activation times a constant 2-D weight."""
    lead: list[object] = ["batch"] if rank == 2 else ["batch", 5]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return _net(
        "matmul", nodes, ([*lead, 16], [*lead, 32]), w=np.random.default_rng(4).normal(0, 0.3, (16, 32))
    )


@pytest.fixture
def trt_cnn(tmp_path: Path) -> Path:
    (tmp_path / "cnn").mkdir()
    return _convert(models.tiny_cnn(), models.tiny_cnn_data(40), tmp_path / "cnn", "tensorrt")


@pytest.fixture
def trt_block(tmp_path: Path) -> Path:
    (tmp_path / "block").mkdir()
    return _convert(_resnet_block(), _block_data(), tmp_path / "block", "tensorrt")


def test_rule_1_int8_symmetric_every_zero_point_0_no_uint8_scales_positive(
    trt_cnn: Path, trt_block: Path
) -> None:
    for path in (trt_cnn, trt_block):
        inits = _initializers(path)
        quantizers = _qdq(path, "QuantizeLinear") + _qdq(path, "DequantizeLinear")
        assert quantizers
        for node in quantizers:
            assert len(node.input) == 3, node.name  # the zero point is written, as the rules state it
            zero, scale = inits[node.input[2]], inits[node.input[1]]
            assert zero.dtype == np.int8, node.name  # no uint8, no int32 bias
            assert not zero.any(), node.name
            assert scale.dtype == np.float32 and (scale > 0).all(), node.name


def test_rule_2_weights_per_channel_on_the_output_channel_axis(tmp_path: Path) -> None:
    out = _convert(models.conv_transpose_upsampler(), {"x": _up_data()}, tmp_path, "tensorrt")
    # Conv [K, C, kh, kw]: K is axis 0; ConvTranspose [C, K/group, kh, kw]: K is axis 1.
    assert _weight_axes(out) == {"conv.w_quantized": (0, (4,)), "up.w_quantized": (1, (8,))}


@pytest.mark.parametrize(("trans_b", "axis"), [(1, 0), (0, 1)])
def test_rule_2_gemm_weights_per_output_column(tmp_path: Path, trans_b: int, axis: int) -> None:
    data = {"x": np.random.default_rng(5).normal(0, 1, (16, 1, 48)).astype(np.float32)}
    out = _convert(models.gemm_head(trans_b=trans_b), data, tmp_path, "tensorrt")
    ((found, shape),) = _weight_axes(out).values()
    assert found == axis and shape == (24,)


@pytest.mark.parametrize(("rank", "expected"), [(2, (1, (32,))), (3, (None, ()))])
def test_rule_2_matmul_per_channel_only_when_both_inputs_are_2d(
    tmp_path: Path, rank: int, expected: tuple[int | None, tuple[int, ...]]
) -> None:
    shape = (16, 1, 16) if rank == 2 else (16, 1, 5, 16)
    data = {"x": np.random.default_rng(6).normal(0, 1, shape).astype(np.float32)}
    out = _convert(_matmuls(rank), data, tmp_path, "tensorrt")
    assert _weight_axes(out) == {"w_quantized": expected}


def test_rule_2_activations_per_tensor(trt_cnn: Path, trt_block: Path) -> None:
    for path in (trt_cnn, trt_block):
        inits = _initializers(path)
        for node in _qdq(path, "QuantizeLinear"):
            assert inits[node.input[1]].shape == (), node.name


def test_rule_3_opset_and_types_the_parser_accepts(trt_block: Path, tmp_path: Path) -> None:
    model = onnx.load(trt_block)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert 13 <= opset <= 20  # QuantizeLinear's axis; TensorRT 10.1's parser: opsets 9 to 20
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    inits = _initializers(trt_block)
    for node in _qdq(trt_block, "QuantizeLinear"):
        assert types.get(node.input[0], TensorProto.FLOAT) == TensorProto.FLOAT, node.name
    for node in _qdq(trt_block, "DequantizeLinear"):
        source = inits.get(node.input[0])
        assert source is None or source.dtype == np.int8, node.name  # stored weights: int8
    assert not {n.op_type for n in model.graph.node} & {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
    # A model below opset 13 is upgraded (per-channel Q/DQ need the axis attribute).
    old = _resnet_block()
    old.opset_import[0].version = 11
    (tmp_path / "old").mkdir()
    upgraded = _convert(old, _block_data(), tmp_path / "old", "tensorrt")
    assert onnx.load(upgraded).opset_import[0].version == 13


def test_rule_3_a_model_newer_than_the_parser_takes_is_written_with_a_warning(tmp_path: Path) -> None:
    newer = _resnet_block()
    newer.opset_import[0].version = 21
    report = _report(newer, _block_data(), tmp_path, "tensorrt")
    assert onnx.load(tmp_path / "tensorrt.onnx").opset_import[0].version == 21
    assert any("opset 21 is newer than TensorRT 10.1's ONNX parser" in w for w in report.warnings)
    (tmp_path / "17").mkdir()
    assert not [
        w
        for w in _report(_resnet_block(), _block_data(), tmp_path / "17", "tensorrt").warnings
        if "opset" in w
    ]


def test_rule_4_qdq_on_every_input_of_a_weighted_layer(trt_cnn: Path, trt_block: Path) -> None:
    assert {"image", "r1", "flat"} <= _quantized(trt_cnn)  # conv1, conv2 and the Gemm's inputs
    assert {"x", "ra", "rs"} <= _quantized(trt_block)  # conv_a/conv_ds, conv_b and the head's inputs


def test_rule_5_no_pair_on_a_weighted_layer_output(tmp_path: Path) -> None:
    report = _report(models.tiny_cnn(), models.tiny_cnn_data(40), tmp_path, "tensorrt")
    quantized = _quantized(tmp_path / "tensorrt.onnx")
    assert not {"c1", "c2", "logits"} & quantized
    decisions = {d.name: d for d in report.plan.decisions}
    assert decisions["fc"].role is NodeRole.INTEGER and "docs/tensorrt.md rule 5" in decisions["fc"].reason


def test_rule_6_no_qdq_between_a_layer_and_its_relu_or_batchnorm(trt_cnn: Path, trt_block: Path) -> None:
    assert not {"c1", "c2"} & _quantized(trt_cnn)  # Conv -> Relu: the pair comes after the Relu
    assert not {"a", "b", "bb"} & _quantized(trt_block)  # nor before or after the BN of conv_b


def test_rule_7_residual_add_fused_into_the_conv_its_other_input_quantized(tmp_path: Path) -> None:
    report = _report(_resnet_block(), _block_data(), tmp_path, "tensorrt")
    quantized = _quantized(tmp_path / "tensorrt.onnx")
    assert "ds" in quantized  # the shortcut conv's output: the residual input, int8
    assert not {"bb", "sum"} & quantized  # the fused Conv side and the Add's output stay float
    add = next(d for d in report.plan.decisions if d.name == "residual")
    assert add.role is NodeRole.INTEGER and "rule 7" in add.reason and "conv_b" in add.reason


def test_rule_7_no_residual_pair_when_the_conv_is_float() -> None:
    graph = ir.serde.deserialize_model(_resnet_block())
    common_passes.ShapeInferencePass(strict_mode=False)(graph)
    config = QuantConfig(target=TargetName.TENSORRT, exclude=frozenset({"conv_b"}))
    plan = select(graph, config, mode=QuantMode.STATIC)
    add = next(d for d in plan.decisions if d.name == "residual")
    assert add.role is NodeRole.FLOAT and "rule 7" in add.reason
    assert "ds" not in {a.name for a in plan.activations}


def test_rule_8_a_quantizable_pool_gets_pairs_on_input_and_output_once_its_input_is_int8(
    tmp_path: Path,
) -> None:
    data = {"x": np.random.default_rng(7).normal(0, 1, (24, 1, 3, 8, 8)).astype(np.float32)}
    report = _report(_pool_between_convs(), data, tmp_path, "tensorrt")
    assert {"x", "c1", "p"} <= _quantized(tmp_path / "tensorrt.onnx")
    avg = next(d for d in report.plan.decisions if d.name == "avg")
    assert avg.role is NodeRole.INTEGER and "rule 8" in avg.reason


def test_rule_9_no_pair_around_layers_tensorrt_moves_qdq_across(tmp_path: Path) -> None:
    report = _report(models.tiny_cnn(), models.tiny_cnn_data(40), tmp_path, "tensorrt")
    assert not {"sum", "pool", "gap"} & _quantized(tmp_path / "tensorrt.onnx")
    decisions = {d.name: d for d in report.plan.decisions}
    for name in ("pool", "flatten"):
        assert decisions[name].role is NodeRole.FLOAT and "rule 9" in decisions[name].reason
    # The pool after them reads a float tensor: withheld by rule 8 (no pair on a float input).
    assert decisions["gap"].role is NodeRole.FLOAT and "docs/tensorrt.md rule 8" in decisions["gap"].reason


def test_rule_10_bias_stays_float(trt_cnn: Path, trt_block: Path) -> None:
    for path in (trt_cnn, trt_block):
        assert not [name for name, array in _initializers(path).items() if array.dtype == np.int32]
    conv = next(n for n in onnx.load(trt_cnn).graph.node if n.op_type == "Conv")
    assert _initializers(trt_cnn)[conv.input[2]].dtype == np.float32


def test_rule_11_runs_in_onnxruntime_cpu_with_fidelity(trt_cnn: Path, trt_block: Path) -> None:
    feed = {"image": models.tiny_cnn_data(8, seed=5)["image"].reshape(8, 3, 16, 16)}
    assert _sqnr_db(models.tiny_cnn(), trt_cnn, feed) > 30.0
    block = {"x": _block_data(8, seed=9)["x"].reshape(8, 4, 8, 8)}
    assert _sqnr_db(_resnet_block(), trt_block, block) > 25.0


def test_inspect_reasons_name_the_tensorrt_rule(tmp_path: Path) -> None:
    model = models.save(_resnet_block(), tmp_path)
    result = runner.invoke(app, ["inspect", str(model), "--target", "tensorrt", "--json"])
    assert result.exit_code == 0, result.output
    reasons = {n["name"]: n["reason"] for n in json.loads(result.stdout)["nodes"]}
    assert "docs/tensorrt.md rule 7" in reasons["residual"]
    assert "docs/tensorrt.md rule 6" in reasons["relu_a"]
    assert "bn" not in reasons  # folded into conv_b before planning, as TensorRT would fuse it
    assert "docs/tensorrt.md rule 5" in reasons["conv_b"]


def test_rule_4_auto_builds_only_static_and_another_mode_is_refused(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    """TensorRT's int8 is Q/DQ on every weighted layer's inputs: no dynamic, mixed or weight-only."""
    model, data = cnn
    out = tmp_path / "q.onnx"
    args = ["convert", str(model), "-o", str(out), "--data", str(data), "--target", "tensorrt", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "static"
    # onnxruntime's cost model does not speak for TensorRT: no predicted speed, no warning from it
    assert report["speed"] is None and not report["warnings"]
    assert _qdq(out, "QuantizeLinear")
    for mode in ("dynamic", "weight-only", "mixed"):
        result = runner.invoke(app, [*args, "--mode", mode, "-o", str(tmp_path / f"{mode}.onnx")])
        assert result.exit_code == 1, result.output
        assert "target tensorrt takes only static models" in result.output and "rule 4" in result.output
        assert not (tmp_path / f"{mode}.onnx").exists()
