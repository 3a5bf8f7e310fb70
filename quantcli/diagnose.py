"""Per-layer diagnosis: which quantized tensors lose the most, measured through onnxruntime.

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

This works on any QDQ model, not only quantcli's. Tensors quantized other ways (dynamic MatMul
inputs, rows gathered from an int8 table) have no DQ twin and are not listed. Extra outputs keep
onnxruntime from fusing some Q/DQ pairs, so a tensor's numbers come from the unfused graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from quantcli.calibration.data import Batch, Dataset
from quantcli.evaluate import compare_models, sqnr_db
from quantcli.graph.io import open_session

__all__ = ["LayerDiagnosis", "TensorError", "diagnose"]

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


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


@dataclass(frozen=True)
class _Twin:
    """One DequantizeLinear output and the float tensor it stands for."""

    float_name: str
    dq_output: str
    pre: str | None  # the quantizer's float input in the quantized model (activations)
    kind: str
    nodes: tuple[str, ...]
    order: int
    qparams: tuple[str, str, int]  # scale and zero-point initializer names, axis
    # The quantizer saturates at 0 (zero point at the type's minimum): a folded Relu, whose
    # clipping of negative values is intended and not quantization error.
    floor_at_zero: bool = False


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


def _axis(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return int(attribute.i)
    return 1


def _saturates_at_zero(zero_point: onnx.TensorProto | None) -> bool:
    if zero_point is None:
        return False
    array = numpy_helper.to_array(zero_point)
    return bool(array.size == 1 and int(array.reshape(())) == int(np.iinfo(array.dtype).min))


def _twins(float_model: onnx.ModelProto, quant_model: onnx.ModelProto) -> list[_Twin]:
    graph = quant_model.graph
    float_values = {v.name for v in float_model.graph.input} | {
        o for n in float_model.graph.node for o in n.output
    }
    float_weights = {i.name for i in float_model.graph.initializer}
    float_nodes = {n.name for n in float_model.graph.node}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in graph.initializer}
    twins = []
    for order, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or len(node.input) < 2:
            continue
        source, out = node.input[0], node.output[0]
        users = [
            n.name for n in consumers.get(out, []) if n.op_type not in _QDQ_OPS and n.name in float_nodes
        ]
        params = (node.input[1], node.input[2] if len(node.input) > 2 else "", _axis(node))
        if source in initializers:
            if out in float_weights and initializers[source].data_type != onnx.TensorProto.INT32:
                twins.append(_Twin(out, out, None, "weight", tuple(users), order, params))
            continue
        quantizer = producers.get(source)
        if quantizer is None or quantizer.op_type != "QuantizeLinear":
            continue  # e.g. rows gathered from an int8 table
        pre = quantizer.input[0]
        twin = out if out in float_values else pre if pre in float_values else None
        if twin is None:
            continue
        producer = producers.get(pre)
        if producer is not None and producer.name in float_nodes and producer.op_type not in _QDQ_OPS:
            users.append(producer.name)
        nodes = tuple(dict.fromkeys(users))
        floor = _saturates_at_zero(initializers.get(params[1]))
        twins.append(_Twin(twin, out, pre, "activation", nodes, order, params, floor_at_zero=floor))
    return twins


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inputs = {v.name for v in copy.graph.input}
    present = {o.name for o in copy.graph.output}
    for name in dict.fromkeys(names):
        if name not in present and name not in inputs:
            copy.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def _fetch(
    session: ort.InferenceSession, names: list[str], feed: Batch
) -> dict[str, npt.NDArray[np.generic]]:
    """Run ``session`` for ``names``; graph inputs come straight from the feed. Arrays stay as
    onnxruntime returns them (float32): every exposed tensor of a batch is held at once, so the
    caller widens one tensor at a time."""
    wanted = [n for n in names if n not in feed]
    arrays = session.run(wanted, feed) if wanted else []
    result = {n: np.asarray(a) for n, a in zip(wanted, arrays, strict=True)}
    result.update({n: np.asarray(feed[n]) for n in names if n in feed})
    return result


def _measure(
    float_model: onnx.ModelProto,
    quant_model: onnx.ModelProto,
    twins: list[_Twin],
    dataset: Dataset,
    *,
    batch_size: int,
    data_folder: Path | None,
    quant_folder: Path | None,
) -> dict[str, _Sums]:
    float_names = [t.float_name for t in twins]
    quant_names = [t.dq_output for t in twins] + [t.pre for t in twins if t.pre is not None]
    reference = open_session(_with_outputs(float_model, float_names), data_folder=data_folder)
    candidate = open_session(_with_outputs(quant_model, quant_names), data_folder=quant_folder)
    sums = {t.dq_output: _Sums() for t in twins}
    weights = [t for t in twins if t.kind == "weight"]
    floats = {
        i.name: numpy_helper.to_array(i, base_dir=str(data_folder or ""))
        for i in float_model.graph.initializer
        if i.name in {t.float_name for t in weights}
    }
    quantized = _dequantized_weights(quant_model, weights, quant_folder)
    for twin in weights:
        ref, got = floats[twin.float_name].astype(np.float64), quantized[twin.dq_output].astype(np.float64)
        sums[twin.dq_output].add(ref, got, ref)
    activations = [t for t in twins if t.kind == "activation"]
    if not activations:
        return sums
    # Sums pool over feeds, each of samples of one shape: nothing of two shapes is concatenated.
    for feed in dataset.batches(batch_size):
        ref_values = _fetch(reference, [t.float_name for t in activations], feed.arrays)
        got_values = _fetch(
            candidate, [t.dq_output for t in activations] + [t.pre or "" for t in activations], feed.arrays
        )
        for twin in activations:
            ref = ref_values[twin.float_name].astype(np.float64)
            got = got_values[twin.dq_output].astype(np.float64)
            if ref.shape != got.shape:
                continue
            pre = got_values[twin.pre or ""].astype(np.float64)
            sums[twin.dq_output].add(ref, got, np.maximum(pre, 0.0) if twin.floor_at_zero else pre)
    return sums


def _dequantized_weights(
    model: onnx.ModelProto, weights: list[_Twin], folder: Path | None
) -> dict[str, npt.NDArray[np.float32]]:
    """The weights as the quantized model's DequantizeLinear computes them (external data read
    from ``folder``, the model's own)."""
    initializers = {i.name: i for i in model.graph.initializer}

    def array(name: str) -> npt.NDArray[np.generic]:
        return numpy_helper.to_array(initializers[name], base_dir=str(folder or ""))

    producers = {o: n for n in model.graph.node for o in n.output}
    result = {}
    for twin in weights:
        node = producers[twin.dq_output]
        q = array(node.input[0]).astype(np.float64)
        scale_name, zero_name, axis = twin.qparams
        scale = array(scale_name).astype(np.float64)
        zero = array(zero_name).astype(np.float64) if zero_name else np.zeros(())
        if scale.ndim == 1 and q.ndim > 0:
            shape = [1] * q.ndim
            shape[axis % q.ndim] = scale.shape[0]
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        result[twin.dq_output] = ((q - zero) * scale).astype(np.float32)
    return result


