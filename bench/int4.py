"""4-bit block-wise weights on MiniLM-L6 (bench zoo): the written form, then the methods.

    python bench/int4.py [--zoo bench/zoo] [--rounds 15] [--skip-forms] [--skip-methods]

Part 1, forms: every MatMul weight rounded to nearest (RTN) at block 16, 32, 64 and 128,
symmetric and asymmetric, written as onnxruntime's ``MatMulNBits`` with ``accuracy_level`` 0
(float compute) and 4 (int8 compute on VNNI), and as ``DequantizeLinear(int4, block_size) ->
MatMul`` at opset 21 (which onnxruntime fuses into MatMulNBits at the session's accuracy level,
4 by default). Size, embedding cosine against fp32 on eval/, and 1-thread latency against fp32,
interleaved in one rotating loop per block size. The fastest form at block 32 among those within
0.002 of the best cosine is the one part 2 writes.

Part 2, methods, at block 32 in that form: quantcli's RTN, GPTQ, AWQ and AWQ+GPTQ (each layer's
input statistics ``X^T X`` observed streaming on calib/) beside onnxruntime's own
``MatMulNBitsQuantizer`` (its default RTN, and its GPTQ) on the same model and data: cosine,
size ratio, latency ratio at 1 and 2 threads, quantize seconds, and quantcli's per-layer
output error (``tr(dW H dW^T)`` as SQNR) from the calibration statistics.

Writes the ``int4`` section of bench/RESULTS.md and bench/results/int4.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compare
import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
from _results import machine, write_section

from quantcli.blockwise import (
    BlockQuantized,
    BlockTarget,
    InputStatistics,
    awq,
    block_targets,
    collect_input_statistics,
    gptq,
    layer_error,
    rtn,
)
from quantcli.calibration.data import model_inputs
from quantcli.calibration.sources import open_source
from quantcli.passes.nbits import BlockForm, WriteBlockwiseWeightsPass

BENCH = Path(__file__).resolve().parent
MODEL = "minilm_l6"
OUTPUT = "sentence_embedding"
BLOCKS = (16, 32, 64, 128)
# (form, accuracy level written in the model; None: the session decides, 4 by default)
FORMS: tuple[tuple[BlockForm, int | None], ...] = (
    (BlockForm.MATMUL_NBITS, 0),
    (BlockForm.MATMUL_NBITS, 4),
    (BlockForm.DEQUANTIZE_LINEAR, None),
)
COSINE_TOLERANCE = 0.002


@dataclass
class Variant:
    """One written model and what was measured on it."""

    name: str
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    size_ratio: float = 0.0
    cosine_mean: float = 0.0
    cosine_worst: float = 0.0
    nn_agreement: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)  # threads{N}_ratio


def _form_label(form: BlockForm, level: int | None) -> str:
    if form is BlockForm.MATMUL_NBITS:
        return f"MatMulNBits acc{level}"
    return "DequantizeLinear int4 (fused, session acc4)"


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def opset21(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset 21 (IR 10, for int4 tensors): the DequantizeLinear form needs it."""
    converted = onnx.version_converter.convert_version(proto, 21)
    converted.ir_version = max(converted.ir_version, 10)
    return converted


def write_variant(
    proto: onnx.ModelProto,
    weights: dict[str, BlockQuantized],
    form: BlockForm,
    level: int | None,
    path: Path,
) -> Path:
    model = ir.serde.deserialize_model(proto)
    WriteBlockwiseWeightsPass(weights, form=form, accuracy_level=4 if level is None else level)(model)
    ir.save(model, str(path))
    return path


def quantize_all(
    graph: ir.Graph, targets: list[BlockTarget], method: Callable[[BlockTarget, np.ndarray], BlockQuantized]
) -> dict[str, BlockQuantized]:
    return {t.node: method(t, t.rows(graph)) for t in targets}


