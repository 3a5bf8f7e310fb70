"""Store constant weights and biases as integers behind a DequantizeLinear."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from quantcli.graph.branches import initializer_owner
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, values_by_name
from quantcli.passes._qdq import add_initializer, add_parameters, dequantize_node, require_quantized
from quantcli.scheme import QParams, quantize

__all__ = ["QuantizeInitializersPass"]


def _replace_initializer(
    graph: ir.Graph, names: NameAllocator, name: str, qparams: QParams, integers: np.ndarray | None
) -> None:
    """Swap float initializer ``name`` for an integer one plus a DequantizeLinear whose output
    takes the original name, so consumers and reports keep referring to ``name``.

    The float tensor is read once and dropped: no float copy is left in the model. ``integers``,
    when given, is the tensor already quantized (by the step that computed its parameters).
    """
    value = graph.initializers[name]
    tensor = value.const_value
    assert tensor is not None
    if integers is None:
        integers = quantize(tensor.numpy(), qparams)
    quantized = add_initializer(graph, names, f"{name}_quantized", integers, qparams.dtype)
    uses = list(value.uses())
    graph.initializers.pop(name)
    value.name = names.fresh(f"{name}_float_removed")
    parameters = add_parameters(graph, names, name, qparams)
    node, output = dequantize_node(names, quantized, parameters, base=name, output_name=name)
    first = next(iter(graph), None)
    if first is None:
        graph.append(node)
    else:
        graph.insert_before(first, node)
    for use in uses:
        use.node.replace_input_with(use.idx, output)


class QuantizeInitializersPass(MainGraphPass[str]):
    """Quantize constant weights, int32 biases and constant activation-slot inputs.

    Biases need no pass of their own: their parameters (input scale x weight scale) are computed
    before any rewrite, like every other parameter. ``ensures`` states what the passes after it
    (dynamic MatMul, LSTM, gathered rows) require: each name is now an integer constant behind a
    DequantizeLinear.
    """

    def __init__(
        self, params: Mapping[str, QParams], integers: Mapping[str, np.ndarray] | None = None
    ) -> None:
        super().__init__()
        self.params = dict(params)
        self.integers = dict(integers or {})

    def requires(self, model: ir.Model) -> None:
        for name in self.params:
            graph = initializer_owner(model.graph, name)
            if graph is None or graph.initializers[name].const_value is None:
                raise ir.passes.PreconditionError(
                    f"'{name}' is not a constant initializer of the main graph or an If branch"
                )

    def targets(self, graph: ir.Graph) -> list[str]:
        return sorted(self.params)

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: str) -> bool:
        _replace_initializer(graph, names, target, self.params[target], self.integers.get(target))
        return True

    def ensures(self, model: ir.Model) -> None:
        values = values_by_name(model.graph)
        require_quantized(type(self).__name__, {name: values.get(name) for name in self.params})
