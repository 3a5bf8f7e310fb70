"""Tiny models built in code with seeded weights, for tests. Each passes onnx.checker."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
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


def tiny_transformer(seed: int = 0, vocab: int = 20, d: int = 32, seq: int = 8) -> onnx.ModelProto:
    """Token embedding (Gather), one self-attention block, LayerNorm, mean-pool, classifier."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return rng.normal(0, scale, shape).astype(np.float32)

    inits = [
        _init("emb", w(vocab, d, scale=1.0)),
        _init("wq", w(d, d)),
        _init("wk", w(d, d)),
        _init("wv", w(d, d)),
        _init("bq", w(d, scale=0.1)),
        _init("wo", w(d, d)),
        _init("ln.g", np.ones(d, np.float32)),
        _init("ln.b", np.zeros(d, np.float32)),
        _init("cls", w(d, 4)),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q_proj"),
        helper.make_node("Add", ["q0", "bq"], ["q"], name="q_bias"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="attn_v"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["x", "o"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "ln.g", "ln.b"], ["h"], name="ln", axis=-1),
        helper.make_node("ReduceMean", ["h"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "cls"], ["logits"], name="classifier"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_transformer",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    return _model(graph)


def tiny_transformer_data(n: int, seed: int = 1, vocab: int = 20, seq: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, vocab, (n, seq)).astype(np.int64)}


def shared_weight_mlp(seed: int = 0) -> onnx.ModelProto:
    """One weight used by two MatMuls, and a custom-domain op between them."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w"], ["b"], name="mm2"),
        helper.make_node("Shape", ["b"], ["shape"], name="shape"),
        helper.make_node("Reshape", ["b", "shape"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "shared_weight_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [_init("w", w)],
    )
    return _model(graph)


def gemm_head(*, trans_b: int, alpha: float = 1.0, beta: float = 1.0) -> onnx.ModelProto:
    """Gemm(x, W, c) with the given transB/alpha/beta: what exporters emit for Linear layers."""
    rng = np.random.default_rng(3)
    k, n = 48, 24
    weight = rng.normal(0, 0.3, (n, k) if trans_b else (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=trans_b, alpha=alpha, beta=beta
            )
        ],
        "gemm_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [_init("w", weight), _init("c", rng.normal(0, 0.5, (n,)).astype(np.float32))],
    )
    return _model(graph)


def hard_swish_conv(channels: int = 32, *, tail_conv: bool = False) -> onnx.ModelProto:
    """Conv -> hard-swish written out (x * Clip(x + 3, 0, 6) / 6), as PaddlePaddle exports it;
    with ``tail_conv``, a 1x1 Conv after it (so the first Conv has an integer reader)."""
    rng = np.random.default_rng(2)
    last = "swish" if tail_conv else "y"
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "three"], ["shifted"], name="add3"),
        helper.make_node("Clip", ["shifted", "zero", "six"], ["gate"], name="clip"),
        helper.make_node("Mul", ["c", "gate"], ["scaled"], name="mul"),
        helper.make_node("Div", ["scaled", "six"], [last], name="div"),
    ]
    inits = [
        _init("w", rng.normal(0, 0.5, (channels, 8, 3, 3)).astype(np.float32)),
        _init("three", np.array(3.0, np.float32)),
        _init("zero", np.array(0.0, np.float32)),
        _init("six", np.array(6.0, np.float32)),
    ]
    if tail_conv:
        nodes.append(helper.make_node("Conv", [last, "w2"], ["y"], name="tail"))
        inits.append(_init("w2", rng.normal(0, 0.2, (channels, channels, 1, 1)).astype(np.float32)))
    graph = helper.make_graph(
        nodes,
        "hard_swish_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 6, 6])],
        inits,
    )
    return _model(graph)


def reduce_mean_classifier(channels: int = 32) -> onnx.ModelProto:
    """Conv -> Relu -> ReduceMean over H, W (keepdims=0) -> Gemm, as PyTorch exports x.mean((2, 3))."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["pooled"], name="mean", axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "reduce_mean_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [
            _init("w", rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32)),
            _init("fc", rng.normal(0, 0.3, (10, channels)).astype(np.float32)),
        ],
    )
    return _model(graph)


