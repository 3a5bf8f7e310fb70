"""The JSON report of a fixed conversion, normalized, against a file kept in git.

Regenerate on purpose with `make golden` after a deliberate change of the schema or the plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import models
import numpy as np
from typer.testing import CliRunner

from quantcli.cli.app import app

GOLDEN = Path(__file__).parent / "golden" / "tiny_cnn_report.json"


def _normalize(value: Any) -> Any:
    """Sorted keys, floats to 3 significant digits, no paths: what must not drift."""
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in sorted(value.items()) if k not in ("model", "output", "source")}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.3g}")
    return value


def test_report_matches_golden(tmp_path: Path) -> None:
    model = models.save(models.tiny_cnn(channels=32), tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, **models.tiny_cnn_data(40))
    result = CliRunner().invoke(
        app, ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(data), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = _normalize(json.loads(result.stdout))
    if os.environ.get("QUANTCLI_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    assert report == json.loads(GOLDEN.read_text())
