"""Deterministic, collision-free names for values and nodes added to a graph."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["NameAllocator"]


class NameAllocator:
    """Hands out names unused anywhere in a graph (subgraphs included).

    Names derive from a readable base (``conv1.weight_quantized``) and get a numeric suffix only
    on collision, so the same model always gets the same names and a diff of two outputs is short.
    """

    def __init__(self, graph: ir.Graph) -> None:
        self._used: set[str] = set()
        for graph_input in graph.inputs:
            self._add(graph_input.name)
        for name in graph.initializers:
            self._add(name)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self._add(node.name)
            for value in (*node.inputs, *node.outputs):
                if value is not None:
                    self._add(value.name)

    def _add(self, name: str | None) -> None:
        if name:
            self._used.add(name)

    def fresh(self, base: str) -> str:
        """Return ``base`` or ``base_N`` with the smallest N not yet used, and reserve it."""
        name, counter = base, 0
        while name in self._used:
            counter += 1
            name = f"{base}_{counter}"
        self._used.add(name)
        return name
