"""Rewrite an Einsum that is a matrix product with a constant as MatMul, which has integer kernels."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass
from quantcli.passes._qdq import add_initializer
from quantcli.passes._rewrite import replace_node

__all__ = ["EinsumToMatMulPass"]


def _terms(node: ir.Node) -> tuple[str, str, str] | None:
    """(data subscripts, weight subscripts, output subscripts) of a two-operand explicit Einsum."""
    attribute = node.attributes.get("equation")
    if attribute is None:
        return None
    equation = attribute.as_string().replace(" ", "")
    if "->" not in equation:
        return None
    inputs, output = equation.split("->")
    operands = inputs.split(",")
    if len(operands) != 2:
        return None
    return operands[0], operands[1], output


def _matmul_transpose(node: ir.Node) -> bool | None:
    """Whether ``node`` is ``x @ W`` (False) or ``x @ W.T`` (True) for a constant 2-D W, or None.

    That is: the data's last subscript is contracted with one subscript of W and appears nowhere
    else, W's other subscript is new and ends the output, and the output is otherwise the data's
    subscripts in order (a leading ``...`` included), none repeated.
    """
    if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    data, weight = node.inputs
    terms = _terms(node)
    tensor = None if weight is None or weight.is_graph_input() else weight.const_value
    if terms is None or data is None or tensor is None or weight is None or not weight.is_initializer():
        return None
    if tensor.dtype != ir.DataType.FLOAT or len(tensor.shape) != 2:
        return None
    x, w, out = terms
    if "." in w or len(w) != 2 or not x or x[-1] == ".":
        return None
    letters = x.replace("...", "")
    contracted = x[-1]
    if len(set(letters)) != len(letters) or w[0] == w[1] or contracted not in w:
        return None
    kept = w[1] if w[0] == contracted else w[0]
    if kept in x or out != x[:-1] + kept:
        return None
    return w[1] == contracted


class EinsumToMatMulPass(MainGraphPass[tuple[ir.Node, bool]]):
    """Einsum("...d,dk->...k", x, W) -> MatMul(x, W), and ("...d,kd->...k") -> MatMul(x, W.T).

    Exporters write projections both ways; onnxruntime has integer kernels (and quantcli's rules)
    for MatMul only. Measured in bench/large_weight_ops.py, 1 thread: an Einsum reading its
    constant through a DequantizeLinear runs about 1.8x the float Einsum's time, so int8 storage
    alone would cost speed; as a MatMul the weight is int8 and the product integer. The rewrite
    is the same arithmetic. A transposed weight becomes a new initializer; the original stays
    while something else reads it.
    """

    subgraphs = (
        "skipped: main graph only (a Loop/Scan body is never planned; an If branch is, but this "
        "rewrite is not extended to it yet, so an Einsum there is planned as an Einsum)"
    )

    def targets(self, graph: ir.Graph) -> Iterator[tuple[ir.Node, bool]]:
        """Each matrix-product Einsum, and whether its weight is transposed."""
        for node in list(graph):
            transpose = _matmul_transpose(node)
            if transpose is not None:
                yield node, transpose

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: tuple[ir.Node, bool]) -> bool:
        node, transpose = target
        data, constant = node.inputs
        assert data is not None and constant is not None and constant.const_value is not None
        weight = constant
        if transpose:
            array = np.ascontiguousarray(constant.const_value.numpy().T)
            weight = add_initializer(graph, names, f"{constant.name}_transposed", array)
        replace_node(graph, names, node, "MatMul", [data, weight])
        if constant is not weight and not constant.uses() and not constant.is_graph_output():
            graph.initializers.pop(constant.name or "")
        return True
