"""Fault injection: outputs aimed at inputs, signals, concurrent runs, bombs, dishonest exits.

Every case asserts the exit code, one line on stderr, nothing partial left behind (hidden
staging folders included) and every input byte-identical. Bombs run in a subprocess under
RLIMIT_AS, so a budget that does not hold fails the test by running out of memory, not by time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bombs
import models
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.comparison import compare
from quantcli.config import CompareConfig
from quantcli.errors import ConfigError
from quantcli.graph import io, output

runner = CliRunner()
PYTHON = sys.executable


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, hidden ones included, with its content."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


def assert_one_line(stderr: str, *names: object) -> None:
    assert stderr.startswith("error: "), stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for name in names:
        assert str(name) in stderr, stderr


def refused(args: list[str], folder: Path, *names: object) -> str:
    """Run ``args``: exit 1, one line naming ``names``, ``folder`` unchanged."""
    before = snapshot(folder)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert_one_line(result.stderr, *names)
    assert result.stdout == ""
    assert snapshot(folder) == before
    return result.stderr


# --- one output guard --------------------------------------------------------------------------

LOADER = """\
import numpy as np

def load():
    rng = np.random.default_rng(0)
    for _ in range(6):
        yield {"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}
"""


@pytest.fixture(scope="module")
def calibration_json(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("cal")
    model = folder / "m.onnx"
    onnx.save(models.tiny_cnn(), model)
    np.savez(folder / "d.npz", **models.tiny_cnn_data(6))
    out = folder / "c.json"
    result = runner.invoke(app, ["calibrate", str(model), "--data", str(folder / "d.npz"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def _inputs(d: Path, calibration: bytes) -> dict[str, Path]:
    """Every kind of file convert reads, in ``d``."""
    model = d / "m.onnx"
    onnx.save(models.tiny_cnn(), model, save_as_external_data=True, location="w.bin", size_threshold=0)
    np.savez(d / "d.npz", **models.tiny_cnn_data(6))
    np.savez(d / "e.npz", **models.tiny_cnn_data(3, seed=4))
    np.save(d / "l.npy", np.array([1, 2, 3]))
    (d / "r.toml").write_text("[defaults]\nmethod = 'minmax'\n")
    (d / "x.txt").write_text("fc\n")
    (d / "c.json").write_bytes(calibration)
    (d / "samples").mkdir()
    np.savez(d / "samples" / "0.npz", **models.tiny_cnn_data(4))
    (d / "loadermod.py").write_text(LOADER)
    return {
        "model": model,
        "external data": d / "w.bin",
        "--data": d / "d.npz",
        "--eval-data": d / "e.npz",
        "--labels": d / "l.npy",
        "--recipe": d / "r.toml",
        "@FILE": d / "x.txt",
        "--calibration": d / "c.json",
        "--data folder member": d / "samples" / "0.npz",
        "--data-loader module": d / "loadermod.py",
    }


def _convert_reading(d: Path, reads: str) -> list[str]:
    """A convert command line that reads the input ``reads`` (among others)."""
    base = ["convert", str(d / "m.onnx"), "-o", str(d / "q.onnx"), "--force"]
    if reads == "--calibration":
        return [*base, "--calibration", str(d / "c.json"), "--mode", "static"]
    if reads == "--data folder member":
        return [*base, "--data", str(d / "samples")]
    if reads == "--data-loader module":
        return [*base, "--data-loader", "loadermod:load"]
    return [
        *base,
        *("--data", str(d / "d.npz"), "--eval-data", str(d / "e.npz"), "--labels", str(d / "l.npy")),
        *("--recipe", str(d / "r.toml"), "-x", f"@{d / 'x.txt'}"),
    ]


def _aimed(args: list[str], flag: str, target: Path) -> list[str]:
    if flag == "-o":
        args = list(args)
        args[args.index("-o") + 1] = str(target)
        return args
    return [*args, flag, str(target)]


OUTPUT_FLAGS = ["-o", "--report", "--report-md", "--report-html", "--write-exclude"]
INPUTS = [
    "model",
    "external data",
    "--data",
    "--eval-data",
    "--labels",
    "--recipe",
    "@FILE",
    "--calibration",
    "--data folder member",
    "--data-loader module",
]


@pytest.mark.parametrize("what", INPUTS)
def test_every_output_flag_aimed_at_every_input_is_refused_even_with_force(
    tmp_path: Path, calibration_json: bytes, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the loader module is found on the current folder
    monkeypatch.syspath_prepend(str(tmp_path))
    target = _inputs(tmp_path, calibration_json)[what]
    for flag in OUTPUT_FLAGS:
        refused(_aimed(_convert_reading(tmp_path, what), flag, target), tmp_path, target.name)


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_output_that_is_another_name_of_an_input_is_refused(
    tmp_path: Path, calibration_json: bytes, link: str
) -> None:
    inputs = _inputs(tmp_path, calibration_json)
    alias = tmp_path / "alias.json"
    if link == "hard":
        os.link(inputs["--data"], alias)
    else:
        alias.symlink_to(inputs["--data"])
    stderr = refused([*_convert_reading(tmp_path, "--data"), "--report", str(alias)], tmp_path, "alias.json")
    assert "d.npz" in stderr


def test_a_report_cannot_replace_the_report_it_reruns(tmp_path: Path, calibration_json: bytes) -> None:
    _inputs(tmp_path, calibration_json)
    first = runner.invoke(app, [*_convert_reading(tmp_path, "--data"), "--report", str(tmp_path / "r.json")])
    assert first.exit_code == 0, first.output
    again = [
        "convert",
        str(tmp_path / "m.onnx"),
        "-o",
        str(tmp_path / "q2.onnx"),
        "--data",
        str(tmp_path / "d.npz"),
    ]
    refused(
        [*again, "--from-report", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.json"), "--force"],
        tmp_path,
        "r.json",
    )


def test_an_output_inside_a_data_folder_is_refused(tmp_path: Path, calibration_json: bytes) -> None:
    _inputs(tmp_path, calibration_json)
    inside = tmp_path / "samples" / "r.json"
    refused([*_convert_reading(tmp_path, "--data folder member"), "--report", str(inside)], tmp_path, inside)


def test_the_output_data_file_cannot_replace_the_input_data_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(models.tiny_cnn(), model, save_as_external_data=True, location="q.onnx.data", size_threshold=0)
    np.savez(tmp_path / "d.npz", **models.tiny_cnn_data(6))
    args = [
        "convert",
        str(model),
        "-o",
        str(tmp_path / "q.onnx"),
        "--data",
        str(tmp_path / "d.npz"),
        "--force",
    ]
    refused(args, tmp_path, "q.onnx.data")


@pytest.mark.parametrize("target", ["m.onnx", "w.bin", "d.npz", "loadermod.py"])
def test_calibrate_output_aimed_at_an_input_is_refused(
    tmp_path: Path, calibration_json: bytes, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _inputs(tmp_path, calibration_json)
    source = ["--data-loader", "loadermod:load"] if target == "loadermod.py" else ["--data", "d.npz"]
    refused(["calibrate", "m.onnx", *source, "-o", target, "--force"], tmp_path, target)


def test_merge_output_aimed_at_a_merged_file_is_refused(tmp_path: Path, calibration_json: bytes) -> None:
    (tmp_path / "a.json").write_bytes(calibration_json)
    (tmp_path / "b.json").write_bytes(calibration_json)
    args = ["calibrate", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    refused([*args, "-o", str(tmp_path / "b.json"), "--force"], tmp_path, "b.json")


def test_compare_report_aimed_at_either_model_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(models.tiny_cnn(), model)
    np.savez(tmp_path / "d.npz", **models.tiny_cnn_data(4))
    assert (
        runner.invoke(
            app, ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--mode", "weight-only"]
        ).exit_code
        == 0
    )
    for target in ("m.onnx", "q.onnx", "d.npz"):
        args = [
            "compare",
            str(model),
            str(tmp_path / "q.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            "--runs",
            "1",
        ]
        refused([*args, "--report-md", str(tmp_path / target), "--force"], tmp_path, target)


# --- signals -----------------------------------------------------------------------------------

# Runs quantcli in a subprocess whose first write of a staged file sends the process ``SIGNAL``:
# the signal arrives mid-write, with a staging folder holding a partial file.
SIGNAL_AT_WRITE = """\
import os, signal, sys
from quantcli.graph import output
real = output._write_chunk
number = getattr(signal, sys.argv[1])
def write(fd, data):
    os.kill(os.getpid(), number)
    return real(fd, data)
output._write_chunk = write
sys.argv = ["quantcli", *sys.argv[2:]]
from quantcli.cli.app import main
main()
"""

SIGNALLING_LOADER = """\
import os, signal
import numpy as np

def load():
    rng = np.random.default_rng(0)
    for index in range(6):
        if index == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        yield {"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}
"""


def _run(
    args: list[str], cwd: Path, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _cnn_folder(d: Path) -> tuple[Path, Path]:
    model = d / "m.onnx"
    onnx.save(models.tiny_cnn(), model, save_as_external_data=True, location="w.bin", size_threshold=0)
    data = d / "d.npz"
    np.savez(data, **models.tiny_cnn_data(6))
    return model, data


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_during_the_write_leaves_nothing_and_exits_128_plus_its_number(
    tmp_path: Path, name: str, code: int
) -> None:
    _cnn_folder(tmp_path)
    (tmp_path / "run.py").write_text(SIGNAL_AT_WRITE)
    before = snapshot(tmp_path)
    args = ["convert", "m.onnx", "-o", "q.onnx", "--data", "d.npz", "--mode", "static", "--report", "r.json"]
    result = _run([PYTHON, "run.py", name, *args], tmp_path)
    assert result.returncode == code, result.stderr
    expected = "interrupted" if name == "SIGINT" else f"stopped by {name}"
    assert result.stderr == f"{expected}; nothing was written\n"
    assert snapshot(tmp_path) == before  # no model, no data file, no report, no hidden staging folder


def test_sigterm_during_calibration_leaves_nothing(tmp_path: Path) -> None:
    _cnn_folder(tmp_path)
    (tmp_path / "sigloader.py").write_text(SIGNALLING_LOADER)
    before = snapshot(tmp_path)
    args = ["-m", "quantcli", "calibrate", "m.onnx", "--data-loader", "sigloader:load", "-o", "c.json"]
    result = _run([PYTHON, *args], tmp_path)
    assert result.returncode == 143, result.stderr
    assert result.stderr == "stopped by SIGTERM; nothing was written\n"
    after = {k: v for k, v in snapshot(tmp_path).items() if "__pycache__" not in k}
    assert after == before


# --- concurrent runs ---------------------------------------------------------------------------


def test_two_concurrent_converts_one_wins_the_other_says_already_exists(tmp_path: Path) -> None:
    _cnn_folder(tmp_path)
    args = [
        PYTHON,
        "-m",
        "quantcli",
        "convert",
        "m.onnx",
        "-o",
        "q.onnx",
        "--data",
        "d.npz",
        "--mode",
        "static",
    ]
    runs = [
        subprocess.Popen([*args, "--seed", str(seed)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    results = [(run.wait(timeout=120), run.stderr.read() if run.stderr else "") for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert_one_line(loser, "q.onnx", "already exists")
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)  # the winner's, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".quantcli-")]


def test_an_output_appearing_between_check_and_commit_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = _cnn_folder(tmp_path)
    real = output.StagedOutput.commit

    def commit(self: output.StagedOutput) -> None:
        (tmp_path / "q.onnx").write_bytes(b"the other run's model")  # it finished first
        real(self)

    monkeypatch.setattr(output.StagedOutput, "commit", commit)
    args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "--mode", "static"]
    result = runner.invoke(app, [*args, "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 1
    assert_one_line(result.stderr, "q.onnx", "already exists")
    assert (tmp_path / "q.onnx").read_bytes() == b"the other run's model"
    assert not (tmp_path / "q.onnx.data").exists() and not (tmp_path / "r.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".quantcli-")]


# --- bombs: small on disk, huge once read ------------------------------------------------------

# Runs each case in one child process whose address space is capped a little above what quantcli
# needs once imported: a budget that does not hold runs out of memory (a MemoryError, exit 4)
# instead of printing its one line. Budgets are tightened per case so the bombs stay small.
BOMB_HARNESS = """\
import contextlib, json, resource, sys
from typer.testing import CliRunner
from quantcli.cli.app import app
from quantcli.calibration import data, sources
from quantcli.graph import io

size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
limit = size + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
modules = {"data": data, "sources": sources, "io": io}
results = {}
for name, case in json.loads(sys.argv[2]).items():
    with contextlib.ExitStack() as stack:
        for key, value in case["budgets"].items():
            module, attribute = key.split(".")
            old = getattr(modules[module], attribute)
            setattr(modules[module], attribute, value)
            stack.callback(setattr, modules[module], attribute, old)
        result = CliRunner().invoke(app, case["args"])
    results[name] = {"code": result.exit_code, "stderr": result.stderr}
print(json.dumps(results))
"""
HEADROOM = 192 * 2**20  # address space beyond the imported process's: each bomb inflates past it
BOMB = 512 * 2**20


def _bomb_cases(d: Path, calibration: bytes) -> dict[str, dict[str, Any]]:
    model, _ = _cnn_folder(d)
    (d / "c.json").write_bytes(calibration)
    bombs.npz_bomb(d / "bomb.npz", BOMB)
    bombs.counts_bomb(d / "c.json", d / "counts.json", BOMB)
    bombs.declared_initializer_model(d / "declared.onnx", 5 * 10**8)
    bombs.wide_graph(d / "wide.onnx", 5000)
    (d / "endless.py").write_text(bombs.ENDLESS_LOADER)
    _mismatched_conv(d / "badconv.onnx")
    np.savez(d / "x.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    convert = ["convert", str(model), "-o", str(d / "q.onnx"), "--mode", "static"]
    return {
        # Not a bomb: run here because onnxruntime logs to the process's own stderr, which only
        # a child process shows (the fixture asserts none of its lines appear).
        "onnxruntime fails running the model": {
            "args": ["convert", str(d / "badconv.onnx"), "-o", str(d / "q.onnx"), "--data", str(d / "x.npz")],
            "budgets": {},
            "expect": (1, "badconv.onnx", "kernel channels"),
        },
        "npz member inflating past the file budget": {
            "args": [*convert, "--data", str(d / "bomb.npz")],
            "budgets": {"data.MAX_FILE_BYTES": 32 * 2**20},
            "expect": (1, "bomb.npz", "more than one data file may hold"),
        },
        "histogram counts inflating past 4096 int64": {
            "args": [*convert, "--calibration", str(d / "counts.json")],
            "budgets": {},
            "expect": (1, "counts.json", "4096 int64"),
        },
        "endless loader without --max-samples": {
            "args": [*convert, "--data-loader", "endless:load"],
            "budgets": {"sources.MAX_LOADER_BYTES": 16 * 2**20},
            "expect": (1, "endless:load", "pass --max-samples"),
        },
        "endless loader with --max-samples": {
            "args": [
                *("calibrate", str(model), "--data-loader", "endless:load", "--max-samples", "20"),
                *("-o", str(d / "lazy.json"), "--mode", "static"),
            ],
            "budgets": {},
            "expect": (0,),
        },
        "initializer declaring 2 GB it does not hold": {
            "args": ["convert", str(d / "declared.onnx"), "-o", str(d / "q.onnx"), "--mode", "weight-only"],
            "budgets": {},
            "expect": (1, "declared.onnx", "declares 500000000 elements"),
        },
        "graph past the node limit": {
            "args": ["inspect", str(d / "wide.onnx")],
            "budgets": {"io.MAX_NODES": 1000},
            "expect": (1, "wide.onnx", "5000 nodes"),
        },
    }


def _mismatched_conv(path: Path) -> None:
    """A Conv whose weight expects 4 channels of a 3-channel input: onnxruntime fails at run time."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.ones((2, 4, 3, 3), np.float32), "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def bomb_runs(tmp_path_factory: pytest.TempPathFactory, calibration_json: bytes) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bombs")
    cases = _bomb_cases(folder, calibration_json)
    before = snapshot(folder)
    plain = {name: {"args": c["args"], "budgets": c["budgets"]} for name, c in cases.items()}
    result = _run([PYTHON, "-c", BOMB_HARNESS, str(HEADROOM), json.dumps(plain)], folder)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing but the one lines CliRunner captured: no onnxruntime log
    after = snapshot(folder)
    after.pop("lazy.json", None)  # the one case that succeeds
    return {
        "cases": cases,
        "results": json.loads(result.stdout),
        "unchanged": after == before,
        "folder": folder,
    }


@pytest.mark.parametrize(
    "name",
    [
        "onnxruntime fails running the model",
        "npz member inflating past the file budget",
        "histogram counts inflating past 4096 int64",
        "endless loader without --max-samples",
        "initializer declaring 2 GB it does not hold",
        "graph past the node limit",
    ],
)
def test_a_bomb_is_refused_in_one_line_within_its_memory_budget(bomb_runs: dict[str, Any], name: str) -> None:
    code, *names = bomb_runs["cases"][name]["expect"]
    got = bomb_runs["results"][name]
    assert got["code"] == code, got
    assert_one_line(got["stderr"], *names)
    assert bomb_runs["unchanged"]


def test_an_endless_loader_is_read_lazily_up_to_max_samples(bomb_runs: dict[str, Any]) -> None:
    got = bomb_runs["results"]["endless loader with --max-samples"]
    assert got["code"] == 0, got
    assert json.loads((bomb_runs["folder"] / "lazy.json").read_text())["num_samples"] == 20


def test_calibration_from_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    model, _ = _cnn_folder(tmp_path)
    args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--calibration", "/dev/zero"]
    refused(args, tmp_path, "/dev/zero", "not a regular file")


# --- honest exits: every failure caused by input is exit 1 with one line ----------------------


def _with_external(model: Path, **entries: str) -> None:
    """Set (or add) external_data entries of every external initializer of ``model``."""
    proto = onnx.load(model, load_external_data=False)
    for tensor in proto.graph.initializer:
        for key, value in entries.items():
            found = [e for e in tensor.external_data if e.key == key]
            if found:
                found[0].value = value
            else:
                tensor.external_data.add(key=key, value=value)
    onnx.save(proto, model)


def _calibration_edit(d: Path, calibration: bytes, edit: Callable[[dict[str, Any]], None]) -> Path:
    document = json.loads(calibration)
    edit(document)
    path = d / "c.json"
    path.write_text(json.dumps(document))
    return path


def _first_tensor(document: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = document["tensors"][sorted(document["tensors"])[0]]
    return entry


def _loader(d: Path, name: str, text: str) -> list[str]:
    (d / f"{name}.py").write_text(textwrap.dedent(text))
    return ["convert", str(d / "m.onnx"), "-o", str(d / "q.onnx"), "--data-loader", f"{name}:load"]


def _convert_args(d: Path, *extra: str) -> list[str]:
    return ["convert", str(d / "m.onnx"), "-o", str(d / "q.onnx"), "--data", str(d / "d.npz"), *extra]


def _bad_weight(d: Path, value: float) -> list[str]:
    proto = models.tiny_cnn()
    weight = onnx.numpy_helper.to_array(proto.graph.initializer[0]).copy()
    weight[0, 0, 0, 0] = value
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weight, "conv1.w"))
    onnx.save(proto, d / "m.onnx")
    return _convert_args(d, "--mode", "static")


def _constant_outside(d: Path) -> list[str]:
    """A Constant node's tensor kept in external data outside the model's folder."""
    (d / "outside.bin").write_bytes(np.ones(4, np.float32).tobytes())
    sub = d / "model"
    sub.mkdir()
    value = onnx.TensorProto(name="c", data_type=onnx.TensorProto.FLOAT, dims=[4])
    value.data_location = onnx.TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../outside.bin")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Constant", [], ["c"], name="const", value=value),
            onnx.helper.make_node("Add", ["x", "c"], ["y"], name="add"),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    (sub / "m.onnx").write_bytes(model.SerializeToString())
    return ["inspect", str(sub / "m.onnx")]


