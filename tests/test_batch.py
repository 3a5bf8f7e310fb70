"""convert-many: every model converted with its own settings, none stopping the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from typer.testing import CliRunner

from quantcli.batch import Settings, jobs_from_manifest, jobs_from_paths
from quantcli.cli.app import app
from quantcli.config import Overrides, QuantMode
from quantcli.errors import ConfigError

runner = CliRunner()
SAMPLES = Path(__file__).parent.parent / "sample_models"


def test_models_in_a_folder_are_named_by_their_folder_when_files_share_a_name(tmp_path: Path) -> None:
    jobs = jobs_from_paths([SAMPLES], Settings(out_dir=tmp_path, overrides=Overrides(mode=QuantMode.STATIC)))
    assert [j.name for j in jobs] == ["digits_cnn", "digits_transformer"]
    assert jobs[0].output == tmp_path.absolute() / "digits_cnn.int8.onnx"
    assert jobs[0].report == tmp_path.absolute() / "digits_cnn.report.json"
    assert all(j.config.mode is QuantMode.STATIC for j in jobs)


def test_a_manifest_sets_each_model_and_rejects_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "batch.toml"
    manifest.write_text(
        '[defaults]\nmax_drop = 2\ndata = "calib.npz"\n'
        '[[model]]\npath = "a.onnx"\n'
        '[[model]]\npath = "b.onnx"\nname = "bee"\nmetric = "cosine"\nmax_drop = 0.5\ndata = "b.npz"\n'
    )
    a, b = jobs_from_manifest(manifest, Settings(out_dir=tmp_path))
    assert (a.name, a.config.max_drop, a.data) == ("a", 2.0, (tmp_path / "m" / "calib.npz").resolve())
    assert (b.name, b.config.max_drop, b.data) == ("bee", 0.5, (tmp_path / "m" / "b.npz").resolve())
    manifest.write_text('[[model]]\npath = "a.onnx"\nmax_dorp = 1\n')
    with pytest.raises(ConfigError, match=r"batch.toml: unknown key 'max_dorp'.*valid keys: data"):
        jobs_from_manifest(manifest, Settings(out_dir=tmp_path))
    manifest.write_text('[[model]]\npath = "a.onnx"\nmode = "fastest"\n')
    with pytest.raises(ConfigError, match=r"mode = 'fastest' is not a valid mode"):
        jobs_from_manifest(manifest, Settings(out_dir=tmp_path))


def test_convert_many_reports_every_model_and_exits_with_the_worst_code(tmp_path: Path) -> None:
    for seed in (0, 1):
        models.save(models.tiny_cnn(seed=seed, channels=32), tmp_path, f"cnn{seed}.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(24))
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    out = tmp_path / "out"
    paths = [str(tmp_path / n) for n in ("cnn0.onnx", "cnn1.onnx", "broken.onnx")]
    # One --data for every model; two processes.
    result = runner.invoke(
        app, ["convert-many", *paths, "-o", str(out), "--data", str(data), "--mode", "static", "--json"]
    )
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["exit_code"] == 1
    status = {r["name"]: (r["status"], r["exit_code"]) for r in document["models"]}
    assert status == {"cnn0": ("ok", 0), "cnn1": ("ok", 0), "broken": ("error", 1)}
    for row in document["models"][:2]:
        report = json.loads(Path(row["report"]).read_text())
        assert report["size"]["ratio"] == row["size_ratio"] > 1
        assert Path(row["output"]).is_file()
    assert sorted(p.name for p in out.iterdir()) == [
        "cnn0.int8.onnx",
        "cnn0.report.json",
        "cnn1.int8.onnx",
        "cnn1.report.json",
    ]
    # A gate that fails is exit 3, written; in this process (--workers 1); a table on stderr.
    again = runner.invoke(
        app,
        [
            "convert-many",
            paths[0],
            "-o",
            str(tmp_path / "gated"),
            "--data",
            str(data),
            "--mode",
            "static",
            "--metric",
            "sqnr",
            "--min-sqnr",
            "200",
            "--workers",
            "1",
        ],
    )
    assert again.exit_code == 3, again.output
    assert again.stdout == ""
    assert "gate-failed" in again.stderr and "FAIL" in again.stderr
    assert (tmp_path / "gated" / "cnn0.int8.onnx").is_file()


def test_a_bad_manifest_writes_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "batch.toml"
    manifest.write_text("[[model]]\nname = 'x'\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert-many", str(manifest), "-o", str(out)])
    assert result.exit_code == 1
    assert "needs path" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_nothing_but_ray_runs_imports_ray() -> None:
    code = (
        "import sys, quantcli, quantcli.cli.app, quantcli.batch; "
        "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
