"""The planning phases, in the order :func:`~quantcli.plan.select` runs them.

1. :func:`seed`: every node that can never be quantized gets its reason; the mode places every
   eligible compute op and op with a stored weight.
2. :func:`propagate`: element-wise ops, data movement, tables and folds join the integer path
   where their inputs are int8, repeated until nothing changes; on a target with one pair per
   carried chain, a data-movement op after a float tensor then carries it from there (the root);
   the rest stay float.
3. :func:`prune`: an integer element-wise op after which nothing takes int8 returns to float.
4. :func:`drop_unread_outputs`: on a target that quantizes layers on their inputs
   (:attr:`~quantcli.target.Target.output_pair_rule`), a compute op's output gets no pair unless
   a reader takes it as int8.
5. :func:`keep_outputs_float`: a compute op whose output reaches no int8 reader keeps it float
   (a target fact: :attr:`~quantcli.target.Target.keep_final_outputs_float`).
6. :func:`~quantcli.plan.assemble.assemble`: the plan, once carries nothing needs are float.

A later phase that overrides a decision keeps the earlier one in its ``overrides``.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

from quantcli.graph.branches import LOOP_BODIES, LOOP_BODY_REASON
from quantcli.plan.facts import (
    activation_slots,
    computed_from_constants,
    constant,
    foldable_activation,
    fused_input,
    is_float,
    large_constant_inputs,
    matches,
    no_stored_weight_reason,
    stored_weights,
)
from quantcli.plan.placement import Context, Draft, Placement, Source
from quantcli.plan.values import Fold, NodeRole
from quantcli.target import OpKind, OpRule

__all__ = ["drop_unread_outputs", "keep_outputs_float", "propagate", "prune", "seed"]

_LAYERS = (NodeRole.INTEGER, NodeRole.WEIGHT_ONLY, NodeRole.DYNAMIC)


def _user_reason(ctx: Context, node: ir.Node, rule: OpRule | None) -> str | None:
    """Why the user's settings (or a later stage's) leave ``node`` float, if they do."""
    if node.domain not in ("", "ai.onnx"):
        return f"float: custom operator domain '{node.domain}'"
    if matches(node, ctx.config.exclude):
        return "float: excluded by the user"
    if (node.name or "") in ctx.keep_float:
        return ctx.keep_float[node.name or ""]
    follows = rule is not None and rule.kind in (OpKind.DATA_MOVEMENT, OpKind.ACTIVATION_FOLD)
    if ctx.config.include and not follows and not matches(node, ctx.config.include):
        return "float: not in --include"
    return None


def _float_reason(ctx: Context, node: ir.Node, rule: OpRule | None) -> str | None:
    """Why ``node`` can never be quantized, or None if it may be."""
    reason = _user_reason(ctx, node, rule)
    if reason is not None:
        return reason
    if rule is None and node.op_type in LOOP_BODIES:
        return LOOP_BODY_REASON
    if rule is None:
        return ctx.target.float_reasons.get(node.op_type, f"float: no integer kernel for {node.op_type}")
    # An optional output may be omitted (an LSTM read only through Y_h): look at the first one.
    if not is_float(next((out for out in node.outputs if out.name), None)):
        return "float: works on integer or non-float tensors"
    if any(not is_float(node.inputs[i]) for i in activation_slots(node, rule)):
        return "float: an input is not a float32 tensor"
    minimum = ctx.target.min_compute_weights
    if rule.weight_slots is not None:
        return None if stored_weights(node, rule, minimum) else no_stored_weight_reason(node, rule)
    if rule.weight_input is not None and rule.kind is OpKind.COMPUTE:
        weight = node.inputs[rule.weight_input] if len(node.inputs) > rule.weight_input else None
        if not is_float(weight):
            return "float: its weight is not a float32 tensor"
        tensor = constant(weight)
        if tensor is not None and tensor.size < minimum:
            return f"float: {tensor.size} weights are too few for int8 to gain anything"
    return None


def seed(ctx: Context, placement: Placement) -> Placement:
    """Decide every node whose fate does not depend on its neighbours'."""
    draft = Draft(ctx, placement)
    mode = ctx.strategy
    for node in ctx.nodes:
        rule = ctx.target.rule(node)
        reason = _float_reason(ctx, node, rule)
        if reason is not None:
            draft.decide(node, NodeRole.FLOAT, reason)
            continue
        assert rule is not None
        if rule.kind is OpKind.COMPUTE:
            draft.place(node, mode.place_compute(node, rule, ctx.target))
        elif rule.kind is OpKind.WEIGHT_ONLY:
            draft.place(node, mode.place_stored(node, rule, ctx.target))
        elif (
            rule.kind is OpKind.TABLE and mode.dequantizes_table_rows and constant(node.inputs[0]) is not None
        ):
            draft.decide(node, NodeRole.WEIGHT_ONLY, "int8 table: only the gathered rows are dequantized")
    return draft.freeze()


