"""What is specific to the runtime that will run the quantized model, as data.

A :class:`Target` holds everything the planner must know about one runtime: which ops it fuses
with QuantizeLinear/DequantizeLinear into integer kernels (its op-rule table), which element-wise
ops continue the integer path only when every input is int8 already, which weight axes take
per-channel scales, whether final outputs stay float, the quantized types it accepts per role and
the execution providers that check and time a model. :data:`ORT_CPU` is onnxruntime's CPU
provider (the default), :data:`OPENVINO` OpenVINO's CPU plugin (docs/openvino.md), :data:`TENSORRT`
TensorRT's explicit quantization; another runtime is another value of this type (its own table
and facts), never a branch in the planner. :data:`TARGETS` names them as ``--target`` spells them.

This module depends on nothing else in quantcli: the planner, the graph layer and the modes
read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

import numpy as np
import onnx_ir as ir

__all__ = [
    "OPENVINO",
    "ORT_CPU",
    "TARGETS",
    "TENSORRT",
    "AxisRule",
    "Engine",
    "FusedInput",
    "NodeTest",
    "OpKind",
    "OpRule",
    "SlotRule",
    "Target",
]


class OpKind(StrEnum):
    """How an op takes part in the integer path."""

    COMPUTE = "compute"  # the reason to quantize: a weight and an integer kernel
    ELEMENTWISE = "elementwise"  # an integer kernel, worth it only when every input is int8
    DATA_MOVEMENT = "data-movement"  # carries its input's scale: int8 in, int8 out
    WEIGHT_ONLY = "weight-only"  # a large weight, no integer kernel: int8 storage only
    TABLE = "table"  # Gather on a constant table
    ACTIVATION_FOLD = "activation-fold"  # Relu/Clip(0, x): the quantizer's saturation


class Engine(StrEnum):
    """The engine that runs a model for checking, fidelity and timing (:mod:`quantcli.engine`)."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


AxisRule = Callable[[ir.Node, ir.Value], int | None]
SlotRule = Callable[[ir.Node], tuple[int, ...]]
NodeTest = Callable[[ir.Node], bool]
# The input an op is fused through, and the layer it is fused into.
FusedInput = Callable[[ir.Node], tuple[int, ir.Node] | None]


