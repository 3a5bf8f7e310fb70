"""OpenVINO's CPU plugin as a bench instrument: compile, read the runtime graph, time interleaved.

Imported by bench/targets.py and bench/_openvino_rules.py, run in the venv that has openvino
(`make bench-targets` builds .benchenv-openvino). Also a small command of its own:

    .benchenv-openvino/bin/python bench/_openvino.py MODEL.onnx [MODEL.onnx ...] [--layers]
    .benchenv-openvino/bin/python bench/_openvino.py MODEL.onnx --smoke SAMPLE.npz   # exit code only
    .benchenv-openvino/bin/python bench/_openvino.py MODEL.onnx --profile SAMPLE.npz # where time goes

prints, per model, what the compiled runtime graph runs: heavy layers (Convolution, MatMul /
FullyConnected, ...) by the precision they execute in, the Reorder, FakeQuantize and Convert layers
left, and with --layers every layer's type and runtime precision.

What the runtime graph says (rt_info of each op of `compiled.get_runtime_model()`):
    layerType         the CPU plugin node (Convolution, FullyConnected, Eltwise, Reorder, ...)
    runtimePrecision  the precision the kernel computes in (I8/U8 for integer kernels, FP32, BF16)
    outputPrecisions  the precision it writes
    originalLayersNames  the ONNX nodes fused into it
    primitiveType     the kernel picked (e.g. brgconv_avx512_amx_I8 vs jit_avx512_FP32 or ref_any)
Everything is compiled with 1 inference thread and 1 stream (the latency hint); the inference
precision is the plugin's default for this CPU, and is reported with each run (on a CPU with AMX /
AVX512-BF16 that default is bf16, so "fp32" models run their float layers in bf16 there).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

# CPU plugin layer types that carry the model's arithmetic (the ones quantization is for).
HEAVY = {"Convolution", "Deconvolution", "FullyConnected", "MatMul", "GroupConvolution"}
INTEGER = {"i8", "u8", "i4", "u4"}  # as rt_info spells them
MIN_ROUND_SECONDS = 0.2

_CORE: ov.Core | None = None


def core() -> ov.Core:
    global _CORE  # noqa: PLW0603 - one Core per process, as OpenVINO recommends
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def compile_model(
    path: Path, threads: int = 1, *, precision: str | None = None, perf_count: bool = False
) -> ov.CompiledModel:
    """precision: None for the plugin's default inference precision on this CPU, or e.g. "f32"."""
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if perf_count:
        config["PERF_COUNT"] = True
    return core().compile_model(str(path), "CPU", config)