def _try_carry(draft: Draft, node: ir.Node) -> bool:
    source = node.inputs[0]
    if source is None or source.name not in draft.available:
        return False
    for out in node.outputs:
        draft.available[out.name or ""] = draft.available[source.name or ""]
    draft.decide(node, NodeRole.CARRY, "int8: moves int8 data with its input's scale", source.producer())
    return True


def _try_fold(draft: Draft, node: ir.Node) -> bool:
    source = node.inputs[0]
    if source is None or not foldable_activation(node):
        return False
    producer = source.producer()
    if (
        producer is None
        or id(producer) not in draft.integer
        or draft.available.get(source.name or "") != Source(source.name or "")
        or source.name in draft.ctx.graph_outputs
        or len(source.uses()) != 1
    ):
        return False
    out = node.outputs[0]
    draft.folds[id(node)] = Fold(node.name or "", source.name or "", out.name or "")
    del draft.available[source.name or ""]
    draft.available[out.name or ""] = Source(out.name or "")
    draft.nonnegative.add(out.name or "")
    draft.decide(
        node, NodeRole.FOLDED, "folded: the quantizer before it saturates at 0 the same way", producer
    )
    return True


def _try_root_carry(draft: Draft, node: ir.Node) -> bool:
    """On a target with one pair per carried chain, a data-movement op after a float activation
    carries it all the same: the pair goes on its input, the chain's root, if an int8 reader
    turns up after it (assemble), and the op stays float otherwise (settle_carries)."""
    source = node.inputs[0]
    if source is None or not is_float(source) or computed_from_constants(source):
        return False
    # The root is int8 from here on (an element-wise reader may join on it); it gets its pair
    # only if an integer kernel reads it or the chain after it.
    draft.available[source.name or ""] = Source(source.name or "")
    for out in node.outputs:
        draft.available[out.name or ""] = Source(source.name or "")
    draft.decide(
        node,
        NodeRole.CARRY,
        "int8: moves int8 data with its input's scale; the one pair of the chain goes on its input "
        "(docs/openvino.md rule 3)",
    )
    return True


def _try_fuse(draft: Draft, node: ir.Node, rule: OpRule, layer: ir.Node) -> bool:
    """An op the runtime fuses into ``layer`` (TensorRT's residual Add after a Conv): integer with
    the layer, its other inputs quantized whatever they are, once the layer is integer."""
    live = [node.inputs[i] for i in activation_slots(node, rule) if constant(node.inputs[i]) is None]
    if not live or id(layer) not in draft.integer:
        return False
    draft.make_integer(
        node,
        f"int8: fused into {layer.name} ({rule.fused_kernel}); its other input is quantized, so the "
        "fused layer writes int8",
        layer,
    )
    return True


def _try_join(draft: Draft, node: ir.Node, rule: OpRule) -> bool:
    if rule.kind is OpKind.ELEMENTWISE:
        fused = fused_input(node, rule)
        if fused is not None:
            return _try_fuse(draft, node, rule, fused[1])
        live = [node.inputs[i] for i in activation_slots(node, rule) if constant(node.inputs[i]) is None]
        int8 = [v is not None and v.name in draft.available for v in live]
        if live and all(int8):
            draft.make_integer(node, f"int8: integer kernel ({rule.kernel}); its inputs are int8 already")
            return True
        # A float input computed from constants only (a Reshape of a bias) is no activation:
        # OpenVINO folds it, and a pair on it breaks its Add transformation (PP-OCR cls,
        # docs/openvino.md).
        folded = any(computed_from_constants(v) for v, is_int8 in zip(live, int8, strict=True) if not is_int8)
        if any(int8) and not folded and draft.ctx.target.elementwise_joins_any:
            draft.make_integer(
                node,
                f"int8: integer kernel ({rule.kernel}); an input is int8 and the others get pairs "
                "(docs/openvino.md rule 4)",
            )
            return True
        return False
    if rule.kind is OpKind.DATA_MOVEMENT:
        return _try_carry(draft, node)
    if rule.kind is OpKind.TABLE:
        if constant(node.inputs[0]) is not None:
            draft.make_integer(node, "int8: gathers rows of an int8 table")
            return True
        return _try_carry(draft, node)
    return _try_fold(draft, node)


