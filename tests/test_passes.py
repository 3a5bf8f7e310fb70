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
from quantcli.config import QuantMode
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


def _conv_bn(
    *, bias: bool = True, training: int | None = None, reads: int = 1, ends: bool = False, tail: bool = False
) -> onnx.ModelProto:
    """x -> Conv(32->64, 3x3) -> BatchNormalization -> Relu -> y (``ends``: the BN's output is y;
    ``tail``: a 1x1 Conv after the Relu writes y)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * 0.1, "w")]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"))
        conv_inputs.append("b")
    for name, array in {
        "gamma": rng.uniform(0.5, 2.0, 64),
        "beta": rng.standard_normal(64),
        "mean": rng.standard_normal(64),
        "var": rng.uniform(0.1, 3.0, 64),
    }.items():
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
    bn_attrs = {"epsilon": 1e-3} if training is None else {"epsilon": 1e-3, "training_mode": training}
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn", **bn_attrs
        ),
    ]
    outputs = [helper.make_tensor_value_info("n" if ends else "y", TensorProto.FLOAT, [1, 64, 10, 10])]
    if tail:
        inits.append(
            numpy_helper.from_array(rng.standard_normal((64, 64, 1, 1)).astype(np.float32) * 0.1, "w2")
        )
        nodes += [
            helper.make_node("Relu", ["n"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="tail"),
        ]
    elif not ends:
        nodes.append(helper.make_node("Relu", ["n"], ["y"], name="relu"))
    if reads > 1:
        nodes.append(helper.make_node("Relu", ["c"], ["c2"], name="other"))
        outputs.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 64, 10, 10]))
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 10, 10])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ends", [False, True])
def test_batchnorm_after_conv_is_folded_into_its_weight_and_bias(bias: bool, ends: bool) -> None:
    proto = _conv_bn(bias=bias, ends=ends)
    model = ir.from_proto(proto)
    assert quantcli.passes.FoldBatchNormPass()(model).modified
    folded = ir.to_proto(model)
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["Conv"] if ends else ["Conv", "Relu"]
    assert [o.name for o in folded.graph.output] == [o.name for o in proto.graph.output]
    # The old weight, bias and the normalization's parameters are gone; the folded pair is stored.
    assert sorted(i.name for i in folded.graph.initializer) == ["conv_bias_bn_folded", "w_bn_folded"]
    x = np.random.default_rng(1).standard_normal((1, 32, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(proto, x)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["training", "conv output read twice", "negative variance"])
def test_batchnorm_is_left_alone_when_folding_would_change_the_model(case: str) -> None:
    proto = (
        _conv_bn(training=1) if case == "training" else _conv_bn(reads=2 if case.startswith("conv") else 1)
    )
    if case == "negative variance":  # the model computes NaN there; folding must not hide or spread it
        var = next(i for i in proto.graph.initializer if i.name == "var")
        var.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(var), "var"))
    model = ir.from_proto(proto)
    assert not quantcli.passes.FoldBatchNormPass()(model).modified
    assert "BatchNormalization" in [n.op_type for n in ir.to_proto(model).graph.node]


def test_quantized_conv_bn_model_runs_the_conv_in_integer_without_a_float_batchnorm(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_conv_bn(tail=True), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(2).standard_normal((16, 1, 32, 10, 10)).astype(np.float32))
    out = tmp_path / "q.onnx"
    quantcli.quantize(path, out, data=data, config=quantcli.QuantConfig(mode=QuantMode.STATIC))
    kernels = optimized_op_types(out, tmp_path)
    assert kernels.get("QLinearConv") == 1
    assert "BatchNormalization" not in kernels
