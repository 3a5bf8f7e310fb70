"""Fold an inference BatchNormalization into the Conv before it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass
from quantcli.passes._qdq import add_initializer

__all__ = ["FoldBatchNormPass"]

_DEFAULT_EPSILON = 1e-5  # BatchNormalization's default


def _constant(value: ir.Value | None) -> npt.NDArray[np.float32] | None:
    """``value``'s float32 contents when it is a constant (an initializer or a Constant node's
    output) and not a graph input a caller may override; None otherwise."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or tensor.dtype != ir.DataType.FLOAT:
        return None
    array: npt.NDArray[np.float32] = tensor.numpy()
    return array


def _conv_of(node: ir.Node) -> ir.Node | None:
    """The Conv whose output only ``node``, an inference BatchNormalization, reads; or None."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
        return None
    training = node.attributes.get("training_mode")
    if (training is not None and training.as_int() != 0) or any(out.uses() for out in node.outputs[1:]):
        return None
    source = node.inputs[0]
    conv = source.producer() if source is not None else None
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return None
    if source is None or len(source.uses()) != 1 or source.is_graph_output():
        return None
    return conv


def _folded(conv: ir.Node, norm: ir.Node) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
    """The Conv's weight and bias with ``norm`` folded in, or None when a parameter is not a
    float32 constant of the Conv's output channels."""
    weight = _constant(conv.inputs[1] if len(conv.inputs) > 1 else None)
    if weight is None or weight.ndim < 3:
        return None
    channels = weight.shape[0]
    stored_bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = np.zeros(channels, np.float32) if stored_bias is None else _constant(stored_bias)
    params = [_constant(value) for value in norm.inputs[1:5]]
    if bias is None or len(params) != 4 or any(p is None or p.shape != (channels,) for p in (bias, *params)):
        return None
    gamma, beta, mean, variance = (np.asarray(p, np.float64) for p in params)
    epsilon = norm.attributes.get("epsilon")
    spread = variance + (epsilon.as_float() if epsilon is not None else _DEFAULT_EPSILON)
    if not np.all(spread > 0):  # the model itself computes NaN there: left for the weight check
        return None
    factor = gamma / np.sqrt(spread)
    new_weight = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias.astype(np.float64) - mean) * factor + beta
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def _drop_unread(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    """Remove the old parameters nothing reads any more (initializers, or Constant nodes)."""
    for value in values:
        if value is None or value.uses() or value.is_graph_output():
            continue
        producer = value.producer()
        if value.is_initializer():
            graph.initializers.pop(value.name or "", None)
        elif producer is not None and producer.op_type == "Constant" and producer.graph is graph:
            graph.remove(producer, safe=True)


class FoldBatchNormPass(MainGraphPass[ir.Node]):
    """Conv -> BatchNormalization (inference) becomes one Conv with the normalization in its
    weight and bias: ``W' = W x g / sqrt(v + eps)`` per output channel, ``b' = (b - m) x g /
    sqrt(v + eps) + beta``.

    Exports that keep BatchNormalization nodes (PaddlePaddle's, Caffe2's, MXNet's, PyTorch's in
    training mode) would otherwise be quantized with a float BatchNormalization between each
    integer Conv and the next quantizer: onnxruntime folds Conv+BN only in float graphs, so every
    such layer costs a DequantizeLinear, the normalization and a QuantizeLinear, and the int8
    weight is rounded before the per-channel scale it is then multiplied by. onnx_ir has no such
    pass, and onnxruntime's fusion happens only inside its own session, not on a model we write.
    The Conv keeps its name; a BatchNormalization that ends the graph leaves its output's name to
    the Conv, so the interface is unchanged.
    """

    subgraphs = "skipped: main graph only (an If branch's BatchNormalization stays as exported)"

    def targets(self, graph: ir.Graph) -> Iterator[ir.Node]:
        for node in list(graph):
            if _conv_of(node) is not None:
                yield node

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: ir.Node) -> bool:
        conv = _conv_of(target)
        folded = _folded(conv, target) if conv is not None else None
        if conv is None or folded is None:
            return False
        old = [*conv.inputs[1:3], *target.inputs[1:5]]
        weight, bias = folded
        base = old[0].name if old[0] is not None else conv.name
        conv.replace_input_with(1, add_initializer(graph, names, f"{base}_bn_folded", weight))
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(2, add_initializer(graph, names, f"{conv.name}_bias_bn_folded", bias))
        result, normalized = conv.outputs[0], target.outputs[0]
        ends_graph = normalized.is_graph_output()
        name = normalized.name
        normalized.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(target, safe=True)
        if ends_graph:  # a graph output keeps its name and declared type
            result.name = name
            result.type, result.shape = normalized.type, normalized.shape
        _drop_unread(graph, old)
        return True
