"""A model past protobuf's 2 GiB limit, quantized end to end through the CLI.

Builds a stack of MatMul+Relu layers whose float weights total more than 2 GB, written tensor by
tensor to an external data file in a git-ignored folder (deleted afterwards), then runs
``quantcli calibrate`` and ``quantcli convert`` (``--mode static``: the default auto would build,
stage and hold a model per candidate mode) in child processes and records each one's peak
resident memory (``wait4``'s rusage) and wall time. Then the same model goes to 4-bit weights
(``--mode weight-only --weight-bits 4``) with RTN and with GPTQ, which streams tensor by tensor
(quantcli.blockwise.streaming). Finally every model runs in onnxruntime on held-out samples
and its outputs are compared with the float model's.

    python bench/large_model.py [--layers 36] [--width 4096] [--keep] [--only int4-gptq ...]

``--only`` runs the named steps (int8, int4-rtn, int4-gptq) and prints them without writing the
section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from _results import BENCH, machine, write_section
from onnx import TensorProto, helper

WORK = BENCH / ".large_model"
GB = 1e9
STEPS = ("int8", "int4-rtn", "int4-gptq")


def build(folder: Path, layers: int, width: int) -> Path:
    """Write the model and its weights without ever holding more than one layer in memory."""
    rng = np.random.default_rng(0)
    initializers, nodes = [], []
    offset = 0
    with open(folder / "model.onnx.data", "wb") as data:
        for i in range(layers):
            weight = rng.standard_normal((width, width), dtype=np.float32)
            weight *= np.float32(np.sqrt(2.0 / width))
            data.write(weight.tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", "model.onnx.data"),
                ("offset", offset),
                ("length", weight.nbytes),
            ):
                tensor.external_data.add(key=key, value=str(value))
            offset += weight.nbytes
            initializers.append(tensor)
            source = "x" if i == 0 else f"r{i - 1}"
            last = i == layers - 1
            nodes.append(
                helper.make_node("MatMul", [source, f"w{i}"], ["y" if last else f"h{i}"], name=f"mm{i}")
            )
            if not last:
                nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
    graph = helper.make_graph(
        nodes,
        "large_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


def run(name: str, args: list[str]) -> dict[str, Any]:
    """Run one quantcli command; return its wall time and peak RSS (this child alone)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "quantcli", *args], stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name} failed ({code}): {stderr}")
    peak = round(usage.ru_maxrss * 1024 / GB, 2)  # ru_maxrss is in KiB on Linux
    print(f"{name}: {seconds:.1f} s, peak RSS {peak} GB", file=sys.stderr)
    return {"step": name, "seconds": round(seconds, 1), "peak_rss_gb": peak}


def compare(float_model: Path, int8_model: Path, samples: np.ndarray) -> dict[str, float]:
    """SQNR and cosine of the int8 output against the float output, through onnxruntime."""
    outputs = []
    for path in (float_model, int8_model):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": samples})[0].astype(np.float64))
        del session
    ref, got = outputs
    noise = float(np.sum((ref - got) ** 2))
    cosine = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {
        "sqnr_db": round(10 * float(np.log10(float(np.sum(ref**2)) / noise)), 1),
        "cosine_min": round(float(cosine.min()), 5),
        "max_abs_error": round(float(np.max(np.abs(ref - got))), 4),
        "output_abs_mean": round(float(np.mean(np.abs(ref))), 4),
    }


def int8_steps(model: Path) -> list[dict[str, Any]]:
    """Calibrate, then convert from the calibration file and from the data (static int8)."""
    calib = str(WORK / "calib.npz")
    return [
        run(
            "calibrate",
            [
                "calibrate",
                str(model),
                "--data",
                calib,
                "-o",
                str(WORK / "calib.json"),
                "--mode",
                "static",
                "--quiet",
            ],
        ),
        run(
            "convert --calibration (quantize + check + write)",
            [
                "convert",
                str(model),
                "-o",
                str(WORK / "q.onnx"),
                "--calibration",
                str(WORK / "calib.json"),
                "--quiet",
            ],
        ),
        run(
            "convert --data (calibrate + quantize + check + evaluate + write)",
            [
                "convert",
                str(model),
                "-o",
                str(WORK / "q2.onnx"),
                "--data",
                calib,
                "--report",
                str(WORK / "report.json"),
                "--mode",
                "static",
                "--quiet",
            ],
        ),
    ]


