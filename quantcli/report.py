"""What a conversion did, as data: sizes, decisions, calibration, fidelity.

No rendering here: the CLI turns a :class:`QuantReport` into Rich tables or JSON. ``to_dict`` is
the JSON schema (``schema_version`` changes whenever a field changes meaning or goes away).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from quantcli.blockwise.layers import BlockLayer
from quantcli.config import QuantConfig, config_settings
from quantcli.cost import Prediction
from quantcli.diagnose import LayerDiagnosis
from quantcli.engine import EngineSummary
from quantcli.evaluate import Fidelity, GateResult, Latency
from quantcli.plan import NodeDecision, NodeRole, QuantPlan

if TYPE_CHECKING:  # repair builds models, which import this module
    from quantcli.repair import FallbackResult

__all__ = [
    "BARELY_INT8",
    "BARELY_SMALLER",
    "SCHEMA_VERSION",
    "BlockwiseSummary",
    "CalibrationSummary",
    "CandidateSummary",
    "CompareReport",
    "FallbackSummary",
    "QuantReport",
    "SizeSummary",
    "SpeedSummary",
    "fidelity_dict",
    "per_layer_dict",
]

# 2: gate gained "unit" and, for the sqnr metric, "sqnr_db"/"min_sqnr_db" instead of
# "drop"/"max_drop"; reports gained "per_layer" and "fallback"; "kind" names the document.
SCHEMA_VERSION = 2


def _finite(value: float) -> float | str:
    """JSON has no infinities; an exact match reports SQNR as the string "inf"."""
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


@dataclass(frozen=True)
class SizeSummary:
    input_bytes: int
    output_bytes: int

    @property
    def ratio(self) -> float:
        """Float bytes per quantized byte: 4.0 means four times smaller."""
        return self.input_bytes / self.output_bytes if self.output_bytes else 0.0


@dataclass(frozen=True)
class CalibrationSummary:
    method: str
    samples: int
    source: str


@dataclass(frozen=True)
class CandidateSummary:
    """One mode --mode auto built and measured, and why it won or lost."""

    mode: str
    output_bytes: int
    size_ratio: float
    int8_weight_fraction: float
    gate: GateResult | None
    latency: Latency | None
    chosen: bool
    reason: str
    predicted: Prediction | None = None  # the cost model's (auto's default way to compare speed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "output_bytes": self.output_bytes,
            "size_ratio": self.size_ratio,
            "int8_weight_fraction": self.int8_weight_fraction,
            "gate": _gate_dict(self.gate),
            "latency_ms": None if self.latency is None else asdict(self.latency),
            "predicted": None if self.predicted is None else self.predicted.to_dict(),
            "chosen": self.chosen,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class BlockwiseSummary:
    """The 4-bit weights written (``--weight-bits 4``): their layout, how they were rounded, the
    kernel's compute precision, and what the 4 bits cost each layer."""

    bits: int
    block_size: int
    symmetric: bool
    method: str
    form: str
    accuracy_level: int
    layers: tuple[BlockLayer, ...]
    # Every MatMul, Gemm and Gather node: its weight's bits (4, 8, None: float) and the plan's
    # reason, which names a recipe override or --auto-fallback when one set 8 bits.
    widths: tuple[tuple[str, str, int | None, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": [
                {"node": node, "op_type": op, "bits": bits, "reason": reason}
                for node, op, bits, reason in self.widths
            ],
            "bits": self.bits,
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "method": self.method,
            "form": self.form,
            "accuracy_level": self.accuracy_level,
            "layers": [layer.to_dict() for layer in self.layers],
        }


@dataclass(frozen=True)
class SpeedSummary:
    """The cost model's prediction for the float model and the one written (1 thread)."""

    float_model: Prediction
    quantized: Prediction

    @property
    def ratio(self) -> float:
        """Predicted quantized time over float time: below 1 is faster."""
        return self.quantized.ms / self.float_model.ms if self.float_model.ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "predicted",
            "float": self.float_model.to_dict(),
            "quantized": self.quantized.to_dict(),
            "ratio": round(self.ratio, 4),
        }