def measure_outputs(
    variants: list[Variant], fp32: Path, eval_feeds: dict[str, np.ndarray], reference: np.ndarray
) -> None:
    fp32_bytes = fp32.stat().st_size
    for variant in variants:
        outputs = compare.run_all(variant.path, eval_feeds, OUTPUT)
        metrics = compare.embedding_metrics(reference, outputs, {})
        variant.cosine_mean, variant.cosine_worst = metrics["cosine_mean"], metrics["cosine_worst"]
        variant.nn_agreement = metrics["nn_agreement"]
        variant.size_ratio = fp32_bytes / variant.path.stat().st_size
        gc.collect()


def measure_latency(
    variants: list[Variant], fp32: Path, feed: dict[str, np.ndarray], rounds: int, threads: tuple[int, ...]
) -> None:
    times = compare.latency({"fp32": fp32, **{v.name: v.path for v in variants}}, feed, rounds, threads)
    for variant in variants:
        for count in threads:
            key = f"threads{count}_ms"
            variant.latency[f"threads{count}_ratio"] = times[variant.name][key] / times["fp32"][key]
            variant.latency[key] = times[variant.name][key]
        variant.latency.update({f"fp32_{k}": v for k, v in times["fp32"].items()})


# --------------------------------------------------------------------------- part 1: forms


@dataclass
class Setup:
    """The model, its data and fp32's embeddings on eval, shared by both parts."""

    proto: onnx.ModelProto
    model_path: Path
    work: Path
    calib_feeds: dict[str, np.ndarray]
    eval_feeds: dict[str, np.ndarray]
    reference: np.ndarray
    rounds: int

    @property
    def first_sample(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.eval_feeds.items()}


def forms(setup: Setup) -> list[Variant]:
    proto, work, fp32 = setup.proto, setup.work, setup.model_path
    proto21 = opset21(proto)
    graph = ir.serde.deserialize_model(proto).graph
    targets = block_targets(graph)
    variants: list[Variant] = []
    for block in BLOCKS:
        group = []
        for symmetric in (True, False):
            weights = quantize_all(graph, targets, lambda _t, w: rtn(w, block, symmetric=symmetric))  # noqa: B023
            for form, level in FORMS:
                kind = "sym" if symmetric else "asym"
                name = f"b{block}_{kind}_{form.value}_{'session' if level is None else level}"
                source = proto21 if form is BlockForm.DEQUANTIZE_LINEAR else proto
                path = write_variant(source, weights, form, level, work / f"{name}.onnx")
                details = {
                    "block": block,
                    "symmetric": symmetric,
                    "form": form.value,
                    "accuracy_level": level,
                }
                group.append(Variant(name, path, details))
            del weights
        measure_outputs(group, fp32, setup.eval_feeds, setup.reference)
        measure_latency(group, fp32, setup.first_sample, setup.rounds, (1,))
        variants += group
        sys.stderr.write(f"int4: forms at block {block} measured\n")
    return variants


def pick_form(variants: list[Variant]) -> tuple[BlockForm, int | None, str]:
    """The fastest form at block 32 (symmetric and asymmetric pooled) among those within
    COSINE_TOLERANCE of the best cosine; and a sentence saying why."""
    by_form: dict[tuple[str, int | None], list[Variant]] = defaultdict(list)
    for v in variants:
        if v.details["block"] == 32:
            by_form[(v.details["form"], v.details["accuracy_level"])].append(v)
    summary = {
        key: (
            float(np.mean([v.cosine_mean for v in group])),
            float(np.mean([v.latency["threads1_ratio"] for v in group])),
        )
        for key, group in by_form.items()
    }
    best_cosine = max(c for c, _ in summary.values())
    eligible = {k: s for k, s in summary.items() if s[0] >= best_cosine - COSINE_TOLERANCE}
    chosen = min(eligible, key=lambda k: eligible[k][1])
    parts = [
        f"{_form_label(BlockForm(f), level)}: cosine {c:.4f}, latency {lat:.2f}x fp32"
        for (f, level), (c, lat) in sorted(summary.items(), key=lambda item: item[1][1])
    ]
    why = (
        f"at block 32 (mean of sym and asym): {'; '.join(parts)}. Chosen: the fastest within "
        f"{COSINE_TOLERANCE} of the best cosine ({best_cosine:.4f})."
    )
    return BlockForm(chosen[0]), chosen[1], why