def single_conv(channels: int = 64) -> onnx.ModelProto:
    """One Conv whose output is the graph output."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")],
        "single_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, channels, 6, 6])],
        [_init("w", rng.normal(0, 1, (channels, 3, 3, 3)).astype(np.float32))],
    )
    return _model(graph)


def two_convs_middle_output(channels: int = 16) -> onnx.ModelProto:
    """conv1 -> c (a graph output, also read by conv2) -> conv2 -> y."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
            helper.make_node("Conv", ["c", "w2"], ["y"], name="conv2"),
        ],
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, channels, 6, 6]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 4, 4]),
        ],
        [
            _init("w1", rng.normal(0, 1, (channels, 3, 3, 3)).astype(np.float32)),
            _init("w2", rng.normal(0, 0.2, (channels, channels, 3, 3)).astype(np.float32)),
        ],
    )
    return _model(graph)


def custom_op_model() -> onnx.ModelProto:
    """A Conv followed by an op of an unknown custom domain (onnxruntime cannot run it)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("MyOp", ["c"], ["y"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_init("w", rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    return model


def optimized_op_types(path: Path, folder: Path) -> dict[str, int]:
    """Op types onnxruntime actually runs after its QDQ fusions."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(folder / "optimized.onnx")
    return dict(collections.Counter(n.op_type for n in optimized.graph.node))


def outlier_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul-Relu-MatMul-Relu-MatMul; with :func:`outlier_mlp_data` the first layer's input range
    is stretched by one huge calibration value, so quantizing that tensor ruins the output."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, (32, 64)).astype(np.float32)
    w1[0] = 0.0  # the outlier feature does not reach later layers' ranges
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [
            _init("w1", w1),
            _init("w2", rng.normal(0, 0.2, (64, 64)).astype(np.float32)),
            _init("w3", rng.normal(0, 0.2, (64, 10)).astype(np.float32)),
        ],
    )
    return _model(graph)


def outlier_mlp_data(n: int, seed: int = 1, outlier: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 32)).astype(np.float32)
    x[0, 0] = outlier or x[0, 0]
    return {"x": x}


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(
    op: str,
    *,
    directions: int = 1,
    size: int = 8,
    hidden: int = 16,
    seq: int = 6,
    hidden_only: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """One LSTM, GRU or RNN over x [seq, batch, size] with constant W, R and B; output Y, or only
    Y_h (Y omitted) with ``hidden_only``."""
    rng = np.random.default_rng(seed)
    gates = _GATES[op]
    d = directions
    inits = [
        _init("rnn.W", rng.normal(0, 0.3, (d, gates * hidden, size)).astype(np.float32)),
        _init("rnn.R", rng.normal(0, 0.3, (d, gates * hidden, hidden)).astype(np.float32)),
        _init("rnn.B", rng.normal(0, 0.1, (d, 2 * gates * hidden)).astype(np.float32)),
    ]
    direction = "bidirectional" if d == 2 else "forward"
    outputs = ["", "y_h"] if hidden_only else ["y"]
    node = helper.make_node(
        op, ["x", "rnn.W", "rnn.R", "rnn.B"], outputs, name="rnn", hidden_size=hidden, direction=direction
    )
    shape = [d, "batch", hidden] if hidden_only else [seq, d, "batch", hidden]
    graph = helper.make_graph(
        [node],
        f"tiny_{op.lower()}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", size])],
        [helper.make_tensor_value_info(outputs[-1], TensorProto.FLOAT, shape)],
        inits,
    )
    return _model(graph)


