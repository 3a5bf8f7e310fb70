"""Per-layer diagnosis: which quantized tensors lose the most, measured on the target's engine.

Every DequantizeLinear of a QDQ model yields the "quantized twin" of a float tensor of the
original model: a weight (the DQ output keeps the weight's name) or an activation (the DQ reads a
QuantizeLinear whose input keeps the float tensor's name). Both models run on the same samples
with those tensors exposed as extra outputs, and per tensor we accumulate

* ``sqnr_db``: the twin against the float model's tensor: all error up to that point;
* ``local_sqnr_db``: the DQ output against the quantizer's own input in the quantized model: the
  rounding and clipping of this one quantizer (a range stretched by outliers shows here);
* ``alone_sqnr_db`` (for the ``top_k`` tensors with the worst local SQNR): the worst output SQNR
  of the float model with only this tensor quantized, with the quantized model's parameters.
  That is the tensor's effect on the result, and what the ranking puts first.

This works on any QDQ model, not only quantcli's. 4-bit block-wise weights (com.microsoft
``MatMulNBits`` and ``GatherBlockQuantized`` nodes that keep the float node's name, as quantcli
writes them) are read back from their packed codes and listed as weights with ``bits`` 4, their
effect measured alone like an int8 weight's. Tensors quantized other ways (dynamic MatMul
inputs, rows gathered from an int8 table) have no DQ twin and are not listed. Extra outputs keep
onnxruntime from fusing some Q/DQ pairs, so a tensor's numbers come from the unfused graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir

from quantcli import engine
from quantcli.blockwise.layout import BlockQuantized
from quantcli.blockwise.targets import block_targets
from quantcli.calibration.branches import Session, open_tap
from quantcli.calibration.data import Batch, Dataset
from quantcli.engine import Session as EngineSession
from quantcli.evaluate import compare_models, sqnr_db
from quantcli.graph.branches import branch_graphs, initializer_owner, planned_nodes
from quantcli.graph.exchange import ir_copy, ir_view
from quantcli.graph.io import open_session, serialize
from quantcli.passes import InsertActivationQDQPass, ReplaceInitializerValuesPass
from quantcli.passes._base import produced_by, values_by_name
from quantcli.passes._qdq import dequantize_qparams
from quantcli.scheme import QParams, dequantize
from quantcli.target import ORT_CPU, Target

__all__ = ["LayerDiagnosis", "TensorError", "diagnose"]

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# com.microsoft nodes holding a 4-bit block-wise weight, and the input that holds it.
_BLOCK_OPS = {"MatMulNBits": 1, "GatherBlockQuantized": 0}
_MICROSOFT = "com.microsoft"
# One sample per run: every quantized tensor of both models is exposed at once, so a batch of
# 4 PP-OCRv4 det images (640x640) held about 12 GB.
_BATCH_SIZE = 1


@dataclass(frozen=True)
class TensorError:
    """How much one quantized tensor differs from its float twin.

    ``nodes`` are the nodes of the float model to return to float to undo this tensor's
    quantization (its quantized consumers, and its producer for an activation); ``op_type`` is
    the first one's. ``order`` is the tensor's position in the graph, for charts.
    """

    name: str
    kind: str  # "activation" or "weight"
    op_type: str
    nodes: tuple[str, ...]
    order: int
    range_min: float
    range_max: float
    sqnr_db: float
    local_sqnr_db: float
    alone_sqnr_db: float | None = None
    bits: int | None = None  # 4: a block-wise weight; None: int8 (Q/DQ)

    @property
    def rank_key(self) -> tuple[int, float, float]:
        """Measured effect on the output first (worst first), then this quantizer's own error."""
        alone = self.alone_sqnr_db
        return (0 if alone is not None else 1, alone if alone is not None else 0.0, self.local_sqnr_db)


