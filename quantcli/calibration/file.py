"""The calibration file: versioned JSON with a fingerprint of the model it was made for.

It keeps, per tensor, everything every calibration method needs (exact min and max, the number
of values, the histogram), so ``convert --calibration FILE --method X`` picks the method after the
fact, and files computed on disjoint shards of the data merge into exactly the file of one run.
Histogram counts are stored as base64 of zlib-compressed little-endian int64.

A file made over all the data also records the mode decision (``choice``: the mode, why, and
every node's role in it), which ``convert --mode auto`` replays instead of timing candidates again.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quantcli.calibration.histogram import BINS, MIN_EXPONENT, Histogram, exponent_for
from quantcli.calibration.observers import TensorRange, TensorStats
from quantcli.calibration.sampling import Shard
from quantcli.choice import ModeChoice
from quantcli.config import CalibrationMethod
from quantcli.errors import CalibrationFileError, ConfigError
from quantcli.files import parse_json, read_bounded
from quantcli.graph.guard import PathGuard, file_identity
from quantcli.graph.io import write_atomic

__all__ = [
    "FORMAT",
    "MAX_CALIBRATION_BYTES",
    "VERSION",
    "CalibrationFile",
    "merge_calibrations",
    "read_calibration",
    "write_calibration",
]

FORMAT = "quantcli-calibration"
# A calibration file larger than this is refused unread (a model of 10,000 tensors makes ~60 MB).
MAX_CALIBRATION_BYTES = 512 * 2**20
VERSION = 1


@dataclass(frozen=True)
class CalibrationFile:
    """Statistics observed for one model, reusable by ``convert --calibration``.

    ``method`` and ``percentile`` are what ``calibrate`` was asked for: the default of a
    ``convert`` that names no method. ``shards`` lists the ``K/N`` shards the file covers (empty:
    all the data). ``choice`` is the mode decision made with these statistics (None for a shard
    or a merge: the decision needs all the data).
    """

    model_fingerprint: str
    method: CalibrationMethod
    percentile: float
    num_samples: int
    stats: dict[str, TensorStats]
    shards: tuple[str, ...] = ()
    choice: ModeChoice | None = None

    @property
    def ranges(self) -> dict[str, TensorRange]:
        return {name: s.range for name, s in self.stats.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_fingerprint": self.model_fingerprint,
            "method": self.method.value,
            "percentile": self.percentile,
            "num_samples": self.num_samples,
            "shards": list(self.shards),
            "histogram_bins": BINS,
            "choice": None if self.choice is None else self.choice.to_dict(),
            "tensors": {name: _tensor_to_dict(s) for name, s in sorted(self.stats.items())},
        }


def _tensor_to_dict(stats: TensorStats) -> dict[str, Any]:
    entry: dict[str, Any] = {"min": stats.min, "max": stats.max, "count": stats.count}
    if stats.histogram is not None:
        raw = stats.histogram.counts.astype("<i8").tobytes()
        entry["exponent"] = stats.histogram.exponent
        entry["counts"] = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    return entry


# The widest bins a histogram can have: those covering the largest finite float.
_MAX_EXPONENT = exponent_for(sys.float_info.max)
# Bytes of one histogram's counts once inflated: the size the format promises, nothing more.
_COUNTS_BYTES = BINS * 8


def _counts(text: Any) -> npt.NDArray[np.int64]:
    """A histogram's counts, inflated no further than the BINS int64 they must be."""
    inflate = zlib.decompressobj()
    raw = inflate.decompress(base64.b64decode(text, validate=True), _COUNTS_BYTES)
    if len(raw) != _COUNTS_BYTES or inflate.unconsumed_tail or not inflate.eof:
        raise ValueError(f"a histogram's counts are not {BINS} int64 values")
    counts = np.frombuffer(raw, "<i8").astype(np.int64)
    if counts.min() < 0:
        raise ValueError("a histogram has negative counts")
    return counts


def _tensor_from_dict(entry: dict[str, Any]) -> TensorStats:
    histogram = None
    if "counts" in entry:
        exponent = int(entry["exponent"])
        if not MIN_EXPONENT <= exponent <= _MAX_EXPONENT:
            raise ValueError(f"histogram exponent {exponent} is outside [{MIN_EXPONENT}, {_MAX_EXPONENT}]")
        histogram = Histogram(exponent, _counts(entry["counts"]))
    low, high, count = float(entry["min"]), float(entry["max"]), int(entry["count"])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high or count < 0:
        raise ValueError(f"range [{low}, {high}] over {count} values is not a finite range")
    return TensorStats(low, high, count, histogram)


