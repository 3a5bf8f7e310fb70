"""What a plan is: every node's decision with its reason, and the tensors the passes quantize.

These values are the interface between deciding (:mod:`quantcli.plan`) and rewriting
(:mod:`quantcli.passes`); the passes carry a :class:`QuantPlan` out without deciding anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from quantcli.config import QuantMode

__all__ = [
    "ActivationSpec",
    "BiasSpec",
    "DynamicSpec",
    "Fold",
    "LstmSpec",
    "NodeDecision",
    "NodeRole",
    "Overridden",
    "QuantPlan",
    "WeightSpec",
]


class NodeRole(StrEnum):
    """What a node becomes in the quantized model."""

    INTEGER = "integer"  # runs as an integer kernel after fusion
    DYNAMIC = "dynamic"  # int8 weights, input quantized at run time, integer kernel
    WEIGHT_ONLY = "weight-only"  # int8 weights, float compute
    CARRY = "carry"  # moves int8 data with its input's scale
    FOLDED = "folded"  # removed; its effect is the saturation of a quantizer
    FLOAT = "float"


@dataclass(frozen=True)
class Overridden:
    """A decision a later phase replaced: the role it gave, why, and the node that caused it."""

    role: NodeRole
    reason: str
    cause: str


@dataclass(frozen=True)
class NodeDecision:
    """What happens to one node, and why, in a sentence the report shows."""

    name: str
    op_type: str
    role: NodeRole
    reason: str
    # The node whose placement led to this decision: the node itself, or (for a Relu that must
    # run again) the producer whose output stopped being quantized.
    cause: str = ""
    # Decisions an earlier phase made for this node and a later one replaced, oldest first.
    overrides: tuple[Overridden, ...] = ()


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
    # Tensors whose ranges are joined with ``range_of``'s into one (the inputs of a Concat that
    # shares one scale: Target.one_pair_per_chain); empty: ``range_of``'s alone.
    shared: tuple[str, ...] = ()


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
    # MatMul/Gemm nodes whose weight is written in 4-bit blocks (MatMulNBits) instead of int8,
    # with the block layout and rounding of the config (``--weight-bits 4``).
    blockwise: tuple[str, ...] = field(default=())
    # Constant Gather tables written in 4-bit blocks (GatherBlockQuantized) instead of int8 rows.
    blockwise_tables: tuple[str, ...] = field(default=())
    # The block size of each block-wise node and table (by node or initializer name), where a
    # recipe override sets one other than the config's.
    block_sizes: tuple[tuple[str, int], ...] = field(default=())
    # MatMulNBits' compute precision for this plan's mode (see quantcli.modes).
    block_accuracy_level: int = 0
    # Every MatMul/Gemm/Gather node on a constant weight, with its weight's bits: 4, 8 or None
    # (float); set when 4-bit weights were asked for (the report's widths).
    block_widths: tuple[tuple[str, int | None], ...] = field(default=())

    def block_size_of(self, name: str, default: int) -> int:
        """The block size of the block-wise node or table ``name``."""
        return dict(self.block_sizes).get(name, default)

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
        return not self.weights and not self.activations and not self.blockwise and not self.blockwise_tables
