"""Quantization modes: static, dynamic, mixed, weight-only, and auto choosing among them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantcli import QuantConfig, quantize
from quantcli.config import GateMetric, QuantMode
from quantcli.errors import ConfigError


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]  # type: ignore[no-any-return]


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.reshape(-1).astype(np.float64), got.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def test_dynamic_rewrites_every_constant_weight_matmul(
    transformer: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = transformer
    out = tmp_path / "dyn.onnx"
    result = quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))  # no data needed
    ops = _ops(out)
    # q, k, v, o projections and the classifier have constant weights; q x k and probs x v do not.
    assert ops["DynamicQuantizeLinear"] == ops["MatMulInteger"] == 5
    assert ops["MatMul"] == 2
    assert "QuantizeLinear" not in ops
    roles = Counter(d.role.value for d in result.report.plan.decisions)
    assert roles["dynamic"] == 5
    by_node = result.report.to_dict()["nodes"]["roles"]
    assert by_node["q_proj"] == "dynamic" and by_node["qk"] == "float" and by_node["softmax"] == "float"
    assert result.report.calibration.samples == 0


def test_dynamic_fuses_into_dynamic_quantize_matmul(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = transformer
    out = tmp_path / "dyn.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    optimized = models.optimized_op_types(out, tmp_path)
    assert optimized.get("DynamicQuantizeMatMul", 0) == 5
    assert "MatMulInteger" not in optimized and "DynamicQuantizeLinear" not in optimized


def test_dynamic_numerics_and_int8_embedding_rows(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = transformer
    out = tmp_path / "dyn.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    graph = onnx.load(out).graph
    gather = next(n for n in graph.node if n.op_type == "Gather")
    table = next(i for i in graph.initializer if i.name == gather.input[0])
    assert table.data_type == onnx.TensorProto.INT8  # Gather reads the int8 table itself
    consumer = next(n for n in graph.node if gather.output[0] in n.input)
    assert consumer.op_type == "DequantizeLinear"  # only the gathered rows are dequantized
    feed = models.tiny_transformer_data(16, seed=9)
    assert _cosine(_run(model, feed), _run(out, feed)) > 0.995


@pytest.mark.parametrize(("trans_b", "alpha", "beta"), [(0, 1.0, 1.0), (1, 1.0, 1.0), (1, 0.5, 2.0)])
def test_dynamic_gemm_matches_float(tmp_path: Path, trans_b: int, alpha: float, beta: float) -> None:
    model = models.save(models.gemm_head(trans_b=trans_b, alpha=alpha, beta=beta), tmp_path)
    out = tmp_path / "dyn.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    assert "Gemm" not in _ops(out)
    feed = {"x": np.random.default_rng(5).normal(0, 1, (8, 48)).astype(np.float32)}
    ref, got = _run(model, feed), _run(out, feed)
    assert _cosine(ref, got) > 0.999
    # Error bounded by the input step (range/255) times the weights' magnitude, not by luck.
    assert np.max(np.abs(ref - got)) < 0.1 * np.max(np.abs(ref))


def test_weight_only_stores_int8_and_computes_float(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = cnn
    out = tmp_path / "wo.onnx"
    result = quantize(model, out, config=QuantConfig(mode=QuantMode.WEIGHT_ONLY))
    ops = _ops(out)
    assert "QuantizeLinear" not in ops and "DynamicQuantizeLinear" not in ops
    assert ops["DequantizeLinear"] == len(result.report.plan.weights) > 0
    assert result.report.size.ratio > 3.0
    # Only 1-D float tensors (biases, scales) remain; every weight matrix/kernel is int8.
    float_matrices = [
        t.name
        for t in onnx.load(out).graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1
    ]
    assert float_matrices == []
    feed = models.tiny_cnn_data(8, seed=4)
    assert _cosine(_run(model, feed), _run(out, feed)) > 0.999


def test_mixed_is_static_conv_and_dynamic_matmul(tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(channels=16), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(24))
    out = tmp_path / "mixed.onnx"
    result = quantize(model, out, config=QuantConfig(mode=QuantMode.MIXED), data=data)
    roles = {(d.op_type, d.role.value) for d in result.report.plan.decisions}
    assert ("Conv", "integer") in roles
    assert ("Gemm", "dynamic") in roles or ("MatMul", "dynamic") in roles
    optimized = models.optimized_op_types(out, tmp_path)
    assert "QLinearConv" in optimized and "DynamicQuantizeMatMul" in optimized


def test_auto_measures_every_mode_and_keeps_a_passing_one(
    transformer: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = transformer
    out = tmp_path / "auto.onnx"
    result = quantize(model, out, config=QuantConfig(mode=QuantMode.AUTO, max_drop=2.0), data=data)
    report = result.report
    assert {c.mode for c in report.candidates} == {"static", "mixed", "dynamic", "weight-only"}
    chosen = [c for c in report.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].mode == report.plan.mode.value
    assert chosen[0].gate is not None and chosen[0].gate.passed
    assert all(c.latency is not None and c.latency.runs >= 3 for c in report.candidates)
    assert report.gate is not None and report.gate.passed
    assert report.to_dict()["candidates"][0]["latency_ms"]["median_ms"] > 0


def test_auto_with_an_impossible_bound_keeps_the_most_faithful(
    transformer: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = transformer
    out = tmp_path / "auto.onnx"
    config = QuantConfig(mode=QuantMode.AUTO, metric=GateMetric.COSINE, max_drop=0.0)
    report = quantize(model, out, config=config, data=data).report
    drops = {c.mode: c.gate.drop for c in report.candidates if c.gate is not None}
    assert report.gate is not None and report.gate.drop == min(drops.values())
    assert out.is_file()  # a model and an honest report even when nothing passes


def test_static_mode_needs_data(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = transformer
    with pytest.raises(ConfigError, match="--mode dynamic"):
        quantize(model, tmp_path / "o.onnx", config=QuantConfig(mode=QuantMode.STATIC))
    assert not (tmp_path / "o.onnx").exists()
