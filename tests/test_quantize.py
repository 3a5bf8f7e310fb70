"""End-to-end quantization through the library: structure, numerics, onnxruntime fusion."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantcli import ActivationType, QuantConfig, inspect_model, quantize
from quantcli.config import QuantMode
from quantcli.errors import ModelLoadError, OutputError, QuantizationError

# These tests are about static mode's graphs; auto would build and time every mode.
STATIC = QuantConfig(mode=QuantMode.STATIC)


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]  # type: ignore[no-any-return]


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(
        10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    )


def test_cnn_structure_and_no_float_weights_left(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Relu"] == 0  # both folded
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    # every int8 link of the chain; the logits stay float (QGemm can output float)
    assert quantized == {"image", "r1", "r2", "sum", "pool", "gap", "flat"}
    inits = {i.name: i for i in proto.graph.initializer}
    for name in ("conv1.w", "conv2.w", "fc.w"):
        assert name not in inits  # no float copy left behind
        assert inits[f"{name}_quantized"].data_type == onnx.TensorProto.INT8
    for name in ("conv1.b", "conv2.b", "fc.b"):
        assert inits[f"{name}_quantized"].data_type == onnx.TensorProto.INT32
    float_params = sum(np.prod(i.dims) for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT)
    int8_params = sum(np.prod(i.dims) for i in inits.values() if i.data_type == onnx.TensorProto.INT8)
    assert float_params < 0.05 * int8_params  # only scales remain in float


def test_cnn_fuses_into_integer_kernels(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    ops = models.optimized_op_types(out, tmp_path)
    assert ops.get("QLinearConv") == 2
    assert ops.get("QLinearAdd") == 1
    assert ops.get("QLinearGlobalAveragePool") == 1
    assert ops.get("QGemm") == 1
    # no float compute is left, and no dequantize step between integer kernels
    assert "Conv" not in ops and "DequantizeLinear" not in ops and "Gemm" not in ops


@pytest.mark.parametrize("activation_type", list(ActivationType))
def test_cnn_numerics(cnn: tuple[Path, Path], tmp_path: Path, activation_type: ActivationType) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    result = quantize(
        model, out, data=data, config=QuantConfig(mode=QuantMode.STATIC, activation_type=activation_type)
    )
    feed = models.tiny_cnn_data(16, seed=7)
    sqnr = _sqnr(_run(model, feed), _run(out, feed))
    assert sqnr > 30.0
    assert result.report.fidelity is not None
    assert result.report.fidelity.outputs[0].sqnr_db > 30.0


def test_transformer_quantizes_and_runs(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = transformer
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    feed = models.tiny_transformer_data(16, seed=9)
    assert _sqnr(_run(model, feed), _run(out, feed)) > 20.0
    ops = models.optimized_op_types(out, tmp_path)
    # uint8 rows are gathered from a uint8 table and every MatMul runs on integers
    assert ops.get("Gather") == 1
    assert ops.get("QLinearMatMul", 0) + ops.get("MatMulIntegerToFloat", 0) == 7
    assert "MatMul" not in ops
    assert ops.get("Softmax") == 1  # float, as planned


def test_graph_output_keeps_its_name_when_quantized(tmp_path: Path) -> None:
    model = models.save(models.two_convs_middle_output(), tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=QuantConfig(mode=QuantMode.STATIC, batch_size=1))
    assert [o.name for o in onnx.load(out).graph.output] == ["c", "y"]
    # conv1 feeds int8 to conv2, so its output is quantized (and still the graph output "c");
    # conv2's output goes nowhere int8, so it stays float: one integer kernel.
    assert models.optimized_op_types(out, tmp_path).get("QLinearConv") == 1


def test_final_conv_stays_float_weights_included(tmp_path: Path) -> None:
    """A Conv with no integer kernel after it keeps a float output (a quantized one would clip),
    and so no integer kernel; a weight-only Conv would run slower than float on onnxruntime, so
    static mode leaves it float altogether, and a model of nothing else has nothing to quantize."""
    model = models.save(models.single_conv(), tmp_path)
    decision = inspect_model(model, QuantConfig(mode=QuantMode.STATIC)).plan.decisions[0]
    assert decision.role.value == "float" and "clip" in decision.reason and "slower" in decision.reason
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32))
    with pytest.raises(QuantizationError, match="try --mode weight-only"):
        quantize(model, tmp_path / "q.onnx", data=data, config=QuantConfig(mode=QuantMode.STATIC))
    assert not (tmp_path / "q.onnx").exists()
    # Weight-only mode is where int8 weights behind a DequantizeLinear belong.
    out = tmp_path / "w.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.WEIGHT_ONLY))
    assert Counter(n.op_type for n in onnx.load(out).graph.node) == Counter(
        {"Conv": 1, "DequantizeLinear": 1}
    )


def test_shared_weight_is_stored_once(tmp_path: Path) -> None:
    model = models.save(models.shared_weight_mlp(), tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32))
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    inits = [i for i in onnx.load(out).graph.initializer if len(i.dims) == 2]  # matrices, not scales
    assert [(i.name, i.data_type) for i in inits] == [("w_quantized", onnx.TensorProto.INT8)]


def test_two_runs_are_byte_identical(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    quantize(model, tmp_path / "a.onnx", data=data, config=STATIC)
    quantize(model, tmp_path / "b.onnx", data=data, config=STATIC)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_refuses_to_overwrite(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    before = model.read_bytes()
    with pytest.raises(OutputError, match="overwrite the input"):
        quantize(model, model, data=data, force=True, config=STATIC)
    assert model.read_bytes() == before
    out = tmp_path / "q.onnx"
    out.write_text("keep me")
    with pytest.raises(OutputError, match="--force"):
        quantize(model, out, data=data, config=STATIC)
    assert out.read_text() == "keep me"
    quantize(model, out, data=data, force=True, config=STATIC)
    assert onnx.load(out).graph.node


def test_nothing_to_quantize_writes_nothing(tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(), tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, **models.tiny_cnn_data(4))
    out = tmp_path / "q.onnx"
    excluded = frozenset({"Conv", "Gemm"})
    with pytest.raises(QuantizationError, match="nothing to quantize"):
        quantize(model, out, data=data, config=QuantConfig(mode=QuantMode.STATIC, exclude=excluded))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q.onnx")]


def test_old_opset_is_upgraded_then_quantized(tmp_path: Path) -> None:
    proto = models.tiny_cnn(channels=32)
    proto.opset_import[0].version = 11  # tiny_cnn uses only ops unchanged between 11 and 13
    model = models.save(proto, tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, **models.tiny_cnn_data(12))
    out = tmp_path / "q.onnx"
    result = quantize(model, out, data=data, config=STATIC)
    assert result.report.to_dict()["opset_upgraded_from"] == 11
    assert onnx.load(out).opset_import[0].version == 13
    assert models.optimized_op_types(out, tmp_path).get("QLinearConv", 0) >= 1


def test_ir3_model_with_initializers_as_inputs_is_quantized(tmp_path: Path) -> None:
    # Before IR 4 every initializer is listed among the graph inputs too (old Caffe2 / onnx model
    # zoo exports). The added scales are not inputs, so the checker refused the written model.
    proto = models.tiny_cnn(channels=32)
    proto.opset_import[0].version = 9
    proto.ir_version = 3
    declared = {i.name for i in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.name not in declared:
            declared_input = onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            proto.graph.input.append(declared_input)
    model = models.save(proto, tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, **models.tiny_cnn_data(12))
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert written.ir_version >= 7  # what opset 13 needs
    assert [i.name for i in written.graph.input] == [i.name for i in models.tiny_cnn().graph.input]
    assert models.optimized_op_types(out, tmp_path).get("QLinearConv", 0) >= 1


def test_ancient_opset_is_refused(tmp_path: Path) -> None:
    proto = models.tiny_cnn(channels=8)
    proto.opset_import[0].version = 5
    model = models.save(proto, tmp_path)
    with pytest.raises(ModelLoadError, match="opset 5"):
        quantize(model, tmp_path / "q.onnx", config=QuantConfig(mode=QuantMode.WEIGHT_ONLY))
    assert not (tmp_path / "q.onnx").exists()


def test_clip_is_kept_when_the_op_before_it_stays_float(tmp_path: Path) -> None:
    # Clip(0, 6) after Add(x, 3) was once folded into the Add's quantizer, and the fold kept
    # after the Add itself returned to float: the Clip vanished with no quantizer to replace it.
    model = models.save(models.hard_swish_conv(tail_conv=True), tmp_path)
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(0, 2, (16, 8, 8, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    result = quantize(model, out, data=data, config=STATIC)
    roles = {d.name: d.role.value for d in result.report.plan.decisions}
    assert roles["clip"] != "folded" or roles["add3"] == "integer"
    feed = {"x": rng.normal(0, 2, (4, 8, 8, 8)).astype(np.float32)}
    ref, got = _run(model, feed), _run(out, feed)
    assert _sqnr(ref, got) > 25.0  # an unclipped gate gives values up to 10x too large


def test_spatial_reduce_mean_becomes_integer_global_pooling(tmp_path: Path) -> None:
    model = models.save(models.reduce_mean_classifier(), tmp_path)
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(0, 1, (16, 3, 12, 12)).astype(np.float32))
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    ops = Counter(n.op_type for n in onnx.load(out).graph.node)
    assert "ReduceMean" not in ops and ops["GlobalAveragePool"] == 1 and ops["Flatten"] == 1
    optimized = models.optimized_op_types(out, tmp_path)
    assert "QLinearGlobalAveragePool" in optimized and "QLinearConv" in optimized
    feed = {"x": rng.normal(0, 1, (4, 3, 12, 12)).astype(np.float32)}
    assert _sqnr(_run(model, feed), _run(out, feed)) > 25.0