def stacked_lstms(size: int = 16, seq: int = 6, seed: int = 0) -> onnx.ModelProto:
    """Two LSTMs in a row sharing one W and one R (hidden = size), the second reading the
    first's Y squeezed to [seq, batch, hidden]."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("lstm.W", rng.normal(0, 0.3, (1, 4 * size, size)).astype(np.float32)),
        _init("lstm.R", rng.normal(0, 0.3, (1, 4 * size, size)).astype(np.float32)),
        _init("axis1", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "lstm.W", "lstm.R"], ["y1"], name="lstm1", hidden_size=size),
        helper.make_node("Squeeze", ["y1", "axis1"], ["h1"], name="squeeze"),
        helper.make_node("LSTM", ["h1", "lstm.W", "lstm.R"], ["y2"], name="lstm2", hidden_size=size),
    ]
    graph = helper.make_graph(
        nodes,
        "stacked_lstms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", size])],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [seq, 1, "batch", size])],
        inits,
    )
    return _model(graph)


def conv_transpose_upsampler(channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """ConvTranspose (stride 2) doubling an 8x8 map, then a Conv: a decoder's upsampling step."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("up.w", rng.normal(0, 0.2, (c, c // 2, 4, 4)).astype(np.float32)),
        _init("up.b", rng.normal(0, 0.1, (c // 2,)).astype(np.float32)),
        _init("conv.w", rng.normal(0, 0.2, (4, c // 2, 3, 3)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "up.w", "up.b"], ["up"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["up"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "conv.w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "upsampler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 16, 16])],
        inits,
    )
    return _model(graph)


def einsum_constant(d: int = 32, k: int = 48, seq: int = 5, seed: int = 0) -> onnx.ModelProto:
    """Einsum with constants: two projections (``bsd,dk->bsk``; ``bsk,jk->bsj``, transposed), a
    per-head one (``bshd,hde->bshe``, not a matrix product) and a tiny one (16 values)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("proj", rng.normal(0, 0.3, (d, k)).astype(np.float32)),
        _init("proj_t", rng.normal(0, 0.3, (24, k)).astype(np.float32)),
        _init("heads.shape", np.array([0, 0, 4, 6], np.int64)),
        _init("heads", rng.normal(0, 0.3, (4, 6, 16)).astype(np.float32)),
        _init("tiny", rng.normal(0, 0.3, (16, 1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Einsum", ["x", "proj"], ["p"], name="proj", equation="bsd,dk->bsk"),
        helper.make_node("Einsum", ["p", "proj_t"], ["q"], name="proj_t", equation="bsk, jk -> bsj"),
        helper.make_node("Reshape", ["q", "heads.shape"], ["q4"], name="split_heads"),
        helper.make_node("Einsum", ["q4", "heads"], ["h"], name="heads", equation="bshd,hde->bshe"),
        helper.make_node("Einsum", ["h", "tiny"], ["y"], name="tiny", equation="...e,ej->...j"),
    ]
    graph = helper.make_graph(
        nodes,
        "einsum_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, 4, 1])],
        inits,
    )
    return _model(graph)


def crnn(channels: int = 16, hidden: int = 16, classes: int = 40, seed: int = 0) -> onnx.ModelProto:
    """A text recognizer in miniature: Conv-Relu over a 1x8x24 image, the 24 columns as a
    sequence (Transpose/Reshape), a bidirectional LSTM, and a per-step MatMul class head."""
    rng = np.random.default_rng(seed)
    c, h = channels, hidden
    size = c * 8
    inits = [
        _init("conv.w", rng.normal(0, 0.3, (c, 1, 3, 3)).astype(np.float32)),
        _init("conv.b", rng.normal(0, 0.1, (c,)).astype(np.float32)),
        _init("seq.shape", np.array([24, -1, size], np.int64)),
        _init("lstm.W", rng.normal(0, 0.2, (2, 4 * h, size)).astype(np.float32)),
        _init("lstm.R", rng.normal(0, 0.2, (2, 4 * h, h)).astype(np.float32)),
        _init("lstm.B", rng.normal(0, 0.1, (2, 8 * h)).astype(np.float32)),
        _init("steps.shape", np.array([24, -1, 2 * h], np.int64)),
        _init("head.w", rng.normal(0, 0.3, (2 * h, classes)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["cols"], name="columns", perm=[3, 0, 1, 2]),
        helper.make_node("Reshape", ["cols", "seq.shape"], ["seq"], name="sequence"),
        helper.make_node(
            "LSTM",
            ["seq", "lstm.W", "lstm.R", "lstm.B"],
            ["y"],
            name="lstm",
            hidden_size=h,
            direction="bidirectional",
        ),
        helper.make_node("Transpose", ["y"], ["yt"], name="steps_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["yt", "steps.shape"], ["steps"], name="steps"),
        helper.make_node("MatMul", ["steps", "head.w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "crnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 24])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [24, "batch", classes])],
        inits,
    )
    return _model(graph)


def outlier_weights_mlp(seed: int = 0, d: int = 64) -> onnx.ModelProto:
    """MatMul "first" (plain weights) then MatMul "second", whose every block of 32 weights along
    the reduction axis holds one value 20 times the others' spread: at 4 bits the outlier takes
    the block's scale and the other values round to zero, at 8 bits (per channel) they survive."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.15, (d, d)).astype(np.float32)
    w2 = rng.normal(0, 0.15, (d, d)).astype(np.float32)
    w2[::32, :] = 3.0 * np.sign(rng.normal(size=(d // 32, d))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_weights_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d])],
        [_init("w1", w1), _init("w2", w2)],
    )
    return _model(graph)


def _conv_branch(prefix: str, rng: np.random.Generator, c: int, output: str, classes: int) -> onnx.GraphProto:
    """Conv-Relu-Conv-GlobalAveragePool-Flatten-MatMul on the outer value ``image``, its weights
    its own initializers."""
    inits = [
        _init(f"{prefix}.conv1.w", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
        _init(f"{prefix}.conv1.b", rng.normal(0, 0.1, (c,)).astype(np.float32)),
        _init(f"{prefix}.conv2.w", rng.normal(0, 0.1, (c, c, 3, 3)).astype(np.float32)),
        _init(f"{prefix}.fc.w", rng.normal(0, 0.3, (c, classes)).astype(np.float32)),
    ]
    p = prefix
    nodes = [
        helper.make_node(
            "Conv",
            ["image", f"{p}.conv1.w", f"{p}.conv1.b"],
            [f"{p}.c1"],
            name=f"{p}.conv1",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", [f"{p}.c1"], [f"{p}.r1"], name=f"{p}.relu1"),
        helper.make_node(
            "Conv", [f"{p}.r1", f"{p}.conv2.w"], [f"{p}.c2"], name=f"{p}.conv2", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", [f"{p}.c2"], [f"{p}.r2"], name=f"{p}.relu2"),
        helper.make_node("GlobalAveragePool", [f"{p}.r2"], [f"{p}.gap"], name=f"{p}.gap"),
        helper.make_node("Flatten", [f"{p}.gap"], [f"{p}.flat"], name=f"{p}.flatten"),
        helper.make_node("MatMul", [f"{p}.flat", f"{p}.fc.w"], [output], name=f"{p}.fc"),
    ]
    return helper.make_graph(
        nodes, f"{prefix}_branch", [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits
    )


def branchy_cnn(channels: int = 16, seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """A CNN classifier inside an If on the int64 input ``rate``: rate == 16 runs one network,
    any other rate another (the shape of silero-vad's graph, whose network sits in an If on
    the sample rate). Both branches read the main-graph input ``image``."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node(
            "Constant", [], ["sixteen"], name="sixteen", value=_init("v", np.array(16, np.int64))
        ),
        helper.make_node("Equal", ["rate", "sixteen"], ["is16"], name="is16"),
        helper.make_node(
            "If",
            ["is16"],
            ["logits"],
            name="by_rate",
            then_branch=_conv_branch("wide", rng, channels, "wide.logits", classes),
            else_branch=_conv_branch("narrow", rng, channels, "narrow.logits", classes),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy_cnn",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16]),
            helper.make_tensor_value_info("rate", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
    )
    return _model(graph)


def looped_matmul(d: int = 32, seed: int = 0) -> onnx.ModelProto:
    """A MatMul with a constant [d, d] weight applied ``steps`` times by a Loop."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("MatMul", ["carried", "loop.w"], ["product"], name="loop.matmul"),
            helper.make_node("Tanh", ["product"], ["carried_out"], name="loop.tanh"),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("step", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("Constant", [], ["steps"], name="steps", value=_init("s", np.array(3, np.int64))),
        helper.make_node("Constant", [], ["true"], name="true", value=_init("t", np.array(True))),
        helper.make_node("Loop", ["steps", "true", "x"], ["y"], name="loop", body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "looped_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d])],
        [_init("loop.w", rng.normal(0, 0.2, (d, d)).astype(np.float32))],
    )
    return _model(graph)


def _gate_reorder(prefix: str, h: int) -> tuple[list[TensorProto], list[onnx.NodeProto], str]:
    """Nodes computing an LSTM's W from the stored ``weight_ih`` [4h, size] as a hand-built graph
    of a PyTorch LSTM writes it: PyTorch's gate order (i, f, g, o) to ONNX's (i, o, f, c), rows
    [0:h], [3h:4h], [h:3h], then Unsqueeze. Returns (their constants, the nodes, W's name)."""
    p = f"{prefix}." if prefix else ""
    inits = [_init(f"{p}axes0", np.array([0], np.int64))]
    nodes = []
    for i, (start, end) in enumerate(((0, h), (3 * h, 4 * h), (h, 3 * h))):
        inits += [
            _init(f"{p}start{i}", np.array([start], np.int64)),
            _init(f"{p}end{i}", np.array([end], np.int64)),
        ]
        nodes.append(
            helper.make_node(
                "Slice",
                ["weight_ih", f"{p}start{i}", f"{p}end{i}", f"{p}axes0"],
                [f"{p}part{i}"],
                name=f"{p}slice{i}",
            )
        )
    nodes += [
        helper.make_node("Concat", [f"{p}part{i}" for i in range(3)], [f"{p}w2d"], name=f"{p}concat", axis=0),
        helper.make_node("Unsqueeze", [f"{p}w2d", f"{p}axes0"], [f"{p}W"], name=f"{p}unsqueeze"),
    ]
    return inits, nodes, f"{p}W"


def reordered_lstm(size: int = 8, hidden: int = 16, seq: int = 5, seed: int = 0) -> onnx.ModelProto:
    """An LSTM whose W is computed from a stored weight by Slice/Concat/Unsqueeze (gates
    reordered at run time, as a hand-built graph of a PyTorch LSTM writes it)."""
    rng = np.random.default_rng(seed)
    h = hidden
    constants, nodes, weight = _gate_reorder("", h)
    inits = [
        _init("weight_ih", rng.normal(0, 0.3, (4 * h, size)).astype(np.float32)),
        _init("lstm.R", rng.normal(0, 0.3, (1, 4 * h, h)).astype(np.float32)),
        *constants,
    ]
    nodes.append(helper.make_node("LSTM", ["x", weight, "lstm.R"], ["y"], name="lstm", hidden_size=h))
    graph = helper.make_graph(
        nodes,
        "reordered_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 1, "batch", h])],
        inits,
    )
    return _model(graph)


def _reordering_branch(prefix: str, h: int, output: str) -> onnx.GraphProto:
    """An LSTM over the outer ``x`` whose W is the outer ``weight_ih`` with its gates reordered here
    (constants of its own), R the outer ``lstm.R``."""
    inits, nodes, weight = _gate_reorder(prefix, h)
    nodes.append(
        helper.make_node("LSTM", ["x", weight, "lstm.R"], [output], name=f"{prefix}.lstm", hidden_size=h)
    )
    return helper.make_graph(
        nodes, f"{prefix}_branch", [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits
    )


def branchy_lstm(size: int = 32, hidden: int = 32, seq: int = 4, seed: int = 0) -> onnx.ModelProto:
    """An If on the int64 ``rate`` whose two branches each reorder the one stored LSTM weight
    alike and run an LSTM on it (silero-vad's decoder has this shape)."""
    rng = np.random.default_rng(seed)
    h = hidden
    inits = [
        _init("weight_ih", rng.normal(0, 0.3, (4 * h, size)).astype(np.float32)),
        _init("lstm.R", rng.normal(0, 0.3, (1, 4 * h, h)).astype(np.float32)),
        _init("sixteen", np.array(16, np.int64)),
    ]
    nodes = [
        helper.make_node("Equal", ["rate", "sixteen"], ["is16"], name="is16"),
        helper.make_node(
            "If",
            ["is16"],
            ["y"],
            name="by_rate",
            then_branch=_reordering_branch("a", h, "a.y"),
            else_branch=_reordering_branch("b", h, "b.y"),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy_lstm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", size]),
            helper.make_tensor_value_info("rate", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 1, "batch", h])],
        inits,
    )
    return _model(graph)
