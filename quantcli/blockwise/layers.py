"""The 4-bit weights of a plan's block-wise nodes, rounded by the chosen method, with their cost.

Given the nodes (``QuantPlan.blockwise``) and, for the methods that need them, each activation's
:class:`~quantcli.blockwise.statistics.InputStatistics`, :func:`quantize_layers` returns what
:class:`~quantcli.passes.nbits.WriteBlockwiseWeightsPass` writes and, per layer, what the
report shows: the weight-reconstruction error and, with statistics, the output-error proxy.
Layers reading one activation are rounded together by AWQ (they share its input scale).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.blockwise.awq import awq
from quantcli.blockwise.gptq import gptq
from quantcli.blockwise.hqq import hqq
from quantcli.blockwise.layout import BlockQuantized, PackedBlocks
from quantcli.blockwise.metrics import layer_error, weight_error
from quantcli.blockwise.rtn import rtn
from quantcli.blockwise.statistics import InputStatistics
from quantcli.blockwise.targets import BlockTarget, block_targets
from quantcli.config import BlockMethod

__all__ = [
    "BlockLayer",
    "BlockedWeights",
    "quantize_group",
    "quantize_layers",
    "quantize_tables",
    "readers",
    "statistics_needed",
    "targets_named",
]


@dataclass(frozen=True)
class BlockLayer:
    """What 4 bits cost one layer. ``weight_error``: ``|dW|_F / |W|_F``; ``output_error``:
    ``tr(dW H dW^T) / tr(W H W^T)`` on the calibration data (None: no statistics observed);
    ``alpha``: AWQ's exponent (None: no AWQ)."""

    node: str
    op_type: str
    k: int
    n: int
    weight_error: float
    output_error: float | None
    alpha: float | None = None

    @property
    def output_sqnr_db(self) -> float | None:
        if self.output_error is None:
            return None
        return float(10 * np.log10(1.0 / max(self.output_error, 1e-30)))

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "k": self.k,
            "n": self.n,
            "weight_error": self.weight_error,
            "output_error": self.output_error,
            "output_sqnr_db": self.output_sqnr_db,
            "awq_alpha": self.alpha,
        }


@dataclass(frozen=True, eq=False)
class BlockedWeights:
    """The quantized weights by node name, and their layers' costs in graph order; the
    quantized Gather tables by initializer name (their costs follow the layers')."""

    weights: Mapping[str, BlockQuantized | PackedBlocks]
    layers: tuple[BlockLayer, ...]
    tables: Mapping[str, BlockQuantized] = field(default_factory=dict)


def targets_named(graph: ir.Graph, nodes: Sequence[str]) -> list[BlockTarget]:
    """The block-wise targets among ``nodes``, in graph order."""
    wanted = set(nodes)
    found = [t for t in block_targets(graph) if t.node in wanted]
    assert len(found) == len(wanted), (sorted(wanted), [t.node for t in found])
    return found


def statistics_needed(graph: ir.Graph, nodes: Sequence[str]) -> dict[str, int]:
    """The activations the nodes read, each with its K: what GPTQ and AWQ observe."""
    return {t.activation: t.k for t in targets_named(graph, nodes)}


def _round(
    method: BlockMethod,
    rows: list[npt.NDArray[np.float32]],
    stats: InputStatistics | None,
    block_size: int,
    symmetric: bool,
) -> tuple[list[BlockQuantized], float | None]:
    """The layers ``rows`` (one activation's readers) rounded by ``method``, and AWQ's alpha."""
    if method is BlockMethod.RTN:
        return [rtn(w, block_size, symmetric=symmetric) for w in rows], None
    if method is BlockMethod.HQQ:
        return [hqq(w, block_size, symmetric=symmetric) for w in rows], None
    assert stats is not None, "gptq and awq need the layer's statistics"
    hessian = stats.gram
    if method is BlockMethod.GPTQ:
        return [gptq(w, hessian, block_size, symmetric=symmetric) for w in rows], None

    def with_gptq(w: npt.NDArray[np.float32], scale: npt.NDArray[np.float32] | None) -> BlockQuantized:
        return gptq(w, hessian, block_size, symmetric=symmetric, input_scale=scale)

    rounder = with_gptq if method is BlockMethod.AWQ_GPTQ else None
    alpha, quantized = awq(rows, hessian, stats.mean_abs, block_size, symmetric=symmetric, rounder=rounder)
    return quantized, alpha


