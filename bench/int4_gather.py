"""Which 4-bit Gather form onnxruntime's CPU provider runs faster, on a table of MiniLM-L6's shape.

    python bench/int4_gather.py

com.microsoft GatherBlockQuantized (packed uint4 rows, per-block scales) against a blocked
DequantizeLinear (int4, opset 21) feeding a Gather: 30522 x 384 at block 32, 128 indices,
1 thread, median of 15 interleaved runs. Prints both medians and checks they give the same
values. quantcli.passes.tables writes the faster one.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROWS, WIDTH, BLOCK, TOKENS, ROUNDS = 30522, 384, 32, 128, 15


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _models(codes: np.ndarray, scale: np.ndarray) -> dict[str, onnx.ModelProto]:
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    inputs = [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, TOKENS])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    gbq = helper.make_node(
        "GatherBlockQuantized",
        ["data", "idx", "s"],
        ["y"],
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=BLOCK,
        bits=4,
    )
    first = helper.make_graph(
        [gbq],
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(packed, "data"), numpy_helper.from_array(scale, "s")],
    )
    signed = (codes.astype(np.int8) - 8).flatten().tolist()
    table = helper.make_tensor("q", TensorProto.INT4, [ROWS, WIDTH], signed)
    second = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["q", "s"], ["t"], axis=1, block_size=BLOCK),
            helper.make_node("Gather", ["t", "idx"], ["y"]),
        ],
        "g",
        inputs,
        outputs,
        [table, numpy_helper.from_array(scale, "s")],
    )
    ms = helper.make_opsetid("com.microsoft", 1)
    return {
        "GatherBlockQuantized": helper.make_model(first, opset_imports=[helper.make_opsetid("", 21), ms]),
        "DequantizeLinear->Gather": helper.make_model(second, opset_imports=[helper.make_opsetid("", 21)]),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (ROWS, WIDTH)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, (ROWS, WIDTH // BLOCK)).astype(np.float32)
    feed = {"idx": rng.integers(0, ROWS, (1, TOKENS)).astype(np.int64)}
    sessions = {name: _session(model) for name, model in _models(codes, scale).items()}
    values = [s.run(None, feed)[0] for s in sessions.values()]
    print(f"onnxruntime {ort.__version__}; largest difference {float(np.abs(values[0] - values[1]).max())}")
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(ROUNDS):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    for name, measured in times.items():
        print(f"{name}: median {1000 * float(np.median(measured)):.3f} ms")


if __name__ == "__main__":
    main()
