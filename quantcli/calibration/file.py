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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.calibration.histogram import BINS, Histogram
from quantcli.calibration.observers import TensorRange, TensorStats
from quantcli.choice import ModeChoice
from quantcli.config import CalibrationMethod
from quantcli.errors import CalibrationFileError
from quantcli.graph.guard import PathGuard
from quantcli.graph.io import write_atomic

__all__ = [
    "FORMAT",
    "VERSION",
    "CalibrationFile",
    "merge_calibrations",
    "read_calibration",
    "write_calibration",
]

FORMAT = "quantcli-calibration"
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


def _tensor_from_dict(entry: dict[str, Any]) -> TensorStats:
    histogram = None
    if "counts" in entry:
        counts = np.frombuffer(zlib.decompress(base64.b64decode(entry["counts"], validate=True)), "<i8")
        if counts.size != BINS:
            raise ValueError(f"a histogram has {counts.size} bins, expected {BINS}")
        histogram = Histogram(int(entry["exponent"]), counts.astype(np.int64))
    return TensorStats(float(entry["min"]), float(entry["max"]), int(entry["count"]), histogram)


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
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, zlib.error) as exc:
        raise CalibrationFileError(
            f"{path}: malformed calibration file ({type(exc).__name__}: {exc})"
        ) from exc


def read_calibration(path: Path) -> CalibrationFile:
    """Read and validate a calibration file (the caller checks the fingerprint)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CalibrationFileError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationFileError(f"{path}: not a readable JSON calibration file ({exc})") from exc
    return _parse(data, path)


def merge_calibrations(files: Sequence[tuple[Path, CalibrationFile]]) -> CalibrationFile:
    """One file with the statistics of all ``files`` (disjoint shards of the data, one model).

    Minimum and maximum merge exactly; histograms are coarsened to the widest bins and added,
    which is exactly the histogram one run over all the data builds.
    """
    assert files, "merge needs at least one file"
    first_path, first = files[0]
    seen: dict[str, Path] = {}
    for path, calibration in files:
        if calibration.model_fingerprint != first.model_fingerprint:
            raise CalibrationFileError(
                f"{path}: made for another model than {first_path}; merge files of one model only"
            )
        if calibration.stats.keys() != first.stats.keys():
            raise CalibrationFileError(
                f"{path}: observes other tensors than {first_path}; were they made by the same quantcli?"
            )
        for shard in calibration.shards:
            if shard in seen:
                raise CalibrationFileError(
                    f"{path}: shard {shard} is also in {seen[shard]}; each sample must be counted once"
                )
            seen[shard] = path
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
