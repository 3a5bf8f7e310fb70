"""Size, accuracy and onnxruntime latency of quantcli's output on the bundled sample models.

Run: `make bench` (or `.venv/bin/python bench/sample_speed.py`). Writes bench/RESULTS.md and
bench/results.json. Float and int8 sessions run alternately in one process, so a noisy shared
machine slows both alike; figures are medians, and the ratio int8/float is what to quote.
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _results import write_section

from quantcli import QuantConfig, quantize

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("digits_cnn", "digits_transformer")
THREADS = (1, 2)
BATCHES = (1, 32)
ROUNDS = 30  # alternating float/int8 timing rounds per setting
REPEATS = 5  # runs per round; the round's time is their mean


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    for _ in range(REPEATS):
        session.run(None, feed)
    return (time.perf_counter() - start) / REPEATS


def _latency(
    float_path: Path, int8_path: Path, feed: dict[str, np.ndarray], threads: int
) -> dict[str, float]:
    sessions = {"float": _session(float_path, threads), "int8": _session(int8_path, threads)}
    for session in sessions.values():  # warm-up
        for _ in range(3):
            session.run(None, feed)
    times: dict[str, list[float]] = {"float": [], "int8": []}
    for round_index in range(ROUNDS):
        order = ("float", "int8") if round_index % 2 == 0 else ("int8", "float")
        for name in order:
            times[name].append(_time(sessions[name], feed))
    float_ms = 1000 * statistics.median(times["float"])
    int8_ms = 1000 * statistics.median(times["int8"])
    return {"float_ms": float_ms, "int8_ms": int8_ms, "ratio": int8_ms / float_ms}


def bench_sample(name: str, work: Path) -> dict[str, object]:
    folder = ROOT / "sample_models" / name
    model = folder / "model.onnx"
    output = work / f"{name}.int8.onnx"
    start = time.perf_counter()
    result = quantize(
        model,
        output,
        config=QuantConfig(),
        data=folder / "calib.npz",
        eval_data=folder / "eval.npz",
        labels=folder / "eval_labels.npy",
        force=True,
    )
    seconds = time.perf_counter() - start
    report = result.report
    assert report.fidelity is not None and report.fidelity.accuracy is not None
    with np.load(folder / "eval.npz") as archive:
        inputs = {key: archive[key] for key in archive.files}
    latency = {}
    for batch in BATCHES:
        feed = {key: value[:batch] for key, value in inputs.items()}
        for threads in THREADS:
            latency[f"batch{batch}_threads{threads}"] = _latency(model, output, feed, threads)
    accuracy = report.fidelity.accuracy
    return {
        "model": name,
        "mode": report.plan.mode.value,  # the default, auto, picks it
        "size_ratio": report.size.ratio,
        "float_top1": accuracy.float_top1,
        "int8_top1": accuracy.quantized_top1,
        "top1_drop_points": accuracy.drop_points,
        "cosine_mean": report.fidelity.outputs[0].cosine_mean,
        "quantize_seconds": seconds,
        "latency": latency,
    }


def _markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "## Sample models: size, accuracy, latency (`make bench`, bench/sample_speed.py)",
        "",
        f"Made by `make bench` (bench/sample_speed.py) with onnxruntime {ort.__version__}, "
        f"Python {platform.python_version()}, on {platform.machine()} ({platform.processor() or 'cpu'}).",
        f"Latency: median of {ROUNDS} alternating float/int8 rounds of {REPEATS} runs each; "
        "ratio = int8 / float (below 1 is faster).",
        "",
        "| model | mode (auto's pick) | size ratio | top-1 float | top-1 int8 | drop (points) | cosine mean "
        "| quantize s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['mode']} | {row['size_ratio']:.3f} | {row['float_top1']:.2f} "
            f"| {row['int8_top1']:.2f} "
            f"| {row['top1_drop_points']:.2f} | {row['cosine_mean']:.5f} | {row['quantize_seconds']:.1f} |"
        )
    lines += ["", "| model | batch | threads | float ms | int8 ms | ratio |", "|---|---|---|---|---|---|"]
    for row in rows:
        latency = row["latency"]
        assert isinstance(latency, dict)
        for key, value in latency.items():
            batch, threads = key.removeprefix("batch").split("_threads")
            lines.append(
                f"| {row['model']} | {batch} | {threads} | {value['float_ms']:.3f} | {value['int8_ms']:.3f} "
                f"| {value['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_sample(name, Path(tmp)) for name in SAMPLES]
    write_section("sample_speed", _markdown(rows), rows)
    sys.stdout.write(_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
