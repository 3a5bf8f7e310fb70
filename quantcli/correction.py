"""Bias correction: fold the mean error that quantizing a Conv's weights and input adds to its
output back into the Conv's bias.

Rounding a weight channel to int8 changes what the channel computes on average, not only its
noise: for output channel ``o`` the expected output moves by
``sum_i sum_k (Wq - W)[o, i, k] * E[x_i]``, and a quantized input adds
``sum_i sum_k Wq[o, i, k] * (E[Q(x)_i] - E[x_i])`` (clipping by a calibration method shifts the
mean of ``x`` too). Both shifts are constant per output channel, so subtracting them from the bias
costs nothing at run time (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", 2019, section 4.2, here with the input means measured on calibration data).

This is local: each Conv is corrected for its own weights and input quantizer, given the float
model's input; errors from earlier layers are corrected at those layers. Zero padding, which
makes border positions see fewer inputs, is ignored. Conv only: MatMul has no bias to absorb the
shift, and Gemm is left for when a model needs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.calibration.branches import open_tap
from quantcli.calibration.collect import run_batches
from quantcli.calibration.data import Dataset
from quantcli.graph.branches import initializer_owner, planned_nodes
from quantcli.graph.io import serialize
from quantcli.params import PlanParams
from quantcli.passes.bias import CorrectBiasesPass
from quantcli.scheme import QParams, dequantize, quantize

__all__ = ["BiasCorrection", "ConvTerms", "CorrectBiasesPass", "bias_corrections", "corrected_bias"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ConvTerms:
    """What one Conv's correction needs: its float and quantized weights, its groups, and the
    quantizer of its input (None when the input stays float, as in weight-only mode)."""

    node: str
    input: str
    bias: str
    weight: npt.NDArray[np.float32]
    quantized_weight: npt.NDArray[np.float32]
    groups: int
    input_qparams: QParams | None


@dataclass(frozen=True, eq=False)
class BiasCorrection:
    """New float values for Conv biases, by initializer name, and how much each moved."""

    biases: dict[str, npt.NDArray[np.float32]]
    largest_shift: dict[str, float]


def corrected_bias(
    terms: ConvTerms,
    bias: npt.NDArray[np.floating],
    input_mean: npt.NDArray[np.float64],
    quantized_input_mean: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:
    """``bias`` minus the expected output shift per channel, from per-input-channel means."""
    out_channels = terms.weight.shape[0]
    per_group = terms.weight.shape[1]
    # [O, I/g, k...] -> [O, I/g] summed over the kernel: every kernel tap sees the same mean.
    float_taps = terms.weight.reshape(out_channels, per_group, -1).astype(np.float64).sum(axis=2)
    quant_taps = terms.quantized_weight.reshape(out_channels, per_group, -1).astype(np.float64).sum(axis=2)
    # Output channel o reads input channels of its group: g(o) * I/g .. (g(o) + 1) * I/g.
    group_of = np.arange(out_channels) // (out_channels // terms.groups)
    inputs = group_of[:, np.newaxis] * per_group + np.arange(per_group)[np.newaxis, :]
    shift = np.sum(quant_taps * quantized_input_mean[inputs] - float_taps * input_mean[inputs], axis=1)
    result: npt.NDArray[np.float32] = (np.asarray(bias, np.float64) - shift).astype(np.float32)
    return result


def _conv_terms(model: ir.Model, params: PlanParams) -> list[ConvTerms]:
    """Convs (If branches' too) with an int8 weight and a float bias initializer used by this Conv
    alone."""
    terms = []
    for node in planned_nodes(model.graph):
        if node.op_type != "Conv" or len(node.inputs) < 3 or node.domain not in ("", "ai.onnx"):
            continue
        data, weight, bias = node.inputs[0], node.inputs[1], node.inputs[2]
        if data is None or weight is None or bias is None:
            continue
        names = (str(weight.name), str(bias.name))
        if names[0] not in params.integers or initializer_owner(model.graph, names[1]) is None:
            continue
        if bias.const_value is None or weight.const_value is None or len(bias.uses()) != 1:
            continue
        qparams = params.initializers[names[0]]
        float_weight = weight.const_value.numpy().astype(np.float32)
        attribute = node.attributes.get("group")
        terms.append(
            ConvTerms(
                node=str(node.name),
                input=str(data.name),
                bias=names[1],
                weight=float_weight,
                quantized_weight=dequantize(params.integers[names[0]], qparams),
                groups=int(attribute.as_int()) if attribute is not None else 1,
                input_qparams=params.activations.get(str(data.name)),
            )
        )
    return terms


def _input_means(
    model: ir.Model,
    terms: list[ConvTerms],
    dataset: Dataset,
    *,
    batch_size: int,
    data_folder: Path | None,
) -> dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """Per input channel (axis 1), the mean of each Conv input and of its quantized value."""
    quantizers = {t.input: t.input_qparams for t in terms}
    names = sorted(quantizers)
    # A Conv input inside an If branch comes through a tap: None for a batch taking the other branch.
    session = open_tap(model, serialize(model), names, None, data_folder)
    sums: dict[str, npt.NDArray[np.float64]] = {}
    quantized_sums: dict[str, npt.NDArray[np.float64]] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    for _, outputs in run_batches(session, names, dataset, batch_size):
        for name, array in zip(names, outputs, strict=True):
            if array is None:
                continue
            axes = tuple(i for i in range(array.ndim) if i != 1)
            zero = np.zeros(array.shape[1], np.float64)
            sums[name] = sums.get(name, zero) + np.asarray(np.sum(array, axis=axes, dtype=np.float64))
            qparams = quantizers[name]
            if qparams is not None:
                seen = dequantize(quantize(array, qparams), qparams)
                quantized_sums[name] = quantized_sums.get(name, zero) + np.asarray(
                    np.sum(seen, axis=axes, dtype=np.float64)
                )
            counts[name] += array.size // array.shape[1]
    means = {}
    for name in (n for n in names if n in sums):  # a branch no sample takes gives no mean
        mean = sums[name] / max(counts[name], 1)
        quantized = quantized_sums[name] / max(counts[name], 1) if name in quantized_sums else mean
        means[name] = (mean, quantized)
    return means


def bias_corrections(
    model: ir.Model,
    params: PlanParams,
    dataset: Dataset,
    *,
    batch_size: int,
    data_folder: Path | None = None,
) -> BiasCorrection:
    """Corrected biases for every Conv of the float ``model`` whose weight ``params`` quantizes.

    ``model`` is read, not changed; one float run over ``dataset`` measures the input means.
    """
    terms = _conv_terms(model, params)
    if not terms:
        return BiasCorrection({}, {})
    means = _input_means(model, terms, dataset, batch_size=batch_size, data_folder=data_folder)
    biases: dict[str, npt.NDArray[np.float32]] = {}
    shifts: dict[str, float] = {}
    for t in (t for t in terms if t.input in means):
        holder = initializer_owner(model.graph, t.bias)
        assert holder is not None, t.bias
        tensor = holder.initializers[t.bias].const_value
        assert tensor is not None
        bias = tensor.numpy()
        input_mean, quantized_mean = means[t.input]
        biases[t.bias] = corrected_bias(t, bias, input_mean, quantized_mean)
        shifts[t.bias] = float(np.max(np.abs(biases[t.bias] - bias))) if bias.size else 0.0
    logger.info("bias correction: %d Conv bias(es) corrected", len(biases))
    return BiasCorrection(biases, shifts)
