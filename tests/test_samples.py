"""Acceptance on the bundled sample models (real trained networks): size and accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _convert(name: str, out: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    folder = SAMPLES / name
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(folder / "model.onnx"),
            "-o",
            str(out),
            "--data",
            str(folder / "calib.npz"),
            "--eval-data",
            str(folder / "eval.npz"),
            "--labels",
            str(folder / "eval_labels.npy"),
            "--json",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_sample_model_is_smaller_and_accurate_in_static_mode(name: str, tmp_path: Path) -> None:
    report = _convert(name, tmp_path / "q.onnx", "--mode", "static")
    assert report["size"]["ratio"] >= 3.5
    accuracy = report["fidelity"]["accuracy"]
    assert accuracy["float_top1"] >= 90.0  # a real, trained model
    assert accuracy["drop_points"] <= (0.5 if name == "digits_cnn" else 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_default_auto_keeps_a_mode_within_the_bound(name: str, tmp_path: Path) -> None:
    """The default: every mode is built and measured; the one written loses at most 1 point."""
    report = _convert(name, tmp_path / "q.onnx")
    modes = {c["mode"] for c in report["candidates"]}
    assert {"static", "dynamic", "weight-only"} <= modes
    chosen = [c for c in report["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["mode"] == report["mode"]
    assert chosen[0]["gate"]["passed"] and report["fidelity"]["accuracy"]["drop_points"] <= 1.0
    assert report["size"]["ratio"] >= 3.0