@dataclass(frozen=True)
class LayerDiagnosis:
    """Every quantized tensor of a model, worst first."""

    samples: int
    tensors: tuple[TensorError, ...]
    top_k: int

    def worst(self, k: int | None = None) -> tuple[TensorError, ...]:
        return self.tensors[: self.top_k if k is None else k]

    def node_groups(self) -> list[tuple[str, ...]]:
        """Per tensor, worst first, the float-model nodes to exclude to undo it (no repeats)."""
        seen: set[str] = set()
        groups = []
        for tensor in self.tensors:
            fresh = tuple(n for n in tensor.nodes if n not in seen)
            seen.update(fresh)
            if fresh:
                groups.append(fresh)
        return groups

    def block_groups(self) -> list[tuple[str, ...]]:
        """Per 4-bit weight, worst first, its node (what fallback widens to 8 bits first)."""
        groups: dict[tuple[str, ...], None] = {}
        for tensor in self.tensors:
            if tensor.bits == 4 and tensor.nodes:
                groups.setdefault(tensor.nodes, None)
        return list(groups)

    def exclude_file(self, k: int | None = None) -> str:
        """An ``--exclude @FILE`` list of the nodes behind the worst ``k`` tensors."""
        lines = ["# quantcli exclude list: nodes behind the worst quantized tensors, worst first"]
        seen: set[str] = set()
        for tensor in self.worst(k):
            fresh = [n for n in tensor.nodes if n not in seen]
            seen.update(fresh)
            alone = "" if tensor.alone_sqnr_db is None else f", alone {tensor.alone_sqnr_db:.1f} dB at output"
            lines.append(f"# {tensor.kind} {tensor.name}: SQNR {tensor.sqnr_db:.1f} dB{alone}")
            lines.extend(fresh)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, eq=False)
class _Twin:
    """One DequantizeLinear output and the float tensor it stands for."""

    float_name: str
    dq_output: str
    pre: str | None  # the quantizer's float input in the quantized model (activations)
    kind: str
    nodes: tuple[str, ...]
    order: int
    qparams: QParams | None  # what the DequantizeLinear applies (None: a 4-bit block-wise weight)
    # The quantizer saturates at 0 (zero point at the type's minimum): a folded Relu, whose
    # clipping of negative values is intended and not quantization error.
    floor_at_zero: bool = False
    # A 4-bit weight stored as ``[N, K]`` rows in the float model too (Gemm transB, a table).
    rows: bool = False

    @property
    def blocked(self) -> bool:
        return self.qparams is None


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    local_signal: float = 0.0
    local_noise: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(
        self, ref: npt.NDArray[np.float64], got: npt.NDArray[np.float64], pre: npt.NDArray[np.float64]
    ) -> None:
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum((ref - got) ** 2))
        self.local_signal += float(np.sum(pre * pre))
        self.local_noise += float(np.sum((pre - got) ** 2))
        if ref.size:
            self.low = min(self.low, float(ref.min()))
            self.high = max(self.high, float(ref.max()))


def _saturates_at_zero(node: ir.Node, qparams: QParams) -> bool:
    """The quantizer's explicit zero point is one value, the type's lowest code."""
    if len(node.inputs) < 3 or node.inputs[2] is None or qparams.zero_point.size != 1:
        return False
    return int(qparams.zero_point.reshape(())) == qparams.dtype.qmin


@dataclass(frozen=True)
class _FloatModel:
    """What pairing a DequantizeLinear with the float model needs to know of the float model."""

    values: frozenset[str]  # graph inputs and node outputs
    weights: frozenset[str]
    nodes: frozenset[str]
    # Nodes that can hold a 4-bit weight: node name -> (weight name, stored as [N, K] rows).
    block_weights: Mapping[str, tuple[str, bool]]

    @classmethod
    def of(cls, model: ir.Model) -> _FloatModel:
        graph = model.graph
        blocked = {t.node: (t.weight, t.transposed) for t in block_targets(graph)}
        for node in graph:
            table = node.inputs[0] if node.op_type == "Gather" and node.inputs else None
            if table is not None and table.is_initializer() and table.name:
                blocked[node.name or ""] = (table.name, True)
        graphs = (graph, *(branch for _, _, branch in branch_graphs(graph)))
        return cls(
            frozenset(values_by_name(graph)),
            frozenset(name for g in graphs for name in g.initializers),
            frozenset(n.name or "" for n in planned_nodes(graph)),
            blocked,
        )

    def node(self, node: ir.Node | None) -> str | None:
        """``node``'s name when the float model has it and it is not a quantizer."""
        if node is None or node.op_type in _QDQ_OPS or (node.name or "") not in self.nodes:
            return None
        return node.name or ""


def _consumers(graph: ir.Graph) -> dict[str, list[ir.Node]]:
    """Readers of each value, in graph order (a node reading a value twice is listed twice)."""
    consumers: dict[str, list[ir.Node]] = {}
    for node in planned_nodes(graph):
        for value in node.inputs:
            if value is not None and value.name:
                consumers.setdefault(value.name, []).append(node)
    return consumers


