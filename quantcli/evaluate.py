"""Fidelity of a quantized model against its float original, measured on the target's engine
(onnxruntime, or OpenVINO's CPU plugin: :mod:`quantcli.engine`).

Both models run on the same evaluation samples; every output is compared sample by sample
(samples may differ in every dynamic dim). Statistics are accumulated as samples come, so
evaluation memory does not grow with the data.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from quantcli.calibration.collect import run_samples
from quantcli.calibration.data import Batch, Dataset, npy_header
from quantcli.config import GateMetric
from quantcli.engine import Session, run_time_ms
from quantcli.errors import CalibrationDataError
from quantcli.files import check_regular

__all__ = [
    "Accuracy",
    "Fidelity",
    "GateResult",
    "Latency",
    "OutputFidelity",
    "channel_sqnr_db",
    "compare_models",
    "first_sample",
    "gate",
    "load_labels",
    "measure_latency",
    "sqnr_db",
]


@dataclass(frozen=True)
class OutputFidelity:
    """How closely one quantized output follows the float one.

    ``cosine_mean``/``cosine_min``: cosine similarity per sample, averaged and worst.
    ``sqnr_db``: signal-to-quantization-noise ratio over all samples, in dB.
    ``top1_agreement``: share of samples whose arg-max agrees, for outputs shaped like class
    scores ([batch, classes]); None otherwise.
    ``channel_sqnr_db``: SQNR of every channel (axis 1) on its own, averaged in dB. Unlike
    ``sqnr_db`` and the cosine it weighs channels of any scale alike: a detector's class scores
    (0..1) count as much as its box coordinates (hundreds of pixels), which dominate the whole
    output's SQNR and cosine. Channels that are zero in the float model are left out.
    """

    name: str
    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None
    channel_sqnr_db: float | None = None


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


# A channel's SQNR counts at most this much in the channel mean, so one exact channel (noise 0)
# does not make the mean infinite.
_CHANNEL_SQNR_CAP_DB = 100.0


def channel_sqnr_db(signal: npt.NDArray[np.float64], noise: npt.NDArray[np.float64]) -> float | None:
    """Mean over channels of each channel's SQNR in dB (capped); inf if every channel is exact,
    None if no channel has a signal."""
    live = signal > 0
    if not np.any(live):
        return None
    if not np.any(noise[live] > 0):
        return float("inf")
    values = [
        min(sqnr_db(float(s), float(n)), _CHANNEL_SQNR_CAP_DB)
        for s, n in zip(signal[live], noise[live], strict=True)
    ]
    return float(np.mean(values))


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal power / noise power); inf for an exact match, -inf for a zero signal."""
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


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
    channel_signal: npt.NDArray[np.float64] | None = None
    channel_noise: npt.NDArray[np.float64] | None = None
    channels_consistent: bool = True

    def add_channels(self, ref: npt.NDArray[np.generic], got: npt.NDArray[np.generic]) -> None:
        """Accumulate per-channel (axis 1) signal and noise; rank < 2 counts as one channel."""
        ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        if ref64.ndim < 2:
            ref64, got64 = ref64.reshape(1, 1, -1), got64.reshape(1, 1, -1)
        axes = tuple(i for i in range(ref64.ndim) if i != 1)
        signal = np.sum(ref64 * ref64, axis=axes)
        noise = np.sum((ref64 - got64) ** 2, axis=axes)
        if self.channel_signal is None or self.channel_noise is None:
            self.channel_signal, self.channel_noise = signal, noise
        elif self.channel_signal.shape == signal.shape:
            self.channel_signal, self.channel_noise = self.channel_signal + signal, self.channel_noise + noise
        else:  # a dynamic channel count: no channel has one meaning across batches
            self.channels_consistent = False

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
        return OutputFidelity(
            name=name,
            cosine_mean=float(np.mean(self.cosines)) if count else 1.0,
            cosine_min=float(np.min(self.cosines)) if count else 1.0,
            sqnr_db=sqnr_db(self.signal, self.noise),
            max_abs_error=self.max_abs,
            top1_agreement=self.top1_same / count if self.classifier and count else None,
            channel_sqnr_db=(
                channel_sqnr_db(self.channel_signal, self.channel_noise)
                if self.channel_signal is not None
                and self.channel_noise is not None
                and self.channels_consistent
                else None
            ),
        )


def _check_labels(path: Path, labels: npt.NDArray[np.generic], expected: int) -> None:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CalibrationDataError(
            f"{path}: labels must be a 1-D integer array, got {labels.dtype.name}{list(labels.shape)}"
        )
    if labels.shape[0] != expected:
        raise CalibrationDataError(
            f"{path}: holds {labels.shape[0]} labels for {expected} evaluation samples"
        )


def load_labels(path: Path, expected: int) -> npt.NDArray[np.int64]:
    """Integer class labels, one per evaluation sample."""
    check_regular(path, "label file", CalibrationDataError)
    # Shape and dtype checked from the header, before numpy allocates what it declares.
    _check_labels(path, npy_header(path), expected)
    try:
        labels = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise CalibrationDataError(f"{path}: no such file") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationDataError(f"{path}: not a readable .npy label file ({exc})") from exc
    _check_labels(path, labels, expected)
    result: npt.NDArray[np.int64] = labels.astype(np.int64)
    return result