# --------------------------------------------------------------------------- part 2: methods


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the calibration samples (one per run)."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self.feeds = feeds
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        count = len(next(iter(self.feeds.values())))
        if self.index >= count:
            return None
        sample = {k: v[self.index : self.index + 1] for k, v in self.feeds.items()}
        self.index += 1
        return sample

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        sample = self.get_next()
        if sample is None:
            raise StopIteration
        return sample

    def rewind(self) -> None:
        self.index = 0


def ort_quantize(
    model_path: Path, out: Path, algorithm: str, symmetric: bool, calib: dict[str, np.ndarray]
) -> float:
    """onnxruntime's MatMulNBitsQuantizer at block 32, accuracy level 4; returns seconds."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    start = time.perf_counter()
    config = None
    if algorithm == "gptq":
        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(calib))
    quantizer = mnq.MatMulNBitsQuantizer(
        onnx.load(str(model_path)),
        block_size=32,
        is_symmetric=symmetric,
        accuracy_level=4,
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return time.perf_counter() - start


def grouped_awq(
    targets: list[BlockTarget],
    graph: ir.Graph,
    stats: dict[str, InputStatistics],
    *,
    symmetric: bool,
    then_gptq: bool,
) -> tuple[dict[str, BlockQuantized], dict[str, float]]:
    """AWQ per activation (layers reading one activation share its scale), rounding with RTN
    or GPTQ; the alpha each activation got."""
    groups: dict[str, list[BlockTarget]] = defaultdict(list)
    for t in targets:
        groups[t.activation].append(t)
    weights: dict[str, BlockQuantized] = {}
    alphas = {}
    for activation, members in groups.items():
        s = stats[activation]

        def rounder(w: np.ndarray, scale: np.ndarray | None, gram: np.ndarray = s.gram) -> BlockQuantized:
            return gptq(w, gram, 32, symmetric=symmetric, input_scale=scale)

        alpha, quantized = awq(
            [t.rows(graph) for t in members],
            s.gram,
            s.mean_abs,
            32,
            symmetric=symmetric,
            rounder=rounder if then_gptq else None,
        )
        alphas[activation] = alpha
        weights.update({t.node: q for t, q in zip(members, quantized, strict=True)})
    return weights, alphas


def method_weights(
    method: str,
    targets: list[BlockTarget],
    graph: ir.Graph,
    stats: dict[str, InputStatistics],
    *,
    symmetric: bool,
) -> tuple[dict[str, BlockQuantized], dict[str, Any]]:
    """Every target's weight quantized with ``method`` at block 32; and what the method chose."""
    if method == "rtn":
        return {t.node: rtn(t.rows(graph), 32, symmetric=symmetric) for t in targets}, {}
    if method == "gptq":
        return {
            t.node: gptq(t.rows(graph), stats[t.activation].gram, 32, symmetric=symmetric) for t in targets
        }, {}
    weights, alphas = grouped_awq(targets, graph, stats, symmetric=symmetric, then_gptq=method == "awq+gptq")
    values = list(alphas.values())
    return weights, {"awq_alpha_mean": float(np.mean(values)), "awq_alpha_range": [min(values), max(values)]}


