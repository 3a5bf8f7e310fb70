"""Config layers: flags (Overrides) over a calibration file's method over a recipe over the
defaults, resolved in the library so the command line and the Python API agree."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcli import Overrides, QuantConfig, merge, quantize
from quantcli.calibration.file import read_calibration, write_calibration
from quantcli.cli.app import app
from quantcli.config import (
    CalibrationMethod,
    CompareConfig,
    GateMetric,
    QuantMode,
    Recipe,
    load_recipe,
)
from quantcli.errors import ConfigError
from quantcli.pipeline import calibrate

runner = CliRunner()


def test_overrides_name_every_config_field_and_nothing_else() -> None:
    assert [f.name for f in fields(Overrides)] == [f.name for f in fields(QuantConfig)]
    assert all(getattr(Overrides(), f.name) is None for f in fields(Overrides))


def test_a_flag_beats_the_recipe_which_beats_the_default(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[defaults]\nmethod = "entropy"\nbatch_size = 4\n[[override]]\nmatch = "conv1"\nskip = true\n'
    )
    recipe = load_recipe(path)
    config = merge(recipe, Overrides(batch_size=8, exclude=frozenset({"fc"})))
    assert (config.method, config.batch_size, config.percentile) == (CalibrationMethod.ENTROPY, 8, 99.99)
    assert config.exclude == {"conv1", "fc"}  # patterns of both layers stay float
    assert merge(recipe) == merge(recipe, Overrides())
    assert merge(QuantConfig(top_k=3), Overrides(mode=QuantMode.STATIC)) == QuantConfig(
        top_k=3, mode=QuantMode.STATIC
    )


def test_the_merged_config_is_validated_whole_not_layer_by_layer() -> None:
    # The recipe names a metric whose bound only the flag gives: fine together.
    recipe = Recipe(path="r.toml", overrides=Overrides(metric=GateMetric.SQNR))
    assert merge(recipe, Overrides(min_sqnr=20.0)).min_sqnr == 20.0
    with pytest.raises(ConfigError, match="needs its bound in dB"):
        merge(recipe)


def test_the_calibration_file_gives_the_method_unless_a_flag_does(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    recorded = calibrate(
        model, data, config=QuantConfig(method=CalibrationMethod.ENTROPY, mode=QuantMode.STATIC)
    )
    path = tmp_path / "calib.json"
    write_calibration(recorded, path)
    cal = read_calibration(path)
    recipe = Recipe(path="r.toml", overrides=Overrides(method=CalibrationMethod.MSE))
    assert merge(recipe, calibration=cal).method is CalibrationMethod.ENTROPY  # file over recipe
    given = Overrides(method=CalibrationMethod.MINMAX)
    assert merge(recipe, given, calibration=cal).method is CalibrationMethod.MINMAX  # flag over file

    # Through the API: no config, or settings that leave the method unset, take the file's ...
    for config in (None, Overrides(mode=QuantMode.STATIC)):
        result = quantize(model, tmp_path / "q.onnx", calibration=path, config=config, force=True)
        assert result.report.calibration.method == "entropy"
    # ... one that gives it, or a whole QuantConfig, are taken as they are.
    result = quantize(model, tmp_path / "q.onnx", calibration=path, config=given, force=True)
    assert result.report.calibration.method == "minmax"
    # The command line agrees with the API.
    cli = runner.invoke(
        app, ["convert", str(model), "-c", str(path), "-o", str(tmp_path / "c.onnx"), "--json"]
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["calibration"]["method"] == "entropy"


def test_calibrate_honours_a_recipe_and_flags_win_over_it(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    recipe = tmp_path / "r.toml"
    recipe.write_text('[defaults]\nmethod = "mse"\nmode = "dynamic"\n')
    base = ["calibrate", str(model), "--data", str(data), "--recipe", str(recipe), "--json"]
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["method"], summary["choice"]["mode"]) == ("mse", "dynamic")
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "b.json"), "--method", "entropy"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "entropy"


def test_compare_config_refuses_what_compare_cannot_run() -> None:
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        CompareConfig(threads=0)
    with pytest.raises(ConfigError, match="give one bound"):
        CompareConfig(max_drop=1.0, min_sqnr=20.0)
    assert CompareConfig(min_sqnr=20.0).bounds.gate(has_labels=False) == (GateMetric.SQNR, 20.0)
