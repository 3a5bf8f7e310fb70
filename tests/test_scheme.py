"""Properties of the quantization math, and agreement with onnxruntime's QuantizeLinear."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from quantcli.scheme import (
    QParams,
    QuantType,
    activation_qparams,
    bias_qparams,
    dequantize,
    quantize,
    weight_qparams,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
ranges = st.tuples(finite, finite).map(lambda pair: sorted(v + 0.0 for v in pair))  # -0.0 -> 0.0
act_types = st.sampled_from([QuantType.UINT8, QuantType.INT8])


@given(ranges, act_types, st.booleans())
def test_zero_point_in_range_and_zero_exact(bounds: list[float], dtype: QuantType, nonneg: bool) -> None:
    lo, hi = bounds
    if nonneg:
        lo, hi = max(lo, 0.0), max(hi, 0.0)
    qp = activation_qparams(lo, hi, dtype, nonnegative=nonneg)
    assert dtype.qmin <= int(qp.zero_point) <= dtype.qmax
    assert qp.scale > 0
    # 0.0 is represented exactly: padding and Relu outputs lose nothing.
    assert dequantize(quantize(np.zeros(1, np.float32), qp), qp)[0] == 0.0


@given(ranges, act_types, st.data())
def test_error_within_half_step_inside_range(
    bounds: list[float], dtype: QuantType, data: st.DataObject
) -> None:
    lo, hi = bounds
    qp = activation_qparams(lo, hi, dtype)
    x = np.array(data.draw(st.lists(st.floats(lo, hi, width=32), min_size=1, max_size=20)), np.float32)
    err = np.abs(dequantize(quantize(x, qp), qp) - x)
    # half a step, plus float32 rounding of x / scale
    assert np.all(err <= float(qp.scale) * 0.5 * (1 + 1e-5) + 1e-6 * np.abs(x))


@given(ranges, act_types)
def test_saturates_outside_range(bounds: list[float], dtype: QuantType) -> None:
    lo, hi = bounds
    qp = activation_qparams(lo, hi, dtype)
    far = np.array([min(lo, 0.0) - 1e6, max(hi, 0.0) + 1e6], np.float32)
    q = quantize(far, qp)
    assert q[0] == dtype.qmin or (dtype is QuantType.INT8 and q[0] == -127 - 1)
    assert q[1] == dtype.qmax


def test_nonnegative_int8_uses_full_range_from_minus_128() -> None:
    qp = activation_qparams(0.0, 6.0, QuantType.INT8, nonnegative=True)
    assert int(qp.zero_point) == -128
    assert quantize(np.array([-1.0, 0.0, 6.0], np.float32), qp).tolist() == [-128, -128, 127]


def test_round_half_to_even() -> None:
    qp = QParams(np.array(1.0, np.float32), np.array(0, np.int8), None, QuantType.INT8)
    assert quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32), qp).tolist() == [0, 2, 2, 0, -2]


@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=finite),
    st.sampled_from([0, 1, None]),
)
def test_weights_symmetric_per_channel(weight: np.ndarray, axis: int | None) -> None:
    qp = weight_qparams(weight, axis)
    assert np.all(qp.zero_point == 0)
    q = quantize(weight, qp)
    assert q.min() >= -127 and q.max() <= 127
    err = np.abs(dequantize(q, qp) - weight)
    scale = qp.scale if axis is None else np.expand_dims(qp.scale, 1 - axis)
    assert np.all(err <= scale * 0.5 * (1 + 1e-5) + 1e-6 * np.abs(weight))


def test_all_zero_channel_gets_a_usable_scale() -> None:
    weight = np.zeros((2, 3), np.float32)
    weight[1] = [1.0, -2.0, 0.5]
    qp = weight_qparams(weight, 0)
    assert qp.scale[0] > 0
    assert quantize(weight, qp)[0].tolist() == [0, 0, 0]


def test_bias_scale_is_input_times_weight_scale() -> None:
    wq = weight_qparams(np.array([[1.0, 2.0], [0.5, 0.25]], np.float32), 0)
    bq = bias_qparams(np.array(0.1, np.float32), wq)
    assert bq.dtype is QuantType.INT32 and bq.axis == 0
    np.testing.assert_allclose(bq.scale, 0.1 * wq.scale, rtol=1e-6)


def _onnxruntime_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    zp_type = {QuantType.UINT8: TensorProto.UINT8, QuantType.INT8: TensorProto.INT8}[qp.dtype]
    attrs = {} if qp.axis is None else {"axis": qp.axis}
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", zp_type, list(x.shape))],
        [numpy_helper.from_array(qp.scale, "s"), numpy_helper.from_array(qp.zero_point, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


@settings(max_examples=60, deadline=None)
@given(ranges, act_types, st.data())
def test_bit_exact_with_onnxruntime_per_tensor(
    bounds: list[float], dtype: QuantType, data: st.DataObject
) -> None:
    lo, hi = bounds
    qp = activation_qparams(lo, hi, dtype)
    span = float(np.float32(max(abs(lo), abs(hi), 1.0) * 1.5))
    x = data.draw(hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(-span, span, width=32)))
    np.testing.assert_array_equal(quantize(x, qp), _onnxruntime_quantize(x, qp))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=finite))
def test_bit_exact_with_onnxruntime_per_channel(weight: np.ndarray) -> None:
    qp = weight_qparams(weight, 0)
    np.testing.assert_array_equal(quantize(weight, qp), _onnxruntime_quantize(weight, qp))


def test_rejects_invalid_range() -> None:
    with pytest.raises(ValueError):
        activation_qparams(1.0, -1.0, QuantType.UINT8)
    with pytest.raises(ValueError):
        activation_qparams(float("nan"), 1.0, QuantType.UINT8)