def _with_rule(reason: str, rule: OpRule) -> str:
    """``reason``, naming the target's rule for it when the op rule has one."""
    return f"{reason} ({rule.float_rule})" if rule.float_rule else reason


def _undecided_reason(rule: OpRule, node: ir.Node) -> str:
    fused = fused_input(node, rule)
    if fused is not None:
        return (
            f"float: fused into {fused[1].name} ({rule.fused_kernel}), which is float, or with a "
            "constant other operand: no residual pair to place"
        )
    if rule.kind is OpKind.ELEMENTWISE:
        return _with_rule(
            f"float: an input is not int8, so an integer {node.op_type} would add a rounding step", rule
        )
    if rule.kind is OpKind.ACTIVATION_FOLD:
        return "float: its input is not the quantized output of an integer kernel"
    return "float: its input is a float tensor"


def propagate(ctx: Context, placement: Placement) -> Placement:
    """Let the ops that follow their inputs join the integer path; the rest stay float.

    They depend on their inputs being int8, which may be settled only later in graph order:
    repeated until nothing changes.
    """
    draft = Draft(ctx, placement)
    pending = [
        (node, rule)
        for node in ctx.nodes
        if id(node) not in draft.decisions and (rule := ctx.target.rule(node))
    ]
    changed = True
    while changed:
        changed = False
        for node, rule in pending:
            if id(node) not in draft.decisions and _try_join(draft, node, rule):
                changed = True
        if not changed and ctx.target.one_pair_per_chain:
            # Only once nothing joins forward: a chain after an int8 tensor carries its scale.
            roots = [
                _try_carry(draft, node) or _try_root_carry(draft, node)
                for node, rule in pending
                if id(node) not in draft.decisions and rule.kind is OpKind.DATA_MOVEMENT
            ]
            changed = any(roots)
    for node, rule in pending:
        if id(node) not in draft.decisions:
            draft.decide(node, NodeRole.FLOAT, _undecided_reason(rule, node))
    return draft.freeze()


def _takes_int8(draft: Draft, value: ir.Value) -> bool:
    """Whether some consumer of ``value`` reads it as int8 in this plan."""
    for use in value.uses():
        consumer = use.node
        decision = draft.decisions.get(id(consumer))
        if decision is None:
            continue
        if id(consumer) in draft.integer:
            rule = draft.ctx.target.rule(consumer)
            if rule is not None and use.idx in activation_slots(consumer, rule):
                return True
        elif (
            decision.role in (NodeRole.CARRY, NodeRole.FOLDED)
            and use.idx == 0
            and any(_takes_int8(draft, out) for out in consumer.outputs)
        ):
            return True
    return False


def _unread(draft: Draft, kind: OpKind) -> Iterator[ir.Node]:
    """The integer nodes of ``kind`` whose outputs no node takes as int8, in reverse graph order
    (each node's readers are settled first; the caller may change the draft between them)."""
    for node in reversed(draft.ctx.nodes):
        rule = draft.ctx.target.rule(node)
        if rule is None or rule.kind is not kind or id(node) not in draft.integer:
            continue
        if not any(_takes_int8(draft, out) for out in node.outputs):
            yield node


def prune(ctx: Context, placement: Placement) -> Placement:
    """Return to float every integer element-wise op after which no node takes int8.

    Its integer kernel would only add a rounding step and a quantizer whose range is whatever
    calibration saw: a final Sigmoid calibrated on images without confident detections clips
    every stronger score to the calibrated maximum. Visited in reverse graph order so each
    node's consumers are settled first.
    """
    draft = Draft(ctx, placement)
    for node in _unread(draft, OpKind.ELEMENTWISE):
        rule = ctx.target.rule(node)
        assert rule is not None  # _unread yields nodes with a rule
        if fused_input(node, rule) is not None:
            # Fused into its layer: the residual pair stays (the layer's own output is float
            # anyway); only the output pair nothing reads goes.
            draft.float_output.add(id(node))
            draft.withdraw_output(node)
            continue
        draft.integer.discard(id(node))
        draft.withdraw_output(node)
        if large_constant_inputs(node, ctx.target.min_stored_constant):
            draft.decide(
                node, NodeRole.WEIGHT_ONLY, "int8 constant input, float compute: nothing after it takes int8"
            )
        else:
            draft.decide(
                node,
                NodeRole.FLOAT,
                _with_rule("float: nothing after it takes int8, so an integer kernel saves nothing", rule),
            )
    return draft.freeze()


