"""Ops that carry a large weight outside Conv/MatMul/Gemm: what each quantized form costs and saves.

Run: `make bench-large-weights` (or `.venv/bin/python bench/large_weight_ops.py`). Builds tiny but
realistically sized models in memory (an LSTM with hidden 256 over 40 steps, one and two
directions, and one with 1,024 input features, a recognizer's 2.1M-value W; a GRU and an RNN
alike; a ConvTranspose upsampler; an Einsum projection with a constant; an embedding Gather),
converts each with quantcli in static, dynamic and weight-only mode, and measures size ratio
(float bytes / quantized bytes), output SQNR and cosine against float, and onnxruntime latency on
1 thread, float and every quantized form timed in interleaved rounds in one process.
Writes the `large_weight_ops` section of bench/RESULTS.md.

These figures decide the op rules in quantcli/target.py: an LSTM runs as DynamicQuantizeLSTM (the
only integer kernel onnxruntime's CPU provider has for these ops) because it is faster than the
float LSTM; the others have no integer kernel, so int8 storage behind a DequantizeLinear is the
only form, and its latency cost is what the table shows.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _results import machine, write_section
from onnx import TensorProto, helper, numpy_helper

from quantcli import QuantConfig, quantize
from quantcli.config import QuantMode

ROUNDS = 40  # interleaved timing rounds
REPEATS = 5  # runs per round; a round's time is their mean
SAMPLES = 8  # inputs the SQNR and cosine are measured on
MODES = (QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)
SEQ, HIDDEN, FEATURES = 40, 256, 256
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(
    name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], inits: dict[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def recurrent(
    op: str, directions: int, features: int = FEATURES
) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    rng = np.random.default_rng(0)
    g, d = GATES[op], directions
    scale = 1 / np.sqrt(HIDDEN)
    inits = {
        "W": rng.uniform(-scale, scale, (d, g * HIDDEN, features)).astype(np.float32),
        "R": rng.uniform(-scale, scale, (d, g * HIDDEN, HIDDEN)).astype(np.float32),
        "B": rng.uniform(-scale, scale, (d, 2 * g * HIDDEN)).astype(np.float32),
    }
    direction = "bidirectional" if d == 2 else "forward"
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y"], hidden_size=HIDDEN, direction=direction)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, 1, features])
    return _model(f"{op}_{d}", [node], [x], inits), {"x": (SEQ, 1, features)}


def upsampler() -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """A decoder's upsampling step: ConvTranspose 128 -> 64 channels, kernel 4, stride 2, 32x32 -> 64x64."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.normal(0, 0.05, (128, 64, 4, 4)).astype(np.float32),
        "b": rng.normal(0, 0.05, (64,)).astype(np.float32),
    }
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128, 32, 32])
    return _model("upsampler", [node], [x], inits), {"x": (1, 128, 32, 32)}


