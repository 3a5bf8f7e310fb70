"""Networks inside If branches are planned, observed and quantized; Loop bodies are left alone."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from quantcli import QuantConfig, calibrate, inspect_model, quantize
from quantcli.calibration.branches import BranchTap, taken_branches
from quantcli.calibration.data import model_inputs
from quantcli.calibration.file import write_calibration
from quantcli.calibration.sources import open_source
from quantcli.config import QuantMode
from quantcli.inputs import prepare


def _data(n: int, rate: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(0, 1, (n, 1, 3, 16, 16)).astype(np.float32),
        "rate": np.full((n,), rate, np.int64),
    }


def _write_samples(folder: Path, data: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for i in range(len(data["rate"])):
        np.savez(folder / f"{i:03d}.npz", image=data["image"][i], rate=data["rate"][i])
    return folder


def _run(path: Path, image: np.ndarray, rate: int) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": image, "rate": np.array(rate, np.int64)})
    return np.asarray(out)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30)))


def _branch(model: onnx.ModelProto, attribute: str) -> onnx.GraphProto:
    (node,) = [n for n in model.graph.node if n.op_type == "If"]
    (graph,) = [a.g for a in node.attribute if a.name == attribute]
    return graph


@pytest.fixture
def branchy(tmp_path: Path) -> tuple[Path, Path]:
    model = models.save(models.branchy_cnn(), tmp_path)
    return model, _write_samples(tmp_path / "calib", _data(24, 16))


def test_static_quantizes_the_taken_branch_and_keeps_the_other_float(
    branchy: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = branchy
    out = tmp_path / "q.onnx"
    result = quantize(model, out, config=QuantConfig(mode=QuantMode.STATIC), data=calib)
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    wide, narrow = _branch(written, "then_branch"), _branch(written, "else_branch")
    wide_ops = [n.op_type for n in wide.node]
    # Both Convs read int8 weights and int8 inputs inside the branch, where onnxruntime fuses them.
    assert wide_ops.count("QuantizeLinear") >= 2
    assert {t.name for t in wide.initializer if t.data_type == onnx.TensorProto.INT8} >= {
        "wide.conv1.w_quantized",
        "wide.conv2.w_quantized",
    }
    narrow_ops = [n.op_type for n in narrow.node]
    assert narrow_ops.count("QuantizeLinear") == 1  # its input, read as int8 in the main graph too
    assert not any(t.data_type == onnx.TensorProto.INT8 for t in narrow.initializer)
    decisions = {d.name: d for d in result.report.plan.decisions}
    assert decisions["wide.conv1"].role.value == "integer"
    assert decisions["narrow.conv1"].role.value == "float"
    assert "no calibration sample takes" in decisions["narrow.conv1"].reason
    image = _data(4, 16, seed=7)["image"][:, 0]
    for i in range(4):
        sample = image[i : i + 1]
        assert _sqnr(_run(model, sample, 16), _run(out, sample, 16)) > 25.0
        # The branch no sample took computes in float: only its input is read quantized.
        assert _sqnr(_run(model, sample, 8), _run(out, sample, 8)) > 35.0


def test_default_command_converts_a_model_whose_network_is_in_an_if(
    branchy: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = branchy
    result = quantize(model, tmp_path / "q.onnx", data=calib)
    assert result.report.size.ratio > 1.15  # one of two networks stored in int8
    assert any(d.role.value != "float" for d in result.report.plan.decisions if d.name.startswith("wide."))


def test_tap_observes_branch_tensors_as_the_model_computes_them(tmp_path: Path) -> None:
    model = prepare(models.save(models.branchy_cnn(), tmp_path)).model
    data = _data(6, 16)
    tap = BranchTap(model, ["wide.c1", "narrow.c1", "is16"], None, None)
    feed = {"image": data["image"][0], "rate": np.array(16, np.int64)}
    wide, narrow, flag = tap.run(["wide.c1", "narrow.c1", "is16"], feed)
    assert narrow is None and flag is not None and bool(flag)
    # The same tensor, computed by a model that is the branch's first Conv alone.
    (conv,) = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.name == "wide.conv1"]
    w, b = (np.asarray(v.const_value.numpy()) for v in conv.inputs[1:3])  # type: ignore[union-attr]
    alone = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Conv", ["image", "w", "b"], ["c1"], pads=[1, 1, 1, 1])],
            "alone",
            [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, None)],
            [onnx.helper.make_tensor_value_info("c1", onnx.TensorProto.FLOAT, None)],
            [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    (expected,) = ort.InferenceSession(alone.SerializeToString()).run(None, {"image": feed["image"]})
    np.testing.assert_allclose(wide, expected, rtol=1e-5, atol=1e-5)
    assert tap.taken == {("by_rate", "then_branch")}


def test_taken_branches_follow_the_data(tmp_path: Path) -> None:
    model = prepare(models.save(models.branchy_cnn(), tmp_path)).model
    only16 = open_source(_write_samples(tmp_path / "only16", _data(3, 16)), model_inputs(model))
    assert taken_branches(model, only16, 4, None) == {("by_rate", "then_branch")}
    both = _write_samples(
        tmp_path / "both",
        {
            k: np.concatenate([a, b])
            for (k, a), b in zip(_data(2, 16).items(), _data(2, 8).values(), strict=True)
        },
    )
    assert taken_branches(model, open_source(both, model_inputs(model)), 4, None) == {
        ("by_rate", "then_branch"),
        ("by_rate", "else_branch"),
    }


def test_a_loop_body_is_left_float_and_inspect_says_why(tmp_path: Path) -> None:
    path = models.save(models.looped_matmul(), tmp_path)
    summary = inspect_model(path)
    decisions = {d.name: d for d in summary.plan.decisions}
    assert decisions["loop"].role.value == "float"
    assert "runs once per iteration" in decisions["loop"].reason
    assert "loop.matmul" not in decisions


def test_a_recurrent_weight_computed_from_constants_is_folded(tmp_path: Path) -> None:
    path = models.save(models.reordered_lstm(), tmp_path)
    model = prepare(path).model
    (lstm,) = [n for n in model.graph if n.op_type == "LSTM"]
    assert lstm.inputs[1] is not None and lstm.inputs[1].const_value is not None
    assert [n.op_type for n in model.graph] == ["LSTM"]  # the chain and its stored weight are gone
    x = np.random.default_rng(3).normal(0, 1, (5, 1, 8)).astype(np.float32)
    folded = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString()).run(None, {"x": x})[0]
    original = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(folded, original)


def test_calibrate_then_convert_from_its_file(branchy: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = branchy
    recorded = calibrate(model, calib)
    assert "wide.c1" in recorded.stats and "narrow.c1" not in recorded.stats  # never taken: no statistics
    path = tmp_path / "calibration.json"
    write_calibration(recorded, path)
    result = quantize(model, tmp_path / "q.onnx", calibration=path)
    assert recorded.choice is not None and result.report.plan.mode is recorded.choice.mode
    decisions = {d.name: d.role.value for d in result.report.plan.decisions}
    assert decisions["narrow.conv1"] == "float"


def test_dynamic_mode_rewrites_a_matmul_inside_the_branch(tmp_path: Path) -> None:
    model = models.save(models.branchy_cnn(classes=400), tmp_path)
    out = tmp_path / "q.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    for attribute in ("then_branch", "else_branch"):  # no statistics needed: both branches
        ops = [n.op_type for n in _branch(written, attribute).node]
        assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops and "MatMul" not in ops
    image = _data(2, 16, seed=9)["image"][:, 0]
    for rate in (16, 8):
        assert _sqnr(_run(model, image[:1], rate), _run(out, image[:1], rate)) > 25.0


def test_two_branches_reordering_one_weight_share_its_folded_int8_copy(tmp_path: Path) -> None:
    path = models.save(models.branchy_lstm(), tmp_path)
    prepared = prepare(path).model
    folded = [name for name in prepared.graph.initializers if name not in ("lstm.R", "sixteen")]
    assert len(folded) == 1  # one folded W in the main graph, where weight_ih was; weight_ih is gone
    out = tmp_path / "q.onnx"
    quantize(path, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    for attribute in ("then_branch", "else_branch"):
        branch = _branch(written, attribute)
        assert [n.op_type for n in branch.node] == ["DynamicQuantizeLSTM"]
        assert not list(branch.initializer)  # both read the outer int8 weights
    weights = [
        t.name for t in written.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 3
    ]
    assert sorted(weights) == ["a.W_quantized_t", "lstm.R_quantized_t"]  # W and R, once each
    x = np.random.default_rng(5).normal(0, 1, (4, 1, 32)).astype(np.float32)
    for rate in (16, 8):
        feed = {"x": x, "rate": np.array(rate, np.int64)}
        ref = ort.InferenceSession(str(path)).run(None, feed)[0]
        got = ort.InferenceSession(str(out)).run(None, feed)[0]
        assert _sqnr(ref, got) > 25.0


def test_bias_correction_reaches_the_convs_of_a_branch(branchy: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = branchy

    def stored_bias(correct: bool) -> np.ndarray:
        out = tmp_path / f"q_{correct}.onnx"
        quantize(model, out, config=QuantConfig(mode=QuantMode.STATIC, bias_correction=correct), data=calib)
        wide = _branch(onnx.load(out), "then_branch")
        (bias,) = [
            t
            for t in wide.initializer
            if t.name.startswith("wide.conv1.b") and t.data_type == onnx.TensorProto.INT32
        ]
        return np.asarray(onnx.numpy_helper.to_array(bias))

    plain, corrected = stored_bias(False), stored_bias(True)
    assert plain.shape == corrected.shape and not np.array_equal(
        plain, corrected
    )  # the measured shift applied