def methods(setup: Setup, form: tuple[BlockForm, int | None]) -> list[Variant]:
    proto, work, model_path = setup.proto, setup.work, setup.model_path
    model = ir.serde.deserialize_model(proto)
    graph = model.graph
    targets = block_targets(graph)
    start = time.perf_counter()
    dataset = open_source(model_path.parent / "calib.npz", model_inputs(model))
    stats = collect_input_statistics(model, {t.activation: t.k for t in targets}, dataset, batch_size=8)
    stats_seconds = time.perf_counter() - start
    source = opset21(proto) if form[0] is BlockForm.DEQUANTIZE_LINEAR else proto
    variants: list[Variant] = []
    for symmetric in (True, False):
        kind = "sym" if symmetric else "asym"
        for method in ("rtn", "gptq", "awq", "awq+gptq"):
            begin = time.perf_counter()
            weights, extra = method_weights(method, targets, graph, stats, symmetric=symmetric)
            seconds = time.perf_counter() - begin
            errors = [layer_error(t.rows(graph), weights[t.node], stats[t.activation].gram) for t in targets]
            sqnr = [e.output_sqnr_db for e in errors]
            name = f"quantcli_{method}_{kind}"
            path = write_variant(source, weights, *form, work / f"{name}.onnx")
            details = {
                "tool": "quantcli",
                "method": method,
                "symmetric": symmetric,
                "quantize_seconds": seconds + stats_seconds,
                "layer_output_sqnr_db_mean": float(np.mean(sqnr)),
                "layer_output_sqnr_db_worst": float(np.min(sqnr)),
                "layer_weight_error_mean": float(np.mean([e.weight for e in errors])),
                "worst_layer": targets[int(np.argmin(sqnr))].node,
                **extra,
            }
            variants.append(Variant(name, path, details))
            sys.stderr.write(f"int4: {name} built in {seconds:.1f} s\n")
        for algorithm in ("default", "gptq"):
            name = f"ort_{algorithm}_{kind}"
            path = work / f"{name}.onnx"
            try:
                seconds = ort_quantize(model_path, path, algorithm, symmetric, setup.calib_feeds)
            except Exception as exc:  # a peer's failure is a row, not the end of the run
                sys.stderr.write(f"int4: {name} failed: {exc}\n")
                continue
            details = {
                "tool": "onnxruntime",
                "method": algorithm,
                "symmetric": symmetric,
                "quantize_seconds": seconds,
            }
            variants.append(Variant(name, path, details))
    measure_outputs(variants, model_path, setup.eval_feeds, setup.reference)
    measure_latency(variants, model_path, setup.first_sample, setup.rounds, compare.THREADS)
    return variants


# --------------------------------------------------------------------------- report


