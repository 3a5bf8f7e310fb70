"""Errors a user can act on.

Every subclass of :class:`QuantCliError` is a user or data error: the CLI prints its message as one
line and exits 1. Anything else that escapes is a bug (exit 4). Messages name the file, the thing
and the remedy, because in a build log that one line is all the user sees.
"""

from __future__ import annotations

__all__ = [
    "CalibrationDataError",
    "CalibrationFileError",
    "ConfigError",
    "DistributedError",
    "EngineCrashError",
    "ModelLoadError",
    "OutputError",
    "QuantCliError",
    "QuantizationError",
]


class QuantCliError(Exception):
    """Base class of errors caused by the user's input, not by a bug in quantcli."""


class ModelLoadError(QuantCliError):
    """The model file cannot be read, parsed or checked."""


class CalibrationDataError(QuantCliError):
    """Calibration or evaluation data is missing, malformed or does not match the model."""


class CalibrationFileError(QuantCliError):
    """A calibration file is malformed, of an unknown version, or made for another model."""


class ConfigError(QuantCliError):
    """Options contradict each other or name something that does not exist."""


class QuantizationError(QuantCliError):
    """The model cannot be quantized as asked (nothing to quantize, result would grow, ...)."""


class OutputError(QuantCliError):
    """The output path cannot be written (exists, equals the input, folder missing, ...)."""


class DistributedError(QuantCliError):
    """Ray cannot be reached, a worker cannot read the model or data, or a task failed for good."""


class EngineCrashError(QuantCliError):
    """The engine running a model crashed (OpenVINO's CPU plugin, in its child process, killed by
    a signal): the model is one that engine cannot run, so this is exit 1, not a quantcli bug.
    Not a ModelLoadError: its message names the model itself (``label``; ``reason``: the message
    without it), and it may come from a run, not only from opening."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}" if label else reason)
        self.label, self.reason = label, reason

    def __reduce__(self) -> tuple[type[EngineCrashError], tuple[str, str]]:
        return EngineCrashError, (self.label, self.reason)  # pickled to and from Ray workers
