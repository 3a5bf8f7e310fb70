"""Remove Relu/Clip nodes whose effect the quantizer before them reproduces."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from quantcli.plan import Fold

__all__ = ["FoldActivationsPass"]


class FoldActivationsPass(ir.passes.InPlacePass):
    """Delete each folded activation node and give its output's name to its input.

    The producer then writes the tensor the activation wrote; the quantizer inserted later on it
    (with the activation's non-negative range) saturates at zero exactly as Relu does.
    """

    def __init__(self, folds: Sequence[Fold]) -> None:
        super().__init__()
        self.folds = tuple(folds)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        by_output = {node.outputs[0].name: node for node in graph if node.outputs}
        for fold in self.folds:
            node = by_output[fold.output]
            source, result = node.inputs[0], node.outputs[0]
            assert source is not None and source.name == fold.input
            result.replace_all_uses_with(source, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            source.name = fold.output
        return ir.passes.PassResult(model, modified=bool(self.folds))
