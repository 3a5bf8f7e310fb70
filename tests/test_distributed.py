"""--ray: calibration shards and convert-many as Ray tasks, on an in-process local Ray (2 CPUs).

Ray starts once for this module (a few seconds) and is shut down after it; the rest of the suite
never imports ray. Workers find the tests' --data-loader modules on the PYTHONPATH given to them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import models
import numpy as np
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'quantcli[ray]')")

from quantcli.calibration.file import write_calibration  # noqa: E402
from quantcli.calibration.sources import UserLoader  # noqa: E402
from quantcli.cli.app import app  # noqa: E402
from quantcli.config import QuantConfig, QuantMode  # noqa: E402
from quantcli.distributed import RayCollector, RayOptions  # noqa: E402
from quantcli.errors import DistributedError  # noqa: E402
from quantcli.pipeline import calibrate  # noqa: E402

runner = CliRunner()
SAMPLES = Path(__file__).parent.parent / "sample_models"


@pytest.fixture(scope="module")
def loaders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running local Ray whose workers import modules from the returned folder."""
    folder = tmp_path_factory.mktemp("loaders")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {"PYTHONPATH": str(folder)}},
    )
    yield folder
    ray.shutdown()


def _loader(folder: Path, name: str, body: str) -> str:
    """A --data-loader module of 24 tiny-CNN samples; ``body`` runs first, in every process."""
    (folder / f"{name}.py").write_text(
        "import os, pathlib, numpy as np\n"
        "import models_data\n"
        f"DRIVER = {os.getpid()}\n"
        "def samples():\n"
        f"    {body}\n"
        "    data = models_data.tiny_cnn_data(24)\n"
        "    return [{'image': data['image'][i : i + 1]} for i in range(24)]\n"
    )
    return f"{name}:samples"


@pytest.fixture(scope="module")
def data_module(loaders: Path) -> Iterator[Path]:
    """The loaders' folder, importable here too (the driver opens the data to check it)."""
    shutil.copy(Path(models.__file__), loaders / "models_data.py")
    sys.path.insert(0, str(loaders))
    yield loaders
    sys.path.remove(str(loaders))