def _twin(node: ir.Node, order: int, readers: list[ir.Node], float_model: _FloatModel) -> _Twin | None:
    """The twin one DequantizeLinear of the quantized model yields, if the float model has one."""
    source, out = node.inputs[0], node.outputs[0]
    qparams = dequantize_qparams(node)
    if source is None or qparams is None or not out.name:
        return None
    users = [name for name in map(float_model.node, readers) if name is not None]
    if source.is_initializer():
        stored = source.const_value
        if out.name in float_model.weights and stored is not None and stored.dtype != ir.DataType.INT32:
            return _Twin(out.name, out.name, None, "weight", tuple(users), order, qparams)
        return None
    quantizer = produced_by(source, "QuantizeLinear")
    pre = None if quantizer is None else quantizer.inputs[0]
    if pre is None or not pre.name:
        return None  # e.g. rows gathered from an int8 table
    twin = (
        out.name if out.name in float_model.values else pre.name if pre.name in float_model.values else None
    )
    if twin is None:
        return None
    producer = float_model.node(pre.producer())
    if producer is not None:
        users.append(producer)
    nodes = tuple(dict.fromkeys(users))
    floor = _saturates_at_zero(node, qparams)
    return _Twin(twin, out.name, pre.name, "activation", nodes, order, qparams, floor_at_zero=floor)


def _block_twin(node: ir.Node, order: int, float_model: _FloatModel) -> _Twin | None:
    """The float weight a 4-bit block-wise node of quantcli's stands for (it keeps the name of
    the float node it replaced)."""
    found = float_model.block_weights.get(node.name or "")
    out = node.outputs[0].name
    if found is None or not out:
        return None
    weight, rows = found
    return _Twin(weight, out, None, "weight", (node.name or "",), order, None, rows=rows)


def _twins(float_model: ir.Model, quant_model: ir.Model) -> list[_Twin]:
    known = _FloatModel.of(float_model)
    consumers = _consumers(quant_model.graph)
    twins = []
    for order, node in enumerate(planned_nodes(quant_model.graph)):
        if node.domain == _MICROSOFT and node.op_type in _BLOCK_OPS:
            twin = _block_twin(node, order, known)
        elif node.op_type != "DequantizeLinear" or len(node.inputs) < 2:
            continue
        else:
            twin = _twin(node, order, consumers.get(node.outputs[0].name or "", []), known)
        if twin is not None:
            twins.append(twin)
    return twins


def _fetch(session: Session, names: list[str], feed: Batch) -> dict[str, npt.NDArray[np.generic] | None]:
    """Run ``session`` for ``names``; graph inputs come straight from the feed. Arrays stay as
    onnxruntime returns them (float32): every exposed tensor of a batch is held at once, so the
    caller widens one tensor at a time. A tensor of an If branch the feed did not take is None."""
    wanted = [n for n in names if n not in feed]
    arrays = session.run(wanted, feed) if wanted else []
    result = {n: None if a is None else np.asarray(a) for n, a in zip(wanted, arrays, strict=True)}
    result.update({n: np.asarray(feed[n]) for n in names if n in feed})
    return result


@dataclass(frozen=True)
class _Pair:
    """The float and the quantized model, as protobufs (to run) and onnx_ir models (to read)."""

    float_proto: onnx.ModelProto
    quant_proto: onnx.ModelProto
    float_model: ir.Model
    quant_model: ir.Model
    data_folder: Path | None
    quant_folder: Path | None
    runtime: Target  # whose engine runs both

    @classmethod
    def of(
        cls,
        float_proto: onnx.ModelProto,
        quant_proto: onnx.ModelProto,
        folders: tuple[Path | None, Path | None],
        runtime: Target,
    ) -> _Pair:
        # Read only: the trials that change the float model change copies of it.
        data_folder, quant_folder = folders
        float_model, quant_model = ir_view(float_proto, data_folder), ir_view(quant_proto, quant_folder)
        return cls(float_proto, quant_proto, float_model, quant_model, data_folder, quant_folder, runtime)


def _array(value: ir.Value | None) -> npt.NDArray[np.generic] | None:
    return None if value is None or value.const_value is None else np.asarray(value.const_value.numpy())


