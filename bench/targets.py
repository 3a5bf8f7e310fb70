"""quantcli for OpenVINO beside NNCF, all run on OpenVINO's CPU plugin (issue 17's bench).

Run: `make bench-targets` (builds .benchenv-openvino: openvino, NNCF 3.4, onnx, onnxruntime), or
`.benchenv-openvino/bin/python bench/targets.py [--zoo DIR] [--models a,b] [--rules]`.
Writes the `targets` section of bench/RESULTS.md and bench/results/targets.json (`--section NAME`
writes another, e.g. a rerun of some models beside the full run's).

Per model, side by side in one run (one process, one rotating timing loop):
    openvino fp32         the float model, at the plugin's default inference precision (bf16 on a
                          CPU with AMX / AVX512-BF16, which this machine is), the base of every ratio
    openvino fp32 (f32)   the same model with INFERENCE_PRECISION_HINT=f32: true float32
    quantcli --target openvino (static)
                          `quantcli convert --target openvino --mode static`: the Target's placement
    quantcli openvino*    the stand-in it replaces: `quantcli convert --mode static --activation-type
                          int8` then bench/_openvino_rules.py's rule set (the rules docs/openvino.md
                          derives), kept to compare the two
    nncf                  nncf.quantize(onnx.ModelProto, nncf.Dataset(calib samples)) at its defaults
    quantcli default      exactly `quantcli convert MODEL -o OUT --data calib/` (today: --target ort-cpu)
With --rules, each rule's effect is measured too: quantcli static (uint8 and int8 activations)
with the rules applied one more at a time (the evidence table of docs/openvino.md).

Every quantizer gets the same calib/ folder (bench/compare.py's sample folders). Measured per row:
the task metric (bench/compare.py's metric code) of the OpenVINO outputs against onnxruntime's fp32
outputs on eval/, size on disk against fp32, 1-thread latency on the first eval sample (median of
interleaved rounds, and the median of each round's ratio to OpenVINO fp32), and what the compiled
runtime graph runs: heavy layers in integer / float, Reorder, FakeQuantize and Convert layers left.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _openvino as ovb
import _openvino_rules as rules
import compare
import openvino as ov
from _results import write_section

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUANTCLI = ROOT / ".venv" / "bin" / "quantcli"

FP32 = "openvino fp32"
FP32_F32 = "openvino fp32 (f32 hint)"
STAND_IN = "quantcli openvino* (static int8 + rules)"  # the stand-in, kept beside the real target
TARGET = "quantcli --target openvino (static)"
NNCF = "nncf"
DEFAULT = "quantcli default (ort-cpu)"
TOOLS = (FP32, FP32_F32, TARGET, STAND_IN, NNCF, DEFAULT)
# --rules: (label, activation type, rules applied to quantcli static's output)
RULE_STEPS = tuple(
    (f"static {act}" + (" + " + " + ".join(steps) if steps else ""), act, steps)
    for act in ("uint8", "int8")
    for steps in (("conv-outputs",), *(rules.OPENVINO[:count] for count in range(len(rules.OPENVINO) + 1)))
)


@dataclass
class Row:
    model: str
    tool: str
    status: str = "ok"
    error: str = ""
    size_ratio: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    ms: float | None = None
    ratio: float | None = None
    runtime: dict[str, int] = field(default_factory=dict)
    profile_ms: dict[str, float] = field(default_factory=dict)
    rules_applied: dict[str, int] = field(default_factory=dict)
    inference_precision: str = ""  # the plugin's default for float layers (fp32 row only)


REUSE = False  # --reuse: keep an output a previous run left in --work instead of quantizing again


def _run(command: list[str], log: Path) -> str:
    """Run a quantizer; '' when it wrote its output, else the last lines of its log."""
    if REUSE and (log.with_suffix("") / "model.onnx").exists() and log.exists():
        return ""
    with log.open("w") as sink:
        code = subprocess.run(
            command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, check=False
        ).returncode
    if code == 0:
        return ""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f"exit {code}: " + " | ".join(lines[-3:])


def static_command(model: Path, output: Path, data: compare.Data, *flags: str) -> list[str]:
    command = [str(QUANTCLI), "convert", str(model), "-o", str(output), "--mode", "static", *flags]
    command += ["--data", str(data.calib), "--eval-data", str(data.eval)]
    return [*command, "--force", "--quiet"]


def _own_folder(folder: Path) -> Path:
    """Each output in a folder of its own, so its size on disk is that folder's (bench/compare.py's
    disk_bytes: the model and any external data beside it); its log goes beside the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def produce(subject: compare.Subject, work: Path, data: compare.Data, with_rules: bool) -> dict[str, Any]:
    """Quantize with every tool; returns tool -> output path, or an error string."""
    fp32 = subject.folder / "model.onnx"
    made: dict[str, Any] = {FP32: fp32, FP32_F32: fp32}
    applied: dict[str, dict[str, int]] = {}
    statics: dict[str, Path | str] = {}
    for activation in ("int8", "uint8") if with_rules else ("int8",):
        out = _own_folder(work / f"static_{activation}") / "model.onnx"
        command = static_command(fp32, out, data, "--activation-type", activation)
        error = _run(command, out.parent.with_suffix(".log"))
        statics[activation] = error or out
    outputs = {
        TARGET: _own_folder(work / "target_openvino") / "model.onnx",
        NNCF: _own_folder(work / "nncf") / "model.onnx",
        DEFAULT: _own_folder(work / "default") / "model.onnx",
    }
    commands = {
        TARGET: static_command(fp32, outputs[TARGET], data, "--target", "openvino"),
        NNCF: [
            sys.executable,
            str(BENCH / "_peer_quantize.py"),
            "nncf",
            str(fp32),
            str(outputs[NNCF]),
            "--data",
            str(data.calib),
        ],
        # bench/compare.py's default command, with this worktree's quantcli (not the venv's: this
        # venv has OpenVINO, not quantcli)
        DEFAULT: [str(QUANTCLI), *compare.default_command(fp32, outputs[DEFAULT], data)[1:]],
    }
    for tool, command in commands.items():
        sys.stderr.write(f"targets: {subject.name}: {tool}\n")
        made[tool] = _run(command, outputs[tool].parent.with_suffix(".log")) or outputs[tool]
    steps = [(STAND_IN, "int8", rules.OPENVINO)]
    steps += list(RULE_STEPS) if with_rules else []
    for index, (label, activation, chosen) in enumerate(steps):
        source = statics[activation]
        if isinstance(source, str):
            made[label] = source
            continue
        out = _own_folder(work / f"rules{index}") / "model.onnx"
        try:
            applied[label] = rules.rewrite(source, out, tuple(chosen))
            made[label] = out
        except Exception as exc:  # a rule that breaks on a model is a result for its row, not a crash
            made[label] = f"rule rewrite failed: {type(exc).__name__}: {exc}"
    made["_applied"] = applied
    return made


