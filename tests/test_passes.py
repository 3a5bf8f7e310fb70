"""Passes on tiny models: what each changes, and that the result runs in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import optimized_op_types
from onnx import TensorProto, helper, numpy_helper

import quantcli.passes
from quantcli import Overrides
from quantcli.passes import (
    CorrectBiasesPass,
    EinsumToMatMulPass,
    GatherQuantizedRowsPass,
    InsertActivationQDQPass,
    QuantizeInitializersPass,
    QuantizeMatMulDynamicallyPass,
)
from quantcli.passes._base import MainGraphPass
from quantcli.plan import DynamicSpec
from quantcli.scheme import (
    QuantType,
    activation_qparams,
    block_params,
    dequantize,
    min_opset,
    quantize,
    weight_qparams,
)


def _matmul(weight: np.ndarray, opset: int) -> ir.Model:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return ir.from_proto(model)


def test_block_wise_int4_weight_runs_as_scheme_dequantizes() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(10, 3)).astype(np.float32)
    qparams = block_params(weight, QuantType.INT4, 4, 0, True)
    model = _matmul(weight, min_opset(QuantType.INT4, block_wise=True))
    result = QuantizeInitializersPass({"w": qparams})(model)
    assert result.modified
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    (dq,) = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 4}
    stored = {i.name: i for i in proto.graph.initializer}[dq.input[0]]
    assert stored.data_type == TensorProto.INT4
    x = rng.normal(size=(2, 10)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = x @ dequantize(quantize(weight, qparams), qparams)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_passes_report_modified_only_when_the_graph_changes() -> None:
    weight = np.ones((4, 3), np.float32)
    model = _matmul(weight, 13)
    assert not InsertActivationQDQPass({})(model).modified
    assert not EinsumToMatMulPass()(model).modified  # no Einsum to rewrite
    assert not CorrectBiasesPass({"w": weight.copy()})(model).modified  # the same values
    assert CorrectBiasesPass({"w": weight * 2})(model).modified
    qparams = activation_qparams(-1.0, 1.0, QuantType.UINT8)
    assert InsertActivationQDQPass({"x": qparams})(model).modified


def test_dynamic_matmul_requires_quantized_weights() -> None:
    model = _matmul(np.ones((4, 3), np.float32), 13)
    dynamic = QuantizeMatMulDynamicallyPass([DynamicSpec(output="y", input="x", weight="w")])
    with pytest.raises(ir.passes.PreconditionError, match="run QuantizeInitializersPass first"):
        dynamic(model)
    QuantizeInitializersPass({"w": weight_qparams(np.ones((4, 3), np.float32), 1)})(model)
    assert dynamic(model).modified
    assert [n.op_type for n in model.graph].count("MatMulInteger") == 1


def test_every_pass_says_how_it_treats_subgraphs() -> None:
    for name in quantcli.passes.__all__:
        pass_type = getattr(quantcli.passes, name)
        assert issubclass(pass_type, MainGraphPass), name
        assert pass_type.subgraphs.startswith(("skipped: ", "If branches")), name


def test_einsum_inside_a_subgraph_is_left_alone() -> None:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    einsum = helper.make_node("Einsum", ["x", "w"], ["y"], name="inner", equation="bd,dk->bk")
    body = helper.make_graph(
        [einsum], "body", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [weight]
    )
    branch = helper.make_node("If", ["c"], ["out"], name="if", then_branch=body, else_branch=body)
    graph = helper.make_graph(
        [branch],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert not EinsumToMatMulPass()(model).modified
    inner = [n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)]
    assert inner.count("Einsum") == 2


def test_initializers_pass_ensures_what_gather_requires() -> None:
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(table, "table")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    gather = GatherQuantizedRowsPass(["table"])
    with pytest.raises(ir.passes.PreconditionError):
        gather(model)  # the table is still float
    per_channel = ir.from_proto(ir.to_proto(model))
    assert QuantizeInitializersPass({"table": weight_qparams(table, 0)})(per_channel).modified
    with pytest.raises(ir.passes.PreconditionError, match="per tensor"):
        gather(per_channel)
    QuantizeInitializersPass({"table": weight_qparams(table, None)})(model)
    assert gather(model).modified
    (lookup,) = [n for n in model.graph if n.op_type == "Gather"]
    assert lookup.inputs[0] is not None and lookup.inputs[0].dtype == ir.DataType.INT8
    ids = np.array([3, 1], np.int64)
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"ids": ids})[0], table[ids], atol=0.05)


def test_stored_weights_drop_zero_zero_points_except_where_a_fusion_needs_them(tmp_path: Path) -> None:
    """digits_cnn static: its Conv weights and biases are written without their all-zero zero
    points (smaller), its Gemm head keeps them (onnxruntime fuses QGemm only with one), and
    onnxruntime still runs every Conv and the head as integer kernels."""
    sample = Path(__file__).resolve().parent.parent / "sample_models" / "digits_cnn"
    out = tmp_path / "q.onnx"
    quantcli.quantize(sample / "model.onnx", out, data=sample / "calib.npz", config=Overrides(mode="static"))
    graph = onnx.load(out).graph
    readers = {name: node.op_type for node in graph.node for name in node.input}
    weight_dqs = [
        node
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in {t.name for t in graph.initializer}
    ]
    by_reader = {(readers[node.output[0]], len(node.input)) for node in weight_dqs}
    assert by_reader == {("Conv", 2), ("Gemm", 3)}
    kernels = optimized_op_types(out, tmp_path)
    assert kernels.get("QLinearConv") == 4
    assert kernels.get("QGemm") == 1