def _input_scale(node: ir.Node, k: int) -> npt.NDArray[np.float32] | None:
    """AWQ's input scale ``s`` when the node reads its activation through a Mul by a constant
    ``1/s`` of K values (how quantcli writes it), else None."""
    activation = node.inputs[0]
    mul = None if activation is None else produced_by(activation, "Mul")
    if mul is None:
        return None
    for value in mul.inputs:
        factor = _array(value)
        if factor is not None and factor.shape == (k,):
            return (1.0 / factor.astype(np.float64)).astype(np.float32)
    return None


def _block_weight(node: ir.Node, rows: bool) -> npt.NDArray[np.float32]:
    """A 4-bit weight as its MatMulNBits or GatherBlockQuantized node computes it, in the float
    model's layout (``[K, N]`` for a MatMul, rows otherwise)."""
    attributes = {name: int(a.value) for name, a in node.attributes.items() if name in ("K", "block_size")}
    size = attributes["block_size"]
    packed = _array(node.inputs[_BLOCK_OPS[node.op_type]])
    scales, zero_points = (_array(node.inputs[i]) if len(node.inputs) > i else None for i in (2, 3))
    assert packed is not None and scales is not None, node.name
    n = packed.shape[0]
    block_scales = np.asarray(scales, np.float32).reshape(n, -1)
    k = attributes.get("K", block_scales.shape[1] * size)
    scale = _input_scale(node, k) if node.op_type == "MatMulNBits" else None
    weight = BlockQuantized.from_packed(
        packed.astype(np.uint8),
        block_scales,
        None if zero_points is None else zero_points.astype(np.uint8),
        size,
        k,
        input_scale=scale,
    ).dequantize()
    return weight if rows else np.ascontiguousarray(weight.T)


def _dequantized_weight(quant_model: ir.Model, twin: _Twin) -> npt.NDArray[np.float32]:
    """A weight as the quantized model's DequantizeLinear (or 4-bit node) computes it."""
    node = values_by_name(quant_model.graph)[twin.dq_output].producer()
    assert node is not None and node.inputs[0] is not None
    if twin.qparams is None:
        return _block_weight(node, twin.rows)
    assert node.inputs[0].const_value is not None
    return dequantize(node.inputs[0].const_value.numpy(), twin.qparams)


def _weight_sums(pair: _Pair, weights: list[_Twin], sums: dict[str, _Sums]) -> None:
    graph = pair.float_model.graph
    for twin in weights:
        holder = initializer_owner(graph, twin.float_name)
        assert holder is not None, twin.float_name
        tensor = holder.initializers[twin.float_name].const_value
        assert tensor is not None
        ref = tensor.numpy().astype(np.float64)
        sums[twin.dq_output].add(ref, _dequantized_weight(pair.quant_model, twin).astype(np.float64), ref)


def _exposed_session(
    model: ir.Model, proto: onnx.ModelProto, names: list[str], folder: Path | None, runtime: Target
) -> Session:
    """A session returning ``names`` on ``runtime``'s engine; tensors inside If branches through a
    tap (None where a run takes the other branch)."""
    inputs = {v.name for v in model.graph.inputs}
    return open_tap(model, proto, [n for n in names if n not in inputs], None, folder, target=runtime)


def _measure(pair: _Pair, twins: list[_Twin], dataset: Dataset, *, batch_size: int) -> dict[str, _Sums]:
    # Every twin is exposed, weights too: an exposed tensor keeps onnxruntime from fusing its
    # Q/DQ, and the activations' numbers are those of that unfused graph.
    reference = _exposed_session(
        pair.float_model, pair.float_proto, [t.float_name for t in twins], pair.data_folder, pair.runtime
    )
    quant_names = [t.dq_output for t in twins if not t.blocked] + [t.pre for t in twins if t.pre is not None]
    candidate = _exposed_session(
        pair.quant_model, pair.quant_proto, quant_names, pair.quant_folder, pair.runtime
    )
    sums = {t.dq_output: _Sums() for t in twins}
    _weight_sums(pair, [t for t in twins if t.kind == "weight"], sums)
    activations = [t for t in twins if t.kind == "activation"]
    if not activations:
        return sums
    float_names = [t.float_name for t in activations]
    quant_names = [t.dq_output for t in activations] + [t.pre or "" for t in activations]
    # Sums pool over feeds, each of samples of one shape: nothing of two shapes is concatenated.
    for feed in dataset.batches(engine.batch_size(pair.runtime, batch_size)):
        ref_values = _fetch(reference, float_names, feed.arrays)
        got_values = _fetch(candidate, quant_names, feed.arrays)
        for twin in activations:
            found, quantized, before = (
                ref_values[twin.float_name],
                got_values[twin.dq_output],
                got_values[twin.pre or ""],
            )
            if found is None or quantized is None or before is None:
                continue  # inside an If branch this feed did not take
            ref, got = found.astype(np.float64), quantized.astype(np.float64)
            if ref.shape != got.shape:
                continue
            pre = before.astype(np.float64)
            sums[twin.dq_output].add(ref, got, np.maximum(pre, 0.0) if twin.floor_at_zero else pre)
    return sums


