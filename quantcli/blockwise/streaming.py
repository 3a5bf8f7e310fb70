"""4-bit weights of a model past memory: each layer read, rounded and written out in turn.

A model whose weights sit in external data (memory-mapped, read lazily) and pass
:data:`STREAM_BYTES` is quantized so that at no time more than one layer's weights, one
segment's statistics and one segment's onnxruntime session are in memory:

- rtn: each weight is read, rounded and written to a scratch file (:class:`~quantcli.graph.spill.Spill`),
  then released; the rewrite makes initializers of the scratch tensors, which the output writer
  copies into the output's data file piece by piece.
- gptq, awq, awq+gptq need each layer's input ``X^T X``, observed on the calibration data. The
  float model is cut into segments of bounded weights (:mod:`quantcli.graph.segments`) and the
  data runs through them one segment at a time: the tensors crossing into the next segment are
  kept for every calibration batch (the only activations held), the statistics of the layers
  whose first reader is in the segment are gathered, those layers are rounded and written out,
  and the statistics dropped. So the per-layer ``K x K`` sums of one segment are all that is
  held, never those of the whole model (a 4096-wide layer's is 128 MB: a model's worth of them
  would exceed its float size).

The statistics are the same sums, batch by batch in the same order, as the in-memory path's
(:func:`~quantcli.blockwise.statistics.collect_input_statistics`), so a model takes the same bytes
either way while onnxruntime computes its segments as it computes the whole (tests check it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from quantcli.blockwise.layers import (
    BlockedWeights,
    BlockLayer,
    by_block_size,
    quantize_group,
    readers,
    targets_named,
)
from quantcli.blockwise.layout import PackedBlocks
from quantcli.blockwise.statistics import GramObserver, InputStatistics
from quantcli.blockwise.targets import BlockTarget
from quantcli.calibration.collect import MEMORY_BUDGET, bytes_per_sample, plan_groups, stage
from quantcli.calibration.data import Dataset
from quantcli.config import QuantConfig
from quantcli.errors import CalibrationDataError, QuantCliError
from quantcli.graph.io import external_folder
from quantcli.graph.segments import Segment, cut, prune, run_segment
from quantcli.graph.spill import Spill

__all__ = ["STREAM_BYTES", "external_bytes", "quantize_streaming", "streams"]

# Weights in external data past which a 4-bit build streams (a fixed size, not the free memory:
# the same model gives the same bytes on any machine).
STREAM_BYTES = 2**30


def external_bytes(model: ir.Model) -> int:
    """Bytes of the main graph's weights held in external data files (not in memory)."""
    return sum(
        v.const_value.nbytes
        for v in model.graph.initializers.values()
        if isinstance(v.const_value, ir.ExternalTensor)
    )


def streams(model: ir.Model, config: QuantConfig) -> bool:
    """Whether a 4-bit build of ``model`` streams: its external weights pass :data:`STREAM_BYTES`."""
    return config.four_bits and external_bytes(model) >= STREAM_BYTES


def quantize_streaming(
    model: ir.Model,
    nodes: Sequence[str],
    config: QuantConfig,
    *,
    calibration: Dataset | None,
    spill: Spill,
    sizes: Mapping[str, int] | None = None,
) -> BlockedWeights:
    """The 4-bit weights of ``nodes``, each written to ``spill`` as soon as it is rounded, and
    their costs; the statistics gptq and awq need observed segment by segment."""
    targets = targets_named(model.graph, nodes)
    groups = readers(targets)
    weights: dict[str, PackedBlocks] = {}
    costs: dict[str, BlockLayer] = {}
    observed: Iterator[tuple[str, InputStatistics | None]]
    if config.block_method.needs_statistics:
        assert calibration is not None, "check_request requires --data for gptq and awq"
        observed = _observed(model, groups, calibration, config.batch_size)
    else:
        observed = ((activation, None) for activation in groups)
    for activation, statistics in observed:
        for size, same in by_block_size(groups[activation], config.block_size, sizes).items():
            for target, quantized, cost in quantize_group(
                model.graph,
                same,
                method=config.block_method,
                block_size=size,
                symmetric=config.weight_symmetric,
                statistics=statistics,
            ):
                weights[target.node] = PackedBlocks.of(quantized, spill.store)
                costs[target.node] = cost
        del statistics  # before the next segment's are gathered
    return BlockedWeights(weights, tuple(costs[t.node] for t in targets))


def _batch(proto_model: ir.Model, names: Sequence[str], dataset: Dataset, batch_size: int) -> int:
    """The batch the in-memory observation would run (its budget on the observed tensors)."""
    largest = dataset.largest_sample()
    if largest is None:
        return batch_size
    sizes = bytes_per_sample(ir.serde.serialize_model(proto_model), names, largest)
    return plan_groups(sizes, batch_size, MEMORY_BUDGET)[0]


def _segments(model: ir.Model, groups: Mapping[str, list[BlockTarget]]) -> list[Segment]:
    """The float model cut so that a segment's weights and the statistics observed in it stay
    within the segment budget (a layer's ``X^T X`` is ``8 K^2`` bytes)."""
    proto = ir.serde.serialize_model(model)
    costs = {group[0].node: 8 * group[0].k ** 2 for group in groups.values()}
    segments = cut(proto, node_costs=costs, keep=groups)
    if segments is None:
        raise CalibrationDataError(
            f"{model.graph.name or 'the model'}: a tensor between two parts of the graph has no known type, "
            "so the model cannot be observed part by part; run shape inference on it first"
        )
    return segments


def _observed(
    model: ir.Model, groups: Mapping[str, list[BlockTarget]], dataset: Dataset, batch_size: int
) -> Iterator[tuple[str, InputStatistics]]:
    """Each activation's statistics, in the order of the segments their first readers are in."""
    segments = _segments(model, groups)
    first = {group[0].node: activation for activation, group in groups.items()}
    due: list[list[str]] = [[first[n] for n in s.nodes if n in first] for s in segments]
    batch = _batch(model, list(groups), dataset, batch_size)
    states = [dict(feed.arrays) for feed in dataset.batches(batch)]
    advance = stage("observe and round 4-bit layers", total=len(segments))
    folder = external_folder(model)
    for index, segment in enumerate(segments):
        if not any(due[index:]):  # every statistic is in: the rest of the model need not run
            break
        _run(segment, states, folder, dataset)
        for activation in due[index]:
            observer = GramObserver(groups[activation][0].k)
            for state in states:
                observer.update(np.asarray(state[activation], np.float32))
            if not observer.finite:
                raise CalibrationDataError(
                    f"{dataset.source}: tensor '{activation}' took NaN values on this data"
                )
            statistics = observer.result()
            del observer  # its K x K sum was copied into the result: hold one of them
            yield activation, statistics
            del statistics
        prune(segments, index, states, ())
        if advance is not None:
            advance(index + 1, len(segments))


def _run(
    segment: Segment, states: list[dict[str, np.ndarray]], folder: Path | None, dataset: Dataset
) -> None:
    try:
        run_segment(segment, states, data_folder=folder)
    except QuantCliError:
        raise
    except Exception as exc:  # onnxruntime's errors have no common public base class
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CalibrationDataError(
            f"{dataset.source}: onnxruntime cannot run the model on this data ({first_line})"
        ) from exc
