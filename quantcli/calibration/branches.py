"""Observing tensors inside If branches, which onnxruntime cannot return as outputs.

A graph output must be a main-graph value, so a tensor inside a branch cannot be exposed the way
:func:`~quantcli.graph.exchange.expose` exposes the others. A :class:`BranchTap` runs the model
with the If's condition and every outer value its branches read exposed, picks the branch that
condition takes, and runs that branch lifted into a model of its own
(:func:`~quantcli.graph.branches.lift_branch`) on exactly those values: the same computation on
the same inputs, so the branch's tensors are the ones the model computed. A lifted branch's own
If nodes are tapped the same way, at any depth.

A tap answers ``run(names, feed)`` like an onnxruntime session, except that a tensor of a branch
the feed did not take is None. It records every branch a run took (:attr:`BranchTap.taken`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnx_ir as ir

from quantcli.calibration.data import Batch, Dataset
from quantcli.graph.branches import (
    BranchKey,
    branch_graphs,
    branches,
    lift_branch,
    outer_values,
    planned_nodes,
)
from quantcli.graph.exchange import expose
from quantcli.graph.io import external_folder, open_session
from quantcli.target import ORT_CPU, OpKind, Target

__all__ = ["BranchTap", "Session", "branch_values", "open_tap", "taken_branches", "untaken_float"]


class Session(Protocol):
    """What observing needs of an onnxruntime session (a tap is one too)."""

    def run(self, names: list[str], feed: Batch) -> Sequence[np.ndarray | None]: ...


def _defined(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name}
    names.update(out.name for node in graph for out in node.outputs if out.name)
    return names


def branch_values(graph: ir.Graph) -> set[str]:
    """Names of the values defined inside If branches under ``graph`` (not in ``graph`` itself)."""
    return {
        out.name
        for node in planned_nodes(graph)
        if node.graph is not graph
        for out in node.outputs
        if out.name
    }


@dataclass
class _Fork:
    """One If of the tapped graph: its condition, and per branch the names wanted inside it."""

    node: ir.Node
    condition: str
    wanted: dict[str, list[str]]
    reads: dict[str, list[str]]
    taps: dict[str, BranchTap] = field(default_factory=dict)


class BranchTap:
    """Tensors of ``model`` by name, in its main graph or in any If branch (see the module)."""

    def __init__(
        self,
        model: ir.Model,
        names: Iterable[str],
        threads: int | None,
        data_folder: Path | None,
        target: Target = ORT_CPU,
    ):
        # target: whose engine runs the model (quantcli.engine); calibration's is onnxruntime's.
        self.model, self.threads, self.data_folder, self.target = model, threads, data_folder, target
        wanted = set(names)
        self.taken: set[BranchKey] = set()
        self.forks: list[_Fork] = []
        for node in model.graph:
            inside = {attribute: sorted(wanted & _subtree(branch)) for attribute, branch in branches(node)}
            condition = node.inputs[0].name if node.inputs and node.inputs[0] is not None else ""
            if node.op_type == "If" and condition:
                reads = {
                    attribute: [v.name or "" for v in outer_values(branch) if not v.is_initializer()]
                    for attribute, branch in branches(node)
                }
                self.forks.append(_Fork(node, condition, inside, reads))
        self.own = sorted(wanted & _defined(model.graph))
        inputs = {v.name for v in model.graph.inputs}
        exposed = [*self.own, *(f.condition for f in self.forks)]
        exposed += [name for f in self.forks for read in f.reads.values() for name in read]
        self.exposed = [name for name in dict.fromkeys(exposed) if name not in inputs]
        proto = ir.serde.serialize_model(model)
        proto = expose(proto, self.exposed, _types(model.graph, proto, self.exposed))
        self.session = open_session(proto, threads, data_folder=data_folder, target=target)

    def run(self, names: list[str], feed: Batch) -> list[np.ndarray | None]:
        found = self.values(feed)
        return [found.get(name) for name in names]

    def values(self, feed: Batch) -> dict[str, np.ndarray]:
        """Every wanted tensor the run on ``feed`` computed."""
        arrays = dict(zip(self.exposed, self.session.run(self.exposed, feed), strict=True))
        arrays.update(feed)
        found = {name: arrays[name] for name in self.own}
        for fork in self.forks:
            attribute = (
                "then_branch" if bool(np.asarray(arrays[fork.condition]).reshape(-1)[0]) else "else_branch"
            )
            self.taken.add((fork.node.name or "", attribute))
            if not fork.wanted.get(attribute):
                continue
            tap = self._tap(fork, attribute)
            found.update(tap.values({name: arrays[name] for name in fork.reads[attribute]}))
            self.taken |= tap.taken
        return found

    def _tap(self, fork: _Fork, attribute: str) -> BranchTap:
        if attribute not in fork.taps:
            lifted = ir.serde.deserialize_model(lift_branch(self.model, fork.node, attribute))
            fork.taps[attribute] = BranchTap(
                lifted, fork.wanted.get(attribute, []), self.threads, self.data_folder, self.target
            )
        return fork.taps[attribute]


def _subtree(branch: ir.Graph) -> set[str]:
    return {out.name for node in planned_nodes(branch) for out in node.outputs if out.name}


def _types(graph: ir.Graph, proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """The ONNX element type of each named value of ``graph``: as the model records it, else as
    onnx's shape inference finds it (a model read back from a file keeps no intermediate types),
    else float."""
    values = {v.name: v for v in graph.inputs}
    values.update({out.name: out for node in graph for out in node.outputs})
    types = {name: dtype.value for name in names if (dtype := values[name].dtype if name in values else None)}
    if len(types) < len(names):
        inferred = onnx.shape_inference.infer_shapes(proto)
        for info in (*inferred.graph.value_info, *inferred.graph.output):
            if info.name in names and info.name not in types and info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
    return {name: types.get(name, onnx.TensorProto.FLOAT) for name in names}


def open_tap(
    model: ir.Model,
    proto: onnx.ModelProto,
    names: Sequence[str],
    threads: int | None,
    data_folder: Path | None,
    *,
    target: Target = ORT_CPU,
) -> Session:
    """A session that returns ``names``: the engine's own over ``proto`` with them exposed when
    all are main-graph values, else a :class:`BranchTap`; on ``target``'s engine (per-layer
    diagnosis runs on it; calibration on onnxruntime's)."""
    if not branch_values(model.graph) & set(names):
        exposed = expose(proto, names)
        session: Session = open_session(exposed, threads, data_folder=data_folder, target=target)
        return session
    return BranchTap(model, names, threads, data_folder, target)


