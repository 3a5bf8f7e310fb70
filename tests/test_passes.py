"""Passes on tiny models: what each changes, and that the result runs in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from quantcli.passes import QuantizeInitializersPass
from quantcli.scheme import QuantType, block_params, dequantize, min_opset, quantize


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
