"""Give Conv biases the values bias correction computed (before the biases are quantized)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.passes._base import MainGraphPass

__all__ = ["CorrectBiasesPass"]


class CorrectBiasesPass(MainGraphPass):
    """Replace the values of float bias initializers, by name.

    The values come from :func:`quantcli.correction.bias_corrections`, which measures each Conv's
    output shift on calibration data; this pass only writes them, so it reads no data and can run
    on any copy of the float model. A bias whose new values equal its old ones is left as it is.
    """

    def __init__(self, biases: Mapping[str, npt.NDArray[np.float32]]) -> None:
        super().__init__()
        self.biases = biases

    def requires(self, model: ir.Model) -> None:
        initializers = model.graph.initializers
        for name, values in self.biases.items():
            value = initializers.get(name)
            tensor = None if value is None else value.const_value
            if tensor is None or tuple(tensor.shape) != values.shape:
                raise ir.passes.PreconditionError(f"'{name}' is not a float bias of shape {values.shape}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers = model.graph.initializers
        modified = False
        for name, values in self.biases.items():
            value = initializers[name]
            assert value.const_value is not None
            if np.array_equal(value.const_value.numpy(), values):
                continue
            value.const_value = ir.tensor(values, name=name)
            modified = True
        return ir.passes.PassResult(model, modified=modified)
