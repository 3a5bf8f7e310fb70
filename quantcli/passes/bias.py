"""Give float initializers new values: the biases bias correction computed (before they are
quantized), or one weight as its quantized model dequantizes it (diagnosis)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.graph.branches import initializer_owner
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass

__all__ = ["CorrectBiasesPass", "ReplaceInitializerValuesPass"]


class ReplaceInitializerValuesPass(MainGraphPass[str]):
    """Replace the values of float initializers, by name, keeping their shapes.

    An initializer whose new values equal its old ones is left as it is (and not reported as a
    change).
    """

    subgraphs = "If branches too: each initializer is replaced in the graph that holds it"

    def __init__(self, biases: Mapping[str, npt.NDArray[np.float32]]) -> None:
        super().__init__()
        self.biases = biases

    def requires(self, model: ir.Model) -> None:
        for name, values in self.biases.items():
            holder = initializer_owner(model.graph, name)
            value = None if holder is None else holder.initializers.get(name)
            tensor = None if value is None else value.const_value
            if tensor is None or tuple(tensor.shape) != values.shape:
                raise ir.passes.PreconditionError(
                    f"'{name}' is not a float initializer of shape {values.shape}"
                )

    def targets(self, graph: ir.Graph) -> list[str]:
        return list(self.biases)

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: str) -> bool:
        value, values = graph.initializers[target], self.biases[target]
        assert value.const_value is not None
        if np.array_equal(value.const_value.numpy(), values):
            return False
        value.const_value = ir.tensor(values, name=target)
        return True


class CorrectBiasesPass(ReplaceInitializerValuesPass):
    """Replace Conv biases by the values :func:`quantcli.correction.bias_corrections` measured
    (each Conv's output shift on calibration data); the pass only writes them, so it reads no data
    and can run on any copy of the float model."""
