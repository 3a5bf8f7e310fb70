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
from typing import Any

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'quantcli[ray]')")

from quantcli import build  # noqa: E402
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


def _without_paths(document: dict[str, Any]) -> dict[str, Any]:
    """A report without the output path and the command line (all two runs into two files, one
    with --ray, differ by); predicted speeds, not wall times, decide by default, and nothing
    else may differ."""
    return {k: v for k, v in document.items() if k not in {"output", "command"}}


def _nothing_built_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on a build in this process fails the test: with --ray every one is a task (the
    workers import quantcli afresh, unpatched)."""

    def refuse(*_: object) -> None:
        raise AssertionError("a search build ran on the driver")

    monkeypatch.setattr(build, "build_order", refuse)


@pytest.mark.parametrize(
    "case",
    [
        ("cnn", "--mode", "auto"),
        ("outlier", "--mode", "static", "--min-sqnr", "25", "--auto-fallback"),
        ("cnn", "--mode", "static", "--min-sqnr", "900", "--auto-fallback", "--max-trials", "4"),
    ],
    ids=["auto", "fallback-passes", "fallback-never-passes"],
)
def test_a_search_on_ray_writes_the_model_and_report_a_local_run_writes(
    loaders: Path,
    cnn: tuple[Path, Path],
    tmp_path: Path,
    case: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    which, *flags = case
    if which == "outlier":
        model = models.save(models.outlier_mlp(), tmp_path)
        data, evaluation = tmp_path / "calib.npz", tmp_path / "eval.npz"
        np.savez(data, **models.outlier_mlp_data(32, outlier=2000.0))
        np.savez(evaluation, **models.outlier_mlp_data(16, seed=2))
        inputs = ["--data", str(data), "--eval-data", str(evaluation)]
    else:
        model, data = cnn
        inputs = ["--data", str(data)]
    base = ["convert", str(model), *inputs, *flags, "--json"]
    local = runner.invoke(app, [*base, "-o", str(tmp_path / "local.onnx")])
    assert local.exit_code in {0, 3}, local.output
    _nothing_built_here(monkeypatch)
    remote = runner.invoke(app, [*base, "-o", str(tmp_path / "ray.onnx"), "--ray", "--workers", "3"])
    assert remote.exit_code == local.exit_code, remote.output
    assert (tmp_path / "local.onnx").read_bytes() == (tmp_path / "ray.onnx").read_bytes()
    mine, theirs = json.loads(local.stdout), json.loads(remote.stdout)
    assert _without_paths(theirs) == _without_paths(mine)
    if "--auto-fallback" in flags:
        # The first model and its trials; when none passes, the last (every group in float) cannot
        # be built on the worker, and is reported as locally.
        steps = mine["fallback"]["steps"]
        assert (
            len(steps) >= 2 if mine["fallback"]["passed"] else steps[-1]["gate"] is None and len(steps) >= 3
        )
    else:
        assert len(mine["candidates"]) >= 2


def _too_small(tmp_path: Path) -> tuple[Path, Path]:
    """A MatMul on an 8x8 weight, whose QDQ model is larger than the float one (static refuses
    it), and 8 samples of its input."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    data = tmp_path / "small.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(8, 1, 8)).astype(np.float32))
    return model, data


@pytest.mark.parametrize("mode", ["static", "auto"])
def test_a_candidate_failing_on_a_worker_fails_as_it_fails_locally(
    loaders: Path,
    tmp_path: Path,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, data = _too_small(tmp_path)
    base = ["convert", str(model), "--data", str(data), "--mode", mode, "-f"]
    local = runner.invoke(app, [*base, "-o", str(tmp_path / "local.onnx")])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    _nothing_built_here(monkeypatch)
    remote = runner.invoke(app, [*base, "-o", str(tmp_path / "ray.onnx"), "--ray", "--workers", "2"])
    assert remote.exit_code == local.exit_code, remote.output
    assert remote.stderr.replace("ray.onnx", "local.onnx") == local.stderr
    again = [
        r.getMessage().replace("ray.onnx", "local.onnx")
        for r in caplog.records
        if r.levelno == logging.WARNING
    ]
    assert again == warned
    if mode == "static":  # refused, one line, nothing written
        assert local.exit_code == 1 and "would not be smaller than the input" in local.stderr
        assert not (tmp_path / "ray.onnx").exists()
    else:  # the candidates that grew are dropped with the same warning, the same model written
        assert local.exit_code == 0 and any("static mode candidate dropped" in w for w in warned)
        assert (tmp_path / "local.onnx").read_bytes() == (tmp_path / "ray.onnx").read_bytes()