@dataclass(frozen=True, kw_only=True)
class OpRule:
    """The roles of one op's inputs on a target, and the kernel that runs it (named in reasons)."""

    kind: OpKind
    kernel: str = ""
    activation_inputs: tuple[int, ...] | None = (0,)  # None: every input
    weight_input: int | None = None
    weight_axis: AxisRule | None = None  # the channel axis of a weight (None: per tensor)
    bias_input: int | None = None
    # Whether the int32 bias can be fused for this node (QGemm adds it unscaled); None: always.
    bias_fuses: NodeTest | None = None
    output_required: bool = True  # the kernel needs a quantized output to fuse
    # OpKind.WEIGHT_ONLY: the inputs that may hold a weight stored int8 behind a DequantizeLinear.
    weight_slots: SlotRule | None = None
    # The inputs and the output share one scale (the union of their ranges): the op is then a
    # link of a carried chain, no requantization at it (Target.one_pair_per_chain).
    shares_scale: bool = False
    # The kernel that quantizes this op's input at run time (dynamic and mixed modes for a
    # COMPUTE op; every mode but weight-only for a WEIGHT_ONLY op); "" when it has none.
    dynamic_kernel: str = ""
    # OpKind.ELEMENTWISE: the input the runtime fuses into the weighted layer that produced it (the
    # Conv side of TensorRT's residual Add), or None. That input is not quantized and the op's other
    # inputs are, whether or not they are int8 already; its output gets a pair only where a reader
    # takes int8. ``fused_kernel`` names the fusion in reasons.
    fused_input: FusedInput | None = None
    fused_kernel: str = ""
    # The target's rule that leaves this op float when the plan does not make it integer (its
    # inputs are not int8, nothing after it takes int8), added to that reason; "" for none.
    float_rule: str = ""
    # OpKind.COMPUTE on a target with an ``output_pair_rule``: the layers whose output keeps its
    # pair though no reader takes int8, because the runtime runs them faster so (OpenVINO's 3x3
    # Conv before a SiLU), and the reason their decision gives; None: none.
    keeps_output_pair: NodeTest | None = None
    kept_output_reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Target:
    """One runtime's facts. Replace fields (``dataclasses.replace``) to describe another."""

    name: str  # as a flag value would spell it
    runtime: str  # as reasons name it: "onnxruntime's CPU provider has no integer X kernel"
    rules: Mapping[str, OpRule]
    # Why common ops without a rule stay float, in words a user can check.
    float_reasons: Mapping[str, str] = field(default_factory=dict)
    # Leave float a compute op's output from which no int8 reader can be reached (a detector's
    # head): quantizing it clips values beyond the calibrated range and no integer kernel gains.
    keep_final_outputs_float: bool = True
    # Compute ops with fewer constant weights than this stay float (a detector's 16-tap
    # expectation Conv): int8 would save nothing and add a rounding step.
    min_compute_weights: int = 64
    # Constant inputs of float element-wise ops smaller than this stay float: a scale and zero
    # point would outweigh the bytes saved.
    min_stored_constant: int = 256
    # The quantized types the runtime accepts, per role.
    activation_types: frozenset[ir.DataType] = frozenset({ir.DataType.UINT8, ir.DataType.INT8})
    weight_types: frozenset[ir.DataType] = frozenset({ir.DataType.INT8})
    bias_types: frozenset[ir.DataType] = frozenset({ir.DataType.INT32})
    # Every activation zero point is 0 (a runtime that folds no zero point into its integer
    # kernels): int8 symmetric for a tensor that may be negative, and for one whose calibrated
    # range starts at 0 ``nonnegative_type`` from 0 (None: int8 symmetric as well). The config's
    # activation type then does not apply. False: the config's type, uint8 asymmetric.
    zero_point_zero: bool = False
    nonnegative_type: ir.DataType | None = None
    # The rule by which a compute op's output gets a pair only when some reader takes it as int8
    # (the reason its decision gives); None: the kernel's ``output_required`` decides alone.
    output_pair_rule: str | None = None
    # One pair per carried chain (a runtime that moves a dequantization through data movement
    # itself): the pair goes on the chain's root, the tensor a data-movement op reads, even when
    # that tensor is float, and none goes on the links after it; a Concat whose ``OpRule``
    # shares its inputs' scale is a link too. False: every link of a chain gets a pair of the
    # root's parameters, and a data-movement op joins only after an int8 tensor.
    one_pair_per_chain: bool = False
    # An element-wise op joins the integer path when some (not every) activation input is int8;
    # its float inputs get pairs of their own.
    elementwise_joins_any: bool = False
    # Ops whose fusion needs a stored weight's zero point written out even when it is 0 (ONNX's
    # default); every other reader gets the shorter DequantizeLinear without it.
    explicit_zero_point_ops: frozenset[str] = frozenset()
    # Whether a stored weight's all-zero zero point may be left out at all (False: always written).
    omits_zero_points: bool = True
    # The engine that checks a written model, measures its fidelity and times it (quantcli.engine
    # opens it; calibration runs on onnxruntime whatever the target), and with onnxruntime the
    # execution providers it checks and times on.
    engine: Engine = Engine.ONNXRUNTIME
    check_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    timing_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # The newest default-domain opset the runtime's ONNX parser is documented to take, and which
    # version says so (None: whatever quantcli writes). A newer model is written all the same (a
    # newer runtime may take it), with a warning.
    max_opset: int | None = None
    max_opset_source: str = ""
    # The concrete modes (QuantMode values) whose models the runtime runs as it is meant to, and
    # the rule that says so; None: every mode. Auto builds only these; another is refused.
    modes: frozenset[str] | None = None
    modes_rule: str = ""
    # Whether onnxruntime's CPU cost model speaks for this runtime's speed: the report's predicted
    # speed, and its warning when the model is predicted slower than float.
    predicted_by_onnxruntime: bool = True

    def rule(self, node: ir.Node) -> OpRule | None:
        """The rule for ``node``'s op, or None when the target has no integer form for it."""
        return self.rules.get(node.op_type)

    def runs(self, mode: str) -> bool:
        """Whether the runtime runs models of ``mode`` (a concrete mode's value)."""
        return self.modes is None or mode in self.modes

    def opset_warning(self, opset: int) -> str | None:
        """A warning for a model of ``opset`` that the runtime may refuse, or None."""
        if self.max_opset is None or opset <= self.max_opset:
            return None
        return (
            f"opset {opset} is newer than {self.max_opset_source} takes (up to {self.max_opset}); "
            f"convert the model to opset {self.max_opset} or use a newer {self.runtime}"
        )


