"""Rewrite a spatial ReduceMean as GlobalAveragePool, which has an integer kernel."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass

__all__ = ["ReduceMeanToGlobalPoolPass"]


def _axes(node: ir.Node) -> list[int] | None:
    """ReduceMean's axes: an attribute up to opset 17, a constant input from 18 on."""
    attribute = node.attributes.get("axes")
    if attribute is not None:
        return list(attribute.as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = node.inputs[1].const_value
        return None if tensor is None else [int(a) for a in np.asarray(tensor.numpy()).reshape(-1)]
    return None


def _spatial_mean(node: ir.Node) -> bool:
    """A mean over every axis after the channel axis of a 4-D tensor: global average pooling."""
    data = node.inputs[0] if node.inputs else None
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or data is None:
        return False
    if data.shape is None or len(data.shape) != 4 or data.dtype != ir.DataType.FLOAT:
        return False
    axes = _axes(node)
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


class ReduceMeanToGlobalPoolPass(MainGraphPass[ir.Node]):
    """ReduceMean over H and W of an NCHW tensor -> GlobalAveragePool (-> Flatten without keepdims).

    Exporters write a classifier's global pooling either way; onnxruntime fuses only
    GlobalAveragePool into an integer kernel, and without one the Conv before it cannot keep an
    int8 output. The two are the same arithmetic, so the rewrite changes no result.
    """

    subgraphs = (
        "skipped: main graph only (a Loop/Scan body is never planned; an If branch is, but this "
        "rewrite is not extended to it yet, so a ReduceMean there stays one, with no integer kernel)"
    )

    def targets(self, graph: ir.Graph) -> Iterator[ir.Node]:
        return (node for node in list(graph) if _spatial_mean(node))

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: ir.Node) -> bool:
        node = target
        keepdims = node.attributes.get("keepdims")
        keep = keepdims is None or keepdims.as_int() == 1
        original = node.outputs[0]
        pooled = ir.Value(name=names.fresh(f"{original.name}_pooled"), type=original.type)
        replacement = [
            ir.Node(
                "",
                "GlobalAveragePool",
                [node.inputs[0]],
                outputs=[pooled],
                name=names.fresh(f"{node.name}_pool"),
            )
        ]
        result = pooled
        if not keep:
            result = ir.Value(name=names.fresh(f"{original.name}_flat"), type=original.type)
            replacement.append(
                ir.Node(
                    "",
                    "Flatten",
                    [pooled],
                    [ir.AttrInt64("axis", 1)],
                    outputs=[result],
                    name=names.fresh(f"{node.name}_flatten"),
                )
            )
        graph.insert_before(node, replacement)
        original.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        result.name, result.shape = original.name, original.shape
        return True
