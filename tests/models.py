"""Tiny models built in code with seeded weights, for tests. Each passes onnx.checker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_cnn(seed: int = 0, channels: int = 16) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-Add(residual)-MaxPool-GlobalAveragePool-Flatten-Gemm classifier."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("conv1.w", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
        _init("conv1.b", rng.normal(0, 0.1, (c,)).astype(np.float32)),
        _init("conv2.w", rng.normal(0, 0.1, (c, c, 3, 3)).astype(np.float32)),
        _init("conv2.b", rng.normal(0, 0.1, (c,)).astype(np.float32)),
        _init("fc.w", rng.normal(0, 0.3, (10, c)).astype(np.float32)),
        _init("fc.b", rng.normal(0, 0.1, (10,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r1", "r2"], ["sum"], name="residual"),
        helper.make_node("MaxPool", ["sum"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _model(graph)


def tiny_cnn_data(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(0, 1, (n, 3, 16, 16)).astype(np.float32)}


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    onnx.save(model, path)
    return path
