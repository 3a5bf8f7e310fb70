"""Quantize one model with a peer quantizer at its defaults, inside that peer's own venv.

bench/compare.py runs this with the peer venv's python (see the Makefile's `peers` target), as a
child of bench/_measure.py, so the wall time and peak RSS are the peer's alone:

    .benchenv-inc/bin/python bench/_peer_quantize.py inc MODEL OUT --data calib/
    .benchenv-nncf/bin/python bench/_peer_quantize.py nncf MODEL OUT --data calib/

--data is a folder of .npz files, one ready-to-feed sample each (the dict InferenceSession.run
takes), the same folder quantcli's default command gets. Each peer sees every sample, in file order:
    inc   onnx-neural-compressor: quantize() with StaticQuantConfig(calibration_data_reader=...) and
          nothing else (its defaults: QOperator format, MinMax, per-tensor, uint8 activations, int8
          weights, its default op white list, ORT_ENABLE_BASIC pre-optimization)
    nncf  nncf.quantize(onnx.ModelProto, nncf.Dataset(samples)) and nothing else (its defaults:
          preset PERFORMANCE, 300 subset size, fast bias correction)
This file imports neither quantcli nor anything of the bench venv: only the peer, onnx and numpy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx


def samples(folder: Path) -> list[dict[str, np.ndarray]]:
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise SystemExit(f"{folder}: no .npz files")
    feeds = []
    for path in files:
        with np.load(path, allow_pickle=False) as archive:
            feeds.append({name: archive[name] for name in archive.files})
    return feeds


def save(model: onnx.ModelProto, output: Path) -> None:
    large = model.ByteSize() > 2_000_000_000
    onnx.save(model, str(output), save_as_external_data=large)


def inc(model: Path, output: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    # Imported here: each peer is installed only in its own venv.
    from onnx_neural_compressor import data_reader  # noqa: PLC0415
    from onnx_neural_compressor.quantization import config, quantize  # noqa: PLC0415

    class Reader(data_reader.CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(feeds):
                return None
            self.index += 1
            return feeds[self.index - 1]

        def rewind(self) -> None:
            self.index = 0

    quantize(str(model), str(output), config.StaticQuantConfig(calibration_data_reader=Reader()))


def nncf_quantize(model: Path, output: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    import nncf  # noqa: PLC0415

    quantized = nncf.quantize(onnx.load(str(model)), nncf.Dataset(feeds))
    save(quantized, output)


def main() -> int:
    parser = argparse.ArgumentParser(description="a peer quantizer at its defaults, on one model")
    parser.add_argument("peer", choices=["inc", "nncf"])
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder of one-sample .npz files")
    args = parser.parse_args()
    feeds = samples(args.data)
    if args.peer == "inc":
        inc(args.model, args.output, feeds)
    else:
        nncf_quantize(args.model, args.output, feeds)
    if not args.output.exists():
        raise SystemExit(f"{args.peer} finished without writing {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
