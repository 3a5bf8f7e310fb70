"""Calibration: data sources, range collection through onnxruntime, calibration files."""

from quantcli.calibration.collect import TensorRange, collect_ranges
from quantcli.calibration.data import Batch, Dataset, InputSpec, model_inputs, open_dataset
from quantcli.calibration.file import CalibrationFile, read_calibration, write_calibration

__all__ = [
    "Batch",
    "CalibrationFile",
    "Dataset",
    "InputSpec",
    "TensorRange",
    "collect_ranges",
    "model_inputs",
    "open_dataset",
    "read_calibration",
    "write_calibration",
]
