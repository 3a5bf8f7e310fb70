"""Bias correction (quantcli.correction): the corrected Conv keeps the float model's output mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcli import QuantConfig, quantize
from quantcli.config import QuantMode, load_recipe
from quantcli.correction import ConvTerms, corrected_bias
from quantcli.scheme import dequantize, weight_qparams
from quantcli.scheme import quantize as quantize_array
from tests.models import _model, save


def pointwise_conv(groups: int = 1, seed: int = 0) -> onnx.ModelProto:
    """One 1x1 Conv (256 outputs, 16 inputs) whose output ``y`` has mean exactly W @ E[x] + b.

    One large weight per output channel makes its int8 step coarse, so rounding the others moves
    the channel's mean visibly. A second 1x1 Conv reads ``y`` (also a graph output), so in static
    mode the first one runs as an integer kernel (a Conv with no integer reader stays float).
    """
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (256, 16 // groups, 1, 1)).astype(np.float32)
    weight[:, 0, 0, 0] = 1.0
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=groups),
        helper.make_node("Conv", ["y", "w2"], ["z"], name="tail"),
    ]
    graph = helper.make_graph(
        nodes,
        "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 6, 6])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256, 6, 6]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8, 6, 6]),
        ],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(rng.normal(0, 0.1, 256).astype(np.float32), "b"),
            numpy_helper.from_array(rng.normal(0, 0.1, (8, 256, 1, 1)).astype(np.float32), "w2"),
        ],
    )
    return _model(graph)


def _data(n: int, seed: int) -> dict[str, np.ndarray]:
    # Inputs far from zero mean: the weight rounding error times the mean is the shift.
    rng = np.random.default_rng(seed)
    return {"x": (3.0 + rng.normal(0, 1.0, (n, 16, 6, 6))).astype(np.float32)}


def _mean_error(float_path: Path, quant_path: Path, data: dict[str, np.ndarray]) -> float:
    outputs = []
    for path in (float_path, quant_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, data)[0].astype(np.float64))
    return float(np.max(np.abs((outputs[1] - outputs[0]).mean(axis=(0, 2, 3)))))


@pytest.mark.parametrize("mode", [QuantMode.WEIGHT_ONLY, QuantMode.STATIC])
@pytest.mark.parametrize("groups", [1, 2])
def test_bias_correction_removes_the_mean_shift(tmp_path: Path, mode: QuantMode, groups: int) -> None:
    model = save(pointwise_conv(groups), tmp_path)
    calib, evaluation = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, **_data(64, seed=1))
    np.savez(evaluation, **_data(32, seed=2))
    errors = {}
    for corrected in (False, True):
        output = tmp_path / f"q_{corrected}.onnx"
        config = QuantConfig(mode=mode, bias_correction=corrected)
        quantize(model, output, config=config, data=calib, eval_data=evaluation)
        onnx.checker.check_model(onnx.load(str(output)), full_check=True)
        errors[corrected] = _mean_error(model, output, _data(32, seed=2))
    assert errors[False] > 1e-3  # the test would prove nothing without a visible shift
    # A 1x1 Conv without padding: the correction is exact up to the data's sampling noise and,
    # in static mode, the int32 bias step.
    assert errors[True] < errors[False] / 4


def test_corrected_bias_matches_a_direct_sum_with_groups() -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 1, (6, 2, 3, 3)).astype(np.float32)  # 3 groups of 2 inputs
    qparams = weight_qparams(weight, 0)
    quantized = dequantize(quantize_array(weight, qparams), qparams)
    mean, quantized_mean = rng.normal(0, 1, 6), rng.normal(0, 1, 6)
    bias = rng.normal(0, 1, 6).astype(np.float32)
    terms = ConvTerms("conv", "x", "b", weight, quantized, 3, None)
    expected = bias.astype(np.float64).copy()
    for o in range(6):
        for j in range(2):
            i = (o // 2) * 2 + j
            expected[o] -= quantized[o, j].sum() * quantized_mean[i] - weight[o, j].sum() * mean[i]
    got = corrected_bias(terms, bias, mean, quantized_mean)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bias_correction_is_a_recipe_key(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[defaults]\nbias_correction = true\n")
    assert load_recipe(recipe).defaults["bias_correction"] is True
