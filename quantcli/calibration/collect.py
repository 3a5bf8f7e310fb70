"""Running data through onnxruntime and reducing every observed tensor with an observer.

Samples may differ in every dynamic dim (a sentence's length, an image's width): a run only ever
stacks samples of one shape, and observers pool what each run gives, so nothing of two shapes is
ever concatenated.

Streaming: each batch's activations are reduced (min, max, histogram) and dropped before the next
batch runs, so memory does not grow with the number of samples. onnxruntime materializes every
graph output of a run, whether or not ``run(output_names=...)`` asks for it (measured: exposing 20
tensors of 64 MB costs 1.4 GB peak either way), so when one batch of all observed tensors would
exceed the memory budget the tensors are split into groups, each exposed by its own session that
runs over all the data: more passes, bounded memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx
import onnx_ir as ir

from quantcli import engine
from quantcli.calibration.branches import branch_values, open_tap
from quantcli.calibration.data import Batch, Dataset, Feed
from quantcli.calibration.observers import HistogramObserver, MinMaxObserver, TensorRange, TensorStats
from quantcli.errors import CalibrationDataError, EngineCrashError
from quantcli.graph.io import external_folder

__all__ = [
    "MEMORY_BUDGET",
    "Advance",
    "Progress",
    "TensorRange",
    "bytes_per_sample",
    "collect_stats",
    "observe",
    "plan_groups",
    "reporting",
    "run_batches",
    "run_feed",
    "run_samples",
    "stage",
    "within",
]

logger = logging.getLogger(__name__)

# Called with (units done, units in all) after every batch; a unit is one sample in one pass.
Advance = Callable[[int, int], None]


class Progress(Protocol):
    """Where a long run says how far it is: the stage it entered, and units done within it.

    The caller (the CLI) decides how to show it; the library only calls it at stage boundaries
    (``load``, ``calibrate``, ``build candidate``, ``evaluate``, ``time candidates``, ``diagnose``,
    ``fallback trial``, ...) and after every calibration batch.
    """

    def stage(self, name: str, index: int = 0, count: int = 0, total: int | None = None) -> None:
        """Stage ``name`` begins: the ``index``-th of ``count`` like it (0: not one of a series),
        with ``total`` units to do if known (calibration samples)."""

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current stage are done."""


# The progress of the run in this context. A context variable, not a parameter threaded through
# every stage function: stages report their boundaries wherever they are, and the functions
# between the public entry point and them keep their signatures.
_CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("quantcli_progress", default=None)


@contextlib.contextmanager
def reporting(progress: Progress | None) -> Iterator[None]:
    """Send the stages of the code inside to ``progress`` (None: keep the current one)."""
    if progress is None:
        yield
        return
    token = _CURRENT.set(progress)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def stage(name: str, index: int = 0, count: int = 0, total: int | None = None) -> Advance | None:
    """Report that stage ``name`` begins; returns where its units go (None: nobody listens)."""
    progress = _CURRENT.get()
    if progress is None:
        return None
    progress.stage(name, index, count, total)
    return progress


