"""Quantize one model with onnxruntime's own quantizer, in a process of its own.

bench/compare.py runs this as a child so that its wall time and peak RSS are onnxruntime's alone:

    python bench/_ort_quantize.py static MODEL OUT --data calib/   (or a stacked calib.npz)
    python bench/_ort_quantize.py dynamic MODEL OUT

static: QDQ format, per-channel, MinMax calibration, uint8 activations, int8 weights, calibrated one
sample at a time over every sample. dynamic: int8 weights, activations quantized at run time.
Everything else is onnxruntime's default, so the comparison is with onnxruntime as a user gets it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)


class NpzReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds a folder of ready-to-feed samples (one .npz per sample, in file order), or the samples
    of a stacked .npz (arrays keyed by input name, axis 0 = samples) one at a time."""

    def __init__(self, path: Path) -> None:
        feeds: list[dict[str, np.ndarray]] = []
        for file in sorted(path.glob("*.npz")) if path.is_dir() else [path]:
            with np.load(file, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            if path.is_dir():
                feeds.append(arrays)
            else:
                count = len(next(iter(arrays.values())))
                feeds += [{name: array[i : i + 1] for name, array in arrays.items()} for i in range(count)]
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def main() -> int:
    parser = argparse.ArgumentParser(description="onnxruntime quantization of one model")
    parser.add_argument("mode", choices=["static", "dynamic"])
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.mode == "static":
        if args.data is None:
            parser.error("static needs --data")
        quantize_static(
            args.model,
            args.output,
            NpzReader(args.data),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    else:
        quantize_dynamic(args.model, args.output, weight_type=QuantType.QInt8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
