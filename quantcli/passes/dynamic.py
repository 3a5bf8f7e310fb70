"""MatMul/Gemm with int8 weights whose input onnxruntime quantizes at run time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, producers
from quantcli.passes._qdq import add_initializer, constant_array, ir_type, quantized_weight, require_quantized
from quantcli.plan import DynamicSpec
from quantcli.scheme import QuantType

__all__ = ["QuantizeMatMulDynamicallyPass"]

# DynamicQuantizeLinear's only output type (ONNX defines it for uint8 alone).
_INPUT_TYPE = ir_type(QuantType.UINT8)


class QuantizeMatMulDynamicallyPass(MainGraphPass[tuple[ir.Node, DynamicSpec]]):
    """Rewrite each planned MatMul/Gemm as the node pattern onnxruntime fuses into
    DynamicQuantizeMatMul (its DynamicQuantizeMatMulFusion after MatMulIntegerToFloatFusion):

        DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast(float)
            -> Mul(., Mul(x_scale, W_scale)) [-> Add(., bias)]

    Runs after QuantizeInitializersPass (``requires`` checks it), whose int8 weight, scale and zero
    point it reads from the weight's DequantizeLinear (left for RemoveUnusedNodesPass when nothing
    else reads it).
    Each MatMul gets its own DynamicQuantizeLinear: the fusion requires it to feed one MatMul.
    """

    def __init__(self, specs: Sequence[DynamicSpec]) -> None:
        super().__init__()
        self.specs = tuple(specs)

    def requires(self, model: ir.Model) -> None:
        nodes = producers(model.graph, [spec.output for spec in self.specs])
        weights = {spec.weight: node.inputs[1] for spec, node in zip(self.specs, nodes, strict=True)}
        require_quantized(type(self).__name__, weights)

    def targets(self, graph: ir.Graph) -> Iterator[tuple[ir.Node, DynamicSpec]]:
        return zip(producers(graph, [spec.output for spec in self.specs]), self.specs, strict=True)

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: tuple[ir.Node, DynamicSpec]) -> bool:
        node, spec = target
        data, weight_value = node.inputs[0], node.inputs[1]
        assert data is not None and weight_value is not None
        weight, scale, zero_point = quantized_weight(weight_value)
        base = spec.output
        if spec.transpose_weight:
            weight = add_initializer(
                graph, names, f"{spec.weight}_quantized_t", constant_array(weight).T.copy()
            )
        if spec.alpha != 1.0:
            scaled = (constant_array(scale) * np.float32(spec.alpha)).astype(np.float32)
            scale = add_initializer(graph, names, f"{spec.weight}_scale_alpha", scaled)

        def value(suffix: str, dtype: ir.DataType) -> ir.Value:
            return ir.Value(name=names.fresh(f"{base}_{suffix}"), type=ir.TensorType(dtype))

        def make(op_type: str, inputs: list[ir.Value], outputs: list[ir.Value], **attrs: int) -> ir.Node:
            attributes = [ir.AttrInt64(key, val) for key, val in attrs.items()]
            return ir.Node(
                "", op_type, inputs, attributes, outputs=outputs, name=names.fresh(f"{base}_{op_type}")
            )

        x_q, x_scale, x_zero = (
            value("input_quantized", _INPUT_TYPE),
            value("input_scale", ir.DataType.FLOAT),
            value("input_zero_point", _INPUT_TYPE),
        )
        product, product_float = value("int32", ir.DataType.INT32), value("int32_float", ir.DataType.FLOAT)
        combined, result = value("scale", ir.DataType.FLOAT), value("scaled", ir.DataType.FLOAT)
        nodes = [
            make("DynamicQuantizeLinear", [data], [x_q, x_scale, x_zero]),
            make("MatMulInteger", [x_q, weight, x_zero, zero_point], [product]),
            make("Cast", [product], [product_float], to=ir.DataType.FLOAT.value),
            make("Mul", [x_scale, scale], [combined]),
            make("Mul", [product_float, combined], [result]),
        ]
        if spec.bias is not None:
            bias = node.inputs[2]  # the planned bias (an initializer of this graph or an outer one)
            assert bias is not None and bias.name == spec.bias
            if spec.beta != 1.0:
                bias = add_initializer(
                    graph,
                    names,
                    f"{spec.bias}_beta",
                    (constant_array(bias) * np.float32(spec.beta)).astype(np.float32),
                )
            biased = value("biased", ir.DataType.FLOAT)
            nodes.append(make("Add", [result, bias], [biased]))
            result = biased
        graph.insert_before(node, nodes)
        original = node.outputs[0]
        original.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        result.name, result.shape = spec.output, original.shape
        return True
