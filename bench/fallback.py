"""Plain convert against --auto-fallback on the bench zoo (and the sample models).

Run: `make bench-fallback` (or `.venv/bin/python bench/fallback.py --zoo DIR --max-drop X`).
For every model folder (model.onnx, calib.npz, eval.npz, optional eval_labels.npy), quantize it
twice with the same bound: plainly, and with --auto-fallback. Report fidelity (the gate metric
and the worst output SQNR), the share of weights left in int8, size, and onnxruntime latency of
float, plain and fallback models measured alternately in one process. Writes the "auto" section
of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
from _results import machine, write_section

from quantcli import QuantConfig, quantize
from quantcli.calibration.data import model_inputs, open_dataset
from quantcli.config import GateMetric, QuantMode
from quantcli.errors import QuantCliError
from quantcli.evaluate import first_sample, measure_latency
from quantcli.graph.io import load_model, open_session, serialize
from quantcli.report import QuantReport

ROOT = Path(__file__).resolve().parent.parent


def _row(report: QuantReport, seconds: float) -> dict[str, Any]:
    assert report.gate is not None and report.fidelity is not None
    return {
        "gate_metric": report.gate.metric.value,
        "drop": report.gate.value,
        "passed": report.gate.passed,
        "worst_output_sqnr_db": min(o.sqnr_db for o in report.fidelity.outputs),
        "int8_weight_fraction": report.int8_weight_fraction,
        "size_ratio": report.size.ratio,
        "nodes_in_float": [] if report.fallback is None else list(report.fallback.float_nodes),
        "trials": 0 if report.fallback is None else len(report.fallback.steps) - 1,
        "seconds": seconds,
    }


def bench_model(folder: Path, work: Path, max_drop: float, metric: GateMetric) -> dict[str, Any]:
    model = folder / "model.onnx"
    labels = folder / "eval_labels.npy"
    rows: dict[str, Any] = {"model": folder.name, "max_drop": max_drop}
    for name, fallback in (("plain", False), ("fallback", True)):
        # Static: the mode whose misses fallback repairs (auto would first pick among modes).
        config = QuantConfig(mode=QuantMode.STATIC, metric=metric, max_drop=max_drop, auto_fallback=fallback)
        start = time.perf_counter()
        result = quantize(
            model,
            work / f"{folder.name}.{name}.onnx",
            config=config,
            data=folder / "calib.npz",
            eval_data=folder / "eval.npz",
            labels=labels if labels.exists() and metric is GateMetric.ACCURACY else None,
            force=True,
        )
        rows[name] = _row(result.report, time.perf_counter() - start)
        print(f"{folder.name} {name}: {rows[name]}", file=sys.stderr)
    loaded = load_model(model)
    feed = first_sample(open_dataset(folder / "eval.npz", model_inputs(loaded.model)).limit(1))
    sessions = {"float": open_session(serialize(loaded.model), for_timing=True)}
    for name in ("plain", "fallback"):
        sessions[name] = open_session(onnx.load(work / f"{folder.name}.{name}.onnx"), for_timing=True)
    latency = measure_latency(sessions, feed, runs=30, budget_seconds=60.0)
    rows["latency_ms"] = {name: value.median_ms for name, value in latency.items()}
    return rows


def _markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Automatic fallback (`--auto-fallback`) against plain convert",
        "",
        f"Written by `bench/fallback.py` (`{command}`), {machine()}. Same calibration and evaluation",
        "data, same bound; static mode. Drop is in points of the gate metric (cosine: 100 x (1 - mean",
        "cosine) of the worst output). Latency: median of 30 single-sample runs, the three models",
        "alternating in one process.",
        "",
        "| model | bound | run | drop | gate | worst output SQNR dB | int8 weights | nodes in float "
        "| trials | size ratio | latency ms (float = 1.00x) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['model']} | | skipped: {row['skipped']} | | | | | | | | |")
            continue
        float_ms = row["latency_ms"]["float"]
        for name in ("plain", "fallback"):
            r = row[name]
            ms = row["latency_ms"][name]
            lines.append(
                f"| {row['model']} | {r['gate_metric']} <= {row['max_drop']:g} | {name} | {r['drop']:.3f} "
                f"| {'pass' if r['passed'] else '**FAIL**'} | {r['worst_output_sqnr_db']:.1f} "
                f"| {100 * r['int8_weight_fraction']:.1f} % | {len(r['nodes_in_float'])} | {r['trials']} "
                f"| {r['size_ratio']:.2f}x | {ms:.2f} ({ms / float_ms:.2f}x) |"
            )
        lines.append(f"| {row['model']} | | float | | | | | | | 1.00x | {float_ms:.2f} (1.00x) |")
    lines.append("")
    for row in rows:
        nodes = [] if "skipped" in row else row["fallback"]["nodes_in_float"]
        if nodes:
            shown = ", ".join(f"`{n}`" for n in nodes[:12]) + (" ..." if len(nodes) > 12 else "")
            lines.append(f"- {row['model']}: fallback left in float {shown}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "bench" / "zoo")
    parser.add_argument("--max-drop", type=float, default=0.5, help="bound in points of --metric")
    parser.add_argument("--metric", type=GateMetric, default=GateMetric.COSINE)
    parser.add_argument("--models", nargs="*", help="folder names under --zoo (default: all)")
    args = parser.parse_args()
    folders = sorted(p for p in args.zoo.iterdir() if (p / "model.onnx").is_file())
    if args.models:
        folders = [f for f in folders if f.name in args.models]
    if not folders:
        sys.exit(f"no model folders under {args.zoo} (each needs model.onnx, calib.npz, eval.npz)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            try:
                rows.append(bench_model(folder, Path(tmp), args.max_drop, args.metric))
            except QuantCliError as exc:  # reported, so a zoo model quantcli refuses is visible
                print(f"{folder.name}: skipped: {exc}", file=sys.stderr)
                rows.append({"model": folder.name, "skipped": str(exc)})
    command = f"bench/fallback.py --zoo {args.zoo.name} --metric {args.metric} --max-drop {args.max_drop:g}"
    print(write_section("auto", _markdown(rows, command), rows))


if __name__ == "__main__":
    main()