def _axis(index: int) -> AxisRule:
    def rule(_node: ir.Node, _weight: ir.Value) -> int | None:
        return index

    return rule


def _slots(*indices: int) -> SlotRule:
    def rule(_node: ir.Node) -> tuple[int, ...]:
        return indices

    return rule


def _every_input(node: ir.Node) -> tuple[int, ...]:
    return tuple(range(len(node.inputs)))


def _einsum_letters(equation: str, index: int, rank: int) -> list[str | None]:
    """The subscript of each axis of Einsum operand ``index`` (None under an ellipsis)."""
    term = equation.replace(" ", "").split("->")[0].split(",")[index]
    if "..." not in term:
        return list(term)
    before, after = term.split("...")
    return [*before, *([None] * (rank - len(before) - len(after))), *after]


def _einsum_axis(node: ir.Node, weight: ir.Value) -> int | None:
    """The last axis of a constant Einsum operand that the output keeps: its output channel
    (``hde`` in ``bshd,hde->bshe``: e). One scale per channel of the result; a contracted axis
    would mix scales in every output value. With none kept, one scale for the operand. Without
    an explicit output, Einsum keeps the subscripts that occur once. (An Einsum that is a plain
    matrix product was rewritten as MatMul before planning: EinsumToMatMulPass.)
    """
    attribute = node.attributes.get("equation")
    shape = weight.shape
    if attribute is None or shape is None:
        return None
    equation = attribute.as_string().replace(" ", "")
    index = next(i for i, v in enumerate(node.inputs) if v is weight)
    inputs = equation.split("->")[0]
    if "->" in equation:
        kept = set(equation.split("->")[1])
    else:
        subscripts = [c for c in inputs if c.isalpha()]
        kept = {c for c in subscripts if subscripts.count(c) == 1}
    letters = _einsum_letters(equation, index, len(shape))
    if len(letters) != len(shape):
        return None  # an equation that does not fit the operand: one scale, nothing assumed
    axes = [a for a, c in enumerate(letters) if c is not None and c in kept]
    return axes[-1] if axes else None


def _gemm_axis(node: ir.Node, _weight: ir.Value) -> int | None:
    trans_b = node.attributes.get("transB")
    return 0 if trans_b is not None and trans_b.as_int() else 1


def _matmul_axis(_node: ir.Node, weight: ir.Value) -> int | None:
    # onnxruntime's integer MatMul takes per-column scales only for a 2-D weight.
    shape = weight.shape
    return 1 if shape is not None and len(shape) == 2 else None


def _unit_gemm(node: ir.Node) -> bool:
    """onnxruntime's QGemm adds an int32 bias unscaled: only for alpha = beta = 1, no transA."""
    alpha, beta = node.attributes.get("alpha"), node.attributes.get("beta")
    trans_a = node.attributes.get("transA")
    return (
        (alpha is None or bool(np.isclose(alpha.as_float(), 1.0)))
        and (beta is None or bool(np.isclose(beta.as_float(), 1.0)))
        and (trans_a is None or trans_a.as_int() == 0)
    )


