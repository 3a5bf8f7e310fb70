"""Replacing one node by another that computes the same thing, names kept."""

from __future__ import annotations

import onnx_ir as ir

from quantcli.graph.names import NameAllocator

__all__ = ["replace_node"]


def replace_node(
    graph: ir.Graph, names: NameAllocator, node: ir.Node, op_type: str, inputs: list[ir.Value]
) -> ir.Node:
    """Put a single-output ``op_type`` node reading ``inputs`` in place of ``node``.

    The new node and its output take the old ones' names, so ``--exclude``, reports and
    calibration files keep naming what the model has, and a graph output stays a graph output.
    """
    original = node.outputs[0]
    result = ir.Value(name=names.fresh(f"{original.name}_{op_type.lower()}"), type=original.type)
    replacement = ir.Node("", op_type, inputs, outputs=[result], name=names.fresh(f"{node.name}_{op_type}"))
    graph.insert_before(node, replacement)
    original.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    replacement.name = node.name
    result.name, result.shape = original.name, original.shape
    return replacement
