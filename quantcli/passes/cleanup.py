"""Drop the initializers of If branches that nothing reads any more."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

from quantcli.graph.branches import branch_graphs
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass

__all__ = ["RemoveUnusedBranchInitializersPass"]


class RemoveUnusedBranchInitializersPass(MainGraphPass[tuple[str, ir.Graph]]):
    """Remove every initializer of an If branch that no node reads and the branch does not return.

    onnx_ir's RemoveUnusedNodesPass removes unused nodes at every depth but unused initializers
    of the main graph only. A branch's weights are quantized where they live, so what the
    rewrites leave unread there (the int8 weight behind a DequantizeLinear that a
    DynamicQuantizeLSTM replaced) would otherwise stay in the model.
    """

    subgraphs = (
        "If branches only (the main graph's are onnx_ir's RemoveUnusedNodesPass's); "
        "Loop/Scan bodies are not planned"
    )

    def targets(self, graph: ir.Graph) -> Iterator[tuple[str, ir.Graph]]:
        for _, _, branch in list(branch_graphs(graph)):
            outputs = frozenset(branch.outputs)
            for name, value in list(branch.initializers.items()):
                if not value.uses() and value not in outputs:
                    yield name, branch

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: tuple[str, ir.Graph]) -> bool:
        name, branch = target
        del branch.initializers[name]
        return True
