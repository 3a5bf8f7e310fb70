"""quantcli: post-training int8 quantization of ONNX models in onnxruntime's QDQ format.

The public API is what the command line uses::

    from pathlib import Path
    from quantcli import QuantConfig, quantize

    result = quantize(Path("model.onnx"), Path("model.int8.onnx"), data=Path("calib.npz"))
    print(result.report.size.ratio)
"""

from quantcli.calibration.file import CalibrationFile, read_calibration, write_calibration
from quantcli.config import ActivationType, CalibrationMethod, QuantConfig
from quantcli.errors import QuantCliError
from quantcli.pipeline import ModelSummary, QuantResult, calibrate, inspect_model, quantize
from quantcli.report import QuantReport

__version__ = "0.1.0"

__all__ = [
    "ActivationType",
    "CalibrationFile",
    "CalibrationMethod",
    "ModelSummary",
    "QuantCliError",
    "QuantConfig",
    "QuantReport",
    "QuantResult",
    "__version__",
    "calibrate",
    "inspect_model",
    "quantize",
    "read_calibration",
    "write_calibration",
]
