"""Help a person can scan, reports a reviewer can read, a run a report can reproduce, and a
library that exports what the command line does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
from rich.console import Console
from typer.testing import CliRunner

import quantcli
from quantcli.cli.app import app
from quantcli.cli.render import render_per_layer
from quantcli.diagnose import LayerDiagnosis

runner = CliRunner()


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "-h"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_help_has_panels_one_default_style_and_an_h_alias() -> None:
    text = _help("convert")
    panels = ["Input and data", "Mode and precision", "Accuracy gate", "Diagnosis", "Output"]
    positions = [text.index(f"─ {panel} ") for panel in panels]
    assert positions == sorted(positions)
    assert "[default: 16]" in text and "[default: auto]" in text
    assert "(default" not in text and "default:" not in text.replace("[default:", "")
    flags = [line for line in text.splitlines() if "Show this message" not in line]  # Typer's own -h
    assert not any("<bool>" in line for line in flags)  # a flag takes no value
    assert "--auto-fallback" in text and "--auto " not in text  # the old spelling is hidden
    assert "[defaults] and [[override]]" in text
    for command in (("compare",), ("calibrate", "run"), ("calibrate", "merge"), ("inspect",)):
        assert "Usage:" in _help(*command)


def test_completion_is_on() -> None:
    text = _help()
    assert "--install-completion" in text and "--show-completion" in text
    script = runner.invoke(app, ["--show-completion", "bash"])
    assert script.exit_code == 0 and "_quantcli_completion" in script.stdout


def test_version_imports_no_numerical_library() -> None:
    code = (
        "import sys; from quantcli.cli.app import app; "
        "heavy = [m for m in ('numpy', 'onnx', 'onnxruntime', 'onnx_ir') if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout == f"quantcli {quantcli.__version__}\n"


def test_public_api_exports_what_the_cli_does() -> None:
    for name in ("quantize", "calibrate", "compare", "inspect_model", "merge_calibrations", "QuantConfig"):
        assert callable(getattr(quantcli, name)), name
        assert name in quantcli.__all__


def test_from_report_reproduces_the_model(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    first, report = tmp_path / "a.onnx", tmp_path / "a.json"
    result = runner.invoke(
        app,
        [
            "convert", str(model), "-o", str(first), "--data", str(data), "--report", str(report),
            "--method", "percentile", "--percentile", "99.9", "--weight-method", "mse", "--seed", "3",
            "--activation-type", "int8", "--exclude", "fc", "-m", "static",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = json.loads(report.read_text())
    config = recorded["config"]
    assert (config["method"], config["percentile"], config["weight_method"], config["seed"]) == (
        "percentile",
        99.9,
        "mse",
        3,
    )
    assert config["exclude"] == ["fc"] and config["activation_type"] == "int8"
    assert "quantcli convert" in recorded["command"] and "--weight-method mse" in recorded["command"]
    assert set(recorded["versions"]) >= {"quantcli", "onnx", "onnxruntime"}
    assert "date" not in recorded  # JSON reports are byte-identical run after run
    again, report2 = tmp_path / "b.onnx", tmp_path / "b.json"
    result = runner.invoke(
        app,
        ["convert", str(model), "-o", str(again), "--data", str(data), "--from-report", str(report),
         "--report", str(report2)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()
    assert json.loads(report2.read_text())["config"] == config
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "compare"}')
    result = runner.invoke(
        app, ["convert", str(model), "-o", str(tmp_path / "c.onnx"), "--from-report", str(bad)]
    )
    assert result.exit_code == 1 and "not a quantcli convert report" in result.stderr


def test_pages_show_accuracy_candidates_and_provenance(
    transformer: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = transformer
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(8) % 5)
    evaluation = tmp_path / "eval.npz"
    np.savez(evaluation, **models.tiny_transformer_data(8, seed=5))
    page, summary, report = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data),
            "--eval-data", str(evaluation), "--labels", str(labels),
            "--report-html", str(page), "--report-md", str(summary), "--report", str(report),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert len(document["candidates"]) > 1
    for text in (page.read_text(), summary.read_text()):
        assert "Top-1 accuracy on the labels" in text
        assert "Modes tried" in text
        for candidate in document["candidates"]:
            assert candidate["reason"] in text
        assert "onnxruntime" in text and "quantcli convert" in text and " UTC" in text


def test_tables_in_a_log_keep_names_whole(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    _, data = cnn
    proto = models.tiny_cnn(channels=32)
    long = {"r1": "encoder.stage_one.block_zero.relu_output", "sum": "encoder.stage_one.residual_sum"}
    for node in proto.graph.node:
        node.input[:] = [long.get(n, n) for n in node.input]
        node.output[:] = [long.get(n, n) for n in node.output]
    model = models.save(proto, tmp_path, "long.onnx")
    result = runner.invoke(
        app,
        ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "-m", "static",
         "--per-layer", "--report", str(tmp_path / "r.json")],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert max(len(line) for line in lines if "│" in line) <= 80
    names = [t["name"] for t in json.loads((tmp_path / "r.json").read_text())["per_layer"]["tensors"][:10]]
    assert set(long.values()) <= set(names)
    for name in names:
        assert any(name in line for line in lines), name


def test_per_layer_with_nothing_to_diagnose_says_so() -> None:
    console = Console(record=True, width=100)
    render_per_layer(LayerDiagnosis(samples=4, tensors=(), top_k=10), console)
    assert "nothing to diagnose" in console.export_text()
