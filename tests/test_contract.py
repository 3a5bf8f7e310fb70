"""The data contract across exporter conventions: each input at the model's own rank, batch axes
only where the model lets a dim vary, samples of any dynamic shape, never concatenated.

Each model below is tiny and built here; each goes through ``quantcli convert`` end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from quantcli.calibration.collect import collect_stats
from quantcli.calibration.data import InputSpec, has_batch_axis, model_inputs, open_dataset
from quantcli.calibration.sources import UserLoader, open_source
from quantcli.cli.app import app
from quantcli.errors import CalibrationDataError
from quantcli.evaluate import compare_models
from quantcli.graph.io import load_model

runner = CliRunner()
D = 16


def _w(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _value(name: str, elem: int, dims: list[int | str | None]) -> onnx.ValueInfoProto:
    """A tensor value whose ``None`` dims are unnamed and ``-1`` dims written as dim_value -1."""
    value = helper.make_tensor_value_info(name, elem, [0 if d == -1 else d for d in dims])
    for dim, want in zip(value.type.tensor_type.shape.dim, dims, strict=True):
        if want == -1:
            dim.dim_value = -1
    return value


def paddle_classifier(c: int = 32) -> onnx.ModelProto:
    """Conv classifier whose input is written as Paddle writes it: float32[-1,3,?,?]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        _w(rng, "c1.w", c, 3, 3, 3),
        _w(rng, "c1.b", c, scale=0.1),
        _w(rng, "c2.w", c, c, 3, 3, scale=0.1),
        _w(rng, "c2.b", c, scale=0.1),
        _w(rng, "fc.w", 6, c),
        _w(rng, "fc.b", 6, scale=0.1),
    ]
    x = _value("x", TensorProto.FLOAT, [-1, 3, None, None])
    return _model(nodes, [x], [_value("logits", TensorProto.FLOAT, [-1, 6])], inits)


def sentence_encoder(vocab: int = 30) -> onnx.ModelProto:
    """input_ids and attention_mask, int64[batch, sequence]: embed, project, masked mean-pool."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w1"], ["h0"], name="proj1"),
        helper.make_node("Relu", ["h0"], ["h1"], name="relu"),
        helper.make_node("MatMul", ["h1", "w2"], ["h"], name="proj2"),
        helper.make_node("Cast", ["attention_mask"], ["m"], name="mask_f", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "last"], ["m3"], name="mask_3d"),
        helper.make_node("Mul", ["h", "m3"], ["hm"], name="masked"),
        helper.make_node("ReduceSum", ["hm", "seq_axis"], ["total"], name="sum", keepdims=0),
        helper.make_node("ReduceSum", ["m3", "seq_axis"], ["count"], name="count", keepdims=0),
        helper.make_node("Div", ["total", "count"], ["embedding"], name="mean"),
    ]
    inits = [
        _w(rng, "emb", vocab, D, scale=1.0),
        _w(rng, "w1", D, D),
        _w(rng, "w2", D, D),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
    ]
    inputs = [
        _value("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        _value("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
    ]
    return _model(nodes, inputs, [_value("embedding", TensorProto.FLOAT, ["batch", D])], inits)


H = 64


def recurrent_state() -> onnx.ModelProto:
    """A voice-activity-like step: x float32[?,16], a state float32[2,?,64] whose leading 2 is
    fixed (layers, not samples), and a scalar int64 rate; outputs a score and the next state."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("MatMul", ["x", "wx"], ["hx"], name="input_proj"),
        helper.make_node("ReduceSum", ["state", "layer_axis"], ["hs"], name="state_sum", keepdims=0),
        helper.make_node("MatMul", ["hs", "ws"], ["hs2"], name="state_proj"),
        helper.make_node("Cast", ["sr"], ["srf"], name="rate", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "rate_scale"], ["gain"], name="gain"),
        helper.make_node("Add", ["hx", "hs2"], ["pre"], name="mix"),
        helper.make_node("Mul", ["pre", "gain"], ["scaled"], name="scale"),
        helper.make_node("Tanh", ["scaled"], ["h"], name="tanh"),
        helper.make_node("MatMul", ["h", "wo"], ["score"], name="head"),
        helper.make_node("Unsqueeze", ["h", "layer_axis"], ["h3"], name="h3"),
        helper.make_node("Mul", ["state", "decay"], ["kept"], name="decay"),
        helper.make_node("Add", ["kept", "h3"], ["next_state"], name="next"),
    ]
    inits = [
        _w(rng, "wx", 16, H, scale=0.2),
        _w(rng, "ws", H, H, scale=0.1),
        _w(rng, "wo", H, 2),
        numpy_helper.from_array(np.array([0], np.int64), "layer_axis"),
        numpy_helper.from_array(np.array(1 / 16000, np.float32), "rate_scale"),
        numpy_helper.from_array(np.array(0.5, np.float32), "decay"),
    ]
    inputs = [
        _value("x", TensorProto.FLOAT, [None, 16]),
        _value("state", TensorProto.FLOAT, [2, None, H]),
        _value("sr", TensorProto.INT64, []),
    ]
    outputs = [
        _value("score", TensorProto.FLOAT, [None, 2]),
        _value("next_state", TensorProto.FLOAT, [2, None, H]),
    ]
    return _model(nodes, inputs, outputs, inits)


