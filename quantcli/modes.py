"""One strategy per concrete quantization mode, in a registry.

A mode decides three things, and only these: where a compute op (Conv, MatMul, Gemm) and an op
with a large weight but no integer kernel (ConvTranspose, LSTM, ...) go (:meth:`place_compute`,
:meth:`place_stored`), whether a Gather table is read as int8 rows dequantized after the gather,
and whether it needs calibration data. Everything else (which ops join the integer path, which
stay float and why) is the planner's and the target's. ``auto`` is not a strategy: it chooses
among these, and a plan is always for one of them (:func:`strategy` refuses auto).

To add a mode, subclass :class:`ModeStrategy` and pass an instance to ``plan.select(mode=...)``
(its :attr:`~ModeStrategy.mode` is what the plan records: the passes and the report know the
registered modes only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import onnx_ir as ir

from quantcli.config import QuantConfig, QuantMode
from quantcli.plan.facts import constant, dynamic_form
from quantcli.plan.values import DynamicSpec, LstmSpec, NodeDecision, NodeRole, QuantPlan
from quantcli.target import OpKind, OpRule, Target

__all__ = [
    "MODES",
    "DynamicStrategy",
    "MixedStrategy",
    "ModeStrategy",
    "Placed",
    "StaticStrategy",
    "WeightOnlyStrategy",
    "auto_candidates",
    "strategy",
    "uses_calibration",
]

WEIGHT_ONLY_REASON = "int8 weights, float compute (weight-only mode)"


@dataclass(frozen=True)
class Placed:
    """Where a mode puts one node: its role, the sentence the report shows, and for a dynamic
    node the spec its pass needs. INTEGER means the node joins the integer path."""

    role: NodeRole
    reason: str
    spec: DynamicSpec | LstmSpec | None = None


def _dynamic(node: ir.Node, rule: OpRule, target: Target) -> tuple[Placed | None, str]:
    """``node`` in its run-time-quantized form, or None and why it has none."""
    form = dynamic_form(rule)
    if form is None:
        return None, ""
    spec, why_not = form.build(node, target.min_compute_weights)
    return (None, why_not) if spec is None else (Placed(NodeRole.DYNAMIC, form.reason, spec), "")


def _integer(rule: OpRule) -> Placed:
    return Placed(NodeRole.INTEGER, f"int8: integer kernel ({rule.kernel})")


class ModeStrategy:
    """A concrete mode. The default placements are static mode's; subclasses override them."""

    mode: QuantMode = QuantMode.STATIC
    needs_calibration: bool = True  # activation ranges are required (static Q/DQ pairs)
    dequantizes_table_rows: bool = False  # a constant Gather table: int8, only the rows dequantized

    def place_compute(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        """A Conv/MatMul/Gemm the planner found eligible."""
        return _integer(rule)

    def place_stored(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        """An op whose large weights have no integer kernel: its run-time-quantized form where
        the target has one (LSTM's DynamicQuantizeLSTM), else int8 storage behind a
        DequantizeLinear."""
        placed, why_not = _dynamic(node, rule, target)
        if placed is not None:
            return placed
        if not why_not:
            why_not = f"{target.runtime} has no integer {node.op_type} kernel"
        return Placed(NodeRole.WEIGHT_ONLY, f"int8 weights behind DequantizeLinear, float compute: {why_not}")

    def with_block_weights(self, model: ir.Model, plan: QuantPlan, config: QuantConfig) -> QuantPlan:
        """``plan`` with the MatMul/Gemm weights ``config`` asks 4 bits for moved from int8 to
        block-wise; only weight-only mode writes them (config refuses 4 bits elsewhere)."""
        return plan

    def changes(self, plan: QuantPlan) -> bool:
        """Whether this mode's plan changes the model at all."""
        return not plan.is_noop


class StaticStrategy(ModeStrategy):
    """Calibrated Q/DQ pairs on activations; the runtime fuses them into integer kernels."""


class MixedStrategy(ModeStrategy):
    """Dynamic MatMul/Gemm where they have a dynamic form, static everything else."""

    mode = QuantMode.MIXED

    def place_compute(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        placed, _ = _dynamic(node, rule, target)
        return placed if placed is not None else _integer(rule)


class _FloatActivations(ModeStrategy):
    """A mode that quantizes no activation ahead of time: it needs no calibration, and a
    constant Gather table is stored int8 with only the gathered rows dequantized."""

    needs_calibration = False
    dequantizes_table_rows = True


class DynamicStrategy(_FloatActivations):
    """MatMul/Gemm with int8 weights and inputs quantized at run time; no calibration."""

    mode = QuantMode.DYNAMIC

    def place_compute(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        placed, why_not = _dynamic(node, rule, target)
        if placed is not None:
            return placed
        if why_not:
            return Placed(NodeRole.FLOAT, f"float: {why_not}")
        dynamic_ops = "/".join(
            op for op, r in target.rules.items() if r.kind is OpKind.COMPUTE and dynamic_form(r) is not None
        )
        return Placed(
            NodeRole.FLOAT, f"float: dynamic mode quantizes {dynamic_ops}; {node.op_type} stays float"
        )


class WeightOnlyStrategy(_FloatActivations):
    """Every weight int8 behind a DequantizeLinear, float compute; no calibration."""

    mode = QuantMode.WEIGHT_ONLY

    def place_compute(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        weight = node.inputs[rule.weight_input] if rule.weight_input is not None else None
        if constant(weight) is None:
            return Placed(NodeRole.FLOAT, "float: its weight is computed at run time")
        return Placed(NodeRole.WEIGHT_ONLY, WEIGHT_ONLY_REASON)

    def place_stored(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        return Placed(NodeRole.WEIGHT_ONLY, WEIGHT_ONLY_REASON)

    def with_block_weights(self, model: ir.Model, plan: QuantPlan, config: QuantConfig) -> QuantPlan:
        """Every weight-only MatMul/Gemm whose 2-D weight only it reads takes 4-bit blocks, and
        every gathered table whose rows are whole blocks; a weight shared with another node
        stays int8 (one initializer cannot be both)."""
        if config.weight_bits != 4:
            return plan
        chosen = _block_nodes(model, plan)
        tables = _block_tables(model, plan, config.block_size)
        if not chosen and not tables:
            return plan
        zero_point = "symmetric" if config.weight_symmetric else "a zero point per block"
        reason = (
            f"int4 weights in blocks of {config.block_size} ({config.block_method}, {zero_point}), "
            "float compute (MatMulNBits)"
        )
        table_reason = (
            f"int4 table in blocks of {config.block_size} (rtn, {zero_point}): GatherBlockQuantized"
        )
        readers = {node.name for node in model.graph if node.op_type == "Gather" and _reads(node, tables)}

        def decided(d: NodeDecision) -> NodeDecision:
            if d.name in chosen:
                return replace(d, reason=reason)
            return replace(d, reason=table_reason) if d.name in readers else d

        moved = set(chosen.values()) | set(tables)
        return replace(
            plan,
            decisions=tuple(decided(d) for d in plan.decisions),
            weights=tuple(spec for spec in plan.weights if spec.name not in moved),
            biases=tuple(b for b in plan.biases if b.node not in chosen),
            gathered_tables=tuple(t for t in plan.gathered_tables if t not in tables),
            blockwise=tuple(chosen),
            blockwise_tables=tables,
        )


def _reads(node: ir.Node, tables: tuple[str, ...]) -> bool:
    table = node.inputs[0]
    return table is not None and table.name in tables


def _block_nodes(model: ir.Model, plan: QuantPlan) -> dict[str, str]:
    """Weight-only MatMul/Gemm nodes that can take 4-bit blocks: node name -> weight name."""
    # Imported here: quantcli.blockwise's statistics import calibration, which imports this
    # registry (through the pipeline's inputs), so a module-level import would be circular.
    from quantcli.blockwise.targets import block_targets  # noqa: PLC0415 (import cycle, above)

    weights = {spec.name for spec in plan.weights}
    roles = {d.name: d.role for d in plan.decisions}
    return {
        t.node: t.weight
        for t in block_targets(model.graph)
        if roles.get(t.node) is NodeRole.WEIGHT_ONLY
        and t.weight in weights
        and len(list(model.graph.initializers[t.weight].uses())) == 1
    }


def _block_tables(model: ir.Model, plan: QuantPlan, block_size: int) -> tuple[str, ...]:
    """Gathered tables GatherBlockQuantized can read: 2-D, rows of whole blocks, every reader a
    Gather along axis 0 of its table."""
    found = []
    for name in plan.gathered_tables:
        value = model.graph.initializers.get(name)
        tensor = None if value is None else value.const_value
        dims = () if tensor is None else tensor.shape.numpy()
        if value is None or len(dims) != 2 or dims[1] % block_size:
            continue
        uses = list(value.uses())
        if uses and all(u.node.op_type == "Gather" and u.idx == 0 and _axis(u.node) == 0 for u in uses):
            found.append(name)
    return tuple(found)


def _axis(node: ir.Node) -> int:
    attribute = node.attributes.get("axis")
    return 0 if attribute is None else int(attribute.value)


# In the order auto tries them.
MODES: Mapping[QuantMode, ModeStrategy] = MappingProxyType(
    {
        strategy.mode: strategy
        for strategy in (StaticStrategy(), MixedStrategy(), DynamicStrategy(), WeightOnlyStrategy())
    }
)


def strategy(mode: QuantMode) -> ModeStrategy:
    """The strategy of a concrete mode; auto has none (it chooses among them)."""
    if mode is QuantMode.AUTO:
        raise ValueError("auto is not a concrete mode: plan for one of the modes it chooses among")
    return MODES[mode]


def uses_calibration(mode: QuantMode) -> bool:
    """Calibration data serves ``mode`` (auto: for its static candidates), so part of it is held
    back for evaluation rather than all of it measuring fidelity."""
    return mode is QuantMode.AUTO or strategy(mode).needs_calibration


def auto_candidates(*, has_ranges: bool) -> tuple[ModeStrategy, ...]:
    """The modes auto may build, in order: without activation ranges, those that need none."""
    return tuple(s for s in MODES.values() if has_ranges or not s.needs_calibration)
