"""Hostile input, one row per case: exit 1, one line naming the file, no traceback, nothing new.

Each case builds its inputs in a folder and returns the command line and the path the error
must name. The folder is listed (hidden files included) before and after the run: nothing may
appear, and nothing that was there may change.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.graph import io, output

runner = CliRunner()


@dataclass
class Case:
    args: list[str]
    names: Path
    # Raised at the os level while writing (the disk runs full, say).
    write_error: OSError | None = None


def _cnn(folder: Path, *, external: bool = False) -> tuple[Path, Path]:
    model = folder / "model.onnx"
    if external:
        onnx.save(
            models.tiny_cnn(),
            model,
            save_as_external_data=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        onnx.save(models.tiny_cnn(), model)
    data = folder / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(6))
    return model, data


def _convert(model: Path, data: Path, *extra: str) -> list[str]:
    return ["convert", str(model), "-o", str(model.parent / "q.onnx"), "--data", str(data), *extra]


def _with_location(model: Path, location: str) -> None:
    proto = onnx.load(model, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, model)


def not_onnx(d: Path) -> Case:
    model, data = _cnn(d)
    model.write_bytes(b"\x00\x01 definitely not a protobuf \xff" * 10)
    return Case(_convert(model, data), model)


def truncated_model(d: Path) -> Case:
    model, data = _cnn(d)
    model.write_bytes(model.read_bytes()[:500])
    return Case(_convert(model, data), model)


def empty_model_file(d: Path) -> Case:
    model, data = _cnn(d)
    model.write_bytes(b"")
    return Case(_convert(model, data), model)


def _with_opsets(d: Path, opsets: list[onnx.OperatorSetIdProto]) -> Case:
    model, data = _cnn(d)
    proto = onnx.load(model)
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
    onnx.save(proto, model)
    return Case(_convert(model, data), model)


def missing_opset(d: Path) -> Case:
    return _with_opsets(d, [helper.make_opsetid("com.example", 1)])


def old_opset(d: Path) -> Case:
    """Opsets 7 to 12 are upgraded; older ones are refused."""
    return _with_opsets(d, [helper.make_opsetid("", 5)])


def future_opset(d: Path) -> Case:
    return _with_opsets(d, [helper.make_opsetid("", io.MAX_OPSET + 1)])


def external_data_missing(d: Path) -> Case:
    model, data = _cnn(d, external=True)
    (d / "weights.bin").unlink()
    return Case(_convert(model, data), model)


def external_data_short(d: Path) -> Case:
    model, data = _cnn(d, external=True)
    weights = d / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-8])
    return Case(_convert(model, data), model)


def external_data_parent_path(d: Path) -> Case:
    model, data = _cnn(d, external=True)
    _with_location(model, "../../etc/passwd")
    return Case(_convert(model, data), model)


def external_data_absolute_path(d: Path) -> Case:
    model, data = _cnn(d, external=True)
    _with_location(model, "/etc/passwd")
    return Case(_convert(model, data), model)


def external_data_symlink_out(d: Path) -> Case:
    sub = d / "model"
    sub.mkdir()
    model, data = _cnn(sub, external=True)
    outside = d / "outside.bin"
    (sub / "weights.bin").rename(outside)
    (sub / "weights.bin").symlink_to(outside)
    return Case(_convert(model, data), model)


def _bad_data(arrays: dict[str, np.ndarray]) -> Callable[[Path], Case]:
    def build(d: Path) -> Case:
        model, _ = _cnn(d)
        data = d / "bad.npz"
        np.savez(data, **arrays)
        return Case(_convert(model, data), data)

    return build


IMAGES = models.tiny_cnn_data(4)["image"]
NAN = IMAGES.copy()
NAN[2, 0, 0, 0] = np.nan
INF = IMAGES.copy()
INF[0, 1, 2, 3] = np.inf


def all_nan_with_skip(d: Path) -> Case:
    model, _ = _cnn(d)
    data = d / "nan.npz"
    np.savez(data, image=np.full_like(IMAGES, np.nan))
    return Case(_convert(model, data, "--skip-nonfinite"), data)


def empty_data_folder(d: Path) -> Case:
    model, _ = _cnn(d)
    folder = d / "samples"
    folder.mkdir()
    return Case(_convert(model, folder), folder)


def pickled_npy(d: Path) -> Case:
    model, _ = _cnn(d)
    folder = d / "samples"
    folder.mkdir()
    evil = folder / "0.npy"
    np.save(evil, np.array([{"run": "code"}], dtype=object), allow_pickle=True)
    return Case(_convert(model, folder), evil)


def truncated_npz(d: Path) -> Case:
    model, _ = _cnn(d)
    data = d / "cut.npz"
    np.savez(data, image=IMAGES)
    data.write_bytes(data.read_bytes()[:200])
    return Case(_convert(model, data), data)


def corrupt_npy_header(d: Path) -> Case:
    """Found by the fuzzer: a flipped bit in the array header reaches numpy's header parser."""
    model, _ = _cnn(d)
    data = d / "corrupt.npz"
    np.savez(data, image=IMAGES)
    data.write_bytes(data.read_bytes().replace(b"(4, 3, 16, 16)", b"(4, 3( 16, 16)"))
    return Case(_convert(model, data), data)