def _stored(weight_axis: AxisRule, weight_slots: SlotRule, dynamic_kernel: str = "") -> OpRule:
    return OpRule(
        kind=OpKind.WEIGHT_ONLY,
        activation_inputs=(),
        weight_axis=weight_axis,
        weight_slots=weight_slots,
        dynamic_kernel=dynamic_kernel,
    )


def _elementwise(kernel: str, *, every_input: bool = False, shares_scale: bool = False) -> OpRule:
    return OpRule(
        kind=OpKind.ELEMENTWISE,
        kernel=kernel,
        activation_inputs=None if every_input else (0,),
        shares_scale=shares_scale,
    )


_ORT_DYNAMIC_MATMUL = "DynamicQuantizeMatMul"

_ORT_RULES: dict[str, OpRule] = {
    "Conv": OpRule(
        kind=OpKind.COMPUTE, kernel="QLinearConv", weight_input=1, weight_axis=_axis(0), bias_input=2
    ),
    "MatMul": OpRule(
        kind=OpKind.COMPUTE,
        kernel="QLinearMatMul/MatMulIntegerToFloat",
        weight_input=1,
        weight_axis=_matmul_axis,
        output_required=False,
        dynamic_kernel=_ORT_DYNAMIC_MATMUL,
    ),
    "Gemm": OpRule(
        kind=OpKind.COMPUTE,
        kernel="QGemm",
        weight_input=1,
        weight_axis=_gemm_axis,
        bias_input=2,
        bias_fuses=_unit_gemm,
        output_required=False,
        dynamic_kernel=_ORT_DYNAMIC_MATMUL,
    ),
    # Ops that carry a large weight and have no integer kernel on onnxruntime 1.32's CPU
    # provider (its kernel registry lists no QLinearConvTranspose, no quantized GRU/RNN/Einsum,
    # and its QDQ selectors fuse none of them): the weight is stored int8 behind a
    # DequantizeLinear, per output channel (axis 1 of [C_in, C_out/group, k...] and of
    # [directions, gates x hidden, size]), in every mode. It is the only way to make them smaller,
    # and it costs time at every run (the weight is dequantized and, no longer a constant, not
    # pre-packed by the kernel): measured in bench/large_weight_ops.py, 1 thread, over several
    # runs on a loaded machine, RNN h256 x40 1.1x its float time, GRU 1.1-1.6x, a 128->64
    # ConvTranspose 1.2-1.5x, against 3.9-4.0x smaller. Kept in the speed modes too: without it
    # these weights have no smaller form at all (the size target), and auto's cost model
    # prices the dequantized weight (its "/dq-weight" kernels) when it compares modes. LSTM
    # alone has an integer form, DynamicQuantizeLSTM (plan.facts._dynamic_lstm); an Einsum that is a
    # matrix product is a MatMul by now (EinsumToMatMulPass).
    "ConvTranspose": _stored(_axis(1), _slots(1)),
    "LSTM": _stored(_axis(1), _slots(1, 2), dynamic_kernel="DynamicQuantizeLSTM"),
    "GRU": _stored(_axis(1), _slots(1, 2)),
    "RNN": _stored(_axis(1), _slots(1, 2)),
    "Einsum": _stored(_einsum_axis, _every_input),
    "Add": _elementwise("QLinearAdd", every_input=True),
    "Mul": _elementwise("QLinearMul", every_input=True),
    "Concat": _elementwise("QLinearConcat", every_input=True),
    "AveragePool": _elementwise("QLinearAveragePool"),
    "GlobalAveragePool": _elementwise("QLinearGlobalAveragePool"),
    "LeakyRelu": _elementwise("QLinearLeakyRelu"),
    "Sigmoid": _elementwise("QLinearSigmoid"),
    "Gather": OpRule(kind=OpKind.TABLE, kernel="Gather", activation_inputs=(), weight_input=0),
    "Relu": OpRule(kind=OpKind.ACTIVATION_FOLD),
    "Clip": OpRule(kind=OpKind.ACTIVATION_FOLD),
}
# One-input ops that carry their input's scale on every target here.
_MOVEMENT_OPS = (
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "MaxPool",
    "Resize",
    "Split",
)
for _op in (*_MOVEMENT_OPS, "Expand", "Tile"):
    _ORT_RULES[_op] = OpRule(kind=OpKind.DATA_MOVEMENT, kernel=_op)

