"""Reports as Markdown (a CI job page, a pull-request comment) and as one self-contained HTML page.

Both render the JSON document (``QuantReport.to_dict()`` or ``CompareReport.to_dict()``), so what a
person reads is what a machine reads. The HTML page has inline CSS and an inline SVG chart of
per-layer SQNR; no script, no font, nothing fetched from a network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["NOTHING_TO_DIAGNOSE", "candidate_ms", "html_report", "markdown_report"]

# What a per-layer diagnosis that found no tensor to measure says.
NOTHING_TO_DIAGNOSE = (
    "nothing to diagnose: no tensor of this model passes through a QuantizeLinear/DequantizeLinear pair "
    "(dynamic mode quantizes inside its kernels)"
)

# Below this SQNR (dB) a tensor is drawn as weak in the chart.
WEAK_SQNR_DB = 20.0


def _mib(size: float) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _gate_line(gate: Mapping[str, Any] | None) -> str:
    if gate is None:
        return "no bound given"
    verdict = "PASSED" if gate["passed"] else f"FAILED by {gate['missed_by']:.3g} {gate['unit']}"
    if gate["unit"] == "dB":
        what = "worst output SQNR" if gate["metric"] == "sqnr" else "mean channel SQNR"
        return f"{verdict}: {what} {_num(gate['sqnr_db'])} dB, bound {_num(gate['min_sqnr_db'])} dB"
    return f"{verdict}: {gate['metric']} drop {gate['drop']:.3g} points, bound {gate['max_drop']:.3g}"


def _summary_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    size = doc["size"]
    if doc.get("kind") == "compare":
        latency = doc["latency_ms"]
        rows = [
            ("float model", f"{doc['float_model']} ({_mib(size['float_bytes'])})"),
            ("quantized model", f"{doc['quantized_model']} ({_mib(size['quantized_bytes'])})"),
            ("size ratio", f"{size['ratio']:.2f}x smaller"),
        ]
        rows += [
            (
                f"latency {name}",
                f"median {v['median_ms']:.3f} ms, p90 {v['p90_ms']:.3f} ms ({v['runs']} runs)",
            )
            for name, v in latency.items()
        ]
        return rows
    cal = doc.get("calibration") or {}
    return [
        ("model", f"{doc['model']} -> {doc['output']}"),
        (
            "size",
            f"{_mib(size['input_bytes'])} -> {_mib(size['output_bytes'])} ({size['ratio']:.2f}x smaller)",
        ),
        ("weights in int8", f"{100 * doc['int8_weight_fraction']:.1f} %"),
        ("mode", f"{doc['mode']}: {doc['mode_reason']}" if doc.get("mode_reason") else doc["mode"]),
        ("calibration", cal.get("summary") or f"{cal.get('method')}, {cal.get('samples')} samples"),
        ("accuracy gate", _gate_line(doc.get("gate"))),
    ]


def _accuracy_line(doc: Mapping[str, Any]) -> str:
    """Top-1 accuracy of both models against the labels, when they were given."""
    accuracy = (doc.get("fidelity") or {}).get("accuracy")
    if not accuracy:
        return ""
    return (
        f"Top-1 accuracy on the labels ({accuracy['output']}): float {accuracy['float_top1']:.2f} %, "
        f"int8 {accuracy['quantized_top1']:.2f} %, drop {accuracy['drop_points']:+.2f} points"
    )


def candidate_ms(candidate: Mapping[str, Any]) -> str:
    """A candidate's speed as compared: its measured median, else the cost model's prediction."""
    if candidate.get("latency_ms"):
        return f"{candidate['latency_ms']['median_ms']:.3f}"
    if candidate.get("predicted"):
        return f"{candidate['predicted']['ms']:.3f} predicted"
    return "-"


def _candidate_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The modes --mode auto built and measured, and why each won or lost."""
    header = ["mode", "size ratio", "int8 weights", "gate", "ms", "", "why"]
    rows = [
        [
            c["mode"],
            f"{c['size_ratio']:.2f}x",
            f"{100 * c['int8_weight_fraction']:.1f} %",
            _gate_line(c["gate"]) if c["gate"] else "-",
            candidate_ms(c),
            "chosen" if c["chosen"] else "",
            c["reason"],
        ]
        for c in doc.get("candidates") or []
    ]
    return header, rows