def within(advance: Advance | None, offset: int, samples: int, total: int) -> Advance | None:
    """``advance`` for one part of a stage: a pass over ``samples`` samples that starts at
    ``offset`` of the stage's ``total``, however many passes ``collect_stats`` makes."""
    if advance is None:
        return None
    target = advance

    def update(done: int, units: int) -> None:
        target(offset + (samples * done // units if units else samples), total)

    return update


# Bytes of observed tensors one onnxruntime run may return.
MEMORY_BUDGET = 256 * 2**20


def run_feed(session: object, names: list[str], feed: Batch, source: str) -> list[np.ndarray]:
    try:
        return session.run(names, feed)  # type: ignore[attr-defined, no-any-return]
    except EngineCrashError:
        raise  # the engine died, whatever the data: its own one line says so
    except Exception as exc:  # onnxruntime's errors have no common public base class
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationDataError(
            f"{source}: onnxruntime cannot run the model on this data ({first_line})"
        ) from exc


def run_batches(
    session: object, names: list[str], dataset: Dataset, batch_size: int
) -> Iterator[tuple[Feed, list[np.ndarray]]]:
    """Run every feed of same-shaped samples; yield (the feed, requested outputs).

    A dynamic batch axis is a promise some exported models do not keep (a Reshape with the batch
    size baked in): if a feed of several samples fails, it and every later one run one sample at
    a time; a failure then is the data's or the model's.
    """
    return _run_feeds(session, names, dataset, batch_size, per_sample=False)


def run_samples(
    session: object, names: list[str], dataset: Dataset, batch_size: int
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Run every sample; yield (its position in ``dataset``, its requested outputs), in the order
    :meth:`Dataset.batches` gives. Outputs of a batch are cut along their first axis; when an
    output has no such axis (not one row per sample), that batch and every later one run one
    sample at a time.
    """
    for feed, outputs in _run_feeds(session, names, dataset, batch_size, per_sample=True):
        for row, position in enumerate(feed.positions):
            yield position, outputs if len(feed.positions) == 1 else [o[row : row + 1] for o in outputs]


def _run_feeds(
    session: object, names: list[str], dataset: Dataset, batch_size: int, *, per_sample: bool
) -> Iterator[tuple[Feed, list[np.ndarray]]]:
    """Feeds and their outputs; with ``per_sample`` every output of a feed of several samples
    has one row per sample."""
    source = str(dataset.source)
    alone = False
    for feed in dataset.batches(engine.batch_size(session, batch_size)):
        count = len(feed.positions)
        outputs = None
        if not alone or count == 1:
            try:
                outputs = run_feed(session, names, feed.arrays, source)
            except CalibrationDataError:
                if count == 1:
                    raise
                logger.info("the model rejects batches of %d samples; running one sample at a time", count)
                alone = True
        rows_ok = outputs is None or all(o is None or (o.ndim > 0 and o.shape[0] == count) for o in outputs)
        if per_sample and count > 1 and not rows_ok:
            logger.info("an output has no batch axis; running one sample at a time")
            alone, outputs = True, None
        if outputs is not None:
            yield feed, outputs
            continue
        for single in feed.split():
            yield single, run_feed(session, names, single.arrays, source)


def bytes_per_sample(proto: onnx.ModelProto, names: Sequence[str], feed: Batch) -> dict[str, int]:
    """Bytes of each tensor for one sample, from shape inference on one sample's shapes.

    Inputs get the dims of ``feed`` (one sample), so convolutions and reshapes of dynamic inputs
    get concrete shapes too; a tensor whose shape stays unknown counts as the largest known one.
    """
    shaped = onnx.ModelProto()
    shaped.CopyFrom(proto)
    del shaped.graph.value_info[:]  # earlier inference's symbolic dims would be kept, not refined
    for value in shaped.graph.input:
        if value.name in feed:
            dims = value.type.tensor_type.shape.dim
            concrete = feed[value.name].shape
            if len(dims) == len(concrete):
                for dim, size in zip(dims, concrete, strict=True):
                    dim.Clear()
                    dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(shaped, data_prop=True)
    except Exception:  # inference is only an estimate here; the run itself reports real errors
        inferred = shaped
    known: dict[str, int] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape") and None not in dims:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
            known[value.name] = itemsize * math.prod(d for d in dims if d is not None)
    fallback = max((known[n] for n in names if n in known), default=4)
    return {name: known.get(name, fallback) for name in names}


def plan_groups(
    sizes: dict[str, int], batch_size: int, budget: int
) -> tuple[int, tuple[tuple[str, ...], ...]]:
    """(batch size, groups of tensors) so that one run returns at most ``budget`` bytes.

    Fewer groups come first (each group is a pass over all the data): the batch shrinks before
    the tensors are split; a tensor larger than the budget on its own gets a group of its own.
    """
    names = tuple(sorted(sizes))
    per_sample = sum(sizes.values())
    if per_sample * batch_size <= budget:
        return batch_size, (names,)
    if per_sample <= budget:
        return max(1, budget // per_sample), (names,)
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    used = 0
    for name in names:
        if current and used + sizes[name] > budget:
            groups.append(tuple(current))
            current, used = [], 0
        current.append(name)
        used += sizes[name]
    groups.append(tuple(current))
    return 1, tuple(groups)


def collect_stats(
    model: ir.Model,
    tensors: Sequence[str],
    dataset: Dataset,
    *,
    batch_size: int,
    histograms: bool,
    progress: Advance | None = None,
    budget: int = MEMORY_BUDGET,
    threads: int | None = None,
) -> dict[str, TensorStats]:
    """Observe each tensor of ``tensors`` over every sample of ``dataset``.

    ``histograms`` adds a histogram to min and max (needed by every method but minmax);
    ``threads`` sizes onnxruntime's intra-op pool (None: its default, every core).
    """
    names = sorted(set(tensors))
    observers: dict[str, MinMaxObserver] = {
        name: HistogramObserver() if histograms else MinMaxObserver() for name in names
    }
    observe(
        model, observers, dataset, batch_size=batch_size, progress=progress, budget=budget, threads=threads
    )
    stats = {name: observer.result() for name, observer in observers.items()}
    # A tensor of an If branch no sample takes was never seen: it has no statistics.
    unseen = branch_values(model.graph) & {name for name, found in stats.items() if not found.count}
    return {name: found for name, found in stats.items() if name not in unseen}


class TensorObserver(Protocol):
    """Reduces every batch of one tensor; ``finite`` turns False once a batch held a NaN."""

    @property
    def finite(self) -> bool: ...

    def update(self, values: np.ndarray) -> None: ...


def observe(
    model: ir.Model,
    observers: Mapping[str, TensorObserver],
    dataset: Dataset,
    *,
    batch_size: int,
    progress: Advance | None = None,
    budget: int = MEMORY_BUDGET,
    threads: int | None = None,
) -> None:
    """Run ``dataset`` through ``model`` and feed every batch of each tensor named in
    ``observers`` to its observer, in passes that each return at most ``budget`` bytes."""
    names = sorted(observers)
    if not names:
        return
    proto = ir.serde.serialize_model(model)
    # The largest sample sets the budget: samples may differ in every dynamic dim.
    largest = dataset.largest_sample()
    sizes = bytes_per_sample(proto, names, largest) if largest is not None else dict.fromkeys(names, 0)
    batch, groups = plan_groups(sizes, batch_size, budget)
    if len(groups) > 1 or batch < batch_size:
        logger.info(
            "observing %d tensors in %d pass(es) of batch %d to stay within %d MiB",
            len(names),
            len(groups),
            batch,
            budget >> 20,
        )
    total = dataset.num_samples * len(groups)
    done = 0
    for group in groups:
        # A tensor inside an If branch is observed by a tap (None on a run taking the other branch).
        session = open_tap(model, proto, group, threads, external_folder(model))
        for feed, outputs in run_batches(session, list(group), dataset, batch):
            for name, array in zip(group, outputs, strict=True):
                if array is not None:
                    observers[name].update(array)
            done += len(feed.positions)
            if progress is not None:
                progress(done, total)
        del session
    for name, observer in observers.items():
        if not observer.finite:
            raise CalibrationDataError(f"{dataset.source}: tensor '{name}' took NaN values on this data")
