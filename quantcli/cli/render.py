"""Rich rendering of reports for people; JSON for machines lives in the report's to_dict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from quantcli.calibration.file import CalibrationFile
from quantcli.cli.text import text
from quantcli.config import GateMetric, QuantConfig
from quantcli.diagnose import LayerDiagnosis
from quantcli.evaluate import Fidelity, GateResult
from quantcli.inspection import ModelSummary
from quantcli.pages import NOTHING_TO_DIAGNOSE
from quantcli.plan import NodeDecision, NodeRole
from quantcli.report import BlockwiseSummary, CompareReport, FallbackSummary, QuantReport
from quantcli.target import TARGETS

__all__ = [
    "gate_line",
    "render_batch",
    "render_calibration",
    "render_compare",
    "render_per_layer",
    "render_report",
    "render_summary",
]


def _heading(line: str, console: Console) -> None:
    """A line above a table naming what it is about: printed whole, never wrapped to the
    table's width (a title would cut a long path into pieces)."""
    console.print(text(line, style="italic"), soft_wrap=True, highlight=False)


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"


def _float_table(decisions: tuple[NodeDecision, ...], title: str) -> Table:
    """Float nodes grouped by (op, reason): a 500-node transformer stays readable."""
    table = Table(title=title, title_justify="left")
    table.add_column("op")
    table.add_column("nodes", justify="right")
    table.add_column("why", overflow="fold")
    table.add_column("e.g.", overflow="fold")
    groups = Counter((d.op_type, d.reason) for d in decisions)
    examples: dict[tuple[str, str], str] = {}
    for d in decisions:
        examples.setdefault((d.op_type, d.reason), d.name)
    for (op, reason), count in sorted(groups.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(
            text(op), str(count), text(reason.removeprefix("float: ")), text(examples[(op, reason)])
        )
    return table


def _plan_table(decisions: tuple[NodeDecision, ...]) -> Table:
    table = Table(title="quantized", title_justify="left")
    table.add_column("op")
    table.add_column("nodes", justify="right")
    table.add_column("as")
    groups = Counter((d.op_type, d.role.value) for d in decisions if d.role is not NodeRole.FLOAT)
    for (op, role), count in sorted(groups.items()):
        table.add_row(text(op), str(count), role)
    return table


def _target_line(config: QuantConfig) -> str:
    return f"{config.target.value} ({TARGETS[config.target].runtime})"


def _activation_line(config: QuantConfig) -> str:
    """The activation type, or the target's own rule when it picks the type (zero points 0)."""
    target = TARGETS[config.target]
    if not target.zero_point_zero:
        return config.activation_type.value
    if target.nonnegative_type is None:
        return "int8 symmetric (zero point 0)"
    return f"int8 symmetric, {target.nonnegative_type.name.lower()} from 0 where non-negative (zero points 0)"


def render_report(report: QuantReport, console: Console) -> None:
    size = report.size
    _heading(f"quantcli convert: {report.model} -> {report.output}", console)
    summary = Table(show_header=False)
    summary.add_column("")
    summary.add_column("")
    summary.add_row("size before", _mib(size.input_bytes))
    summary.add_row("size after", _mib(size.output_bytes))
    summary.add_row("size ratio", f"{size.ratio:.2f}x smaller")
    summary.add_row("weights in int8", f"{100 * report.int8_weight_fraction:.1f} %")
    summary.add_row("mode", report.plan.mode.value)
    if report.mode_reason:
        summary.add_row("why this mode", text(report.mode_reason))
    summary.add_row("target", _target_line(report.config))
    summary.add_row("activations", _activation_line(report.config))
    summary.add_row("calibration", text(report.calibration_line))
    if report.engine is not None:
        summary.add_row("checked on", text(report.engine.line))
    console.print(summary)
    if report.candidates:
        console.print(_candidates_table(c.to_dict() for c in report.candidates))
    console.print(_plan_table(report.plan.decisions))
    if report.float_nodes:
        console.print(_float_table(report.float_nodes, "left in float"))
    if report.fallback is not None:
        console.print(_fallback_table(report.fallback))
    if report.blockwise is not None:
        console.print(_blockwise_table(report.blockwise))
    if report.per_layer is not None:
        render_per_layer(report.per_layer, console)
    if report.fidelity is None:
        console.print(text(f"fidelity {report.fidelity_note}"))
        return
    _render_fidelity(report.fidelity, console)
    if report.gate is not None:
        console.print(_verdict(report.gate))


def _blockwise_table(summary: BlockwiseSummary) -> Table:
    zero_point = "symmetric" if summary.symmetric else "zero point per block"
    counts = Counter("float" if bits is None else f"{bits}-bit" for _, _, bits, _ in summary.widths)
    widths = ", ".join(f"{counts[key]} {key}" for key in ("4-bit", "8-bit", "float") if counts[key])
    title = (
        f"{summary.bits}-bit weights: blocks of {summary.block_size}, {summary.method}, {zero_point}, "
        f"{summary.form} accuracy_level {summary.accuracy_level}" + (f"; weights: {widths}" if widths else "")
    )
    table = Table(title=title, title_justify="left")
    for column in ("node", "op", "K x N", "weight error", "output SQNR"):
        table.add_column(column, justify="left" if column in ("node", "op") else "right")
    for layer in summary.layers:
        sqnr = layer.output_sqnr_db
        table.add_row(
            text(layer.node),
            layer.op_type,
            f"{layer.k} x {layer.n}",
            f"{100 * layer.weight_error:.2f} %",
            "not observed" if sqnr is None else f"{sqnr:.1f} dB",
        )
    return table


def _verdict(result: GateResult) -> Text:
    """``accuracy gate (cosine): drop 0.28 points, bound 0.10: FAILED by 0.18 points``."""
    line = Text(f"accuracy gate ({result.metric.value}): ")
    if result.higher_is_better:
        what = "worst output" if result.metric is GateMetric.SQNR else "mean channel SQNR"
        line.append(f"{what} {result.value:.1f} dB, bound {result.bound:.1f} dB: ")
    else:
        line.append(f"drop {result.value:.2f} points, bound {result.bound:.2f}: ")
    if result.passed:
        line.append("PASSED", style="green")
    else:
        line.append("FAILED", style="bold red")
        line.append(f" by {result.missed_by:.2f} {result.unit}")
    return line


def gate_line(result: GateResult) -> str:
    """The one line ``--quiet`` keeps: ``FAILED: accuracy drop 0.28 > 0.10 points``."""
    verdict = "PASSED" if result.passed else "FAILED"
    if result.higher_is_better:
        sign = ">=" if result.passed else "<"
        return f"{verdict}: {result.metric.value} {result.value:.1f} {sign} {result.bound:.1f} dB"
    sign = "<=" if result.passed else ">"
    return f"{verdict}: {result.metric.value} drop {result.value:.2f} {sign} {result.bound:.2f} points"


def _fallback_table(fallback: FallbackSummary) -> Table:
    table = Table(title=text(f"automatic fallback: {fallback.summary}"), title_justify="left")
    widening = fallback.eight_bit_nodes is not None
    counts = ("trial", "nodes at 8 bits", "nodes in float") if widening else ("trial", "nodes in float")
    for column in (*counts, "gate", "int8 weights", "size ratio", ""):
        table.add_column(column, justify="right" if column in counts else "left")
    for step in fallback.steps:
        gate = step["gate"]
        if gate is None:
            outcome = text(step["note"])
        else:
            value = gate.get("drop", gate.get("sqnr_db"))
            verdict = "passed" if gate["passed"] else "missed"
            outcome = Text(f"{gate['metric']} {_number(value)}: {verdict}")
        sizes = [str(len(step[key])) for key in ("nodes_at_8_bits", "nodes_in_float") if key in step]
        table.add_row(
            str(step["trial"]),
            *sizes,
            outcome,
            f"{100 * step['int8_weight_fraction']:.1f} %",
            f"{step['size_ratio']:.2f}x",
            Text("kept", style="bold green") if step["chosen"] else "",
        )
    return table


def _name_width(names: Iterable[str], cap: int = 48) -> int:
    """A names column at least as wide as its longest word (up to ``cap``), so a table squeezed
    into 80 columns wraps the other columns, not ``conv1.weight`` into 7-character fragments."""
    return min(cap, max((len(word) for name in names for word in name.split()), default=4))


def render_per_layer(diagnosis: LayerDiagnosis, console: Console) -> None:
    """The worst tensors: what they are, where, their range, and how much they lose."""
    if not diagnosis.tensors:
        console.print(f"per-layer: {NOTHING_TO_DIAGNOSE}")
        return
    worst = diagnosis.worst()
    table = Table(
        title=f"worst {min(diagnosis.top_k, len(diagnosis.tensors))} of {len(diagnosis.tensors)} quantized "
        f"tensors on {diagnosis.samples} samples (alone: output SQNR with only this tensor quantized)",
        title_justify="left",
    )
    widths = {
        "tensor": _name_width(t.name for t in worst),
        "nodes": _name_width(n for t in worst for n in t.nodes),
    }
    for column in ("tensor", "kind", "op", "nodes", "range", "SQNR dB", "local dB", "alone dB"):
        table.add_column(
            column,
            justify="right" if "dB" in column else "left",
            overflow="fold",
            min_width=widths.get(column),
        )
    for t in worst:
        table.add_row(
            text(t.name),
            t.kind,
            text(t.op_type),
            text(", ".join(t.nodes)),
            Text(f"[{t.range_min:.3g}, {t.range_max:.3g}]"),
            f"{t.sqnr_db:.1f}",
            f"{t.local_sqnr_db:.1f}",
            "-" if t.alone_sqnr_db is None else f"{t.alone_sqnr_db:.1f}",
        )
    console.print(table)


def render_compare(report: CompareReport, console: Console) -> None:
    _heading(f"quantcli compare: {report.float_model} vs {report.quantized_model}", console)
    summary = Table()
    summary.add_column("")
    summary.add_column("float", justify="right")
    summary.add_column("quantized", justify="right")
    summary.add_row("size", _mib(report.size.input_bytes), _mib(report.size.output_bytes))
    latency = report.latency
    summary.add_row(
        "latency median ms", f"{latency['float'].median_ms:.3f}", f"{latency['quantized'].median_ms:.3f}"
    )
    summary.add_row("latency p90 ms", f"{latency['float'].p90_ms:.3f}", f"{latency['quantized'].p90_ms:.3f}")
    console.print(summary)
    if report.engine is not None:
        console.print(text(f"run and timed on {report.engine.line}"))
    if report.per_layer is not None:
        render_per_layer(report.per_layer, console)
    _render_fidelity(report.fidelity, console)


def _render_fidelity(fidelity: Fidelity, console: Console) -> None:
    _heading(f"fidelity vs float on {fidelity.samples} samples ({fidelity.source})", console)
    table = Table()
    for column in ("output", "cosine mean", "cosine min", "output SQNR dB", "max |err|", "top-1 agree"):
        table.add_column(column, justify="right" if column != "output" else "left")
    for out in fidelity.outputs:
        agree = "-" if out.top1_agreement is None else f"{100 * out.top1_agreement:.1f} %"
        table.add_row(
            text(out.name),
            f"{out.cosine_mean:.5f}",
            f"{out.cosine_min:.5f}",
            f"{out.sqnr_db:.1f}",
            f"{out.max_abs_error:.4g}",
            agree,
        )
    console.print(table)
    if fidelity.accuracy is not None:
        acc = fidelity.accuracy
        console.print(
            text(
                f"top-1 accuracy on labels ({acc.output}): float {acc.float_top1:.2f} %, "
                f"int8 {acc.quantized_top1:.2f} %, drop {acc.drop_points:+.2f} points"
            ),
            highlight=False,
        )


def _number(value: float | str) -> str:
    """A report figure: reports write an infinite SQNR (an exact match) as the string "inf"."""
    return value if isinstance(value, str) else f"{value:.2f}"


def _candidates_table(candidates: Iterable[Mapping[str, Any]]) -> Table:
    """The modes auto tried, from their report form (a report's, or a calibration file's)."""
    rows = list(candidates)
    gates = [c["gate"] for c in rows if c["gate"] is not None]
    # Named after the metric: a channel SQNR is not the fidelity table's whole-output SQNR.
    measure = (
        "drop"
        if not gates or "drop" in gates[0]
        else ("channel SQNR dB" if gates[0]["metric"] == "channel-sqnr" else "SQNR dB")
    )
    unit = f" ({gates[0]['metric']})" if gates else ""
    table = Table(title=text(f"modes tried (--mode auto), {measure}{unit}"), title_justify="left")
    # Auto compares speed by the cost model's prediction unless --speed measured timed them.
    timed = any(c.get("latency_ms") is not None for c in rows)
    for column in ("mode", "size", "int8 w.", measure, "ms" if timed else "predicted ms", "", "why"):
        table.add_column(column, justify="left" if column in ("mode", "why", "") else "right")
    for c in rows:
        gate, latency, predicted = c["gate"], c.get("latency_ms"), c.get("predicted")
        value = "-" if gate is None else _number(gate.get("drop", gate.get("sqnr_db")))
        speed = latency["median_ms"] if timed and latency else (predicted or {}).get("ms")
        table.add_row(
            text(c["mode"]),
            f"{c['size_ratio']:.2f}x",
            f"{100 * c['int8_weight_fraction']:.0f}%",
            value,
            "-" if speed is None else f"{speed:.3f}",
            Text("chosen", style="bold green") if c["chosen"] else "",
            text(c["reason"]),
        )
    return table


def render_summary(summary: ModelSummary, console: Console) -> None:
    _heading(f"quantcli inspect: {summary.path}", console)
    table = Table(show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("size", _mib(summary.size_bytes))
    table.add_row("opset", str(summary.opset))
    table.add_row("parameters", f"{summary.parameters:,}")
    for spec in summary.inputs:
        table.add_row("input", text(f"{spec.name}: {spec.describe()}"))
    for name, dtype, shape in summary.outputs:
        table.add_row("output", text(f"{name}: {dtype}{shape}"))
    table.add_row("ops", text(", ".join(f"{op} x{n}" for op, n in summary.op_types.items())))
    table.add_row("target", TARGETS[summary.target].runtime)
    if summary.engine is not None:
        table.add_row("checked on", text(summary.engine.line))
    table.add_row("mode", text(f"{summary.plan.mode.value}: {summary.mode_reason}"))
    console.print(table)
    console.print(_plan_table(summary.plan.decisions))
    floats = tuple(d for d in summary.plan.decisions if d.role is NodeRole.FLOAT)
    if floats:
        console.print(_float_table(floats, "would stay float"))


def render_calibration(calibration: CalibrationFile, path: str, console: Console) -> None:
    console.print(
        text(
            f"{len(calibration.stats)} tensors, {calibration.num_samples} samples"
            f"{' (shards ' + ', '.join(calibration.shards) + ')' if calibration.shards else ''}, "
            f"default method {calibration.method.describe(calibration.percentile)} -> {path}"
        ),
        highlight=False,
    )
    choice = calibration.choice
    if choice is None:
        console.print(
            "mode: not decided (a shard or a merge; convert with --mode, or with --eval-data to measure)"
        )
        return
    roles = Counter(choice.roles.values())
    console.print(
        text(
            f"mode {choice.mode.value} ({choice.reason}); nodes: "
            + ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
        ),
        highlight=False,
    )
    if choice.candidates:
        console.print(_candidates_table(choice.candidates))


def _gate_cell(gate: Mapping[str, Any] | None) -> str:
    if gate is None:
        return "-"
    verdict = "pass" if gate.get("passed") else "FAIL"
    if "sqnr_db" in gate:
        return f"{verdict} {gate['sqnr_db']:.1f} >= {gate['min_sqnr_db']:g} dB"
    return f"{verdict} {gate['metric']} drop {gate['drop']:.2f} <= {gate['max_drop']:g}"


def render_batch(rows: Iterable[Mapping[str, Any]], console: Console) -> None:
    """convert-many's summary: one row per model (``rows`` are its JSON entries)."""
    _heading("quantcli convert-many", console)
    table = Table()
    for column in ("model", "status", "exit", "size ratio", "mode", "gate", "report or error"):
        table.add_column(
            column, overflow="fold", justify="right" if column in ("exit", "size ratio") else "left"
        )
    for row in rows:
        ratio = row["size_ratio"]
        table.add_row(
            text(row["name"]),
            row["status"],
            str(row["exit_code"]),
            "-" if ratio is None else f"{ratio:.2f}x",
            row["mode"] or "-",
            _gate_cell(row["gate"]),
            text(row["report"] if row["status"] in ("ok", "gate-failed") else row["message"]),
        )
    console.print(table)
