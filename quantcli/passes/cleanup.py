"""Drop the initializers of If branches that nothing reads any more."""

from __future__ import annotations

import onnx_ir as ir

from quantcli.graph.branches import branch_graphs

__all__ = ["RemoveUnusedBranchInitializersPass"]


class RemoveUnusedBranchInitializersPass(ir.passes.InPlacePass):
    """Remove every initializer of an If branch that no node reads and the branch does not return.

    onnx_ir's RemoveUnusedNodesPass removes unused nodes at every depth but unused initializers
    of the main graph only. A branch's weights are quantized where they live, so what the
    rewrites leave unread there (the int8 weight behind a DequantizeLinear that a
    DynamicQuantizeLSTM replaced) would otherwise stay in the model. Loop/Scan bodies are not
    planned, so nothing quantcli wrote is there.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = 0
        for _, _, branch in list(branch_graphs(model.graph)):
            outputs = frozenset(branch.outputs)
            for name, value in list(branch.initializers.items()):
                if not value.uses() and value not in outputs:
                    del branch.initializers[name]
                    removed += 1
        return ir.passes.PassResult(model, modified=bool(removed))
