"""What TensorRT's rules (docs/tensorrt.md) cost in fidelity, measured here in onnxruntime's CPU provider.

Run: `.venv/bin/python bench/tensorrt_fidelity.py [--zoo bench/zoo] [--models a,b]`. For each model,
`--mode static` with `--target ort-cpu` and with `--target tensorrt`, side by side: size ratio,
QuantizeLinear nodes, and the report's fidelity of the first output on the evaluation data (SQNR,
mean cosine, top-1 against labels where the sample has them). No TensorRT is involved: this is
rule 11's check (the Q/DQ arithmetic TensorRT implies, computed by onnxruntime), not a speed
figure; `bench/tensorrt.sh` times the same conversions with trtexec. Writes the `tensorrt_fidelity`
section of bench/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any

import onnx
from _results import machine, write_section

from quantcli import Overrides, quantize
from quantcli.config import QuantMode, TargetName
from quantcli.errors import QuantizationError

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (TargetName.ORT_CPU, TargetName.TENSORRT)


def _cases(zoo: Path | None, only: set[str]) -> list[tuple[str, Path, Path, Path, Path | None]]:
    """(name, model, calibration data, evaluation data, labels or None) per model."""
    cases = []
    for name in ("digits_cnn", "digits_transformer"):
        folder = ROOT / "sample_models" / name
        cases.append(
            (
                name,
                folder / "model.onnx",
                folder / "calib.npz",
                folder / "eval.npz",
                folder / "eval_labels.npy",
            )
        )
    for folder in sorted(zoo.iterdir()) if zoo is not None else ():
        model = folder / "model.onnx"
        calib = next((p for p in (folder / "calib", folder / "calib.npz") if p.exists()), None)
        evals = next((p for p in (folder / "eval", folder / "eval.npz") if p.exists()), None)
        if model.exists() and calib is not None and evals is not None:
            cases.append((folder.name, model, calib, evals, None))
    return [c for c in cases if not only or c[0] in only]


def _row(
    name: str, target: TargetName, case: tuple[str, Path, Path, Path, Path | None], work: Path
) -> dict[str, Any]:
    _name, model, calib, evals, labels = case
    out = work / f"{name}.{target.value}.onnx"
    try:
        result = quantize(
            model,
            out,
            data=calib,
            eval_data=evals,
            labels=labels,
            config=Overrides(mode=QuantMode.STATIC, target=target),
            force=True,
        )
    except QuantizationError as exc:  # e.g. nothing the target quantizes: a row saying so
        return {"model": name, "target": target.value, "error": str(exc).split(": ", 1)[-1]}
    report = result.report
    fidelity = report.fidelity
    first = fidelity.outputs[0] if fidelity is not None else None
    accuracy = fidelity.accuracy if fidelity is not None else None
    return {
        "model": name,
        "target": target.value,
        "size_ratio": report.size.ratio,
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node),
        "output": None if first is None else first.name,
        "sqnr_db": None if first is None else first.sqnr_db,
        "cosine_mean": None if first is None else first.cosine_mean,
        "top1": None if accuracy is None else accuracy.quantized_top1,
        "float_top1": None if accuracy is None else accuracy.float_top1,
    }


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## TensorRT's rules in onnxruntime (bench/tensorrt_fidelity.py)",
        "",
        f"`{command}`: `--mode static` for each target, fidelity of the first output on the evaluation data "
        "in onnxruntime's CPU provider (docs/tensorrt.md rule 11); no TensorRT here, so no speed. "
        f"{machine()}.",
        "",
        "| model | target | size ratio | Q nodes (main graph) | SQNR dB | cosine | top-1 % (float) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            error = re.sub(r" \([^)]*\)", "", r["error"])  # the message without its byte counts
            lines.append(f"| {r['model']} | {r['target']} | {error} | | | | |")
            continue
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1f} ({r['float_top1']:.1f})"
        lines.append(
            f"| {r['model']} | {r['target']} | {r['size_ratio']:.2f} | {r['quantize_nodes']} | "
            f"{_cell(r['sqnr_db'], 1)} | {_cell(r['cosine_mean'], 4)} | {top1} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, help="the bench zoo folder (models with calib/ and eval/)")
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    only = {m for m in args.models.split(",") if m}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in _cases(args.zoo, only):
            for target in TARGETS:
                rows.append(_row(case[0], target, case, Path(folder)))
                print(rows[-1], flush=True)
    command = "bench/tensorrt_fidelity.py" + (f" --zoo {args.zoo.name}" if args.zoo else "")
    command += f" --models {args.models}" if args.models else ""
    markdown = _markdown(rows, command)
    print(markdown)
    if not args.no_write:
        write_section("tensorrt_fidelity", markdown, rows)


if __name__ == "__main__":
    main()
