"""Calibration cost and quality: quantcli's streaming observers vs onnxruntime's calibrators.

Run: `make bench-calibration` or `.venv/bin/python bench/calibration.py [--zoo DIR] [--models a,b]`.
Writes the `calibration` section of bench/RESULTS.md and bench/results/calibration.json.

For each zoo model (PP-OCRv4 detector, MiniLM), on the same samples (a folder of one-sample .npz
files, read one at a time by both tools):
- cost: each method in a child process of its own, timed, peak RSS from os.wait4:
  quantcli = the library's calibrate() (min, max, histogram of every candidate tensor) and then the
  method's ranges; onnxruntime = create_calibrator(Entropy or Percentile), collect_data,
  compute_data (what quantize_static runs). Both at the same number of samples.
- growth: quantcli entropy at 32 and at 512 samples (calib.npz has 64, so samples are repeated in
  order: the cost of a sample does not depend on its values).
- quality: the model converted with each method from one calibration file (all of calib.npz),
  compared with fp32 on eval.npz: output cosine, and the task metric from bench/compare.py when
  it is there.
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
from _results import machine, write_section

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "_work" / "calibration"
MODELS = ("ppocrv4_det", "minilm_l6")
QUANTCLI_METHODS = ("entropy", "percentile", "mse")
ORT_METHODS = ("Entropy", "Percentile")
QUALITY_METHODS = ("minmax", "percentile", "entropy", "mse")
SMALL, LARGE = 32, 512


# --------------------------------------------------------------------------- child processes
# Imports are inside the functions: a child loads only its own tool, so its peak RSS is that tool's.


def _worker_quantcli(model: Path, data: Path, method: str) -> dict[str, Any]:
    from quantcli.calibration.methods import choose_ranges  # noqa: PLC0415
    from quantcli.config import CalibrationMethod, QuantConfig, QuantMode  # noqa: PLC0415
    from quantcli.pipeline import calibrate  # noqa: PLC0415

    # Observation only, like onnxruntime's calibrators: a named mode skips auto's candidate builds.
    config = QuantConfig(method=CalibrationMethod(method), mode=QuantMode.STATIC)
    result = calibrate(model, data, config=config)
    ranges = choose_ranges(result.stats, result.stats.keys(), config)
    return {"tensors": len(ranges), "samples": result.num_samples}


def _worker_ort(model: Path, data: Path, method: str) -> dict[str, Any]:
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator  # noqa: PLC0415

    class Folder(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.files = iter(sorted(data.glob("*.npz")))

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self.files, None)
            if path is None:
                return None
            with np.load(path) as arrays:
                return {k: arrays[k][np.newaxis] for k in arrays.files}

    augmented = data.parent / f"augmented_{os.getpid()}.onnx"
    calibrator = create_calibrator(
        model,
        augmented_model_path=str(augmented),
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"percentile": 99.99} if method == "Percentile" else {},
    )
    calibrator.collect_data(Folder())
    ranges = calibrator.compute_data()
    augmented.unlink(missing_ok=True)
    return {"tensors": len(ranges.data), "samples": len(list(data.glob("*.npz")))}


def _measure(tool: str, model: Path, data: Path, method: str) -> dict[str, Any]:
    """Run one calibration in a child; its wall time and peak RSS (from os.wait4)."""
    out = WORK / f"result_{os.getpid()}.json"
    command = [sys.executable, __file__, "--worker", tool, str(model), str(data), method, str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stderr = child.stderr.read().decode() if child.stderr else ""
    if status != 0:
        reason = stderr.strip().splitlines()[-1:] or [
            f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {status >> 8}"
        ]
        return {
            "tool": tool,
            "method": method,
            "status": "failed",
            "error": reason[0][:200],
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        }
    detail = json.loads(out.read_text())
    out.unlink()
    return {
        "tool": tool,
        "method": method,
        "status": "ok",
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        **detail,
    }


# --------------------------------------------------------------------------- data and quality


def sample_folder(model_dir: Path, count: int) -> Path:
    """``count`` samples of calib.npz as one-sample .npz files (repeated in order if needed)."""
    folder = WORK / f"{model_dir.name}_{count}"
    if folder.is_dir() and len(list(folder.glob("*.npz"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(model_dir / "calib.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    available = len(next(iter(arrays.values())))
    for i in range(count):
        np.savez(folder / f"{i:05d}.npz", **{k: v[i % available] for k, v in arrays.items()})
    return folder


def at_least_opset_13(model_dir: Path) -> Path:
    """The model, converted to opset 13 when older (quantcli needs per-axis QuantizeLinear);
    both tools calibrate the same converted file."""
    import onnx  # noqa: PLC0415
    import onnx.version_converter  # noqa: PLC0415

    model = onnx.load(model_dir / "model.onnx")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13:
        return model_dir / "model.onnx"
    target = WORK / f"{model_dir.name}.opset13.onnx"
    if not target.exists():
        onnx.save(onnx.version_converter.convert_version(model, 13), target)
    return target


def _task_metric(model_dir: Path) -> Any:
    """The task's metric function from bench/compare.py, when it exists."""
    task = json.loads((model_dir / "task.json").read_text())
    try:
        import compare  # noqa: PLC0415
    except ImportError:
        return None, task
    by_task = {"embedding": "embedding_metrics", "text_detection": "mask_metrics"}
    return getattr(compare, by_task.get(task["task"], ""), None), task


