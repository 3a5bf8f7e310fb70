"""Text from files, flags and graphs is printed as written: never Rich markup, never escape codes.

A battery of hostile names (brackets that look like markup, unicode, an ANSI escape) goes through
every command and error path; each must come out verbatim, control characters as ``\\x1b``.
"""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.cli.text import shown

runner = CliRunner()
WIDE = {"COLUMNS": "1000"}  # a path in a table title stays on one line

NAMES = ["model[v2]", "x[/bold]", "ünï[cödé] 模型", "esc\x1b[31mred"]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=WIDE)
    return result.exit_code, result.stdout, result.stderr


def _verbatim(text: str, output: str) -> bool:
    """``text`` appears as written, its control characters as visible escapes, and no raw ESC."""
    return shown(text) in output and "\x1b" not in output


@pytest.mark.parametrize("name", NAMES)
def test_missing_model_path_is_named_verbatim(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    for args in (
        ("convert", str(path), "-o", str(tmp_path / "q.onnx")),
        ("inspect", str(path)),
        ("calibrate", str(path), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "c.json")),
        ("compare", str(path), str(path), "--data", str(tmp_path / "d.npz")),
        ("calibrate", "merge", str(path), "-o", str(tmp_path / "m.json")),
    ):
        code, stdout, stderr = _invoke(*args)
        assert code == 1, (args, stderr)
        assert stdout == "" and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert _verbatim(str(path), stderr), stderr


@pytest.mark.parametrize("name", NAMES)
def test_model_and_output_paths_print_verbatim_on_success(name: str, tmp_path: Path) -> None:
    folder = tmp_path / name  # "x[/bold]" is a folder "x[" holding "bold]": the path still reads x[/bold]
    folder.mkdir(parents=True)
    stem = name.replace("/", "")
    model = models.save(models.tiny_cnn(channels=32), folder, f"{stem}.onnx")
    data = folder / f"{stem}.npz"
    np.savez(data, **models.tiny_cnn_data(12))
    out = folder / f"{stem}.int8.onnx"
    code, _, stderr = _invoke("convert", str(model), "-o", str(out), "--data", str(data), "-m", "static")
    assert code == 0, stderr
    assert _verbatim(f"{model} -> {out}", stderr), stderr
    code, _, stderr = _invoke("compare", str(model), str(out), "--data", str(data), "--runs", "2")
    assert code == 0, stderr
    assert _verbatim(f"{model} vs {out}", stderr), stderr
    calib = folder / f"{stem}.json"
    code, _, stderr = _invoke("calibrate", str(model), "--data", str(data), "-o", str(calib), "-m", "static")
    assert code == 0, stderr
    assert _verbatim(str(calib), stderr), stderr


def _hostile_graph() -> onnx.ModelProto:
    """The tiny CNN with node and tensor names that look like markup or carry an escape."""
    model = models.tiny_cnn(channels=32)
    renames = {"conv1": "conv[/bold]1", "relu1": "relu\x1b[2J1", "pool": "pool[red]", "gap": "gäp[v2]"}
    tensors = {"c1": "c[/]1", "r1": "r[bold]1"}
    for node in model.graph.node:
        node.name = renames.get(node.name, node.name)
        node.input[:] = [tensors.get(n, n) for n in node.input]
        node.output[:] = [tensors.get(n, n) for n in node.output]
    onnx.checker.check_model(model, full_check=True)
    return model


def test_node_and_tensor_names_print_verbatim(tmp_path: Path) -> None:
    model = models.save(_hostile_graph(), tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, **models.tiny_cnn_data(12))
    code, stdout, _ = _invoke("inspect", str(model), "-m", "dynamic")
    assert code == 0
    assert _verbatim("conv[/bold]1", stdout) and _verbatim("pool[red]", stdout)
    out = tmp_path / "q.onnx"
    code, _, stderr = _invoke(
        "convert", str(model), "-o", str(out), "--data", str(data), "-m", "static", "--per-layer",
        "--exclude", "pool[red]", "--exclude", "relu\x1b[2J1",
    )  # fmt: skip
    assert code == 0, stderr
    assert _verbatim("pool[red]", stderr) and _verbatim("relu\x1b[2J1", stderr)
    assert _verbatim("r[bold]1", stderr)  # a tensor in the per-layer table


def test_recipe_errors_and_recipe_help_keep_their_brackets(tmp_path: Path) -> None:
    recipe = tmp_path / "r[v2].toml"
    recipe.write_text("[defaults]\nbogus = 1\n")
    model = models.save(models.tiny_cnn(channels=32), tmp_path)
    code, _, stderr = _invoke("convert", str(model), "-o", str(tmp_path / "q.onnx"), "--recipe", str(recipe))
    assert code == 1
    assert f"{recipe}: unknown key 'bogus' in [defaults]" in stderr
    recipe.write_text("[[override]]\nmatch = 'x'\nbogus = true\n")
    code, _, stderr = _invoke("convert", str(model), "-o", str(tmp_path / "q.onnx"), "--recipe", str(recipe))
    assert code == 1 and "[[override]] #1" in stderr, stderr
    code, stdout, _ = _invoke("convert", "--help")
    assert code == 0 and "[defaults] and [[override]] tables" in stdout


def test_a_bad_flag_value_that_looks_like_markup_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = _invoke("convert", "m.onnx", "-o", "q.onnx", "--mode", "x[/bold]")
    assert code == 2 and "x[/bold]" in stderr and "Traceback" not in stderr


def test_report_files_escape_names_for_html_and_markdown(tmp_path: Path) -> None:
    model = models.save(_hostile_graph(), tmp_path, "m<script>.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, **models.tiny_cnn_data(12))
    page, summary, report = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.json"
    code, _, stderr = _invoke(
        "convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "-m", "static",
        "--report-html", str(page), "--report-md", str(summary), "--report", str(report),
    )  # fmt: skip
    assert code == 0, stderr
    assert "<script>" not in page.read_text() and "&lt;script&gt;" in page.read_text()
    assert "<script>" not in summary.read_text()
    assert json.loads(report.read_text())["model"] == str(model)  # JSON keeps the name itself
