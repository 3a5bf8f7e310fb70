"""quantcli beside onnxruntime, Neural Compressor and NNCF on the benchmark zoo and the sample models.

Run: `make compare` (after `make zoo`; it also builds the peers' venvs), or
`.benchenv/bin/python bench/compare.py [--models a,b]`. Writes the `compare` section of
bench/RESULTS.md and bench/results/compare.json.

Every model is fed from a folder of ready-to-feed samples, one .npz file each (exactly the dict
InferenceSession.run takes): the zoo's calib/ and eval/, or, for a model that only has stacked
calib.npz / eval.npz, those split one sample per file into the work folder first. Each tool
quantizes from the same calib/ in a child process of its own, so the wall time and peak RSS
measured are that tool's alone:
    quantcli default  exactly `quantcli convert MODEL -o OUT --data calib/`, nothing else
    quantcli static   `--mode static --data calib/ --eval-data eval/` (the best quantcli reached
                      with a flag on most models; its report also gives the channel SQNR column)
    ort static        onnxruntime quantize_static: QDQ, per-channel, MinMax, uint8 activations / int8 weights
    ort dynamic       onnxruntime quantize_dynamic, int8 weights
    inc               onnx-neural-compressor's default static PTQ, in .benchenv-inc
    nncf              nncf.quantize on the onnx.ModelProto at its defaults, in .benchenv-nncf
(see bench/_ort_quantize.py and bench/_peer_quantize.py). Every output is then measured in this
one process against the fp32 model on eval/, one sample per run: the task's own metric, the cosine
of the output, the size on disk (model and external data), and onnxruntime latency at 1 and 2
threads.

Latency: one sample (the first of eval/), the fp32 and every quantized session timed in turn,
the order rotating each round, so a noisy shared machine slows all alike; medians; ratio =
quantized / fp32 (below 1 is faster). The 1-minute load average is noted with each model.

Done when (issue 13), per model, for the default command's output: exit 0; task metric >= the best
peer's - 0.01; size ratio >= 0.98 x the best size ratio among the peers within 0.02 of the best
peer task metric; latency at 1 thread <= 1.05 x that peer's, and below fp32 wherever any peer is.
Determinism: two more default converts (with --report), the second while two busy loops load both
cores, must give byte-identical models and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from _results import machine, write_section

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ZOO_MODELS = (
    "minilm_l6", "ppocrv4_det", "yolov8n_320",
    "ppocr_cls", "ppocrv4_rec", "ddddocr_captcha", "magika_v3_3", "silero_vad", "minilm_l6_varlen",
)  # fmt: skip
SAMPLE_MODELS = ("digits_cnn", "digits_transformer")
THREADS = (1, 2)
EVAL_BATCH = 8
MIN_ROUND_SECONDS = 0.1  # repeats per round are chosen so one round lasts at least this long

DEFAULT_TOOL = "quantcli default"
PEERS = ("ort static", "ort dynamic", "inc", "nncf")
# Each peer's venv (the Makefile's `peers` target); a peer whose venv is missing gets a row saying so.
PEER_PYTHON = {
    "inc": ROOT / ".benchenv-inc" / "bin" / "python",
    "nncf": ROOT / ".benchenv-nncf" / "bin" / "python",
}
DONE = {"metric_slack": 0.01, "comparable": 0.02, "size_fraction": 0.98, "latency_slack": 1.05}
BUSY_LOOPS = 2  # one per core of this machine, while the second determinism convert runs


@dataclass
class Row:
    """One tool on one model: what it cost and what it kept."""

    model: str
    tool: str
    status: str = "ok"
    error: str = ""
    size_ratio: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    cosine_mean: float | None = None
    cosine_worst: float | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    quantize_seconds: float | None = None
    peak_rss_mb: float | None = None
    notes: str = ""
    chosen_mode: str = ""  # the mode quantcli's report says it wrote (auto picks one)
    # quantcli's own label-free measure on the eval set (what auto chooses by without labels):
    # the worst output's per-channel SQNR averaged in dB.
    channel_sqnr_db: float | None = None


# --------------------------------------------------------------------------- running the quantizers


def run_measured(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run a child through bench/_measure.py; return its exit code, wall seconds and peak RSS in MiB."""
    result = log.with_suffix(".measure.json")
    launcher = [sys.executable, str(BENCH / "_measure.py"), str(result), str(log), "--"]
    subprocess.run(launcher + command, cwd=ROOT, check=True)
    measured = json.loads(result.read_text())
    return int(measured["exit_code"]), float(measured["seconds"]), float(measured["peak_rss_mb"])


def _last_lines(log: Path, count: int = 3) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"


@dataclass(frozen=True)
class Data:
    """The ready-to-feed sample folders a model is quantized from and measured on."""

    calib: Path
    eval: Path


def _cli() -> str:
    return str(Path(sys.executable).parent / "quantcli")


def default_command(model: Path, output: Path, data: Data) -> list[str]:
    """The command a user runs: nothing but the model, the output and the calibration folder."""
    return [_cli(), "convert", str(model), "-o", str(output), "--data", str(data.calib)]