def _image_folder(d: Path, width: int, height: int) -> list[str]:
    (d / "images").mkdir()
    bombs.png_header(d / "images" / "big.png", width, height)
    return [*_convert_args(d)[:-1], str(d / "images")]


def _fifo(d: Path, name: str) -> Path:
    path = d / name
    os.mkfifo(path)
    return path


def _shards(d: Path, calibration: bytes, first: str, second: str) -> list[str]:
    for name, shard in (("a.json", first), ("b.json", second)):
        document = json.loads(calibration)
        document["shards"], document["choice"] = [shard], None
        (d / name).write_text(json.dumps(document))
    return ["calibrate", "merge", str(d / "a.json"), str(d / "b.json"), "-o", str(d / "m.json")]


def _nested_toml(d: Path) -> list[str]:
    (d / "r.toml").write_text("[defaults]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    return _convert_args(d, "--recipe", str(d / "r.toml"))


def _hard_linked_data(d: Path) -> list[str]:
    os.link(d / "w.bin", d / "w-copy.bin")
    return _convert_args(d)


def _nested_json(d: Path, calibration: bytes) -> list[str]:
    (d / "c.json").write_text("[" * 100000 + "]" * 100000)
    return ["convert", str(d / "m.onnx"), "-o", str(d / "q.onnx"), "--calibration", str(d / "c.json")]


def _deep_json(d: Path, calibration: bytes) -> list[str]:
    def deepen(document: dict[str, Any]) -> None:
        document["choice"] = {"a": json.loads("[" * 40 + "]" * 40)}

    path = _calibration_edit(d, calibration, deepen)
    return ["convert", str(d / "m.onnx"), "-o", str(d / "q.onnx"), "--calibration", str(path)]


def _calibration_case(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path, bytes], list[str]]:
    def build(d: Path, calibration: bytes) -> list[str]:
        path = _calibration_edit(d, calibration, edit)
        return ["convert", str(d / "m.onnx"), "-o", str(d / "q.onnx"), "--calibration", str(path)]

    return build


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        _first_tensor(document)[key] = value

    return edit