def optional_input_with_default() -> onnx.ModelProto:
    """A graph input that is also an initializer (a default a caller may override): not fed."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Mul", ["h", "gain"], ["g"], name="gain_mul"),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    inits = [
        _w(rng, "w1", D, D),
        _w(rng, "w2", D, D),
        numpy_helper.from_array(np.ones(1, np.float32), "gain"),
    ]
    inputs = [_value("x", TensorProto.FLOAT, ["n", D]), _value("gain", TensorProto.FLOAT, [1])]
    return _model(nodes, inputs, [_value("y", TensorProto.FLOAT, ["n", D])], inits)


def _sentences(folder: Path, count: int, seed: int = 0, vocab: int = 30) -> list[int]:
    """One sentence per file, each its own length, as a tokenizer writes them: [1, L]."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(5, 40, count)]
    for i, length in enumerate(lengths):
        ids = rng.integers(0, vocab, (1, length)).astype(np.int64)
        mask = np.ones((1, length), np.int64)
        mask[0, length - rng.integers(0, 3) :] = 0  # some padding at the end
        mask[0, 0] = 1
        np.savez(folder / f"{i:03d}.npz", input_ids=ids, attention_mask=mask)
    return lengths


def _images(folder: Path, widths: list[int], seed: int = 0) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, width in enumerate(widths):
        np.savez(folder / f"{i:03d}.npz", x=rng.normal(0, 1, (1, 3, 12, width)).astype(np.float32))


def _states(folder: Path, count: int, seed: int = 0) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.savez(
            folder / f"{i:03d}.npz",
            x=rng.normal(0, 1, (1, 16)).astype(np.float32),
            state=rng.normal(0, 1, (2, 1, H)).astype(np.float32),
            sr=np.array(16000, np.int64),
        )


def _convert(
    model: onnx.ModelProto, tmp_path: Path, data: Path, *flags: str
) -> tuple[int, dict[str, Any], str]:
    path = models.save(model, tmp_path)
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["convert", str(path), "-o", str(out), "--data", str(data), "--json", *flags])
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    if result.exit_code in (0, 3):
        onnx.checker.check_model(onnx.load(out), full_check=True)
    return result.exit_code, document, result.stderr


def _sane(document: dict[str, Any], calib: int, held: int) -> None:
    assert document["calibration"]["samples"] == calib
    assert document["fidelity"]["samples"] == held
    for output in document["fidelity"]["outputs"]:
        assert 0.9 < output["cosine_mean"] <= 1.0 + 1e-9
    assert sum(document["nodes"]["quantized_by_op"].values()) > 0


# ------------------------------------------------------------------ end to end, one per convention


def test_sentence_encoder_with_one_length_per_file_converts(tmp_path: Path) -> None:
    lengths = _sentences(tmp_path / "calib", 20)
    assert len(set(lengths)) > 10
    code, document, stderr = _convert(sentence_encoder(), tmp_path, tmp_path / "calib", "--mode", "static")
    assert code == 0, stderr
    _sane(document, calib=16, held=4)
    assert document["nodes"]["quantized_by_op"]["MatMul"] == 2


