"""Quantization modes: static, dynamic, mixed, weight-only, and auto choosing among them."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantcli import QuantConfig, build, quantize
from quantcli.calibration.file import merge_calibrations, read_calibration, write_calibration
from quantcli.calibration.sampling import Shard
from quantcli.config import GateMetric, QuantMode, SpeedSource
from quantcli.errors import ConfigError
from quantcli.evaluate import Latency
from quantcli.inspection import inspect_model
from quantcli.pipeline import calibrate
from quantcli.report import QuantReport


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
    config = QuantConfig(mode=QuantMode.AUTO, max_drop=2.0, speed=SpeedSource.MEASURED)
    result = quantize(model, out, config=config, data=data)
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
    # Auto repairs the most faithful candidate by fallback; nothing passes, and the model written
    # is the one that missed by the least: the repaired one, at most the best candidate's drop.
    assert report.fallback is not None and not report.fallback.passed
    assert report.gate is not None and report.gate.drop <= min(drops.values())
    assert out.is_file()  # a model and an honest report even when nothing passes


def test_static_mode_needs_data(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = transformer
    with pytest.raises(ConfigError, match="--mode dynamic"):
        quantize(model, tmp_path / "o.onnx", config=QuantConfig(mode=QuantMode.STATIC))
    assert not (tmp_path / "o.onnx").exists()


def _fixed_latencies(monkeypatch: pytest.MonkeyPatch, by_mode: dict[str, float]) -> None:
    """Replace the timing auto does with given medians (ms), so its rule can be tested exactly."""

    def measure(sessions: dict[str, object], *_: object, **__: object) -> dict[str, Latency]:
        return {mode: Latency(by_mode[mode], by_mode[mode], 30) for mode in sessions}

    monkeypatch.setattr(build, "measure_latency", measure)


def test_auto_is_the_default_mode() -> None:
    assert QuantConfig().mode is QuantMode.AUTO


# A bound every candidate of the tiny transformer meets, so only latency and fidelity decide;
# timed (with the timings injected) rather than predicted, so the rule can be tested exactly.
LOOSE = QuantConfig(max_drop=5.0, speed=SpeedSource.MEASURED)


def test_auto_keeps_the_clearly_fastest_passing_mode(
    transformer: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = transformer
    _fixed_latencies(monkeypatch, {"static": 2.0, "mixed": 1.5, "dynamic": 1.0, "weight-only": 3.0})
    report = quantize(model, tmp_path / "q.onnx", data=data, config=LOOSE).report
    assert report.plan.mode is QuantMode.DYNAMIC
    assert report.mode_reason == "auto: fastest within the bound"
    assert {c.mode: c.chosen for c in report.candidates}["dynamic"]


def test_auto_breaks_a_latency_tie_by_fidelity(
    transformer: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timings within 5% of the fastest are noise: the most faithful of them wins."""
    model, data = transformer
    tied = {"static": 1.0, "mixed": 1.04, "dynamic": 1.2, "weight-only": 1.03}
    _fixed_latencies(monkeypatch, tied)
    report = quantize(model, tmp_path / "q.onnx", data=data, config=LOOSE).report
    drops = {c.mode: c.gate.drop for c in report.candidates if c.gate is not None}
    most_faithful = min(("static", "mixed", "weight-only"), key=drops.__getitem__)
    assert drops["dynamic"] > drops[most_faithful] or most_faithful != "static"  # a real tie-break
    assert report.plan.mode.value == most_faithful
    _fixed_latencies(monkeypatch, {"static": 1.0, "mixed": 1.06, "dynamic": 1.2, "weight-only": 1.06})
    report = quantize(model, tmp_path / "q2.onnx", data=data, config=LOOSE).report
    assert report.plan.mode is QuantMode.STATIC  # 6% slower is slower


@pytest.mark.parametrize(
    ("build", "expected"),
    [(models.tiny_transformer, QuantMode.DYNAMIC), (models.single_conv, QuantMode.WEIGHT_ONLY)],
)
def test_auto_without_data_follows_a_fixed_rule(
    build: Callable[[], onnx.ModelProto], expected: QuantMode, tmp_path: Path
) -> None:
    model = models.save(build(), tmp_path)
    report = quantize(model, tmp_path / "q.onnx").report
    assert report.plan.mode is expected
    assert report.candidates == () and "auto had no data" in report.mode_reason


def _converted_twice_identically(model: Path, folder: Path, **inputs: Path) -> list[QuantReport]:
    """Two converts into two folders; asserts the models and reports are the same bytes."""
    outputs, reports = [], []
    for name in ("a", "b"):
        out = folder / name / "q.onnx"
        out.parent.mkdir()
        report = quantize(model, out, **inputs).report
        outputs.append((out.read_bytes(), json.dumps(report.to_dict()).replace(str(out.parent), "<out>")))
        reports.append(report)
    assert outputs[0] == outputs[1]
    return reports