@dataclass(frozen=True)
class FallbackSummary:
    """What --auto-fallback tried and kept: every step with its cost."""

    passed: bool
    summary: str
    steps: tuple[dict[str, Any], ...]
    float_nodes: tuple[str, ...]
    # 4-bit nodes returned to 8 bits (None: no trial widened any; the key is left out).
    eight_bit_nodes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, result: FallbackResult[Any], input_bytes: int) -> FallbackSummary:
        widening = any(s.widened for s in result.steps)
        steps = tuple(
            {
                "trial": s.trial,
                "groups_in_float": s.groups,
                "nodes_in_float": list(s.excluded),
                "gate": _gate_dict(s.gate),
                "int8_weight_fraction": s.int8_weight_fraction,
                "output_bytes": s.output_bytes,
                "size_ratio": input_bytes / s.output_bytes if s.output_bytes else 0.0,
                "chosen": s.chosen,
                "note": s.note,
                # 4-bit fallback only: an int8 report keeps its keys.
                **({"nodes_at_8_bits": list(s.widened)} if widening else {}),
            }
            for s in result.steps
        )
        chosen = next(s for s in result.steps if s.chosen)
        return cls(
            result.passed, result.summary, steps, chosen.excluded, chosen.widened if widening else None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary,
            "nodes_in_float": list(self.float_nodes),
            "steps": list(self.steps),
            **({"nodes_at_8_bits": list(self.eight_bit_nodes)} if self.eight_bit_nodes is not None else {}),
        }


def per_layer_dict(diagnosis: LayerDiagnosis | None) -> dict[str, Any] | None:
    """Every diagnosed tensor, worst first (``rank`` 1), with the exclude list of the top k."""
    if diagnosis is None:
        return None
    return {
        "samples": diagnosis.samples,
        "top_k": diagnosis.top_k,
        "tensors": [
            {
                "rank": rank,
                "name": t.name,
                "kind": t.kind,
                "op_type": t.op_type,
                "nodes": list(t.nodes),
                "order": t.order,
                "range": [t.range_min, t.range_max],
                "sqnr_db": _finite(t.sqnr_db),
                "local_sqnr_db": _finite(t.local_sqnr_db),
                "alone_sqnr_db": None if t.alone_sqnr_db is None else _finite(t.alone_sqnr_db),
                # 4-bit block-wise weights only: an int8 report keeps its keys.
                **({"bits": t.bits} if t.bits is not None else {}),
            }
            for rank, t in enumerate(diagnosis.tensors, start=1)
        ],
        "exclude_list": diagnosis.exclude_file(),
    }


def fidelity_dict(fidelity: Fidelity | None) -> dict[str, Any] | None:
    if fidelity is None:
        return None
    outputs = []
    for out in fidelity.outputs:
        entry = asdict(out)
        entry["sqnr_db"] = _finite(out.sqnr_db)
        if out.channel_sqnr_db is not None:
            entry["channel_sqnr_db"] = _finite(out.channel_sqnr_db)
        outputs.append(entry)
    result: dict[str, Any] = {"samples": fidelity.samples, "source": fidelity.source, "outputs": outputs}
    if fidelity.accuracy is not None:
        accuracy = fidelity.accuracy
        result["accuracy"] = {
            "output": accuracy.output,
            "float_top1": accuracy.float_top1,
            "quantized_top1": accuracy.quantized_top1,
            "drop_points": accuracy.drop_points,
        }
    return result


