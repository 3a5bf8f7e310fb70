"""What every quantcli pass shares: the main graph as its scope, and lookups by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar, Generic, TypeVar

import onnx_ir as ir

from quantcli.graph.names import NameAllocator

__all__ = ["MainGraphPass", "produced_by", "producers", "values_by_name"]

# Why plan-driven passes leave subgraphs alone: plan.select decides main-graph nodes only.
PLANNED_ONLY = (
    "skipped: the plan names main-graph nodes and tensors only (plan.select does not visit "
    "If/Loop/Scan bodies, whose nodes stay float)"
)


TargetT = TypeVar("TargetT")


class MainGraphPass(ir.passes.InPlacePass, Generic[TargetT]):
    """An in-place pass over the main graph: it finds its targets (nodes, tensors, planned specs)
    and rewrites each; it modified the model when some rewrite changed it.

    ``subgraphs`` says why it does not walk the bodies of If/Loop/Scan nodes (every quantcli pass
    states it, so that no pass skips them silently). Targets are produced lazily, one rewrite
    after the other, so a target may be looked at after the rewrites before it.
    """

    subgraphs: ClassVar[str] = PLANNED_ONLY

    def targets(self, graph: ir.Graph) -> Iterable[TargetT]:
        """What to rewrite, in order."""
        raise NotImplementedError

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: TargetT) -> bool:
        """Rewrite one target; whether the graph changed."""
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameAllocator(graph)
        changed = [self.rewrite(graph, names, target) for target in self.targets(graph)]
        return ir.passes.PassResult(model, modified=any(changed))


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """The graph's inputs and every node output, by name (names are unique: NameFixPass ran)."""
    values = {v.name: v for v in graph.inputs if v.name}
    values.update({out.name: out for node in graph for out in node.outputs if out.name})
    return values


def producers(graph: ir.Graph, outputs: Iterable[str]) -> Iterator[ir.Node]:
    """The node producing each named value (a plan finds nodes by their output's name). Values
    are looked up before the first rewrite; the node of each is taken when it is reached."""
    values = values_by_name(graph)
    for name in outputs:
        node = values[name].producer()
        assert node is not None, name
        yield node


# The ONNX domain, and com.microsoft, whose QuantizeLinear/DequantizeLinear (older onnxruntime's
# 16-bit ones, found in models quantized elsewhere) mean the same.
_DOMAINS = ("", "ai.onnx", "com.microsoft")


def produced_by(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node producing ``value`` when it is an ``op_type`` node (ONNX or com.microsoft)."""
    producer = None if value is None else value.producer()
    if producer is None or producer.op_type != op_type or producer.domain not in _DOMAINS:
        return None
    return producer
