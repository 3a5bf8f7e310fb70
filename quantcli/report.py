"""What a conversion did, as data: sizes, decisions, calibration, fidelity.

No rendering here: the CLI turns a :class:`QuantReport` into Rich tables or JSON. ``to_dict`` is
the JSON schema (``schema_version`` changes whenever a field changes meaning or goes away).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from quantcli.config import QuantConfig
from quantcli.evaluate import Fidelity, GateResult, Latency
from quantcli.plan import NodeDecision, NodeRole, QuantPlan

__all__ = ["SCHEMA_VERSION", "CalibrationSummary", "CandidateSummary", "QuantReport", "SizeSummary"]

SCHEMA_VERSION = 1


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "output_bytes": self.output_bytes,
            "size_ratio": self.size_ratio,
            "int8_weight_fraction": self.int8_weight_fraction,
            "gate": _gate_dict(self.gate),
            "latency_ms": None if self.latency is None else asdict(self.latency),
            "chosen": self.chosen,
            "reason": self.reason,
        }


def _gate_dict(result: GateResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "metric": result.metric.value,
        "drop": result.drop,
        "max_drop": result.max_drop,
        "passed": result.passed,
        "missed_by": result.missed_by,
    }


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
    candidates: tuple[CandidateSummary, ...] = ()  # what --mode auto tried

    @property
    def float_nodes(self) -> tuple[NodeDecision, ...]:
        return tuple(d for d in self.plan.decisions if d.role is NodeRole.FLOAT)

    def to_dict(self) -> dict[str, Any]:
        roles = Counter(d.role.value for d in self.plan.decisions)
        fidelity: dict[str, Any] | None = None
        if self.fidelity is not None:
            outputs = []
            for out in self.fidelity.outputs:
                entry = asdict(out)
                entry["sqnr_db"] = _finite(out.sqnr_db)
                outputs.append(entry)
            fidelity = {"samples": self.fidelity.samples, "source": self.fidelity.source, "outputs": outputs}
            if self.fidelity.accuracy is not None:
                accuracy = self.fidelity.accuracy
                fidelity["accuracy"] = {
                    "output": accuracy.output,
                    "float_top1": accuracy.float_top1,
                    "quantized_top1": accuracy.quantized_top1,
                    "drop_points": accuracy.drop_points,
                }
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "output": self.output,
            "size": {
                "input_bytes": self.size.input_bytes,
                "output_bytes": self.size.output_bytes,
                "ratio": self.size.ratio,
            },
            "mode": self.plan.mode.value,
            "config": {
                "mode": self.config.mode.value,
                "activation_type": self.config.activation_type.value,
                "method": self.config.method.value,
                "per_channel": self.config.per_channel,
            },
            "calibration": asdict(self.calibration),
            "nodes": {
                "total": len(self.plan.decisions),
                "by_role": dict(sorted(roles.items())),
                "quantized_by_op": self.plan.quantized_op_counts,
                "float": [
                    {"name": d.name, "op_type": d.op_type, "reason": d.reason} for d in self.float_nodes
                ],
            },
            "int8_weight_fraction": self.int8_weight_fraction,
            "fidelity": fidelity,
            "fidelity_note": self.fidelity_note,
            "gate": _gate_dict(self.gate),
            "candidates": [c.to_dict() for c in self.candidates],
        }
