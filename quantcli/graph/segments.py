"""A model cut into runs of consecutive nodes, each holding a bounded share of the weights.

onnxruntime holds every weight of a session in memory (and MatMul pre-packs a second copy), so
running a model whose weights pass the free memory fails or swaps. Cut into segments, it runs one
segment at a time: a segment's session loads only its own weights, takes the tensors earlier
segments made (its inputs) and returns those later segments read (its outputs), and is closed
before the next one opens. The weights stay references to the model's external data files:
no segment copies them through Python.

A cut only moves where tensors cross between sessions; onnxruntime computes each node the same
way (no fusion is made across a cut, so a model with fusable pairs split between two segments may
round differently in the last bit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnx_ir as ir

from quantcli.graph.io import open_session

__all__ = ["SEGMENT_BUDGET", "Segment", "SegmentedSession", "cut", "run_segment"]

# Weights (and other per-node memory the caller names) one segment may hold.
SEGMENT_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Segment:
    """Consecutive nodes of a model as a model of their own: the tensors it reads from earlier
    segments or the graph's inputs, those it gives to later ones (or that were asked for), and
    the names of its nodes."""

    model: onnx.ModelProto
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[str, ...]


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    bits = ir.DataType(tensor.data_type).bitwidth if tensor.data_type != onnx.TensorProto.STRING else 8
    return int(math.prod(tensor.dims)) * int(bits) // 8


def _subgraph_names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every name a subgraph's nodes read: outer-scope values among them."""
    for node in graph.node:
        yield from node.input
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _subgraph_names(sub)


def _reads(node: onnx.NodeProto) -> list[str]:
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            names.extend(_subgraph_names(sub))
    return names


def _groups(proto: onnx.ModelProto, budget: int, node_costs: Mapping[str, int]) -> list[list[onnx.NodeProto]]:
    """Nodes in graph order, cut where the next node's new weights (and cost) would pass
    ``budget``; a node that passes it alone gets a segment of its own."""
    sizes = {t.name: _tensor_bytes(t) for t in proto.graph.initializer}
    groups: list[list[onnx.NodeProto]] = [[]]
    held: set[str] = set()
    used = 0
    for node in proto.graph.node:
        fresh = {n for n in _reads(node) if n in sizes and n not in held}
        cost = sum(sizes[n] for n in fresh) + node_costs.get(node.name, 0)
        if groups[-1] and used + cost > budget:
            groups.append([])
            held, used = set(), 0
        groups[-1].append(node)
        held |= fresh
        used += cost
    return groups


def _value_types(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The type of every tensor of the main graph, by shape inference (no weight is read)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # inference is best effort here; an unknown type is refused below
        inferred = proto
    graph = inferred.graph
    return {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}


def cut(
    proto: onnx.ModelProto,
    budget: int | None = None,
    *,
    node_costs: Mapping[str, int] | None = None,
    keep: Iterable[str] = (),
) -> list[Segment] | None:
    """``proto`` as segments of at most ``budget`` bytes of weights each (plus ``node_costs``,
    bytes a caller will hold for a node while its segment runs); each segment also returns the
    tensors of ``keep`` it makes. None when a tensor crossing a cut has no known type (the model
    then runs whole). ``budget`` None: :data:`SEGMENT_BUDGET`."""
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    groups = _groups(proto, SEGMENT_BUDGET if budget is None else budget, node_costs or {})
    made = [{o for node in group for o in node.output if o} for group in groups]
    read = [{n for node in group for n in _reads(node)} for group in groups]
    known = set(initializers) | {v.name for v in graph.input} | set().union(*made)
    wanted = set(keep) | {o.name for o in graph.output}
    types = _value_types(proto)
    segments = []
    for index, group in enumerate(groups):
        later = set().union(*read[index + 1 :])
        inputs = sorted((read[index] & known) - made[index] - set(initializers))
        outputs = sorted(made[index] & (later | wanted))
        if any(name not in types for name in (*inputs, *outputs)):
            return None
        used = sorted(read[index] & set(initializers))
        sub = onnx.helper.make_graph(
            [_copy(node) for node in group],
            f"{graph.name}_segment{index}",
            [types[n] for n in inputs],
            [types[n] for n in outputs],
            [initializers[n] for n in used],
        )
        model = onnx.helper.make_model(
            sub, opset_imports=list(proto.opset_import), ir_version=proto.ir_version
        )
        names = tuple(node.name for node in group)
        segments.append(Segment(model, tuple(inputs), tuple(outputs), names))
    return segments


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


States = Sequence[dict[str, np.ndarray]]


def run_segment(
    segment: Segment, states: States, *, data_folder: Path | None, threads: int | None = None
) -> None:
    """Run ``segment`` once on every state (tensor name -> array, one per batch), adding its
    outputs to each; its session (and its weights) is gone when this returns."""
    session = open_session(segment.model, threads, data_folder=data_folder)
    names = list(segment.outputs)
    for state in states:
        outputs = session.run(names, {n: state[n] for n in segment.inputs})
        state.update(zip(names, outputs, strict=True))
    del session


def prune(segments: Sequence[Segment], index: int, states: States, keep: Iterable[str]) -> None:
    """Drop from every state the tensors no segment after ``index`` reads (except ``keep``)."""
    needed = {n for s in segments[index + 1 :] for n in s.inputs} | set(keep)
    for state in states:
        for name in [n for n in state if n not in needed]:
            del state[name]


class _Output(NamedTuple):
    name: str


class SegmentedSession:
    """A float model run segment by segment, shaped like the part of ``InferenceSession`` that
    measuring fidelity uses (``get_outputs``, ``run``): every :meth:`run` opens each segment's
    session in turn, so at most one segment's weights are in memory. Each run reads all the
    weights again (from the page cache, usually): slower than a session, in bounded memory."""

    def __init__(
        self, proto: onnx.ModelProto, data_folder: Path | None, budget: int = SEGMENT_BUDGET
    ) -> None:
        segments = cut(proto, budget)
        if segments is None:  # no types to cut by: one segment, the whole model
            whole = tuple(o.name for o in proto.graph.output)
            inputs = tuple(v.name for v in proto.graph.input)
            segments = [Segment(proto, inputs, whole, tuple(n.name for n in proto.graph.node))]
        self.segments = segments
        self.data_folder = data_folder
        self._outputs = [_Output(o.name) for o in proto.graph.output]
        initializers = {t.name for t in proto.graph.initializer}
        self._inputs = [_Output(v.name) for v in proto.graph.input if v.name not in initializers]

    def get_inputs(self) -> list[_Output]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Output]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        wanted = list(names) if names else [o.name for o in self._outputs]
        state = [dict(feed)]
        for index, segment in enumerate(self.segments):
            run_segment(segment, state, data_folder=self.data_folder)
            prune(self.segments, index, state, wanted)
        return [state[0][n] for n in wanted]
