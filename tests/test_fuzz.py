"""Mutated models and data files: exit 0 or 1, never a traceback, nothing left behind on failure."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import models
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import snapshot
from typer.testing import CliRunner

from quantcli.cli.app import app

runner = CliRunner()
MODEL = models.tiny_cnn(channels=8).SerializeToString()
IMAGES = models.tiny_cnn_data(6)["image"]


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


DATA = _npz(image=IMAGES)


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """Truncate, flip bits, or both."""
    data = bytearray(original)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 8 if data else 0))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def mutated_arrays(draw: st.DrawFn) -> bytes:
    """Valid npz containers holding the wrong dtype, shape, name or values."""
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_]))
    shape = list(IMAGES.shape)
    for _ in range(draw(st.integers(0, 2))):
        axis = draw(st.integers(0, len(shape) - 1))
        shape[axis] = draw(st.integers(0, 5))
    if draw(st.booleans()):
        shape = shape[: draw(st.integers(0, len(shape)))]
    array = np.resize(IMAGES, shape).astype(dtype)
    if array.size and dtype in (np.float32, np.float64) and draw(st.booleans()):
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e38]))
    name = draw(st.sampled_from(["image", "image", "x", ""]))
    return _npz(**{name or "arr_0": array})


def _run(model: bytes, data: bytes, *extra: str) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "model.onnx").write_bytes(model)
        (folder / "calib.npz").write_bytes(data)
        before = snapshot(folder)
        out = folder / "q.onnx"
        args = ["convert", str(folder / "model.onnx"), "-o", str(out), "--data", str(folder / "calib.npz")]
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code in (0, 1), result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if result.exit_code == 1:
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
            assert snapshot(folder) == before
        else:
            assert out.is_file()


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@FUZZ
@given(model=mutated_bytes(MODEL))
def test_mutated_model(model: bytes) -> None:
    _run(model, DATA)


@pytest.mark.slow
@FUZZ
@given(data=st.one_of(mutated_bytes(DATA), mutated_arrays()), skip=st.booleans())
def test_mutated_data(data: bytes, skip: bool) -> None:
    _run(MODEL, data, *(["--skip-nonfinite"] if skip else []))
