"""Fit quantcli's cost model of onnxruntime's CPU provider, and check it against measured latency.

For every bench model (the sample models, and the zoo when built), quantcli builds one model per
mode (static, mixed, dynamic, weight-only); each of those and the float model is profiled with
onnxruntime's profiler on one thread (every kernel, its shapes and its median duration over
``--runs`` runs). The coefficients are fitted on all those kernels (see :func:`fit`) and written to
``quantcli/data/ort_cpu_costs.json``, the table ``--mode auto`` predicts speed with.

Then the check: every model's variants are timed end to end, interleaved, on one thread, and for
every pair of variants whose measured latencies differ by more than 10% the predicted order must
agree. Predictions are shown twice: with the coefficients fitted on every model, and fitted with
the model itself left out (what the cost model does on a model it has never seen).

    python bench/cost_model.py [--zoo bench/zoo] [--runs 20] [--no-write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _results import machine, write_section  # type: ignore[import-not-found]

from quantcli import QuantConfig, quantize
from quantcli.config import QuantMode
from quantcli.cost import INTEGER_KERNELS, CostModel, Kernel, kernel_work, profile_kernels
from quantcli.evaluate import measure_latency
from quantcli.graph.io import open_session

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "quantcli" / "data" / "ort_cpu_costs.json"
WORK = ROOT / "bench" / "_work" / "cost_model"
MODES = (QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)
# Kernels doing less work than this are timed as overhead alone (launch, bookkeeping).
SMALL_WORK = 2048
DISAGREE_BELOW = 1.10  # pairs measured closer than this are not judged
# Work below which a cost key's coefficient is not trusted (tiny kernels are all overhead).
TRUSTED_WORK = {"float": 20_000_000, "integer": 20_000_000, "dq-weight": 20_000_000, "element": 200_000}


@dataclass(frozen=True)
class Variant:
    model: str
    name: str  # "float" or a mode
    path: Path
    kernels: tuple[Kernel, ...]


def bench_models(zoo: Path) -> list[tuple[str, Path, Path]]:
    """(name, model, calibration data) for every bench model present."""
    found = [
        (
            "digits_cnn",
            ROOT / "sample_models/digits_cnn/model.onnx",
            ROOT / "sample_models/digits_cnn/calib.npz",
        ),
        (
            "digits_transformer",
            ROOT / "sample_models/digits_transformer/model.onnx",
            ROOT / "sample_models/digits_transformer/calib.npz",
        ),
    ]
    for folder in sorted(p for p in zoo.glob("*") if (p / "model.onnx").exists()):
        data = folder / "calib.npz" if (folder / "calib.npz").exists() else folder / "calib"
        found.append((folder.name, folder / "model.onnx", data))
    return found


def first_feed(data: Path) -> dict[str, np.ndarray]:
    if data.is_dir():
        data = sorted(data.glob("*.npz"))[0]
        with np.load(data) as arrays:
            return {k: arrays[k] for k in arrays.files}
    with np.load(data) as arrays:
        return {k: arrays[k][:1] for k in arrays.files}


def build_variants(name: str, model: Path, data: Path, runs: int) -> list[Variant]:
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    feed = first_feed(data)
    variants = [Variant(name, "float", model, profile_kernels(model, feed, runs=runs))]
    for mode in MODES:
        out = folder / f"{mode.value}.onnx"
        try:
            quantize(model, out, config=QuantConfig(mode=mode), data=data, force=True)
        except Exception as exc:  # a mode that changes nothing on this model
            print(f"  {name} {mode}: not built ({str(exc).splitlines()[0][:100]})", file=sys.stderr)
            continue
        variants.append(Variant(name, mode.value, out, profile_kernels(out, feed, runs=runs)))
    return variants


def fit(kernels: list[Kernel], runtime: str = "onnxruntime CPU, 1 thread") -> CostModel:
    """Per-kernel overhead: the median time of kernels with almost no work. Per cost key: its
    kernels' time beyond that overhead, summed, over their work, summed (a work-weighted rate, so
    the large kernels that dominate a model's time dominate its coefficient). A key whose kernels
    did too little work in all to time reliably gets no entry and costs its family's default: the
    work-weighted rate of every trusted key of the family (float MACs, integer MACs, elements)."""
    small = [k.duration_us for k in kernels if kernel_work(k)[0] < SMALL_WORK]
    overhead = statistics.median(small) if small else 1.0
    spent: dict[str, float] = defaultdict(float)
    work: dict[str, int] = defaultdict(int)
    family: dict[str, str] = {}
    for k in kernels:
        units, mac = kernel_work(k)
        key = k.cost_key
        spent[key] += max(k.duration_us - overhead, 0.0) * 1000.0
        work[key] += units
        if not mac:
            family[key] = "element"
        elif k.op_type in INTEGER_KERNELS:
            family[key] = "integer"
        else:
            family[key] = "dq-weight" if k.dequantized_weight else "float"
    trusted = [key for key in spent if work[key] >= TRUSTED_WORK[family[key]]]

    def family_rate(name: str, fallback: float) -> float:
        keys = [k for k in trusted if family[k] == name]
        total = sum(work[k] for k in keys)
        return round(sum(spent[k] for k in keys) / total, 6) if total else fallback

    return CostModel(
        runtime=runtime,
        overhead_us=round(overhead, 3),
        ns_per_unit={key: round(spent[key] / work[key], 6) for key in sorted(trusted)},
        default_ns_per_element=family_rate("element", 0.3),
        default_ns_per_mac=family_rate("float", 0.02),
        default_ns_per_integer_mac=family_rate("integer", 0.01),
        default_ns_per_dq_weight_mac=family_rate("dq-weight", 0.05),
    )


def measured(variants: list[Variant], feed: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    sessions = {v.name: open_session(v.path, threads=1, for_timing=True) for v in variants}
    return {k: v.median_ms for k, v in measure_latency(sessions, feed, runs=rounds).items()}


def agreement(
    measured_ms: dict[str, float], predicted_ms: dict[str, float], same: set[frozenset[str]]
) -> tuple[int, int, list[str]]:
    """Pairs judged, pairs the prediction orders as measured, and the others. Pairs measured
    within 10% of each other, or that are the same model (mixed is static on a model without
    MatMul), are not judged: their measured difference is the machine's noise."""
    judged = agree = 0
    wrong = []
    for a, b in itertools.combinations(sorted(measured_ms), 2):
        ma, mb = measured_ms[a], measured_ms[b]
        if max(ma, mb) / min(ma, mb) < DISAGREE_BELOW or frozenset((a, b)) in same:
            continue
        judged += 1
        if (ma < mb) == (predicted_ms[a] < predicted_ms[b]):
            agree += 1
        else:
            wrong.append(f"{a} vs {b}")
    return judged, agree, wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoo", type=Path, default=ROOT / "bench" / "zoo")
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per variant")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite the coefficient table")
    args = parser.parse_args()
    started = time.time()
    models = bench_models(args.zoo)
    by_model: dict[str, list[Variant]] = {}
    feeds = {}
    for name, model, data in models:
        print(f"profiling {name}", file=sys.stderr)
        by_model[name] = build_variants(name, model, data, args.runs)
        feeds[name] = first_feed(data)
    everything = [k for vs in by_model.values() for v in vs for k in v.kernels]
    table = fit(
        everything, f"onnxruntime CPU, 1 thread; fitted by bench/cost_model.py on {', '.join(by_model)}"
    )
    if not args.no_write:
        TABLE.write_text(json.dumps(table.to_dict(), indent=2, sort_keys=True) + "\n")
    rows = []
    lines = [
        "## Cost model: predicted against measured latency (`bench/cost_model.py`)",
        "",
        f"Measured on {machine()}. Coefficients fitted on per-kernel profiles ({args.runs} runs,",
        "1 thread) of every variant below and written to `quantcli/data/ort_cpu_costs.json`.",
        f"Measured: median of {args.rounds} interleaved rounds, 1 thread. *held out*: predicted with",
        "coefficients fitted on the other models only. A pair is judged when its measured latencies",
        "differ by more than 10%.",
        "",
        "| model | variant | measured ms | predicted ms | predicted (held out) | integer MAC share |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for name, variants in by_model.items():
        held_out = fit([k for other, vs in by_model.items() if other != name for v in vs for k in v.kernels])
        times = measured(variants, feeds[name], args.rounds)
        full = {v.name: table.predict(v.kernels) for v in variants}
        out = {v.name: held_out.predict(v.kernels) for v in variants}
        for v in variants:
            rows.append(
                {
                    "model": name,
                    "variant": v.name,
                    "measured_ms": times[v.name],
                    "predicted_ms": full[v.name].ms,
                    "predicted_held_out_ms": out[v.name].ms,
                    "integer_mac_share": full[v.name].integer_mac_share,
                }
            )
            lines.append(
                f"| {name} | {v.name} | {times[v.name]:.3f} | {full[v.name].ms:.3f} | {out[v.name].ms:.3f} | "
                f"{full[v.name].integer_mac_share:.2f} |"
            )
        same = {
            frozenset((a.name, b.name))
            for a, b in itertools.combinations(variants, 2)
            if a.path.read_bytes() == b.path.read_bytes()
        }
        judged, agree, wrong = agreement(times, {k: p.ms for k, p in full.items()}, same)
        judged_out, agree_out, wrong_out = agreement(times, {k: p.ms for k, p in out.items()}, same)
        summary.append(
            f"- {name}: {agree}/{judged} pairs ordered as measured"
            + (f" (wrong: {', '.join(wrong)})" if wrong else "")
            + f"; held out {agree_out}/{judged_out}"
            + (f" (wrong: {', '.join(wrong_out)})" if wrong_out else "")
        )
    lines += ["", *summary, "", f"Whole run: {time.time() - started:.0f} s."]
    write_section("cost_model", "\n".join(lines), {"rows": rows, "summary": summary})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
