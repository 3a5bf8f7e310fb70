"""Write MatMul and Gemm weights as 4-bit blocks: ``MatMulNBits``, or ``DequantizeLinear`` int4.

Two forms onnxruntime's CPU provider runs:
- ``com.microsoft.MatMulNBits``: the node takes the packed codes (``uint8[N, blocks, block/2]``,
  low nibble first), per-block scales and, for asymmetric weights, packed zero points;
  ``accuracy_level`` 4 lets it compute in int8 on VNNI. Scales must have the type of its input
  ``A``; targets are float32 MatMuls (``block_targets``), so scales are float32.
- ``DequantizeLinear`` (opset 21, ``block_size``, int4/uint4 codes ``[K, N]``) feeding the original
  MatMul, which onnxruntime's graph optimizer fuses into the same kernel; standard ONNX.

Which one to write was decided by measurement (bench/int4.py, section "4-bit block-wise weights"
of bench/RESULTS.md; MiniLM-L6, 128 tokens, onnxruntime 1.32 CPU on AVX-512 VNNI, 1 thread):
``MatMulNBits`` with ``accuracy_level`` 0, :data:`DEFAULT_FORM` and :data:`DEFAULT_ACCURACY_LEVEL`.
At block 32 it ran at 0.96x fp32's latency, against 1.10x for ``accuracy_level`` 4 and 1.13x for
the DequantizeLinear form, at the same embedding cosine (0.9669 / 0.9670 / 0.9670), and level 0
was the faster at blocks 16 and 64 too. The DequantizeLinear form is fused into MatMulNBits at
the *session's* accuracy level (``session.qdq_matmulnbits_accuracy_level``, default 4), so the
model cannot carry the faster choice, and it needs the whole model converted to opset 21; its
one advantage is being standard ONNX, for runtimes without com.microsoft ops.
AWQ's input scale becomes one ``Mul`` by ``1/s`` on the activation, shared by every layer that
reads it with the same ``s``. A weight may come as :class:`PackedBlocks` whose tensors are on disk
(a model past memory, :mod:`quantcli.blockwise.streaming`); they become initializers as they
are, read only when the model is written. Those are MatMulNBits-only (the DequantizeLinear form
needs the unpacked codes).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import numpy as np
import onnx_ir as ir

from quantcli.blockwise.layout import BITS, SYMMETRIC_ZERO_POINT, BlockQuantized, PackedBlocks
from quantcli.blockwise.targets import BlockTarget, block_targets
from quantcli.errors import QuantizationError
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass
from quantcli.passes._qdq import add_initializer, add_tensor
from quantcli.passes._rewrite import replace_node

__all__ = ["DEFAULT_ACCURACY_LEVEL", "DEFAULT_FORM", "BlockForm", "WriteBlockwiseWeightsPass"]

MICROSOFT = "com.microsoft"
# The first opset whose DequantizeLinear takes int4 and block_size.
BLOCKED_DQ_OPSET = 21


class BlockForm(StrEnum):
    """How a 4-bit block-wise weight is written."""

    MATMUL_NBITS = "matmulnbits"
    DEQUANTIZE_LINEAR = "dequantizelinear"


# Measured (module docstring): the form and compute precision onnxruntime's CPU provider ran fastest.
DEFAULT_FORM = BlockForm.MATMUL_NBITS
DEFAULT_ACCURACY_LEVEL = 0


class WriteBlockwiseWeightsPass(MainGraphPass[BlockTarget]):
    """Replace the weights of the nodes named in ``weights`` (node name -> its quantized weight).

    A weight initializer no other node reads is removed; the float model is not kept alongside.
    ``accuracy_level`` is MatMulNBits' attribute; the DequantizeLinear form cannot carry it.
    It rewrites all its targets in one :meth:`call` (a shared AWQ division is made once across
    them), so it overrides the per-target loop of :class:`MainGraphPass`.
    """

    def __init__(
        self,
        weights: Mapping[str, BlockQuantized | PackedBlocks],
        *,
        form: BlockForm = DEFAULT_FORM,
        accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    ) -> None:
        super().__init__()
        self.weights = dict(weights)
        self.form = form
        self.accuracy_level = accuracy_level

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if self.form is BlockForm.DEQUANTIZE_LINEAR and model.opset_imports.get("", 1) < BLOCKED_DQ_OPSET:
            raise QuantizationError(
                f"4-bit DequantizeLinear needs opset {BLOCKED_DQ_OPSET}, the model has "
                f"{model.opset_imports.get('', 1)}; write MatMulNBits or convert the model's opset"
            )
        # In graph order: a shared division of an activation goes before its first reader.
        targets = [t for t in block_targets(graph) if t.node in self.weights]
        missing = sorted(set(self.weights) - {t.node for t in targets})
        assert not missing, f"not block-wise targets: {missing}"
        nodes = {node.name: node for node in graph if node.name in self.weights}
        names = NameAllocator(graph)
        divided: dict[tuple[str, bytes], ir.Value] = {}
        for target in targets:
            quantized, node = self.weights[target.node], nodes[target.node]
            self._check(target, quantized)
            if quantized.input_scale is not None:
                _divide_input(graph, names, node, quantized.input_scale, divided)
            if self.form is BlockForm.MATMUL_NBITS:
                _write_nbits(graph, names, node, target, quantized, accuracy_level=self.accuracy_level)
                model.opset_imports.setdefault(MICROSOFT, 1)
            else:
                assert isinstance(quantized, BlockQuantized), "the DequantizeLinear form needs the codes"
                _write_dequantize(graph, names, node, target, quantized)
            _drop_unused(graph, target.weight)
        return ir.passes.PassResult(model, modified=bool(self.weights))

    @staticmethod
    def _check(target: BlockTarget, quantized: BlockQuantized | PackedBlocks) -> None:
        assert (quantized.n, quantized.k) == (target.n, target.k), (target, quantized.n, quantized.k)


def _divide_input(
    graph: ir.Graph,
    names: NameAllocator,
    node: ir.Node,
    input_scale: np.ndarray,
    divided: dict[tuple[str, bytes], ir.Value],
) -> None:
    """Feed ``node`` its activation divided by ``input_scale`` (one Mul per activation and scale)."""
    activation = node.inputs[0]
    assert activation is not None and activation.name
    key = (activation.name, input_scale.tobytes())
    if key not in divided:
        factor = add_initializer(
            graph, names, f"{activation.name}_awq_inverse_scale", (1.0 / input_scale).astype(np.float32)
        )
        output = ir.Value(name=names.fresh(f"{activation.name}_awq_scaled"), type=activation.type)
        output.shape = activation.shape
        mul = ir.Node(
            "", "Mul", [activation, factor], outputs=[output], name=names.fresh(f"{node.name}_awq_Mul")
        )
        graph.insert_before(node, mul)
        divided[key] = output
    node.replace_input_with(0, divided[key])


def _write_nbits(
    graph: ir.Graph,
    names: NameAllocator,
    node: ir.Node,
    target: BlockTarget,
    weight: BlockQuantized | PackedBlocks,
    *,
    accuracy_level: int,
) -> None:
    base = target.weight
    quantized = weight if isinstance(weight, PackedBlocks) else PackedBlocks.of(weight, ir.tensor)
    packed = add_tensor(graph, names, f"{base}_nbits", quantized.packed)
    scales = add_tensor(graph, names, f"{base}_scales", quantized.scales)
    zero_points = (
        None
        if quantized.zero_points is None
        else add_tensor(graph, names, f"{base}_zero_points", quantized.zero_points)
    )
    activation = node.inputs[0]
    assert activation is not None
    inputs: list[ir.Value | None] = [activation, packed, scales, zero_points]
    bias = node.inputs[2] if target.op_type == "Gemm" and len(node.inputs) > 2 else None
    if bias is not None:
        inputs += [None, bias]  # g_idx (input 4) unused
    while inputs[-1] is None:
        inputs.pop()
    replacement = replace_node(graph, names, node, "MatMulNBits", inputs)  # type: ignore[arg-type]
    replacement.domain = MICROSOFT
    attributes = {
        "K": quantized.k,
        "N": quantized.n,
        "bits": BITS,
        "block_size": quantized.block_size,
        "accuracy_level": accuracy_level,
    }
    for key, value in attributes.items():
        replacement.attributes[key] = ir.AttrInt64(key, value)


def _write_dequantize(
    graph: ir.Graph, names: NameAllocator, node: ir.Node, target: BlockTarget, quantized: BlockQuantized
) -> None:
    """A blocked DequantizeLinear giving the weight in the initializer's own layout.

    Symmetric weights are written as int4 (code - 8) with no zero point, asymmetric as uint4 with
    one; the scale (and zero point) has the codes' shape with the blocked axis cut to its blocks.
    """
    codes = quantized.codes[:, : quantized.k]
    if quantized.symmetric:
        values = (codes.astype(np.int8) - SYMMETRIC_ZERO_POINT).astype(ir.DataType.INT4.numpy())
        zero_point = None
    else:
        uint4 = ir.DataType.UINT4.numpy()
        values, zero_point = codes.astype(uint4), quantized.zero_point.astype(uint4)
    scale = quantized.scale
    axis = 1
    if not target.transposed:  # the initializer is [K, N]: block along axis 0
        values, scale, axis = values.T, scale.T, 0
        zero_point = None if zero_point is None else zero_point.T
    base = target.weight
    inputs = [
        add_initializer(graph, names, f"{base}_quantized", np.ascontiguousarray(values)),
        add_initializer(graph, names, f"{base}_scale", np.ascontiguousarray(scale)),
    ]
    if zero_point is not None:
        inputs.append(add_initializer(graph, names, f"{base}_zero_point", np.ascontiguousarray(zero_point)))
    weight = node.inputs[1]
    assert weight is not None
    output = ir.Value(name=names.fresh(f"{base}_dequantized"), type=weight.type)
    output.shape = weight.shape
    attributes = {
        "axis": ir.AttrInt64("axis", axis),
        "block_size": ir.AttrInt64("block_size", quantized.block_size),
    }
    dequantize = ir.Node(
        "",
        "DequantizeLinear",
        inputs,
        attributes,
        outputs=[output],
        name=names.fresh(f"{node.name}_DequantizeLinear"),
    )
    graph.insert_before(node, dequantize)
    node.replace_input_with(1, output)


def _drop_unused(graph: ir.Graph, name: str) -> None:
    value = graph.initializers.get(name)
    if value is not None and not list(value.uses()) and not value.is_graph_output():
        graph.initializers.pop(name)