def test_sentence_encoder_under_the_default_mode_and_compare(tmp_path: Path) -> None:
    _sentences(tmp_path / "calib", 12)
    code, document, stderr = _convert(sentence_encoder(), tmp_path, tmp_path / "calib")
    assert code == 0, stderr
    # Auto's output: calibrated on 10 sentences and measured on 2, or (dynamic) measured on all.
    assert document["fidelity"]["samples"] == (12 if document["mode"] == "dynamic" else 2)
    assert document["fidelity"]["outputs"][0]["cosine_mean"] > 0.9
    model, quantized, calib = (str(tmp_path / n) for n in ("model.onnx", "q.onnx", "calib"))
    args = ["compare", model, quantized, "--data", calib, "--per-layer", "--json", "--runs", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    compared = json.loads(result.stdout)
    assert compared["fidelity"]["samples"] == 12
    assert compared["fidelity"]["outputs"][0]["cosine_min"] > 0.9


def test_paddle_minus_one_dims_with_images_of_many_widths(tmp_path: Path) -> None:
    widths = [48, 64, 48, 80, 32, 64, 48, 96, 40, 48]
    _images(tmp_path / "calib", widths)
    code, document, stderr = _convert(
        paddle_classifier(),
        tmp_path,
        tmp_path / "calib",
        "--mode",
        "static",
        "--bias-correction",
        "--per-layer",
    )
    assert code == 0, stderr
    _sane(document, calib=8, held=2)
    assert document["nodes"]["quantized_by_op"]["Conv"] == 2
    assert document["per_layer"]["samples"] == 2 and document["per_layer"]["tensors"]
    assert document["fidelity"]["outputs"][0]["top1_agreement"] is not None


def test_fallback_runs_per_sample_on_variable_widths(tmp_path: Path) -> None:
    _images(tmp_path / "calib", [48, 64, 32, 80, 48, 56, 40, 64, 72, 48])
    code, document, stderr = _convert(
        paddle_classifier(),
        tmp_path,
        tmp_path / "calib",
        "--mode",
        "static",
        "--auto-fallback",
        "--min-sqnr",
        "80",
        "--max-trials",
        "3",
    )
    assert code in (0, 3), stderr
    measured = [s for s in document["fallback"]["steps"] if s["gate"] is not None]
    assert len(measured) >= 2  # the full plan and trials with nodes in float, each measured per sample
    assert measured[-1]["gate"]["sqnr_db"] > measured[0]["gate"]["sqnr_db"]


def test_fixed_leading_state_dim_scalar_and_unnamed_batch(tmp_path: Path) -> None:
    _states(tmp_path / "calib", 10)
    code, document, stderr = _convert(recurrent_state(), tmp_path, tmp_path / "calib", "--mode", "static")
    assert code == 0, stderr
    _sane(document, calib=8, held=2)


def test_recurrent_state_as_one_stacked_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = tmp_path / "calib.npz"
    np.savez(
        data,
        x=rng.normal(0, 1, (10, 1, 16)).astype(np.float32),
        state=rng.normal(0, 1, (10, 2, 1, H)).astype(np.float32),
        sr=np.full(10, 8000, np.int64),
    )
    code, document, stderr = _convert(recurrent_state(), tmp_path, data, "--mode", "static")
    assert code == 0, stderr
    _sane(document, calib=8, held=2)


def test_optional_input_with_a_default_is_not_fed(tmp_path: Path) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(5).normal(0, 1, (10, D)).astype(np.float32))
    code, document, stderr = _convert(optional_input_with_default(), tmp_path, data, "--mode", "static")
    assert code == 0, stderr
    _sane(document, calib=8, held=2)


def test_mismatched_file_is_one_line_exit_1_and_writes_nothing(tmp_path: Path) -> None:
    _states(tmp_path / "calib", 3)
    rng = np.random.default_rng(6)
    bad = tmp_path / "calib" / "001.npz"
    x = rng.normal(0, 1, (1, 16)).astype(np.float32)
    np.savez(bad, x=x, state=np.zeros((1, 2, H), np.float32), sr=np.array(16000, np.int64))
    code, document, stderr = _convert(recurrent_state(), tmp_path, tmp_path / "calib")
    assert code == 1 and document == {}
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(bad) in lines[0]
    assert "input 'state' expects float32[2,?,64], got float32[1,2,64]" in lines[0]
    assert "float32[N,2,?,64]" in lines[0]  # how to write it
    assert not (tmp_path / "q.onnx").exists()


# ------------------------------------------------------------------ the contract, unit by unit


def _specs(model: onnx.ModelProto, tmp_path: Path) -> tuple[InputSpec, ...]:
    return model_inputs(load_model(models.save(model, tmp_path, "spec.onnx")).model)