def einsum() -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """A projection written as Einsum: [1, 64, 512] x constant [512, 2048]."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(0, 0.04, (512, 2048)).astype(np.float32)}
    node = helper.make_node("Einsum", ["x", "w"], ["y"], equation="bsd,dk->bsk")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 512])
    return _model("einsum", [node], [x], inits), {"x": (1, 64, 512)}


def embedding() -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """An 8,192 x 256 embedding table read by Gather for 64 token ids, then a Tanh."""
    rng = np.random.default_rng(0)
    inits = {"table": rng.normal(0, 0.5, (8192, 256)).astype(np.float32)}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Tanh", ["rows"], ["y"]),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 64])
    return _model("embedding", nodes, [ids], inits), {"ids": (1, 64)}


MODELS: dict[str, Callable[[], tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]]] = {
    "LSTM h256 x40": lambda: recurrent("LSTM", 1),
    "LSTM bidirectional h256 x40": lambda: recurrent("LSTM", 2),
    # A recognizer's: 1,024 features per column, W of 2.1M values.
    "LSTM bidirectional in1024 h256 x40": lambda: recurrent("LSTM", 2, features=1024),
    "GRU h256 x40": lambda: recurrent("GRU", 1),
    "RNN h256 x40": lambda: recurrent("RNN", 1),
    "ConvTranspose 128->64 4x4/2": upsampler,
    "Einsum 512x2048 const": einsum,
    "Gather 8192x256 table": embedding,
}


def _feeds(shapes: dict[str, tuple[int, ...]], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            k: rng.integers(0, 8192, s).astype(np.int64)
            if k == "ids"
            else rng.normal(0, 1, s).astype(np.float32)
            for k, s in shapes.items()
        }
        for _ in range(n)
    ]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _fidelity(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    a = np.concatenate([r.reshape(-1) for r in ref]).astype(np.float64)
    b = np.concatenate([g.reshape(-1) for g in got]).astype(np.float64)
    sqnr = 10 * np.log10(np.sum(a**2) / max(np.sum((a - b) ** 2), 1e-30))
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(sqnr), float(cosine)


def _latencies(sessions: dict[str, ort.InferenceSession], feed: dict[str, np.ndarray]) -> dict[str, float]:
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    for round_index in range(ROUNDS):
        for name in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(REPEATS):
                sessions[name].run(None, feed)
            times[name].append((time.perf_counter() - start) / REPEATS)
    # The median is what a run takes; the fastest round is what the kernel costs when nothing else
    # on the (shared) machine gets in the way. Both are reported.
    return {k: 1000 * statistics.median(v) for k, v in times.items()} | {
        f"{k}:min": 1000 * min(v) for k, v in times.items()
    }


def _form(path: Path) -> str:
    """The ops onnxruntime runs after its graph optimizations (QDQ and dynamic-MatMul fusions;
    extended level, so no hardware-specific layout ops), e.g. 'DynamicQuantizeLSTM' or
    'DequantizeLinear x2 + LSTM'."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    optimized = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(optimized).graph.node)
    dq = ops.pop("DequantizeLinear", 0)
    body = ", ".join(sorted(ops))
    return f"DequantizeLinear x{dq} + {body}" if dq else body


def bench_model(name: str, work: Path) -> list[dict[str, object]]:
    proto, shapes = MODELS[name]()
    folder = work / name.replace(" ", "_").replace(">", "").replace("/", "_")
    folder.mkdir()
    model = folder / "float.onnx"
    onnx.save(proto, model)
    data = folder / "calib"  # one ready-to-feed sample per file
    data.mkdir()
    for index, feed in enumerate(_feeds(shapes, 16, seed=1)):
        np.savez(data / f"{index:02d}.npz", **feed)
    paths = {"float": model}
    for mode in MODES:
        out = folder / f"{mode.value}.onnx"
        quantize(model, out, config=QuantConfig(mode=mode), data=data if mode.needs_calibration else None)
        paths[mode.value] = out
    sessions = {k: _session(p) for k, p in paths.items()}
    feeds = _feeds(shapes, SAMPLES, seed=7)
    reference = [sessions["float"].run(None, f)[0] for f in feeds]
    latency = _latencies(sessions, feeds[0])
    rows = []
    for key, path in paths.items():
        sqnr, cosine = _fidelity(reference, [sessions[key].run(None, f)[0] for f in feeds])
        rows.append(
            {
                "model": name,
                "mode": key,
                "form": _form(path),
                "bytes": path.stat().st_size,
                "size_ratio": model.stat().st_size / path.stat().st_size,
                "sqnr_db": sqnr if key != "float" else None,
                "cosine": cosine,
                "latency_ms": latency[key],
                "latency_vs_float": latency[key] / latency["float"],
                "fastest_ms": latency[f"{key}:min"],
                "fastest_vs_float": latency[f"{key}:min"] / latency["float:min"],
            }
        )
    return rows


def _markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "## Large-weight ops: quantized forms (`make bench-large-weights`, bench/large_weight_ops.py)",
        "",
        f"Made by bench/large_weight_ops.py with {machine()}. Models built in the script;",
        "input random normal (token ids uniform). Latency: median of "
        f"{ROUNDS} interleaved rounds of {REPEATS} runs, 1 thread (and the fastest round);",
        f"SQNR and cosine over {SAMPLES} inputs against float. Size ratio = float bytes / quantized bytes.",
        "",
        "| model | mode | form onnxruntime runs | size ratio | SQNR dB | cosine | ms | vs float "
        "| fastest ms | vs float |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sqnr = "" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['form']} | {r['size_ratio']:.2f} | {sqnr} "
            f"| {r['cosine']:.5f} | {r['latency_ms']:.3f} | {r['latency_vs_float']:.2f} "
            f"| {r['fastest_ms']:.3f} | {r['fastest_vs_float']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            rows += bench_model(name, Path(tmp))
            print(f"{name}: done", flush=True)
    print(write_section("large_weight_ops", _markdown(rows), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
