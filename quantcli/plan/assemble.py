"""The last phase: from a settled :class:`Placement` to the tensors the passes quantize.

:func:`assemble` lists every activation, weight, bias, fold and dynamic node as a
:class:`QuantPlan`; on the way, :func:`settle_carries` returns to float a data-movement node
that nothing needs in int8 (known only once the activations are listed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import onnx_ir as ir

from quantcli.plan.facts import activation_slots, constant, large_constant_inputs, matches, stored_weights
from quantcli.plan.placement import Context, Draft, Placement
from quantcli.plan.values import ActivationSpec, BiasSpec, NodeRole, QuantPlan, WeightSpec
from quantcli.target import OpKind, OpRule

__all__ = ["assemble", "settle_carries"]

_CHANGED = (NodeRole.INTEGER, NodeRole.DYNAMIC, NodeRole.WEIGHT_ONLY)


@dataclass
class _Tensors:
    """What the plan quantizes, collected node by node (private to one assemble call)."""

    activations: dict[str, ActivationSpec] = field(default_factory=dict)
    weights: dict[str, set[int | None]] = field(default_factory=dict)  # name -> channel axes wanted
    constants: set[str] = field(default_factory=set)  # activation-slot constants, stored like activations
    tables: set[str] = field(default_factory=set)  # Gather tables read as int8
    gathered: set[str] = field(default_factory=set)  # tables whose gathered rows are dequantized


def _add_activation(ctx: Context, placement: Placement, tensors: _Tensors, value: ir.Value) -> None:
    name = value.name or ""
    source = placement.available.get(name)
    table = None if source is None else source.table
    range_of = name if source is None or table is not None else source.range_of
    tensors.activations[name] = ActivationSpec(
        name=name,
        range_of=range_of,
        nonnegative=table is None and range_of in placement.nonnegative,
        table=table,
        replaces_graph_output=name in ctx.graph_outputs and source is not None,
    )


def _fold_target(placement: Placement, value: ir.Value) -> ir.Value:
    """The tensor that carries the quantizer: the folded Relu's output, or ``value``."""
    uses = list(value.uses())
    if len(uses) == 1 and id(uses[0].node) in placement.folds:
        return uses[0].node.outputs[0]
    return value


def _node_activations(
    ctx: Context, placement: Placement, tensors: _Tensors, node: ir.Node, rule: OpRule
) -> None:
    """Quantize an integer node's inputs, and its output where the kernel needs it."""
    float_output = id(node) in placement.float_output
    if rule.output_required and not float_output:
        _add_activation(ctx, placement, tensors, _fold_target(placement, node.outputs[0]))
    for index in activation_slots(node, rule):
        value = node.inputs[index]
        assert value is not None
        if constant(value) is not None:
            tensors.constants.add(value.name or "")
        else:
            # A float-output node (phases.drop_unread_outputs) still reads int8.
            _add_activation(ctx, placement, tensors, value)


def _add_weights(ctx: Context, tensors: _Tensors, node: ir.Node, rule: OpRule) -> None:
    """Record the channel axis ``node`` wants for each constant weight (None: per tensor)."""
    candidates: list[ir.Value | None]
    if rule.weight_slots is not None:
        candidates = list(stored_weights(node, rule, ctx.target.min_compute_weights))
    elif rule.weight_input is not None:
        candidates = [node.inputs[rule.weight_input]]
    else:
        return
    config = ctx.config
    for weight in candidates:
        if weight is None or constant(weight) is None:
            continue
        axis = None
        if rule.weight_axis is not None and config.per_channel and not matches(node, config.per_tensor):
            axis = rule.weight_axis(node, weight)
        tensors.weights.setdefault(weight.name or "", set()).add(axis)


def _collect_node(ctx: Context, placement: Placement, tensors: _Tensors, node: ir.Node, rule: OpRule) -> None:
    role = placement.role(node)
    table = node.inputs[0].name or "" if rule.kind is OpKind.TABLE and node.inputs[0] is not None else ""
    if rule.kind is OpKind.ELEMENTWISE and role is NodeRole.WEIGHT_ONLY:
        tensors.constants.update(
            v.name or "" for v in large_constant_inputs(node, ctx.target.min_stored_constant)
        )
    elif rule.kind is OpKind.TABLE and role is NodeRole.WEIGHT_ONLY:
        tensors.gathered.add(table)
        tensors.weights.setdefault(table, set()).add(None)
    elif rule.kind is OpKind.TABLE:
        tensors.tables.add(table)
    else:
        _add_weights(ctx, tensors, node, rule)
    if id(node) in placement.integer:
        _node_activations(ctx, placement, tensors, node, rule)


def _carry_chains(ctx: Context, placement: Placement, tensors: _Tensors) -> None:
    """Quantize every link of a data-movement chain that ends in int8, so that onnxruntime sees
    DQ -> op -> Q with equal parameters at each link and drops them all."""
    producers = {out.name: node for node in ctx.nodes for out in node.outputs}
    todo = list(tensors.activations)
    while todo:
        producer = producers.get(todo.pop())
        if producer is None or placement.role(producer) is not NodeRole.CARRY:
            continue
        source = producer.inputs[0]
        if source is not None and source.name not in tensors.activations:
            _add_activation(ctx, placement, tensors, source)
            todo.append(source.name or "")


def _collect(ctx: Context, placement: Placement) -> _Tensors:
    tensors = _Tensors()
    for node in ctx.nodes:
        rule = ctx.target.rule(node)
        if rule is not None and placement.role(node) in _CHANGED:
            _collect_node(ctx, placement, tensors, node, rule)
    _carry_chains(ctx, placement, tensors)
    return tensors


