"""Models whose weights live in external data files."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from quantcli import QuantConfig, inputs, quantize
from quantcli.config import QuantMode
from quantcli.errors import ModelLoadError
from quantcli.graph.io import load_model

# These tests are about static mode's graphs; auto would build and time every mode.
STATIC = QuantConfig(mode=QuantMode.STATIC)


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
    result = quantize(model, tmp_path / "q.onnx", data=data, config=STATIC)
    # the input size counts the data file
    assert result.report.size.input_bytes > (model.parent / "weights.bin").stat().st_size
    assert result.report.fidelity is not None and result.report.fidelity.outputs[0].cosine_mean > 0.999


def test_short_external_data_is_a_one_line_error(tmp_path: Path) -> None:
    model, data = _external(tmp_path)
    weights = model.parent / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="too short") as info:
        quantize(model, tmp_path / "q.onnx", data=data, config=STATIC)
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
        quantize(model, tmp_path / "q.onnx", data=data, config=STATIC)


def test_output_has_external_data_when_the_input_had(tmp_path: Path) -> None:
    model, data = _external(tmp_path)
    out = tmp_path / "q.onnx"
    result = quantize(model, out, data=data, config=STATIC)
    proto = onnx.load(out, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"q.onnx.data"}
    assert result.report.size.output_bytes == out.stat().st_size + (tmp_path / "q.onnx.data").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_weights_stay_on_disk_until_quantized(tmp_path: Path) -> None:
    model, _ = _external(tmp_path)
    loaded = load_model(model)
    tensors = [v.const_value for v in loaded.model.graph.initializers.values()]
    assert all(isinstance(t, ir.ExternalTensor) and t.raw is None for t in tensors)


def test_large_output_switches_to_external_data(
    cnn: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the inline limit (about 2 GB; lowered here) a one-file input gets a data file."""
    model, data = cnn
    monkeypatch.setattr(inputs, "INLINE_LIMIT", 1000)
    out = tmp_path / "q.onnx"
    quantize(model, out, data=data, config=STATIC)
    assert (tmp_path / "q.onnx.data").stat().st_size > 1000
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, models.tiny_cnn_data(2))[0].shape == (2, 10)


def test_external_data_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    model, data = _external(tmp_path)
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        quantize(model, folder / "q.onnx", data=data, config=STATIC)
        runs.append(((folder / "q.onnx").read_bytes(), (folder / "q.onnx.data").read_bytes()))
    assert runs[0] == runs[1]
