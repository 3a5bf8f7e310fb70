"""Recognizing a model that is already quantized, so that it is named as such rather than
quantized a second time (which rounds twice and, on a QDQ model, makes it larger)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx_ir as ir

from quantcli.errors import QuantizationError

__all__ = ["QUANTIZED_OPS", "quantized_ops", "refuse_quantized"]

# Operators that only a quantized model holds: Q/DQ pairs and integer kernels (ONNX and
# onnxruntime's com.microsoft contrib ops); any op named QLinear* counts too.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "MatMulBnb4",
        "QGemm",
        "QAttention",
        "QOrderedMatMul",
        "DynamicQuantizeLSTM",
    }
)


def quantized_ops(model: ir.Model) -> Counter[str]:
    """How many nodes of each quantized operator the main graph holds."""
    return Counter(
        node.op_type
        for node in model.graph
        # A model from the wild can name an op in bytes that are not UTF-8: no quantized op then.
        if isinstance(node.op_type, str)
        and (node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"))
    )


def refuse_quantized(model: ir.Model, path: Path) -> None:
    """Raise a one-line error naming the quantized operators if ``model`` has any."""
    found = quantized_ops(model)
    if found:
        ops = ", ".join(f"{count} {op}" for op, count in sorted(found.items(), key=lambda i: (-i[1], i[0])))
        raise QuantizationError(
            f"{path}: already quantized ({ops}); quantize the float model it was made from"
        )
