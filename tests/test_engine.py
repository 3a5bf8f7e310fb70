"""The execution engine a target names (quantcli.engine): onnxruntime, or OpenVINO's CPU plugin.

The OpenVINO tests need the optional extra (pip install 'quantcli[openvino]') and skip without
it; the tests of what happens without it simulate its absence by hiding the import.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner, Result

from quantcli import engine, engine_process
from quantcli.calibration.data import Dataset, model_inputs
from quantcli.calibration.sources import open_source
from quantcli.cli.app import app
from quantcli.diagnose import diagnose
from quantcli.errors import EngineCrashError, ModelLoadError
from quantcli.graph.io import check_model_file, load_model
from quantcli.target import OPENVINO, ORT_CPU, TENSORRT, Engine


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x[batch, 8] -> MatMul -> Relu -> MatMul: two outputs, the hidden one exposed too."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 16]),
        ],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _hide_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the extra were not installed: ``import openvino`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "openvino", None)


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = models.save(models.tiny_cnn(channels=16), tmp_path)
    np.savez(tmp_path / "calib.npz", **models.tiny_cnn_data(24))
    np.savez(tmp_path / "eval.npz", **models.tiny_cnn_data(8, seed=5))
    return model, tmp_path / "calib.npz", tmp_path / "eval.npz"


def _convert(cnn: tuple[Path, Path, Path], *flags: str) -> Result:
    """convert on the fixture's model, calibration and evaluation data, to q.onnx beside them."""
    model, calib, evaluation = cnn
    output = model.parent / "q.onnx"
    args = ["convert", str(model), "-o", str(output), "--data", str(calib), "--eval-data", str(evaluation)]
    return CliRunner().invoke(app, [*args, *flags])


def test_the_engine_is_target_data() -> None:
    assert ORT_CPU.engine is Engine.ONNXRUNTIME
    assert OPENVINO.engine is Engine.OPENVINO
    assert TENSORRT.engine is Engine.ONNXRUNTIME  # no GPU here: checked on onnxruntime's CPU provider


def test_the_report_names_what_ran_not_what_the_model_is_for() -> None:
    assert engine.summary(ORT_CPU).runtime == "onnxruntime's CPU provider"
    assert engine.summary(TENSORRT).runtime == "onnxruntime's CPU provider"  # not "TensorRT"
    assert engine.summary(TENSORRT).note == ""


def test_onnxruntime_sessions_are_onnxruntimes_own() -> None:
    assert isinstance(engine.open_session(_mlp(), target=TENSORRT), ort.InferenceSession)


