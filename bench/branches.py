"""A network inside an If: quantcli's default and static outputs beside fp32, with per-op evidence.

silero-vad (the bench zoo's hand-built spox graph) keeps its whole network inside an ``If`` on
the sample rate. This converts it with quantcli's default command, with ``--mode static``
and with ``--speed measured`` (auto choosing by timing, not the cost model), measures the task
metric (speech decision equal to fp32's), the size ratio and the latency
(1 thread, interleaved, bench/compare.py's timing), and profiles each model's kernels on the
first eval sample (onnxruntime's profiler, quantcli.cost.profile_kernels) to show where the time
goes: an ``If`` kernel's time includes its branch's kernels.

Run: PYTHONPATH=. .benchenv/bin/python bench/branches.py [--zoo bench/zoo] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from _results import machine, write_section
from compare import latency, load_samples, run_samples, vad_metrics

from quantcli.cost import profile_kernels

BENCH = Path(__file__).resolve().parent
MODEL = "silero_vad"
ROUNDS = 25
PROFILE_RUNS = 50
# The STFT Conv and the first encoder Conv of the 16 kHz branch: the two largest (264k and 198k
# multiply-adds per chunk), and the two whose int8 inputs lose a quiet chunk (see ``quiet``).
FRONT_CONVS = (
    "If_0_then_branch__Inline_0__/stft/Conv",
    "If_0_then_branch__Inline_0__/encoder/0/reparam_conv/Conv",
)


def _convert(model: Path, output: Path, data: Path, *flags: str) -> dict[str, Any]:
    report = output.with_suffix(".json")
    command = [
        sys.executable,
        "-m",
        "quantcli",
        "convert",
        str(model),
        "-o",
        str(output),
        "--data",
        str(data),
    ]
    subprocess.run([*command, *flags, "--report", str(report), "--quiet"], check=True)
    return dict(json.loads(report.read_text()))


def _profile(path: Path, feed: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """(kernels, total microseconds) per kernel op type, the median of ``PROFILE_RUNS`` runs."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for kernel in profile_kernels(path, feed, runs=PROFILE_RUNS):
        totals[kernel.op_type][0] += 1
        totals[kernel.op_type][1] += kernel.duration_us
    return {op: (int(n), float(us)) for op, (n, us) in totals.items()}


def measure(zoo: Path, work: Path) -> dict[str, Any]:
    folder = zoo / MODEL
    task = json.loads((folder / "task.json").read_text())
    fp32 = folder / "model.onnx"
    flags = {
        "default": (),
        "static": ("--mode", "static"),
        "speed measured": ("--speed", "measured"),
        "static, 2 Convs float": (
            "--mode",
            "static",
            *(f for name in FRONT_CONVS for f in ("--exclude", name)),
        ),
    }
    models = {"fp32": fp32, **{name: work / f"{name.replace(' ', '_')}.onnx" for name in flags}}
    reports = {name: _convert(fp32, models[name], folder / "calib", *flags[name]) for name in flags}
    feeds = load_samples(folder / "eval")
    reference = run_samples(fp32, feeds, task["output"])
    calib_peak = max(float(abs(feed["input"]).max()) for feed in load_samples(folder / "calib"))
    times = latency(models, feeds[0], ROUNDS, (1,))
    rows: dict[str, Any] = {}
    for name, path in models.items():
        outputs = run_samples(path, feeds, task["output"])
        metrics = vad_metrics(reference, outputs, task)
        threshold = float(task["threshold"])
        flips = [
            {
                "sample": i,
                "fp32": float(a.ravel()[0]),
                "quantized": float(b.ravel()[0]),
                "peak": float(abs(feeds[i]["input"]).max()),
            }
            for i, (a, b) in enumerate(zip(reference, outputs, strict=True))
            if (a.ravel()[0] > threshold) != (b.ravel()[0] > threshold)
        ]
        rows[name] = {
            "flips": flips,
            "calibration_peak": calib_peak,
            "mode": reports[name]["mode"] if name in reports else "fp32",
            "size_ratio": fp32.stat().st_size / path.stat().st_size,
            "decision_agreement": metrics["decision_agreement"],
            "prob_mean_abs_diff": metrics["prob_mean_abs_diff"],
            "latency_ratio": times[name]["threads1_ms"] / times["fp32"]["threads1_ms"],
            "ms": times[name]["threads1_ms"],
            "profile": _profile(path, feeds[0]),
        }
    return rows


ORDER = ("fp32", "default", "static", "speed measured", "static, 2 Convs float")


def markdown(stored: dict[str, Any]) -> str:
    rows = {name: stored[name] for name in ORDER if name in stored}
    lines = [
        "## A network inside an If: silero-vad (`bench/branches.py`)",
        "",
        f"Measured on {machine()}. The model's whole network is inside an `If` on the sample rate;",
        "every calibration sample is 16 kHz, so the 8 kHz branch stays float (its nodes say why).",
        "Latency: 1 thread, median of interleaved rounds on the first eval sample (bench/compare.py's).",
        "",
        "| model | mode | size ratio | decision = fp32 | prob abs diff | latency vs fp32 | ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['mode']} | {row['size_ratio']:.2f} | {row['decision_agreement']:.3f} | "
            f"{row['prob_mean_abs_diff']:.4f} | {row['latency_ratio']:.2f} | {row['ms']:.3f} |"
        )
    lines += [
        "",
        "Decisions that differ from fp32's (eval sample: fp32 prob -> quantized prob, the chunk's peak).",
        "A chunk far quieter than the calibrated range gets a few uint8 levels per tensor at the STFT",
        "Conv's input and the first encoder Conv's; with those two Convs float (`--exclude`) every",
        "decision is kept, but they are the two largest, so little speed is left to gain. The default's",
        "channel-SQNR bound rejects static on the held-back samples; dynamic (int8 LSTM, float Convs)",
        "keeps every decision.",
        "",
    ]
    for name, row in rows.items():
        for flip in row["flips"]:
            lines.append(
                f"- {name}: sample {flip['sample']}: {flip['fp32']:.3f} -> {flip['quantized']:.3f}, peak "
                f"{flip['peak']:.3f} (calibration chunks peak at {row['calibration_peak']:.3f})"
            )
    ops = sorted({op for row in rows.values() for op in row["profile"]})
    lines += [
        "",
        f"Kernels per op type (count, total microseconds; median of {PROFILE_RUNS} profiled runs). "
        "An If kernel's time includes the kernels of the branch it runs.",
        "",
        "| op | " + " | ".join(rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for op in sorted(ops, key=lambda o: -max(r["profile"].get(o, (0, 0.0))[1] for r in rows.values())):
        cells = [
            f"{n} / {us:.0f}" if (n := r["profile"].get(op, (0, 0.0))[0]) else "–"
            for r in rows.values()
            for us in [r["profile"].get(op, (0, 0.0))[1]]
        ]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantcli-branches-") as work:
        rows = measure(args.zoo, Path(work))
    text = markdown(rows)
    print(text)
    if not args.no_write:
        write_section("branches", text, rows)


if __name__ == "__main__":
    main()
