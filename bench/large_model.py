"""A model past protobuf's 2 GiB limit, quantized end to end through the CLI.

Builds a stack of MatMul+Relu layers whose float weights total more than 2 GB, written tensor by
tensor to an external data file in a git-ignored folder (deleted afterwards), then runs
``quantcli calibrate`` and ``quantcli convert`` (``--mode static``: the default auto would build,
stage and hold a model per candidate mode) in child processes and records each one's peak
resident memory (``wait4``'s rusage) and wall time. Finally both models run in onnxruntime on
held-out samples and their outputs are compared.

    python bench/large_model.py [--layers 36] [--width 4096] [--keep]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    options = parser.parse_args()
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
        steps = [
            run(
                "calibrate",
                [
                    "calibrate",
                    str(model),
                    "--data",
                    str(WORK / "calib.npz"),
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
                    str(WORK / "calib.npz"),
                    "--report",
                    str(WORK / "report.json"),
                    "--mode",
                    "static",
                    "--quiet",
                ],
            ),
        ]
        int8_bytes = sum((WORK / n).stat().st_size for n in ("q.onnx", "q.onnx.data"))
        identical = all(
            (WORK / a).read_bytes() == (WORK / b).read_bytes() for a, b in (("q.onnx.data", "q2.onnx.data"),)
        )
        fidelity = compare(model, WORK / "q.onnx", held_out)
        report = json.loads((WORK / "report.json").read_text())
    finally:
        if not options.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    rows = {
        "layers": options.layers,
        "width": options.width,
        "float_bytes": float_bytes,
        "int8_bytes": int8_bytes,
        "build_seconds": round(build_seconds, 1),
        "steps": steps,
        "fidelity_held_out": fidelity,
        "fidelity_report": report["fidelity"]["outputs"][0],
        "same_weights_both_converts": identical,
        "machine": machine(),
    }
    lines = [
        "## Large model (> 2 GB of float weights)",
        "",
        f"`make bench-large` (`bench/large_model.py`): {options.layers} MatMul+Relu layers of "
        f"{options.width}x{options.width} float32, weights in an external data file, built on the fly "
        "and deleted afterwards. Each step is a `quantcli` child process; peak RSS is its own "
        f"(`wait4`). {machine()}.",
        "",
        f"Float model {float_bytes / GB:.2f} GB, int8 model {int8_bytes / GB:.2f} GB "
        f"(float + int8 = {(float_bytes + int8_bytes) / GB:.2f} GB).",
        "",
        "| step | time (s) | peak RSS (GB) |",
        "|---|---:|---:|",
        *(f"| {s['step']} | {s['seconds']} | {s['peak_rss_gb']} |" for s in steps),
        "",
        f"int8 vs float on {len(held_out)} held-out samples (onnxruntime, both models): SQNR "
        f"{fidelity['sqnr_db']} dB, worst cosine {fidelity['cosine_min']}, max abs error "
        f"{fidelity['max_abs_error']} (mean |output| {fidelity['output_abs_mean']}). "
        f"The two converts wrote identical weights: {identical}.",
        "",
        "Quantization itself (`convert --calibration`) maps one float weight at a time and holds the int8 "
        "weights plus onnxruntime's session on the int8 model (its check). The steps that run the float "
        "model in onnxruntime (calibration, and evaluation under `convert --data`) need about its float "
        "size, which onnxruntime holds.",
    ]
    print(write_section("large_model", "\n".join(lines), rows))


if __name__ == "__main__":
    main()
