"""Ops that carry a large weight and are not Conv/MatMul/Gemm: LSTM (DynamicQuantizeLSTM, or its
weights behind a DequantizeLinear in weight-only mode), GRU, RNN, ConvTranspose and Einsum with a
constant operand (int8 weights behind a DequantizeLinear in every mode)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from quantcli import QuantConfig, quantize
from quantcli.config import QuantMode
from quantcli.inspection import inspect_model
from quantcli.passes import EinsumToMatMulPass

_MODES = (QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)


@dataclass(frozen=True)
class _Case:
    build: Callable[[], onnx.ModelProto]
    op: str
    weights: tuple[str, ...]  # float initializers that must end up int8
    sample: tuple[int, ...]  # one sample's input shape


_CASES = {
    "lstm": _Case(lambda: models.recurrent("LSTM"), "LSTM", ("rnn.W", "rnn.R"), (6, 1, 8)),
    "lstm_bidirectional_y_h": _Case(
        lambda: models.recurrent("LSTM", directions=2, hidden_only=True),
        "LSTM",
        ("rnn.W", "rnn.R"),
        (6, 2, 8),
    ),
    "gru_bidirectional": _Case(
        lambda: models.recurrent("GRU", directions=2), "GRU", ("rnn.W", "rnn.R"), (6, 1, 8)
    ),
    "rnn": _Case(lambda: models.recurrent("RNN", hidden=32), "RNN", ("rnn.W", "rnn.R"), (6, 1, 8)),
    "shared_lstm_weights": _Case(models.stacked_lstms, "LSTM", ("lstm.W", "lstm.R"), (6, 1, 16)),
    "conv_transpose": _Case(models.conv_transpose_upsampler, "ConvTranspose", ("up.w",), (1, 16, 8, 8)),
    "einsum": _Case(models.einsum_constant, "Einsum", ("heads",), (1, 5, 32)),
}


def _data(case: _Case, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # The recurrent models' batch axis is the second: a stack of samples adds an axis in front.
    shape = (n, *case.sample[1:]) if case.sample[0] == 1 else (n, *case.sample)
    return rng.normal(0, 1, shape).astype(np.float32)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(
        10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    )


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]  # type: ignore[no-any-return]


def _convert(tmp_path: Path, case: _Case, mode: QuantMode) -> tuple[Path, Path, onnx.ModelProto]:
    model = models.save(case.build(), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, x=_data(case, 12, seed=1))
    out = tmp_path / "q.onnx"
    result = quantize(
        model, out, config=QuantConfig(mode=mode), data=data if mode.needs_calibration else None
    )
    # The report counts the new int8 weights (and, by mode, others: the upsampler's Conv).
    sizes = {i.name: int(np.prod(i.dims)) for i in case.build().graph.initializer if i.data_type == 1}
    assert result.report.int8_weight_fraction >= sum(sizes[w] for w in case.weights) / sum(sizes.values())
    return model, out, onnx.load(out)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _assert_einsum_products_are_matmuls(graph: onnx.GraphProto, mode: QuantMode) -> None:
    """proj and proj_t became MatMuls (integer in static, dynamic in dynamic and mixed); the tiny
    product stays a float MatMul; the per-head Einsum stays an Einsum."""
    ops = Counter(n.op_type for n in graph.node)
    assert ops["Einsum"] == 1
    integer = {"static": "QuantizeLinear", "mixed": "MatMulInteger", "dynamic": "MatMulInteger"}
    if mode.value in integer:
        assert ops[integer[mode.value]] >= 2
    initializers = {i.name for i in graph.initializer}
    assert not {"proj", "proj_t"} & initializers  # no float copy, transposed or not
    assert "proj_t_transposed" not in initializers


def _assert_int8_behind_dequantize(graph: onnx.GraphProto, case: _Case) -> None:
    """Each weight is the output of a DequantizeLinear reading an int8 initializer; no float copy."""
    initializers = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    for name in case.weights:
        assert name not in initializers
        dequantize = producers[name]
        assert dequantize.op_type == "DequantizeLinear"
        assert initializers[dequantize.input[0]].data_type == onnx.TensorProto.INT8
        assert any(name in n.input for n in graph.node if n.op_type == case.op)


def _assert_dynamic_lstm(graph: onnx.GraphProto, case: _Case) -> None:
    initializers = {i.name: i for i in graph.initializer}
    ops = Counter(n.op_type for n in graph.node)
    assert "LSTM" not in ops and "DequantizeLinear" not in ops  # no float or dequantized weight left
    for node in (n for n in graph.node if n.op_type == "DynamicQuantizeLSTM"):
        assert node.domain == "com.microsoft"
        for index in (1, 2):  # W, R: int8 in [directions, size, 4 x hidden]
            tensor = initializers[node.input[index]]
            assert tensor.data_type == onnx.TensorProto.INT8 and tensor.dims[2] == 4 * 16
        scale = initializers[node.input[8]]
        assert list(scale.dims) == [tensor.dims[0], 4 * 16]  # per direction and gate row
    assert ops["DynamicQuantizeLSTM"] == sum(1 for _ in case.build().graph.node if _.op_type == "LSTM")


@pytest.mark.parametrize("mode", _MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("name", sorted(_CASES))
def test_large_weights_are_int8_in_every_mode(name: str, mode: QuantMode, tmp_path: Path) -> None:
    case = _CASES[name]
    model, out, quantized = _convert(tmp_path, case, mode)
    onnx.checker.check_model(str(out), full_check=True)
    assert out.stat().st_size < model.stat().st_size
    if case.op == "LSTM" and mode is not QuantMode.WEIGHT_ONLY:
        _assert_dynamic_lstm(quantized.graph, case)
    else:
        _assert_int8_behind_dequantize(quantized.graph, case)
    if case.op == "Einsum":
        _assert_einsum_products_are_matmuls(quantized.graph, mode)
    feed = {"x": _data(case, 1, seed=7).reshape(case.sample)}
    assert _sqnr(_run(model, feed), _run(out, feed)) > 30.0


def test_lstm_read_through_y_h_only(tmp_path: Path) -> None:
    _, out, quantized = _convert(tmp_path, _CASES["lstm_bidirectional_y_h"], QuantMode.DYNAMIC)
    (node,) = quantized.graph.node
    assert node.output[1] == "y_h" and [o.name for o in quantized.graph.output] == ["y_h"]
    assert _run(out, {"x": np.ones((6, 3, 8), np.float32)}).shape == (2, 3, 16)


def test_reasons_say_which_form_and_why(tmp_path: Path) -> None:
    lstm = models.save(models.recurrent("LSTM"), tmp_path, "lstm.onnx")
    gru = models.save(models.recurrent("GRU"), tmp_path, "gru.onnx")
    einsum = models.save(models.einsum_constant(), tmp_path, "einsum.onnx")

    def reasons(path: Path, mode: QuantMode) -> dict[str, tuple[str, str]]:
        summary = inspect_model(path, QuantConfig(mode=mode))
        return {d.name: (d.role.value, d.reason) for d in summary.plan.decisions}

    role, reason = reasons(lstm, QuantMode.STATIC)["rnn"]
    assert role == "dynamic" and "DynamicQuantizeLSTM" in reason
    assert reasons(lstm, QuantMode.WEIGHT_ONLY)["rnn"][0] == "weight-only"
    role, reason = reasons(gru, QuantMode.DYNAMIC)["rnn"]
    assert role == "weight-only" and "no integer GRU kernel" in reason
    by_node = reasons(einsum, QuantMode.STATIC)
    assert by_node["heads"][0] == "weight-only" and "no integer Einsum kernel" in by_node["heads"][1]
    assert by_node["tiny"] == ("float", "float: 16 weights are too few for int8 to gain anything")


def test_lstm_with_a_computed_w_stores_only_r_and_runs_float(tmp_path: Path) -> None:
    proto = models.recurrent("LSTM")
    (w,) = [i for i in proto.graph.initializer if i.name == "rnn.W"]
    proto.graph.initializer.remove(w)
    proto.graph.input.append(
        onnx.helper.make_tensor_value_info("rnn.W", onnx.TensorProto.FLOAT, list(w.dims))
    )
    model = models.save(proto, tmp_path)
    out = tmp_path / "q.onnx"
    result = quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    (decision,) = result.report.plan.decisions
    assert decision.role.value == "weight-only" and "needs both W and R" in decision.reason
    assert [w.name for w in result.report.plan.weights] == ["rnn.R"]
    graph = onnx.load(out).graph
    assert Counter(n.op_type for n in graph.node) == {"LSTM": 1, "DequantizeLinear": 1}
    feed = {
        "x": np.random.default_rng(3).normal(0, 1, (6, 2, 8)).astype(np.float32),
        "rnn.W": onnx.numpy_helper.to_array(w),
    }
    assert _sqnr(_run(model, feed), _run(out, feed)) > 30.0


def test_per_tensor_lstm_scales_are_one_per_direction(tmp_path: Path) -> None:
    model = models.save(models.recurrent("LSTM", directions=2), tmp_path)
    out = tmp_path / "q.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC, per_channel=False))
    graph = onnx.load(out).graph
    initializers = {i.name: i for i in graph.initializer}
    (node,) = graph.node
    assert [list(initializers[node.input[i]].dims) for i in (8, 9, 10, 11)] == [[2]] * 4
    feed = {"x": np.random.default_rng(3).normal(0, 1, (6, 2, 8)).astype(np.float32)}
    assert _sqnr(_run(model, feed), _run(out, feed)) > 25.0


def test_small_recurrent_weights_stay_float(tmp_path: Path) -> None:
    # hidden 1: W has 4 x 1 x 8 = 32 values, R 4; below the size at which int8 gains anything.
    model = models.save(models.recurrent("LSTM", hidden=1), tmp_path)
    summary = inspect_model(model, QuantConfig(mode=QuantMode.DYNAMIC))
    (decision,) = summary.plan.decisions
    assert decision.role.value == "float" and "too few" in decision.reason
    assert not summary.plan.weights


@pytest.mark.parametrize(
    ("equation", "weight_shape", "becomes"),
    [
        ("bsd,dk->bsk", (4, 5), "MatMul"),
        ("bsd,kd->bsk", (5, 4), "MatMul"),
        ("...d,dk->...k", (4, 5), "MatMul"),
        ("bsd,dk->bks", (4, 5), "Einsum"),  # output axes reordered
        ("bsd,sk->bdk", (3, 5), "Einsum"),  # contracts a middle axis
        ("bsd,dd->bsd", (4, 4), "Einsum"),  # a diagonal, not a product
        ("bsd,dk", (4, 5), "Einsum"),  # implicit output: left alone
    ],
)
def test_einsum_matrix_products_become_matmul(
    equation: str, weight_shape: tuple[int, int], becomes: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.normal(0, 1, weight_shape).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Einsum", ["x", "w"], ["y"], name="e", equation=equation)],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    EinsumToMatMulPass()(model)
    rewritten = ir.serde.serialize_model(model)
    assert [n.op_type for n in rewritten.graph.node] == [becomes]
    assert [n.name for n in rewritten.graph.node] == ["e"]
    assert len(rewritten.graph.initializer) == 1
    feed = {"x": rng.normal(0, 1, (2, 3, 4)).astype(np.float32)}

    def run(m: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feed)[0]  # type: ignore[no-any-return]

    np.testing.assert_allclose(run(rewritten), run(proto), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", _MODES, ids=lambda m: m.value)
def test_recognizer_with_cnn_lstm_and_head(mode: QuantMode, tmp_path: Path) -> None:
    """The captcha-recognizer shape: no LSTM weight is left in float in any mode."""
    model = models.save(models.crnn(), tmp_path)
    rng = np.random.default_rng(1)
    data = tmp_path / "calib.npz"
    np.savez(data, image=rng.uniform(0, 1, (16, 1, 8, 24)).astype(np.float32))
    out = tmp_path / "q.onnx"
    result = quantize(
        model, out, config=QuantConfig(mode=mode), data=data if mode.needs_calibration else None
    )
    graph = onnx.load(out).graph
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 1}
    assert not floats & {"lstm.W", "lstm.R", "head.w"}
    ops = Counter(n.op_type for n in graph.node)
    assert ops["DynamicQuantizeLSTM" if mode is not QuantMode.WEIGHT_ONLY else "LSTM"] == 1
    if mode is QuantMode.STATIC:
        assert models.optimized_op_types(out, tmp_path).get("QLinearConv") == 1
    assert result.report.size.ratio > 3.0
    feed = {"image": rng.uniform(0, 1, (2, 1, 8, 24)).astype(np.float32)}
    assert _sqnr(_run(model, feed), _run(out, feed)) > 25.0


def test_lstm_keeps_sequence_lengths_initial_state_and_every_output(tmp_path: Path) -> None:
    proto = models.recurrent("LSTM", directions=2)
    node = proto.graph.node[0]
    node.input.extend(["lens", "h0", "c0"])
    del node.output[:]
    node.output.extend(["y", "y_h", "y_c"])
    make = onnx.helper.make_tensor_value_info
    proto.graph.input.extend(
        [
            make("lens", onnx.TensorProto.INT32, ["batch"]),
            make("h0", onnx.TensorProto.FLOAT, [2, "batch", 16]),
            make("c0", onnx.TensorProto.FLOAT, [2, "batch", 16]),
        ]
    )
    proto.graph.output.extend(
        [make("y_h", onnx.TensorProto.FLOAT, None), make("y_c", onnx.TensorProto.FLOAT, None)]
    )
    model = models.save(proto, tmp_path)
    out = tmp_path / "q.onnx"
    quantize(model, out, config=QuantConfig(mode=QuantMode.DYNAMIC))
    assert [n.op_type for n in onnx.load(out).graph.node] == ["DynamicQuantizeLSTM"]
    rng = np.random.default_rng(5)
    feed = {
        "x": rng.normal(0, 1, (6, 3, 8)).astype(np.float32),
        "lens": np.array([6, 2, 4], np.int32),
        "h0": rng.normal(0, 0.5, (2, 3, 16)).astype(np.float32),
        "c0": rng.normal(0, 0.5, (2, 3, 16)).astype(np.float32),
    }
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feed)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)
    assert len(got) == 3
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape and _sqnr(a, b) > 30.0
