"""The branches of ``If`` nodes: which nodes a plan sees, and a branch lifted into a model of its own.

Exporters put whole networks inside an ``If`` (a voice-activity model chooses its 8 kHz or
16 kHz network on an input). The nodes of every If branch, at any depth, are planned and
rewritten like the main graph's: a branch runs once per run of the model, so its tensors have
one value per run, as main-graph tensors do, and can be observed (see
:mod:`quantcli.calibration.branches`). The body of a Loop or Scan runs once per iteration: its
tensors take a value per iteration that no run returns, so Loop and Scan bodies (and any If
inside them) stay float.

onnxruntime returns only main-graph values; :func:`lift_branch` makes one branch a model of its
own, whose inputs are the outer values the branch reads, so that its values can be exposed.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_ir as ir

__all__ = [
    "BRANCH_ATTRIBUTES",
    "LOOP_BODIES",
    "LOOP_BODY_REASON",
    "BranchKey",
    "branch_graphs",
    "branches",
    "initializer_owner",
    "lift_branch",
    "outer_values",
    "owner",
    "planned_nodes",
]

# Ops whose body runs once per iteration: not planned, for the reason below.
LOOP_BODIES = frozenset({"Loop", "Scan"})
LOOP_BODY_REASON = (
    "float, body included: its body runs once per iteration, and no run of the model returns "
    "a body's values per iteration to calibrate them on (If branches are planned)"
)

# The If attribute holding the graph run when the condition is true, then when it is false.
BRANCH_ATTRIBUTES = ("then_branch", "else_branch")

# (the If node's name, "then_branch" or "else_branch")
BranchKey = tuple[str, str]


def _is_if(node: ir.Node) -> bool:
    return node.op_type == "If" and node.domain in ("", "ai.onnx")


def branches(node: ir.Node) -> Iterator[tuple[str, ir.Graph]]:
    """(attribute name, graph) of each branch of an If node; nothing for any other node."""
    if not _is_if(node):
        return
    for name in BRANCH_ATTRIBUTES:
        attribute = node.attributes.get(name)
        if attribute is not None and attribute.type == ir.AttributeType.GRAPH:
            yield name, attribute.as_graph()


def planned_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """The nodes of ``graph`` in order, each If followed by the nodes of its branches (at any
    depth); the bodies of Loop and Scan are not entered."""
    for node in graph:
        yield node
        for _, branch in branches(node):
            yield from planned_nodes(branch)


def branch_graphs(graph: ir.Graph) -> Iterator[tuple[ir.Node, str, ir.Graph]]:
    """(If node, attribute, branch) for every If branch under ``graph``, outer ones first."""
    for node in graph:
        for name, branch in branches(node):
            yield node, name, branch
            yield from branch_graphs(branch)


def owner(value: ir.Value) -> ir.Graph | None:
    """The graph that defines ``value``: its producer's, or the graph it is an input or
    initializer of."""
    producer = value.producer()
    return producer.graph if producer is not None else value.graph


def initializer_owner(graph: ir.Graph, name: str) -> ir.Graph | None:
    """The graph (``graph`` or an If branch under it) with an initializer called ``name``."""
    if name in graph.initializers:
        return graph
    return next((branch for _, _, branch in branch_graphs(graph) if name in branch.initializers), None)


def _inner_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                yield attribute.as_graph()
            elif attribute.type == ir.AttributeType.GRAPHS:
                yield from attribute.as_graphs()


def outer_values(graph: ir.Graph) -> list[ir.Value]:
    """The values ``graph`` (or a graph nested in it) reads from the graphs around it, in the
    order first read."""
    inner = {id(g) for g in _inner_graphs(graph)}
    found: dict[int, ir.Value] = {}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for value in node.inputs:
            if value is None or id(value) in found:
                continue
            defined = owner(value)
            if defined is None or id(defined) not in inner:
                found[id(value)] = value
    return list(found.values())


def _value_info(value: ir.Value) -> onnx.ValueInfoProto:
    proto = onnx.ValueInfoProto()
    ir.serde.serialize_value_into(proto, value)
    return proto


def lift_branch(model: ir.Model, node: ir.Node, attribute: str) -> onnx.ModelProto:
    """Branch ``attribute`` of If ``node`` (of ``model``'s main graph) as a model of its own.

    Its inputs are the outer values the branch reads that are not constants, by their names and
    types; outer constants (initializers of an enclosing graph) become its initializers. Its
    outputs are the branch's, named as in the branch. The branch's own If nodes are kept, so
    their branches can be lifted from this model in turn.
    """
    branch = node.attributes[attribute].as_graph()
    graph = ir.serde.serialize_graph(branch)
    graph.name = f"{node.name}_{attribute}"
    for value in outer_values(branch):
        tensor = value.const_value if value.is_initializer() else None
        if tensor is not None:
            graph.initializer.append(ir.serde.serialize_tensor(tensor))
        else:
            graph.input.append(_value_info(value))
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
