"""Deciding what to quantize: an op-rule registry and :func:`select`.

Placement follows what onnxruntime's CPU provider fuses into integer kernels (its QDQ selectors):

* compute ops (Conv, MatMul, Gemm) are the reason to quantize at all: int8 weights and inputs;
  Conv's output must be quantized too for QLinearConv, MatMul's and Gemm's need not be
  (MatMulIntegerToFloat / QGemm take a float output);
* element-wise ops with integer kernels (Add, Mul, Concat, pooling, Sigmoid, LeakyRelu) are
  quantized only when every input is already quantized: then the integer path continues, while
  quantizing a float input would add a rounding step and a Q node and save nothing;
* data-movement ops (Reshape, Transpose, MaxPool, Resize, ...) carry their input's scale, so
  onnxruntime drops the Q/DQ pair around them and moves int8 data;
* Relu and Clip(0, x) after a quantized output are folded into that output's range: a uint8
  (or int8 from -128) quantizer saturating at zero is exactly a Relu;
* Gather on a constant table reads an int8 table (the Q/DQ around Gather share the table's scale);
* ops that carry a large weight but have no integer kernel (GRU, RNN, ConvTranspose, Einsum with a
  constant operand) store it int8 behind a DequantizeLinear in every mode; LSTM runs as
  DynamicQuantizeLSTM (outside weight-only mode), which is faster than the float LSTM.

That is the static mode. The dynamic mode instead gives MatMul/Gemm int8 weights and lets
onnxruntime quantize their inputs at run time (DynamicQuantizeLinear + MatMulInteger, fused into
DynamicQuantizeMatMul); mixed combines dynamic MatMul/Gemm with static everything else; and
weight-only stores every weight in int8 behind a DequantizeLinear and computes in float. In the
dynamic and weight-only modes a Gather table is stored in int8 and only the gathered rows are
dequantized.

Everything else stays float, and every node gets a sentence saying why.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import onnx_ir as ir

from quantcli.config import QuantConfig, QuantMode
from quantcli.errors import ConfigError

__all__ = [
    "ActivationSpec",
    "BiasSpec",
    "DynamicSpec",
    "Fold",
    "LstmSpec",
    "NodeDecision",
    "NodeRole",
    "QuantPlan",
    "WeightSpec",
    "candidate_tensors",
    "matches",
    "select",
]


class NodeRole(StrEnum):
    """What a node becomes in the quantized model."""

    INTEGER = "integer"  # runs as an integer kernel after fusion
    DYNAMIC = "dynamic"  # int8 weights, input quantized at run time, integer kernel
    WEIGHT_ONLY = "weight-only"  # int8 weights, float compute
    CARRY = "carry"  # moves int8 data with its input's scale
    FOLDED = "folded"  # removed; its effect is the saturation of a quantizer
    FLOAT = "float"


class _Kind(StrEnum):
    COMPUTE = "compute"
    ELEMENTWISE = "elementwise"
    DATA_MOVEMENT = "data-movement"
    WEIGHT_ONLY = "weight-only"
    TABLE = "table"
    ACTIVATION_FOLD = "activation-fold"


AxisRule = Callable[[ir.Node, ir.Value], int | None]
SlotRule = Callable[[ir.Node], tuple[int, ...]]


@dataclass(frozen=True)
class _OpRule:
    kind: _Kind
    kernel: str  # onnxruntime kernel name shown in reasons
    activation_inputs: tuple[int, ...] | None = (0,)  # None: every input
    weight_input: int | None = None
    weight_axis: AxisRule | None = None
    bias_input: int | None = None
    output_required: bool = True  # the kernel needs a quantized output to fuse
    # _Kind.WEIGHT_ONLY: the inputs that may hold a weight stored int8 behind a DequantizeLinear.
    weight_slots: SlotRule | None = None


def _axis(index: int) -> AxisRule:
    def rule(_node: ir.Node, weight: ir.Value) -> int | None:
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


_RULES: dict[str, _OpRule] = {
    "Conv": _OpRule(_Kind.COMPUTE, "QLinearConv", weight_input=1, weight_axis=_axis(0), bias_input=2),
    "MatMul": _OpRule(
        _Kind.COMPUTE,
        "QLinearMatMul/MatMulIntegerToFloat",
        weight_input=1,
        weight_axis=_matmul_axis,
        output_required=False,
    ),
    "Gemm": _OpRule(
        _Kind.COMPUTE, "QGemm", weight_input=1, weight_axis=_gemm_axis, bias_input=2, output_required=False
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
    # alone has an integer form, DynamicQuantizeLSTM (see _lstm_spec); an Einsum that is a
    # matrix product is a MatMul by now (EinsumToMatMulPass).
    "ConvTranspose": _OpRule(
        _Kind.WEIGHT_ONLY, "", activation_inputs=(), weight_axis=_axis(1), weight_slots=_slots(1)
    ),
    "LSTM": _OpRule(
        _Kind.WEIGHT_ONLY,
        "DynamicQuantizeLSTM",
        activation_inputs=(),
        weight_axis=_axis(1),
        weight_slots=_slots(1, 2),
    ),
    "GRU": _OpRule(
        _Kind.WEIGHT_ONLY, "", activation_inputs=(), weight_axis=_axis(1), weight_slots=_slots(1, 2)
    ),
    "RNN": _OpRule(
        _Kind.WEIGHT_ONLY, "", activation_inputs=(), weight_axis=_axis(1), weight_slots=_slots(1, 2)
    ),
    "Einsum": _OpRule(
        _Kind.WEIGHT_ONLY, "", activation_inputs=(), weight_axis=_einsum_axis, weight_slots=_every_input
    ),
    "Add": _OpRule(_Kind.ELEMENTWISE, "QLinearAdd", activation_inputs=None),
    "Mul": _OpRule(_Kind.ELEMENTWISE, "QLinearMul", activation_inputs=None),
    "Concat": _OpRule(_Kind.ELEMENTWISE, "QLinearConcat", activation_inputs=None),
    "AveragePool": _OpRule(_Kind.ELEMENTWISE, "QLinearAveragePool"),
    "GlobalAveragePool": _OpRule(_Kind.ELEMENTWISE, "QLinearGlobalAveragePool"),
    "LeakyRelu": _OpRule(_Kind.ELEMENTWISE, "QLinearLeakyRelu"),
    "Sigmoid": _OpRule(_Kind.ELEMENTWISE, "QLinearSigmoid"),
    "Gather": _OpRule(_Kind.TABLE, "Gather", activation_inputs=(), weight_input=0),
    "Relu": _OpRule(_Kind.ACTIVATION_FOLD, ""),
    "Clip": _OpRule(_Kind.ACTIVATION_FOLD, ""),
}
for _op in (
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Expand", "Tile",
    "MaxPool", "Resize", "Split",
):  # fmt: skip
    _RULES[_op] = _OpRule(_Kind.DATA_MOVEMENT, _op)

# Conv/MatMul/Gemm with fewer constant weights than this stay float (e.g. a detector's fixed
# 16-tap expectation Conv): int8 would save nothing and add a rounding step.
_MIN_COMPUTE_WEIGHTS = 64

# Constant inputs of float element-wise ops smaller than this stay float: a scale and zero point
# would outweigh the bytes saved.
_MIN_STORED_CONSTANT = 256

_WEIGHT_ONLY_MODE = "int8 weights, float compute (weight-only mode)"

# Why common float-only ops stay float, in words a user can check.
_FLOAT_REASONS = {
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


@dataclass(frozen=True)
class NodeDecision:
    """What happens to one node, and why, in a sentence the report shows."""

    name: str
    op_type: str
    role: NodeRole
    reason: str


@dataclass(frozen=True)
class WeightSpec:
    """A constant stored as int8: per channel along ``axis`` or per tensor (``axis`` None)."""

    name: str
    axis: int | None
    symmetric: bool = True  # False: an activation-slot constant, quantized like an activation


@dataclass(frozen=True)
class BiasSpec:
    """A Conv/Gemm bias stored as int32 with scale = input scale x weight scale."""

    name: str
    node: str
    activation: str
    weight: str


@dataclass(frozen=True)
class ActivationSpec:
    """A tensor that gets a QuantizeLinear/DequantizeLinear pair.

    ``range_of`` names the tensor whose calibrated range sets the parameters (itself, or the root
    of a data-movement chain, so that onnxruntime sees equal parameters and drops the pair);
    ``table`` instead names a quantized Gather table whose parameters the tensor shares.
    """

    name: str
    range_of: str
    nonnegative: bool = False
    table: str | None = None
    # The Q/DQ replace the tensor as graph output (needed for the producer to fuse).
    replaces_graph_output: bool = False


@dataclass(frozen=True)
class Fold:
    """A Relu/Clip node removed because the quantizer on its input saturates the same way."""

    node: str
    input: str
    output: str


@dataclass(frozen=True)
class DynamicSpec:
    """A MatMul/Gemm computed as MatMulInteger on its input quantized at run time.

    The node is found by its ``output``; ``weight`` is its constant [K, N] weight (stored
    transposed for a Gemm with transB), ``bias`` a constant added after (Gemm's C), ``alpha`` and
    ``beta`` Gemm's factors (folded into the weight scale and the bias).
    """

    output: str
    input: str
    weight: str
    transpose_weight: bool = False
    bias: str | None = None
    alpha: float = 1.0
    beta: float = 1.0


@dataclass(frozen=True)
class LstmSpec:
    """An LSTM run as com.microsoft DynamicQuantizeLSTM on its int8 W and R.

    The node is found by ``output``, its first named output; ``weight`` and ``recurrence`` are
    its constant W and R, which the plan also stores as int8 (their parameters come from there).
    """

    output: str
    weight: str
    recurrence: str


@dataclass(frozen=True)
class QuantPlan:
    """The full decision for one model; passes carry it out without deciding anything."""

    decisions: tuple[NodeDecision, ...]
    activations: tuple[ActivationSpec, ...]
    weights: tuple[WeightSpec, ...]
    biases: tuple[BiasSpec, ...]
    folds: tuple[Fold, ...]
    observed: tuple[str, ...] = field(default=())
    mode: QuantMode = QuantMode.STATIC
    dynamic: tuple[DynamicSpec, ...] = field(default=())
    # Tables stored as int8 whose Gather reads the integers and dequantizes only the rows.
    gathered_tables: tuple[str, ...] = field(default=())
    lstm: tuple[LstmSpec, ...] = field(default=())
    # Nodes select() was told to leave float (a stage after the rules: the cost model, a recorded
    # decision), with their reasons, so a plan built from this one can keep them float too.
    kept_float: tuple[tuple[str, str], ...] = field(default=())

    @property
    def quantized_op_counts(self) -> dict[str, int]:
        counts = Counter(
            d.op_type
            for d in self.decisions
            if d.role in (NodeRole.INTEGER, NodeRole.DYNAMIC, NodeRole.WEIGHT_ONLY)
        )
        return dict(sorted(counts.items()))

    @property
    def is_noop(self) -> bool:
        return not self.weights and not self.activations


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    if value is None or value.is_graph_input():
        return None
    return value.const_value if value.is_initializer() else None


def _is_zero_constant(value: ir.Value | None) -> bool:
    tensor = _constant(value)
    return tensor is not None and tensor.size == 1 and float(tensor.numpy().reshape(())) == 0.0


def _foldable_activation(node: ir.Node) -> bool:
    if node.op_type == "Relu":
        return True
    # Clip(0, max): Relu6 and friends. Only a lower bound of exactly 0 is reproduced by saturation.
    inputs = list(node.inputs)
    return node.op_type == "Clip" and len(inputs) >= 2 and _is_zero_constant(inputs[1])


class _Selector:
    """The state of one :func:`select` run; not part of the API."""

    def __init__(self, model: ir.Model, config: QuantConfig, keep_float: Mapping[str, str]) -> None:
        self.graph = model.graph
        self.config = config
        self.keep_float = keep_float
        self.nodes = list(self.graph)
        self.decisions: dict[int, NodeDecision] = {}
        self.integer: set[int] = set()  # ids of nodes that run as integer kernels
        # Tensors that will be int8 anyway -> the tensor whose range they use
        # ("table:NAME" for rows gathered from a quantized table).
        self.available: dict[str, str] = {}
        self.nonnegative: set[str] = set()
        self.folds: dict[int, Fold] = {}
        self.dynamic: dict[int, DynamicSpec] = {}
        self.lstm: dict[int, LstmSpec] = {}
        # Integer-input compute nodes whose output stays float (see keep_final_outputs_float).
        self.float_output: set[int] = set()
        self.graph_outputs = {v.name for v in self.graph.outputs}

    # -- eligibility ---------------------------------------------------------------------------
    def float_reason(self, node: ir.Node, rule: _OpRule | None) -> str | None:
        """Why ``node`` can never be quantized, or None if it may be."""
        if node.domain not in ("", "ai.onnx"):
            return f"float: custom operator domain '{node.domain}'"
        if matches(node, self.config.exclude):
            return "float: excluded by the user"
        if (node.name or "") in self.keep_float:
            return self.keep_float[node.name or ""]
        follows = rule is not None and rule.kind in (_Kind.DATA_MOVEMENT, _Kind.ACTIVATION_FOLD)
        if self.config.include and not follows and not matches(node, self.config.include):
            return "float: not in --include"
        if rule is None:
            return _FLOAT_REASONS.get(node.op_type, f"float: no integer kernel for {node.op_type}")
        # An optional output may be omitted (an LSTM read only through Y_h): look at the first one.
        if not _is_float(next((out for out in node.outputs if out.name), None)):
            return "float: works on integer or non-float tensors"
        if any(not _is_float(node.inputs[i]) for i in self.activation_slots(node, rule)):
            return "float: an input is not a float32 tensor"
        if rule.weight_slots is not None:
            return None if self.stored_weights(node, rule) else self.no_stored_weight_reason(node, rule)
        if rule.weight_input is not None and rule.kind is _Kind.COMPUTE:
            weight = node.inputs[rule.weight_input] if len(node.inputs) > rule.weight_input else None
            if not _is_float(weight):
                return "float: its weight is not a float32 tensor"
            tensor = _constant(weight)
            if tensor is not None and tensor.size < _MIN_COMPUTE_WEIGHTS:
                return f"float: {tensor.size} weights are too few for int8 to gain anything"
        return None

    @staticmethod
    def stored_weights(node: ir.Node, rule: _OpRule) -> list[ir.Value]:
        """The weights of an op without integer kernel worth storing in int8: float constants
        of at least _MIN_COMPUTE_WEIGHTS values (a bias or a peephole is left alone: it is not
        in the rule's slots). A constant read through two slots is listed once."""
        assert rule.weight_slots is not None
        found: list[ir.Value] = []
        for index in rule.weight_slots(node):
            value = node.inputs[index] if index < len(node.inputs) else None
            tensor = _constant(value)
            if value is None or tensor is None or not _is_float(value) or tensor.size < _MIN_COMPUTE_WEIGHTS:
                continue
            if all(value is not seen for seen in found):
                found.append(value)
        return found

    @staticmethod
    def no_stored_weight_reason(node: ir.Node, rule: _OpRule) -> str:
        assert rule.weight_slots is not None
        slots = [node.inputs[i] for i in rule.weight_slots(node) if i < len(node.inputs)]
        constants = [(v, t) for v in slots if v is not None and (t := _constant(v)) is not None]
        if not constants:
            return "float: its weight is computed at run time"
        floats = [t.size for v, t in constants if _is_float(v)]
        if not floats:
            return "float: its weight is not a float32 tensor"
        return f"float: {max(floats)} weights are too few for int8 to gain anything"

    @staticmethod
    def activation_slots(node: ir.Node, rule: _OpRule) -> list[int]:
        inputs = node.inputs
        if rule.activation_inputs is None:
            return [i for i, v in enumerate(inputs) if v is not None]
        slots = [i for i in rule.activation_inputs if i < len(inputs) and inputs[i] is not None]
        weight = rule.weight_input
        if rule.kind is _Kind.COMPUTE and weight is not None and _constant(inputs[weight]) is None:
            slots.append(weight)  # e.g. attention's Q x K^T: both sides are activations
        return slots

    def decide(self, node: ir.Node, role: NodeRole, reason: str) -> None:
        self.decisions[id(node)] = NodeDecision(node.name or "", node.op_type, role, reason)

    def make_integer(self, node: ir.Node, reason: str) -> None:
        self.integer.add(id(node))
        self.decide(node, NodeRole.INTEGER, reason)
        rule = _RULES[node.op_type]
        if rule.kind is _Kind.TABLE:
            table = node.inputs[0]
            assert table is not None
            self.available[node.outputs[0].name or ""] = f"table:{table.name}"
        elif rule.output_required:
            for out in node.outputs:
                self.available[out.name or ""] = out.name or ""

    # -- selection -----------------------------------------------------------------------------
    def run(self) -> QuantPlan:
        pending = []
        for node in self.nodes:
            rule = _RULES.get(node.op_type)
            reason = self.float_reason(node, rule)
            if reason is not None:
                self.decide(node, NodeRole.FLOAT, reason)
            elif rule is not None and rule.kind is _Kind.COMPUTE:
                self.place_compute(node, rule)
            elif rule is not None and rule.kind is _Kind.WEIGHT_ONLY:
                self.place_stored(node, rule)
            elif rule is not None and rule.kind is _Kind.TABLE and self.rows_dequantized(node):
                self.decide(node, NodeRole.WEIGHT_ONLY, "int8 table: only the gathered rows are dequantized")
            else:
                pending.append(node)
        # Element-wise ops, data movement and folds depend on their inputs being int8, which may
        # be settled only later in graph order: repeat until nothing changes.
        changed = True
        while changed:
            changed = False
            for node in pending:
                if id(node) not in self.decisions and self.try_join(node):
                    changed = True
        for node in pending:
            if id(node) not in self.decisions:
                self.decide(node, NodeRole.FLOAT, self.undecided_reason(node))
        self.prune_dead_ends()
        self.keep_final_outputs_float()
        return self.build()

    def keep_final_outputs_float(self) -> None:
        """Leave float the output of a Conv from which no int8 reader can be reached.

        Such an output flows to the model's outputs through float ops only (a detector's class
        head, a segmentation map). Quantizing it would clip every value beyond what calibration
        saw, e.g. a class score stronger than any seen while calibrating, and no integer kernel
        downstream gains from it. The Conv stays float, weights included (see below). A Conv whose output
        reaches another integer kernel through float ops (a hard-swish between two Convs) keeps
        its integer kernel, and so does one whose output reaches another layer with quantized
        weights (PP-OCR's last Conv feeds two weight-only ConvTransposes): its values are features
        on their way to more layers, not the model's scores. Visited in reverse graph order: each
        Conv's successors are settled.
        """
        memo: dict[str, bool] = {}
        layers: dict[str, bool] = {}
        for node in reversed(self.nodes):
            rule = _RULES.get(node.op_type)
            if rule is None or rule.kind is not _Kind.COMPUTE or not rule.output_required:
                continue
            if id(node) not in self.integer or any(
                self.reaches_int8(out, memo) or self.reaches_layer(out, layers) for out in node.outputs
            ):
                continue
            # It stays among the integer nodes for this pass: a Conv before it keeps its integer
            # kernel (and a DequantizeLinear feeds this one) instead of every Conv up the chain
            # turning float in turn.
            self.float_output.add(id(node))
            self.withdraw_output(node)
            # Not weight-only: onnxruntime keeps a DequantizeLinear of a weight unfolded, so the
            # float kernel gets a fresh weight every run and cannot pre-pack it or use its
            # blocked-layout Conv (PP-OCRv4 det: one such Conv took 24 of 146 ms, measured by
            # bench/cost_model.py's profiles). A float Conv with its float weight is faster.
            self.decide(
                node,
                NodeRole.FLOAT,
                "float: no integer kernel after it, and a quantized output would clip values beyond "
                "the calibrated range; a weight-only Conv would run slower than float",
            )

    def withdraw_output(self, node: ir.Node) -> None:
        """``node``'s output will not be quantized after all: it is no longer int8, and a
        Relu/Clip folded into its quantizer must run again as a node."""
        for out in node.outputs:
            self.available.pop(out.name or "", None)
            for use in out.uses():
                if id(use.node) in self.folds:
                    del self.folds[id(use.node)]
                    self.nonnegative.difference_update(o.name or "" for o in use.node.outputs)
                    for folded_out in use.node.outputs:
                        self.available.pop(folded_out.name or "", None)
                    self.decide(use.node, NodeRole.FLOAT, "float: its input is not quantized")

    def reaches_layer(self, value: ir.Value, memo: dict[str, bool]) -> bool:
        """Whether a node downstream of ``value`` is a layer whose weights are quantized (a Conv,
        ConvTranspose, recurrent or matrix op not left float), whatever its compute."""
        name = value.name or ""
        if name not in memo:
            memo[name] = False  # a cycle cannot occur in a graph; guards re-entry all the same
            memo[name] = any(
                (
                    (rule := _RULES.get(use.node.op_type)) is not None
                    and rule.kind in (_Kind.COMPUTE, _Kind.WEIGHT_ONLY)
                    and self.decisions.get(id(use.node)) is not None
                    and self.decisions[id(use.node)].role
                    in (NodeRole.INTEGER, NodeRole.WEIGHT_ONLY, NodeRole.DYNAMIC)
                    and id(use.node) not in self.float_output
                )
                or any(self.reaches_layer(out, memo) for out in use.node.outputs)
                for use in value.uses()
            )
        return memo[name]

    def reaches_int8(self, value: ir.Value, memo: dict[str, bool]) -> bool:
        """Whether a node downstream of ``value`` runs an integer kernel on int8 input."""
        name = value.name or ""
        if name not in memo:
            memo[name] = any(
                # A float-output Conv counts: it still reads its input as int8.
                (
                    id(use.node) in self.integer
                    and use.idx in self.activation_slots(use.node, _RULES[use.node.op_type])
                )
                or any(self.reaches_int8(out, memo) for out in use.node.outputs)
                for use in value.uses()
            )
        return memo[name]

    def prune_dead_ends(self) -> None:
        """Return to float every integer element-wise op after which no node takes int8.

        Its integer kernel would only add a rounding step and a quantizer whose range is whatever
        calibration saw: a final Sigmoid calibrated on images without confident detections
        clips every stronger score to the calibrated maximum. Visited in reverse graph order so
        each node's consumers are settled first.
        """
        for node in reversed(self.nodes):
            rule = _RULES.get(node.op_type)
            if rule is None or rule.kind is not _Kind.ELEMENTWISE or id(node) not in self.integer:
                continue
            if any(self.takes_int8(out) for out in node.outputs):
                continue
            self.integer.discard(id(node))
            self.withdraw_output(node)
            if self.large_constant_inputs(node):
                self.decide(
                    node,
                    NodeRole.WEIGHT_ONLY,
                    "int8 constant input, float compute: nothing after it takes int8",
                )
            else:
                self.decide(
                    node,
                    NodeRole.FLOAT,
                    "float: nothing after it takes int8, so an integer kernel saves nothing",
                )

    @staticmethod
    def large_constant_inputs(node: ir.Node) -> list[ir.Value]:
        """Float constants big enough that int8 storage saves more than its scale costs."""
        return [
            v
            for v in node.inputs
            if v is not None
            and _is_float(v)
            and (t := _constant(v)) is not None
            and t.size >= _MIN_STORED_CONSTANT
        ]

    def takes_int8(self, value: ir.Value) -> bool:
        """Whether some consumer of ``value`` reads it as int8 in this plan."""
        for use in value.uses():
            consumer = use.node
            decision = self.decisions.get(id(consumer))
            if decision is None:
                continue
            if id(consumer) in self.integer:
                rule = _RULES[consumer.op_type]
                if use.idx in self.activation_slots(consumer, rule):
                    return True
            elif (
                decision.role in (NodeRole.CARRY, NodeRole.FOLDED)
                and use.idx == 0
                and any(self.takes_int8(out) for out in consumer.outputs)
            ):
                return True
        return False

    def place_compute(self, node: ir.Node, rule: _OpRule) -> None:
        """Conv/MatMul/Gemm: integer kernel, dynamic, weight-only or float, by mode."""
        mode = self.config.mode
        if mode in (QuantMode.DYNAMIC, QuantMode.MIXED) and node.op_type in ("MatMul", "Gemm"):
            spec, why_not = _dynamic_spec(node)
            if spec is not None:
                self.dynamic[id(node)] = spec
                self.decide(
                    node, NodeRole.DYNAMIC, "int8: input quantized at run time (DynamicQuantizeMatMul)"
                )
                return
            if mode is QuantMode.DYNAMIC:
                self.decide(node, NodeRole.FLOAT, f"float: {why_not}")
                return
        if mode is QuantMode.DYNAMIC:
            self.decide(
                node, NodeRole.FLOAT, f"float: dynamic mode quantizes MatMul/Gemm; {node.op_type} stays float"
            )
        elif mode is QuantMode.WEIGHT_ONLY:
            weight = node.inputs[rule.weight_input] if rule.weight_input is not None else None
            if _constant(weight) is None:
                self.decide(node, NodeRole.FLOAT, "float: its weight is computed at run time")
            else:
                self.decide(node, NodeRole.WEIGHT_ONLY, _WEIGHT_ONLY_MODE)
        else:
            self.make_integer(node, f"int8: integer kernel ({rule.kernel})")

    def place_stored(self, node: ir.Node, rule: _OpRule) -> None:
        """An op whose large weights have no integer kernel behind them, or LSTM's one."""
        if node.op_type == "LSTM" and self.config.mode is not QuantMode.WEIGHT_ONLY:
            spec, why_not = _lstm_spec(node)
            if spec is not None:
                self.lstm[id(node)] = spec
                self.decide(
                    node,
                    NodeRole.DYNAMIC,
                    "int8: W and R int8, input and hidden state quantized at run time "
                    "(DynamicQuantizeLSTM, 2-4x faster than the float LSTM in bench/large_weight_ops.py)",
                )
                return
            self.decide(
                node, NodeRole.WEIGHT_ONLY, f"int8 weights behind DequantizeLinear, float compute: {why_not}"
            )
            return
        if self.config.mode is QuantMode.WEIGHT_ONLY:
            self.decide(node, NodeRole.WEIGHT_ONLY, _WEIGHT_ONLY_MODE)
            return
        self.decide(
            node,
            NodeRole.WEIGHT_ONLY,
            f"int8 weights behind DequantizeLinear, float compute: onnxruntime's CPU provider has no "
            f"integer {node.op_type} kernel",
        )

    def rows_dequantized(self, node: ir.Node) -> bool:
        """A Gather on a constant table, in a mode where activations stay float."""
        return self.config.mode in (QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY) and (
            _constant(node.inputs[0]) is not None
        )

    def try_join(self, node: ir.Node) -> bool:
        rule = _RULES[node.op_type]
        if rule.kind is _Kind.ELEMENTWISE:
            live = [
                node.inputs[i] for i in self.activation_slots(node, rule) if _constant(node.inputs[i]) is None
            ]
            if live and all(v is not None and v.name in self.available for v in live):
                self.make_integer(node, f"int8: integer kernel ({rule.kernel}); its inputs are int8 already")
                return True
            return False
        if rule.kind is _Kind.DATA_MOVEMENT:
            return self.try_carry(node)
        if rule.kind is _Kind.TABLE:
            if _constant(node.inputs[0]) is not None:
                self.make_integer(node, "int8: gathers rows of an int8 table")
                return True
            return self.try_carry(node)
        return self.try_fold(node)

    def try_carry(self, node: ir.Node) -> bool:
        source = node.inputs[0]
        if source is None or source.name not in self.available:
            return False
        for out in node.outputs:
            self.available[out.name or ""] = self.available[source.name or ""]
        self.decide(node, NodeRole.CARRY, "int8: moves int8 data with its input's scale")
        return True

    def try_fold(self, node: ir.Node) -> bool:
        source = node.inputs[0]
        if source is None or not _foldable_activation(node):
            return False
        producer = source.producer()
        if (
            producer is None
            or id(producer) not in self.integer
            or self.available.get(source.name or "") != source.name
            or source.name in self.graph_outputs
            or len(source.uses()) != 1
        ):
            return False
        out = node.outputs[0]
        self.folds[id(node)] = Fold(node.name or "", source.name or "", out.name or "")
        del self.available[source.name or ""]
        self.available[out.name or ""] = out.name or ""
        self.nonnegative.add(out.name or "")
        self.decide(node, NodeRole.FOLDED, "folded: the quantizer before it saturates at 0 the same way")
        return True

    def undecided_reason(self, node: ir.Node) -> str:
        kind = _RULES[node.op_type].kind
        if kind is _Kind.ELEMENTWISE:
            return f"float: an input is not int8, so an integer {node.op_type} would add a rounding step"
        if kind is _Kind.ACTIVATION_FOLD:
            return "float: its input is not the quantized output of an integer kernel"
        return "float: its input is a float tensor"

    # -- assembling the plan -------------------------------------------------------------------
    def build(self) -> QuantPlan:
        activations: dict[str, ActivationSpec] = {}
        weights: dict[str, set[int | None]] = {}
        constants: set[str] = set()
        tables: set[str] = set()

        def add_activation(value: ir.Value) -> None:
            name = value.name or ""
            source = self.available.get(name, name)
            table = source.removeprefix("table:") if source.startswith("table:") else None
            activations[name] = ActivationSpec(
                name=name,
                range_of=name if table else source,
                nonnegative=source in self.nonnegative,
                table=table,
                replaces_graph_output=name in self.graph_outputs and self.available.get(name) is not None,
            )

        gathered: set[str] = set()
        for node in self.nodes:
            rule = _RULES.get(node.op_type)
            role = self.decisions[id(node)].role
            if rule is None or role not in (NodeRole.INTEGER, NodeRole.DYNAMIC, NodeRole.WEIGHT_ONLY):
                continue
            if rule.kind is _Kind.ELEMENTWISE and role is NodeRole.WEIGHT_ONLY:
                constants.update(v.name or "" for v in self.large_constant_inputs(node))
            elif rule.kind is _Kind.TABLE and role is NodeRole.WEIGHT_ONLY:
                gathered.add(node.inputs[0].name or "")  # type: ignore[union-attr]
                weights.setdefault(node.inputs[0].name or "", set()).add(None)  # type: ignore[union-attr]
            elif rule.kind is _Kind.TABLE:
                tables.add(node.inputs[0].name or "")  # type: ignore[union-attr]
            elif rule.weight_slots is not None or rule.weight_input is not None:
                self.add_weights(node, rule, weights)
            if id(node) in self.integer:
                self.add_node_activations(node, rule, add_activation, constants)
        self.extend_carried(activations, add_activation)
        # A table is stored like an activation (uint8 by default) so the rows it yields feed
        # integer kernels directly; one that is also a weight elsewhere stays per-tensor int8.
        for table in tables:
            if table in weights:
                weights[table].add(None)
            else:
                constants.add(table)
        weight_specs = [
            WeightSpec(name, next(iter(axes)) if len(axes) == 1 else None) for name, axes in weights.items()
        ]
        weight_specs += [WeightSpec(n, None, symmetric=False) for n in sorted(constants - weights.keys())]
        biases = self.biases(set(activations), {w.name for w in weight_specs if w.symmetric})
        return QuantPlan(
            decisions=tuple(self.decisions[id(n)] for n in self.nodes),
            activations=tuple(activations[k] for k in sorted(activations)),
            weights=tuple(sorted(weight_specs, key=lambda w: w.name)),
            biases=biases,
            folds=tuple(self.folds[id(n)] for n in self.nodes if id(n) in self.folds),
            observed=tuple(sorted({a.range_of for a in activations.values() if a.table is None})),
            mode=self.config.mode,
            dynamic=tuple(self.dynamic[id(n)] for n in self.nodes if id(n) in self.dynamic),
            lstm=tuple(self.lstm[id(n)] for n in self.nodes if id(n) in self.lstm),
            gathered_tables=tuple(sorted(gathered)),
            kept_float=tuple(sorted(self.keep_float.items())),
        )

    def add_weights(self, node: ir.Node, rule: _OpRule, weights: dict[str, set[int | None]]) -> None:
        if rule.weight_slots is not None:
            for weight in self.stored_weights(node, rule):
                self.add_weight(node, rule, weight, weights)
        elif rule.weight_input is not None:
            self.add_weight(node, rule, node.inputs[rule.weight_input], weights)

    def add_weight(
        self, node: ir.Node, rule: _OpRule, weight: ir.Value | None, weights: dict[str, set[int | None]]
    ) -> None:
        """Record the channel axis ``node`` wants for its constant ``weight`` (None: per tensor)."""
        if weight is None or _constant(weight) is None:
            return
        axis = None
        if (
            rule.weight_axis is not None
            and self.config.per_channel
            and not matches(node, self.config.per_tensor)
        ):
            axis = rule.weight_axis(node, weight)
        weights.setdefault(weight.name or "", set()).add(axis)

    def add_node_activations(
        self,
        node: ir.Node,
        rule: _OpRule,
        add_activation: Callable[[ir.Value], None],
        constants: set[str],
    ) -> None:
        """Quantize an integer node's inputs, and its output where the kernel needs it."""
        if rule.output_required and id(node) not in self.float_output:
            add_activation(self.fold_target(node.outputs[0]))
        for index in self.activation_slots(node, rule):
            value = node.inputs[index]
            assert value is not None
            if _constant(value) is not None:
                constants.add(value.name or "")
            elif id(node) not in self.float_output or value.name in self.available:
                # A float-output node reads int8 only where the tensor is int8 anyway.
                add_activation(value)

    def extend_carried(
        self, activations: dict[str, ActivationSpec], add_activation: Callable[[ir.Value], None]
    ) -> None:
        """Quantize every link of a data-movement chain that ends in int8, so that onnxruntime
        sees DQ -> op -> Q with equal parameters at each link and drops them all; a carrying node
        whose output nobody needs in int8 just moves float data."""
        producers = {out.name: node for node in self.nodes for out in node.outputs}
        todo = list(activations)
        while todo:
            producer = producers.get(todo.pop())
            if producer is None or self.decisions[id(producer)].role is not NodeRole.CARRY:
                continue
            source = producer.inputs[0]
            if source is not None and source.name not in activations:
                add_activation(source)
                todo.append(source.name or "")
        for node in self.nodes:
            decision = self.decisions[id(node)]
            if decision.role is NodeRole.CARRY and not any(o.name in activations for o in node.outputs):
                self.decide(node, NodeRole.FLOAT, "float: moves float data; nothing after it takes int8")

    def fold_target(self, value: ir.Value) -> ir.Value:
        """The tensor that carries the quantizer: the folded Relu's output, or ``value``."""
        uses = list(value.uses())
        if len(uses) == 1 and id(uses[0].node) in self.folds:
            return uses[0].node.outputs[0]
        return value

    def biases(self, activations: set[str], weights: set[str]) -> tuple[BiasSpec, ...]:
        specs = []
        for node in self.nodes:
            rule = _RULES.get(node.op_type)
            if rule is None or rule.bias_input is None or id(node) not in self.integer:
                continue
            if len(node.inputs) <= rule.bias_input or (node.op_type == "Gemm" and not _unit_gemm(node)):
                continue
            bias, data, weight = node.inputs[rule.bias_input], node.inputs[0], node.inputs[1]
            tensor = _constant(bias)
            if bias is None or data is None or weight is None or tensor is None or len(bias.uses()) != 1:
                continue
            if tensor.dtype != ir.DataType.FLOAT or len(tensor.shape) != 1:
                continue
            if data.name in activations and weight.name in weights:
                specs.append(BiasSpec(bias.name or "", node.name or "", data.name or "", weight.name or ""))
        return tuple(specs)


def _float_attribute(node: ir.Node, name: str, default: float) -> float:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.as_float()


def _int_attribute(node: ir.Node, name: str) -> int:
    attribute = node.attributes.get(name)
    return 0 if attribute is None else attribute.as_int()


def _dynamic_spec(node: ir.Node) -> tuple[DynamicSpec | None, str]:
    """How ``node`` runs as a dynamic integer MatMul, or why it cannot."""
    inputs = list(node.inputs)
    data, weight = inputs[0], inputs[1]
    tensor = _constant(weight)
    if data is None or weight is None or tensor is None:
        return None, "both inputs are computed at run time; dynamic mode needs a constant weight"
    if len(tensor.shape) != 2:
        return None, "its weight is not a 2-D matrix (MatMulInteger takes a [K, N] weight)"
    if node.op_type == "MatMul":
        return DynamicSpec(node.outputs[0].name or "", data.name or "", weight.name or ""), ""
    if _int_attribute(node, "transA"):
        return None, "Gemm with transA has no dynamic integer form"
    bias = inputs[2] if len(inputs) > 2 else None
    if bias is not None and _constant(bias) is None:
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


def _lstm_spec(node: ir.Node) -> tuple[LstmSpec | None, str]:
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
    if any(
        (t := _constant(v)) is None or not _is_float(v) or t.size < _MIN_COMPUTE_WEIGHTS
        for v in (weight, recurrence)
    ):
        return None, "DynamicQuantizeLSTM needs both W and R as large float constants"
    if _int_attribute(node, "layout"):
        return None, "DynamicQuantizeLSTM has no batch-first layout"
    output = next(out.name for out in node.outputs if out.name)
    assert weight is not None and recurrence is not None
    return LstmSpec(output or "", weight.name or "", recurrence.name or ""), ""


def _unit_gemm(node: ir.Node) -> bool:
    """onnxruntime's QGemm adds an int32 bias unscaled: only for alpha = beta = 1, no transA."""
    alpha, beta = node.attributes.get("alpha"), node.attributes.get("beta")
    trans_a = node.attributes.get("transA")
    return (
        (alpha is None or bool(np.isclose(alpha.as_float(), 1.0)))
        and (beta is None or bool(np.isclose(beta.as_float(), 1.0)))
        and (trans_a is None or trans_a.as_int() == 0)
    )


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matches(node: ir.Node, patterns: frozenset[str]) -> bool:
    """``node`` is named by a pattern: its exact name, its op type, or a glob over its name."""
    if node.name in patterns or node.op_type in patterns:
        return True
    return any(_is_glob(p) and fnmatch.fnmatchcase(node.name or "", p) for p in patterns)


def _check_patterns(model: ir.Model, patterns: frozenset[str], flag: str) -> None:
    """A pattern that names nothing is a typo: refuse it rather than quantize silently."""
    names = [n.name or "" for n in model.graph]
    known = set(names) | {n.op_type for n in model.graph}
    # An exact name first: "pool[red]" names that node, though as a glob it would not match it.
    unknown = sorted(p for p in patterns if p not in known and not (_is_glob(p) and fnmatch.filter(names, p)))
    if unknown:
        raise ConfigError(f"{flag} names no node or op type of this model: {', '.join(unknown)}")


def select(
    model: ir.Model,
    config: QuantConfig,
    keep_float: Mapping[str, str] | None = None,
    *,
    mode: QuantMode | None = None,
) -> QuantPlan:
    """Decide, for every node of the main graph, whether and how it is quantized.

    The model must carry value types (run shape inference first); it is not modified. Nodes
    inside subgraphs (If/Loop/Scan bodies) are not visited and stay float. ``keep_float`` names
    nodes a later stage decided to leave float (by node name), each with the sentence the plan
    gives as its reason: a measured decision rather than a rule of the op. ``mode`` is the
    concrete mode to plan for (default: ``config.mode``); a plan is never for mode auto, whose
    static candidate is what a plan of ``QuantConfig()`` shows.
    """
    mode = config.mode if mode is None else mode
    if mode is QuantMode.AUTO:
        mode = QuantMode.STATIC
    config = replace(config, mode=mode)
    _check_patterns(model, config.exclude, "--exclude")
    _check_patterns(model, config.include, "--include")
    _check_patterns(model, config.per_tensor, "a per_channel = false override")
    return _Selector(model, config, keep_float or {}).run()


def candidate_tensors(model: ir.Model) -> tuple[str, ...]:
    """Every float activation any plan for this model could quantize or take a range from.

    A calibration file records all of them, so ``convert --calibration`` works whatever nodes a
    later run excludes.
    """
    names: set[str] = set()
    for node in model.graph:
        if node.op_type not in _RULES or node.domain not in ("", "ai.onnx"):
            continue
        for value in (*node.inputs, *node.outputs):
            if value is not None and _is_float(value) and _constant(value) is None and value.name:
                names.add(value.name)
    return tuple(sorted(names))
