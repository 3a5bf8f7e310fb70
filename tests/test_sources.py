"""Data sources beyond numpy files: a folder of images with --preprocess, and --data-loader."""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from quantcli.calibration.data import model_inputs
from quantcli.calibration.sources import ImageFolder, Preprocess, UserLoader, open_source
from quantcli.cli.app import app
from quantcli.errors import CalibrationDataError, ConfigError
from quantcli.graph.io import load_model

runner = CliRunner()


def _images(folder: Path, count: int, size: tuple[int, int] = (20, 24)) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


def _specs(tmp_path: Path) -> tuple:
    model = models.save(models.tiny_cnn(channels=32), tmp_path)
    return model, model_inputs(load_model(model).model)


def test_preprocess_parses_every_key() -> None:
    pre = Preprocess.parse("resize=32,48; layout=nhwc; scale=1/255; mean=0.5,0.4,0.3; std=0.2; channels=BGR")
    assert pre.resize == (32, 48) and pre.layout == "nhwc" and pre.channels == "bgr"
    assert pre.scale == pytest.approx(1 / 255) and pre.mean == (0.5, 0.4, 0.3) and pre.std == (0.2,)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("size=3,3", "valid keys: resize, layout"), ("resize=3", "HEIGHT,WIDTH"), ("std=0", "std > 0"),
     ("layout=chw", "nchw, nhwc"), ("scale=1/0", "scale")],
)  # fmt: skip
def test_bad_preprocess_is_a_config_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Preprocess.parse(text)


def test_image_pixels_become_the_input(tmp_path: Path) -> None:
    _, specs = _specs(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (30, 30), (255, 0, 51)).save(folder / "red.png")
    pre = Preprocess.parse("channels=bgr;mean=0.5;std=0.5")
    batch = next(iter(open_source(ImageFolder(folder, pre), specs).batches(1))).arrays["image"]
    assert batch.shape == (1, 3, 16, 16) and batch.dtype == np.float32  # the model's fixed size, NCHW
    # BGR order, then (x / 255 - 0.5) / 0.5: blue 51 -> -0.6, green 0 -> -1, red 255 -> 1.
    np.testing.assert_allclose(batch[0, :, 5, 5], [-0.6, -1.0, 1.0], atol=1e-6)


def test_convert_calibrates_on_a_folder_of_images(tmp_path: Path) -> None:
    model, _ = _specs(tmp_path)
    folder = _images(tmp_path / "imgs", 10)
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--data", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["calibration"]["samples"] == 8 and document["fidelity"]["samples"] == 2
    assert out.is_file()


def test_unreadable_image_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    model, _ = _specs(tmp_path)
    folder = _images(tmp_path / "imgs", 3)
    (folder / "broken.png").write_text("not an image")
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--data", str(folder)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "broken.png: not a readable image" in result.stderr
    assert not out.exists()


def test_images_for_a_model_of_no_fixed_size_need_resize(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs", 2)
    model = models.save(models.hard_swish_conv(), tmp_path)  # input [batch, 8, 8, 8]: not an image
    specs = model_inputs(load_model(model).model)
    with pytest.raises(CalibrationDataError, match="float32"):
        open_source(ImageFolder(folder, Preprocess()), specs)


def test_data_loader_runs_the_users_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _specs(tmp_path)
    (tmp_path / "my_samples.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for _ in range(6):\n"
        "        yield {'image': rng.normal(size=(3, 16, 16)).astype(np.float32)}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "q.onnx"
    args = ["convert", str(model), "-o", str(out), "--data-loader", "my_samples:samples", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibration"]["samples"] == 5  # one of six held back to evaluate


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [("no_colon", "package.module:function"), ("no_such_module_xyz:f", "cannot import"),
     ("json:no_such_function", "has no function")],
)  # fmt: skip
def test_bad_loader_reference_is_a_config_error(tmp_path: Path, reference: str, fragment: str) -> None:
    _, specs = _specs(tmp_path)
    with pytest.raises(ConfigError, match=fragment):
        open_source(UserLoader(reference), specs)


def test_loader_items_are_checked_like_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, specs = _specs(tmp_path)
    (tmp_path / "bad_samples.py").write_text(
        "import numpy as np\ndef samples():\n    return [{'image': np.zeros((3, 16, 16))}]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CalibrationDataError, match=r"bad_samples:samples\[0\].*expects float32"):
        open_source(UserLoader("bad_samples:samples"), specs)