def quantcli_command(
    model: Path,
    output: Path,
    data: Data,
    *,
    quiet: bool = True,
    mode: str = "static",
    method: str = "",
    flags: tuple[str, ...] = (),
) -> list[str]:
    # --eval-data: without it quantcli would hold back 20% of calib/ and calibrate on fewer
    # samples than the peers get.
    command = [_cli(), "convert", str(model), "-o", str(output), "--mode", mode]
    command += ["--method", method] if method else []
    command += list(flags)
    command += ["--data", str(data.calib), "--eval-data", str(data.eval), "--force"]
    return command + (["--json", "--quiet"] if quiet else ["--debug"])


def _method(tool: str) -> str:
    """'quantcli static mse' -> 'mse'; '' for quantcli's default method."""
    words = [w for w in tool.split() if not w.startswith("--")]
    return words[2] if len(words) > 2 else ""


def _flags(tool: str) -> tuple[str, ...]:
    """'quantcli auto --auto-fallback' -> ('--auto-fallback',): flags passed as they are."""
    return tuple(w for w in tool.split() if w.startswith("--"))


def tool_command(tool: str, model: Path, output: Path, data: Data) -> list[str] | str:
    """The child command for one tool, or why it cannot run here."""
    if tool == DEFAULT_TOOL:
        return default_command(model, output, data)
    if tool.startswith("quantcli"):
        return quantcli_command(
            model, output, data, mode=tool.split()[1], method=_method(tool), flags=_flags(tool)
        )
    if tool.startswith("ort "):
        mode = tool.rsplit(maxsplit=1)[-1]
        command = [sys.executable, str(BENCH / "_ort_quantize.py"), mode, str(model), str(output)]
        return command + (["--data", str(data.calib)] if mode == "static" else [])
    python = PEER_PYTHON[tool]
    if not python.exists():
        return f"{python.parent.parent.name} missing: run `make peers`"
    return [
        str(python),
        str(BENCH / "_peer_quantize.py"),
        tool,
        str(model),
        str(output),
        "--data",
        str(data.calib),
    ]


def quantize(tool: str, model: Path, output: Path, data: Data) -> tuple[Row, bool]:
    """Run one tool; the row carries its time and memory, or its error."""
    row = Row(model=output.parent.parent.name, tool=tool)
    log = output.parent.with_suffix(".log")
    command = tool_command(tool, model, output, data)
    if isinstance(command, str):
        row.status, row.error = "not run", command
        return row, False
    code, row.quantize_seconds, row.peak_rss_mb = run_measured(command, log)
    if code != 0 or not output.exists():
        row.status = f"quantize failed (exit {code})" if code != 0 else "wrote no model (exit 0)"
        row.error = _last_lines(log)
        if tool.startswith("quantcli") and tool != DEFAULT_TOOL and row.error == "(no output)":
            # quantcli prints nothing at all on an error under --json/--quiet: ask again without them.
            again = quantcli_command(
                model,
                output,
                data,
                quiet=False,
                mode=tool.split()[1],
                method=_method(tool),
                flags=_flags(tool),
            )
            run_measured(again, log)
            row.error = _last_lines(log) + " (message from a rerun without --json --quiet)"
        return row, False
    if tool.startswith("quantcli") and tool != DEFAULT_TOOL:
        read_report(row, json.loads(log.read_text()))
    return row, True


def read_report(row: Row, report: dict[str, Any]) -> None:
    """The mode quantcli wrote and its label-free fidelity measure, from its JSON report."""
    row.notes = f"int8 weight fraction {report.get('int8_weight_fraction', float('nan')):.3f}"
    row.chosen_mode = str(report.get("mode", ""))
    outputs = (report.get("fidelity") or {}).get("outputs") or []
    values = [o.get("channel_sqnr_db") or o.get("sqnr_db") for o in outputs]
    # The report writes an exact match's infinite SQNR as the string "inf".
    numbers = [math.inf if v == "inf" else v for v in values if isinstance(v, int | float) or v == "inf"]
    row.channel_sqnr_db = min(numbers, default=None)


def disk_bytes(output: Path) -> int:
    """The model file and whatever else the tool wrote beside it (external data)."""
    return sum(p.stat().st_size for p in output.parent.iterdir() if p.is_file())


# --------------------------------------------------------------------------- determinism


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes spinning on a core each for the duration, then ended by their ids."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _json_paths(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _json_paths(item, f"{prefix}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _json_paths(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def determinism(model: Path, work: Path, data: Data, default_output: Path | None) -> dict[str, Any]:
    """Two default converts with --report, the second with the machine loaded, compared byte for byte.

    Both write to the same paths (the report names them), moved aside after each run."""
    target = work / "determinism"
    target.mkdir()
    output, report = target / "model.onnx", target / "report.json"
    command = [*default_command(model, output, data), "--report", str(report)]
    runs: list[dict[str, bytes]] = []
    codes: list[int] = []
    for index, loaded in enumerate((False, True)):
        with busy_loops(BUSY_LOOPS) if loaded else contextlib.nullcontext():
            code, _, _ = run_measured(command, work / f"determinism{index}.log")
        codes.append(code)
        runs.append(_files(target) if code == 0 else {})
        kept = work / f"determinism{index}"
        target.rename(kept)
        target.mkdir()
    result: dict[str, Any] = {"exit_codes": codes, "busy_loops": BUSY_LOOPS}
    if any(codes):
        result["verdict"] = "not measured: a convert failed"
        return result
    first, second = runs
    models = {n: b for n, b in first.items() if n != "report.json"}
    result["model_identical"] = models == {n: b for n, b in second.items() if n != "report.json"}
    result["report_identical"] = first.get("report.json") == second.get("report.json")
    if not result["report_identical"]:
        a = _json_paths(json.loads(first["report.json"]))
        b = _json_paths(json.loads(second["report.json"]))
        result["report_differs_at"] = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))[:8]
    if default_output is not None:
        # The plain default row's model, converted without --report: the same bytes again?
        result["default_row_identical"] = _files(default_output.parent) == models
    result["mode"] = str(json.loads(first["report.json"]).get("mode", ""))
    return result