def _links(ctx: Context, placement: Placement) -> set[str]:
    """The tensors after a chain's root that get no pair on a one-pair-per-chain target: the
    outputs of carrying nodes and of integer ops whose inputs share one scale."""
    links: set[str] = set()
    for node in ctx.nodes:
        rule = ctx.target.rule(node)
        if placement.role(node) is NodeRole.CARRY or (
            rule is not None and rule.shares_scale and id(node) in placement.integer
        ):
            links.update(out.name or "" for out in node.outputs)
    return links


def _shared_groups(ctx: Context, placement: Placement, tensors: _Tensors) -> dict[str, tuple[str, ...]]:
    """range_of -> every range joined with it: an integer op that shares its inputs' scale joins
    the ranges of its inputs and its output (docs/openvino.md rule 4), transitively."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for node in ctx.nodes:
        rule = ctx.target.rule(node)
        if rule is None or not rule.shares_scale or id(node) not in placement.integer:
            continue
        names = [v.name or "" for v in (*node.inputs, *node.outputs) if v is not None and constant(v) is None]
        members = [tensors.activations[n].range_of if n in tensors.activations else n for n in names]
        for member in members[1:]:
            parent[root(member)] = root(members[0])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    return {name: tuple(sorted(groups[root(name)])) for name in parent if len(groups[root(name)]) > 1}


def _one_pair_per_chain(ctx: Context, placement: Placement, tensors: _Tensors) -> dict[str, ActivationSpec]:
    """The activations of a one-pair-per-chain target: roots only, each with the ranges it shares."""
    groups = _shared_groups(ctx, placement, tensors)
    links = _links(ctx, placement)
    kept: dict[str, ActivationSpec] = {}
    for name, spec in tensors.activations.items():
        if name in links:
            continue
        group = groups.get(spec.range_of, ())
        shared = tuple(n for n in group if n != spec.range_of)
        nonnegative = bool(group) and all(n in placement.nonnegative for n in group)
        kept[name] = replace(spec, shared=shared, nonnegative=nonnegative if group else spec.nonnegative)
    return kept


def settle_carries(
    ctx: Context, placement: Placement, activations: Mapping[str, ActivationSpec]
) -> Placement:
    """A carrying node whose output nobody needs in int8 (not among ``activations``) just moves
    float data."""
    draft = Draft(ctx, placement)
    for node in ctx.nodes:
        if placement.role(node) is NodeRole.CARRY and not any(o.name in activations for o in node.outputs):
            draft.decide(node, NodeRole.FLOAT, "float: moves float data; nothing after it takes int8")
    return draft.freeze()


def _weight_specs(tensors: _Tensors) -> list[WeightSpec]:
    # A table is stored like an activation (uint8 by default) so the rows it yields feed
    # integer kernels directly; one that is also a weight elsewhere stays per-tensor int8.
    weights = {name: set(axes) for name, axes in tensors.weights.items()}
    constants = set(tensors.constants)
    for table in tensors.tables:
        if table in weights:
            weights[table].add(None)
        else:
            constants.add(table)
    specs = [WeightSpec(name, next(iter(axes)) if len(axes) == 1 else None) for name, axes in weights.items()]
    specs += [WeightSpec(n, None, symmetric=False) for n in sorted(constants - weights.keys())]
    return sorted(specs, key=lambda w: w.name)


def _bias(
    ctx: Context, node: ir.Node, rule: OpRule, activations: set[str], weights: set[str]
) -> BiasSpec | None:
    """The int32 bias of an integer ``node`` whose input and weight are quantized, if it has one."""
    if rule.bias_input is None or len(node.inputs) <= rule.bias_input:
        return None
    if rule.bias_fuses is not None and not rule.bias_fuses(node):
        return None
    bias, data, weight = node.inputs[rule.bias_input], node.inputs[0], node.inputs[1]
    tensor = constant(bias)
    if bias is None or data is None or weight is None or tensor is None or len(bias.uses()) != 1:
        return None
    if tensor.dtype != ir.DataType.FLOAT or len(tensor.shape) != 1:
        return None
    if data.name in activations and weight.name in weights:
        return BiasSpec(bias.name or "", node.name or "", data.name or "", weight.name or "")
    return None


def assemble(ctx: Context, placement: Placement) -> QuantPlan:
    """The plan the passes carry out, from the settled placement."""
    tensors = _collect(ctx, placement)
    activations = tensors.activations
    placement = settle_carries(ctx, placement, activations)
    if ctx.target.one_pair_per_chain:
        activations = _one_pair_per_chain(ctx, placement, tensors)
    weights = _weight_specs(tensors)
    symmetric = {w.name for w in weights if w.symmetric}
    nodes = ctx.nodes
    biases = (
        _bias(ctx, node, rule, set(activations), symmetric)
        for node in nodes
        if id(node) in placement.integer and (rule := ctx.target.rule(node)) is not None
    )
    return QuantPlan(
        decisions=tuple(placement.decisions[id(n)] for n in nodes),
        activations=tuple(activations[k] for k in sorted(activations)),
        weights=tuple(weights),
        biases=tuple(b for b in biases if b is not None),
        folds=tuple(placement.folds[id(n)] for n in nodes if id(n) in placement.folds),
        observed=tuple(
            sorted({n for a in activations.values() if a.table is None for n in (a.range_of, *a.shared)})
        ),
        mode=ctx.strategy.mode,
        dynamic=tuple(placement.dynamic[id(n)] for n in nodes if id(n) in placement.dynamic),
        lstm=tuple(placement.lstm[id(n)] for n in nodes if id(n) in placement.lstm),
        gathered_tables=tuple(sorted(tensors.gathered)),
        kept_float=tuple(sorted(ctx.keep_float.items())),
    )
