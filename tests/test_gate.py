"""Accuracy you can gate a build on: the sqnr gate, per-layer diagnosis, automatic fallback,
selection controls, recipes, compare, and the Markdown/HTML reports."""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.config import DEFAULT_MIN_CHANNEL_SQNR, GateMetric, QuantConfig
from quantcli.errors import ConfigError
from quantcli.evaluate import Fidelity, OutputFidelity, channel_sqnr_db, gate, sqnr_db

runner = CliRunner()


@pytest.fixture
def outlier(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(model, calibration with one huge value, clean evaluation data)."""
    model = models.save(models.outlier_mlp(), tmp_path)
    calib, evaluation = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, **models.outlier_mlp_data(32, outlier=2000.0))
    np.savez(evaluation, **models.outlier_mlp_data(16, seed=2))
    return model, calib, evaluation


def _convert(model: Path, out: Path, *args: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    """Convert in static mode (the gate and fallback under test), unless ``args`` name a mode."""
    mode = () if "--mode" in args else ("--mode", "static")
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--json", *mode, *args])
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stderr


def test_gate_failure_exits_3_and_still_writes_every_artefact(
    outlier: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, calib, evaluation = outlier
    out, report, md, page = (tmp_path / n for n in ("q.onnx", "r.json", "r.md", "r.html"))
    code, document, _ = _convert(
        model,
        out,
        *("--data", str(calib), "--eval-data", str(evaluation), "--metric", "cosine", "--max-drop", "1"),
        *("--report", str(report), "--report-md", str(md), "--report-html", str(page)),
    )
    assert code == 3
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert json.loads(report.read_text()) == document
    gate = document["gate"]
    assert gate["passed"] is False and gate["missed_by"] == pytest.approx(gate["drop"] - 1.0)
    assert "FAILED by" in md.read_text()
    assert "<svg" in page.read_text()


def test_sqnr_metric_has_its_own_bound_in_db(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    # Contradicting flags are usage errors (exit 2), like any bad flag value.
    code, _, stderr = _convert(model, tmp_path / "a.onnx", "--data", str(data), "--metric", "sqnr")
    assert code == 2 and "--min-sqnr" in stderr
    code, _, stderr = _convert(
        model, tmp_path / "b.onnx", "--data", str(data), "--metric", "sqnr", "--max-drop", "1"
    )
    assert code == 2 and "--min-sqnr" in stderr
    code, document, _ = _convert(model, tmp_path / "c.onnx", "--data", str(data), "--min-sqnr", "20")
    assert code == 0
    assert document["gate"]["metric"] == "sqnr" and document["gate"]["unit"] == "dB"
    assert document["gate"]["sqnr_db"] == min(o["sqnr_db"] for o in document["fidelity"]["outputs"])
    code, document, _ = _convert(model, tmp_path / "d.onnx", "--data", str(data), "--min-sqnr", "500")
    assert code == 3 and document["gate"]["missed_by"] == pytest.approx(500 - document["gate"]["sqnr_db"])


def test_auto_fallback_reaches_the_gate_plain_convert_misses(
    outlier: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, calib, evaluation = outlier
    data = ("--data", str(calib), "--eval-data", str(evaluation), "--min-sqnr", "25")
    code, plain, _ = _convert(model, tmp_path / "plain.onnx", *data)
    assert code == 3
    code, document, _ = _convert(model, tmp_path / "auto.onnx", *data, "--auto-fallback")
    assert code == 0, document
    fallback = document["fallback"]
    assert fallback["passed"] and fallback["nodes_in_float"] == ["mm1"]
    assert fallback["steps"][0]["gate"]["passed"] is False and fallback["steps"][0]["nodes_in_float"] == []
    assert [s["chosen"] for s in fallback["steps"]].count(True) == 1
    assert 0 < document["int8_weight_fraction"] < plain["int8_weight_fraction"]
    assert document["per_layer"]["tensors"][0]["name"] == "x"  # the stretched range ranks worst
    # --auto is the spelling of the same flag.
    code, again, _ = _convert(model, tmp_path / "alias.onnx", *data, "--auto", "--force")
    assert code == 0 and again["fallback"]["nodes_in_float"] == ["mm1"]


def test_fallback_without_a_bound_aims_at_the_default_and_never_fails_the_run(
    outlier: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, calib, evaluation = outlier
    args = ("--data", str(calib), "--eval-data", str(evaluation), "--auto-fallback")
    code, document, stderr = _convert(model, tmp_path / "q.onnx", *args)
    assert code == 0, stderr
    assert document["gate"] is None  # no bound stated: nothing to fail the build on
    fallback = document["fallback"]
    assert fallback is not None and fallback["passed"]  # static's outlier missed the default bound
    assert document["fidelity"]["outputs"][0]["channel_sqnr_db"] >= 15.0


def test_fallback_that_never_passes_keeps_a_model_and_says_so(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    code, document, _ = _convert(
        model, out, "--data", str(data), "--min-sqnr", "900", "--auto-fallback", "--max-trials", "2"
    )
    assert code == 3 and out.exists()
    fallback = document["fallback"]
    assert not fallback["passed"] and "no trial passed" in fallback["summary"]
    assert len(fallback["steps"]) <= 3  # the first model and at most two trials


def test_per_layer_writes_an_exclude_list_convert_accepts(
    outlier: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, calib, evaluation = outlier
    listing = tmp_path / "exclude.txt"
    code, document, stderr = _convert(
        model,
        tmp_path / "q.onnx",
        *("--data", str(calib), "--eval-data", str(evaluation), "--per-layer", "--top-k", "1"),
        *("--write-exclude", str(listing)),
    )
    assert code == 0, stderr
    tensors = document["per_layer"]["tensors"]
    assert tensors[0]["name"] == "x" and tensors[0]["alone_sqnr_db"] < 10
    assert {t["kind"] for t in tensors} == {"activation", "weight"}
    assert [line for line in listing.read_text().splitlines() if not line.startswith("#")] == ["mm1"]
    code, document, _ = _convert(
        model,
        tmp_path / "q2.onnx",
        *("--data", str(calib), "--eval-data", str(evaluation), "--exclude", f"@{listing}"),
    )
    assert code == 0
    assert [n["name"] for n in document["nodes"]["float"] if n["reason"].endswith("by the user")] == ["mm1"]


def test_exclude_globs_and_include(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    code, document, _ = _convert(model, tmp_path / "a.onnx", "--data", str(data), "--exclude", "conv*")
    assert code == 0
    excluded = {n["name"] for n in document["nodes"]["float"] if n["reason"].endswith("by the user")}
    assert excluded == {"conv1", "conv2"}
    code, _, stderr = _convert(model, tmp_path / "b.onnx", "--data", str(data), "--exclude", "nomatch*")
    assert code == 1 and "nomatch*" in stderr
    # conv2 has no integer kernel after it once the Add is left out, so it stays float; conv1
    # feeds conv2 and keeps its integer kernel.
    code, document, _ = _convert(model, tmp_path / "c.onnx", "--data", str(data), "--include", "conv*")
    assert code == 0
    assert document["nodes"]["quantized_by_op"] == {"Conv": 1}
    assert any(n["reason"] == "float: not in --include" for n in document["nodes"]["float"])


def test_recipe_maps_onto_the_config_and_flags_win(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[defaults]\nactivation_type = "int8"\nmode = "static"\n\n'
        '[[override]]\nop = "Gemm"\nskip = true\n\n'
        '[[override]]\nmatch = "conv1"\nper_channel = false\n'
    )
    code, document, stderr = _convert(
        model, tmp_path / "a.onnx", "--data", str(data), "--recipe", str(recipe)
    )
    assert code == 0, stderr
    assert document["config"]["activation_type"] == "int8"
    assert "Gemm" not in document["nodes"]["quantized_by_op"]
    quantized = onnx.load(tmp_path / "a.onnx")
    scales = {i.name: i.dims for i in quantized.graph.initializer}
    assert list(scales["conv1.w_scale"]) == []
    code, document, _ = _convert(
        model,
        tmp_path / "b.onnx",
        *("--data", str(data), "--recipe", str(recipe), "--activation-type", "uint8"),
    )
    assert code == 0 and document["config"]["activation_type"] == "uint8"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\nactivaton_type = 'int8'\n", "valid keys: activation_type, batch_size"),
        ("[default]\n", "valid keys: defaults, override"),
        (
            "[[override]]\nop = 'Conv'\nskp = true\n",
            "valid keys: bits, block_size, match, op, per_channel, skip",
        ),
        ("[defaults]\nmode = 'fast'\n", "is not one of static, dynamic"),
        ("[[override]]\nop = 'Conv'\n", "changes nothing"),
        ("[defaults\n", "not valid TOML"),
    ],
)
def test_recipe_errors_name_the_file_and_the_valid_keys(
    cnn: tuple[Path, Path], tmp_path: Path, text: str, message: str
) -> None:
    model, data = cnn
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    code, _, stderr = _convert(model, tmp_path / "q.onnx", "--data", str(data), "--recipe", str(recipe))
    assert code == 1 and message in stderr and str(recipe) in stderr
    assert not (tmp_path / "q.onnx").exists()


def test_compare_reports_fidelity_size_latency_and_layers(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    quantized = tmp_path / "q.onnx"
    converted = runner.invoke(app, ["convert", str(model), "-o", str(quantized), "--data", str(data)])
    assert converted.exit_code == 0
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(40) % 10)
    md = tmp_path / "c.md"
    result = runner.invoke(
        app,
        [
            *("compare", str(model), str(quantized), "--data", str(data), "--labels", str(labels)),
            *("--threads", "1", "--runs", "3", "--per-layer", "--json", "--report-md", str(md)),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["kind"] == "compare" and document["threads"] == 1
    assert document["size"]["ratio"] > 2
    assert set(document["latency_ms"]) == {"float", "quantized"}
    assert document["latency_ms"]["float"]["runs"] == 3
    assert document["fidelity"]["accuracy"]["output"] == "logits"
    assert document["fidelity"]["outputs"][0]["top1_agreement"] > 0.9
    assert len(document["per_layer"]["tensors"]) >= 5
    assert "quantcli compare" in md.read_text()
    plain = runner.invoke(app, ["compare", str(model), str(quantized), "--data", str(data), "--runs", "3"])
    assert plain.exit_code == 0 and plain.stdout == "" and "latency" in plain.stderr


def test_compare_refuses_models_with_other_inputs(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    other = models.save(models.outlier_mlp(), tmp_path, "other.onnx")
    result = runner.invoke(app, ["compare", str(model), str(other), "--data", str(data)])
    assert result.exit_code == 1 and "inputs" in result.stderr


def test_html_report_is_self_contained(outlier: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, evaluation = outlier
    page = tmp_path / "r.html"
    code, document, _ = _convert(
        model,
        tmp_path / "q.onnx",
        *("--data", str(calib), "--eval-data", str(evaluation), "--report-html", str(page)),
    )
    assert code == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert text.count('class="bar"') == len(document["per_layer"]["tensors"])


def test_channel_sqnr_weighs_small_channels_like_large_ones() -> None:
    # Channel 0 is large and exact to 1e-3; channel 1 is small and off by 10%.
    signal = np.array([1e6, 1.0])
    noise = np.array([1.0, 0.01])
    assert sqnr_db(float(signal.sum()), float(noise.sum())) > 55.0
    assert channel_sqnr_db(signal, noise) == pytest.approx((60.0 + 20.0) / 2)
    assert channel_sqnr_db(np.zeros(2), np.zeros(2)) is None
    assert channel_sqnr_db(np.ones(2), np.zeros(2)) == float("inf")


def _fidelity(cosine: float, sqnr: float, channel_sqnr: float | None) -> Fidelity:
    output = OutputFidelity("out", cosine, cosine, sqnr, 0.1, None, channel_sqnr)
    return Fidelity(samples=8, source="test", outputs=(output,))


def test_auto_mode_without_labels_or_bound_chooses_by_channel_sqnr() -> None:
    """A detector whose boxes hide its class scores: cosine passes, the channels do not."""
    metric, bound = QuantConfig().gate(has_labels=False)
    assert (metric, bound) == (GateMetric.CHANNEL_SQNR, DEFAULT_MIN_CHANNEL_SQNR)
    hidden_loss = _fidelity(cosine=0.9991, sqnr=27.2, channel_sqnr=10.0)
    assert gate(hidden_loss, GateMetric.COSINE, 1.0).passed
    result = gate(hidden_loss, metric, bound)
    assert not result.passed and result.missed_by == pytest.approx(5.0) and result.unit == "dB"
    assert gate(_fidelity(0.9999, 36.6, 17.4), metric, bound).passed
    # No live channel: the whole output's SQNR stands in.
    assert gate(_fidelity(0.99, 12.0, None), metric, bound).value == 12.0


def test_a_stated_bound_or_labels_keep_their_metric() -> None:
    assert QuantConfig().gate(has_labels=True) == (GateMetric.AUTO, 1.0)  # accuracy, resolved on use
    assert QuantConfig(max_drop=0.5).gate(has_labels=False) == (GateMetric.AUTO, 0.5)  # cosine
    assert QuantConfig(min_sqnr=30).gate(has_labels=False) == (GateMetric.SQNR, 30)
    channel = QuantConfig(metric=GateMetric.CHANNEL_SQNR, min_sqnr=20)
    assert channel.gate(has_labels=False) == (GateMetric.CHANNEL_SQNR, 20)
    with pytest.raises(ConfigError, match="--min-sqnr"):
        QuantConfig(metric=GateMetric.CHANNEL_SQNR)