def inference_precision(compiled: ov.CompiledModel) -> str:
    """'bf16', 'f32', ...: the precision the plugin runs float layers in."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


def _info(op: Any, key: str) -> str:
    info = op.get_rt_info()
    if key not in info:
        return ""
    value = info[key]
    return str(value.astype(str)) if hasattr(value, "astype") else str(value)


@dataclass(frozen=True)
class Layer:
    name: str
    type: str
    precision: str
    outputs: str
    original: str
    primitive: str  # the kernel the plugin picked (brgconv_avx512_amx_I8, jit_avx512_FP32, ref_any, ...)


def runtime_layers(compiled: ov.CompiledModel) -> list[Layer]:
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        layers.append(
            Layer(
                name=op.get_friendly_name(),
                type=_info(op, "layerType"),
                precision=_info(op, "runtimePrecision"),
                outputs=_info(op, "outputPrecisions"),
                original=_info(op, "originalLayersNames"),
                primitive=_info(op, "primitiveType"),
            )
        )
    return layers


@dataclass
class Summary:
    """Counts over one runtime graph."""

    heavy_integer: int = 0
    heavy_float: int = 0
    reorders: int = 0
    fake_quantize: int = 0
    converts: int = 0
    eltwise_integer: int = 0
    layers: int = 0
    heavy_float_names: list[str] = field(default_factory=list)
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)

    def text(self) -> str:
        return (
            f"heavy int {self.heavy_integer} / float {self.heavy_float}, reorders {self.reorders}, "
            f"FakeQuantize {self.fake_quantize}, Convert {self.converts}, layers {self.layers}"
        )


def summarize(layers: list[Layer]) -> Summary:
    summary = Summary(layers=len(layers))
    by_type: dict[str, Counter[str]] = {}
    for layer in layers:
        by_type.setdefault(layer.type, Counter())[layer.precision or "-"] += 1
        if layer.type in HEAVY:
            if layer.precision.lower() in INTEGER:
                summary.heavy_integer += 1
            else:
                summary.heavy_float += 1
                summary.heavy_float_names.append(layer.name)
        elif layer.type == "Reorder":
            summary.reorders += 1
        elif layer.type == "FakeQuantize":
            summary.fake_quantize += 1
        elif layer.type == "Convert":
            summary.converts += 1
        elif layer.type == "Eltwise" and layer.precision.lower() in INTEGER:
            summary.eltwise_integer += 1
    summary.by_type = {kind: dict(counts) for kind, counts in sorted(by_type.items())}
    return summary


def profile(path: Path, feed: dict[str, np.ndarray], runs: int = 20) -> dict[str, float]:
    """Mean ms per run spent in each executed layer type (the plugin's own PERF_COUNT timers), so a
    slowdown can be pinned on Convolution, Convert, Subtract (a dequantization left unfused), ..."""
    request = compile_model(path, perf_count=True).create_infer_request()
    for _ in range(3):
        request.infer(feed)
    spent: Counter[str] = Counter()
    for _ in range(runs):
        request.infer(feed)
        for layer in request.get_profiling_info():
            if layer.status == layer.Status.EXECUTED:
                spent[layer.node_type] += layer.real_time.total_seconds() * 1000 / runs
    return dict(spent.most_common())


@dataclass(frozen=True)
class Executed:
    """One executed node of a PERF_COUNT run: what it is, the kernel it ran, its mean time."""

    name: str
    type: str
    kernel: str  # exec_type: brgconv_avx512_amx_I8, jit_avx512_amx_bf16, ref_any, ...
    ms: float


def node_profiles(paths: list[Path], feed: dict[str, np.ndarray], runs: int = 200) -> list[list[Executed]]:
    """Every executed node's median ms over ``runs`` runs and its kernel (the plugin's PERF_COUNT
    timers), slowest first, for each model. The models run in turn within each run (interleaved,
    so a change in the machine's load falls on all of them alike), and the median per node keeps
    a run preempted by another process from counting."""
    requests = [compile_model(path, perf_count=True).create_infer_request() for path in paths]
    for _ in range(5):
        for request in requests:
            request.infer(feed)
    spent: list[dict[tuple[str, str, str], list[float]]] = [{} for _ in paths]
    for _ in range(runs):
        for request, times in zip(requests, spent, strict=True):
            request.infer(feed)
            for layer in request.get_profiling_info():
                if layer.status == layer.Status.EXECUTED:
                    key = (layer.node_name, layer.node_type, layer.exec_type)
                    times.setdefault(key, []).append(layer.real_time.total_seconds() * 1000)
    return [
        sorted(
            (Executed(n, t, k, statistics.median(v)) for (n, t, k), v in times.items()),
            key=lambda node: -node.ms,
        )
        for times in spent
    ]


def _heavy_table(paths: list[Path], profiles: list[list[Executed]]) -> None:
    """The heavy layers side by side, joined by node name: each model's kernel and ms."""
    by_name = [{n.name: n for n in nodes if n.type in HEAVY} for nodes in profiles]
    names = list(dict.fromkeys(name for table in by_name for name in table))
    print("heavy layers by node name: " + " | ".join(p.parent.name or p.name for p in paths))
    for name in names:
        cells = []
        for table in by_name:
            node = table.get(name)
            cells.append("-" if node is None else f"{node.ms:7.3f} {node.kernel}")
        print(f"  {name[:60]:60} | " + " | ".join(cells))


def profile_by_kernel(nodes: list[Executed]) -> dict[tuple[str, str], tuple[int, float]]:
    """(node type, kernel) -> (count, total ms), slowest first."""
    totals: dict[tuple[str, str], tuple[int, float]] = {}
    for node in nodes:
        count, ms = totals.get((node.type, node.kernel), (0, 0.0))
        totals[(node.type, node.kernel)] = (count + 1, ms + node.ms)
    return dict(sorted(totals.items(), key=lambda item: -item[1][1]))


def _print_profile(paths: list[Path], sample: Path, top: int, *, heavy: bool) -> None:
    with np.load(sample, allow_pickle=False) as archive:
        feed = {name: archive[name] for name in archive.files}
    profiles = node_profiles(paths, feed)
    for path, nodes in zip(paths, profiles, strict=True):
        print(f"{path}: {sum(n.ms for n in nodes):.3f} ms in {len(nodes)} executed nodes (PERF_COUNT)")
        for (kind, kernel), (count, ms) in profile_by_kernel(nodes).items():
            print(f"  {ms:8.3f} ms  {count:4d} x {kind:16} {kernel}")
        for node in nodes[:top]:
            print(f"  top {node.ms:8.3f} ms  {node.type:16} {node.kernel:32} {node.name}")
    if heavy:
        _heavy_table(paths, profiles)


def survives(path: Path, sample: Path) -> str:
    """'' if the model compiles and runs one sample in a child process, else what happened: the CPU
    plugin can crash the process (quantcli's default output for PP-OCR cls segfaults at inference in
    OpenVINO 2026.4.1), which must cost one row, not the whole bench."""
    command = [sys.executable, __file__, str(path), "--smoke", str(sample)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode == 0:
        return ""
    reason = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return f"{reason} in a child process" + (f": {lines[-1][:300]}" if lines else "")


def run_samples(
    path: Path, feeds: list[dict[str, np.ndarray]], output: str, *, precision: str | None = None
) -> list[np.ndarray]:
    """The named output of each sample, run one at a time on the CPU plugin (2 threads: only timing
    needs 1)."""
    compiled = compile_model(path, threads=2, precision=precision)
    request = compiled.create_infer_request()
    port = next(p for p in compiled.outputs if output in p.get_names())
    results = []
    for feed in feeds:
        request.infer(feed)
        results.append(np.asarray(request.get_tensor(port).data).astype(np.float64).copy())
    return results


@dataclass(frozen=True)
class Timing:
    ms: float  # median over rounds of the model's own time
    ratio: float  # median over rounds of (model's time / base's time in the same round)


def timing(
    paths: dict[str, Path],
    base: str,
    feed: dict[str, np.ndarray],
    rounds: int,
    precisions: dict[str, str] | None = None,
) -> dict[str, Timing]:
    """Every model timed at 1 inference thread in one rotating loop, so load from the rest of the
    machine slows all alike. The paired ratio (each round's time over the base model's time in the
    same round) is steadier than a ratio of medians when the load drifts between rounds.
    precisions: an INFERENCE_PRECISION_HINT for some models (e.g. "f32" for true fp32 on a bf16 CPU)."""
    hints = precisions or {}
    requests = {
        name: compile_model(path, precision=hints.get(name)).create_infer_request()
        for name, path in paths.items()
    }
    for request in requests.values():  # warm-up, and size the repeats on the slowest model
        request.infer(feed)
    start = time.perf_counter()
    for request in requests.values():
        request.infer(feed)
    slowest = (time.perf_counter() - start) / len(requests)
    repeats = max(1, math.ceil(MIN_ROUND_SECONDS / max(slowest, 1e-6)))
    took: dict[str, list[float]] = {name: [] for name in requests}
    names = list(requests)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            begin = time.perf_counter()
            for _ in range(repeats):
                requests[name].infer(feed)
            took[name].append((time.perf_counter() - begin) / repeats)
    return {
        name: Timing(
            ms=1000 * statistics.median(values),
            ratio=statistics.median(v / b for v, b in zip(values, took[base], strict=True)),
        )
        for name, values in took.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="what OpenVINO's CPU plugin runs for each model")
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--layers", action="store_true", help="print every runtime layer")
    parser.add_argument("--smoke", type=Path, help="only compile and run each model on this .npz sample")
    parser.add_argument(
        "--profile", type=Path, help="per kernel and per node PERF_COUNT times on this .npz sample"
    )
    parser.add_argument("--top", type=int, default=25, help="with --profile: the slowest nodes to list")
    parser.add_argument("--heavy", action="store_true", help="with --profile: heavy layers side by side")
    args = parser.parse_args()
    if args.profile is not None:
        _print_profile(args.models, args.profile, args.top, heavy=args.heavy)
        return 0
    if args.smoke is not None:
        with np.load(args.smoke, allow_pickle=False) as archive:
            feed = {name: archive[name] for name in archive.files}
        for path in args.models:
            compile_model(path).create_infer_request().infer(feed)
        return 0
    for path in args.models:
        compiled = compile_model(path)
        layers = runtime_layers(compiled)
        summary = summarize(layers)
        print(f"{path}: inference precision {inference_precision(compiled)}; {summary.text()}")
        print(f"  by type: {summary.by_type}")
        if summary.heavy_float_names:
            print(f"  heavy float: {summary.heavy_float_names[:12]}")
        if args.layers:
            for layer in layers:
                print(
                    f"  {layer.type:16} {layer.precision:5} -> {layer.outputs:10} "
                    f"{layer.primitive:28} {layer.name}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
