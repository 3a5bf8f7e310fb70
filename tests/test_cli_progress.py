"""Progress: the library names its stages through the progress protocol, counts match the
report, and the CLI shows them as a Rich display on a terminal, plain lines in a log, nothing
under --json or --quiet. One test runs the entry point under a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from quantcli import QuantConfig, QuantMode, calibrate, quantize
from quantcli.cli import progress
from quantcli.cli.app import app
from quantcli.cli.progress import StageDisplay


class Recorder:
    """A progress listener that keeps what it was told."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int, int, int | None]] = []
        self.counts: list[tuple[str, int, int]] = []

    def stage(self, name: str, index: int = 0, count: int = 0, total: int | None = None) -> None:
        self.stages.append((name, index, count, total))

    def __call__(self, done: int, total: int) -> None:
        self.counts.append((self.stages[-1][0], done, total))

    @property
    def names(self) -> list[str]:
        return [name for name, *_ in self.stages]


def test_calibrate_counts_every_sample_it_reports(transformer: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = transformer
    seen = Recorder()
    # auto measures candidates on a held-back part, then observes that part too.
    result = calibrate(model, data, config=QuantConfig(mode=QuantMode.AUTO), progress=seen)
    assert ("calibrate", 0, 0, result.num_samples) in seen.stages
    calibrating = [(done, total) for name, done, total in seen.counts if name == "calibrate"]
    assert calibrating[-1] == (result.num_samples, result.num_samples) == (40, 40)
    assert [d for d, _ in calibrating] == sorted(d for d, _ in calibrating)
    assert seen.names[0] == "load"
    built = [(n, i, c) for n, i, c, _ in seen.stages if n.startswith("build candidate")]
    assert built and [i for _, i, _ in built] == list(range(1, len(built) + 1))
    assert {c for *_, c in built} == {len(built)}


def test_convert_names_its_stages(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    seen = Recorder()
    result = quantize(
        model, tmp_path / "q.onnx", data=data, config=QuantConfig(per_layer=True), progress=seen
    )
    names = seen.names
    assert names[:2] == ["load", "calibrate"]
    assert "build candidate static" in names and "check" in names and "evaluate static" in names
    assert "predict speed" in names and "diagnose" in names  # auto compares by the cost model
    calibrated = [c for c in seen.counts if c[0] == "calibrate"][-1]
    assert calibrated[1:] == (result.report.calibration.samples,) * 2


def test_fallback_trials_are_counted(tmp_path: Path) -> None:
    model = models.save(models.outlier_mlp(), tmp_path)
    calib, evaluation = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, **models.outlier_mlp_data(32, outlier=2000.0))
    np.savez(evaluation, **models.outlier_mlp_data(16, seed=2))
    seen = Recorder()
    config = QuantConfig(mode=QuantMode.STATIC, min_sqnr=25.0, auto_fallback=True, max_trials=3)
    quantize(model, tmp_path / "q.onnx", data=calib, eval_data=evaluation, config=config, progress=seen)
    trials = [(i, c) for n, i, c, _ in seen.stages if n == "fallback trial"]
    assert trials and trials[0] == (1, 3) and all(c == 3 for _, c in trials)


def test_plain_lines_name_the_slow_stages_with_their_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_MIN_SECONDS", 1.0)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    now = [0.0]
    with StageDisplay(console, clock=lambda: now[0]) as display:
        assert display.kind == "plain"
        display.stage("load")
        now[0] += 0.2
        display.stage("calibrate", total=256)
        display(128, 256)
        display(256, 256)
        now[0] += 3.0
        display.stage("build candidate static", 1, 2)
        now[0] += 1.5
    assert out.getvalue() == "calibrate 256/256: 3.0 s\nbuild candidate static 1/2: 1.5 s\n"


def test_plain_lines_stop_at_an_error_and_quiet_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_MIN_SECONDS", 1.0)
    out = io.StringIO()
    now = [0.0]
    try:
        with StageDisplay(Console(file=out, force_terminal=False), clock=lambda: now[0]) as display:
            display.stage("calibrate", total=4)
            now[0] += 5.0
            raise ValueError("boom")
    except ValueError:
        pass
    assert out.getvalue() == ""  # the error line is the only line
    quiet = io.StringIO()
    with StageDisplay(Console(file=quiet, quiet=True), clock=lambda: now[0]) as display:
        assert display.kind == "off"
        display.stage("load")
        now[0] += 9.0
    assert quiet.getvalue() == ""


def test_no_progress_under_json_or_quiet(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    runner = CliRunner()
    for flag, name in (("--json", "a.onnx"), ("--quiet", "b.onnx")):
        result = runner.invoke(
            app, ["convert", str(model), "-o", str(tmp_path / name), "--data", str(data), flag]
        )
        assert result.exit_code == 0
        assert result.stderr == ""


def _run_in_pty(args: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; (exit code, everything shown)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


def test_progress_and_colour_on_a_real_terminal(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    code, shown = _run_in_pty(
        [
            sys.executable,
            "-m",
            "quantcli",
            "convert",
            str(model),
            "-o",
            str(tmp_path / "q.onnx"),
            "--data",
            str(data),
        ]
    )
    assert code == 0, shown
    for stage in ("load", "calibrate", "build candidate static", "evaluate static", "write"):
        assert stage in shown, stage
    assert "\x1b[" in shown  # colour and cursor control: it is a terminal
    assert "size ratio" in shown
