"""The cost model: work per kernel, profiling what onnxruntime runs, and predictions that do not
depend on the machine's load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import models
import numpy as np
import pytest

from quantcli import QuantConfig, quantize
from quantcli.config import QuantMode
from quantcli.cost import INTEGER_KERNELS, Kernel, default_cost_model, kernel_work, profile_kernels


def test_work_of_convolution_matmul_recurrent_and_elementwise_kernels() -> None:
    # 3x3 conv, 8 -> 16 channels, 10x10 output: 16*10*10 outputs x 8*3*3 MACs each.
    conv = Kernel(
        "QLinearConv", ((1, 8, 10, 10),), ((1, 16, 10, 10),), source_op="Conv", weights=(None, (16, 8, 3, 3))
    )
    assert kernel_work(conv) == (1600 * 72, True)
    matmul = Kernel(
        "DynamicQuantizeMatMul", ((4, 32),), ((4, 64),), source_op="MatMul", weights=(None, (32, 64))
    )
    assert kernel_work(matmul) == (4 * 64 * 32, True)
    lstm = Kernel(
        "LSTM", ((7, 2, 16),), ((7, 1, 2, 8),), source_op="LSTM", weights=(None, (1, 32, 16), (1, 32, 8))
    )
    assert kernel_work(lstm) == (7 * 2 * (32 * 16 + 32 * 8), True)
    add = Kernel("Add", ((1, 16, 10, 10), (1, 16, 10, 10)), ((1, 16, 10, 10),))
    assert kernel_work(add) == (1600, False)
    # A renamed (layout-transformed) float conv has no source node but lists its weight.
    nchwc = Kernel("Conv", ((1, 8, 10, 10), (16, 8, 3, 3), (16,)), ((1, 16, 10, 10),))
    assert kernel_work(nchwc) == (1600 * 72, True)


@pytest.fixture(scope="module")
def cnn_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cost")
    model = models.save(models.tiny_cnn(channels=32), folder)
    data = folder / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(24))
    variants = {"float": model}
    for mode in (QuantMode.STATIC, QuantMode.WEIGHT_ONLY):
        out = folder / f"{mode.value}.onnx"
        quantize(model, out, config=QuantConfig(mode=mode), data=data)
        variants[mode.value] = out
    return variants


def _feed() -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in models.tiny_cnn_data(1).items()}


def test_profile_sees_the_kernels_onnxruntime_fused(cnn_variants: dict[str, Path]) -> None:
    static = profile_kernels(cnn_variants["static"], _feed())
    float_kernels = profile_kernels(cnn_variants["float"], _feed())
    assert "QLinearConv" in {k.op_type for k in static}
    assert not {k.op_type for k in float_kernels} & INTEGER_KERNELS
    # The float and the static model do the same multiply-accumulates, in different kernels.
    float_macs = sum(w for w, mac in map(kernel_work, float_kernels) if mac)
    static_macs = sum(w for w, mac in map(kernel_work, static) if mac)
    assert float_macs == static_macs > 0
    model = default_cost_model()
    assert model.predict(static).integer_mac_share == 1.0
    assert model.predict(float_kernels).integer_mac_share == 0.0


def test_weight_only_convs_are_costed_as_float_kernels_fed_a_dequantized_weight(
    cnn_variants: dict[str, Path],
) -> None:
    kernels = profile_kernels(cnn_variants["weight-only"], _feed())
    convs = [k for k in kernels if kernel_work(k)[1]]
    assert convs and all(k.op_type not in INTEGER_KERNELS for k in convs)
    assert any(k.cost_key.endswith("/dq-weight") for k in convs)
    assert default_cost_model().predict(kernels).integer_mac_share == 0.0


def test_prediction_ignores_measured_durations(cnn_variants: dict[str, Path]) -> None:
    """The profiler's durations vary with machine load; the prediction must not."""
    kernels = profile_kernels(cnn_variants["static"], _feed(), runs=3)
    slowed = tuple(replace(k, duration_us=k.duration_us * 10 + 1000) for k in kernels)
    model = default_cost_model()
    assert model.predict(kernels) == model.predict(slowed)
    assert model.predict(kernels).ms > 0


def test_the_shipped_table_covers_the_kernels_quantized_models_run() -> None:
    table = default_cost_model().ns_per_unit
    kernels = ("QLinearConv", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeMatMul", "Conv", "MatMul")
    for key in kernels:
        assert table.get(key, 0.0) > 0.0, key
    # An integer conv does a multiply-accumulate in less time than a float one on this CPU.
    assert table["QLinearConv"] < table["Conv"]