def calibration_for_another_model(d: Path) -> Case:
    model, data = _cnn(d)
    other = d / "other.onnx"
    onnx.save(models.tiny_cnn(seed=5), other)
    calib = d / "calib.json"
    assert runner.invoke(app, ["calibrate", str(other), "--data", str(data), "-o", str(calib)]).exit_code == 0
    return Case(["convert", str(model), "-o", str(d / "q.onnx"), "--calibration", str(calib)], calib)


def output_is_input(d: Path) -> Case:
    model, data = _cnn(d)
    return Case(["convert", str(model), "-o", str(model), "--data", str(data), "--force"], model)


def output_folder_missing(d: Path) -> Case:
    model, data = _cnn(d)
    out = d / "no" / "such" / "q.onnx"
    return Case(["convert", str(model), "-o", str(out), "--data", str(data)], out)


def output_folder_not_writable(d: Path) -> Case:
    model, data = _cnn(d)
    # Tests may run as root, for whom permissions do not bite: the folder is a file instead.
    blocker = d / "reports"
    blocker.write_text("a file, not a folder")
    out = blocker / "q.onnx"
    return Case(["convert", str(model), "-o", str(out), "--data", str(data)], out)


def output_exists(d: Path) -> Case:
    model, data = _cnn(d)
    (d / "q.onnx").write_text("keep me")
    return Case(_convert(model, data), d / "q.onnx")


def report_exists(d: Path) -> Case:
    model, data = _cnn(d)
    (d / "r.json").write_text("keep me")
    return Case(_convert(model, data, "--report", str(d / "r.json")), d / "r.json")


def output_data_file_exists(d: Path) -> Case:
    model, data = _cnn(d, external=True)
    (d / "q.onnx.data").write_text("keep me")
    return Case(_convert(model, data), d / "q.onnx")


