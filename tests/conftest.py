from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models

from quantcli.cli import progress


@pytest.fixture(autouse=True)
def _no_slow_stage_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """No "stage took N s" log lines in CLI output under test.

    On a loaded machine any stage of a tiny model can pass the one-second mark, and its log
    line would break tests that read stderr for a one-line error. The tests of those lines
    (tests/test_cli_progress.py) set the threshold back and drive a fake clock.
    """
    monkeypatch.setattr(progress, "PLAIN_MIN_SECONDS", float("inf"))


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[Path, Path]:
    """(model, calibration .npz) for the tiny CNN."""
    model = models.save(models.tiny_cnn(channels=32), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(40))
    return model, data


@pytest.fixture
def transformer(tmp_path: Path) -> tuple[Path, Path]:
    model = models.save(models.tiny_transformer(), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_transformer_data(40))
    return model, data


@pytest.fixture
def wide(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny transformer at d = 64 (two blocks of 32 per row) and 40 samples."""
    model = models.save(models.tiny_transformer(d=64), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_transformer_data(40))
    return model, data