def _alone(
    pair: _Pair, twin: _Twin, *, dataset: Dataset, batch_size: int, reference: EngineSession
) -> float | None:
    """Worst output SQNR of the float model with only ``twin`` quantized, with the quantized
    model's parameters."""
    model = ir_copy(pair.float_proto, pair.data_folder)
    if twin.kind == "weight":
        ReplaceInitializerValuesPass({twin.float_name: _dequantized_weight(pair.quant_model, twin)})(model)
    elif any(out.name == twin.float_name for out in model.graph.outputs):
        return None  # its effect on the output is its local error
    else:
        assert twin.qparams is not None, "a block-wise twin is a weight"
        InsertActivationQDQPass({twin.float_name: twin.qparams})(model)
    session = open_session(serialize(model), data_folder=pair.data_folder, target=pair.runtime)
    fidelity = compare_models(reference, session, dataset, batch_size=batch_size, source="")
    return min(o.sqnr_db for o in fidelity.outputs)


def _errors(pair: _Pair, twins: list[_Twin], sums: dict[str, _Sums]) -> list[TensorError]:
    ops = {n.name or "": n.op_type for n in planned_nodes(pair.float_model.graph)}
    tensors = []
    for twin in twins:
        s = sums[twin.dq_output]
        tensors.append(
            TensorError(
                name=twin.float_name,
                kind=twin.kind,
                op_type=ops.get(twin.nodes[0], "?") if twin.nodes else "?",
                nodes=twin.nodes,
                order=twin.order,
                range_min=s.low if math.isfinite(s.low) else 0.0,
                range_max=s.high if math.isfinite(s.high) else 0.0,
                sqnr_db=sqnr_db(s.signal, s.noise),
                local_sqnr_db=sqnr_db(s.local_signal, s.local_noise),
                bits=4 if twin.blocked else None,
            )
        )
    return tensors


def diagnose(
    float_model: onnx.ModelProto,
    quant_model: onnx.ModelProto,
    dataset: Dataset,
    *,
    top_k: int = 10,
    max_samples: int = 32,
    data_folder: Path | None = None,
    quant_folder: Path | None = None,
    runtime: Target = ORT_CPU,
) -> LayerDiagnosis:
    """Rank every quantized tensor of ``quant_model`` by how much it loses against ``float_model``.

    At most ``max_samples`` samples are used: tensor-level statistics settle on a few batches, and
    every tensor is held in memory for one batch. ``top_k`` tensors (worst local SQNR first) are
    also measured alone; each costs one more session and pass over the samples. Every model runs
    on ``runtime``'s engine (:mod:`quantcli.engine`).
    """
    data = dataset.limit(max_samples)
    pair = _Pair.of(float_model, quant_model, (data_folder, quant_folder), runtime)
    twins = _twins(pair.float_model, pair.quant_model)
    sums = _measure(pair, twins, data, batch_size=_BATCH_SIZE)
    tensors = _errors(pair, twins, sums)
    by_local = sorted(range(len(tensors)), key=lambda i: tensors[i].local_sqnr_db)[:top_k]
    if by_local:
        reference = open_session(float_model, data_folder=data_folder, target=runtime)
        for i in by_local:
            alone = _alone(pair, twins[i], dataset=data, batch_size=_BATCH_SIZE, reference=reference)
            tensors[i] = replace(
                tensors[i], alone_sqnr_db=alone if alone is not None else tensors[i].local_sqnr_db
            )
    ranked = tuple(sorted(tensors, key=lambda t: t.rank_key))
    return LayerDiagnosis(samples=data.num_samples, tensors=ranked, top_k=top_k)
