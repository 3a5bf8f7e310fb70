"""Exit codes exactly as the README's table, one test per code and path; --quiet's one line."""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import pytest
from typer.testing import CliRunner

from quantcli import pipeline
from quantcli.cli.app import app

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ("--max-drop", "-1"),
        ("--batch-size", "0"),
        ("--max-samples", "0"),
        ("--top-k", "0"),
        ("--max-trials", "0"),
        ("--percentile", "20"),
        ("--metric", "sqnr", "--max-drop", "1"),
        ("--metric", "sqnr"),
        ("--max-drop", "1", "--min-sqnr", "20"),
        ("--metric", "cosine", "--min-sqnr", "20"),
        ("--data-loader", "m:f", "--data", "x.npz"),
    ],
)
def test_bad_option_values_are_usage_errors(
    flags: tuple[str, ...], cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = cnn
    out = tmp_path / "q.onnx"
    code, stdout, stderr = _invoke("convert", str(model), "-o", str(out), *flags)
    assert code == 2, stderr
    assert "Usage: " in stderr and stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("shard", ["3/2", "0/4", "two"])
def test_bad_shard_is_a_usage_error(shard: str, cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    code, _, stderr = _invoke(
        "calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "c.json"), "--shard", shard
    )
    assert code == 2 and "Usage: " in stderr and "--shard" in stderr, stderr
    assert not (tmp_path / "c.json").exists()


def test_compare_bad_values_are_usage_errors(cnn: tuple[Path, Path]) -> None:
    model, data = cnn
    for flags in (("--runs", "0"), ("--threads", "0"), ("--metric", "sqnr", "--max-drop", "1")):
        code, _, stderr = _invoke("compare", str(model), str(model), "--data", str(data), *flags)
        assert code == 2 and "Usage: " in stderr, (flags, stderr)


def test_ctrl_c_exits_130_and_writes_nothing(
    cnn: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = cnn

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "quantize", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, stderr = _invoke(
        "convert", str(model), "-o", str(out / "q.onnx"), "--data", str(data), "--report", str(out / "r.json")
    )
    assert code == 130
    assert stderr == "interrupted; nothing was written\n" and stdout == ""
    assert list(out.iterdir()) == []


def test_gate_failure_under_quiet_is_one_line(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    args = ("convert", str(model), "--data", str(data), "-m", "static", "-q")
    code, stdout, stderr = _invoke(
        *args, "-o", str(tmp_path / "a.onnx"), "--max-drop", "0", "--metric", "cosine"
    )
    assert code == 3 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("FAILED: cosine drop "), stderr
    assert stderr.rstrip().endswith("> 0.00 points")
    assert (tmp_path / "a.onnx").exists()  # a failed gate still writes the model
    code, stdout, stderr = _invoke(*args, "-o", str(tmp_path / "b.onnx"), "--max-drop", "50")
    assert (code, stdout, stderr) == (0, "", "")
    code, stdout, stderr = _invoke(*args, "-o", str(tmp_path / "c.onnx"), "--min-sqnr", "500")
    assert code == 3 and stderr.startswith("FAILED: sqnr ") and stderr.rstrip().endswith("< 500.0 dB")


def test_gate_line_names_channel_sqnr(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    code, _, stderr = _invoke(
        "convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "-m", "static",
        "--metric", "channel-sqnr", "--min-sqnr", "5",
    )  # fmt: skip
    assert code == 0, stderr
    assert "accuracy gate (channel-sqnr): mean channel SQNR" in stderr and "PASSED" in stderr


def test_compare_gate_passes_and_fails_like_polygraphy(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    quantized = tmp_path / "q.onnx"
    code, _, _ = _invoke(
        "convert", str(model), "-o", str(quantized), "--data", str(data), "-m", "static", "-q"
    )
    assert code == 0
    base = ("compare", str(model), str(quantized), "--data", str(data), "--runs", "2")
    code, _, stderr = _invoke(*base, "--max-drop", "50")
    assert code == 0 and "PASSED: cosine drop" in stderr
    code, stdout, stderr = _invoke(*base, "--min-sqnr", "500", "--json")
    assert code == 3
    document = json.loads(stdout)
    assert document["gate"]["passed"] is False and document["gate"]["metric"] == "sqnr"
    code, stdout, stderr = _invoke(*base, "--max-drop", "0", "--metric", "cosine", "-q")
    assert code == 3 and stdout == "" and stderr.startswith("FAILED: cosine drop") and stderr.count("\n") == 1
    code, stdout, _ = _invoke(*base, "--json")
    assert code == 0 and json.loads(stdout)["gate"] is None  # no bound, no verdict


def test_user_error_is_1_and_already_quantized_is_named(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    quantized = tmp_path / "q.onnx"
    assert _invoke("convert", str(model), "-o", str(quantized), "--data", str(data), "-m", "static")[0] == 0
    code, stdout, stderr = _invoke("convert", str(quantized), "-o", str(tmp_path / "qq.onnx"))
    assert code == 1 and stdout == "" and stderr.count("\n") == 1
    assert f"error: {quantized}: already quantized (" in stderr and "QuantizeLinear" in stderr
    code, _, stderr = _invoke(
        "calibrate", str(quantized), "--data", str(data), "-o", str(tmp_path / "c.json")
    )
    assert code == 1 and "already quantized" in stderr
    integer = models.save(models.tiny_cnn(channels=32), tmp_path, "d.onnx")
    dynamic = tmp_path / "d.int8.onnx"
    assert _invoke("convert", str(integer), "-o", str(dynamic), "-m", "dynamic")[0] == 0
    code, _, stderr = _invoke("convert", str(dynamic), "-o", str(tmp_path / "dd.onnx"))
    assert code == 1 and "already quantized" in stderr and "MatMulInteger" in stderr, stderr


def test_a_model_that_barely_changes_warns_in_one_line(tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(channels=32), tmp_path)  # Convs, and one small Gemm
    report = tmp_path / "r.json"
    code, _, stderr = _invoke("convert", str(model), "-o", str(tmp_path / "q.onnx"), "--report", str(report))
    assert code == 0
    document = json.loads(report.read_text())
    assert document["mode"] == "dynamic" and document["size"]["ratio"] < 1.2
    (warning,) = document["warnings"]
    assert "give --data" in warning
    lines = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert lines == [f"warning: {warning}"]
    assert "none (dynamic mode uses no activation ranges)" in stderr
    assert document["calibration"]["summary"] == "none (dynamic mode uses no activation ranges)"
    quiet = _invoke("convert", str(model), "-o", str(tmp_path / "q2.onnx"), "-q")
    assert quiet == (0, "", "")  # --quiet: nothing on success, the warning included (it is in the report)
    np.savez(tmp_path / "d.npz", **models.tiny_cnn_data(20))
    code, _, stderr = _invoke(
        "convert",
        str(model),
        "-o",
        str(tmp_path / "s.onnx"),
        "--data",
        str(tmp_path / "d.npz"),
        "-m",
        "static",
    )
    assert code == 0 and "warning" not in stderr