def _forms_table(variants: list[Variant]) -> list[str]:
    lines = [
        "| block | weights | form | size ratio | emb. cosine mean | worst | NN agree "
        "| latency 1 thr (x fp32) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        d = v.details
        lines.append(
            f"| {d['block']} | {'sym' if d['symmetric'] else 'asym'} | "
            f"{_form_label(BlockForm(d['form']), d['accuracy_level'])} | {v.size_ratio:.2f} | "
            f"{v.cosine_mean:.4f} | {v.cosine_worst:.4f} | {v.nn_agreement:.3f} | "
            f"{v.latency['threads1_ratio']:.2f} |"
        )
    return lines


def _methods_table(variants: list[Variant]) -> list[str]:
    lines = [
        "| tool | method | weights | size ratio | emb. cosine mean | worst | NN agree "
        "| latency 1 thr | 2 thr "
        "| layer output SQNR dB mean / worst | quantize s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        d = v.details
        sqnr = (
            f"{d['layer_output_sqnr_db_mean']:.1f} / {d['layer_output_sqnr_db_worst']:.1f}"
            if "layer_output_sqnr_db_mean" in d
            else "–"
        )
        lines.append(
            f"| {d['tool']} | {d['method']} | {'sym' if d['symmetric'] else 'asym'} | {v.size_ratio:.2f} | "
            f"{v.cosine_mean:.4f} | {v.cosine_worst:.4f} | {v.nn_agreement:.3f} | "
            f"{v.latency['threads1_ratio']:.2f} | {v.latency['threads2_ratio']:.2f} | {sqnr} | "
            f"{d['quantize_seconds']:.1f} |"
        )
    return lines


def _measured(meta: dict[str, Any]) -> str:
    return (
        f"Measured on {machine()}, quantcli at commit {meta['commit']}; {meta['minutes']:.1f} min "
        f"(load average at start {meta['load_start']:.1f}, at end {meta['load_end']:.1f}; the machine "
        f"is shared); latency: median of {meta['rounds']} interleaved rounds."
    )


def markdown(
    form_rows: list[Variant],
    why: str,
    method_rows: list[Variant],
    form: tuple[BlockForm, int | None],
    metas: tuple[dict[str, Any], dict[str, Any]],
) -> str:
    lines = [
        "## 4-bit block-wise weights on MiniLM-L6 (`make bench-int4`, bench/int4.py)",
        "",
        "Only the 36 MatMul weights are 4-bit; the word-embedding table (47 MB of the 90 MB) stays "
        "float32, so whole-model size ratios stop near 1.7x until Gather tables are quantized too. "
        "Cosine: each eval sentence's embedding against fp32's (48 sentences, sequence 128). "
        "Latency: ratio to fp32 on the first eval sample, all models of a table timed in one "
        "rotating loop in one process.",
        "",
    ]
    if form_rows:
        lines += [
            "### Which form onnxruntime runs fastest (RTN weights)",
            "",
            _measured(metas[0]),
            "",
            *_forms_table(form_rows),
            "",
            f"**Pick:** {_form_label(*form)}. Why: {why}",
            "",
        ]
    if method_rows:
        lines += [
            f"### Methods at block 32, written as {_form_label(*form)}, beside onnxruntime's "
            "MatMulNBitsQuantizer",
            "",
            _measured(metas[1]),
            "quantcli's methods observe each MatMul input's `X^T X` on calib/ (64 sentences) streaming; "
            "layer SQNR is `tr(W H W^T) / tr(dW H dW^T)` on those statistics. onnxruntime rows: "
            "`MatMulNBitsQuantizer(block_size=32, accuracy_level=4)` with its default algorithm, and with "
            "`GPTQWeightOnlyQuantConfig` on the same calibration samples. Quantize seconds for quantcli "
            "include observing the statistics once.",
            "",
            *_methods_table(method_rows),
            "",
        ]
    return "\n".join(lines)


def _commit() -> str:
    import subprocess  # noqa: PLC0415

    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH, check=False
    ).stdout.strip()


def _stacked(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _previous_forms() -> dict[str, Any]:
    """The forms part of the last run (bench/results/int4.json), for --reuse-forms."""
    stored = json.loads((BENCH / "results" / "int4.json").read_text())
    stored["forms"] = [Variant(**(row | {"path": Path(row["path"])})) for row in stored["forms"]]
    return stored


def _meta(begin: float, load_start: float, rounds: int) -> dict[str, Any]:
    return {
        "commit": _commit(),
        "minutes": (time.perf_counter() - begin) / 60,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--work", type=Path, default=BENCH / "_work" / "int4")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reuse-forms", action="store_true", help="keep the last run's forms part and pick")
    parser.add_argument("--skip-methods", action="store_true")
    args = parser.parse_args(argv)
    folder = args.zoo / MODEL
    model_path = folder / "model.onnx"
    if not model_path.is_file():
        sys.stderr.write(f"int4: {model_path} missing; build the zoo with `make zoo`\n")
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    begin, load_start = time.perf_counter(), os.getloadavg()[0]
    proto = _load(model_path)
    calib_feeds, eval_feeds = _stacked(folder / "calib.npz"), _stacked(folder / "eval.npz")
    reference = compare.run_all(model_path, eval_feeds, OUTPUT)
    setup = Setup(proto, model_path, args.work, calib_feeds, eval_feeds, reference, args.rounds)
    if args.reuse_forms:
        previous = _previous_forms()
        form_rows, forms_meta = previous["forms"], previous.get("forms_meta") or previous["meta"]
        chosen = (BlockForm(previous["form"]["form"]), previous["form"]["accuracy_level"])
        why = previous["form"]["why"]
    else:
        form_rows = forms(setup)
        form, level, why = pick_form(form_rows)
        chosen = (form, level)
        forms_meta = _meta(begin, load_start, args.rounds)
    begin, load_start = time.perf_counter(), os.getloadavg()[0]
    method_rows = [] if args.skip_methods else methods(setup, chosen)
    methods_meta = _meta(begin, load_start, args.rounds)
    rows = {
        "forms_meta": forms_meta,
        "methods_meta": methods_meta,
        "form": {"form": chosen[0].value, "accuracy_level": chosen[1], "why": why},
        "forms": [vars(v) | {"path": v.path.name} for v in form_rows],
        "methods": [vars(v) | {"path": v.path.name} for v in method_rows],
    }
    body = markdown(form_rows, why, method_rows, chosen, (forms_meta, methods_meta))
    target = write_section("int4", body, rows)
    sys.stderr.write(f"int4: wrote {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