def taken_branches(
    model: ir.Model, dataset: Dataset, batch_size: int, data_folder: Path | None
) -> set[BranchKey]:
    """The If branches (at any depth) that some sample of ``dataset`` runs."""
    if not any(True for _ in _if_nodes(model.graph)):
        return set()
    # Wanting every If's condition makes the tap enter every branch a run takes.
    conditions = [
        n.inputs[0].name or "" for n in _if_nodes(model.graph) if n.inputs and n.inputs[0] is not None
    ]
    tap = BranchTap(model, [c for c in conditions if c], None, data_folder)
    for feed in dataset.batches(batch_size):
        tap.values(feed.arrays)
    return tap.taken


def untaken_float(
    model: ir.Model, target: Target, dataset: Dataset | None, batch_size: int
) -> dict[str, str]:
    """The nodes of If branches no sample of ``dataset`` takes that need statistics to quantize,
    each with the sentence a plan gives it: they stay float. A node with a stored weight and no
    quantized activation (an LSTM, run as DynamicQuantizeLSTM) needs none and is planned as
    usual. Without data (a mode that calibrates nothing) nothing is kept float."""
    if dataset is None or not any(True for _ in _if_nodes(model.graph)):
        return {}
    taken = taken_branches(model, dataset, batch_size, external_folder(model))
    kept: dict[str, str] = {}
    for node, attribute, branch in branch_graphs(model.graph):
        key = (node.name or "", attribute)
        if key in taken:
            continue
        reason = (
            f"float: in {attribute} of If '{node.name}', which no calibration sample takes, so "
            "its tensors have no statistics"
        )
        for inner in planned_nodes(branch):
            rule = target.rule(inner)
            if rule is not None and rule.kind is not OpKind.WEIGHT_ONLY and inner.name:
                kept.setdefault(inner.name, reason)
    return kept


def _if_nodes(graph: ir.Graph) -> Iterable[ir.Node]:
    return (node for node in planned_nodes(graph) if node.op_type == "If")
