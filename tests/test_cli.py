"""The command line through CliRunner: exit codes, JSON on stdout, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from typer.testing import CliRunner

from quantcli import pipeline
from quantcli.cli.app import app

runner = CliRunner()


def test_convert_json_is_the_only_thing_on_stdout(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    report = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "convert",
            str(model),
            "-o",
            str(out),
            "--data",
            str(data),
            "--json",
            "--report",
            str(report),
            "-m",
            "static",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema_version"] == 2
    assert document["size"]["ratio"] > 2.0  # a 40 KB model: Q/DQ parameters weigh in
    assert document["nodes"]["quantized_by_op"]["Conv"] == 2
    assert document["fidelity"]["outputs"][0]["cosine_mean"] > 0.99
    assert json.loads(report.read_text()) == document
    assert out.exists()


def test_convert_tables_go_to_stderr(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    result = runner.invoke(app, ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "size ratio" in result.stderr and "fidelity" in result.stderr


def test_user_error_is_one_line_exit_1_and_writes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"this is not onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 3), np.float32))
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--data", str(data)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert str(model) in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "model.onnx"]


def test_wrong_dtype_names_file_input_expected_and_got(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = cnn
    data = tmp_path / "calib64.npz"
    np.savez(data, image=models.tiny_cnn_data(4)["image"].astype(np.float64))
    result = runner.invoke(app, ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data)])
    assert result.exit_code == 1
    assert f"{data}: input 'image' expects float32[?,3,16,16], got float64[4,3,16,16]" in result.stderr


def test_usage_error_is_exit_2(cnn: tuple[Path, Path]) -> None:
    model, _ = cnn
    assert runner.invoke(app, ["convert", str(model), "--no-such-flag"]).exit_code == 2
    assert (
        runner.invoke(app, ["convert", str(model), "-o", "x.onnx", "--activation-type", "int4"]).exit_code
        == 2
    )


def test_internal_error_is_exit_4_with_traceback_only_under_debug(
    cnn: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = cnn

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "quantize", broken)  # the command imports it when it runs
    args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data)]
    result = runner.invoke(app, args)
    assert result.exit_code == 4
    assert "internal error" in result.stderr and "Traceback" not in result.stderr
    result = runner.invoke(app, [*args, "--debug"])
    assert result.exit_code == 4 and "Traceback" in result.stderr


def test_calibrate_then_convert_from_the_file(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    calib = tmp_path / "calib.json"
    # A named mode on both sides: auto's pick would depend on timings.
    args = ["calibrate", str(model), "--data", str(data), "-o", str(calib), "--json", "--mode", "static"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["samples"] == 40 and summary["tensors"] > 0
    stored = json.loads(calib.read_text())
    assert stored["format"] == "quantcli-calibration" and stored["version"] == 1
    out = tmp_path / "q.onnx"
    result = runner.invoke(
        app, ["convert", str(model), "-o", str(out), "--calibration", str(calib), "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["calibration"]["samples"] == 40
    assert document["fidelity"] is None and "eval-data" in document["fidelity_note"]
    # the same ranges give the same model as calibrating inside convert on all the data
    direct = tmp_path / "direct.onnx"
    runner.invoke(
        app,
        [
            "convert",
            str(model),
            "-o",
            str(direct),
            "--data",
            str(data),
            "--eval-data",
            str(data),
            "--mode",
            "static",
        ],
    )
    assert direct.read_bytes() == out.read_bytes()


def test_calibration_file_for_another_model_is_refused(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    calib = tmp_path / "calib.json"
    assert runner.invoke(app, ["calibrate", str(model), "--data", str(data), "-o", str(calib)]).exit_code == 0
    other = models.save(models.tiny_cnn(seed=5, channels=32), tmp_path, "other.onnx")
    result = runner.invoke(
        app, ["convert", str(other), "-o", str(tmp_path / "q.onnx"), "--calibration", str(calib)]
    )
    assert result.exit_code == 1 and "made for another model" in result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_labels_report_accuracy(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    eval_data = tmp_path / "eval.npz"
    np.savez(eval_data, **models.tiny_cnn_data(12, seed=3))
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(12) % 10)
    args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data)]
    result = runner.invoke(app, [*args, "--eval-data", str(eval_data), "--labels", str(labels), "--json"])
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.stdout)["fidelity"]["accuracy"]
    assert accuracy["output"] == "logits"
    assert accuracy["drop_points"] == pytest.approx(accuracy["float_top1"] - accuracy["quantized_top1"])
    np.save(labels, np.arange(5))
    result = runner.invoke(app, [*args, "--eval-data", str(eval_data), "--labels", str(labels), "--force"])
    assert result.exit_code == 1 and "5 labels for 12 evaluation samples" in result.stderr


def test_inspect_shows_plan_with_reasons(transformer: tuple[Path, Path]) -> None:
    model, _ = transformer
    result = runner.invoke(app, ["inspect", str(model), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["inputs"] == [{"name": "tokens", "dtype": "int64", "shape": [None, 8]}]
    assert document["op_types"]["MatMul"] == 7
    softmax = next(n for n in document["nodes"] if n["op_type"] == "Softmax")
    assert softmax["role"] == "float" and softmax["reason"]
    human = runner.invoke(app, ["inspect", str(model)])
    assert human.exit_code == 0 and "would stay float" in human.stdout


def test_existing_output_needs_force(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    out.write_text("precious")
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--data", str(data)])
    assert result.exit_code == 1 and "--force" in result.stderr
    assert out.read_text() == "precious"


def test_installed_entry_point(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    exe = Path(sys.executable).parent / "quantcli"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "quantcli"]
    done = subprocess.run(
        [*command, "convert", str(model), "-o", str(out), "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == str(out)
    assert done.stderr == ""  # not a terminal: no progress bar, and --json silences tables


def test_two_convert_runs_give_byte_identical_model_and_report(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    files = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        args = ["convert", str(model), "-o", str(folder / "q.onnx"), "--data", str(data), "--mode", "static"]
        result = runner.invoke(app, [*args, "--report", str(folder / "r.json"), "--quiet"])
        assert result.exit_code == 0, result.stderr
        report = (folder / "r.json").read_text().replace(str(folder), "<out>")
        files.append(((folder / "q.onnx").read_bytes(), report))
    assert files[0] == files[1]


def test_gate_failure_is_exit_3_with_model_and_report_written(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    # A bound of 0 points of cosine cannot be met by any int8 model: the gate must fail.
    args = ["convert", str(model), "-o", str(out), "--data", str(data), "--report", str(report)]
    result = runner.invoke(app, [*args, "--metric", "cosine", "--max-drop", "0", "--json"])
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    assert document["gate"]["passed"] is False and document["gate"]["missed_by"] > 0
    assert document["gate"]["metric"] == "cosine"
    assert out.is_file() and json.loads(report.read_text()) == document


def test_gate_pass_is_exit_0(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "--max-drop", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stderr


def test_dynamic_mode_needs_no_data(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = transformer
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--mode", "dynamic", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["mode"] == "dynamic" and document["nodes"]["by_role"]["dynamic"] == 5
    assert document["fidelity"] is None and out.is_file()


def test_inspect_shows_the_plan_of_a_mode(transformer: tuple[Path, Path]) -> None:
    model, _ = transformer
    result = runner.invoke(app, ["inspect", str(model), "--mode", "dynamic", "--json"])
    assert result.exit_code == 0, result.output
    roles = {n["name"]: n["role"] for n in json.loads(result.stdout)["nodes"]}
    assert roles["q_proj"] == "dynamic" and roles["qk"] == "float"


def test_calibrate_decides_the_mode_and_inspect_and_convert_follow_the_file(
    transformer: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = transformer
    calibration = tmp_path / "calib.json"
    result = runner.invoke(app, ["calibrate", "run", str(model), "--data", str(data), "-o", str(calibration)])
    assert result.exit_code == 0, result.output
    assert "modes tried (--mode auto)" in result.stderr  # the candidates table, in the terminal
    choice = json.loads(calibration.read_text())["choice"]
    assert sum(c["chosen"] for c in choice["candidates"]) == 1
    inspected = runner.invoke(app, ["inspect", str(model), "--calibration", str(calibration), "--json"])
    assert inspected.exit_code == 0, inspected.output
    document = json.loads(inspected.stdout)
    assert document["mode"] == choice["mode"] and str(calibration) in document["mode_reason"]
    assert {n["name"]: n["role"] for n in document["nodes"]} == choice["roles"]
    out = tmp_path / "q.onnx"
    converted = runner.invoke(app, ["convert", str(model), "-o", str(out), "-c", str(calibration), "--json"])
    assert converted.exit_code == 0, converted.output
    report = json.loads(converted.stdout)
    assert report["mode"] == choice["mode"] and report["nodes"]["roles"] == choice["roles"]
    # Without a file, inspect cannot measure: it shows static's plan and says why.
    plain = json.loads(runner.invoke(app, ["inspect", str(model), "--json"]).stdout)
    assert plain["mode"] == "static" and "auto decides by measuring" in plain["mode_reason"]