def test_minus_one_and_unnamed_dims_are_dynamic_named_ones_keep_their_names(tmp_path: Path) -> None:
    (x,) = _specs(paddle_classifier(), tmp_path)
    assert x.shape == (None, 3, None, None) and x.describe() == "float32[?,3,?,?]"
    ids, mask = _specs(sentence_encoder(), tmp_path)
    assert ids.symbols == ("batch", "sequence") and has_batch_axis((ids, mask))
    specs = _specs(recurrent_state(), tmp_path)
    assert [s.shape for s in specs] == [(None, 16), (2, None, H), ()]
    assert not has_batch_axis(specs)  # the state's leading 2 and the scalar have none
    # First dims named differently (a batch and a count of boxes) are not one batch axis.
    image = InputSpec("image", np.dtype(np.float32), (None, 3), ("batch", None))
    boxes = InputSpec("boxes", np.dtype(np.float32), (None, 4), ("num_boxes", None))
    assert not has_batch_axis((image, boxes)) and has_batch_axis((image,))
    assert not has_batch_axis((InputSpec("audio", np.dtype(np.float32), (None,)),))


def test_fixed_leading_dim_is_never_a_sample_axis(tmp_path: Path) -> None:
    specs = _specs(recurrent_state(), tmp_path)
    feed = {
        "x": np.zeros((3, 16), np.float32),
        "state": np.zeros((2, 3, H), np.float32),
        "sr": np.array(8000),
    }
    np.savez(tmp_path / "feed.npz", **feed)
    dataset = open_dataset(tmp_path / "feed.npz", specs)
    assert dataset.num_samples == 1  # one ready-to-feed dict, batch 3 inside it
    (only,) = dataset.batches(8)
    assert only.arrays["state"].shape == (2, 3, H) and only.arrays["sr"].shape == ()
    np.savez(tmp_path / "stack.npz", **{k: np.stack([v] * 4) for k, v in feed.items()})
    stacked = open_dataset(tmp_path / "stack.npz", specs)
    assert stacked.num_samples == 4
    assert [f.arrays["state"].shape for f in stacked.batches(8)] == [(2, 3, H)] * 4


def test_a_feed_with_a_batch_axis_is_one_sample_per_row(tmp_path: Path) -> None:
    spec = InputSpec("x", np.dtype(np.float32), (None, 3, None, None))
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3, 4, 6), np.float32))
    dataset = open_dataset(tmp_path / "d.npz", (spec,))
    assert dataset.num_samples == 5
    assert [f.arrays["x"].shape for f in dataset.batches(2)] == [(2, 3, 4, 6), (2, 3, 4, 6), (1, 3, 4, 6)]


def test_batches_hold_only_samples_of_one_shape_in_a_fixed_order(tmp_path: Path) -> None:
    lengths = _sentences(tmp_path / "s", 15)
    specs = _specs(sentence_encoder(), tmp_path)
    dataset = open_dataset(tmp_path / "s", specs)
    for size in (1, 2, 4, 64):
        feeds = list(dataset.batches(size))
        assert sorted(p for f in feeds for p in f.positions) == list(range(15))
        for feed in feeds:
            assert len(feed.positions) <= size
            assert {lengths[p] for p in feed.positions} == {feed.arrays["input_ids"].shape[1]}
            assert feed.arrays["input_ids"].shape == feed.arrays["attention_mask"].shape
        again = [f.positions for f in dataset.batches(size)]
        assert again == [f.positions for f in feeds]
    assert max(len(f.positions) for f in dataset.batches(64)) == max(lengths.count(n) for n in lengths)


def test_results_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    _sentences(tmp_path / "s", 16)
    model = sentence_encoder()
    path = models.save(model, tmp_path)
    specs = _specs(model, tmp_path)
    dataset = open_dataset(tmp_path / "s", specs)
    loaded = load_model(path).model
    names = ["h1", "h", "embedding"]
    one = collect_stats(loaded, names, dataset, batch_size=1, histograms=True)
    many = collect_stats(loaded, names, dataset, batch_size=8, histograms=True)
    for name in names:
        assert one[name].count == many[name].count
        np.testing.assert_allclose(
            [one[name].min, one[name].max], [many[name].min, many[name].max], rtol=1e-6
        )
    # A second model that differs: fidelity per sample, equal for any batch size.
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for init in other.graph.initializer:
        if init.name == "w2":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, "w2"))
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    candidate = ort.InferenceSession(other.SerializeToString(), providers=["CPUExecutionProvider"])
    small, large = (compare_models(reference, candidate, dataset, batch_size=b, source="s") for b in (1, 8))
    assert small.samples == large.samples == 16
    (a,), (b,) = small.outputs, large.outputs
    assert a.cosine_mean == pytest.approx(b.cosine_mean, abs=1e-9)
    assert a.cosine_min == pytest.approx(b.cosine_min, abs=1e-9)
    assert a.sqnr_db == pytest.approx(b.sqnr_db, abs=1e-4)  # float32 rounding of batched kernels


