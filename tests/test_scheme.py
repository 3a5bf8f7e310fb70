"""Properties of the quantization math, and agreement with onnxruntime's QuantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
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
    block_params,
    dequantize,
    min_opset,
    quantize,
    weight_qparams,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
ranges = st.tuples(finite, finite).map(lambda pair: sorted(v + 0.0 for v in pair))  # -0.0 -> 0.0
# Every type an activation or weight may be stored as (int32 is for biases only).
act_types = st.sampled_from([t for t in QuantType if t is not QuantType.INT32])
eight_bit_types = st.sampled_from([QuantType.UINT8, QuantType.INT8])


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
@given(ranges, eight_bit_types, st.data())
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


def test_bit_width_and_signedness_come_from_the_type() -> None:
    expected = {
        QuantType.INT4: (-8, 7, 7, 0),
        QuantType.UINT4: (0, 15, 7, 8),
        QuantType.INT8: (-128, 127, 127, 0),
        QuantType.UINT8: (0, 255, 127, 128),
        QuantType.INT16: (-32768, 32767, 32767, 0),
        QuantType.UINT16: (0, 65535, 32767, 32768),
    }
    for dtype, (qmin, qmax, half, zero) in expected.items():
        assert (dtype.qmin, dtype.qmax, dtype.half_range, dtype.symmetric_zero_point) == (
            qmin,
            qmax,
            half,
            zero,
        )
        if dtype.bits >= 8:  # numpy holds 4-bit codes in 8-bit arrays
            info = np.iinfo(dtype.numpy_dtype)
            assert (info.min, info.max) == (qmin, qmax)


def test_min_opset_per_type() -> None:
    assert min_opset(QuantType.INT8) == min_opset(QuantType.UINT8) == 13
    assert min_opset(QuantType.INT4) == min_opset(QuantType.UINT4) == 21
    assert min_opset(QuantType.INT16) == min_opset(QuantType.UINT16) == 21
    assert min_opset(QuantType.INT8, block_wise=True) == 21


def _within_half_step(x: np.ndarray, qp: QParams) -> bool:
    """|dequantize(quantize(x)) - x| <= scale / 2 elementwise (plus float32 rounding of x / scale)."""
    back = dequantize(quantize(x, qp), qp)
    # Each element's scale: what one code next to its zero point is worth. Codes 0 and 1 would
    # do in exact arithmetic, but far from a zero point of 32768 float32 loses the difference.
    zero = quantize(np.zeros_like(x), qp).astype(np.int64)
    step = np.where(zero < qp.dtype.qmax, 1, -1)
    scale = dequantize(zero + step, qp) - dequantize(zero, qp)
    return bool(np.all(np.abs(back - x) <= np.abs(scale) * 0.5 * (1 + 1e-5) + 1e-6 * np.abs(x)))


weights = hnp.arrays(np.float32, st.tuples(st.integers(1, 7), st.integers(1, 9)), elements=finite)


@given(weights, act_types, st.sampled_from([0, 1, None]), st.booleans())
def test_weights_symmetric_for_every_type(
    weight: np.ndarray, dtype: QuantType, axis: int | None, mse: bool
) -> None:
    qp = weight_qparams(weight, axis, minimize_mse=mse, dtype=dtype)
    assert qp.dtype is dtype and np.all(qp.zero_point == dtype.symmetric_zero_point)
    q = quantize(weight, qp).astype(np.int64)
    assert np.all(dequantize(quantize(np.zeros_like(weight), qp), qp) == 0.0)
    assert q.min() >= dtype.qmin and q.max() <= dtype.qmax
    if not mse:  # the mse search clips on purpose: its clipped values saturate
        zero = dtype.symmetric_zero_point
        assert q.min() >= zero - dtype.half_range and q.max() <= zero + dtype.half_range
        assert _within_half_step(weight, qp)


@given(weights, act_types, st.integers(1, 5), st.sampled_from([0, 1, -1]), st.booleans())
def test_block_params(weight: np.ndarray, dtype: QuantType, block: int, axis: int, symmetric: bool) -> None:
    qp = block_params(weight, dtype, block, axis, symmetric)
    along = axis % weight.ndim
    expected = list(weight.shape)
    expected[along] = -(-weight.shape[along] // block)
    assert qp.block_size == block and qp.axis == along
    assert list(qp.scale.shape) == expected == list(qp.zero_point.shape)
    assert np.all((qp.zero_point >= dtype.qmin) & (qp.zero_point <= dtype.qmax))
    q = quantize(weight, qp).astype(np.int64)
    assert q.shape == weight.shape and q.min() >= dtype.qmin and q.max() <= dtype.qmax
    # 0.0 is exact in every block.
    assert np.all(dequantize(quantize(np.zeros_like(weight), qp), qp) == 0.0)
    if not symmetric:
        assert np.all(qp.scale > 0) and _within_half_step(weight, qp)
        return
    # Symmetric: all 2^bits codes. Each block's step is its largest magnitude over 2^(bits-1)
    # (8 for 4 bits, not the 7 of half_range), with the sign that puts the block's extremum on
    # the lowest code; only values of the other sign past half_range steps saturate, by at most
    # one step.
    assert np.all(qp.zero_point == dtype.symmetric_zero_point)
    moved, codes = np.moveaxis(weight, along, -1), np.moveaxis(q, along, -1)
    step = np.moveaxis(np.repeat(qp.scale, block, axis=along), along, -1)[..., : moved.shape[-1]]
    largest = _block_max(np.abs(moved), block)
    lowest = 1 << (dtype.bits - 1)
    large = largest / np.float32(lowest) >= 1e-12  # below that, the smallest scale
    np.testing.assert_array_equal(np.abs(step)[large], (largest / np.float32(lowest))[large])
    on_lowest = large & (np.abs(moved) == largest) & (np.sign(moved) == -np.sign(step))
    assert np.all(codes[on_lowest] == dtype.qmin)
    assert np.all(_block_max(on_lowest, block)[large])  # in every block
    back = np.moveaxis(dequantize(quantize(weight, qp), qp), along, -1)
    error = np.abs(back - moved)
    tolerance = 1e-5 * np.abs(step) + 1e-6 * np.abs(moved)
    inside = moved.astype(np.float64) / step <= dtype.half_range + 0.5
    assert np.all(error[inside] <= (np.abs(step) * 0.5 + tolerance)[inside])
    assert np.all(error <= np.abs(step) + tolerance)


def _block_max(values: np.ndarray, block: int) -> np.ndarray:
    """Each element's block's largest value (non-negative or bool values; blocks of ``block``
    along the last axis)."""
    count = -(-values.shape[-1] // block)
    padding = [(0, 0)] * (values.ndim - 1) + [(0, count * block - values.shape[-1])]
    blocks = np.pad(values, padding).reshape(*values.shape[:-1], count, block)
    largest = np.repeat(blocks.max(axis=-1), block, axis=-1)
    return largest[..., : values.shape[-1]]


def test_block_params_scale_each_block_alone() -> None:
    # Blocks of 2 rows: a large column does not coarsen its neighbour, nor its own other block.
    # Each block's extremum lands on code -8: the scale is extremum / -8, negative for a
    # positive extremum. 0.4375 / -0.875 = -0.5 rounds to even (0).
    weight = np.array([[1.0, 100.0], [-7.0, 100.0], [7.0, 1.0], [0.4375, -3.5]], np.float32)
    qp = block_params(weight, QuantType.INT4, 2, 0, True)
    np.testing.assert_array_equal(qp.scale, np.array([[0.875, -12.5], [-0.875, 0.4375]], np.float32))
    assert quantize(weight, qp).tolist() == [[1, -8], [-8, -8], [-8, 2], [0, -8]]


def test_symmetric_blocks_use_all_sixteen_codes() -> None:
    # A block spread evenly over [-1, 1]: 16 distinct codes (15 with a step of max / 7), and a
    # step of max / 8, so no weight is off by more than 1/16 (the +1 saturates one step short).
    weight = np.linspace(-1.0, 1.0, 32, dtype=np.float32)[np.newaxis, :]
    for qtype in (QuantType.UINT4, QuantType.INT4):
        qp = block_params(weight, qtype, 32, 1, True)
        codes = quantize(weight, qp)
        assert sorted(set(codes.ravel().tolist())) == list(range(qtype.qmin, qtype.qmax + 1))
        assert float(qp.scale[0, 0]) == 1 / 8  # the extremum -1 (the first of two) on the lowest code
        error = np.abs(dequantize(codes, qp) - weight)
        assert error.max() == np.float32(1 / 8) and np.all(error[0, :-1] <= 1 / 16 + 1e-7)
    zero = block_params(np.zeros((1, 4), np.float32), QuantType.UINT4, 4, 1, True)
    assert float(zero.scale[0, 0]) > 0  # an all-zero block: the smallest positive scale


def test_block_params_rejects_bad_blocks() -> None:
    with pytest.raises(ValueError):
        block_params(np.ones((4, 4), np.float32), QuantType.INT4, 0, 0, True)
    with pytest.raises(ValueError):
        block_params(np.ones((4, 4), np.float32), QuantType.INT32, 2, 0, True)


def _onnxruntime_round_trip(x: np.ndarray, qp: QParams) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear through onnxruntime at opset 21 (its Python API cannot
    return 4-bit tensors, so the codes are compared through their dequantized values)."""
    attrs = {} if qp.axis is None else {"axis": qp.axis}
    if qp.block_size is not None:
        attrs["block_size"] = qp.block_size
    ir_types = {
        QuantType.INT4: ir.DataType.INT4,
        QuantType.UINT4: ir.DataType.UINT4,
        QuantType.INT8: ir.DataType.INT8,
        QuantType.UINT8: ir.DataType.UINT8,
        QuantType.INT16: ir.DataType.INT16,
        QuantType.UINT16: ir.DataType.UINT16,
    }
    zero_point = ir.serde.serialize_tensor(ir.tensor(qp.zero_point, dtype=ir_types[qp.dtype], name="z"))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(qp.scale, "s"), zero_point],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the pair
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


@settings(max_examples=40, deadline=None)
@given(weights, act_types, st.integers(1, 4), st.booleans(), st.data())
def test_bit_exact_with_onnxruntime_every_type(
    weight: np.ndarray, dtype: QuantType, block: int, symmetric: bool, data: st.DataObject
) -> None:
    lo, hi = float(weight.min()), float(weight.max())
    choices = [
        activation_qparams(lo, hi, dtype),
        weight_qparams(weight, 1, dtype=dtype),
        block_params(weight, dtype, block, 0, symmetric),
    ]
    qp = choices[data.draw(st.integers(0, 2))]
    # Beyond the range too: saturation must agree.
    x = (weight * np.float32(1.5)).astype(np.float32)
    np.testing.assert_array_equal(dequantize(quantize(x, qp), qp), _onnxruntime_round_trip(x, qp))
