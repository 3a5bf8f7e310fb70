"""4-bit block-wise math: layout, RTN, GPTQ, AWQ, error measures and streamed statistics."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcli.blockwise import (
    GramObserver,
    awq,
    collect_input_statistics,
    gptq,
    layer_error,
    output_error,
    pack_nibbles,
    rtn,
    unpack_nibbles,
)
from quantcli.calibration.data import dataset_from_samples, model_inputs


def _layer(seed: int, *, outliers: bool) -> tuple[np.ndarray, np.ndarray]:
    """A weight [N, K] and activations [M, K] with correlated channels (and, optionally, four
    channels 20x larger than the rest, as transformers' outlier features)."""
    rng = np.random.default_rng(seed)
    k, n, m = 128, 48, 512
    weight = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
    activations = rng.standard_normal((m, k)) @ (rng.standard_normal((k, k)) * 0.3 + np.eye(k))
    if outliers:
        activations[:, rng.choice(k, 4, replace=False)] *= 20
    return weight, activations


def test_nibbles_are_packed_low_first_and_round_trip() -> None:
    codes = np.array([[1, 2, 15, 0, 7]], np.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F, 0x07]]
    assert unpack_nibbles(packed, 5).tolist() == codes.tolist()


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_error_is_at_most_half_a_step_and_zero_is_exact(symmetric: bool) -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((8, 40)).astype(np.float32)  # 40: the last block of 32 is partial
    weight[0, 3] = 0.0
    quantized = rtn(weight, 32, symmetric=symmetric)
    assert quantized.codes.shape == (8, 64) and quantized.scale.shape == (8, 2)
    step = np.abs(np.repeat(quantized.scale, 32, axis=1)[:, :40])
    error = np.abs(quantized.dequantize() - weight)
    # Symmetric blocks put their extremum on code 0 (scale = extremum / -8): a value of the other
    # sign more than 7.5 steps out saturates at code 15, off by at most one step.
    saturated = (quantized.codes[:, :40] == 15) & (np.abs(weight) > 7.5 * step) if symmetric else False
    assert np.all(error[~saturated] <= step[~saturated] / 2 * (1 + 1e-6))
    assert np.all(error <= step * (1 + 1e-6))
    assert quantized.dequantize()[0, 3] == 0.0
    assert np.all(quantized.codes[:, 40:] == quantized.zero_point[:, 1:])  # padding reads 0.0
    assert quantized.codes.min() == 0 and quantized.codes.max() == 15
    if symmetric:
        assert np.all(quantized.zero_point == 8)
        assert (quantized.scale < 0).any() and (quantized.scale > 0).any()  # either sign of extremum


def test_gptq_without_correlation_is_rtn() -> None:
    """With H = I no column's error can be compensated by another: GPTQ must round as RTN does."""
    weight, _ = _layer(0, outliers=False)
    identity = np.eye(weight.shape[1])
    for symmetric in (True, False):
        assert np.array_equal(
            gptq(weight, identity, 32, symmetric=symmetric).codes, rtn(weight, 32, symmetric=symmetric).codes
        )


def _with_rtn(
    seed: int, *, outliers: bool, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A layer (weight, activations), its H, and RTN's output error on it."""
    weight, activations = _layer(seed, outliers=outliers)
    hessian = activations.T @ activations
    plain = output_error(rtn(weight, 32, symmetric=symmetric).dequantize() - weight, hessian)
    return weight, activations, hessian, plain


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_output_error_is_below_rtn(seed: int, symmetric: bool) -> None:
    weight, _, hessian, plain = _with_rtn(seed, outliers=False, symmetric=symmetric)
    compensated = output_error(gptq(weight, hessian, 32, symmetric=symmetric).dequantize() - weight, hessian)
    # Measured 0.44-0.50 of RTN's on these layers.
    assert compensated < 0.7 * plain


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_awq_output_error_is_below_rtn_on_outlier_channels(seed: int, symmetric: bool) -> None:
    weight, activations, hessian, plain = _with_rtn(seed, outliers=True, symmetric=symmetric)
    alpha, (scaled,) = awq([weight], hessian, np.abs(activations).mean(axis=0), 32, symmetric=symmetric)
    assert 0 < alpha < 1 and scaled.input_scale is not None
    # Measured 0.20-0.34 of RTN's on these layers.
    assert output_error(scaled.dequantize() - weight, hessian) < 0.6 * plain
    # The float product is unchanged by the scaling: x W^T == (x / s) (W diag(s))^T.
    x = activations[:4].astype(np.float32)
    unscaled = (x / scaled.input_scale) @ (scaled.dequantized_codes()).T
    np.testing.assert_allclose(unscaled, x @ scaled.dequantize().T, rtol=1e-4, atol=1e-4)


def test_awq_scales_then_gptq_rounds_below_either_alone() -> None:
    weight, activations = _layer(3, outliers=True)
    hessian = activations.T @ activations
    mean_abs = np.abs(activations).mean(axis=0)

    def both(w: np.ndarray, s: np.ndarray | None):  # type: ignore[no-untyped-def]
        return gptq(w, hessian, 32, symmetric=True, input_scale=s)

    _, (scaled,) = awq([weight], hessian, mean_abs, 32, symmetric=True)
    _, (combined,) = awq([weight], hessian, mean_abs, 32, symmetric=True, rounder=both)
    alone = gptq(weight, hessian, 32, symmetric=True)
    error = {q: output_error(q.dequantize() - weight, hessian) for q in (scaled, combined, alone)}
    assert error[combined] < min(error[scaled], error[alone])


def test_layer_error_is_relative_and_zero_when_exact() -> None:
    weight, activations = _layer(0, outliers=False)
    hessian = activations.T @ activations
    exact = rtn(weight, 32, symmetric=True)
    assert layer_error(exact.dequantize(), exact, hessian).output == 0.0
    measured = layer_error(weight, exact, hessian)
    delta = exact.dequantize().astype(np.float64) - weight
    assert measured.weight == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(weight))
    outputs = activations @ weight.T.astype(np.float64)
    relative = np.sum((activations @ delta.T) ** 2) / np.sum(outputs**2)
    assert measured.output == pytest.approx(relative, rel=1e-9)
    assert 10 < measured.output_sqnr_db < 30


def test_gram_observer_streams_to_the_whole_sum() -> None:
    _, activations = _layer(0, outliers=False)
    observer = GramObserver(activations.shape[1])
    for start in range(0, len(activations), 100):
        observer.update(activations[start : start + 100].reshape(-1, 4, activations.shape[1]))
    stats = observer.result()
    np.testing.assert_allclose(stats.gram, activations.T @ activations, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.mean_abs, np.abs(activations).mean(axis=0), rtol=1e-12)
    assert stats.rows == len(activations)


def test_collect_input_statistics_observes_each_matmul_input() -> None:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 5)).astype(np.float32)
    w2 = rng.standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = rng.standard_normal((10, 6)).astype(np.float32)
    dataset = dataset_from_samples("memory", [{"x": x}], model_inputs(model))
    stats = collect_input_statistics(model, {"x": 6, "r": 5}, dataset, batch_size=4, budget=64)
    relu = np.maximum(x @ w1, 0).astype(np.float64)
    np.testing.assert_allclose(stats["x"].gram, x.T.astype(np.float64) @ x, rtol=1e-6)
    np.testing.assert_allclose(stats["r"].gram, relu.T @ relu, rtol=1e-5)
    assert stats["r"].rows == 10
