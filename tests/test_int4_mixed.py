"""4-bit weights as the weight side of dynamic, and mixed bit widths: dynamic mode writes
MatMulNBits at accuracy_level 4, the diagnosis reads 4-bit weights back, fallback returns the
sensitive layer to 8 bits until the gate passes, and recipes set bits and block size per node."""

from __future__ import annotations

import json
import math
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app

runner = CliRunner()
LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "classifier"]


@pytest.fixture
def outliers(tmp_path: Path) -> tuple[Path, Path]:
    model = models.save(models.outlier_weights_mlp(), tmp_path, "mlp.onnx")
    data = tmp_path / "mlp.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(24, 64)).astype(np.float32))
    return model, data


def _convert(model: Path, out: Path, *flags: str) -> tuple[int, dict[str, object], str]:
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--json", *flags])
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stderr


def _ops(path: Path) -> dict[str, tuple[str, dict[str, int]]]:
    """Every node of the written model (checked): name -> op type and integer attributes."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return {n.name: (n.op_type, {a.name: a.i for a in n.attribute}) for n in model.graph.node}


def _widths(document: dict[str, object]) -> dict[str, tuple[int | None, str]]:
    blockwise = document["blockwise"]
    assert isinstance(blockwise, dict)
    return {w["node"]: (w["bits"], w["reason"]) for w in blockwise["widths"]}


def test_dynamic_writes_matmulnbits_at_accuracy_level_4_and_runs(
    wide: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = wide
    out = tmp_path / "q.onnx"
    code, document, stderr = _convert(
        model, out, "--mode", "dynamic", "--weight-bits", "4", "--data", str(data)
    )
    assert code == 0, stderr
    ops = _ops(out)
    for layer in LAYERS:
        op_type, attributes = ops[layer]
        assert op_type == "MatMulNBits", layer
        assert (attributes["accuracy_level"], attributes["bits"], attributes["block_size"]) == (4, 4, 32)
    assert ops["embed"][0] == "GatherBlockQuantized"
    # The rest of dynamic as today: no int8 MatMul left beside the 4-bit ones.
    assert not {op for op, _ in ops.values()} & {"DynamicQuantizeLinear", "MatMulInteger"}
    blockwise = document["blockwise"]
    assert isinstance(blockwise, dict) and blockwise["accuracy_level"] == 4
    assert all(_widths(document)[layer][0] == 4 for layer in LAYERS)
    # Weight-only writes the same 4-bit weights at accuracy_level 0 (float compute); level 4
    # differs from it only by rounding each input block to int8 at run time.
    weight_only = tmp_path / "w.onnx"
    code, document, stderr = _convert(model, weight_only, "--mode", "weight-only", "--weight-bits", "4")
    assert code == 0, stderr
    assert {_ops(weight_only)[layer][1]["accuracy_level"] for layer in LAYERS} == {0}
    feed = models.tiny_transformer_data(8, seed=5)
    levels = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for path in (out, weight_only)
    ]
    error = np.linalg.norm(levels[0] - levels[1]) / np.linalg.norm(levels[1])
    assert levels[0].shape == levels[1].shape and error < 0.05, error


@pytest.mark.parametrize(("mode", "method"), [("dynamic", "rtn"), ("weight-only", "awq")])
def test_diagnosis_reads_4_bit_weights_back(
    wide: tuple[Path, Path], tmp_path: Path, mode: str, method: str
) -> None:
    """Per layer, the diagnosis' weight SQNR of a 4-bit weight (read back from the packed codes,
    AWQ's input scale included) is the weight-reconstruction error the quantizer reported."""
    model, data = wide
    code, document, stderr = _convert(
        model,
        tmp_path / "q.onnx",
        *("--mode", mode, "--weight-bits", "4", "--block-method", method, "--data", str(data), "--per-layer"),
    )
    assert code == 0, stderr
    per_layer, blockwise = document["per_layer"], document["blockwise"]
    assert isinstance(per_layer, dict) and isinstance(blockwise, dict)
    four = {t["nodes"][0]: t for t in per_layer["tensors"] if t.get("bits") == 4}
    assert sorted(four) == sorted([*LAYERS, "embed"])
    reported = {layer["node"]: layer["weight_error"] for layer in blockwise["layers"]}
    reported["embed"] = reported.pop("emb")  # the table's cost is under its initializer's name
    for node, tensor in four.items():
        assert tensor["kind"] == "weight" and tensor["alone_sqnr_db"] is not None
        assert tensor["sqnr_db"] == pytest.approx(-20 * math.log10(reported[node]), abs=0.01), node


