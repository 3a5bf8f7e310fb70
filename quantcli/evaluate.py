"""Fidelity of a quantized model against its float original, measured through onnxruntime.

Both models run on the same evaluation samples; every output is compared sample by sample.
Statistics are accumulated batch by batch so evaluation memory does not grow with the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from quantcli.calibration.collect import run_batches
from quantcli.calibration.data import Dataset
from quantcli.errors import CalibrationDataError

__all__ = ["Accuracy", "Fidelity", "OutputFidelity", "compare_models", "load_labels"]


@dataclass(frozen=True)
class OutputFidelity:
    """How closely one quantized output follows the float one.

    ``cosine_mean``/``cosine_min``: cosine similarity per sample, averaged and worst.
    ``sqnr_db``: signal-to-quantization-noise ratio over all samples, in dB.
    ``top1_agreement``: share of samples whose arg-max agrees, for outputs shaped like class
    scores ([batch, classes]); None otherwise.
    """

    name: str
    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy against labels, of the float and the quantized model, in percent."""

    output: str
    float_top1: float
    quantized_top1: float

    @property
    def drop_points(self) -> float:
        return self.float_top1 - self.quantized_top1


@dataclass(frozen=True)
class Fidelity:
    samples: int
    source: str
    outputs: tuple[OutputFidelity, ...]
    accuracy: Accuracy | None = None


@dataclass
class _Accumulator:
    """Running sums for one output; ``float`` is the reference."""

    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0
    cosines: list[float] = field(default_factory=list)
    top1_same: int = 0
    top1_float_right: int = 0
    top1_quant_right: int = 0
    classifier: bool = True

    def add(
        self,
        ref: npt.NDArray[np.float64],
        got: npt.NDArray[np.float64],
        labels: npt.NDArray[np.int64] | None,
    ) -> None:
        diff = ref - got
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
        dots = np.sum(ref * got, axis=1)
        # Two all-zero rows are identical; one zero row against a non-zero one shares nothing.
        both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(got, axis=1) == 0)
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
        self.cosines.extend(float(c) for c in cos)
        if self.classifier:
            ref_top, got_top = ref.argmax(axis=1), got.argmax(axis=1)
            self.top1_same += int(np.sum(ref_top == got_top))
            if labels is not None:
                self.top1_float_right += int(np.sum(ref_top == labels))
                self.top1_quant_right += int(np.sum(got_top == labels))

    def result(self, name: str) -> OutputFidelity:
        count = len(self.cosines)
        if self.noise == 0.0:
            sqnr = float("inf")
        elif self.signal == 0.0:
            sqnr = float("-inf")
        else:
            sqnr = 10.0 * float(np.log10(self.signal / self.noise))
        return OutputFidelity(
            name=name,
            cosine_mean=float(np.mean(self.cosines)) if count else 1.0,
            cosine_min=float(np.min(self.cosines)) if count else 1.0,
            sqnr_db=sqnr,
            max_abs_error=self.max_abs,
            top1_agreement=self.top1_same / count if self.classifier and count else None,
        )


def load_labels(path: Path, expected: int) -> npt.NDArray[np.int64]:
    """Integer class labels, one per evaluation sample."""
    try:
        labels = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise CalibrationDataError(f"{path}: no such file") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationDataError(f"{path}: not a readable .npy label file ({exc})") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CalibrationDataError(
            f"{path}: labels must be a 1-D integer array, got {labels.dtype.name}{list(labels.shape)}"
        )
    if labels.shape[0] != expected:
        raise CalibrationDataError(
            f"{path}: holds {labels.shape[0]} labels for {expected} evaluation samples"
        )
    result: npt.NDArray[np.int64] = labels.astype(np.int64)
    return result


def _rows(array: npt.NDArray[np.generic], batched: bool) -> npt.NDArray[np.float64]:
    data = np.asarray(array, dtype=np.float64)
    return data.reshape(data.shape[0], -1) if batched and data.ndim > 0 else data.reshape(1, -1)


def compare_models(
    reference: ort.InferenceSession,
    candidate: ort.InferenceSession,
    dataset: Dataset,
    *,
    batch_size: int,
    source: str,
    labels: npt.NDArray[np.int64] | None = None,
) -> Fidelity:
    """Run both sessions on ``dataset`` and compare every output of the reference."""
    names = [o.name for o in reference.get_outputs()]
    accumulators = {name: _Accumulator() for name in names}
    done = 0
    cand_batches = run_batches(candidate, names, dataset, batch_size)
    for (count, ref_outputs), (_, cand_outputs) in zip(
        run_batches(reference, names, dataset, batch_size), cand_batches, strict=True
    ):
        batch_labels = labels[done : done + count] if labels is not None else None
        for name, ref, got in zip(names, ref_outputs, cand_outputs, strict=True):
            acc = accumulators[name]
            batched = dataset.can_batch
            acc.classifier &= bool(ref.ndim == 2 and ref.shape[1] >= 2 and batched)
            acc.add(_rows(ref, batched), _rows(got, batched), batch_labels)
        done += count
    outputs = tuple(accumulators[name].result(name) for name in names)
    accuracy = None
    if labels is not None:
        scored = [name for name in names if accumulators[name].classifier]
        if not scored:
            raise CalibrationDataError(
                "labels were given but no model output has the [batch, classes] shape of class scores"
            )
        acc = accumulators[scored[0]]
        accuracy = Accuracy(
            output=scored[0],
            float_top1=100.0 * acc.top1_float_right / done,
            quantized_top1=100.0 * acc.top1_quant_right / done,
        )
    return Fidelity(samples=done, source=source, outputs=outputs, accuracy=accuracy)