def test_labels_follow_samples_through_shape_groups(tmp_path: Path) -> None:
    widths = [32, 48, 32, 48, 40, 32]
    _images(tmp_path / "d", widths)
    model = paddle_classifier()
    specs = _specs(model, tmp_path)
    dataset = open_dataset(tmp_path / "d", specs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = np.array(
        [
            int(session.run(None, {"x": np.load(tmp_path / "d" / f"{i:03d}.npz")["x"]})[0].argmax())
            for i in range(6)
        ]
    )
    labels = predicted.copy()
    labels[[1, 4]] = (labels[[1, 4]] + 1) % 6  # two wrong labels, in two different groups
    fidelity = compare_models(session, session, dataset, batch_size=4, source="d", labels=labels)
    assert fidelity.accuracy is not None
    assert fidelity.accuracy.float_top1 == pytest.approx(100 * 4 / 6)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        # A stack for one input and a single sample for the other: how many samples is it?
        (
            {"input_ids": np.zeros((3, 1, 7), np.int64), "attention_mask": np.ones((1, 7), np.int64)},
            "inputs hold different numbers of samples",
        ),
        ({"input_ids": np.zeros((1, 7), np.int32), "attention_mask": np.ones((1, 7), np.int64)},
         "convert it with .astype(numpy.int64)"),
        ({"input_ids": np.zeros((1, 1, 1, 7), np.int64), "attention_mask": np.ones((1, 7), np.int64)},
         "or a stack of samples along a new first axis, int64[N,?,?]"),
    ],
)  # fmt: skip
def test_ambiguous_or_wrong_files_say_how_to_write_them(
    tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    specs = _specs(sentence_encoder(), tmp_path)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationDataError) as info:
        open_dataset(path, specs)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_a_loader_yields_samples_of_many_lengths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sentences.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    for n in (3, 9, 3, 12, 9):\n"
        "        ones = np.ones((1, n), np.int64)\n"
        "        yield {'input_ids': ones, 'attention_mask': ones}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    dataset = open_source(UserLoader("sentences:load"), _specs(sentence_encoder(), tmp_path))
    assert dataset.num_samples == 5
    assert [f.positions for f in dataset.batches(4)] == [(0, 2), (1, 4), (3,)]