def _gate_dict(result: GateResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    measured = (
        {"sqnr_db": result.value, "min_sqnr_db": result.bound}
        if result.higher_is_better
        else {
            "drop": result.value,
            "max_drop": result.bound,
        }
    )
    return {
        "metric": result.metric.value,
        **{k: _finite(v) for k, v in measured.items()},
        "unit": result.unit,
        "passed": result.passed,
        "missed_by": result.missed_by,
    }


# A conversion below both of these barely changed the model, and the report says so.
BARELY_SMALLER = 1.2  # size ratio
BARELY_INT8 = 0.1  # share of weights in int8


@dataclass(frozen=True)
class QuantReport:
    """The result of one conversion."""

    model: str
    output: str
    size: SizeSummary
    config: QuantConfig
    calibration: CalibrationSummary
    plan: QuantPlan
    int8_weight_fraction: float
    fidelity: Fidelity | None
    fidelity_note: str = ""
    gate: GateResult | None = None  # set when the user asked for an accuracy bound
    opset_upgraded_from: int | None = None  # the input's opset when it had to be upgraded
    candidates: tuple[CandidateSummary, ...] = ()  # what --mode auto tried
    mode_reason: str = ""  # why the model is in the mode it is (asked for, measured, recorded, rule)
    per_layer: LayerDiagnosis | None = None  # --per-layer, or what --auto-fallback ranked by
    fallback: FallbackSummary | None = None  # --auto-fallback
    speed: SpeedSummary | None = None  # auto mode's predicted speed of the model written
    warnings: tuple[str, ...] = ()  # one line each, also logged (the report adds barely_changed's)
    blockwise: BlockwiseSummary | None = None  # --weight-bits 4
    engine: EngineSummary | None = None  # what checked, evaluated and timed the model

    @property
    def calibration_line(self) -> str:
        """How the written model's activation ranges were found: none when its mode uses none
        (auto may have calibrated for candidates that lost)."""
        cal = self.calibration
        if not self.plan.observed:
            used = f"none ({self.plan.mode} mode uses no activation ranges"
            return used + (
                f"; {cal.samples} samples calibrated the other candidates)" if cal.samples else ")"
            )
        return f"{cal.method}, {cal.samples} samples from {cal.source}"

    @property
    def barely_changed(self) -> tuple[str, ...]:
        """What a user should know before relying on the model: it barely changed (forgetting
        --data on a CNN writes a dynamic model with 1% of its weights in int8, exit 0)."""
        if self.plan.is_noop or self.size.ratio >= BARELY_SMALLER or self.int8_weight_fraction >= BARELY_INT8:
            return ()
        mode = self.plan.mode
        remedy = (
            "give --data so that static mode can quantize Conv and activations"
            if self.calibration.samples == 0 and not mode.needs_calibration
            else "try --mode weight-only (every weight in int8), or fewer --exclude patterns"
        )
        return (
            f"the model barely changed ({self.size.ratio:.2f}x smaller, "
            f"{100 * self.int8_weight_fraction:.1f}% of weights in int8, {mode} mode): {remedy}",
        )

    @property
    def float_nodes(self) -> tuple[NodeDecision, ...]:
        return tuple(d for d in self.plan.decisions if d.role is NodeRole.FLOAT)

    def to_dict(self) -> dict[str, Any]:
        roles = Counter(d.role.value for d in self.plan.decisions)
        document = {
            "schema_version": SCHEMA_VERSION,
            "kind": "convert",
            "model": self.model,
            "output": self.output,
            "size": {
                "input_bytes": self.size.input_bytes,
                "output_bytes": self.size.output_bytes,
                "ratio": self.size.ratio,
            },
            "mode": self.plan.mode.value,
            "mode_reason": self.mode_reason,
            "opset_upgraded_from": self.opset_upgraded_from,
            # Every setting that changed the result: `convert --from-report` reruns from it.
            "config": config_settings(self.config),
            "calibration": asdict(self.calibration) | {"summary": self.calibration_line},
            "nodes": {
                "total": len(self.plan.decisions),
                "by_role": dict(sorted(roles.items())),
                "quantized_by_op": self.plan.quantized_op_counts,
                "float": [
                    {"name": d.name, "op_type": d.op_type, "reason": d.reason} for d in self.float_nodes
                ],
                # Every node's fate in the mode written (integer, dynamic, weight-only, carry,
                # folded, float), so a diff of two reports shows what a flag changed.
                "roles": {d.name: d.role.value for d in self.plan.decisions},
            },
            "int8_weight_fraction": self.int8_weight_fraction,
            "fidelity": fidelity_dict(self.fidelity),
            "fidelity_note": self.fidelity_note,
            "gate": _gate_dict(self.gate),
            "candidates": [c.to_dict() for c in self.candidates],
            "per_layer": per_layer_dict(self.per_layer),
            "fallback": None if self.fallback is None else self.fallback.to_dict(),
            "speed": None if self.speed is None else self.speed.to_dict(),
            "engine": None if self.engine is None else self.engine.to_dict(),
            "warnings": [*self.warnings, *self.barely_changed],
        }
        if self.blockwise is not None:  # --weight-bits 4 only: an int8 report keeps its keys
            document["blockwise"] = self.blockwise.to_dict()
        return document


@dataclass(frozen=True)
class CompareReport:
    """``quantcli compare``: two models on the same samples, side by side."""

    float_model: str
    quantized_model: str
    size: SizeSummary
    fidelity: Fidelity
    latency: dict[str, Latency]  # "float" and "quantized"
    threads: int | None
    per_layer: LayerDiagnosis | None = None
    gate: GateResult | None = None  # set when a bound was given
    engine: EngineSummary | None = None  # what ran and timed both models

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "compare",
            "float_model": self.float_model,
            "quantized_model": self.quantized_model,
            "size": {
                "float_bytes": self.size.input_bytes,
                "quantized_bytes": self.size.output_bytes,
                "ratio": self.size.ratio,
            },
            "fidelity": fidelity_dict(self.fidelity),
            "latency_ms": {name: asdict(value) for name, value in sorted(self.latency.items())},
            "threads": self.threads,
            "engine": None if self.engine is None else self.engine.to_dict(),
            "per_layer": per_layer_dict(self.per_layer),
            "gate": _gate_dict(self.gate),
        }