def test_openvino_session_has_the_interface_callers_use_and_onnxruntimes_numbers() -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    model = _mlp()
    session = engine.open_session(model, target=OPENVINO)
    assert isinstance(session, engine.OpenVINOSession)
    assert [p.name for p in session.get_inputs()] == ["x"]
    assert [p.name for p in session.get_outputs()] == ["y", "h"]
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # a dynamic batch: each shape runs as it comes
        feed = {"x": np.random.default_rng(batch).normal(size=(batch, 8)).astype(np.float32)}
        first = session.run(None, feed)
        assert [a.shape for a in first] == [(batch, 4), (batch, 16)]
        for got, want in zip(first, reference.run(None, feed), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # f32, not bf16
        # Only the outputs asked for, in the order asked for; copies, not the request's buffers.
        h, y = session.run(["h", "y"], feed)
        np.testing.assert_array_equal(y, first[0])
        np.testing.assert_array_equal(h, first[1])
        session.run(None, {"x": np.zeros((batch, 8), np.float32)})
        np.testing.assert_array_equal(h, first[1])


def test_openvino_runs_f32_and_times_at_one_thread() -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    session = engine.open_session(_mlp(), target=OPENVINO)
    assert isinstance(session, engine.OpenVINOSession)
    assert session.inference_precision == engine.OPENVINO_PRECISION == "f32"
    timed = engine.timing_session(session)
    assert isinstance(timed, engine.OpenVINOSession) and timed.inference_threads == 1
    opened = engine.open_session(_mlp(), for_timing=True, target=OPENVINO)
    assert isinstance(opened, engine.OpenVINOSession) and opened.inference_threads == 1
    assert engine.timing_session(engine.open_session(_mlp())) is not None  # onnxruntime: as it is


def test_openvino_checks_a_file_and_refuses_what_it_cannot_compile_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    path = models.save(_mlp(), tmp_path)
    assert isinstance(check_model_file(path, OPENVINO), engine.OpenVINOSession)
    unknown = helper.make_model(
        helper.make_graph(
            [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    with pytest.raises(ModelLoadError) as caught:
        engine.open_session(unknown, target=OPENVINO)
    message = str(caught.value)
    assert message.startswith("OpenVINO cannot") and "\n" not in message
    assert "Exception from src" not in message  # OpenVINO's source locations are left out


def test_openvino_reads_external_weights_from_the_models_folder(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    path = tmp_path / "model.onnx"
    onnx.save_model(_mlp(), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    loaded = load_model(path)
    proto = onnx.load(str(path), load_external_data=False)
    session = engine.open_session(proto, data_folder=tmp_path, target=OPENVINO)
    feed = {"x": np.ones((2, 8), np.float32)}
    reference = ort.InferenceSession(_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["y"], feed)[0], reference.run(["y"], feed)[0], rtol=1e-4)
    assert loaded.external_data


def _dataset(model: onnx.ModelProto, path: Path) -> Dataset:
    return open_source(path, model_inputs(load_model(models.save(model, path.parent, "m.onnx")).model))


def test_per_layer_diagnosis_runs_on_openvino_as_on_onnxruntime(cnn: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    model, calib, evaluation = cnn
    quantized = model.parent / "q.onnx"
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(model),
            "-o",
            str(quantized),
            "--data",
            str(calib),
            "--mode",
            "static",
            "--target",
            "openvino",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    float_proto, quant_proto = onnx.load(str(model)), onnx.load(str(quantized))
    dataset = _dataset(float_proto, evaluation)
    on_ort = diagnose(float_proto, quant_proto, dataset, top_k=3, max_samples=4)
    on_ov = diagnose(float_proto, quant_proto, dataset, top_k=3, max_samples=4, runtime=OPENVINO)
    by_name = {t.name: t for t in on_ort.tensors}
    assert {t.name for t in on_ov.tensors} == set(by_name) and len(by_name) > 3
    for tensor in on_ov.tensors:  # the same tensors, the same arithmetic up to float rounding
        assert tensor.sqnr_db == pytest.approx(by_name[tensor.name].sqnr_db, abs=1.0)
    assert sum(t.alone_sqnr_db is not None for t in on_ov.tensors) == 3


def test_convert_for_openvino_checks_evaluates_and_names_openvino(cnn: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    result = _convert(cnn, "--target", "openvino", "--per-layer", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["engine"] == {
        "name": "openvino",
        "runtime": "OpenVINO's CPU plugin",
        "precision": "f32",
        "timing_threads": 1,
        "note": "",
    }
    assert report["fidelity"]["outputs"][0]["sqnr_db"] > 20 and report["per_layer"]["tensors"]
    assert "pip install" not in result.stderr


def test_auto_measures_speed_on_openvino(cnn: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    result = _convert(cnn, "--target", "openvino", "--speed", "measured", "--json")
    assert result.exit_code == 0, result.output
    candidates = json.loads(result.stdout)["candidates"]
    assert len(candidates) > 1 and all(c["latency_ms"]["median_ms"] > 0 for c in candidates)


def test_compare_times_both_models_on_openvino(cnn: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    model, calib, evaluation = cnn
    quantized = model.parent / "q.onnx"
    convert = ["convert", str(model), "-o", str(quantized), "--data", str(calib), "--target", "openvino"]
    assert CliRunner().invoke(app, [*convert, "--quiet"]).exit_code == 0
    compare = ["compare", str(model), str(quantized), "--data", str(evaluation)]
    result = CliRunner().invoke(app, [*compare, "--target", "openvino", "--runs", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["engine"]["name"] == "openvino" and report["engine"]["timing_threads"] == 1
    assert report["latency_ms"]["float"]["runs"] == 3 and report["latency_ms"]["quantized"]["median_ms"] > 0
    on_ort = json.loads(CliRunner().invoke(app, [*compare, "--json"]).stdout)
    assert on_ort["engine"]["name"] == "onnxruntime"
    # The same model on two engines: the same fidelity up to float rounding.
    assert report["fidelity"]["outputs"][0]["sqnr_db"] == pytest.approx(
        on_ort["fidelity"]["outputs"][0]["sqnr_db"], abs=1.0
    )


def test_without_the_extra_convert_checks_on_onnxruntime_and_says_so_once(
    cnn: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _hide_openvino(monkeypatch)
    assert not engine.installed(Engine.OPENVINO) and engine.engine_for(OPENVINO) is Engine.ONNXRUNTIME
    result = _convert(cnn, "--target", "openvino", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["engine"]["name"] == "onnxruntime"
    assert report["engine"]["runtime"] == "onnxruntime's CPU provider"
    note = report["engine"]["note"]
    assert "not OpenVINO's CPU plugin" in note and "pip install 'quantcli[openvino]'" in note
    assert note in report["warnings"]
    # One log line (the CLI's handler prints it on stderr), the same sentence as the report's.
    said = [r.getMessage() for r in caplog.records if "quantcli[openvino]" in r.getMessage()]
    assert said == [note] and "\n" not in note


def test_without_the_extra_timing_on_openvino_is_refused_in_one_line(
    cnn: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_openvino(monkeypatch)
    model, _, evaluation = cnn
    compare = ["compare", str(model), str(model), "--data", str(evaluation), "--target", "openvino"]
    for result in (
        CliRunner().invoke(app, compare),
        _convert(cnn, "--target", "openvino", "--speed", "measured"),
    ):
        assert result.exit_code == 1, result.output
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
        assert "OpenVINO's CPU plugin" in result.stderr
        assert "pip install 'quantcli[openvino]'" in result.stderr
    output = model.parent / "q.onnx"
    assert not output.exists()


def test_inspect_names_the_engine(cnn: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn[0]
    shown = json.loads(CliRunner().invoke(app, ["inspect", str(model), "--json"]).stdout)
    assert shown["engine"]["name"] == "onnxruntime"
    _hide_openvino(monkeypatch)
    result = CliRunner().invoke(app, ["inspect", str(model), "--target", "openvino", "--json"])
    assert result.exit_code == 0, result.output
    assert "quantcli[openvino]" in json.loads(result.stdout)["engine"]["note"]
    text = CliRunner().invoke(app, ["inspect", str(model), "--target", "openvino"])
    assert "checked on" in text.stderr + text.stdout


# A stand-in for quantcli/engine_child.py that kills itself with a signal when it gets the
# request named by CRASH_AT ("open" or "run"), as OpenVINO's CPU plugin segfaults on some models.
# With CRASH_FILES_ONLY it crashes only on models opened from a file: the staged candidates of
# convert, not the float reference it opens from memory.
_FAKE_CHILD = """
import os, signal, sys
from multiprocessing.connection import Connection
inbox = Connection(int(sys.argv[1]), writable=False)
outbox = Connection(int(sys.argv[2]), readable=False)
crash_at = os.environ["CRASH_AT"]
from_file = False
while True:
    request = inbox.recv()
    if request[0] == "open":
        from_file = isinstance(request[1], str)
    if request[0] == crash_at and (from_file or "CRASH_FILES_ONLY" not in os.environ):
        os.kill(os.getpid(), signal.SIGSEGV)
    outbox.send(("ok", None if request[0] == "open" else ([], 0.0)))
"""


@pytest.fixture
def crashing(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    """OpenVINO as if installed, its children replaced by the stand-in above, each session in a
    new one (a stand-in crashes by what it was last opened on)."""
    engine_process.close_idle()
    monkeypatch.setattr(engine_process, "_IDLE_MAX", 0)
    script = tmp_path_factory.mktemp("fake") / "child.py"  # not beside the model: tests list that folder
    script.write_text(_FAKE_CHILD)
    monkeypatch.setattr(engine, "installed", lambda which: True)
    monkeypatch.setattr(engine_process, "command", lambda r, w: [sys.executable, str(script), str(r), str(w)])
    yield monkeypatch
    engine_process.close_idle()


def _one_crash_line(result: Result, doing: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    line = result.stderr
    assert line.startswith("error: ") and f"OpenVINO crashed (signal 11, SIGSEGV) {doing}" in line
    return line


@pytest.mark.parametrize("at", ["open", "run"])
def test_a_crash_of_openvino_is_one_line_exit_1_and_nothing_written(
    cnn: tuple[Path, Path, Path], crashing: pytest.MonkeyPatch, at: str
) -> None:
    crashing.setenv("CRASH_AT", at)
    model = cnn[0]
    line = _one_crash_line(_convert(cnn, "--target", "openvino", "--mode", "static"), "")
    assert f"error: {model}: " in line  # the float model: the first one opened and run
    assert ("compiling" if at == "open" else "running") in line
    assert sorted(p.name for p in model.parent.iterdir()) == ["calib.npz", "eval.npz", "model.onnx"]


def test_a_crash_on_the_quantized_model_names_the_model_and_compare_names_the_file(
    cnn: tuple[Path, Path, Path], crashing: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crashing.setenv("CRASH_AT", "open")
    crashing.setenv("CRASH_FILES_ONLY", "1")
    model, _, evaluation = cnn
    for at in ("open", "run"):  # its check (compiling) or its evaluation (running)
        crashing.setenv("CRASH_AT", at)
        line = _one_crash_line(_convert(cnn, "--target", "openvino", "--mode", "static"), "")
        assert line.startswith(f"error: {model}: OpenVINO refuses the quantized model: OpenVINO crashed")
        assert not (model.parent / "q.onnx").exists()
        assert not [p for p in model.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # auto drops a candidate OpenVINO crashes on, as one it refuses; here it crashes on all.
    result = _convert(cnn, "--target", "openvino")
    assert result.exit_code == 1 and "no candidate mode produced" in result.stderr.splitlines()[-1]
    dropped = [r.getMessage() for r in caplog.records if "candidate dropped" in r.getMessage()]
    assert len(dropped) > 1 and all("refuses the quantized model: OpenVINO crashed" in d for d in dropped)
    # compare opens both models from memory: the crash at run names the model that was running.
    crashing.setenv("CRASH_AT", "run")
    crashing.delenv("CRASH_FILES_ONLY")
    compare = ["compare", str(model), str(model), "--data", str(evaluation), "--target", "openvino"]
    line = _one_crash_line(CliRunner().invoke(app, compare), "running")
    assert line.startswith(f"error: {model}: OpenVINO crashed")


def test_a_crash_is_the_childs_alone(crashing: pytest.MonkeyPatch) -> None:
    """A crashed session raises EngineCrashError; this process, and other sessions, live on."""
    crashing.setenv("CRASH_AT", "run")
    session = engine.open_session(_mlp(), target=OPENVINO, label="mlp.onnx")
    with pytest.raises(EngineCrashError) as caught:
        session.run(None, {"x": np.ones((1, 8), np.float32)})
    assert str(caught.value).startswith("mlp.onnx: OpenVINO crashed (signal 11, SIGSEGV) running")
    assert caught.value.reason.startswith("OpenVINO crashed")
    with pytest.raises(EngineCrashError):  # stays failed, does not hang on a dead pipe
        session.run(None, {"x": np.ones((1, 8), np.float32)})


def test_openvino_sessions_run_in_children_that_are_given_back_and_reused() -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    engine_process.close_idle()
    session = engine.open_session(_mlp(), target=OPENVINO)
    assert isinstance(session, engine.OpenVINOSession)
    process = session._child._process
    feed = {"x": np.ones((2, 8), np.float32)}
    session.run(None, feed)
    # Latency is the child's own time of the run, without the pipe; onnxruntime's is the caller's.
    assert 0 < session.last_run_ms == engine.run_time_ms(session, 1e9)
    assert engine.run_time_ms(engine.open_session(_mlp()), 5.0) == 5.0
    del session  # collected: its child drops the model and waits for the next session
    other = _mlp(seed=1)
    again = engine.open_session(other, target=OPENVINO)
    assert isinstance(again, engine.OpenVINOSession) and again._child._process is process
    reference = ort.InferenceSession(other.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(again.run(["y"], feed)[0], reference.run(["y"], feed)[0], rtol=1e-4)
    again.close()
    engine_process.close_idle()
    assert process.wait(timeout=10) == 0  # an idle child closed: it exits


def test_openvino_is_fed_one_sample_at_a_time() -> None:
    """The CPU plugin keeps the largest batch's activation memory (engine.batch_size)."""
    assert engine.batch_size(OPENVINO, 16) == (1 if engine.installed(Engine.OPENVINO) else 16)
    assert engine.batch_size(ORT_CPU, 16) == 16
    assert engine.batch_size(engine.open_session(_mlp()), 16) == 16