def test_calibrate_records_auto_decision_and_convert_replays_it_without_timing(
    transformer: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = transformer
    _fixed_latencies(monkeypatch, {"static": 2.0, "mixed": 1.5, "dynamic": 1.0, "weight-only": 3.0})
    calibration = calibrate(model, data, config=LOOSE)
    choice = calibration.choice
    assert choice is not None and choice.mode is QuantMode.DYNAMIC
    assert {c["mode"] for c in choice.candidates} == {"static", "mixed", "dynamic", "weight-only"}
    dynamic_plan = inspect_model(model, QuantConfig(mode=QuantMode.DYNAMIC)).plan
    assert choice.roles == {d.name: d.role.value for d in dynamic_plan.decisions}
    assert Counter(choice.roles.values())["dynamic"] >= 4
    # The held-back samples are observed too: the file covers all 40.
    assert calibration.num_samples == 40 and all(s.count % 40 == 0 for s in calibration.stats.values())
    path = tmp_path / "calib.json"
    write_calibration(calibration, path)
    assert read_calibration(path).choice == choice

    def no_timing(*_: object, **__: object) -> None:
        raise AssertionError("a recorded decision must not be timed again")

    monkeypatch.setattr(build, "measure_latency", no_timing)
    for report in _converted_twice_identically(model, tmp_path, calibration=path):
        assert report.plan.mode is QuantMode.DYNAMIC and str(path) in report.mode_reason
        assert {d.name: d.role.value for d in report.plan.decisions} == choice.roles


def test_calibrate_records_a_given_mode_and_shards_record_none(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    static = calibrate(model, data, config=QuantConfig(mode=QuantMode.STATIC)).choice
    assert static is not None and static.mode is QuantMode.STATIC and static.candidates == ()
    assert Counter(static.roles.values())["integer"] >= 2
    shards = [calibrate(model, data, shard=Shard(k, 2)) for k in (1, 2)]
    assert all(s.choice is None for s in shards)
    merged = merge_calibrations([(tmp_path / f"{k}.json", s) for k, s in enumerate(shards)])
    assert merged.choice is None
    # With no decision recorded and nothing to measure on, auto uses the file's ranges: static.
    path = tmp_path / "merged.json"
    write_calibration(merged, path)
    report = quantize(model, tmp_path / "q.onnx", calibration=path).report
    assert report.plan.mode is QuantMode.STATIC and "no evaluation data" in report.mode_reason


@pytest.mark.parametrize(("repaired_ms", "kept"), [(1.2, QuantMode.STATIC), (1.95, QuantMode.MIXED)])
def test_auto_fallback_repairs_a_faster_mode_and_keeps_it_only_if_still_faster(
    repaired_ms: float, kept: QuantMode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Static misses the default bound (an outlier in calibration), mixed meets it at twice the
    time: --auto-fallback returns static's worst nodes to float and times it against mixed again."""
    model = models.save(models.outlier_mlp(), tmp_path)
    np.savez(tmp_path / "calib.npz", **models.outlier_mlp_data(32, outlier=2000.0))
    np.savez(tmp_path / "eval.npz", **models.outlier_mlp_data(16, seed=2))
    latencies = {"static": 1.0, "mixed": 2.0, "dynamic": 2.0, "weight-only": 3.0}
    _fixed_latencies(monkeypatch, {**latencies, "repaired": repaired_ms, "winner": 2.0})
    report = quantize(
        model,
        tmp_path / "q.onnx",
        data=tmp_path / "calib.npz",
        eval_data=tmp_path / "eval.npz",
        config=QuantConfig(auto_fallback=True, speed=SpeedSource.MEASURED),
    ).report
    gates = {c.mode: c.gate for c in report.candidates}
    assert gates["static"] is not None and not gates["static"].passed
    assert report.fallback is not None and report.fallback.passed
    assert report.plan.mode is kept
    assert [c.mode for c in report.candidates if c.chosen] == [kept.value]
    floats = sum(d.role.value == "float" for d in report.plan.decisions)
    if kept is QuantMode.STATIC:
        assert "returned to float by fallback" in report.mode_reason and floats >= 1
        assert report.fidelity is not None and report.fidelity.outputs[0].sqnr_db > 15.0
    else:
        assert "not faster" in report.mode_reason


def test_default_auto_decides_by_prediction_and_gives_the_same_bytes_twice(
    transformer: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default times nothing: its choice is a function of the model, data and flags."""
    model, data = transformer

    def no_timing(*_: object, **__: object) -> None:
        raise AssertionError("the default must not time candidates")

    monkeypatch.setattr(build, "measure_latency", no_timing)
    report = _converted_twice_identically(model, tmp_path, data=data)[-1]
    assert all(c.predicted is not None and c.latency is None for c in report.candidates)
    winner = next(c for c in report.candidates if c.chosen)
    passing = [c for c in report.candidates if c.gate is not None and c.gate.passed]
    assert winner.predicted is not None and winner.predicted.ms <= 1.05 * min(
        c.predicted.ms for c in passing if c.predicted is not None
    )
    assert report.speed is not None and report.to_dict()["speed"]["source"] == "predicted"
    # A model this small is overhead-bound: say so when the prediction is no faster than float.
    assert (len(report.warnings) == 1) == (report.speed.ratio >= 1.0)


def test_default_says_when_the_model_written_is_predicted_slower_than_float(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone final Conv has no integer kernel to gain: only weight-only changes it."""
    caplog.set_level(logging.WARNING, logger="quantcli")
    model = models.save(models.single_conv(), tmp_path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32))
    report = quantize(model, tmp_path / "q.onnx", data=tmp_path / "d.npz").report
    assert report.plan.mode is QuantMode.WEIGHT_ONLY
    assert report.speed is not None and report.speed.ratio >= 1.0
    assert len(report.warnings) == 1 and "predicted to run" in report.warnings[0]
    assert any("predicted to run" in r.getMessage() for r in caplog.records)
