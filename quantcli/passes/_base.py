"""What every quantcli pass shares: the main graph and its If branches as its scope, and lookups
by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar, Generic, TypeVar

import onnx_ir as ir

from quantcli.graph.branches import initializer_owner, owner, planned_nodes
from quantcli.graph.names import NameAllocator

__all__ = ["MainGraphPass", "produced_by", "producers", "scope", "values_by_name"]

# How plan-driven passes treat subgraphs: plan.select decides the nodes of If branches too.
PLANNED_ONLY = (
    "If branches: each planned target is rewritten in the graph that holds it (its node's, or "
    "its initializer's), so new nodes and parameters sit beside it; Loop/Scan bodies are not "
    "planned and are left alone"
)


TargetT = TypeVar("TargetT")


class MainGraphPass(ir.passes.InPlacePass, Generic[TargetT]):
    """An in-place pass over the main graph: it finds its targets (nodes, tensors, planned specs)
    and rewrites each; it modified the model when some rewrite changed it.

    ``subgraphs`` says how it treats the bodies of If/Loop/Scan nodes (every quantcli pass
    states it, so that no pass skips them silently). Targets are found in the main graph and its
    If branches; each is rewritten in the graph that holds it (:func:`scope`), which ``rewrite``
    gets as ``graph``. Targets are produced lazily, one rewrite after the other, so a target may
    be looked at after the rewrites before it.
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
        changed = [self.rewrite(scope(graph, target), names, target) for target in self.targets(graph)]
        return ir.passes.PassResult(model, modified=any(changed))


def scope(graph: ir.Graph, target: object) -> ir.Graph:
    """The graph (``graph`` or an If branch under it) that holds ``target``: a node, a value, an
    initializer's name, or a tuple led by one of these; ``graph`` for anything else."""
    if isinstance(target, tuple) and target:
        return scope(graph, target[0])
    if isinstance(target, ir.Node):
        return target.graph or graph
    if isinstance(target, ir.Value):
        return owner(target) or graph
    if isinstance(target, str):
        return initializer_owner(graph, target) or graph
    return graph


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """The graph's inputs and every node output, its If branches' included, by name (names are
    unique: NameFixPass ran)."""
    values = {v.name: v for v in graph.inputs if v.name}
    values.update({out.name: out for node in planned_nodes(graph) for out in node.outputs if out.name})
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