# --------------------------------------------------------------------------- running the models


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Sessions are timed in turn: a finished session's spinning pool threads would steal the cores
    # from the next one, so no session spins.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(path: Path, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    runner = session(path, threads=2)
    count = len(next(iter(inputs.values())))
    parts = [
        runner.run([output], {k: v[i : i + EVAL_BATCH] for k, v in inputs.items()})[0]
        for i in range(0, count, EVAL_BATCH)
    ]
    return np.concatenate(parts).astype(np.float64)


def load_samples(folder: Path) -> list[dict[str, np.ndarray]]:
    """Every ready-to-feed sample of a folder, in file order."""
    feeds = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            feeds.append({name: archive[name] for name in archive.files})
    return feeds


def run_samples(path: Path, feeds: list[dict[str, np.ndarray]], output: str) -> list[np.ndarray]:
    """One run per sample (samples may differ in shape), the named output of each."""
    runner = session(path, threads=2)
    return [np.asarray(runner.run([output], feed)[0]).astype(np.float64) for feed in feeds]


def latency(
    paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int, threads_list: tuple[int, ...] = THREADS
) -> dict[str, dict[str, float]]:
    """Median ms per model at each thread count, all models timed in one rotating loop."""
    results: dict[str, dict[str, float]] = {name: {} for name in paths}
    for threads in threads_list:
        sessions = {name: session(path, threads) for name, path in paths.items()}
        for runner in sessions.values():  # warm-up, and size the repeats on the slowest model
            runner.run(None, feed)
        start = time.perf_counter()
        for runner in sessions.values():
            runner.run(None, feed)
        slowest = (time.perf_counter() - start) / len(sessions)
        repeats = max(1, math.ceil(MIN_ROUND_SECONDS / max(slowest, 1e-6)))
        times: dict[str, list[float]] = {name: [] for name in sessions}
        names = list(sessions)
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                begin = time.perf_counter()
                for _ in range(repeats):
                    sessions[name].run(None, feed)
                times[name].append((time.perf_counter() - begin) / repeats)
        for name in names:
            results[name][f"threads{threads}_ms"] = 1000 * statistics.median(times[name])
    return results


# --------------------------------------------------------------------------- task metrics


# Outputs: a stack (axis 0 = samples) or one array per sample, as bench/calibration.py and
# bench/evidence.py pass stacks and this script passes lists.
Outputs = np.ndarray | list[np.ndarray]


def _stack(outputs: Outputs) -> np.ndarray:
    return outputs if isinstance(outputs, np.ndarray) else np.concatenate(outputs, axis=0)


def cosine_rows(reference: Outputs, candidate: Outputs) -> np.ndarray:
    """Cosine of each sample's whole output with fp32's."""
    a = [np.ravel(x) for x in reference]
    b = [np.ravel(x) for x in candidate]
    dots = np.array([np.dot(x, y) for x, y in zip(a, b, strict=True)])
    norms = np.array([np.linalg.norm(x) * np.linalg.norm(y) for x, y in zip(a, b, strict=True)])
    return dots / np.maximum(norms, 1e-30)


def embedding_metrics(reference: Outputs, candidate: Outputs, _task: dict[str, Any]) -> dict[str, float]:
    reference, candidate = _stack(reference), _stack(candidate)
    cosine = cosine_rows(reference, candidate)

    def neighbours(embeddings: np.ndarray) -> np.ndarray:
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argmax(similarity, axis=1)

    agreement = float(np.mean(neighbours(reference) == neighbours(candidate)))
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_worst": float(cosine.min()),
        "nn_agreement": agreement,
    }


