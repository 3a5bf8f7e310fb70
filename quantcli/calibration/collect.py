"""Running data through onnxruntime and reducing every observed tensor to its range.

Streaming: each batch's activations are reduced to a min and a max and dropped before the next
batch runs, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from quantcli.calibration.data import Batch, Dataset
from quantcli.errors import CalibrationDataError
from quantcli.graph.io import external_folder, open_session

__all__ = ["Progress", "TensorRange", "collect_ranges", "run_batches"]

logger = logging.getLogger(__name__)

# Called with (samples done, samples in all) after every batch.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TensorRange:
    """The smallest and largest value a tensor took over the calibration data."""

    min: float
    max: float

    def merge(self, other: TensorRange) -> TensorRange:
        return TensorRange(min(self.min, other.min), max(self.max, other.max))


def _with_outputs(model: ir.Model, names: Sequence[str]) -> onnx.ModelProto:
    """The model with ``names`` added as graph outputs so onnxruntime returns them."""
    proto = ir.serde.serialize_model(model)
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return proto


def _run(session: object, names: list[str], feed: Batch, source: str) -> list[np.ndarray]:
    try:
        return session.run(names, feed)  # type: ignore[attr-defined, no-any-return]
    except Exception as exc:  # onnxruntime's errors have no common public base class
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationDataError(
            f"{source}: onnxruntime cannot run the model on this data ({first_line})"
        ) from exc


def run_batches(
    session: object, names: list[str], dataset: Dataset, batch_size: int
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Run every batch; yield (samples in the batch, requested outputs).

    A dynamic batch axis is a promise some exported models do not keep (a Reshape with the batch
    size baked in): if the first batch of several samples fails, the run goes on one sample at a
    time; a failure then is the data's or the model's.
    """
    source = str(dataset.source)
    size = batch_size if dataset.can_batch else 1
    for index, feed in enumerate(dataset.batches(size)):
        count = next(iter(feed.values())).shape[0] if dataset.can_batch else 1
        try:
            outputs = _run(session, names, feed, source)
        except CalibrationDataError:
            if index > 0 or count == 1:
                raise
            logger.info("the model rejects batches of %d samples; running one sample at a time", count)
            yield from run_batches(session, names, dataset, 1)
            return
        yield count, outputs


def collect_ranges(
    model: ir.Model,
    tensors: Sequence[str],
    dataset: Dataset,
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> dict[str, TensorRange]:
    """Min and max of each tensor in ``tensors`` over every sample of ``dataset``."""
    names = sorted(set(tensors))
    if not names:
        return {}
    session = open_session(_with_outputs(model, names), data_folder=external_folder(model))
    lows = np.full(len(names), np.inf, dtype=np.float64)
    highs = np.full(len(names), -np.inf, dtype=np.float64)
    done = 0
    for count, outputs in run_batches(session, names, dataset, batch_size):
        for i, array in enumerate(outputs):
            if array.size:
                lows[i] = min(lows[i], float(array.min()))
                highs[i] = max(highs[i], float(array.max()))
        done += count
        if progress is not None:
            progress(done, dataset.num_samples)
    ranges = {}
    for i, name in enumerate(names):
        if not (np.isfinite(lows[i]) and np.isfinite(highs[i])):
            raise CalibrationDataError(
                f"{dataset.source}: tensor '{name}' took non-finite values (NaN or Inf) on this data"
            )
        ranges[name] = TensorRange(float(lows[i]), float(highs[i]))
    return ranges