def quantize_layers(
    graph: ir.Graph,
    nodes: Sequence[str],
    *,
    method: BlockMethod,
    block_size: int,
    symmetric: bool,
    statistics: Mapping[str, InputStatistics],
    sizes: Mapping[str, int] | None = None,
) -> BlockedWeights:
    """The 4-bit weights of ``nodes`` (MatMul/Gemm of ``graph``), and their costs.

    ``statistics``: by activation name, as :func:`statistics_needed` lists them; required for
    gptq and awq, optional for rtn (then the output-error proxy is reported too). ``sizes``:
    block sizes by node where one differs from ``block_size`` (a recipe override); AWQ scales
    together the layers reading one activation at one block size.
    """
    targets = targets_named(graph, nodes)
    weights: dict[str, BlockQuantized] = {}
    costs: dict[str, BlockLayer] = {}
    for activation, group in readers(targets).items():
        for size, same in by_block_size(group, block_size, sizes).items():
            for target, quantized, cost in quantize_group(
                graph,
                same,
                method=method,
                block_size=size,
                symmetric=symmetric,
                statistics=statistics.get(activation),
            ):
                weights[target.node], costs[target.node] = quantized, cost
    return BlockedWeights(weights, tuple(costs[t.node] for t in targets))


def by_block_size(
    group: Sequence[BlockTarget], block_size: int, sizes: Mapping[str, int] | None
) -> dict[int, list[BlockTarget]]:
    """One activation's readers split by their block size (``sizes``: by node, where a recipe
    override sets one other than ``block_size``)."""
    split: dict[int, list[BlockTarget]] = {}
    for target in group:
        split.setdefault((sizes or {}).get(target.node, block_size), []).append(target)
    return split


def readers(targets: Sequence[BlockTarget]) -> dict[str, list[BlockTarget]]:
    """The targets grouped by the activation they read, groups in order of their first reader."""
    by_activation: dict[str, list[BlockTarget]] = {}
    for target in targets:
        by_activation.setdefault(target.activation, []).append(target)
    return by_activation


def quantize_group(
    graph: ir.Graph,
    group: Sequence[BlockTarget],
    *,
    method: BlockMethod,
    block_size: int,
    symmetric: bool,
    statistics: InputStatistics | None,
) -> Iterator[tuple[BlockTarget, BlockQuantized, BlockLayer]]:
    """The layers of one activation rounded by ``method`` (they share AWQ's input scale), each
    with its cost. Their float weights are read here and released when this returns."""
    rows = [t.rows(graph) for t in group]
    quantized, alpha = _round(method, rows, statistics, block_size, symmetric)
    for target, w, q in zip(group, rows, quantized, strict=True):
        if statistics is not None:
            error = layer_error(w, q, statistics.gram)
            reconstruction, output = error.weight, error.output
        else:
            reconstruction, output = weight_error(w, q), None
        yield (
            target,
            q,
            BlockLayer(target.node, target.op_type, target.k, target.n, reconstruction, output, alpha),
        )


def quantize_tables(
    blocked: BlockedWeights,
    graph: ir.Graph,
    tables: Sequence[str],
    *,
    block_size: int,
    symmetric: bool,
    sizes: Mapping[str, int] | None = None,
) -> BlockedWeights:
    """``blocked`` with the Gather ``tables`` (``[V, D]`` initializers, rows of whole blocks)
    rounded to nearest: a table's rows are looked up, not multiplied, so no statistic of an
    input would weigh its error; its cost is the weight-reconstruction error alone."""
    quantized: dict[str, BlockQuantized] = {}
    costs = []
    for name in tables:
        tensor = graph.initializers[name].const_value
        assert tensor is not None
        rows = np.asarray(tensor.numpy(), np.float32)
        q = rtn(rows, (sizes or {}).get(name, block_size), symmetric=symmetric)
        quantized[name] = q
        costs.append(BlockLayer(name, "Gather", q.k, q.n, weight_error(rows, q), None))
    return replace(blocked, layers=(*blocked.layers, *costs), tables=quantized)
