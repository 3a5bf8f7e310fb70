"""The calibration file: versioned JSON with a fingerprint of the model it was made for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantcli.calibration.collect import TensorRange
from quantcli.errors import CalibrationFileError
from quantcli.graph.io import write_atomic

__all__ = ["FORMAT", "VERSION", "CalibrationFile", "read_calibration", "write_calibration"]

FORMAT = "quantcli-calibration"
VERSION = 1


@dataclass(frozen=True)
class CalibrationFile:
    """Ranges observed for one model, reusable by ``convert --calibration``."""

    model_fingerprint: str
    method: str
    num_samples: int
    ranges: dict[str, TensorRange]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_fingerprint": self.model_fingerprint,
            "method": self.method,
            "num_samples": self.num_samples,
            "tensors": {name: {"min": r.min, "max": r.max} for name, r in sorted(self.ranges.items())},
        }


def write_calibration(calibration: CalibrationFile, path: Path, *, force: bool = False) -> None:
    text = json.dumps(calibration.to_dict(), indent=1, sort_keys=True) + "\n"
    write_atomic(text.encode(), path, force=force)


def _parse(data: Any, path: Path) -> CalibrationFile:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationFileError(f"{path}: not a quantcli calibration file")
    if data.get("version") != VERSION:
        raise CalibrationFileError(
            f"{path}: calibration file version {data.get('version')!r} is not supported (expected {VERSION})"
        )
    try:
        ranges = {
            str(name): TensorRange(float(entry["min"]), float(entry["max"]))
            for name, entry in data["tensors"].items()
        }
        return CalibrationFile(
            model_fingerprint=str(data["model_fingerprint"]),
            method=str(data["method"]),
            num_samples=int(data["num_samples"]),
            ranges=ranges,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
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