def int4_step(model: Path, method: str) -> dict[str, Any]:
    """``convert --mode weight-only --weight-bits 4 --block-method METHOD --data``: observe (gptq),
    round, write, check, and evaluate against the float model (run segment by segment)."""
    out = WORK / f"q4_{method}.onnx"
    step = run(
        f"convert int4 {method} --data (observe + round + check + evaluate + write)",
        [
            "convert",
            str(model),
            "-o",
            str(out),
            "--mode",
            "weight-only",
            "--weight-bits",
            "4",
            "--weight-symmetric",
            "--block-method",
            method,
            "--data",
            str(WORK / "calib.npz"),
            "--report",
            str(WORK / f"report4_{method}.json"),
            "--quiet",
        ],
    )
    step["bytes"] = sum(p.stat().st_size for p in (out, out.with_name(out.name + ".data")))
    return step


def render(rows: dict[str, Any], held: int = 16) -> Path:
    """Write the section from ``rows`` (a run's JSON, ``bench/results/large_model.json``)."""
    return write_section("large_model", "\n".join(_lines(rows, held)), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run these steps; print, do not write")
    options = parser.parse_args()
    chosen = options.only or list(STEPS)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    try:
        start = time.perf_counter()
        model = build(WORK, options.layers, options.width)
        build_seconds = time.perf_counter() - start
        float_bytes = model.stat().st_size + (WORK / "model.onnx.data").stat().st_size
        rng = np.random.default_rng(1)
        np.savez(WORK / "calib.npz", x=rng.standard_normal((32, options.width), dtype=np.float32))
        held_out = rng.standard_normal((16, options.width), dtype=np.float32)
        rows: dict[str, Any] = {
            "layers": options.layers,
            "width": options.width,
            "float_bytes": float_bytes,
            "build_seconds": round(build_seconds, 1),
            "machine": machine(),
        }
        # Every quantcli step runs before the float model is loaded here for comparing: a child's
        # ru_maxrss includes this process's resident memory at the fork (Linux keeps the
        # pre-exec image's peak), so this process stays small while the children run.
        methods = [s.removeprefix("int4-") for s in chosen if s.startswith("int4-")]
        if "int8" in chosen:
            rows["steps"] = int8_steps(model)
        rows["int4"] = [int4_step(model, method) for method in methods]
        if "int8" in chosen:
            rows["int8_bytes"] = sum((WORK / n).stat().st_size for n in ("q.onnx", "q.onnx.data"))
            rows["same_weights_both_converts"] = (WORK / "q.onnx.data").read_bytes() == (
                WORK / "q2.onnx.data"
            ).read_bytes()
            rows["fidelity_held_out"] = compare(model, WORK / "q.onnx", held_out)
            rows["fidelity_report"] = json.loads((WORK / "report.json").read_text())["fidelity"]["outputs"][0]
        for method, step in zip(methods, rows["int4"], strict=True):
            step["fidelity_held_out"] = compare(model, WORK / f"q4_{method}.onnx", held_out)
            report = json.loads((WORK / f"report4_{method}.json").read_text())
            step["fidelity_report"] = report["fidelity"]["outputs"][0]
            layers = report["blockwise"]["layers"]
            step["output_sqnr_db_mean"] = (
                round(float(np.mean([la["output_sqnr_db"] for la in layers])), 2)
                if layers[0]["output_sqnr_db"] is not None
                else None
            )
    finally:
        if not options.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    if options.only:
        print(json.dumps(rows, indent=2))
        return
    print(render(rows, len(held_out)))


def _lines(rows: dict[str, Any], held: int) -> list[str]:
    float_bytes, int8_bytes, steps = rows["float_bytes"], rows["int8_bytes"], rows["steps"]
    fidelity = rows["fidelity_held_out"]
    lines = [
        "## Large model (> 2 GB of float weights)",
        "",
        f"`make bench-large` (`bench/large_model.py`): {rows['layers']} MatMul+Relu layers of "
        f"{rows['width']}x{rows['width']} float32, weights in an external data file, built on the fly "
        "and deleted afterwards. Each step is a `quantcli` child process; peak RSS is its own "
        f"(`wait4`). {rows['machine']}.",
        "",
        f"Float model {float_bytes / GB:.2f} GB, int8 model {int8_bytes / GB:.2f} GB "
        f"(float + int8 = {(float_bytes + int8_bytes) / GB:.2f} GB).",
        "",
        "| step | time (s) | peak RSS (GB) |",
        "|---|---:|---:|",
        *(f"| {s['step']} | {s['seconds']} | {s['peak_rss_gb']} |" for s in steps),
        "",
        f"int8 vs float on {held} held-out samples (onnxruntime, both models): SQNR "
        f"{fidelity['sqnr_db']} dB, worst cosine {fidelity['cosine_min']}, max abs error "
        f"{fidelity['max_abs_error']} (mean |output| {fidelity['output_abs_mean']}). "
        f"The two converts wrote identical weights: {rows['same_weights_both_converts']}.",
        "",
        "Quantization itself (`convert --calibration`) maps one float weight at a time and holds the int8 "
        "weights plus onnxruntime's session on the int8 model (its check). The steps that run the float "
        "model in onnxruntime (calibration, and evaluation under `convert --data`) need about its float "
        "size, which onnxruntime holds.",
    ]
    if rows["int4"]:
        lines += [
            "",
            "### 4-bit weights, streaming",
            "",
            "`convert --mode weight-only --weight-bits 4 --weight-symmetric --block-method rtn|gptq "
            "--data calib.npz` "
            "(block 32, symmetric): past 1 GiB of external weights a 4-bit build streams "
            "(quantcli/blockwise/streaming.py): each weight is read memory-mapped, rounded, written to a "
            "scratch file and unmapped; GPTQ's `X^T X` are observed with the float model cut into segments "
            "of at most 256 MiB (weights plus the statistics observed there), run one at a time over the "
            "calibration data, each segment's layers rounded and written out before the next runs; the "
            "fidelity check runs the float model the same way. Peak RSS is the child's own: the bench "
            "loads the float model only after every quantcli step (a child's `ru_maxrss` counts the "
            "parent's memory at the fork). Half the float size is "
            f"{float_bytes / 2 / GB:.2f} GB.",
            "",
            "| method | time (s) | peak RSS (GB) | peak / float size | size (GB) | ratio "
            "| SQNR held-out (dB) | worst cosine | report SQNR (dB) | mean layer output SQNR (dB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in rows["int4"]:
            f, r = s["fidelity_held_out"], s["fidelity_report"]
            share = s["peak_rss_gb"] * GB / float_bytes
            lines.append(
                f"| {s['step'].split()[2]} | {s['seconds']} | {s['peak_rss_gb']} | {share:.2f} "
                f"| {s['bytes'] / GB:.3f} | {float_bytes / s['bytes']:.2f} | {f['sqnr_db']} "
                f"| {f['cosine_min']} "
                f"| {round(r['sqnr_db'], 1)} | {s['output_sqnr_db_mean']} |"
            )
        lines += [
            "",
            "Layer output SQNR is the report's `tr(dW H dW^T)` proxy on the calibration samples (the 80% of "
            "calib.npz not held back): fewer samples than K make `X^T X` low-rank, which GPTQ fits almost "
            "exactly, so the held-out SQNR of the whole model is the figure to compare. RTN observes nothing "
            "(None). The 36 layers compound each layer's error.",
        ]
    return lines


if __name__ == "__main__":
    main()