_ORT_FLOAT_REASONS = {
    "Softmax": "float: probabilities near 1/n keep only a few of 256 levels at 8 bits",
    "LayerNormalization": "float: normalization divides by a data-dependent variance; no integer kernel",
    "BatchNormalization": "float: no integer kernel (fold it into the preceding Conv before quantizing)",
    "Div": "float: no integer kernel for Div",
    "Pow": "float: no integer kernel for Pow",
    "Sqrt": "float: no integer kernel for Sqrt",
    "Erf": "float: no integer kernel for Erf (GELU)",
    "Gelu": "float: no integer kernel for Gelu",
    "Tanh": "float: no integer kernel for Tanh",
    "Exp": "float: no integer kernel for Exp",
    "ReduceMean": "float: no integer kernel for ReduceMean",
    "Sub": "float: no integer kernel for Sub",
}

# onnxruntime's CPU execution provider, what its QDQ selectors fuse (onnxruntime 1.32):
# compute ops (Conv, MatMul, Gemm) with int8 weights and inputs, Conv with a quantized output too
# (QLinearConv), MatMul and Gemm with a float one allowed (MatMulIntegerToFloat, QGemm);
# element-wise integer kernels when every input is int8 already; data movement on int8 with its
# input's scale; Relu/Clip(0, x) folded into the preceding quantizer.
ORT_CPU = Target(
    name="ort-cpu",
    runtime="onnxruntime's CPU provider",
    rules=MappingProxyType(_ORT_RULES),
    float_reasons=MappingProxyType(_ORT_FLOAT_REASONS),
    # Its QGemm fusion leaves a Gemm float when the weight's DequantizeLinear has no zero point
    # (measured: Gemm + DequantizeLinear instead of QGemm); QLinearConv and the MatMul fusions
    # read a missing one as 0.
    explicit_zero_point_ops=frozenset({"Gemm"}),
)


def _never(_node: ir.Node) -> bool:
    return False


def _reads_as_silu(value: ir.Value) -> bool:
    """Whether ``value``'s readers are exactly a SiLU: Sigmoid(x) and Mul(x, Sigmoid(x))."""
    readers = [use.node for use in value.uses()]
    sigmoids = [n for n in readers if n.op_type == "Sigmoid" and n.domain in ("", "ai.onnx")]
    if len(readers) != 2 or len(sigmoids) != 1:
        return False
    gate = sigmoids[0].outputs[0]
    return any(n.op_type == "Mul" and {id(v) for v in n.inputs} == {id(value), id(gate)} for n in readers)


# docs/openvino.md rule 8: the channels from which a 3x3 Conv + SiLU runs faster on OpenVINO's CPU
# plugin with its output quantized too (bench/openvino_convs.py: 64 channels 0.86-0.98x bf16, 128
# 0.81-0.84x, 256 0.61-0.70x, against 1.27-1.41x, 1.35-1.46x, 0.98-1.10x with the SiLU fused after
# a float output; at 16 and 32 channels the pair does not pay: 1.03-1.08x, 1.30-1.36x).
_SILU_PAIR_MIN_CHANNELS = 64


