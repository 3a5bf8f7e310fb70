"""Models whose weights live in external data files."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import pytest

from quantcli import quantize
from quantcli.errors import ModelLoadError


def _external(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "model"
    folder.mkdir()
    model = folder / "model.onnx"
    onnx.save(
        models.tiny_cnn(channels=32),
        model,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(12))
    return model, data


def test_model_with_external_data_quantizes(tmp_path: Path) -> None:
    model, data = _external(tmp_path)
    result = quantize(model, tmp_path / "q.onnx", data=data)
    # the input size counts the data file; the output holds its weights inline
    assert result.report.size.input_bytes > (model.parent / "weights.bin").stat().st_size
    assert result.report.fidelity is not None and result.report.fidelity.outputs[0].cosine_mean > 0.999


def test_short_external_data_is_a_one_line_error(tmp_path: Path) -> None:
    model, data = _external(tmp_path)
    weights = model.parent / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="too short") as info:
        quantize(model, tmp_path / "q.onnx", data=data)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, location: str) -> None:
    model, data = _external(tmp_path)
    (tmp_path / "secret.bin").write_bytes((model.parent / "weights.bin").read_bytes())
    proto = onnx.load(model, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, model)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        quantize(model, tmp_path / "q.onnx", data=data)
