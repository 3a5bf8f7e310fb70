"""The default command on architectures the zoo does not have: onnx's backend-test networks.

    python bench/light_sweep.py [--work DIR] [--models resnet50,...] [--max-mb 150] [--runs 20]

onnx ships nine classic ImageNet networks as test data (``onnx/backend/test/data/light``: AlexNet,
DenseNet-121, Inception v1 and v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512; Caffe2
exports, opset 9, IR 3, BatchNormalization kept). Their weights are ConstantOfShape placeholders
(every value 0.02), so each is rebuilt here with random weights: He-normal Conv/Gemm weights,
positive BatchNormalization scales and variances, small biases (seed 0), and 16 random 224x224
inputs. Random weights give no task metric; what this measures is what a user meets first on a
network nobody tuned for: whether ``quantcli convert MODEL -o OUT --data calib/`` exits 0, what it
writes (mode, size), how fast the result runs against the float model (``quantcli compare``, 1
thread, both timed in one process) and what quantizing costs (seconds, peak RSS).

Writes the ``light_sweep`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _results import machine, write_section
from compare import _cli, _commit, run_measured
from onnx import numpy_helper

BENCH = Path(__file__).resolve().parent
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SAMPLES = 16


def _array(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random contents for the placeholder ``name`` of ``shape`` (Caffe2's naming: _w weights,
    _s / _riv / var scales and variances, the rest biases and means)."""
    if name.endswith("_w_0") and len(shape) >= 2:
        return rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
    if any(key in name for key in ("riv", "var", "scale")) or name.endswith("_s_0"):
        return 1.0 + 0.1 * rng.random(shape)
    return 0.05 * rng.standard_normal(shape)


def materialize(source: Path, folder: Path, seed: int = 0) -> None:
    """``source`` with every ConstantOfShape placeholder replaced by a random initializer, as
    ``folder/model.onnx``, and its calibration inputs in ``folder/calib/``."""
    rng = np.random.default_rng(seed)
    model = onnx.load(source)
    shapes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept, made = [], []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            array = _array(node.output[0], shape, rng).astype(np.float32)
            made.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    read = {name for node in kept for name in node.input}
    del model.graph.node[:]
    model.graph.node.extend(kept)
    initializers = [i for i in model.graph.initializer if i.name in read] + made
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    stored = {i.name for i in initializers}
    feeds = [i for i in model.graph.input if i.name not in stored and i.name in read]
    # Still IR 3, as shipped: every initializer is listed among the inputs too.
    declared = feeds + [
        onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in initializers
    ]
    del model.graph.input[:]
    model.graph.input.extend(declared)
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "calib").mkdir(exist_ok=True)
    for index in range(SAMPLES):
        sample = {
            i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
                np.float32
            )
            for i in feeds
        }
        np.savez(folder / "calib" / f"{index:03d}.npz", **sample)


def sweep_one(name: str, work: Path, runs: int) -> dict[str, Any]:
    folder = work / name
    materialize(LIGHT / f"light_{name}.onnx", folder)
    model, output, report = folder / "model.onnx", folder / "q.onnx", folder / "report.json"
    output.unlink(missing_ok=True)
    report.unlink(missing_ok=True)
    command = [_cli(), "convert", str(model), "-o", str(output), "--data", str(folder / "calib")]
    code, seconds, rss = run_measured([*command, "--report", str(report)], folder / "convert.log")
    row: dict[str, Any] = {"model": name, "exit": code, "seconds": seconds, "peak_rss_mb": rss}
    row["float_mb"] = model.stat().st_size / 1e6
    if code != 0:
        log = (folder / "convert.log").read_text().splitlines()
        lines = [line for line in log if line.startswith("error")]
        row["error"] = lines[-1] if lines else "(no error line)"
        return row
    written = json.loads(report.read_text())
    row.update(
        mode=written["mode"],
        size_ratio=written["size"]["ratio"],
        predicted=(written["speed"] or {}).get("ratio"),
        cosine=written["fidelity"]["outputs"][0]["cosine_mean"] if written.get("fidelity") else None,
    )
    timing = subprocess.run(
        [
            _cli(),
            "compare",
            str(model),
            str(output),
            "--data",
            str(folder / "calib"),
            "--threads",
            "1",
            "--runs",
            str(runs),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if timing.returncode in (0, 3):
        latency = json.loads(timing.stdout)["latency_ms"]
        row["latency_ratio"] = latency["quantized"]["median_ms"] / latency["float"]["median_ms"]
    return row


def _cell(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "## The default command on onnx's backend-test networks (`bench/light_sweep.py`)",
        "",
        f"Measured on {machine()}, quantcli at commit {meta['commit']}; {meta['minutes']:.1f} min, load "
        f"{meta['load_start']:.1f} -> {meta['load_end']:.1f} (shared machine).",
        "The networks onnx ships as backend test data (Caffe2 exports: opset 9, IR 3, every initializer",
        "also a graph input, BatchNormalization kept), their ConstantOfShape placeholder weights replaced",
        "by random ones (seed 0), 16 random 224x224 inputs each. No task metric: this is what the default",
        "command `quantcli convert MODEL -o OUT --data calib/` does on networks nobody tuned it for.",
        f"Latency: `quantcli compare`, 1 thread, {meta['runs']} runs per model, quantized / float in one",
        "process. Cosine: the report's, on calibration's held-back samples (random weights saturate the",
        "softmax, so it says little).",
        "",
        "| model | float MB | exit | mode | size ratio | predicted x fp32 | measured x fp32 | cosine "
        "| quantize s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["model"], _cell(row["float_mb"], 1), str(row["exit"])]
        if row["exit"] != 0:
            cost = [_cell(row["seconds"], 1), _cell(row["peak_rss_mb"], 0)]
            cells += [row.get("error", ""), "", "", "", "", *cost]
        else:
            cells += [
                row["mode"],
                _cell(row["size_ratio"]),
                _cell(row["predicted"]),
                _cell(row.get("latency_ratio")),
                _cell(row["cosine"], 4),
                _cell(row["seconds"], 1),
                _cell(row["peak_rss_mb"], 0),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=BENCH / "_work" / "light_sweep")
    parser.add_argument("--models", help="comma-separated subset (names without light_)")
    parser.add_argument("--max-mb", type=float, default=250.0, help="skip networks larger than this")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    names = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))
    if args.models:
        names = [n for n in names if n in args.models.split(",")]
    begin, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for name in names:
        # The placeholder model is tiny; the size that matters is the materialized one's.
        weights = sum(
            int(np.prod(numpy_helper.to_array(i))) * 4
            for i in onnx.load(LIGHT / f"light_{name}.onnx").graph.initializer
            if i.name.endswith("__SHAPE")
        )
        if weights / 1e6 > args.max_mb:
            sys.stderr.write(f"light_sweep: {name} skipped ({weights / 1e6:.0f} MB > --max-mb)\n")
            continue
        sys.stderr.write(f"light_sweep: {name}\n")
        rows.append(sweep_one(name, args.work, args.runs))
    meta = {
        "commit": _commit(),
        "minutes": (time.perf_counter() - begin) / 60,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "runs": args.runs,
    }
    write_section("light_sweep", markdown(rows, meta), {"meta": meta, "rows": rows})
    sys.stdout.write(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
