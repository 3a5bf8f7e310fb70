"""Facts about nodes and values that the phases and the modes read: pure functions of the graph.

Nothing here decides a node's fate; each function answers one question about the graph as it is
(is this a float constant, which inputs are activations, how would this MatMul run dynamically).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import onnx_ir as ir

from quantcli.errors import ConfigError
from quantcli.graph.branches import planned_nodes
from quantcli.plan.values import DynamicSpec, LstmSpec
from quantcli.target import OpKind, OpRule

__all__ = [
    "DynamicForm",
    "activation_slots",
    "check_patterns",
    "computed_from_constants",
    "constant",
    "dynamic_form",
    "foldable_activation",
    "fused_input",
    "is_float",
    "large_constant_inputs",
    "matches",
    "no_stored_weight_reason",
    "stored_weights",
]


def is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor of an initializer that is not also a graph input, else None."""
    if value is None or value.is_graph_input():
        return None
    return value.const_value if value.is_initializer() else None


def computed_from_constants(value: ir.Value | None, limit: int = 64) -> bool:
    """Whether ``value`` is a function of constants only (a Reshape of an initializer, the
    output of a Constant node): a runtime folds it into a constant, so it is no activation.
    A chain deeper than ``limit`` nodes is taken as computed at run time."""
    if value is None or value.is_graph_input():
        return False
    if constant(value) is not None:
        return True
    producer = value.producer()
    if producer is None or limit <= 0 or producer.domain not in ("", "ai.onnx"):
        return False
    if producer.op_type == "Constant":
        return True
    inputs = [v for v in producer.inputs if v is not None]
    return bool(inputs) and all(computed_from_constants(v, limit - 1) for v in inputs)


def _is_zero_constant(value: ir.Value | None) -> bool:
    tensor = constant(value)
    return tensor is not None and tensor.size == 1 and float(tensor.numpy().reshape(())) == 0.0


def foldable_activation(node: ir.Node) -> bool:
    if node.op_type == "Relu":
        return True
    # Clip(0, max): Relu6 and friends. Only a lower bound of exactly 0 is reproduced by saturation.
    inputs = list(node.inputs)
    return node.op_type == "Clip" and len(inputs) >= 2 and _is_zero_constant(inputs[1])


def activation_slots(node: ir.Node, rule: OpRule) -> list[int]:
    """The inputs of ``node`` that are activations under ``rule``."""
    inputs = node.inputs
    if rule.activation_inputs is None:
        fused = fused_input(node, rule)
        return [i for i, v in enumerate(inputs) if v is not None and (fused is None or i != fused[0])]
    slots = [i for i in rule.activation_inputs if i < len(inputs) and inputs[i] is not None]
    weight = rule.weight_input
    if rule.kind is OpKind.COMPUTE and weight is not None and constant(inputs[weight]) is None:
        slots.append(weight)  # e.g. attention's Q x K^T: both sides are activations
    return slots


def fused_input(node: ir.Node, rule: OpRule) -> tuple[int, ir.Node] | None:
    """The input of ``node`` the runtime fuses into the layer that produced it (not an activation
    slot: it is never quantized) and that layer, or None."""
    return None if rule.fused_input is None else rule.fused_input(node)


def stored_weights(node: ir.Node, rule: OpRule, minimum: int) -> list[ir.Value]:
    """The weights of an op without integer kernel worth storing in int8: float constants of at
    least ``minimum`` values (a bias or a peephole is left alone: it is not in the rule's slots).
    A constant read through two slots is listed once."""
    assert rule.weight_slots is not None
    found: list[ir.Value] = []
    for index in rule.weight_slots(node):
        value = node.inputs[index] if index < len(node.inputs) else None
        tensor = constant(value)
        if value is None or tensor is None or not is_float(value) or tensor.size < minimum:
            continue
        if all(value is not seen for seen in found):
            found.append(value)
    return found


def no_stored_weight_reason(node: ir.Node, rule: OpRule) -> str:
    assert rule.weight_slots is not None
    slots = [node.inputs[i] for i in rule.weight_slots(node) if i < len(node.inputs)]
    constants = [(v, t) for v in slots if v is not None and (t := constant(v)) is not None]
    if not constants:
        return "float: its weight is computed at run time"
    floats = [t.size for v, t in constants if is_float(v)]
    if not floats:
        return "float: its weight is not a float32 tensor"
    return f"float: {max(floats)} weights are too few for int8 to gain anything"


def large_constant_inputs(node: ir.Node, minimum: int) -> list[ir.Value]:
    """Float constants of at least ``minimum`` values: int8 storage saves more than its scale costs."""
    return [
        v
        for v in node.inputs
        if v is not None and is_float(v) and (t := constant(v)) is not None and t.size >= minimum
    ]


def _float_attribute(node: ir.Node, name: str, default: float) -> float:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.as_float()


def _int_attribute(node: ir.Node, name: str) -> int:
    attribute = node.attributes.get(name)
    return 0 if attribute is None else attribute.as_int()


