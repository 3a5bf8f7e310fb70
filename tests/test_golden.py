"""The JSON report of a fixed conversion, normalized, against a file kept in git.

Regenerate on purpose with `make golden` after a deliberate change of the schema or the plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import models
import numpy as np
from typer.testing import CliRunner

from quantcli.cli.app import app

GOLDEN = Path(__file__).parent / "golden" / "tiny_cnn_report.json"
GOLDEN_FALLBACK = Path(__file__).parent / "golden" / "outlier_mlp_fallback_report.json"
GOLDEN_COMPARE = Path(__file__).parent / "golden" / "tiny_cnn_compare.json"


def _normalize(value: Any) -> Any:
    """Sorted keys, floats to 3 significant digits, no paths or versions: what must not drift."""
    if isinstance(value, dict):
        skipped = (
            *("model", "output", "source", "float_model", "quantized_model", "latency_ms"),
            *("command", "versions", "summary"),
        )
        return {k: _normalize(v) for k, v in sorted(value.items()) if k not in skipped}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.3g}")
    return value


def test_report_matches_golden(tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(channels=32), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(40))
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(model),
            "-o",
            str(tmp_path / "q.onnx"),
            "--data",
            str(data),
            "--mode",
            "static",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    _check(json.loads(result.stdout), GOLDEN)


def _check(document: Any, golden: Path) -> None:
    report = _normalize(document)
    if os.environ.get("QUANTCLI_REGEN_GOLDEN"):
        golden.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    assert report == json.loads(golden.read_text())


def test_fallback_report_matches_golden(tmp_path: Path) -> None:
    """Schema of the gate (sqnr), per_layer and fallback sections."""
    model = models.save(models.outlier_mlp(), tmp_path)
    np.savez(tmp_path / "calib.npz", **models.outlier_mlp_data(32, outlier=2000.0))
    np.savez(tmp_path / "eval.npz", **models.outlier_mlp_data(16, seed=2))
    result = CliRunner().invoke(
        app,
        [
            *("convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(tmp_path / "calib.npz")),
            *("--eval-data", str(tmp_path / "eval.npz"), "--min-sqnr", "25", "--auto-fallback", "--json"),
            *("--mode", "static"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    # The exclude list is text with rounded numbers in it; its lines that name nodes must not drift.
    listing = document["per_layer"].pop("exclude_list")
    assert next(line for line in listing.splitlines() if not line.startswith("#")) == "mm1"
    _check(document, GOLDEN_FALLBACK)


def test_compare_report_matches_golden(tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(channels=32), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(40))
    quantized = tmp_path / "q.onnx"
    assert (
        CliRunner()
        .invoke(app, ["convert", str(model), "-o", str(quantized), "--data", str(data), "--mode", "static"])
        .exit_code
        == 0
    )
    result = CliRunner().invoke(
        app, ["compare", str(model), str(quantized), "--data", str(data), "--runs", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    _check(json.loads(result.stdout), GOLDEN_COMPARE)