def test_fallback_returns_the_outlier_layer_to_8_bits(outliers: tuple[Path, Path], tmp_path: Path) -> None:
    """At 4 bits the outlier layer misses a cosine gate of 1.5 points; fallback widens it alone to 8
    bits (the plain layer stays 4-bit), the kept model passes, and a rerun gives the same bytes."""
    model, data = outliers
    flags = ("--mode", "dynamic", "--weight-bits", "4", "--data", str(data), "--metric", "cosine")
    code, document, stderr = _convert(model, tmp_path / "plain.onnx", *flags, "--max-drop", "1.5")
    assert code == 3, stderr  # without fallback the 4-bit model misses the gate
    outputs = []
    for name in ("a.onnx", "b.onnx"):
        out = tmp_path / name
        code, document, stderr = _convert(model, out, *flags, "--max-drop", "1.5", "--auto-fallback")
        assert code == 0, stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    ops = _ops(tmp_path / "a.onnx")
    assert ops["first"][0] == "MatMulNBits" and "second" not in ops  # second: DynamicQuantizeMatMul's pattern
    assert "MatMulInteger" in {op for op, _ in ops.values()}
    widths = _widths(document)
    assert widths["first"][0] == 4
    assert widths["second"][0] == 8 and widths["second"][1].endswith("8 bits, not 4: --auto-fallback")
    fallback, gate = document["fallback"], document["gate"]
    assert isinstance(fallback, dict) and isinstance(gate, dict)
    assert fallback["nodes_at_8_bits"] == ["second"] and fallback["nodes_in_float"] == []
    assert gate["passed"] and gate["drop"] <= 1.5


def test_fallback_goes_on_to_float_after_8_bits(outliers: tuple[Path, Path], tmp_path: Path) -> None:
    """A gate int8 cannot meet either: every 4-bit layer goes to 8 bits first, then to float."""
    model, data = outliers
    code, document, stderr = _convert(
        model,
        tmp_path / "q.onnx",
        *("--mode", "dynamic", "--weight-bits", "4", "--data", str(data), "--auto-fallback"),
        *("--metric", "cosine", "--max-drop", "0.0001"),
    )
    assert code in (0, 3), stderr
    fallback = document["fallback"]
    assert isinstance(fallback, dict)
    steps = fallback["steps"]
    floated = [s for s in steps if s["nodes_in_float"]]
    assert floated, steps
    # Nodes go to float only once every 4-bit layer is at 8 bits or in float.
    assert all(set(s["nodes_at_8_bits"]) | set(s["nodes_in_float"]) == {"first", "second"} for s in floated)


def test_recipe_sets_bits_and_block_size_per_node(wide: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = wide
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[defaults]\nmode = "weight-only"\nweight_bits = 4\n'
        '[[override]]\nmatch = "o_proj"\nbits = 8\n'
        '[[override]]\nmatch = "classifier"\nblock_size = 64\n'
    )
    out = tmp_path / "q.onnx"
    code, document, stderr = _convert(model, out, "--recipe", str(recipe))
    assert code == 0, stderr
    ops = _ops(out)
    assert ops["o_proj"][0] == "MatMul"  # int8 behind a DequantizeLinear
    assert ops["classifier"][1]["block_size"] == 64
    assert {ops[n][1]["block_size"] for n in ("q_proj", "k_proj", "v_proj")} == {32}
    bits, reason = _widths(document)["o_proj"]
    assert bits == 8 and str(recipe) in reason
    # The other way round: int8 by default, 4 bits for one node (dynamic mode).
    recipe.write_text(
        '[defaults]\nmode = "dynamic"\n[[override]]\nop = "Gather"\nbits = 4\nblock_size = 16\n'
    )
    code, document, stderr = _convert(model, out, "--recipe", str(recipe), "--force")
    assert code == 0, stderr
    ops = _ops(out)
    assert ops["embed"][0] == "GatherBlockQuantized" and ops["embed"][1]["block_size"] == 16
    assert "MatMulNBits" not in {op for op, _ in ops.values()}
    assert "MatMulInteger" in {op for op, _ in ops.values()}
    report = tmp_path / "r.json"
    code, _, stderr = _convert(model, out, "--recipe", str(recipe), "--force", "--report", str(report))
    assert code == 0, stderr
    again = tmp_path / "again.onnx"
    code, _, stderr = _convert(model, again, "--from-report", str(report))
    assert code == 0, stderr
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('match = "nope"\nbits = 8', "names no node or op type of this model: nope"),
        ('op = "MatMul"\nbits = 3', "bits must be 4 or 8, got 3"),
        ('op = "MatMul"\nblock_size = 48', "block_size must be one of 16, 32, 64, 128, got 48"),
        ('op = "MatMul"\nbits = 8\nblock_size = 64', "block_size is for 4-bit weights"),
    ],
)
def test_bad_recipe_overrides_are_one_line_errors_naming_the_file(
    wide: tuple[Path, Path], tmp_path: Path, override: str, message: str
) -> None:
    model, _ = wide
    recipe = tmp_path / "recipe.toml"
    bits = "" if "bits = 8" in override else "weight_bits = 4\n"
    recipe.write_text(f'[defaults]\nmode = "weight-only"\n{bits}[[override]]\n{override}\n')
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--recipe", str(recipe)])
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(recipe) in lines[0], result.stderr
    assert not out.exists() and result.stdout == ""