def disk_full(d: Path) -> Case:
    model, data = _cnn(d)
    return Case(_convert(model, data), d / "q.onnx", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


def disk_full_external(d: Path) -> Case:
    model, data = _cnn(d, external=True)
    return Case(_convert(model, data), d / "q.onnx.data", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


def quota_exceeded_with_report(d: Path) -> Case:
    model, data = _cnn(d)
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    return Case(_convert(model, data, "--report", str(d / "r.json")), d / "q.onnx", quota)


def unknown_custom_op(d: Path) -> Case:
    model = d / "model.onnx"
    onnx.save(models.custom_op_model(), model)
    data = d / "calib.npz"
    np.savez(data, x=np.zeros((3, 1, 3, 8, 8), np.float32)[:, 0])
    return Case(_convert(model, data), model)


def nothing_to_quantize(d: Path) -> Case:
    model, data = _cnn(d)
    return Case(_convert(model, data, "-x", "Conv", "-x", "Gemm"), model)


CASES: dict[str, Callable[[Path], Case]] = {
    "not-onnx": not_onnx,
    "truncated-model": truncated_model,
    "empty-model-file": empty_model_file,
    "missing-opset": missing_opset,
    "old-opset": old_opset,
    "future-opset": future_opset,
    "external-data-missing": external_data_missing,
    "external-data-short": external_data_short,
    "external-data-../../etc/passwd": external_data_parent_path,
    "external-data-absolute": external_data_absolute_path,
    "external-data-symlink-out": external_data_symlink_out,
    "data-wrong-name": _bad_data({"pixels": IMAGES}),
    "data-wrong-dtype": _bad_data({"image": IMAGES.astype(np.float16)}),
    "data-wrong-rank": _bad_data({"image": IMAGES[:, 0]}),
    "data-wrong-shape": _bad_data({"image": IMAGES[:, :, :8]}),
    "data-int": _bad_data({"image": IMAGES.astype(np.int32)}),
    "data-nan": _bad_data({"image": NAN}),
    "data-inf": _bad_data({"image": INF}),
    "data-all-nan-skipped": all_nan_with_skip,
    "data-empty-folder": empty_data_folder,
    "data-pickled-npy": pickled_npy,
    "data-truncated-npz": truncated_npz,
    "data-corrupt-npy-header": corrupt_npy_header,
    "calibration-for-another-model": calibration_for_another_model,
    "output-is-input": output_is_input,
    "output-folder-missing": output_folder_missing,
    "output-folder-not-a-folder": output_folder_not_writable,
    "output-exists": output_exists,
    "report-exists": report_exists,
    "output-data-file-exists": output_data_file_exists,
    "disk-full": disk_full,
    "disk-full-external-data": disk_full_external,
    "quota-exceeded-with-report": quota_exceeded_with_report,
    "unknown-custom-op": unknown_custom_op,
    "nothing-to-quantize": nothing_to_quantize,
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, hidden ones included, with its content."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(folder.rglob("*"))
    }


def assert_one_line_error(stderr: str, names: Path) -> None:
    assert stderr.startswith("error: "), stderr
    assert stderr.count("\n") == 1, stderr
    assert str(names) in stderr, stderr
    assert "Traceback" not in stderr


def _full_disk(error: OSError) -> Callable[[int, memoryview], int]:
    def write(fd: int, data: memoryview) -> int:
        raise error

    return write


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_hostile_input_is_one_line_exit_1_and_nothing_written(
    tmp_path: Path, build: Callable[[Path], Case], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = build(tmp_path)
    before = snapshot(tmp_path)
    if case.write_error is not None:
        monkeypatch.setattr(output, "_write_chunk", _full_disk(case.write_error))
    result = runner.invoke(app, case.args)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, case.names)
    assert result.stdout == ""
    assert snapshot(tmp_path) == before


def test_disk_full_while_the_report_is_written_after_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is staged first and fine; the report fails: the model must not be left alone."""
    model, data = _cnn(tmp_path)
    before = snapshot(tmp_path)
    calls = {"n": 0}
    real = output._write_chunk

    def write(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] > 1:  # the model's one write goes through; the report's fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(output, "_write_chunk", write)
    # One mode: auto would stage a model per candidate, each with its own writes.
    result = runner.invoke(
        app, _convert(model, data, "--mode", "static", "--report", str(tmp_path / "r.json"))
    )
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, tmp_path / "r.json")
    assert snapshot(tmp_path) == before


def test_skip_nonfinite_drops_and_counts_bad_samples(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = _cnn(tmp_path)
    data = tmp_path / "nan.npz"
    np.savez(data, image=NAN)
    result = runner.invoke(app, [*_convert(model, data, "--skip-nonfinite"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["calibration"]["samples"] + document["fidelity"]["samples"] == 3
    assert "skipped 1 sample(s) holding NaN or Inf" in caplog.text


def test_allow_noop_writes_the_model_unchanged(tmp_path: Path) -> None:
    model, data = _cnn(tmp_path)
    result = runner.invoke(
        app, [*_convert(model, data, "-x", "Conv", "-x", "Gemm", "--allow-noop"), "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["nodes"]["quantized_by_op"] == {}
    written = onnx.load(tmp_path / "q.onnx")
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in onnx.load(model).graph.node]


def test_existing_output_is_replaced_only_with_force(tmp_path: Path) -> None:
    model, data = _cnn(tmp_path, external=True)
    (tmp_path / "q.onnx").write_text("old")
    (tmp_path / "q.onnx.data").write_text("old")
    result = runner.invoke(app, [*_convert(model, data), "--force"])
    assert result.exit_code == 0, result.output
    assert onnx.load(tmp_path / "q.onnx").graph.node
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
