"""What 4 bits cost one layer: weight-reconstruction error and an output-error proxy.

For a layer ``y = x W^T`` with ``H = sum x^T x`` over the calibration data, the squared error of
its outputs is exactly ``tr(dW H dW^T)`` (``dW`` the weight's error): the proxy GPTQ minimizes,
computed from the statistics alone, no activation kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantcli.blockwise.layout import BlockQuantized

__all__ = ["LayerError", "layer_error", "output_error", "weight_error"]


@dataclass(frozen=True)
class LayerError:
    """Errors of one quantized weight, each relative to the float layer's own size.

    ``weight``: ``|dW|_F / |W|_F``. ``output``: ``tr(dW H dW^T) / tr(W H W^T)``, the squared
    output error over the calibration data as a fraction of the output's energy (1 / SQNR).
    """

    weight: float
    output: float

    @property
    def output_sqnr_db(self) -> float:
        return float(10 * np.log10(1.0 / max(self.output, 1e-30)))


def output_error(delta: npt.NDArray[np.floating], hessian: npt.NDArray[np.float64]) -> float:
    """``tr(dW H dW^T)`` for ``dW`` ``[N, K]`` and ``H`` ``[K, K]``."""
    d = np.asarray(delta, np.float64)
    product = d @ hessian
    product *= d  # in place: one K x N temporary, not two
    return float(np.sum(product))


def weight_error(weight: npt.NDArray[np.floating], quantized: BlockQuantized) -> float:
    """``|dW|_F / |W|_F`` of ``quantized`` against the float ``weight`` (``[N, K]``)."""
    w = np.asarray(weight, np.float64)
    delta = quantized.dequantize().astype(np.float64) - w
    return float(np.linalg.norm(delta)) / max(float(np.linalg.norm(w)), 1e-30)


def layer_error(
    weight: npt.NDArray[np.floating], quantized: BlockQuantized, hessian: npt.NDArray[np.float64]
) -> LayerError:
    """Both errors of ``quantized`` against the float ``weight`` (``[N, K]``)."""
    w = np.asarray(weight, np.float64)
    energy = max(output_error(w, hessian), 1e-30)
    norm = max(float(np.linalg.norm(w)), 1e-30)
    delta = quantized.dequantize().astype(np.float64)
    delta -= w
    del w  # the layer's float64 copies are 8 K N bytes each: hold one at a time
    return LayerError(float(np.linalg.norm(delta)) / norm, output_error(delta, hessian) / energy)
