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
from quantcli.plan.facts import constant, dynamic_form, matches
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

    # The role a MatMul/Gemm with 4-bit weights keeps in this mode (None: the mode writes none;
    # config refuses 4 bits there), MatMulNBits' compute precision, and the sentence for it.
    block_role: NodeRole | None = None
    block_accuracy_level: int = 0
    block_compute: str = ""

    def with_block_weights(self, model: ir.Model, plan: QuantPlan, config: QuantConfig) -> QuantPlan:
        """``plan`` with the MatMul/Gemm weights and Gather tables ``config`` asks 4 bits for
        moved from int8 to block-wise (see :func:`_with_block_weights`)."""
        if self.block_role is None or not config.four_bits:
            return plan
        return _with_block_weights(self, model, plan, config)

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
    # accuracy_level 4: MatMulNBits quantizes its input to int8 per block at run time and
    # computes in int8 (VNNI/AMX), which is what dynamic means: the mode's contract, not a speed
    # claim. Measured (bench/RESULTS.md "4-bit weights in dynamic mode", MiniLM-L6, block 32,
    # onnxruntime 1.32, a shared 2-core AVX-512 VNNI/AMX machine, 1 thread) it gave the same
    # cosine as level 0 (0.9561 / 0.9560) and was slower: 1.16x fp32's latency against 0.96x for
    # level 0 (two earlier runs: 1.13x / 1.06x and 1.09x / 0.97x), while int8 dynamic ran at
    # 0.53x. So 4-bit dynamic buys size (6.3x against int8's 3.9x), not speed, on this CPU;
    # weight-only keeps level 0, the faster there (quantcli.passes.nbits).
    block_role = NodeRole.DYNAMIC
    block_accuracy_level = 4
    block_compute = "int8 compute on its input quantized per block at run time (MatMulNBits accuracy_level 4)"

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
    block_role = NodeRole.WEIGHT_ONLY
    block_accuracy_level = 0  # float compute: measured faster than level 4 (quantcli.passes.nbits)
    block_compute = "float compute (MatMulNBits)"

    def place_compute(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        weight = node.inputs[rule.weight_input] if rule.weight_input is not None else None
        if constant(weight) is None:
            return Placed(NodeRole.FLOAT, "float: its weight is computed at run time")
        return Placed(NodeRole.WEIGHT_ONLY, WEIGHT_ONLY_REASON)

    def place_stored(self, node: ir.Node, rule: OpRule, target: Target) -> Placed:
        return Placed(NodeRole.WEIGHT_ONLY, WEIGHT_ONLY_REASON)


def _layout(config: QuantConfig, node: ir.Node) -> tuple[int, int, str]:
    """A node's weight bits and block size, and where its bits came from ("" the config)."""
    bits, size, source = config.weight_bits, config.block_size, ""
    for override in config.block_overrides:
        if matches(node, override.patterns):
            if override.bits is not None:
                bits, source = override.bits, override.source
            size = override.block_size or size
    return bits, size, source


def _with_block_weights(
    strategy: ModeStrategy, model: ir.Model, plan: QuantPlan, config: QuantConfig
) -> QuantPlan:
    """Every MatMul/Gemm of the strategy's block role whose 2-D weight only it reads takes
    4-bit blocks, and every gathered table whose rows are whole blocks, unless an override sets
    8 bits for it (its reason then says so); a weight shared with another node stays int8 (one
    initializer cannot be both)."""
    assert strategy.block_role is not None
    nodes = {node.name: node for node in model.graph}
    eligible = _block_nodes(model, plan, strategy.block_role)
    layouts = {name: _layout(config, nodes[name]) for name in eligible}
    chosen = {name: weight for name, weight in eligible.items() if layouts[name][0] == 4}
    tables = _block_tables(model, plan, config)
    zero_point = "symmetric" if config.weight_symmetric else "a zero point per block"
    readers = _table_readers(model, tables)

    def decided(d: NodeDecision) -> NodeDecision:
        if d.name in chosen:
            size = layouts[d.name][1]
            method = config.block_method
            return replace(
                d,
                reason=f"int4 weights in blocks of {size} ({method}, {zero_point}), {strategy.block_compute}",
            )
        if d.name in readers:
            size = tables[readers[d.name]]
            return replace(
                d, reason=f"int4 table in blocks of {size} (rtn, {zero_point}): GatherBlockQuantized"
            )
        widened = d.name in layouts or (d.op_type == "Gather" and d.role is not NodeRole.FLOAT)
        source = (layouts.get(d.name) or _layout(config, nodes[d.name]))[2] if widened else ""
        return replace(d, reason=f"{d.reason}; 8 bits, not 4: {source}") if source else d

    decisions = tuple(decided(d) for d in plan.decisions)
    moved = set(chosen.values()) | set(tables)
    outputs = {nodes[name].outputs[0].name for name in chosen}
    sizes = {**{name: layouts[name][1] for name in chosen}, **tables}
    return replace(
        plan,
        decisions=decisions,
        weights=tuple(spec for spec in plan.weights if spec.name not in moved),
        biases=tuple(b for b in plan.biases if b.node not in chosen),
        dynamic=tuple(spec for spec in plan.dynamic if spec.output not in outputs),
        gathered_tables=tuple(t for t in plan.gathered_tables if t not in tables),
        blockwise=tuple(chosen),
        blockwise_tables=tuple(tables),
        block_widths=_widths(model, decisions, {*chosen, *readers}),
        block_sizes=tuple(sorted((k, v) for k, v in sizes.items() if v != config.block_size)),
        block_accuracy_level=strategy.block_accuracy_level,
    )


def _widths(
    model: ir.Model, decisions: tuple[NodeDecision, ...], four: set[str]
) -> tuple[tuple[str, int | None], ...]:
    """Every MatMul/Gemm/Gather node on a constant weight, with its weight's bits."""
    # Imported here, as in _block_nodes (an import cycle).
    from quantcli.blockwise.targets import block_targets  # noqa: PLC0415

    weighted = {t.node for t in block_targets(model.graph)}
    weighted |= {node.name or "" for node in model.graph if node.op_type == "Gather" and _gathers_table(node)}
    return tuple(
        (d.name, 4 if d.name in four else None if d.role is NodeRole.FLOAT else 8)
        for d in decisions
        if d.name in weighted
    )


def _gathers_table(node: ir.Node) -> bool:
    table = node.inputs[0] if node.inputs else None
    return table is not None and constant(table) is not None


def _table_readers(model: ir.Model, tables: Mapping[str, int]) -> dict[str, str]:
    """The Gather nodes reading one of ``tables``: node name -> table name."""
    readers = {}
    for node in model.graph:
        table = node.inputs[0] if node.op_type == "Gather" and node.inputs else None
        if table is not None and table.name and table.name in tables:
            readers[node.name or ""] = table.name
    return readers


def _block_nodes(model: ir.Model, plan: QuantPlan, role: NodeRole) -> dict[str, str]:
    """MatMul/Gemm nodes of ``role`` that can take 4-bit blocks: node name -> weight name."""
    # Imported here: quantcli.blockwise's statistics import calibration, which imports this
    # registry (through the pipeline's inputs), so a module-level import would be circular.
    from quantcli.blockwise.targets import block_targets  # noqa: PLC0415 (import cycle, above)

    weights = {spec.name for spec in plan.weights}
    roles = {d.name: d.role for d in plan.decisions}
    return {
        t.node: t.weight
        for t in block_targets(model.graph)
        if roles.get(t.node) is role
        and t.weight in weights
        and len(list(model.graph.initializers[t.weight].uses())) == 1
    }


def _block_tables(model: ir.Model, plan: QuantPlan, config: QuantConfig) -> dict[str, int]:
    """Gathered tables GatherBlockQuantized can read, with their block sizes: 2-D, rows of whole
    blocks, every reader a Gather along axis 0 of its table, the first reader at 4 bits (a
    table's layout is its first reader's)."""
    found = {}
    for name in plan.gathered_tables:
        value = model.graph.initializers.get(name)
        tensor = None if value is None else value.const_value
        dims = () if tensor is None else tensor.shape.numpy()
        uses = [] if value is None else list(value.uses())
        if len(dims) != 2 or not uses:
            continue
        bits, size, _ = _layout(config, uses[0].node)
        if bits == 4 and not dims[1] % size and all(_gathers_rows(u.node, u.idx) for u in uses):
            found[name] = size
    return found


def _gathers_rows(node: ir.Node, index: int) -> bool:
    return node.op_type == "Gather" and index == 0 and _axis(node) == 0


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
