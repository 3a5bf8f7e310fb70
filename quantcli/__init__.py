"""quantcli: post-training int8 quantization of ONNX models in onnxruntime's QDQ format.

The public API is what the command line uses::

    from pathlib import Path
    from quantcli import QuantConfig, quantize

    result = quantize(Path("model.onnx"), Path("model.int8.onnx"), data=Path("calib.npz"), force=True)
    print(result.report.size.ratio)

Names are imported on first use: ``quantcli --version`` and ``--help`` should not pay for numpy,
onnx and onnxruntime (about two seconds on a small machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantcli.calibration.file import (
        CalibrationFile,
        merge_calibrations,
        read_calibration,
        write_calibration,
    )
    from quantcli.comparison import compare
    from quantcli.config import (
        ActivationType,
        CalibrationMethod,
        CompareConfig,
        GateMetric,
        Overrides,
        QuantConfig,
        QuantMode,
        merge,
    )
    from quantcli.errors import QuantCliError
    from quantcli.inspection import ModelSummary, inspect_model
    from quantcli.pipeline import QuantResult, calibrate, quantize
    from quantcli.report import CompareReport, QuantReport

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ActivationType": "quantcli.config",
    "CalibrationFile": "quantcli.calibration.file",
    "CalibrationMethod": "quantcli.config",
    "CompareConfig": "quantcli.config",
    "CompareReport": "quantcli.report",
    "GateMetric": "quantcli.config",
    "ModelSummary": "quantcli.inspection",
    "Overrides": "quantcli.config",
    "QuantCliError": "quantcli.errors",
    "QuantConfig": "quantcli.config",
    "QuantMode": "quantcli.config",
    "QuantReport": "quantcli.report",
    "QuantResult": "quantcli.pipeline",
    "calibrate": "quantcli.pipeline",
    "compare": "quantcli.comparison",
    "inspect_model": "quantcli.inspection",
    "merge": "quantcli.config",
    "merge_calibrations": "quantcli.calibration.file",
    "quantize": "quantcli.pipeline",
    "read_calibration": "quantcli.calibration.file",
    "write_calibration": "quantcli.calibration.file",
}

__all__ = [
    "ActivationType",
    "CalibrationFile",
    "CalibrationMethod",
    "CompareConfig",
    "CompareReport",
    "GateMetric",
    "ModelSummary",
    "Overrides",
    "QuantCliError",
    "QuantConfig",
    "QuantMode",
    "QuantReport",
    "QuantResult",
    "__version__",
    "calibrate",
    "compare",
    "inspect_model",
    "merge",
    "merge_calibrations",
    "quantize",
    "read_calibration",
    "write_calibration",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quantcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