def test_an_unreachable_cluster_fails_in_one_line(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    # First in the file: Ray is not running yet (a running Ray is used as it is).
    model, data = cnn
    base = ["calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "c.json")]
    result = runner.invoke(app, [*base, "--ray", "--ray-address", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Ray at 127.0.0.1:1: cannot connect")
    assert not (tmp_path / "c.json").exists()
    alone = runner.invoke(app, [*base, "--workers", "2"])
    assert alone.exit_code == 2 and "go with --ray" in alone.stderr


def test_distributed_calibration_equals_the_local_file_byte_for_byte(
    loaders: Path, cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    base = [
        "calibrate",
        str(model),
        "--data",
        str(data),
        "--mode",
        "static",
        "--seed",
        "7",
        "--batch-size",
        "3",
    ]
    local, distributed = tmp_path / "local.json", tmp_path / "ray.json"
    assert runner.invoke(app, [*base, "-o", str(local)]).exit_code == 0
    result = runner.invoke(app, [*base, "-o", str(distributed), "--ray", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert distributed.read_bytes() == local.read_bytes()
    # Auto mode: its two parts (calibrate, held back) observed on Ray, its choice made here.
    auto = [arg for arg in base if arg not in ("--mode", "static")]
    assert runner.invoke(app, [*auto, "-o", str(local), "-f"]).exit_code == 0
    assert runner.invoke(app, [*auto, "-o", str(distributed), "-f", "--ray", "--workers", "2"]).exit_code == 0
    assert distributed.read_bytes() == local.read_bytes()
    # Another worker count, the library API, and the hold-back split auto mode makes.
    config = QuantConfig(mode=QuantMode.STATIC, seed=7, batch_size=3, max_samples=33)
    one = calibrate(model, data, config=config)
    two = calibrate(model, data, config=config, collector=RayCollector(RayOptions(workers=2)))
    write_calibration(one, tmp_path / "one.json")
    write_calibration(two, tmp_path / "two.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_convert_on_ray_writes_the_model_a_local_run_writes(
    loaders: Path, cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn  # the last 20% held back for evaluation: the workers calibrate on the rest
    base = ["convert", str(model), "--data", str(data), "--mode", "static", "--method", "entropy"]
    assert runner.invoke(app, [*base, "-o", str(tmp_path / "a.onnx")]).exit_code == 0
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "b.onnx"), "--ray", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibration"]["samples"] == 32
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_a_killed_worker_is_retried(data_module: Path, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    # The first worker to load the data dies; its task runs again and the result is unchanged.
    loader = _loader(
        data_module,
        "dies_once",
        f"m = pathlib.Path({str(marker)!r})\n"
        "    if os.getpid() != DRIVER and not m.exists():\n"
        "        m.write_text('x')\n"
        "        os._exit(1)",
    )
    model = models.save(models.tiny_cnn(), tmp_path)
    base = ["calibrate", str(model), "--data-loader", loader, "--mode", "static"]
    assert runner.invoke(app, [*base, "-o", str(tmp_path / "local.json")]).exit_code == 0
    assert not marker.exists()
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "ray.json"), "--ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert marker.exists()
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()


def test_a_shard_failing_for_good_fails_the_run_with_its_name(data_module: Path, tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(), tmp_path)
    dies = _loader(data_module, "always_dies", "if os.getpid() != DRIVER: os._exit(1)")
    with pytest.raises(DistributedError, match=r"calibration shard 1/1 failed for good.*died 2 times"):
        calibrate(
            model,
            UserLoader(dies),
            config=QuantConfig(mode=QuantMode.STATIC),
            collector=RayCollector(RayOptions(workers=1, retries=1)),
        )
    raises = _loader(
        data_module, "bad_on_workers", "if os.getpid() != DRIVER: return [{'image': np.zeros(3)}]"
    )
    output = tmp_path / "never.json"
    result = runner.invoke(
        app,
        ["calibrate", str(model), "--data-loader", raises, "-o", str(output), "--ray", "--workers", "2"],
    )
    assert result.exit_code == 1
    assert "calibration shard" in result.stderr and "expects float32" in result.stderr
    assert not output.exists()


def test_data_the_workers_cannot_read_is_refused_before_any_work(
    loaders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = models.save(models.tiny_cnn(), tmp_path)
    # Importable here (the working folder), not on the workers.
    (tmp_path / "here_only.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    return [{'image': np.zeros((1, 3, 16, 16), np.float32)} for _ in range(4)]\n"
    )
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "c.json"
    result = runner.invoke(
        app, ["calibrate", str(model), "--data-loader", "here_only:samples", "-o", str(output), "--ray"]
    )
    assert result.exit_code == 1, result.output
    assert "Ray node" in result.stderr and "'here_only' cannot be imported" in result.stderr
    assert not output.exists()


def test_convert_many_on_ray_reports_every_model(loaders: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    manifest = tmp_path / "batch.toml"
    manifest.write_text(
        '[defaults]\nmode = "static"\n'
        f'data = "{SAMPLES / "digits_cnn" / "calib.npz"}"\n'
        f'[[model]]\npath = "{SAMPLES / "digits_cnn" / "model.onnx"}"\n'
        f'[[model]]\npath = "{SAMPLES / "digits_transformer" / "model.onnx"}"\n'
        f'data = "{SAMPLES / "digits_transformer" / "calib.npz"}"\n'
        'metric = "sqnr"\nmin_sqnr = 200.0\n'
        '[[model]]\npath = "broken.onnx"\n'
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert-many", str(manifest), "-o", str(out), "--ray", "--json"])
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    rows = {r["name"]: r for r in document["models"]}
    assert document["exit_code"] == 3
    assert [r["name"] for r in document["models"]] == ["digits_cnn", "digits_transformer", "broken"]
    assert rows["digits_cnn"]["status"] == "ok" and rows["digits_cnn"]["exit_code"] == 0
    assert (
        rows["digits_transformer"]["status"] == "gate-failed" and rows["digits_transformer"]["exit_code"] == 3
    )
    assert rows["broken"]["status"] == "error" and rows["broken"]["exit_code"] == 1
    assert "broken.onnx" in rows["broken"]["message"]
    assert (out / "digits_cnn.int8.onnx").is_file() and (out / "digits_transformer.report.json").is_file()
    assert not (out / "broken.int8.onnx").exists()
    assert np.isclose(
        rows["digits_cnn"]["size_ratio"],
        json.loads((out / "digits_cnn.report.json").read_text())["size"]["ratio"],
    )
