"""Calibration: data sources, range collection through onnxruntime, calibration files."""

from quantcli.calibration.collect import TensorRange, collect_stats
from quantcli.calibration.data import Batch, Dataset, Feed, InputSpec, model_inputs, open_dataset
from quantcli.calibration.file import CalibrationFile, merge_calibrations, read_calibration, write_calibration

__all__ = [
    "Batch",
    "CalibrationFile",
    "Dataset",
    "Feed",
    "InputSpec",
    "TensorRange",
    "collect_stats",
    "merge_calibrations",
    "model_inputs",
    "open_dataset",
    "read_calibration",
    "write_calibration",
]