def write_calibration(
    calibration: CalibrationFile, path: Path, *, force: bool = False, guard: PathGuard | None = None
) -> None:
    text = json.dumps(calibration.to_dict(), indent=1, sort_keys=True) + "\n"
    write_atomic(text.encode(), path, force=force, guard=guard)


def _parse(data: Any, path: Path) -> CalibrationFile:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationFileError(f"{path}: not a quantcli calibration file")
    if data.get("version") != VERSION:
        raise CalibrationFileError(
            f"{path}: calibration file version {data.get('version')!r} is not supported "
            f"(expected {VERSION}); re-run calibrate with this quantcli"
        )
    if data.get("histogram_bins") != BINS:
        raise CalibrationFileError(
            f"{path}: histograms of {data.get('histogram_bins')!r} bins are not supported (expected {BINS})"
        )
    try:
        return CalibrationFile(
            model_fingerprint=str(data["model_fingerprint"]),
            method=CalibrationMethod(data["method"]),
            percentile=float(data["percentile"]),
            num_samples=int(data["num_samples"]),
            stats={str(name): _tensor_from_dict(entry) for name, entry in data["tensors"].items()},
            shards=tuple(str(s) for s in data["shards"]),
            choice=None if data.get("choice") is None else ModeChoice.from_dict(data["choice"]),
        )
    except (
        KeyError,
        TypeError,
        ValueError,
        OverflowError,
        AttributeError,
        binascii.Error,
        zlib.error,
    ) as exc:
        raise CalibrationFileError(
            f"{path}: malformed calibration file ({type(exc).__name__}: {exc})"
        ) from exc


def read_calibration(path: Path) -> CalibrationFile:
    """Read and validate a calibration file (the caller checks the fingerprint)."""
    raw = read_bounded(path, MAX_CALIBRATION_BYTES, "calibration file", CalibrationFileError)
    return _parse(parse_json(raw, path, "JSON calibration file", CalibrationFileError), path)


def _check_distinct(files: Sequence[tuple[Path, CalibrationFile]]) -> None:
    """Refuse a file given twice (under any name) and shards sharing samples: ``1/2`` and
    ``1/3`` both hold sample 0, and merged would count it twice."""
    seen_files: dict[tuple[int, int], Path] = {}
    seen_shards: list[tuple[Shard, Path]] = []
    for path, calibration in files:
        identity = file_identity(path)
        if identity is not None and identity in seen_files:
            raise CalibrationFileError(
                f"{path}: is {seen_files[identity]} again; each file must be merged once"
            )
        if identity is not None:
            seen_files[identity] = path
        for text in calibration.shards:
            try:
                shard = Shard.parse(text)
            except ConfigError as exc:
                raise CalibrationFileError(f"{path}: malformed shard {text!r} ({exc})") from exc
            for other, where in seen_shards:
                # K/N holds the samples i = K-1 (mod N); two such classes meet iff their
                # offsets agree modulo gcd(N, M) (Chinese remainder theorem).
                if (shard.index - other.index) % math.gcd(shard.count, other.count) == 0:
                    raise CalibrationFileError(
                        f"{path}: shard {shard} shares samples with shard {other} in {where}; "
                        "each sample must be counted once (merge shards of one --shard K/N split)"
                    )
            seen_shards.append((shard, path))


def merge_calibrations(files: Sequence[tuple[Path, CalibrationFile]]) -> CalibrationFile:
    """One file with the statistics of all ``files`` (disjoint shards of the data, one model).

    Minimum and maximum merge exactly; histograms are coarsened to the widest bins and added,
    which is exactly the histogram one run over all the data builds.
    """
    assert files, "merge needs at least one file"
    first_path, first = files[0]
    _check_distinct(files)
    for path, calibration in files:
        if calibration.model_fingerprint != first.model_fingerprint:
            raise CalibrationFileError(
                f"{path}: made for another model than {first_path}; merge files of one model only"
            )
        if calibration.stats.keys() != first.stats.keys():
            raise CalibrationFileError(
                f"{path}: observes other tensors than {first_path}; were they made by the same quantcli?"
            )
    stats = dict(first.stats)
    for _, calibration in files[1:]:
        stats = {name: s.merged(calibration.stats[name]) for name, s in stats.items()}
    return CalibrationFile(
        model_fingerprint=first.model_fingerprint,
        method=first.method,
        percentile=first.percentile,
        num_samples=sum(c.num_samples for _, c in files),
        stats=stats,
        shards=tuple(sorted(s for _, c in files for s in c.shards)),
    )