def _provenance_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What made the report: versions, the command, the date (pages only; JSON has no date)."""
    rows = [(name, version) for name, version in sorted((doc.get("versions") or {}).items())]
    if doc.get("command"):
        rows.append(("command", doc["command"]))
    if doc.get("date"):
        rows.append(("date", doc["date"]))
    return rows


def _fidelity_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["output", "cosine mean", "cosine min", "output SQNR dB", "max abs err", "top-1 agree"]
    fidelity = doc.get("fidelity")
    if not fidelity:
        return header, []
    rows = [
        [
            o["name"],
            _num(o["cosine_mean"], 5),
            _num(o["cosine_min"], 5),
            _num(o["sqnr_db"], 1),
            f"{o['max_abs_error']:.4g}",
            "-" if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.1f} %",
        ]
        for o in fidelity["outputs"]
    ]
    return header, rows


def _fallback_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["trial", "nodes in float", "gate", "int8 weights", "size ratio", ""]
    fallback = doc.get("fallback")
    if not fallback:
        return header, []
    rows = []
    for step in fallback["steps"]:
        rows.append(
            [
                str(step["trial"]),
                str(len(step["nodes_in_float"])),
                _gate_line(step["gate"]) if step["gate"] else step["note"],
                f"{100 * step['int8_weight_fraction']:.1f} %",
                f"{step['size_ratio']:.2f}x",
                "kept" if step["chosen"] else "",
            ]
        )
    return header, rows


def _worst_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "tensor", "kind", "op", "nodes", "range", "SQNR dB", "local dB", "alone dB"]
    per_layer = doc.get("per_layer")
    if not per_layer:
        return header, []
    rows = [
        [
            str(t["rank"]),
            t["name"],
            t["kind"],
            t["op_type"],
            ", ".join(t["nodes"]),
            f"[{t['range'][0]:.3g}, {t['range'][1]:.3g}]",
            _num(t["sqnr_db"], 1),
            _num(t["local_sqnr_db"], 1),
            _num(t["alone_sqnr_db"], 1),
        ]
        for t in per_layer["tensors"][: per_layer["top_k"]]
    ]
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return html.escape(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _title(doc: Mapping[str, Any]) -> str:
    return "quantcli compare" if doc.get("kind") == "compare" else "quantcli convert"


def markdown_report(doc: Mapping[str, Any]) -> str:
    """A compact Markdown summary of a report document."""
    parts = [f"### {_title(doc)}", _md_table(["", ""], _summary_rows(doc))]
    parts += [f"> **warning:** {_md_text(w)}" for w in doc.get("warnings") or []]
    if _accuracy_line(doc):
        parts.append(f"**{_accuracy_line(doc)}**")
    header, rows = _candidate_rows(doc)
    if rows:
        parts += ["**Modes tried** (--mode auto)", _md_table(header, rows)]
    header, rows = _fidelity_rows(doc)
    if rows:
        parts += [f"**Fidelity** on {doc['fidelity']['samples']} samples", _md_table(header, rows)]
    header, rows = _fallback_rows(doc)
    if rows:
        fallback = doc["fallback"]
        parts += [f"**Automatic fallback**: {fallback['summary']}", _md_table(header, rows)]
        if fallback["nodes_in_float"]:
            parts.append("Left in float: " + ", ".join(f"`{n}`" for n in fallback["nodes_in_float"]))
    header, rows = _worst_rows(doc)
    if rows:
        parts += [f"**Worst {len(rows)} quantized tensors**", _md_table(header, rows)]
    provenance = _provenance_rows(doc)
    if provenance:
        parts += ["**Made by**", _md_table(["", ""], provenance)]
    return "\n\n".join(parts) + "\n"


def _md_text(text: str) -> str:
    """Text from a file or graph, shown as written: no Markdown or HTML takes effect in it."""
    return html.escape(text).replace("|", "\\|").replace("\n", " ").replace("*", "\\*").replace("_", "\\_")


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24}
h1{font-size:20px;margin:0 0 12px} h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;margin:4px 0 12px}
td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}
th{background:#f6f8fa} td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:600}
.warn{color:#9a6700;font-weight:600} .acc{font-weight:600}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if any(header) else ""
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{html.escape(c)}</td>' if _numeric(c) else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    head_row = f"<tr>{head}</tr>" if head else ""
    return f"<table>{head_row}{''.join(body)}</table>"


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip(" %x"))
    except ValueError:
        return False
    return True


def _chart(doc: Mapping[str, Any]) -> str:
    """Bars of per-tensor SQNR in graph order; weak tensors in red, the ranked worst outlined."""
    per_layer = doc.get("per_layer")
    if not per_layer or not per_layer["tensors"]:
        if per_layer is not None:
            sentence = NOTHING_TO_DIAGNOSE[0].upper() + NOTHING_TO_DIAGNOSE[1:]
            return f"<p>{html.escape(sentence)}.</p>"
        return "<p>No per-layer diagnosis in this report (run with --per-layer).</p>"
    tensors = sorted(per_layer["tensors"], key=lambda t: t["order"])
    values = [t["sqnr_db"] if isinstance(t["sqnr_db"], float | int) else 99.0 for t in tensors]
    top = max(10.0, math.ceil(max(values) / 10) * 10)
    bar, gap, height, left, bottom = 14, 3, 240, 44, 24
    width = max(420, left + len(tensors) * (bar + gap) + 10)
    worst = {t["name"] for t in per_layer["tensors"][: per_layer["top_k"]]}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="sqnr-chart" width="{width}" height="{height + bottom}" '
        f'role="img" aria-label="per-layer SQNR">'
    ]
    for tick in range(0, int(top) + 1, 10):
        y = height - tick / top * (height - 10)
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    limit_y = height - WEAK_SQNR_DB / top * (height - 10)
    for index, (tensor, value) in enumerate(zip(tensors, values, strict=True)):
        x = left + index * (bar + gap)
        h = max(4.0, max(0.0, value) / top * (height - 10))  # a 0 dB tensor stays visible
        color = (
            "#cf222e"
            if value < WEAK_SQNR_DB
            else ("#0969da" if tensor["kind"] == "activation" else "#8250df")
        )
        outline = ' stroke="#1b1f24" stroke-width="1.5"' if tensor["name"] in worst else ""
        label = html.escape(
            f"{tensor['name']} ({tensor['kind']}, {tensor['op_type']}): "
            f"SQNR {_num(tensor['sqnr_db'], 1)} dB, local {_num(tensor['local_sqnr_db'], 1)} dB, "
            f"rank {tensor['rank']}"
        )
        parts.append(
            f'<rect class="bar" x="{x}" y="{height - h:.1f}" width="{bar}" height="{h:.1f}" '
            f'fill="{color}"{outline}><title>{label}</title></rect>'
        )
    parts.append(
        f'<line x1="{left}" x2="{width}" y1="{limit_y:.1f}" y2="{limit_y:.1f}" '
        'stroke="#cf222e" stroke-dasharray="4 3"/>'
    )
    parts.append(
        f'<text x="{left}" y="{height + 16}">tensors in graph order -&gt;   (y: SQNR dB vs float)</text>'
    )
    parts.append("</svg>")
    legend = (
        '<p class="legend"><span style="background:#0969da"></span>activation'
        '<span style="background:#8250df"></span>weight'
        f'<span style="background:#cf222e"></span>below {WEAK_SQNR_DB:.0f} dB'
        '<span style="border:1.5px solid #1b1f24"></span>ranked worst (hover a bar for its name)</p>'
    )
    return "".join(parts) + legend


def html_report(doc: Mapping[str, Any]) -> str:
    """One self-contained HTML page: summary tables and the per-layer SQNR chart."""
    title = _title(doc)
    gate = doc.get("gate")
    verdict = ""
    if gate is not None:
        cls = "pass" if gate["passed"] else "fail"
        verdict = f'<p class="{cls}">Accuracy gate {html.escape(_gate_line(gate))}</p>'
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        verdict,
        *(f'<p class="warn">warning: {html.escape(w)}</p>' for w in doc.get("warnings") or []),
        _html_table(["", ""], _summary_rows(doc)),
    ]
    if _accuracy_line(doc):
        sections.append(f'<p class="acc">{html.escape(_accuracy_line(doc))}</p>')
    header, rows = _candidate_rows(doc)
    if rows:
        sections += ["<h2>Modes tried (--mode auto)</h2>", _html_table(header, rows)]
    header, rows = _fidelity_rows(doc)
    if rows:
        sections += ["<h2>Fidelity against the float model</h2>", _html_table(header, rows)]
    header, rows = _fallback_rows(doc)
    if rows:
        sections += [
            f"<h2>Automatic fallback</h2><p>{html.escape(doc['fallback']['summary'])}</p>",
            _html_table(header, rows),
        ]
    sections += ["<h2>Per-layer SQNR</h2>", _chart(doc)]
    header, rows = _worst_rows(doc)
    if rows:
        sections += [f"<h2>Worst {len(rows)} quantized tensors</h2>", _html_table(header, rows)]
    provenance = _provenance_rows(doc)
    if provenance:
        sections += ["<h2>Made by</h2>", _html_table(["", ""], provenance)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
