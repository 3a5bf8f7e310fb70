"""Give float initializers new values: the biases bias correction computed (before they are
quantized), or one weight as its quantized model dequantizes it (diagnosis)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.passes._base import MainGraphPass

__all__ = ["CorrectBiasesPass", "ReplaceInitializerValuesPass"]


class ReplaceInitializerValuesPass(MainGraphPass):
    """Replace the values of float initializers, by name, keeping their shapes.

    An initializer whose new values equal its old ones is left as it is (and not reported as a
    change).
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
                raise ir.passes.PreconditionError(
                    f"'{name}' is not a float initializer of shape {values.shape}"
                )

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


class CorrectBiasesPass(ReplaceInitializerValuesPass):
    """Replace Conv biases by the values :func:`quantcli.correction.bias_corrections` measured
    (each Conv's output shift on calibration data); the pass only writes them, so it reads no data
    and can run on any copy of the float model."""