NAN_BYTES = b"[defaults]\nmethod = 'minmax' # \xff\xfe\n"
HONEST: dict[str, tuple[Callable[[Path, bytes], list[str]], tuple[str, ...]]] = {
    "external data is a hard link": (lambda d, c: _hard_linked_data(d), ("m.onnx", "hard links")),
    "NUL byte in a location": (
        lambda d, c: (_with_external(d / "m.onnx", location="w\x00.bin"), _convert_args(d))[1],
        ("m.onnx", "NUL byte"),
    ),
    "5,000-character location": (
        lambda d, c: (_with_external(d / "m.onnx", location="w" * 5000), _convert_args(d))[1],
        ("m.onnx", "too long"),
    ),
    "unknown external_data key": (
        lambda d, c: (_with_external(d / "m.onnx", basepath="/etc"), _convert_args(d))[1],
        ("m.onnx", "'basepath'"),
    ),
    "negative external data offset": (
        lambda d, c: (_with_external(d / "m.onnx", offset="-4096"), _convert_args(d))[1],
        ("m.onnx", "not a size"),
    ),
    "Constant tensor in external data outside the folder": (
        lambda d, c: _constant_outside(d),
        ("m.onnx", "outside the model's folder"),
    ),
    "300-character -o": (
        lambda d, c: ["convert", str(d / "m.onnx"), "-o", str(d / ("q" * 300)), "--data", str(d / "d.npz")],
        ("longer than",),
    ),
    "calibration nested 100,000 deep": (_nested_json, ("c.json", "nests deeper")),
    "calibration nested 40 deep": (_deep_json, ("c.json", "nests deeper")),
    "--from-report nested 100,000 deep": (
        lambda d, c: (
            (d / "r.json").write_text("[" * 100000 + "]" * 100000),
            _convert_args(d, "--from-report", str(d / "r.json")),
        )[1],
        ("r.json", "nests deeper"),
    ),
    "recipe nested 5,000 deep": (lambda d, c: _nested_toml(d), ("r.toml", "nests deeper")),
    "recipe not UTF-8": (
        lambda d, c: ((d / "r.toml").write_bytes(NAN_BYTES), _convert_args(d, "--recipe", str(d / "r.toml")))[
            1
        ],
        ("r.toml", "not UTF-8"),
    ),
    "loader raises on import": (
        lambda d, c: _loader(d, "raising_import", "raise RuntimeError('no GPU here')\n"),
        ("raising_import:load", "RuntimeError: no GPU here"),
    ),
    "loader calls sys.exit(0) on import": (
        lambda d, c: _loader(d, "exiting_import", "import sys\nsys.exit(0)\n"),
        ("exiting_import:load", "sys.exit(0)"),
    ),
    "loader raises while iterating": (
        lambda d, c: _loader(
            d,
            "raising_iter",
            """
            import numpy as np
            def load():
                yield {"image": np.zeros((1, 3, 16, 16), np.float32)}
                raise OSError("dataset server went away")
            """,
        ),
        ("raising_iter:load", "item 1", "dataset server went away"),
    ),
    "loader yields a ragged list": (
        lambda d, c: _loader(d, "ragged", "def load():\n    return [{'image': [[1.0, 2.0], [3.0]]}]\n"),
        ("ragged:load[0]", "not an array"),
    ),
    "loader calls sys.exit(0) while iterating": (
        lambda d, c: _loader(d, "exiting_iter", "import sys\ndef load():\n    sys.exit(0)\n    yield {}\n"),
        ("exiting_iter:load", "sys.exit(0)"),
    ),
    "calibration range NaN": (_calibration_case(_set("min", float("nan"))), ("c.json", "finite range")),
    "calibration range Inf": (_calibration_case(_set("max", float("inf"))), ("c.json", "finite range")),
    "calibration exponent 10**6": (_calibration_case(_set("exponent", 10**6)), ("c.json", "exponent")),
    "calibration count 1e400": (_calibration_case(_set("count", 1e400)), ("c.json", "malformed")),
    "--data is a FIFO": (
        lambda d, c: [*_convert_args(d)[:-1], str(_fifo(d, "f.npz"))],
        ("f.npz", "FIFO"),
    ),
    "--data is a device": (lambda d, c: [*_convert_args(d)[:-1], "/dev/null"], ("/dev/null", "device")),
    "--labels is a FIFO": (
        lambda d, c: _convert_args(d, "--labels", str(_fifo(d, "l.npy"))),
        ("l.npy", "not a regular file"),
    ),
    "--recipe is a FIFO": (
        lambda d, c: _convert_args(d, "--recipe", str(_fifo(d, "r.toml"))),
        ("r.toml", "not a regular file"),
    ),
    "@FILE is a FIFO": (
        lambda d, c: _convert_args(d, "-x", f"@{_fifo(d, 'x.txt')}"),
        ("x.txt", "not a regular file"),
    ),
    ".npy declaring more than it holds": (
        lambda d, c: (
            (d / "short.npy").write_bytes(bombs.npy_header(np.dtype("<f4"), (1000, 3, 16, 16)) + bytes(100)),
            [*_convert_args(d)[:-1], str(d / "short.npy")],
        )[1],
        ("short.npy", "truncated or corrupt"),
    ),
    "labels declaring 10**6 of them, holding 10": (
        lambda d, c: (
            (d / "l.npy").write_bytes(bombs.npy_header(np.dtype("<i8"), (10**6,)) + bytes(80)),
            _convert_args(d, "--labels", str(d / "l.npy")),
        )[1],
        ("l.npy", "truncated or corrupt"),
    ),
    "image declaring 12000x12000 pixels": (
        lambda d, c: _image_folder(d, 12000, 12000),
        ("big.png", "larger than quantcli decodes"),
    ),
    "image declaring 60000x60000 pixels": (
        lambda d, c: _image_folder(d, 60000, 60000),
        ("big.png", "not a readable image"),
    ),
    "--preprocess resize=100000,100000": (
        lambda d, c: [*_image_folder(d, 16, 16), "--preprocess", "resize=100000,100000"],
        ("images", "resize them smaller"),
    ),
    "merge one file twice": (
        lambda d, c: (
            (d / "a.json").write_bytes(c),
            ["calibrate", "merge", str(d / "a.json"), str(d / "a.json"), "-o", str(d / "m.json")],
        )[1],
        ("a.json", "merged once"),
    ),
    "merge shards 1/2 and 1/3": (lambda d, c: _shards(d, c, "1/2", "1/3"), ("b.json", "shares samples")),
    "NaN in a weight": (lambda d, c: _bad_weight(d, float("nan")), ("m.onnx", "weight 'conv1.w'")),
    "Inf in a weight": (lambda d, c: _bad_weight(d, float("inf")), ("m.onnx", "weight 'conv1.w'")),
    "NaN in a weight, calibrate": (
        lambda d, c: ["calibrate", *_bad_weight(d, float("nan"))[1:2], "--data", "d.npz", "-o", "c2.json"],
        ("m.onnx", "weight 'conv1.w'"),
    ),
}