def _dynamic_matmul(node: ir.Node, _minimum: int) -> tuple[DynamicSpec | None, str]:
    """How ``node`` (MatMul or Gemm) runs as a dynamic integer MatMul, or why it cannot."""
    inputs = list(node.inputs)
    data, weight = inputs[0], inputs[1]
    tensor = constant(weight)
    if data is None or weight is None or tensor is None:
        return None, "both inputs are computed at run time; dynamic mode needs a constant weight"
    if len(tensor.shape) != 2:
        return None, "its weight is not a 2-D matrix (MatMulInteger takes a [K, N] weight)"
    if node.op_type == "MatMul":
        return DynamicSpec(node.outputs[0].name or "", data.name or "", weight.name or ""), ""
    if _int_attribute(node, "transA"):
        return None, "Gemm with transA has no dynamic integer form"
    bias = inputs[2] if len(inputs) > 2 else None
    if bias is not None and constant(bias) is None:
        return None, "its bias is computed at run time"
    return (
        DynamicSpec(
            output=node.outputs[0].name or "",
            input=data.name or "",
            weight=weight.name or "",
            transpose_weight=bool(_int_attribute(node, "transB")),
            bias=bias.name if bias is not None else None,
            alpha=_float_attribute(node, "alpha", 1.0),
            beta=_float_attribute(node, "beta", 1.0),
        ),
        "",
    )


def _dynamic_lstm(node: ir.Node, minimum: int) -> tuple[LstmSpec | None, str]:
    """How ``node`` runs as DynamicQuantizeLSTM, or why it cannot (then its weights are stored
    int8 behind a DequantizeLinear and the float LSTM runs).

    Measured on onnxruntime 1.32, 1 thread (bench/large_weight_ops.py): hidden 256 over 40
    steps, DynamicQuantizeLSTM runs in 0.2-0.5x the float LSTM's time (one or two directions,
    256 or 1,024 features), while DequantizeLinear in front of the float LSTM takes 1.1-1.8x
    (the weights are dequantized at every run and can no longer be pre-packed); both are about
    3.9x smaller. Its output SQNR, 38-40 dB, is 8 dB below the DequantizeLinear form's (the
    input and hidden state are quantized too), cosine 0.9999. So every LSTM that can, runs as
    DynamicQuantizeLSTM outside weight-only mode, whose contract is float compute.
    """
    inputs = list(node.inputs)
    weight, recurrence = inputs[1], inputs[2]
    if any((t := constant(v)) is None or not is_float(v) or t.size < minimum for v in (weight, recurrence)):
        return None, "DynamicQuantizeLSTM needs both W and R as large float constants"
    if _int_attribute(node, "layout"):
        return None, "DynamicQuantizeLSTM has no batch-first layout"
    output = next(out.name for out in node.outputs if out.name)
    assert weight is not None and recurrence is not None
    return LstmSpec(output or "", weight.name or "", recurrence.name or ""), ""


@dataclass(frozen=True)
class DynamicForm:
    """A kernel that quantizes a node's input at run time: how to fit a node to it, and the
    sentence a node that fits gets. ``build(node, min_weights)`` returns the spec or why not."""

    build: Callable[[ir.Node, int], tuple[DynamicSpec | LstmSpec | None, str]]
    reason: str


_DYNAMIC_FORMS: Mapping[str, DynamicForm] = MappingProxyType(
    {
        "DynamicQuantizeMatMul": DynamicForm(
            _dynamic_matmul, "int8: input quantized at run time (DynamicQuantizeMatMul)"
        ),
        "DynamicQuantizeLSTM": DynamicForm(
            _dynamic_lstm,
            "int8: W and R int8, input and hidden state quantized at run time "
            "(DynamicQuantizeLSTM, 2-4x faster than the float LSTM in bench/large_weight_ops.py)",
        ),
    }
)


def dynamic_form(rule: OpRule) -> DynamicForm | None:
    """The run-time-quantized form of ``rule``'s op (the kernel its target names), if any."""
    return _DYNAMIC_FORMS.get(rule.dynamic_kernel) if rule.dynamic_kernel else None


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matches(node: ir.Node, patterns: frozenset[str]) -> bool:
    """``node`` is named by a pattern: its exact name, its op type, or a glob over its name."""
    if node.name in patterns or node.op_type in patterns:
        return True
    return any(_is_glob(p) and fnmatch.fnmatchcase(node.name or "", p) for p in patterns)


def check_patterns(model: ir.Model, patterns: frozenset[str], flag: str) -> None:
    """A pattern that names nothing is a typo: refuse it rather than quantize silently."""
    nodes = list(planned_nodes(model.graph))
    names = [n.name or "" for n in nodes]
    known = set(names) | {n.op_type for n in nodes}
    # An exact name first: "pool[red]" names that node, though as a glob it would not match it.
    unknown = sorted(p for p in patterns if p not in known and not (_is_glob(p) and fnmatch.filter(names, p)))
    if unknown:
        raise ConfigError(f"{flag} names no node or op type of this model: {', '.join(unknown)}")
