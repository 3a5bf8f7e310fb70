"""Graph shapes found in the wild: each converts to a model that passes the full checker and runs."""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from quantcli import QuantConfig, quantize
from quantcli.cli.app import app
from quantcli.config import QuantMode

# These tests are about static mode's graphs; auto would build and time every mode.
STATIC = QuantConfig(mode=QuantMode.STATIC)

runner = CliRunner()
RNG = np.random.default_rng(0)
D = 64


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(0, 0.3, shape).astype(np.float32), name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    *,
    out: list[int | str],
    domains: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits
    )
    opsets = [helper.make_opsetid("", models.OPSET), *(helper.make_opsetid(d, v) for d, v in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _x(*dims: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))


def dynamic_batch_and_sequence() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return _model(nodes, [_x("batch", "seq", D)], [_w("w1", D, D), _w("w2", D, D)], out=["batch", "seq", D])


def _branch(name: str, weight: str) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("MatMul", ["h", weight], [f"{name}_out"], name=f"{name}_mm")],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
    )


def if_subgraphs() -> onnx.ModelProto:
    """A MatMul before an If whose branches use the same outer weight and one of their own."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="branch",
            then_branch=_branch("then", "w"),
            else_branch=_branch("else", "w_else"),
        ),
    ]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    return _model(nodes, [_x(1, D)], [_w("w", D, D), _w("w_else", D, D), zero], out=[1, D])


def loop_subgraph() -> onnx.ModelProto:
    """Three iterations of h = h @ w inside a Loop, after a MatMul outside it."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["h_in", "w"], ["h_out"], name="loop_mm"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, D]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, D]),
        ],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm"),
        helper.make_node("Loop", ["trips", "", "h"], ["y"], name="loop", body=body),
    ]
    trips = numpy_helper.from_array(np.array(3, np.int64), "trips")
    return _model(nodes, [_x(1, D)], [_w("w0", D, D), _w("w", D, D), trips], out=[1, D])


def scan_subgraph() -> onnx.ModelProto:
    """A Scan over the sequence axis with a MatMul in its body."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["row", "w"], ["proj"], name="scan_mm"),
            helper.make_node("Add", ["acc_in", "proj"], ["acc_out"], name="scan_add"),
        ],
        "body",
        [
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [D]),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, [D]),
        ],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [D])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm"),
        helper.make_node("Scan", ["acc0", "h"], ["y"], name="scan", body=body, num_scan_inputs=1),
    ]
    acc0 = numpy_helper.from_array(np.zeros(D, np.float32), "acc0")
    return _model(nodes, [_x("seq", D)], [_w("w0", D, D), _w("w", D, D), acc0], out=[D])


def microsoft_domain_op() -> onnx.ModelProto:
    """A custom-domain op onnxruntime knows (com.microsoft Gelu): left float, named in the report."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Gelu", ["h"], ["g"], name="ms_gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="mm2"),
    ]
    return _model(
        nodes,
        [_x("batch", D)],
        [_w("w1", D, D), _w("w2", D, D)],
        out=["batch", D],
        domains=(("com.microsoft", 1),),
    )


def duplicated_and_empty_names() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="same"),
        helper.make_node("Relu", ["h"], ["r"], name=""),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="same"),
        helper.make_node("Relu", ["m"], ["y"], name=""),
    ]
    return _model(nodes, [_x("batch", D)], [_w("w1", D, D), _w("w2", D, D)], out=["batch", D])


def initializer_listed_as_input() -> onnx.ModelProto:
    """IR 3 style: the weight is also a graph input (so a caller could override it)."""
    model = dynamic_batch_and_sequence()
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [D, D]))
    return model


SHAPES = {
    "dynamic-batch-and-sequence": (dynamic_batch_and_sequence, (5, 7, D)),
    "if": (if_subgraphs, (1, D)),
    "loop": (loop_subgraph, (1, D)),
    "scan": (scan_subgraph, (6, D)),
    "com.microsoft-op": (microsoft_domain_op, (4, D)),
    "duplicated-and-empty-names": (duplicated_and_empty_names, (4, D)),
    "initializer-listed-as-input": (initializer_listed_as_input, (5, 7, D)),
}


@pytest.mark.parametrize(("build", "shape"), SHAPES.values(), ids=SHAPES.keys())
def test_wild_graph_converts_to_a_valid_model(tmp_path: Path, build, shape: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.onnx"
    onnx.save(build(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=RNG.normal(0, 1, (8, *shape[1:])).astype(np.float32))
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = RNG.normal(0, 1, shape).astype(np.float32)
    got = session.run(None, {"x": x})[0]
    if build is duplicated_and_empty_names:  # onnxruntime refuses the original: names repeat
        assert got.shape == (shape[0], D)
        return
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = reference.run(None, {"x": x})[0]
    assert got.shape == want.shape
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98
    document = json.loads(result.stdout)
    assert sum(document["nodes"]["quantized_by_op"].values()) >= 1


def test_custom_domain_op_is_named_in_the_report(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    onnx.save(microsoft_domain_op(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=RNG.normal(0, 1, (8, D)).astype(np.float32))
    result = quantize(model, tmp_path / "q.onnx", data=data, config=STATIC)
    floats = {d["name"]: d["reason"] for d in result.report.to_dict()["nodes"]["float"]}
    assert "com.microsoft" in floats["ms_gelu"]