def _row(array: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    """One sample's output as one row."""
    return np.asarray(array, dtype=np.float64).reshape(1, -1)


def compare_models(
    reference: Session,
    candidate: Session,
    dataset: Dataset,
    *,
    batch_size: int,
    source: str,
    labels: npt.NDArray[np.int64] | None = None,
) -> Fidelity:
    """Run both sessions on ``dataset`` and compare every output of the reference, sample by
    sample: samples may differ in shape, so each one's outputs are compared on their own and
    only sums and per-sample figures are pooled."""
    names = [o.name for o in reference.get_outputs()]
    accumulators = {name: _Accumulator() for name in names}
    done = 0
    for (position, ref_outputs), (cand_position, cand_outputs) in zip(
        run_samples(reference, names, dataset, batch_size),
        run_samples(candidate, names, dataset, batch_size),
        strict=True,
    ):
        assert position == cand_position
        sample_labels = labels[position : position + 1] if labels is not None else None
        for name, ref, got in zip(names, ref_outputs, cand_outputs, strict=True):
            acc = accumulators[name]
            # Class scores: one row of classes per sample.
            acc.classifier &= bool(ref.ndim == 2 and ref.shape[0] == 1 and ref.shape[1] >= 2)
            acc.add(_row(ref), _row(got), sample_labels)
            acc.add_channels(ref, got)
        done += 1
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


@dataclass(frozen=True)
class GateResult:
    """An accuracy bound applied to a measured fidelity.

    For the drop metrics (accuracy, top1, cosine) ``value`` is the points lost and ``bound`` the
    most that may be lost; for sqnr ``value`` is the worst output's SQNR in dB and ``bound`` the
    least it must reach. ``missed_by`` is in the same unit, 0 when the gate passes.
    """

    metric: GateMetric  # never AUTO: the metric actually measured
    value: float
    bound: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric.in_db

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound

    @property
    def missed_by(self) -> float:
        return max(0.0, self.shortfall)

    @property
    def shortfall(self) -> float:
        """How far the value is on the wrong side of the bound (negative: margin to spare);
        comparable across candidates measured with the same metric, smaller is better."""
        return self.bound - self.value if self.higher_is_better else self.value - self.bound

    @property
    def unit(self) -> str:
        return "dB" if self.higher_is_better else "points"

    # The drop metrics' names for value and bound.
    @property
    def drop(self) -> float:
        return self.value

    @property
    def max_drop(self) -> float:
        return self.bound


def _resolve_metric(fidelity: Fidelity, metric: GateMetric) -> GateMetric:
    if metric is not GateMetric.AUTO:
        return metric
    # Not top1 by shape alone: a sentence embedding is [batch, dims] like class scores, and the
    # arg-max of its dimensions means nothing (auto mode once rejected every int8 MiniLM that way).
    if fidelity.accuracy is not None:
        return GateMetric.ACCURACY
    return GateMetric.COSINE


def gate(fidelity: Fidelity, metric: GateMetric, bound: float) -> GateResult:
    """``metric`` measured on ``fidelity`` against ``bound`` (points of drop, or dB for sqnr)."""
    resolved = _resolve_metric(fidelity, metric)
    if resolved is GateMetric.SQNR:
        return GateResult(metric=resolved, value=min(o.sqnr_db for o in fidelity.outputs), bound=bound)
    if resolved is GateMetric.CHANNEL_SQNR:
        # An output with no live channel has only its whole SQNR to go by.
        values = [o.sqnr_db if o.channel_sqnr_db is None else o.channel_sqnr_db for o in fidelity.outputs]
        return GateResult(metric=resolved, value=min(values), bound=bound)
    if resolved is GateMetric.ACCURACY:
        if fidelity.accuracy is None:
            raise CalibrationDataError("--metric accuracy needs --labels for the evaluation samples")
        drop = fidelity.accuracy.drop_points
    elif resolved is GateMetric.TOP1:
        agreements = [o.top1_agreement for o in fidelity.outputs if o.top1_agreement is not None]
        if not agreements:
            raise CalibrationDataError(
                "--metric top1 needs an output shaped like class scores [batch, classes]"
            )
        drop = 100.0 * (1.0 - min(agreements))
    else:
        drop = 100.0 * (1.0 - min(o.cosine_mean for o in fidelity.outputs))
    return GateResult(metric=resolved, value=max(0.0, drop), bound=bound)


@dataclass(frozen=True)
class Latency:
    """Wall time of one run, over repeated runs: median and 90th percentile, milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int


def first_sample(dataset: Dataset) -> Batch:
    """One sample as a feed: what latency is measured on."""
    return next(iter(dataset.batches(1))).arrays


def measure_latency(
    sessions: Mapping[str, Session],
    feed: Batch,
    *,
    runs: int = 20,
    warmup: int = 2,
    budget_seconds: float | None = None,
) -> dict[str, Latency]:
    """Time every session on ``feed``, alternating between them run by run.

    Alternating means a machine that slows down or speeds up mid-measurement affects every
    session alike, so the ratios stay meaningful on a shared machine. ``budget_seconds`` stops
    early (after at least 3 rounds) so a slow model cannot stall a conversion.
    """
    names = list(sessions)
    for name in names:
        for _ in range(warmup):
            sessions[name].run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_index in range(runs):
        # Rotate the order so no session always runs right after the same other one.
        offset = round_index % len(names)
        for name in names[offset:] + names[:offset]:
            begin = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(run_time_ms(sessions[name], (time.perf_counter() - begin) * 1000.0))
        if budget_seconds is not None and round_index >= 2 and time.perf_counter() - started > budget_seconds:
            break
    result = {}
    for name, values in times.items():
        ordered = sorted(values)
        result[name] = Latency(
            median_ms=statistics.median(ordered),
            p90_ms=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            runs=len(ordered),
        )
    return result
