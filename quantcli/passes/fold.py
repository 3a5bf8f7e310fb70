"""Remove Relu/Clip nodes whose effect the quantizer before them reproduces."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from quantcli.passes._base import MainGraphPass, values_by_name
from quantcli.plan import Fold

__all__ = ["FoldActivationsPass"]


class FoldActivationsPass(MainGraphPass):
    """Delete each folded activation node and give its output's name to its input.

    The producer then writes the tensor the activation wrote; the quantizer inserted later on it
    (with the activation's non-negative range) saturates at zero exactly as Relu does.
    """

    def __init__(self, folds: Sequence[Fold]) -> None:
        super().__init__()
        self.folds = tuple(folds)

    def requires(self, model: ir.Model) -> None:
        values = values_by_name(model.graph)
        for fold in self.folds:
            node = values[fold.output].producer()
            source = None if node is None or not node.inputs else node.inputs[0]
            if source is None or source.name != fold.input:
                raise ir.passes.PreconditionError(f"no activation reads '{fold.input}' into '{fold.output}'")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = values_by_name(graph)
        modified = False
        for fold in self.folds:
            node = values[fold.output].producer()
            assert node is not None
            source, result = node.inputs[0], node.outputs[0]
            assert source is not None and source.name == fold.input
            result.replace_all_uses_with(source, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            source.name = fold.output
            modified = True
        return ir.passes.PassResult(model, modified=modified)