def drop_unread_outputs(ctx: Context, placement: Placement) -> Placement:
    """On a target with an ``output_pair_rule``, withdraw the output pair of an integer compute op
    that no reader takes as int8: the layer keeps its int8 input and weights and writes float.

    OpenVINO and TensorRT quantize a layer's inputs and fuse what follows it; a pair on an output
    that only float ops read (the Sigmoid and Mul of a SiLU) costs a conversion and a rounding
    step, except on a layer whose rule says the runtime runs it faster with that pair
    (:attr:`~quantcli.target.OpRule.keeps_output_pair`). Visited in reverse graph order so each
    node's readers are settled first.
    """
    reason = ctx.target.output_pair_rule or ""
    draft = Draft(ctx, placement)
    for node in _unread(draft, OpKind.COMPUTE) if reason else ():
        rule = ctx.target.rule(node)
        if rule is not None and rule.keeps_output_pair is not None and rule.keeps_output_pair(node):
            draft.decide(node, NodeRole.INTEGER, rule.kept_output_reason)
            continue
        draft.float_output.add(id(node))
        draft.withdraw_output(node)
        draft.decide(node, NodeRole.INTEGER, reason)
    return draft.freeze()


def _reaches_layer(draft: Draft, value: ir.Value, memo: dict[str, bool]) -> bool:
    """Whether a node downstream of ``value`` is a layer whose weights are quantized (a Conv,
    ConvTranspose, recurrent or matrix op not left float), whatever its compute."""
    name = value.name or ""
    if name not in memo:
        memo[name] = False  # a cycle cannot occur in a graph; guards re-entry all the same
        memo[name] = any(
            (
                (rule := draft.ctx.target.rule(use.node)) is not None
                and rule.kind in (OpKind.COMPUTE, OpKind.WEIGHT_ONLY)
                and (decision := draft.decisions.get(id(use.node))) is not None
                and decision.role in _LAYERS
                and id(use.node) not in draft.float_output
            )
            or any(_reaches_layer(draft, out, memo) for out in use.node.outputs)
            for use in value.uses()
        )
    return memo[name]


def _reaches_int8(draft: Draft, value: ir.Value, memo: dict[str, bool]) -> bool:
    """Whether a node downstream of ``value`` runs an integer kernel on int8 input."""
    name = value.name or ""
    if name not in memo:
        memo[name] = any(
            # A float-output Conv counts: it still reads its input as int8.
            (
                id(use.node) in draft.integer
                and (rule := draft.ctx.target.rule(use.node)) is not None
                and use.idx in activation_slots(use.node, rule)
            )
            or any(_reaches_int8(draft, out, memo) for out in use.node.outputs)
            for use in value.uses()
        )
    return memo[name]


def keep_outputs_float(ctx: Context, placement: Placement) -> Placement:
    """Leave float the output of a Conv from which no int8 reader can be reached.

    Such an output flows to the model's outputs through float ops only (a detector's class
    head, a segmentation map). Quantizing it would clip every value beyond what calibration
    saw, e.g. a class score stronger than any seen while calibrating, and no integer kernel
    downstream gains from it. The Conv stays float, weights included (see below). A Conv whose
    output reaches another integer kernel through float ops (a hard-swish between two Convs)
    keeps its integer kernel, and so does one whose output reaches another layer with quantized
    weights (PP-OCR's last Conv feeds two weight-only ConvTransposes): its values are features
    on their way to more layers, not the model's scores. Visited in reverse graph order: each
    Conv's successors are settled.
    """
    if not ctx.target.keep_final_outputs_float:
        return placement
    draft = Draft(ctx, placement)
    memo: dict[str, bool] = {}
    layers: dict[str, bool] = {}
    for node in reversed(ctx.nodes):
        rule = ctx.target.rule(node)
        if rule is None or rule.kind is not OpKind.COMPUTE or not rule.output_required:
            continue
        if id(node) not in draft.integer or any(
            _reaches_int8(draft, out, memo) or _reaches_layer(draft, out, layers) for out in node.outputs
        ):
            continue
        # It stays among the integer nodes for this pass: a Conv before it keeps its integer
        # kernel (and a DequantizeLinear feeds this one) instead of every Conv up the chain
        # turning float in turn.
        draft.float_output.add(id(node))
        draft.withdraw_output(node)
        # Not weight-only: onnxruntime keeps a DequantizeLinear of a weight unfolded, so the
        # float kernel gets a fresh weight every run and cannot pre-pack it or use its
        # blocked-layout Conv (PP-OCRv4 det: one such Conv took 24 of 146 ms, measured by
        # bench/cost_model.py's profiles). A float Conv with its float weight is faster.
        draft.decide(
            node,
            NodeRole.FLOAT,
            "float: no integer kernel after it, and a quantized output would clip values beyond "
            "the calibrated range; a weight-only Conv would run slower than float",
        )
    return draft.freeze()
