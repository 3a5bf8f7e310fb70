"""The state the planning phases pass along: an immutable :class:`Placement`, and its inputs.

Each phase is a function ``(Context, Placement) -> Placement``. Inside one, a :class:`Draft`
(a private copy) collects its changes, so a phase costs time in proportion to the graph rather
than to the graph times its decisions; the placement it was given is never changed. Nodes are
keyed by ``id(node)``: a placement belongs to one graph, for one :func:`~quantcli.plan.select`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

import onnx_ir as ir

from quantcli.config import QuantConfig
from quantcli.plan.values import DynamicSpec, Fold, LstmSpec, NodeDecision, NodeRole, Overridden
from quantcli.target import OpKind, Target

if TYPE_CHECKING:
    from quantcli.modes import ModeStrategy, Placed

__all__ = ["Context", "Draft", "Placement", "Source"]


@dataclass(frozen=True)
class Source:
    """Where the parameters of a tensor that is int8 anyway come from: the calibrated range of
    ``range_of`` (itself, or the root of a data-movement chain), or the quantized Gather
    ``table`` whose parameters its rows share."""

    range_of: str
    table: str | None = None


@dataclass(frozen=True)
class Context:
    """What every phase reads and none changes: the graph, the settings, the target, the mode."""

    nodes: tuple[ir.Node, ...]
    config: QuantConfig
    target: Target
    strategy: ModeStrategy
    keep_float: Mapping[str, str]
    graph_outputs: frozenset[str]


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(mapping: dict[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(mapping)  # a read-only view: the draft is not used after freeze()


@dataclass(frozen=True)
class Placement:
    """Every decision so far, and what follows from them."""

    decisions: Mapping[int, NodeDecision] = field(default_factory=dict)
    integer: frozenset[int] = frozenset()  # nodes that run as integer kernels
    available: Mapping[str, Source] = field(default_factory=dict)  # tensors that are int8 anyway
    nonnegative: frozenset[str] = frozenset()
    folds: Mapping[int, Fold] = field(default_factory=dict)
    dynamic: Mapping[int, DynamicSpec] = field(default_factory=dict)
    lstm: Mapping[int, LstmSpec] = field(default_factory=dict)
    # Integer-input compute nodes whose output stays float (see phases.keep_outputs_float).
    float_output: frozenset[int] = frozenset()

    def role(self, node: ir.Node) -> NodeRole | None:
        decision = self.decisions.get(id(node))
        return None if decision is None else decision.role


class Draft:
    """A phase's working copy of a :class:`Placement`; :meth:`freeze` gives the new one."""

    def __init__(self, ctx: Context, placement: Placement) -> None:
        self.ctx = ctx
        self.decisions = dict(placement.decisions)
        self.integer = set(placement.integer)
        self.available = dict(placement.available)
        self.nonnegative = set(placement.nonnegative)
        self.folds = dict(placement.folds)
        self.dynamic = dict(placement.dynamic)
        self.lstm = dict(placement.lstm)
        self.float_output = set(placement.float_output)

    def freeze(self) -> Placement:
        """The new placement; the draft is done (its dicts become the placement's, read-only)."""
        return Placement(
            decisions=_frozen(self.decisions),
            integer=frozenset(self.integer),
            available=_frozen(self.available),
            nonnegative=frozenset(self.nonnegative),
            folds=_frozen(self.folds),
            dynamic=_frozen(self.dynamic),
            lstm=_frozen(self.lstm),
            float_output=frozenset(self.float_output),
        )

    def decide(self, node: ir.Node, role: NodeRole, reason: str, cause: ir.Node | None = None) -> None:
        """Record ``node``'s decision; one it replaces is kept in ``overrides``."""
        earlier = self.decisions.get(id(node))
        overrides = () if earlier is None else (*earlier.overrides, _overridden(earlier))
        name = node.name or ""
        by = name if cause is None else cause.name or ""
        self.decisions[id(node)] = NodeDecision(name, node.op_type, role, reason, by, overrides)

    def place(self, node: ir.Node, placed: Placed) -> None:
        """Carry out a mode's placement of ``node``."""
        if placed.role is NodeRole.INTEGER:
            self.make_integer(node, placed.reason)
            return
        self.decide(node, placed.role, placed.reason)
        if isinstance(placed.spec, DynamicSpec):
            self.dynamic[id(node)] = placed.spec
        elif isinstance(placed.spec, LstmSpec):
            self.lstm[id(node)] = placed.spec

    def make_integer(self, node: ir.Node, reason: str, cause: ir.Node | None = None) -> None:
        self.integer.add(id(node))
        self.decide(node, NodeRole.INTEGER, reason, cause)
        rule = self.ctx.target.rule(node)
        assert rule is not None
        if rule.kind is OpKind.TABLE:
            table = node.inputs[0]
            assert table is not None
            self.available[node.outputs[0].name or ""] = Source(node.outputs[0].name or "", table.name)
        elif rule.output_required:
            for out in node.outputs:
                self.available[out.name or ""] = Source(out.name or "")

    def withdraw_output(self, node: ir.Node) -> None:
        """``node``'s output will not be quantized after all: it is no longer int8, and a
        Relu/Clip folded into its quantizer must run again as a node."""
        for out in node.outputs:
            self.available.pop(out.name or "", None)
            for use in out.uses():
                if id(use.node) in self.folds:
                    del self.folds[id(use.node)]
                    self.nonnegative.difference_update(o.name or "" for o in use.node.outputs)
                    for folded_out in use.node.outputs:
                        self.available.pop(folded_out.name or "", None)
                    self.decide(use.node, NodeRole.FLOAT, "float: its input is not quantized", node)


def _overridden(decision: NodeDecision) -> Overridden:
    return Overridden(decision.role, decision.reason, decision.cause)