def quality(model_dir: Path, model: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort  # noqa: PLC0415

    from quantcli.calibration.file import write_calibration  # noqa: PLC0415
    from quantcli.config import CalibrationMethod, QuantConfig, QuantMode  # noqa: PLC0415
    from quantcli.pipeline import calibrate, quantize  # noqa: PLC0415

    calib_file = WORK / f"{model_dir.name}.calib.json"
    static = QuantConfig(mode=QuantMode.STATIC)
    write_calibration(calibrate(model, model_dir / "calib.npz", config=static), calib_file, force=True)
    metric, task = _task_metric(model_dir)
    with np.load(model_dir / "eval.npz") as archive:
        feed = {k: archive[k] for k in archive.files}

    def outputs(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = task.get("output") or session.get_outputs()[0].name
        n = len(next(iter(feed.values())))
        return np.concatenate(
            [session.run([name], {k: v[i : i + 8] for k, v in feed.items()})[0] for i in range(0, n, 8)]
        )

    reference = outputs(model)
    rows = []
    for method in QUALITY_METHODS:
        out = WORK / f"{model_dir.name}.{method}.onnx"
        result = quantize(
            model,
            out,
            config=QuantConfig(method=CalibrationMethod(method)),
            calibration=calib_file,
            eval_data=model_dir / "eval.npz",
            force=True,
        )
        fidelity = result.report.fidelity
        assert fidelity is not None
        chosen = next((o for o in fidelity.outputs if o.name == task.get("output")), fidelity.outputs[0])
        row: dict[str, Any] = {
            "method": method,
            "cosine_mean": chosen.cosine_mean,
            "cosine_min": chosen.cosine_min,
        }
        if metric is not None:
            row.update({f"task_{k}": v for k, v in metric(reference, outputs(out), task).items()})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def _key_metric(rows: list[dict[str, Any]]) -> str:
    for key in ("task_mask_iou", "task_nn_agreement", "cosine_mean"):
        if all(key in r for r in rows):
            return key
    return "cosine_mean"


def markdown(results: dict[str, Any], seconds: float) -> str:
    lines = [
        "## calibration",
        "",
        f"`bench/calibration.py` ({machine()}; {seconds:.0f} s). "
        f"Each calibration ran in a child process of its own on the same {SMALL} samples "
        "(a folder of one-sample .npz files, read one at a time by both tools); "
        f"growth: quantcli entropy on {SMALL} vs {LARGE} samples "
        "(calib.npz has 64: samples repeated in order). "
        "quantcli = calibrate() (min, max, histogram of every candidate tensor) + the method's ranges; "
        "onnxruntime = create_calibrator + collect_data + compute_data, over every float tensor it augments.",
        "",
    ]
    for model, result in results.items():
        cost = result["cost"]
        lines += [
            f"### {model}",
            "",
            "| tool | method | samples | tensors | wall s | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in cost:
            if row["status"] != "ok":
                lines.append(
                    f"| {row['tool']} | {row['method']} | {SMALL} | - | failed after {row['seconds']:.0f} s: "
                    f"{row['error']} | {row['peak_rss_mb']:.0f} |"
                )
                continue
            lines.append(
                f"| {row['tool']} | {row['method']} | {row['samples']} | {row['tensors']} | "
                f"{row['seconds']:.1f} | "
                f"{row['peak_rss_mb']:.0f} |"
            )
        ok = [r for r in cost if r["status"] == "ok" and r["samples"] == SMALL]
        ours = [r for r in ok if r["tool"] == "quantcli"]
        theirs = [r for r in ok if r["tool"] == "onnxruntime"]
        if not theirs:
            lines += ["", "onnxruntime's calibrators failed on this model: no ratio."]
        if ours and theirs:
            rss = max(r["peak_rss_mb"] for r in ours) / min(r["peak_rss_mb"] for r in theirs)
            wall = max(r["seconds"] for r in ours) / min(r["seconds"] for r in theirs)
            lines += [
                "",
                f"Worst quantcli / best onnxruntime: peak RSS {rss:.3f} (target <= 0.125), "
                f"wall time {wall:.3f} (target <= 0.333).",
            ]
        growth = [
            r for r in cost if r["status"] == "ok" and r["tool"] == "quantcli" and r["method"] == "entropy"
        ]
        small = next((r for r in growth if r["samples"] == SMALL), None)
        large = next((r for r in growth if r["samples"] == LARGE), None)
        if small and large:
            lines.append("")
            lines.append(
                f"quantcli peak RSS {small['peak_rss_mb']:.0f} MB at {SMALL} samples, "
                f"{large['peak_rss_mb']:.0f} MB at "
                f"{LARGE}: {100 * (large['peak_rss_mb'] / small['peak_rss_mb'] - 1):+.1f} % (target < +10 %)."
            )
        rows = result["quality"]
        if rows:
            key = _key_metric(rows)
            extra = sorted({k for r in rows for k in r if k.startswith("task_")})
            lines += [
                "",
                "| method | cosine mean | cosine worst |" + "".join(f" {k} |" for k in extra),
                "|---|---:|---:|" + "---:|" * len(extra),
            ]
            for r in rows:
                lines.append(
                    f"| {r['method']} | {r['cosine_mean']:.5f} | {r['cosine_min']:.5f} |"
                    + "".join(f" {r[k]:.4f} |" for k in extra)
                )
            if not extra:
                lines += ["", "Task metric not measured in this run (bench/compare.py was not importable)."]
            best = max(rows, key=lambda r: (r[key], r["cosine_mean"]))
            lines += [
                "",
                f"**Best method for {model}: {best['method']}** "
                f"(by {key.removeprefix('task_')}, ties by cosine).",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip-large", action="store_true", help=f"no {LARGE}-sample growth run")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        tool, model, data, method, out = args.worker
        work = _worker_quantcli if tool == "quantcli" else _worker_ort
        Path(out).write_text(json.dumps(work(Path(model), Path(data), method)))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        model_dir = args.zoo / name
        if not (model_dir / "model.onnx").is_file():
            print(f"skipping {name}: no {model_dir / 'model.onnx'} (build the zoo first)", file=sys.stderr)
            continue
        model = at_least_opset_13(model_dir)
        small = sample_folder(model_dir, SMALL)
        cost = [_measure("quantcli", model, small, m) for m in QUANTCLI_METHODS]
        cost += [_measure("onnxruntime", model, small, m) for m in ORT_METHODS]
        if not args.skip_large:
            cost.append(_measure("quantcli", model, sample_folder(model_dir, LARGE), "entropy"))
        for row in cost:
            print(name, row, file=sys.stderr)
        results[name] = {"cost": cost, "quality": quality(model_dir, model)}
        print(name, results[name]["quality"], file=sys.stderr)
    if not results:
        return 1
    write_section("calibration", markdown(results, time.perf_counter() - start), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
