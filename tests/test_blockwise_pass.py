"""Writing 4-bit block-wise weights: MatMulNBits and blocked DequantizeLinear run in onnxruntime
and compute exactly the dequantized math."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcli.blockwise import BlockQuantized, block_targets, rtn
from quantcli.errors import QuantizationError
from quantcli.passes.nbits import BlockForm, WriteBlockwiseWeightsPass

K, N = 72, 24  # K is not a multiple of the block sizes: the last block is partial


def _model(opset: int = 21) -> onnx.ModelProto:
    """Two MatMuls reading one input (attention's Q and K), and a Gemm with transB and a bias."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "wq"),
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "wk"),
        numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "wg"),
        numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bg"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("Gemm", ["v", "wg", "bg"], ["g"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, K]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", K]),
        ],
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 3, N]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", 3, N]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["batch", N]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _quantize(model: ir.Model, *, symmetric: bool, awq: bool) -> dict[str, BlockQuantized]:
    rng = np.random.default_rng(1)
    shared = rng.uniform(0.5, 2.0, K).astype(np.float32) if awq else None
    weights = {}
    for target in block_targets(model.graph):
        scale = shared if target.activation == "x" else None
        block = 16 if target.op_type == "Gemm" else 32
        weights[target.node] = rtn(target.rows(model.graph), block, symmetric=symmetric, input_scale=scale)
    return weights


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, optimize: bool) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


def test_targets_are_matmuls_and_gemms_on_constant_weights() -> None:
    model = ir.serde.deserialize_model(_model())
    targets = {t.node: t for t in block_targets(model.graph)}
    assert sorted(targets) == ["fc", "k_proj", "q_proj"]
    assert (targets["fc"].k, targets["fc"].n, targets["fc"].transposed) == (K, N, True)
    assert (targets["q_proj"].k, targets["q_proj"].n, targets["q_proj"].transposed) == (K, N, False)
    np.testing.assert_array_equal(
        targets["fc"].rows(model.graph), model.graph.initializers["wg"].const_value.numpy()
    )  # type: ignore[union-attr]


@pytest.mark.parametrize("form", list(BlockForm))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("awq", [False, True])
def test_written_model_runs_and_matches_the_dequantized_math(
    form: BlockForm, symmetric: bool, awq: bool
) -> None:
    model = ir.serde.deserialize_model(_model())
    weights = _quantize(model, symmetric=symmetric, awq=awq)
    # Symmetric blocks whose extremum is positive have a negative scale (extremum / -8): each
    # form must run those as the math says, not as |scale|.
    assert all((w.scale < 0).any() == symmetric for w in weights.values())
    # accuracy_level 0: float compute, so the kernel's result is the dequantized math's.
    result = WriteBlockwiseWeightsPass(weights, form=form, accuracy_level=0)(model)
    assert result.modified
    proto = ir.serde.serialize_model(result.model)
    if form is BlockForm.DEQUANTIZE_LINEAR:
        onnx.checker.check_model(proto, full_check=True)

    ops = [node.op_type for node in result.model.graph]
    if form is BlockForm.MATMUL_NBITS:
        assert ops.count("MatMulNBits") == 3 and "MatMul" not in ops and "Gemm" not in ops
        assert result.model.opset_imports["com.microsoft"] == 1
    else:
        assert ops.count("DequantizeLinear") == 3 and ops.count("MatMul") == 2 and ops.count("Gemm") == 1
    assert ops.count("Mul") == (1 if awq else 0)  # Q and K share one division of x
    assert not {"wq", "wk", "wg"} & set(result.model.graph.initializers)  # no float weight left
    float_bytes = 3 * K * N * 4
    stored = sum(v.const_value.nbytes for v in result.model.graph.initializers.values() if v.name != "bg")  # type: ignore[union-attr]
    assert stored < float_bytes / 4  # below int8, with partial blocks and float32 scales

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    v = rng.standard_normal((4, K)).astype(np.float32)
    bias = numpy_helper.to_array(next(i for i in _model().graph.initializer if i.name == "bg"))
    expected = [x @ weights["q_proj"].dequantize().T, x @ weights["k_proj"].dequantize().T]
    expected.append(v @ weights["fc"].dequantize().T + bias)
    for optimize in (False, True):
        if optimize and form is BlockForm.DEQUANTIZE_LINEAR:
            continue  # fused into MatMulNBits at the session's accuracy level: below
        for got, want in zip(_run(proto, {"x": x, "v": v}, optimize=optimize), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_dequantize_form_is_fused_into_the_same_kernel() -> None:
    """onnxruntime turns DequantizeLinear(int4, block) -> MatMul into MatMulNBits: close to the
    float math, not equal (its default accuracy level computes in int8); negative scales too."""
    model = ir.serde.deserialize_model(_model())
    weights = _quantize(model, symmetric=True, awq=False)
    assert (weights["q_proj"].scale < 0).any()
    proto = ir.serde.serialize_model(
        WriteBlockwiseWeightsPass(weights, form=BlockForm.DEQUANTIZE_LINEAR)(model).model
    )
    x = np.random.default_rng(3).standard_normal((2, 3, K)).astype(np.float32)
    v = np.zeros((1, K), np.float32)
    fused = _run(proto, {"x": x, "v": v}, optimize=True)[0]
    exact = x @ weights["q_proj"].dequantize().T
    cosine = np.sum(fused * exact) / (np.linalg.norm(fused) * np.linalg.norm(exact))
    assert cosine > 0.999


def test_dequantize_form_needs_opset_21() -> None:
    model = ir.serde.deserialize_model(_model(opset=17))
    weights = _quantize(model, symmetric=True, awq=False)
    with pytest.raises(QuantizationError, match="opset 21"):
        WriteBlockwiseWeightsPass(weights, form=BlockForm.DEQUANTIZE_LINEAR)(model)


def test_only_float_constant_weights_in_the_matmul_form_are_targets() -> None:
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "wt"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "y"], ["xy"], name="two_activations"),
        helper.make_node("Gemm", ["x", "w"], ["scaled"], name="alpha_gemm", alpha=0.5),
        helper.make_node("Gemm", ["x", "wt"], ["transposed_a"], name="trans_a_gemm", transA=1),
        helper.make_node("MatMul", ["x", "w"], ["plain"], name="plain"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, K]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [K, K]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("xy", "scaled", "plain")]
        + [helper.make_tensor_value_info("transposed_a", TensorProto.FLOAT, None)],
        inits,
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert [t.node for t in block_targets(model.graph)] == ["plain"]
    # The weight "w" is still read by the alpha Gemm: it stays, beside its 4-bit copy.
    weights = {"plain": rtn(block_targets(model.graph)[0].rows(model.graph), 32, symmetric=True)}
    WriteBlockwiseWeightsPass(weights)(model)
    assert "w" in model.graph.initializers
