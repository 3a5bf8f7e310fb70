"""What every quantcli pass shares: the main graph as its scope, and lookups by name."""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir

__all__ = ["MainGraphPass", "produced_by", "values_by_name"]

# Why plan-driven passes leave subgraphs alone: plan.select decides main-graph nodes only.
PLANNED_ONLY = (
    "skipped: the plan names main-graph nodes and tensors only (plan.select does not visit "
    "If/Loop/Scan bodies, whose nodes stay float)"
)


class MainGraphPass(ir.passes.InPlacePass):
    """An in-place pass over the main graph; ``subgraphs`` says why it does not walk the bodies of
    If/Loop/Scan nodes (every quantcli pass states it, so that no pass skips them silently)."""

    subgraphs: ClassVar[str] = PLANNED_ONLY


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """The graph's inputs and every node output, by name (names are unique: NameFixPass ran)."""
    values = {v.name: v for v in graph.inputs if v.name}
    values.update({out.name: out for node in graph for out in node.outputs if out.name})
    return values


# The ONNX domain, and com.microsoft, whose QuantizeLinear/DequantizeLinear (older onnxruntime's
# 16-bit ones, found in models quantized elsewhere) mean the same.
_DOMAINS = ("", "ai.onnx", "com.microsoft")


def produced_by(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node producing ``value`` when it is an ``op_type`` node (ONNX or com.microsoft)."""
    producer = None if value is None else value.producer()
    if producer is None or producer.op_type != op_type or producer.domain not in _DOMAINS:
        return None
    return producer