@pytest.mark.parametrize(
    ("command", "flag", "named"),
    [
        ("convert", ["--seed", "-1"], "seed must be in"),
        ("convert", ["--max-drop", "nan"], "--max-drop"),
        ("convert", ["--min-sqnr", "inf", "--metric", "sqnr"], "min sqnr must be a finite number"),
        ("compare", ["--runs", "0"], "'--runs'"),
        ("compare", ["--batch-size", "-3"], "'--batch-size'"),
        ("compare", ["--top-k", "0", "--per-layer"], "'--top-k'"),
    ],
)
def test_bad_numbers_are_usage_errors(tmp_path: Path, command: str, flag: list[str], named: str) -> None:
    """Exit 2 with Typer's usage line, before any work; nothing written."""
    model, data = _cnn_folder(tmp_path)
    before = snapshot(tmp_path)
    if command == "convert":
        args = ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), *flag]
    else:
        args = ["compare", str(model), str(model), "--data", str(data), *flag]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before


def test_the_library_refuses_counts_below_one_too(tmp_path: Path) -> None:
    model, data = _cnn_folder(tmp_path)
    with pytest.raises(ConfigError, match="--runs must be at least 1"):
        compare(model, model, data, CompareConfig(latency_runs=0))


@pytest.mark.parametrize("name", HONEST, ids=HONEST)
def test_input_faults_exit_1_with_one_line(
    tmp_path: Path, calibration_json: bytes, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _cnn_folder(tmp_path)
    build, names = HONEST[name]
    args = build(tmp_path, calibration_json)
    refused(args, tmp_path, *names)


def test_merge_of_disjoint_shards_of_different_splits_is_allowed(
    tmp_path: Path, calibration_json: bytes
) -> None:
    """1/2 holds the even samples, 2/4 the samples 1, 5, 9...: disjoint, so they may merge."""
    result = runner.invoke(app, _shards(tmp_path, calibration_json, "1/2", "2/4"))
    assert result.exit_code == 0, result.output


# --- every model read from its own folder -------------------------------------------------------


def test_compare_reads_external_data_from_each_models_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "models"
    sub.mkdir()
    model, data = _cnn_folder(sub)
    converted = runner.invoke(
        app, ["convert", str(model), "-o", str(sub / "q.onnx"), "--mode", "weight-only"]
    )
    assert converted.exit_code == 0, converted.output
    args = [
        "compare",
        str(model),
        str(sub / "q.onnx"),
        "--data",
        str(data),
        "--runs",
        "1",
        "--per-layer",
        "--json",
    ]
    monkeypatch.chdir(sub)
    at_home = runner.invoke(app, args)
    assert at_home.exit_code == 0, at_home.output
    # Elsewhere, with decoys named like both data files in the current folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.bin").write_bytes(bytes(len((sub / "w.bin").read_bytes())))
    (tmp_path / "q.onnx.data").write_bytes(bytes(len((sub / "q.onnx.data").read_bytes())))
    away = runner.invoke(app, args)
    assert away.exit_code == 0, away.output
    fidelity = [json.loads(r.stdout)["fidelity"] for r in (at_home, away)]
    assert fidelity[0] == fidelity[1]
    assert json.loads(away.stdout)["per_layer"] == json.loads(at_home.stdout)["per_layer"]


@pytest.mark.parametrize("mode", ["weight-only", "dynamic"])
def test_small_external_tensors_are_written_inline_not_pointing_at_the_input(
    tmp_path: Path, mode: str
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(
        models.tiny_transformer(), model, save_as_external_data=True, location="w.bin", size_threshold=0
    )
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    result = runner.invoke(app, ["convert", str(model), "-o", str(out), "--mode", mode])
    assert result.exit_code == 0, result.output
    proto = onnx.load(out, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"q.onnx.data"}
    onnx.checker.check_model(str(out), full_check=True)


def test_initializers_past_the_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "MAX_NODES", 4)  # tiny_cnn has 6 initializers and 9 nodes
    model, _ = _cnn_folder(tmp_path)
    refused(["inspect", str(model)], tmp_path, "6 initializers")