def _alone(
    float_model: onnx.ModelProto,
    quant_model: onnx.ModelProto,
    twin: _Twin,
    *,
    dataset: Dataset,
    batch_size: int,
    reference: ort.InferenceSession,
    data_folder: Path | None,
    quant_folder: Path | None,
) -> float | None:
    """Worst output SQNR of the float model with only ``twin`` quantized."""
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    if twin.kind == "weight":
        array = _dequantized_weights(quant_model, [twin], quant_folder)[twin.dq_output]
        for index, init in enumerate(graph.initializer):
            if init.name == twin.float_name:
                graph.initializer[index].CopyFrom(numpy_helper.from_array(array, twin.float_name))
    else:
        if twin.float_name in {o.name for o in graph.output}:
            return None  # its effect on the output is its local error
        _insert_qdq(graph, quant_model, twin, quant_folder)
    session = open_session(model, data_folder=data_folder)
    fidelity = compare_models(reference, session, dataset, batch_size=batch_size, source="")
    return min(o.sqnr_db for o in fidelity.outputs)


def _insert_qdq(
    graph: onnx.GraphProto, quant_model: onnx.ModelProto, twin: _Twin, quant_folder: Path | None
) -> None:
    """Quantize one float tensor with the quantized model's scale and zero point."""
    initializers = {i.name: i for i in quant_model.graph.initializer}
    for name in twin.qparams[:2]:  # inline copies: the float model's folder is not the quantized one's
        if name and initializers[name].data_location == onnx.TensorProto.EXTERNAL:
            proto = onnx.TensorProto()
            proto.CopyFrom(initializers[name])
            onnx.external_data_helper.load_external_data_for_tensor(proto, str(quant_folder or ""))
            initializers[name] = proto
    scale_name, zero_name, axis = twin.qparams
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    base = f"{twin.float_name}__alone"
    scale = numpy_helper.from_array(numpy_helper.to_array(initializers[scale_name]), f"{base}_scale")
    zero = numpy_helper.from_array(numpy_helper.to_array(initializers[zero_name]), f"{base}_zero_point")
    assert not {scale.name, zero.name, f"{base}_q", f"{base}_dq"} & taken
    graph.initializer.extend([scale, zero])
    q = helper.make_node("QuantizeLinear", [twin.float_name, scale.name, zero.name], [f"{base}_q"], axis=axis)
    dq = helper.make_node("DequantizeLinear", [f"{base}_q", scale.name, zero.name], [f"{base}_dq"], axis=axis)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == twin.float_name:
                node.input[index] = f"{base}_dq"
    position = 0
    for index, node in enumerate(graph.node):
        if twin.float_name in node.output:
            position = index + 1
    graph.node.insert(position, dq)
    graph.node.insert(position, q)