def _spatial_silu_conv(node: ir.Node) -> bool:
    """Rule 8: a Conv with a kernel wider than 1x1 (measured at 3x3; a 1x1 Conv gains nothing from
    the pair) and at least 64 input channels, read by a SiLU."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    shape = () if weight is None or weight.shape is None else tuple(weight.shape)
    dims = [d for d in shape if isinstance(d, int)]
    if len(dims) < 3 or len(dims) != len(shape):
        return False
    group = node.attributes.get("group")
    channels = dims[1] * (1 if group is None else group.as_int())
    kernel = int(np.prod(dims[2:]))
    return kernel > 1 and channels >= _SILU_PAIR_MIN_CHANNELS and _reads_as_silu(node.outputs[0])


def _compute(
    kernel: str, weight_axis: AxisRule, *, bias_input: int | None = None, matrix: bool = False
) -> OpRule:
    """A layer quantized on its inputs only: int8 input and weights, float bias, and an output
    pair only where a reader takes int8 (Target.output_pair_rule). A matrix product's output
    is never int8: its bias Add (a separate node after MatMul) is fused into the layer, and an
    integer Add there would only add a rounding step."""
    return OpRule(
        kind=OpKind.COMPUTE,
        kernel=kernel,
        weight_input=1,
        weight_axis=weight_axis,
        bias_input=bias_input,
        bias_fuses=_never,  # the bias stays float: the runtime quantizes or folds it itself
        output_required=not matrix,
    )


def _float_reasons(own: dict[str, str], name: str) -> Mapping[str, str]:
    """A target's float reasons: its own, then onnxruntime's (true of these ops there too: no
    integer form in the rules), each naming the target."""
    shared = {op: r.replace("float:", f"float ({name}):", 1) for op, r in _ORT_FLOAT_REASONS.items()}
    return MappingProxyType({**shared, **own})


def _movement(rules: dict[str, OpRule], where: str) -> None:
    for op in _MOVEMENT_OPS:
        rules[op] = OpRule(kind=OpKind.DATA_MOVEMENT, kernel=f"{op}, {where}")


# OpenVINO's CPU plugin (2026.4), by the rules read from its compiled runtime graph in
# docs/openvino.md: a pair only where an integer kernel reads the tensor (rule 2), the integer
# readers being the heavy layers, Add/Sub, Concat, pooling and data movement; ConvTranspose an
# integer layer (rule 7); the bias float (rule 5); final layers quantized (rule 6); every
# activation zero point 0, uint8 from 0 for non-negative tensors (rule 1); one pair per carried
# chain, at its root (rule 3); Add and Concat integer on any int8 input, a Concat's inputs sharing
# one scale (rule 4); a 3x3 Conv of at least 64 input channels read by a SiLU keeps its output
# pair, which the plugin fuses into the Convolution and runs faster than the SiLU alone (rule 8).
# Relu/Clip(0, x) still fold into a uint8 quantizer from 0, which saturates at 0 exactly as they do.
_OV = "OpenVINO CPU"
_OPENVINO_RULES: dict[str, OpRule] = {
    "Conv": replace(
        _compute(f"{_OV} Convolution, docs/openvino.md rule 2", _axis(0), bias_input=2),
        keeps_output_pair=_spatial_silu_conv,
        kept_output_reason="int8 input, weights and output: a 3x3 Conv before a SiLU runs faster on "
        "OpenVINO with its output quantized than with the SiLU fused after a float output "
        "(docs/openvino.md rule 8)",
    ),
    "ConvTranspose": _compute(f"{_OV} Deconvolution, docs/openvino.md rule 7", _axis(1), bias_input=2),
    "MatMul": _compute(f"{_OV} MatMul/FullyConnected, docs/openvino.md rule 2", _matmul_axis, matrix=True),
    "Gemm": _compute(f"{_OV} FullyConnected, docs/openvino.md rule 2", _gemm_axis, bias_input=2, matrix=True),
    # an embedding table read as int8, as the stand-in kept it (Gather is an integer reader there)
    "Gather": OpRule(kind=OpKind.TABLE, kernel="Gather", activation_inputs=(), weight_input=0),
    # onnxruntime's form, which OpenVINO's ONNX reader runs too: ddddocr's LSTM as
    # DynamicQuantizeLSTM ran 0.86x OV fp32 against 0.91-0.98x as a float LSTM (NNCF's form and
    # this target's before), 3.95x smaller against 2.07x (bench/targets.py, docs/openvino.md)
    "LSTM": _ORT_RULES["LSTM"],
    "Add": _elementwise(f"{_OV} Eltwise Add, docs/openvino.md rule 2", every_input=True),
    "Sub": _elementwise(f"{_OV} Eltwise Subtract, docs/openvino.md rule 2", every_input=True),
    "Concat": _elementwise(f"{_OV} Concat, docs/openvino.md rule 4", every_input=True, shares_scale=True),
    "AveragePool": _elementwise(f"{_OV} AvgPool, docs/openvino.md rule 2"),
    "GlobalAveragePool": _elementwise(f"{_OV} AvgPool, docs/openvino.md rule 2"),
    "Relu": OpRule(kind=OpKind.ACTIVATION_FOLD),
    "Clip": OpRule(kind=OpKind.ACTIVATION_FOLD),
}
_movement(_OPENVINO_RULES, "docs/openvino.md rule 3")

OPENVINO = Target(
    name="openvino",
    runtime="OpenVINO's CPU plugin",
    rules=MappingProxyType(_OPENVINO_RULES),
    float_reasons=_float_reasons(
        {
            "Sigmoid": "float: OpenVINO runs Sigmoid in float; a pair on it costs a Convert and a "
            "Subtract (docs/openvino.md rule 2)",
            "Mul": "float: OpenVINO runs Mul in float (docs/openvino.md rule 2)",
        },
        "openvino",
    ),
    keep_final_outputs_float=False,  # rule 6: no output pair on a final layer, so nothing clips
    zero_point_zero=True,
    nonnegative_type=ir.DataType.UINT8,
    one_pair_per_chain=True,  # rule 3
    elementwise_joins_any=True,  # rule 4: every input of an integer Add / Concat is int8
    output_pair_rule="int8 input and weights, float output: no reader takes it as int8, and OpenVINO "
    "gets a pair only where an integer kernel reads the tensor (docs/openvino.md rule 2)",
    activation_types=frozenset({ir.DataType.UINT8, ir.DataType.INT8}),
    engine=Engine.OPENVINO,  # checked, evaluated and timed on the CPU plugin itself
)

# TensorRT's explicit quantization, by the rules docs/tensorrt.md writes down with their sources
# (the developer guide's "Explicit Quantization" and "Q/DQ Layer-Placement Recommendations",
# onnx-tensorrt's operator support matrix). "rule N" in a kernel or reason is that file's rule N.
_TRT = "TensorRT"
_TRT_MD = "docs/tensorrt.md"


def _trt_matmul_axis(node: ir.Node, weight: ir.Value) -> int | None:
    """Rule 2: per-channel weights for a MatMul only when its second input is a constant and both
    inputs are 2-D (TensorRT: "per-channel weight quantization for ... MatMul where the second
    input is constant and both input matrices are 2D"); otherwise one scale for the weight."""
    data = node.inputs[0]
    shape, data_shape = weight.shape, None if data is None else data.shape
    both_2d = shape is not None and len(shape) == 2 and data_shape is not None and len(data_shape) == 2
    return 1 if both_2d else None


def _conv_side(node: ir.Node) -> tuple[int, ir.Node] | None:
    """Rule 7: the input of an Add that TensorRT fuses into the Conv producing it, and that Conv:
    the first input written by a Conv (or by a BatchNormalization of a Conv's output, which
    TensorRT folds into it) that nothing else reads. None: no Conv to fuse into."""
    for index, value in enumerate(node.inputs):
        producer = None if value is None or len(value.uses()) != 1 else value.producer()
        if producer is not None and producer.op_type == "BatchNormalization":
            source = producer.inputs[0]
            producer = None if source is None or len(source.uses()) != 1 else source.producer()
        if producer is not None and producer.op_type == "Conv":
            return index, producer
    return None


def _trt_layer(
    kernel: str, weight_axis: AxisRule, *, bias_input: int | None = None, matrix: bool = False
) -> OpRule:
    return _compute(f"{_TRT} {kernel}, {_TRT_MD} rule 4", weight_axis, bias_input=bias_input, matrix=matrix)


_TRT_CONSERVATIVE = f"TensorRT: be conservative adding Q/DQ, {_TRT_MD} rule 8"
_TENSORRT_RULES: dict[str, OpRule] = {
    "Conv": _trt_layer("int8 convolution", _axis(0), bias_input=2),
    "ConvTranspose": _trt_layer("int8 deconvolution", _axis(1), bias_input=2),
    "MatMul": _trt_layer("int8 matrix multiply", _trt_matmul_axis, matrix=True),
    "Gemm": _trt_layer("int8 fully connected", _gemm_axis, bias_input=2, matrix=True),
    "Add": OpRule(
        kind=OpKind.ELEMENTWISE,
        kernel=f"{_TRT} int8 element-wise Add, {_TRT_MD} rule 8",
        activation_inputs=None,
        fused_input=_conv_side,
        fused_kernel=f"{_TRT}'s Conv + residual Add fusion, {_TRT_MD} rule 7",
        float_rule=_TRT_CONSERVATIVE,
    ),
    "AveragePool": replace(
        _elementwise(f"{_TRT} int8 pooling, {_TRT_MD} rule 8"), float_rule=_TRT_CONSERVATIVE
    ),
    "GlobalAveragePool": replace(
        _elementwise(f"{_TRT} int8 pooling, {_TRT_MD} rule 8"), float_rule=_TRT_CONSERVATIVE
    ),
}

_TRT_FUSED = (
    "float (tensorrt): TensorRT fuses it into the layer before it, so no Q/DQ goes between them; "
    f"the next layer's input pair comes after it ({_TRT_MD} rule 6)"
)
_TRT_MOVED = (
    "float (tensorrt): TensorRT moves Q/DQ across it itself (Q/DQ propagation), so no pair goes "
    f"around it; the next layer's input pair comes after it ({_TRT_MD} rule 9)"
)
_TRT_EPILOGUE = (
    "float (tensorrt): runs in float on the layer's float output; no pair on a layer's output "
    f"that only float ops read ({_TRT_MD} rule 5)"
)
_TRT_FLOAT_REASONS = {
    **{op: _TRT_FUSED for op in ("Relu", "BatchNormalization", "Clip", "LeakyRelu")},
    **{op: _TRT_MOVED for op in (*_MOVEMENT_OPS, "Concat", "Expand", "Tile", "Pad", "Gather")},
    **{op: _TRT_EPILOGUE for op in ("Sigmoid", "Mul", "Tanh", "HardSwish", "HardSigmoid")},
}

TENSORRT = Target(
    name="tensorrt",
    runtime="TensorRT",
    rules=MappingProxyType(_TENSORRT_RULES),
    float_reasons=_float_reasons(_TRT_FLOAT_REASONS, "tensorrt"),
    keep_final_outputs_float=False,  # rule 5: no pair on a layer's output, so nothing clips
    zero_point_zero=True,  # rule 1
    # Rule 1: the parser's rules are stated for Q/DQ nodes with their (zero) zero points; without a
    # GPU here to show that it takes them left out, they are written.
    omits_zero_points=False,
    nonnegative_type=None,  # rule 1: int8 only, a non-negative tensor is int8 symmetric too
    output_pair_rule=f"int8 input and weights ({_TRT_MD} rule 4), float output: no reader takes it as "
    f"int8, and TensorRT quantizes a weighted layer's inputs, not its output ({_TRT_MD} rule 5)",
    activation_types=frozenset({ir.DataType.INT8}),
    max_opset=20,  # rule 3
    max_opset_source=f"TensorRT 10.1's ONNX parser ({_TRT_MD} rule 3)",
    # Rule 4: int8 input and weights on every weighted layer; no run-time (dynamic, mixed) or
    # weight-only quantization in TensorRT's explicit int8.
    modes=frozenset({"static"}),
    modes_rule=f"Q/DQ on every input of a weighted layer, {_TRT_MD} rule 4",
    # onnxruntime fuses none of this placement (rules 5-9 are TensorRT's): its prediction would
    # call every TensorRT model slower than float. bench/tensorrt.sh times it with trtexec.
    predicted_by_onnxruntime=False,
)

TARGETS: Mapping[str, Target] = MappingProxyType({t.name: t for t in (ORT_CPU, OPENVINO, TENSORRT)})
