"""Remove Relu/Clip nodes whose effect the quantizer before them reproduces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, producers
from quantcli.plan import Fold

__all__ = ["FoldActivationsPass"]


class FoldActivationsPass(MainGraphPass[tuple[ir.Node, Fold]]):
    """Delete each folded activation node and give its output's name to its input.

    The producer then writes the tensor the activation wrote; the quantizer inserted later on it
    (with the activation's non-negative range) saturates at zero exactly as Relu does.
    """

    def __init__(self, folds: Sequence[Fold]) -> None:
        super().__init__()
        self.folds = tuple(folds)

    def requires(self, model: ir.Model) -> None:
        for fold, node in zip(
            self.folds, producers(model.graph, [f.output for f in self.folds]), strict=True
        ):
            source = node.inputs[0] if node.inputs else None
            if source is None or source.name != fold.input:
                raise ir.passes.PreconditionError(f"no activation reads '{fold.input}' into '{fold.output}'")

    def targets(self, graph: ir.Graph) -> Iterator[tuple[ir.Node, Fold]]:
        return zip(producers(graph, [fold.output for fold in self.folds]), self.folds, strict=True)

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: tuple[ir.Node, Fold]) -> bool:
        node, fold = target
        source, result = node.inputs[0], node.outputs[0]
        assert source is not None and source.name == fold.input
        result.replace_all_uses_with(source, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        source.name = fold.output
        return True