def test_a_batch_axis_the_model_does_not_keep_runs_one_sample_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """x is float32[batch, seq, 16] but a Squeeze bakes in a batch of one: a feed of several
    same-shaped samples fails, and every feed runs alone from then on, with the same statistics."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Squeeze", ["x", "zero"], ["s"], name="squeeze"),
        helper.make_node("MatMul", ["s", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="mm2"),
        helper.make_node("Unsqueeze", ["m", "zero"], ["y"], name="unsqueeze"),
    ]
    inits = [
        _w(rng, "w", 16, 64),
        _w(rng, "w2", 64, 16),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
    ]
    x = _value("x", TensorProto.FLOAT, ["batch", "seq", 16])
    model = _model(nodes, [x], [_value("y", TensorProto.FLOAT, [1, "seq", 16])], inits)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, length in enumerate([3, 3, 5, 5, 3, 5, 3, 5, 3, 3]):
        np.savez(folder / f"{i:03d}.npz", x=rng.normal(0, 1, (1, length, 16)).astype(np.float32))
    path = models.save(model, tmp_path)
    dataset = open_dataset(folder, _specs(model, tmp_path))
    assert max(len(f.positions) for f in dataset.batches(4)) == 4
    loaded = load_model(path).model
    with caplog.at_level("INFO", logger="quantcli.calibration.collect"):
        one, many = (
            collect_stats(loaded, ["h", "m"], dataset, batch_size=b, histograms=False) for b in (1, 4)
        )
    assert "rejects batches of 4 samples" in caplog.text
    assert {n: (s.min, s.max, s.count) for n, s in one.items()} == {
        n: (s.min, s.max, s.count) for n, s in many.items()
    }
    code, document, stderr = _convert(model, tmp_path, folder, "--mode", "static", "--batch-size", "4")
    assert code == 0, stderr
    _sane(document, calib=8, held=2)


def test_bias_correction_pools_input_means_over_samples_of_many_sizes(tmp_path: Path) -> None:
    from test_correction import _mean_error, pointwise_conv  # noqa: PLC0415

    from quantcli import QuantConfig, quantize  # noqa: PLC0415
    from quantcli.config import QuantMode  # noqa: PLC0415

    model = pointwise_conv()
    for value in (*model.graph.input, *model.graph.output):  # spatial dims that vary per sample
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "h", "w"
    path = models.save(model, tmp_path)
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(8)
    for i in range(40):
        h, w = (int(d) for d in rng.integers(3, 10, 2))
        np.savez(folder / f"{i:03d}.npz", x=(3.0 + rng.normal(0, 1, (1, 16, h, w))).astype(np.float32))
    evaluation = {"x": (3.0 + rng.normal(0, 1, (16, 16, 6, 6))).astype(np.float32)}
    np.savez(tmp_path / "eval.npz", **evaluation)
    errors = {}
    for corrected in (False, True):
        out = tmp_path / f"q_{corrected}.onnx"
        config = QuantConfig(mode=QuantMode.WEIGHT_ONLY, bias_correction=corrected)
        quantize(path, out, config=config, data=folder, eval_data=tmp_path / "eval.npz")
        errors[corrected] = _mean_error(path, out, evaluation)
    assert errors[False] > 1e-3
    assert errors[True] < errors[False] / 4


def test_an_output_without_a_batch_axis_is_compared_sample_by_sample(tmp_path: Path) -> None:
    """A second output sums over everything (the batch too): batched, it would mix samples."""
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("ReduceSum", ["y"], ["total"], name="total", keepdims=0),
    ]
    x = _value("x", TensorProto.FLOAT, ["batch", D])
    outputs = [_value("y", TensorProto.FLOAT, ["batch", D]), _value("total", TensorProto.FLOAT, [])]
    model = _model(nodes, [x], outputs, [_w(rng, "w", D, D)])
    other = onnx.ModelProto()
    other.CopyFrom(model)
    other.graph.initializer[0].CopyFrom(_w(rng, "w", D, D, scale=0.3))
    np.savez(tmp_path / "d.npz", x=rng.normal(0, 1, (8, D)).astype(np.float32))
    dataset = open_dataset(tmp_path / "d.npz", _specs(model, tmp_path))
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    candidate = ort.InferenceSession(other.SerializeToString(), providers=["CPUExecutionProvider"])
    one, four = (compare_models(reference, candidate, dataset, batch_size=b, source="d") for b in (1, 4))
    assert one.samples == four.samples == 8
    for a, b in zip(one.outputs, four.outputs, strict=True):
        assert a.cosine_min == pytest.approx(b.cosine_min, abs=1e-9)
        assert a.sqnr_db == pytest.approx(b.sqnr_db, abs=1e-4)
        assert a.max_abs_error == pytest.approx(b.max_abs_error, rel=1e-5)


def test_the_per_sample_budget_counts_rows_of_a_batched_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A calib.npz of [N, 3, 16, 16] for a model with a batch axis is N samples: the budget is
    per sample, not per file (the zoo's [64, 3, 640, 640] file was refused as one sample)."""
    from quantcli.calibration import data as data_module  # noqa: PLC0415
    from quantcli.errors import CalibrationDataError  # noqa: PLC0415

    model = models.save(models.tiny_cnn(), tmp_path)
    specs = data_module.model_inputs(ir.load(model))
    sample_bytes = 3 * 16 * 16 * 4
    monkeypatch.setattr(data_module, "MAX_SAMPLE_BYTES", 2 * sample_bytes)
    np.savez(tmp_path / "many.npz", **models.tiny_cnn_data(40))  # 40 samples, 20x the budget
    assert data_module.open_dataset(tmp_path / "many.npz", specs).num_samples == 40
    monkeypatch.setattr(data_module, "MAX_SAMPLE_BYTES", sample_bytes // 2)
    with pytest.raises(CalibrationDataError, match="one sample is 3072 bytes"):
        data_module.open_dataset(tmp_path / "many.npz", specs)