def runtime_counts(path: Path) -> dict[str, int]:
    summary = ovb.summarize(ovb.runtime_layers(ovb.compile_model(path)))
    return {
        "heavy_int": summary.heavy_integer,
        "heavy_float": summary.heavy_float,
        "reorders": summary.reorders,
        "fake_quantize": summary.fake_quantize,
        "converts": summary.converts,
        "layers": summary.layers,
    }


def measure_model(subject: compare.Subject, rounds: int, work_root: Path, with_rules: bool) -> list[Row]:
    work = work_root / subject.name
    work.mkdir(parents=True, exist_ok=REUSE)
    split = compare.Data(work / "data" / "calib", work / "data" / "eval")
    data = split if REUSE and split.eval.is_dir() else compare.sample_folders(subject, work)
    started = time.perf_counter()
    made = produce(subject, work, data, with_rules)
    applied = made.pop("_applied")
    sys.stderr.write(f"targets: {subject.name}: quantized in {time.perf_counter() - started:.0f} s\n")
    feeds = compare.load_samples(data.eval)
    output = str(subject.task["output"])
    reference = compare.run_samples(subject.folder / "model.onnx", feeds, output)  # onnxruntime fp32
    metric = compare.METRICS[str(subject.task["task"])]
    fp32_bytes = (subject.folder / "model.onnx").stat().st_size
    rows, loaded = [], {}
    for tool, result in made.items():
        row = Row(model=subject.name, tool=tool, rules_applied=applied.get(tool, {}))
        rows.append(row)
        if isinstance(result, str):
            row.status, row.error = "quantizer failed", result[:400]
            continue
        crashed = ovb.survives(result, sorted(data.eval.glob("*.npz"))[0])
        if crashed:
            row.status, row.error = "crashes OpenVINO", crashed
            continue
        try:
            precision = "f32" if tool == FP32_F32 else None
            candidate = ovb.run_samples(result, feeds, output, precision=precision)
            row.runtime = runtime_counts(result)
            if tool == FP32:
                row.inference_precision = ovb.inference_precision(ovb.compile_model(result))
        except RuntimeError as exc:  # an OpenVINO failure is a result to record
            row.status, row.error = "does not compile or run in OpenVINO", str(exc)[:400]
            continue
        row.metrics = metric(reference, candidate, subject.task)
        row.size_ratio = 1.0 if tool in (FP32, FP32_F32) else fp32_bytes / compare.disk_bytes(result)
        loaded[tool] = result
    sys.stderr.write(f"targets: {subject.name}: timing {len(loaded)} models, {rounds} rounds\n")
    # Nothing to time without the fp32 base (a model OpenVINO cannot read: every row says why).
    times = ovb.timing(loaded, FP32, feeds[0], rounds, precisions={FP32_F32: "f32"}) if FP32 in loaded else {}
    for row in rows:
        if row.tool in times:
            row.ms, row.ratio = times[row.tool].ms, times[row.tool].ratio
            if row.tool != FP32_F32:
                row.profile_ms = {
                    k: round(v, 3) for k, v in list(ovb.profile(loaded[row.tool], feeds[0]).items())[:6]
                }
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def model_table(subject: compare.Subject, rows: list[Row]) -> list[str]:
    columns = compare.METRIC_COLUMNS[str(subject.task["task"])]
    head = ["tool", *(label for _, label in columns), "size ×", "ms (1 thr)", "× OV fp32"]
    head += ["heavy int/float", "reorders", "FQ", "Convert", "layers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.tool} | {row.status}: {row.error} |" + " |" * (len(head) - 2))
            continue
        r = row.runtime
        cells = [row.tool, *(_fmt(row.metrics.get(key)) for key, _ in columns), _fmt(row.size_ratio, 2)]
        cells += [_fmt(row.ms, 2), _fmt(row.ratio, 3)]
        cells += [f"{r['heavy_int']}/{r['heavy_float']}", str(r["reorders"]), str(r["fake_quantize"])]
        cells += [str(r["converts"]), str(r["layers"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _precision(results: list[tuple[compare.Subject, list[Row]]]) -> str:
    found = {row.inference_precision for _, rows in results for row in rows if row.inference_precision}
    for subject, _ in results if not found else ():  # rows stored before the field existed: ask the plugin
        try:
            found = {ovb.inference_precision(ovb.compile_model(subject.folder / "model.onnx"))}
            break
        except RuntimeError:  # a model OpenVINO cannot read (silero_vad): the next one
            continue
    return ", ".join(sorted(found))


def markdown(
    results: list[tuple[compare.Subject, list[Row]]],
    rounds: int,
    seconds: float,
    argv: list[str],
    load: float,
    load_start: float | None = None,
    note: str = "",
) -> str:
    command = "bench/targets.py " + " ".join(argv) if argv else "make bench-targets"
    started = "" if load_start is None else f"at the start {load_start:.1f}, "
    out = [
        f"## quantcli for OpenVINO beside NNCF, on OpenVINO's CPU plugin (`{command}`, bench/targets.py)",
        "",
        *([note, ""] if note else []),
        f"OpenVINO {ov.get_version().split('-')[0]}, NNCF 3.4.0, CPU plugin, 1 inference thread, 1 stream; "
        f"{rounds} interleaved rounds; {seconds / 60:.0f} min; 1-min load average {started}at the end "
        f"{load:.1f} on {len(os.sched_getaffinity(0))} cores (a shared machine: read the",
        f"ratios). The plugin's default inference precision on this CPU is {_precision(results)}, so",
        "`openvino fp32` runs its float layers in that precision; `f32 hint` is the same model forced to",
        "float32. `× OV fp32` is the median of each round's time over `openvino fp32`'s in the same round",
        "(below 1 is faster). Task metric: OpenVINO outputs against onnxruntime's fp32 outputs on eval/.",
        "`quantcli --target openvino (static)` is `quantcli convert --target openvino --mode static`;",
        "`quantcli openvino*` the stand-in it replaces: `quantcli convert --mode static",
        "--activation-type int8`, then bench/_openvino_rules.py's rules (docs/openvino.md). heavy =",
        "Convolution / FullyConnected / MatMul layers of the compiled runtime graph by runtime precision;",
        "FQ = FakeQuantize layers left.",
        "",
    ]
    for subject, rows in results:
        out += [f"### {subject.name}", "", *model_table(subject, rows), ""]
    return "\n".join(out)


def render(stored: Path, zoo: Path, section: str, note: str = "") -> int:
    """The section again from stored rows (after a change to the text only); rounds and minutes
    are not stored, so they come from the rows' .meta.json beside them."""
    data = json.loads(stored.read_text())
    meta = json.loads(stored.with_suffix(".meta.json").read_text())
    names = list(dict.fromkeys(item["model"] for item in data))
    subjects = {s.name: s for s in compare.subjects(zoo, set(names))}
    results = [(subjects[name], [Row(**item) for item in data if item["model"] == name]) for name in names]
    text = markdown(
        results,
        meta["rounds"],
        meta["seconds"],
        meta["argv"],
        meta["load"],
        meta.get("load_start"),
        note or meta.get("note", ""),
    )
    write_section(section, text, data)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="quantcli vs NNCF on OpenVINO's CPU plugin")
    parser.add_argument("--zoo", type=Path, default=ROOT / "bench" / "zoo")
    parser.add_argument("--models", default="", help="comma list (default: every zoo and sample model)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--rules", action="store_true", help="also measure each rule alone (slower)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument("--work", type=Path, help="keep every output here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="with --work: reuse outputs a run left there")
    parser.add_argument("--rows", type=Path, help="also write the rows so far here after every model")
    parser.add_argument(
        "--render",
        type=Path,
        help="rewrite the section from a results JSON this script wrote; measure nothing",
    )
    parser.add_argument("--section", default="targets", help="the RESULTS.md section to write")
    parser.add_argument("--note", default="", help="a paragraph under the section's heading")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.zoo, args.section, args.note)
    if not QUANTCLI.exists():
        parser.error(f"{QUANTCLI} missing: run `make install`")
    wanted = set(args.models.split(",")) if args.models else None
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    results = []
    global REUSE  # noqa: PLW0603 - set once, from the command line
    REUSE = args.reuse and args.work is not None
    with tempfile.TemporaryDirectory(prefix="quantcli-targets-") as scratch:
        for subject in compare.subjects(args.zoo, wanted):
            rows = measure_model(subject, args.rounds, args.work or Path(scratch), args.rules)
            results.append((subject, rows))
            print("\n".join(model_table(subject, rows)), flush=True)
            # The section so far after every model: a long run that stops keeps what it measured.
            _report(results, args, argv, (started, load_start), final=False)
    _report(results, args, argv, (started, load_start), final=True)
    return 0


def _report(
    results: list[tuple[compare.Subject, list[Row]]],
    args: argparse.Namespace,
    argv: list[str] | None,
    start: tuple[float, float],
    *,
    final: bool,
) -> None:
    """start: the run's perf_counter and 1-min load average when it began."""
    started, load_start = start
    seconds, load = time.perf_counter() - started, os.getloadavg()[0]
    data = [asdict(row) for _, rows in results for row in rows]
    if args.rows is not None:  # e.g. two runs over different models, joined by --render
        args.rows.write_text(json.dumps(data, indent=1) + "\n")
    if args.no_write and not final:
        return
    text = markdown(results, args.rounds, seconds, argv or sys.argv[1:], load, load_start, args.note)
    if args.no_write:
        if final:
            print(text)
            print(json.dumps(data, indent=1))
        return
    write_section(args.section, text, data)
    meta = {
        "rounds": args.rounds,
        "seconds": seconds,
        "argv": argv or sys.argv[1:],
        "load": load,
        "load_start": load_start,
        "note": args.note,
    }
    (BENCH / "results" / f"{args.section}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
