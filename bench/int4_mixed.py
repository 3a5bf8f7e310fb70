"""4-bit weights as the weight side of dynamic, and mixed bit widths, on MiniLM-L6 (bench zoo).

    python bench/int4_mixed.py [--zoo bench/zoo] [--rounds 15] [--max-trials 12]
                               [--keep-dynamic | --keep-fallback]

``--keep-dynamic`` / ``--keep-fallback`` rerun one part and keep the other from the last run's
bench/results/int4_mixed.json (each part records its own commit and machine load).

Part 1, dynamic: quantcli's ``--mode dynamic`` (int8 weights, DynamicQuantizeMatMul), ``--mode
dynamic --weight-bits 4`` (MatMulNBits at accuracy_level 4: the input quantized to int8 per block
at run time, int8 compute) and ``--mode weight-only --weight-bits 4`` (MatMulNBits at
accuracy_level 0, float compute), all RTN block 32, symmetric: size ratio, sentence-embedding
cosine against fp32 on eval.npz, and latency at 1 and 2 threads against fp32, every model timed
in one rotating loop (bench/compare.py's latency).

Part 2, mixed bits: ``--mode dynamic --weight-bits 4 --weight-symmetric --auto-fallback --metric cosine
--max-drop 1 --max-trials N`` (cosine >= 0.99) with calib.npz as data, measured on eval.npz: which layers
ended at 4 bits, 8 bits and float, the size ratio and the cosine, and every trial fallback made.

Writes the ``int4_mixed`` section of bench/RESULTS.md and bench/results/int4_mixed.json.
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

import compare
import numpy as np
from _results import machine, write_section

from quantcli import quantize
from quantcli.config import GateMetric, Overrides, QuantMode

BENCH = Path(__file__).resolve().parent
MODEL = "minilm_l6"
OUTPUT = "sentence_embedding"
VARIANTS: dict[str, Overrides] = {
    "int8 dynamic": Overrides(mode=QuantMode.DYNAMIC),
    "int4 dynamic (level 4)": Overrides(mode=QuantMode.DYNAMIC, weight_bits=4, weight_symmetric=True),
    "int4 weight-only (level 0)": Overrides(mode=QuantMode.WEIGHT_ONLY, weight_bits=4, weight_symmetric=True),
}
FALLBACK_DROP = 1.0  # points of cosine: mean cosine >= 0.99
RESULT = BENCH / "results" / "int4_mixed.json"


def _dynamic(folder: Path, work: Path, rounds: int) -> list[dict[str, Any]]:
    model = folder / "model.onnx"
    feeds = _load(folder / "eval.npz")
    reference = compare.run_all(model, feeds, OUTPUT)
    paths = {}
    for name, overrides in VARIANTS.items():
        path = work / (name.split(" (")[0].replace(" ", "_") + ".onnx")
        quantize(model, path, config=overrides, force=True)
        paths[name] = path
    first = {k: v[:1] for k, v in feeds.items()}
    times = compare.latency({"fp32": model, **paths}, first, rounds)
    rows = []
    for name, path in paths.items():
        metrics = compare.embedding_metrics(reference, compare.run_all(path, feeds, OUTPUT), {})
        row = {
            "variant": name,
            "size_ratio": model.stat().st_size / path.stat().st_size,
            "cosine_mean": metrics["cosine_mean"],
            "cosine_worst": metrics["cosine_worst"],
        }
        for key, ms in times[name].items():
            row[key] = ms
            row[key.replace("_ms", "_vs_fp32")] = ms / times["fp32"][key]
            row[key.replace("_ms", "_vs_int8")] = ms / times["int8 dynamic"][key]
        rows.append(row)
    rows.append({"variant": "fp32", **times["fp32"]})
    return rows


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _fallback(folder: Path, work: Path, max_trials: int) -> dict[str, Any]:
    model = folder / "model.onnx"
    overrides = Overrides(
        mode=QuantMode.DYNAMIC,
        weight_bits=4,
        weight_symmetric=True,
        auto_fallback=True,
        metric=GateMetric.COSINE,
        max_drop=FALLBACK_DROP,
        max_trials=max_trials,
    )
    begin = time.perf_counter()
    output = work / "int4_fallback.onnx"
    result = quantize(
        model,
        output,
        config=overrides,
        data=folder / "calib.npz",
        eval_data=folder / "eval.npz",
        force=True,
    )
    seconds = time.perf_counter() - begin
    report = result.report.to_dict()
    blockwise = report.get("blockwise") or {}
    fallback = report.get("fallback") or {}
    return {
        "meta": _meta(),
        "max_trials": max_trials,
        "seconds": seconds,
        "size_ratio": model.stat().st_size / output.stat().st_size,
        "cosine_mean": report["fidelity"]["outputs"][0]["cosine_mean"],
        "gate": report.get("gate"),
        "widths": blockwise.get("widths", []),
        "fallback": fallback,
    }


def markdown(dynamic: dict[str, Any], fallback: dict[str, Any] | None) -> str:
    meta = dynamic["meta"]
    lines = [
        "## 4-bit weights in dynamic mode, and mixed bit widths (MiniLM-L6, `bench/int4_mixed.py`)",
        "",
        f"`python bench/int4_mixed.py` (in `.benchenv`, `make bench-int4`), {machine()}, "
        f"commit {meta['commit']}, "
        f"load {meta['load_start']:.1f} -> {meta['load_end']:.1f}, {dynamic['rounds']} rounds.",
        "Every model by quantcli, RTN block 32 symmetric; cosine: sentence embedding against fp32 on "
        "eval.npz (48 sentences, 128 tokens); latency: one sample, all models in one rotating loop.",
        "",
        *_load_note(meta),
        "| model | size ratio | cosine mean | worst | 1 thread ms | vs fp32 | vs int8 dyn "
        "| 2 threads ms | vs fp32 | vs int8 dyn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in dynamic["rows"]:
        if row["variant"] == "fp32":
            times = f"{row['threads1_ms']:.2f} | 1.00 | | {row['threads2_ms']:.2f} | 1.00 |"
            lines.append(f"| fp32 | 1.00 | 1 | 1 | {times} |")
            continue
        lines.append(
            f"| {row['variant']} | {row['size_ratio']:.2f} | {row['cosine_mean']:.4f} | "
            f"{row['cosine_worst']:.4f} | {row['threads1_ms']:.2f} | {row['threads1_vs_fp32']:.2f} | "
            f"{row['threads1_vs_int8']:.2f} | {row['threads2_ms']:.2f} | {row['threads2_vs_fp32']:.2f} | "
            f"{row['threads2_vs_int8']:.2f} |"
        )
    if fallback is not None:
        lines += _fallback_lines(fallback)
    return "\n".join(lines) + "\n"


def _load_note(meta: dict[str, Any]) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    if max(meta["load_start"], meta["load_end"]) <= 2 * cores:
        return [""]
    return [
        f"The machine was overloaded (load above {2 * cores} on {cores} cores): the 2-thread timings "
        "are unreliable here; compare the 1-thread ratios.",
        "",
    ]


def _fallback_lines(fallback: dict[str, Any]) -> list[str]:
    counts: dict[str, int] = {}
    for width in fallback["widths"]:
        counts[str(width["bits"])] = counts.get(str(width["bits"]), 0) + 1
    steps = fallback["fallback"].get("steps", [])
    meta = fallback["meta"]
    lines = [
        "",
        "`--mode dynamic --weight-bits 4 --weight-symmetric --auto-fallback --metric cosine "
        f"--max-drop {FALLBACK_DROP:g} "
        f"--max-trials {fallback['max_trials']}` (--data calib.npz --eval-data eval.npz), "
        f"commit {meta['commit']}, "
        f"load {meta['load_start']:.1f} -> {meta['load_end']:.1f}, {fallback['seconds']:.0f} s: "
        f"{fallback['fallback']['summary']}; cosine {fallback['cosine_mean']:.4f}, "
        f"size ratio {fallback['size_ratio']:.2f}; MatMul/Gemm/Gather nodes by weight width: "
        + ", ".join(f"{k} bits: {v}" if k != "None" else f"float: {v}" for k, v in sorted(counts.items())),
        "",
        "| trial | nodes at 8 bits | nodes in float | cosine drop (points) | output bytes | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for step in steps:
        gate = step.get("gate") or {}
        lines.append(
            f"| {step['trial']} | {len(step.get('nodes_at_8_bits', []))} | {len(step['nodes_in_float'])} | "
            f"{gate.get('drop', float('nan')):.3f} | {step['output_bytes']} | "
            f"{'yes' if step['chosen'] else ''} |"
        )
    return lines


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


# Taken when the script starts: the code it imported, and the load before it ran.
_COMMIT, _LOAD_START = _commit(), os.getloadavg()[0]


def _meta() -> dict[str, Any]:
    return {"commit": _COMMIT, "load_start": _LOAD_START, "load_end": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--work", type=Path, default=BENCH / "_work" / "int4_mixed")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-trials", type=int, default=12)
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-dynamic", action="store_true", help="keep the last run's dynamic part")
    keep.add_argument("--keep-fallback", action="store_true", help="keep the last run's fallback part")
    args = parser.parse_args(argv)
    folder = args.zoo / MODEL
    if not (folder / "model.onnx").is_file():
        sys.stderr.write(f"int4_mixed: {folder / 'model.onnx'} missing; build the zoo with `make zoo`\n")
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULT.read_text()) if args.keep_dynamic or args.keep_fallback else {}
    if args.keep_dynamic:
        dynamic = previous["dynamic"]
    else:
        rows = _dynamic(folder, args.work, args.rounds)
        dynamic = {"meta": _meta(), "rounds": args.rounds, "rows": rows}
    fallback = previous["fallback"] if args.keep_fallback else _fallback(folder, args.work, args.max_trials)
    rows = {"dynamic": dynamic, "fallback": fallback}
    target = write_section("int4_mixed", markdown(dynamic, fallback), rows)
    sys.stderr.write(f"int4_mixed: wrote {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