def mask_metrics(reference: Outputs, candidate: Outputs, task: dict[str, Any]) -> dict[str, float]:
    threshold = float(task["mask_threshold"])
    a = _stack(reference) > threshold
    b = _stack(candidate) > threshold
    axes = tuple(range(1, a.ndim))
    inter = np.sum(a & b, axis=axes)
    union = np.sum(a | b, axis=axes)
    per_image = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    # Pooled over the whole set (total overlap / total union), so tiny masks do not dominate.
    return {
        "mask_iou": float(inter.sum() / max(union.sum(), 1)),
        "mask_iou_image_mean": float(per_image.mean()),
        "mask_iou_image_worst": float(per_image.min()),
        "fp32_mask_fraction": float(a.mean()),
    }


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with each of others."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def decode_yolo(
    prediction: np.ndarray, conf: float, nms_iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's [4 + classes, anchors] output -> boxes (x1y1x2y2), scores, classes after per-class NMS."""
    columns = prediction.T
    scores_all = columns[:, 4:]
    classes = scores_all.argmax(axis=1)
    scores = scores_all[np.arange(len(columns)), classes]
    keep = scores > conf
    centre, size = columns[keep, :2], columns[keep, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    scores, classes = scores[keep], classes[keep]
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        same = [k for k in kept if classes[k] == classes[index]]
        if not same or box_iou(boxes[index], boxes[same]).max() <= nms_iou:
            kept.append(int(index))
    return boxes[kept], scores[kept], classes[kept]


def match_boxes(reference: tuple[np.ndarray, ...], candidate: tuple[np.ndarray, ...], iou: float) -> int:
    """True positives: candidate boxes, best score first, each taking one unmatched same-class reference."""
    ref_boxes, _, ref_classes = reference
    boxes, scores, classes = candidate
    free = np.ones(len(ref_boxes), dtype=bool)
    hits = 0
    for index in np.argsort(-scores, kind="stable"):
        pool = np.flatnonzero(free & (ref_classes == classes[index]))
        if len(pool) == 0:
            continue
        overlaps = box_iou(boxes[index], ref_boxes[pool])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            free[pool[best]] = False
            hits += 1
    return hits


def detection_metrics(reference: Outputs, candidate: Outputs, task: dict[str, Any]) -> dict[str, float]:
    conf, nms_iou, match_iou = float(task["conf_threshold"]), float(task["nms_iou"]), float(task["match_iou"])
    hits = ref_total = cand_total = 0
    for ref_image, cand_image in zip(_stack(reference), _stack(candidate), strict=True):
        ref = decode_yolo(ref_image, conf, nms_iou)
        cand = decode_yolo(cand_image, conf, nms_iou)
        hits += match_boxes(ref, cand, match_iou)
        ref_total += len(ref[0])
        cand_total += len(cand[0])
    f1 = 2 * hits / (ref_total + cand_total) if ref_total + cand_total else 1.0
    return {"box_f1": f1, "fp32_boxes": float(ref_total), "quantized_boxes": float(cand_total)}


def classification_metrics(reference: Outputs, candidate: Outputs, task: dict[str, Any]) -> dict[str, float]:
    labels = np.asarray(task["labels"])
    known = labels >= 0  # a label outside the model's classes scores neither model
    ref, cand = _stack(reference).argmax(axis=1), _stack(candidate).argmax(axis=1)
    return {
        "top1_fp32": float(np.mean(ref[known] == labels[known])),
        "top1": float(np.mean(cand[known] == labels[known])),
        "top1_agreement": float(np.mean(ref == cand)),
    }


def ctc_decode(scores: np.ndarray, blank: int) -> tuple[int, ...]:
    """Greedy CTC: the best class per time step, repeats merged, blanks dropped."""
    best = scores.reshape(-1, scores.shape[-1]).argmax(axis=1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return tuple(int(i) for i in best[keep & (best != blank)])


def ctc_metrics(reference: Outputs, candidate: Outputs, task: dict[str, Any]) -> dict[str, float]:
    """Recognized strings equal to fp32's, and time steps whose best class is fp32's."""
    blank = int(task["blank"])
    same = [ctc_decode(a, blank) == ctc_decode(b, blank) for a, b in zip(reference, candidate, strict=True)]
    frames = [
        np.mean(a.reshape(-1, a.shape[-1]).argmax(1) == b.reshape(-1, b.shape[-1]).argmax(1))
        for a, b in zip(reference, candidate, strict=True)
    ]
    return {"string_agreement": float(np.mean(same)), "frame_agreement": float(np.mean(frames))}


def vad_metrics(reference: Outputs, candidate: Outputs, task: dict[str, Any]) -> dict[str, float]:
    """Speech / non-speech decisions equal to fp32's at the task's threshold, and the probability gap."""
    threshold = float(task["threshold"])
    a, b = _stack(reference).ravel(), _stack(candidate).ravel()
    return {
        "decision_agreement": float(np.mean((a > threshold) == (b > threshold))),
        "prob_mean_abs_diff": float(np.mean(np.abs(a - b))),
        "fp32_speech_fraction": float(np.mean(a > threshold)),
    }


METRICS: dict[str, Callable[[Outputs, Outputs, dict[str, Any]], dict[str, float]]] = {
    "embedding": embedding_metrics,
    "text_detection": mask_metrics,
    "detection": detection_metrics,
    "classification": classification_metrics,
    "ctc_recognition": ctc_metrics,
    "vad": vad_metrics,
}


# --------------------------------------------------------------------------- one model


@dataclass
class Subject:
    """A model to compare: its folder (model.onnx, then calib/ and eval/ or calib.npz and eval.npz)
    and its task description."""

    name: str
    folder: Path
    task: dict[str, Any]


def subjects(zoo: Path, wanted: set[str] | None) -> list[Subject]:
    found = []
    for name in ZOO_MODELS:
        folder = zoo / name
        if folder.is_dir():
            found.append(Subject(name, folder, json.loads((folder / "task.json").read_text())))
        else:
            sys.stderr.write(f"compare: {folder} missing; build the zoo with `make zoo`\n")
    for name in SAMPLE_MODELS:
        folder = ROOT / "sample_models" / name
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        labels = np.load(folder / "eval_labels.npy").tolist()
        task = {"task": "classification", "output": model.graph.output[0].name, "labels": labels}
        found.append(Subject(name, folder, task))
    return [s for s in found if wanted is None or s.name in wanted]


def sample_folders(subject: Subject, work: Path) -> Data:
    """The model's calib/ and eval/ folders; a model with stacked .npz files only gets them split
    one sample per file (each at the model's own rank: a batch of 1) into the work folder."""
    if (subject.folder / "calib").is_dir() and (subject.folder / "eval").is_dir():
        return Data(subject.folder / "calib", subject.folder / "eval")
    for split in ("calib", "eval"):
        target = work / "data" / split
        target.mkdir(parents=True)
        with np.load(subject.folder / f"{split}.npz", allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        for index in range(len(next(iter(arrays.values())))):
            np.savez(target / f"{index:04d}.npz", **{k: v[index : index + 1] for k, v in arrays.items()})
    return Data(work / "data" / "calib", work / "data" / "eval")


COMPARE_TOOLS = [DEFAULT_TOOL, "quantcli static", *PEERS]

# quantcli's own modes, for the per-mode table (bench/compare.py --modes).
# The last two are auto with options that trade build time for speed or fidelity: fallback
# repairing a faster mode that missed the bound, and bias correction of int8 Convs.
MODE_TOOLS = [f"quantcli {mode}" for mode in ("static", "mixed", "dynamic", "weight-only", "auto")] + [
    "quantcli auto --auto-fallback",
    "quantcli auto --auto-fallback --bias-correction",
]


def _slug(tool: str) -> str:
    return tool.replace(" ", "_").replace("-", "")


def compare_model(
    subject: Subject, rounds: int, work_root: Path, *, modes: bool = False
) -> tuple[list[Row], dict[str, Any]]:
    """Every tool on one model, then every output measured; and the determinism check."""
    work = work_root / subject.name
    work.mkdir(parents=True)
    data = sample_folders(subject, work)
    fp32 = subject.folder / "model.onnx"
    rows: list[Row] = []
    produced: dict[str, Path] = {}
    for tool in MODE_TOOLS if modes else COMPARE_TOOLS:
        output = work / _slug(tool) / "model.onnx"
        output.parent.mkdir()
        sys.stderr.write(f"compare: {subject.name}: {tool}\n")
        row, ok = quantize(tool, fp32, output, data)
        rows.append(row)
        if ok:
            produced[tool] = output
    extra: dict[str, Any] = {}
    if not modes:
        sys.stderr.write(
            f"compare: {subject.name}: determinism (second convert with {BUSY_LOOPS} busy loops)\n"
        )
        extra["determinism"] = determinism(fp32, work, data, produced.get(DEFAULT_TOOL))
        default = next(r for r in rows if r.tool == DEFAULT_TOOL)
        default.chosen_mode = str(extra["determinism"].get("mode", ""))
        report = work / "determinism0" / "report.json"
        if report.exists():
            read_report(default, json.loads(report.read_text()))
    extra["load_average_1min"] = evaluate(subject, fp32, rows, produced, rounds, data=data)
    return rows, extra


def evaluate(
    subject: Subject, fp32: Path, rows: list[Row], produced: dict[str, Path], rounds: int, *, data: Data
) -> float | None:
    """Fill each row's fidelity, size and latency; a model that does not load gets a row saying so.
    Returns the 1-minute load average just before the latency rounds."""
    feeds = load_samples(data.eval)
    output = str(subject.task["output"])
    reference = run_samples(fp32, feeds, output)
    metric = METRICS[str(subject.task["task"])]
    loaded: dict[str, Path] = {}
    fp32_bytes = fp32.stat().st_size  # every bench fp32 model is one file
    for row in rows:
        path = produced.get(row.tool)
        if path is None:
            continue
        try:
            candidate = run_samples(path, feeds, output)
        except Exception as exc:  # any onnxruntime failure is a result to record, not a crash
            row.status, row.error = (
                "does not load or run in onnxruntime",
                f"{type(exc).__name__}: {exc}"[:500],
            )
            continue
        loaded[row.tool] = path
        cosine = cosine_rows(reference, candidate)
        row.cosine_mean, row.cosine_worst = float(cosine.mean()), float(cosine.min())
        row.metrics = metric(reference, candidate, subject.task)
        row.size_ratio = fp32_bytes / disk_bytes(path)
    if not loaded:
        return None
    load = os.getloadavg()[0]
    times = latency({"fp32": fp32, **loaded}, feeds[0], rounds)
    for row in rows:
        if row.tool in loaded:
            for threads in THREADS:
                key = f"threads{threads}_ms"
                base, mine = times["fp32"][key], times[row.tool][key]
                row.latency[f"threads{threads}"] = {"fp32_ms": base, "ms": mine, "ratio": mine / base}
    return load


# --------------------------------------------------------------------------- report

METRIC_COLUMNS = {
    "embedding": [
        ("cosine_mean", "emb. cosine mean"),
        ("cosine_worst", "emb. cosine worst"),
        ("nn_agreement", "NN agree"),
    ],
    "text_detection": [("mask_iou", "mask IoU"), ("mask_iou_image_worst", "mask IoU worst image")],
    "detection": [("box_f1", "box F1"), ("quantized_boxes", "boxes")],
    "classification": [("top1", "top-1"), ("top1_agreement", "top-1 agree")],
    "ctc_recognition": [("string_agreement", "string = fp32"), ("frame_agreement", "frame argmax = fp32")],
    "vad": [("decision_agreement", "decision = fp32"), ("prob_mean_abs_diff", "prob abs diff")],
}

# The task metric that ranks fidelity per task (higher is better).
PRIMARY_METRIC = {
    "embedding": "cosine_mean",
    "text_detection": "mask_iou",
    "detection": "box_f1",
    "classification": "top1",
    "ctc_recognition": "string_agreement",
    "vad": "decision_agreement",
}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ratio(row: Row, threads: int) -> float | None:
    entry = row.latency.get(f"threads{threads}")
    return None if entry is None else entry["ratio"]


def model_table(subject: Subject, rows: list[Row]) -> list[str]:
    columns = METRIC_COLUMNS[str(subject.task["task"])]
    header = ["tool", "size ratio", *[title for _, title in columns], "output cosine mean / worst"]
    header += ["channel SQNR dB"]
    header += ["latency 1 thr", "latency 2 thr", "quantize s", "peak RSS MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.status != "ok":
            cells = [row.tool, f"**{row.status}**: `{row.error}`"] + [""] * (len(header) - 4)
            cells += [_fmt(row.quantize_seconds, 1), _fmt(row.peak_rss_mb, 0)]
        else:
            label = f"{row.tool} → {row.chosen_mode}" if row.chosen_mode and "auto" in row.tool else row.tool
            if row.tool == DEFAULT_TOOL and row.chosen_mode:
                label = f"{row.tool} → {row.chosen_mode}"
            cells = [label, _fmt(row.size_ratio, 2)]
            cells += [_fmt(row.metrics.get(key), 0 if key.endswith("boxes") else 3) for key, _ in columns]
            cells += [
                f"{_fmt(row.cosine_mean, 4)} / {_fmt(row.cosine_worst, 4)}",
                _fmt(row.channel_sqnr_db, 1),
            ]
            cells += [_fmt(_ratio(row, 1), 2), _fmt(_ratio(row, 2), 2)]
            cells += [_fmt(row.quantize_seconds, 1), _fmt(row.peak_rss_mb, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Verdict:
    """Issue 13's "done when" for the default command on one model."""

    converted: bool
    metric_ok: bool | None
    size_ok: bool | None
    latency_ok: bool | None
    text: str

    @property
    def met(self) -> bool:
        return self.converted and all(v is not False for v in (self.metric_ok, self.size_ok, self.latency_ok))


def done_check(subject: Subject, rows: list[Row]) -> Verdict:
    key = PRIMARY_METRIC[str(subject.task["task"])]
    default = next((r for r in rows if r.tool == DEFAULT_TOOL), None)
    peers = [r for r in rows if r.tool in PEERS and r.status == "ok" and key in r.metrics]
    if default is None or default.status != "ok":
        reason = "no default row" if default is None else f"{default.status}: {default.error}"
        return Verdict(False, None, None, None, f"default command did not convert ({reason})")
    if not peers:
        return Verdict(True, None, None, None, "no peer produced a model: nothing to compare with")
    best = max(r.metrics[key] for r in peers)
    mine = default.metrics.get(key, -math.inf)
    metric_ok = mine >= best - DONE["metric_slack"]
    comparable = [r for r in peers if r.metrics[key] >= best - DONE["comparable"] and r.size_ratio]
    reference = max(comparable, key=lambda r: r.size_ratio or 0.0)
    size_goal = DONE["size_fraction"] * (reference.size_ratio or 0.0)
    size_ok = (default.size_ratio or 0.0) >= size_goal
    ref_latency, my_latency = _ratio(reference, 1), _ratio(default, 1)
    any_faster = any((_ratio(r, 1) or math.inf) < 1.0 for r in peers)
    latency_ok: bool | None = None
    if ref_latency is not None and my_latency is not None:
        latency_ok = my_latency <= DONE["latency_slack"] * ref_latency and (
            my_latency < 1.0 or not any_faster
        )

    def word(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**missed**")

    text = (
        f"{key} {mine:.3f} vs best peer {best:.3f} "
        f"(>= {best - DONE['metric_slack']:.3f}: {word(metric_ok)}); "
        f"size ratio {_fmt(default.size_ratio, 2)} vs {reference.tool}'s {_fmt(reference.size_ratio, 2)} "
        f"(>= {size_goal:.2f}: {word(size_ok)}); latency 1 thr {_fmt(my_latency, 2)} vs {reference.tool}'s "
        f"{_fmt(ref_latency, 2)} (<= {DONE['latency_slack'] * (ref_latency or 0):.2f}"
        + (", and < 1 since a peer is below fp32" if any_faster else "")
        + f": {word(latency_ok)})"
    )
    return Verdict(True, metric_ok, size_ok, latency_ok, text)


def determinism_text(result: dict[str, Any] | None) -> str:
    if not result:
        return "not run"
    if "verdict" in result:
        return f"{result['verdict']} (exit codes {result['exit_codes']})"
    parts = [
        f"model {'identical' if result['model_identical'] else '**differs**'}",
        f"report {'identical' if result['report_identical'] else '**differs**'}",
    ]
    if result.get("report_differs_at"):
        parts[-1] += " at " + ", ".join(f"`{k}`" for k in result["report_differs_at"])
    if "default_row_identical" in result:
        parts.append(
            f"plain default row's model {'identical' if result['default_row_identical'] else '**differs**'}"
        )
    return "; ".join(parts)


def _commit() -> str:
    """The commit of the quantcli measured, so a table can be traced to the code that made it."""
    command = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def markdown(
    results: list[tuple[Subject, list[Row], dict[str, Any]]], facts: dict[str, Any], rounds: int
) -> str:
    lines = [
        "## quantcli vs onnxruntime, Neural Compressor and NNCF (`make compare`, bench/compare.py)",
        "",
        f"Measured on {machine()}, quantcli at commit {facts['commit']};",
        f"the whole run took {facts['seconds'] / 60:.1f} min (load average at start "
        f"{facts['load_start']}, at end {facts['load_end']}; the machine is shared).{_runs_text(facts)}",
        "Every tool quantizes from the same folder of ready-to-feed samples (calib/, one .npz per",
        "sample), in its own process; the peers each in their own venv (bench/_peer_quantize.py).",
        "`quantcli default` is exactly `quantcli convert MODEL -o OUT --data calib/`; `quantcli static`",
        "adds `--mode static --eval-data eval/`. Metrics are against the fp32 model on eval/, one run",
        "per sample. Size ratio = fp32 bytes / output bytes (with any external data). Latency ratio =",
        f"quantized / fp32 on the first eval sample, median of {rounds} rotating rounds in this process.",
        "ort static: QDQ, per-channel, MinMax, uint8 activations, int8 weights; ort dynamic: int8",
        f"weights; inc: onnx-neural-compressor {facts['versions'].get('inc', '?')} StaticQuantConfig",
        f"defaults; nncf: nncf {facts['versions'].get('nncf', '?')} `nncf.quantize` defaults.",
        "",
        "### Done when (issue 13): the default command on every model",
        "",
        f"Rule: task metric >= best peer - {DONE['metric_slack']}; size ratio >= {DONE['size_fraction']} x"
        f" the best peer's among those within {DONE['comparable']} of the best peer metric; latency",
        f"(1 thread) <= {DONE['latency_slack']} x that peer's, and < 1 wherever any peer is below fp32.",
        f"Determinism: two more default converts with `--report`, the second with {BUSY_LOOPS} busy loops",
        "on the cores, compared byte for byte (model files and report).",
        "",
        "| model | default wrote | verdict | detail | determinism | load 1 min |",
        "|---|---|---|---|---|---|",
    ]
    met = 0
    for subject, rows, extra in results:
        verdict = done_check(subject, rows)
        met += verdict.met
        default = next((r for r in rows if r.tool == DEFAULT_TOOL), None)
        mode = default.chosen_mode if default and default.chosen_mode else "–"
        load = extra.get("load_average_1min")
        cells = [
            subject.name,
            mode,
            "**met**" if verdict.met else "**not met**",
            verdict.text,
            determinism_text(extra.get("determinism")),
            _fmt(load, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Default meets the rule on {met} of {len(results)} models."]
    for subject, rows, _ in results:
        source = subject.task.get("exporter", "")
        title = f"### {subject.name} ({subject.task['task']}{', ' + source if source else ''})"
        lines += ["", title, "", *model_table(subject, rows)]
    return "\n".join(lines) + "\n"


def _peer_versions() -> dict[str, str]:
    """The peer packages' versions, from their venvs."""
    packages = {"inc": "onnx-neural-compressor", "nncf": "nncf"}
    versions = {}
    for peer, python in PEER_PYTHON.items():
        if python.exists():
            code = f"import importlib.metadata as m; print(m.version('{packages[peer]}'))"
            done = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True)
            versions[peer] = done.stdout.strip() or "?"
    return versions


def auto_check(subject: Subject, rows: list[Row]) -> str:
    """Issue 8's rule: auto is within 1% of the best fidelity among the modes, and no slower than
    1.05x the fastest mode that is itself within 1% of the best."""
    key = PRIMARY_METRIC[str(subject.task["task"])]
    fixed = [
        r for r in rows if r.status == "ok" and not r.tool.startswith("quantcli auto") and key in r.metrics
    ]
    auto = next((r for r in rows if r.tool == "quantcli auto" and r.status == "ok"), None)
    if auto is None or not fixed:
        return "auto check: not measured (a mode failed)"
    variants = [
        r for r in rows if r.tool.startswith("quantcli auto --") and r.status == "ok" and key in r.metrics
    ]
    best = max(r.metrics[key] for r in fixed)
    qualifying = [r for r in fixed if r.metrics[key] >= 0.99 * best and _ratio(r, 2) is not None]
    fastest = min(_ratio(r, 2) or math.inf for r in qualifying) if qualifying else math.inf
    fidelity_ok = auto.metrics[key] >= 0.99 * best
    # auto writes the very model its chosen mode's row wrote (builds are deterministic), so its
    # speed is that row's: timing the same model twice differs by more than 5% on a shared machine.
    same = next((r for r in fixed if r.tool == f"quantcli {auto.chosen_mode}"), auto)
    speed = _ratio(same, 2)
    speed_ok = speed is not None and speed <= 1.05 * fastest
    verdict = "**met**" if fidelity_ok and speed_ok else "**not met**"
    lines = [
        f"auto chose `{auto.chosen_mode}`: {key} {auto.metrics[key]:.3f} vs best {best:.3f} "
        f"(within 1%: {'yes' if fidelity_ok else 'no'}); latency ratio at 2 threads {_fmt(speed, 2)} "
        f"vs fastest qualifying {_fmt(fastest, 2)} (within 1.05x: {'yes' if speed_ok else 'no'}): {verdict}"
    ]
    # A variant may write a model no fixed mode wrote (a repaired one): its own timing stands.
    for row in variants:
        lines.append(
            f"`{row.tool.removeprefix('quantcli ')}` wrote `{row.chosen_mode}`: {key} {row.metrics[key]:.3f} "
            f"({row.metrics[key] / best:.3f} of best), latency ratio at 2 threads {_fmt(_ratio(row, 2), 2)}"
        )
    return "\n\n".join(lines)


def modes_markdown(subjects_rows: list[tuple[Subject, list[Row]]], seconds: float, rounds: int) -> str:
    lines = [
        "## quantcli's modes side by side (`make modes`, bench/compare.py --modes)",
        "",
        f"Measured on {machine()}, quantcli at commit {_commit()};",
        f"the whole run took {seconds / 60:.1f} min. One row per `--mode`; `auto` builds the candidate",
        "modes itself and keeps the fastest within its default bound (no labels here: per-channel SQNR",
        "averaged in dB >= 15 on every output, the `channel SQNR dB` column, as quantcli measures it on",
        "eval.npz; onnxruntime rows leave it blank).",
        f"Latency ratio = quantized / fp32, median of {rounds} rounds.",
    ]
    for subject, rows in subjects_rows:
        lines += ["", f"### {subject.name} ({subject.task['task']})", "", *model_table(subject, rows)]
        lines += ["", auto_check(subject, rows)]
    return "\n".join(lines) + "\n"


Results = list[tuple[Subject, list[Row], dict[str, Any]]]


def merged(results: Results, facts: dict[str, Any], zoo: Path) -> tuple[Results, dict[str, Any]]:
    """This run's models, and every other model as the recorded compare.json has it; the facts
    say which models this run measured, at which commit and load."""
    recorded = json.loads((BENCH / "results" / "compare.json").read_text())
    rerun = {subject.name for subject, _, _ in results}
    kept: dict[str, tuple[list[Row], dict[str, Any]]] = {}
    for name, extra in recorded["models"].items():
        if name not in rerun:
            kept[name] = ([Row(**row) for row in recorded["rows"] if row["model"] == name], extra)
    by_name = {subject.name: (subject, rows, extra) for subject, rows, extra in results}
    combined: Results = []
    for subject in subjects(zoo, None):
        if subject.name in by_name:
            combined.append(by_name[subject.name])
        elif subject.name in kept:
            combined.append((subject, *kept[subject.name]))
    base = recorded.get("merged_from") or {
        key: recorded[key] for key in ("commit", "seconds", "load_start", "load_end")
    }
    rerun_facts = {key: facts[key] for key in ("commit", "seconds", "load_start", "load_end")}
    note = {**base, "rerun": [*base.get("rerun", []), {**rerun_facts, "models": sorted(rerun)}]}
    return combined, {**facts, **{key: base[key] for key in rerun_facts}, "merged_from": note}


def _runs_text(facts: dict[str, Any]) -> str:
    """The header's note on models measured by a later run than the rest (``--merge``)."""
    runs = facts.get("merged_from", {}).get("rerun", [])
    return "".join(
        f" {', '.join(run['models'])}: rerun at commit {run['commit']} ({run['seconds'] / 60:.1f} min,"
        f" load {run['load_start']} -> {run['load_end']})."
        for run in runs
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="quantcli vs onnxruntime, Neural Compressor and NNCF")
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--models", help="comma-separated subset, e.g. minilm_l6,digits_cnn")
    parser.add_argument("--keep", action="store_true", help="keep the quantized models under bench/_work/")
    parser.add_argument("--rounds", type=int, default=25, help="latency rounds per thread count")
    parser.add_argument(
        "--no-write", action="store_true", help="print the table only; leave RESULTS.md alone"
    )
    parser.add_argument(
        "--modes", action="store_true", help="quantcli's modes side by side (the 'modes' section) instead"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --models: replace those models' rows in bench/results/compare.json and keep the "
        "others' (the header names both runs)",
    )
    args = parser.parse_args(argv)
    wanted = set(args.models.split(",")) if args.models else None
    start = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    (BENCH / "_work").mkdir(exist_ok=True)
    # A folder of its own per run: two runs at once (other worktrees call this script too) must not
    # overwrite each other's models.
    work_root = Path(tempfile.mkdtemp(prefix="compare-", dir=BENCH / "_work"))
    try:
        results = [
            (subject, *compare_model(subject, args.rounds, work_root, modes=args.modes))
            for subject in subjects(args.zoo, wanted)
        ]
    finally:
        if not args.keep:
            shutil.rmtree(work_root, ignore_errors=True)
    seconds = time.perf_counter() - start
    facts = {
        "seconds": seconds,
        "commit": _commit(),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "versions": _peer_versions(),
    }
    if args.merge and not args.modes:
        results, facts = merged(results, facts, args.zoo)
    if args.modes:
        text = modes_markdown([(s, rows) for s, rows, _ in results], seconds, args.rounds)
    else:
        text = markdown(results, facts, args.rounds)
    if not args.no_write:
        section = "modes" if args.modes else "compare"
        document = {
            **facts,
            "machine": machine(),
            "rows": [asdict(row) for _, model_rows, _ in results for row in model_rows],
            "models": {s.name: extra for s, _, extra in results},
            "done": {s.name: asdict(done_check(s, rows)) for s, rows, _ in results} if not args.modes else {},
        }
        if "merged_from" in facts:
            document["merged_from"] = facts["merged_from"]
        write_section(section, text, document)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