def diagnose(
    float_model: onnx.ModelProto,
    quant_model: onnx.ModelProto,
    dataset: Dataset,
    *,
    # One sample per run: every quantized tensor of both models is exposed at once, so a batch of
    # 4 PP-OCRv4 det images (640x640) held about 12 GB.
    batch_size: int = 1,
    top_k: int = 10,
    max_samples: int = 32,
    data_folder: Path | None = None,
    quant_folder: Path | None = None,
) -> LayerDiagnosis:
    """Rank every quantized tensor of ``quant_model`` by how much it loses against ``float_model``.

    At most ``max_samples`` samples are used: tensor-level statistics settle on a few batches, and
    every tensor is held in memory for one batch. ``top_k`` tensors (worst local SQNR first) are
    also measured alone; each costs one more onnxruntime session and pass over the samples.
    """
    data = dataset.limit(max_samples)
    twins = _twins(float_model, quant_model)
    sums = _measure(
        float_model,
        quant_model,
        twins,
        data,
        batch_size=batch_size,
        data_folder=data_folder,
        quant_folder=quant_folder,
    )
    ops = {n.name: n.op_type for n in float_model.graph.node}
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
            )
        )
    by_local = sorted(range(len(tensors)), key=lambda i: tensors[i].local_sqnr_db)[:top_k]
    if by_local:
        reference = open_session(float_model, data_folder=data_folder)
        for i in by_local:
            alone = _alone(
                float_model,
                quant_model,
                twins[i],
                dataset=data,
                batch_size=batch_size,
                reference=reference,
                data_folder=data_folder,
                quant_folder=quant_folder,
            )
            tensors[i] = replace(
                tensors[i], alone_sqnr_db=alone if alone is not None else tensors[i].local_sqnr_db
            )
    ranked = tuple(sorted(tensors, key=lambda t: t.rank_key))
    return LayerDiagnosis(samples=data.num_samples, tensors=ranked, top_k=top_k)
