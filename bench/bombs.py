"""Hostile inputs at full size (issue 14): each must be refused (or bounded) fast and small.

    python bench/bombs.py            # or: make bench-bombs

Each input is small on disk and huge once read: an .npz member inflating to 6 GB, histogram
counts inflating to 7.6 GB, ``--calibration /dev/zero``, an initializer declaring 20 GB it does
not hold, a graph of a million nodes, and a ``--data-loader`` that never ends (with and without
``--max-samples``). Each runs as a ``quantcli`` child process; its wall time and peak resident
memory (``wait4``'s rusage, its own) are recorded. The bar: done within 5 s, under 500 MB.
The inputs are built in a temporary folder with tests/bombs.py, the helpers the tests use at
small sizes, and deleted afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _results import BENCH, machine, write_section

sys.path.insert(0, str(BENCH.parent / "tests"))
import bombs
import models

GB = 10**9
MB = 2**20
SECONDS_BAR, MB_BAR = 5.0, 500


def run(args: list[str], cwd: Path) -> dict[str, Any]:
    """One quantcli command, started from bench/_measure.py: Linux carries a process's peak RSS
    across fork and exec, and this script holds large inputs while building them."""
    result, log = cwd / "measure.json", cwd / "measure.log"
    command = [sys.executable, str(BENCH / "_measure.py"), str(result), str(log), "--"]
    subprocess.run([*command, sys.executable, "-m", "quantcli", *args], cwd=cwd, check=True)
    measured = json.loads(result.read_text())
    return {
        "exit_code": measured["exit_code"],
        "seconds": round(measured["seconds"], 2),
        "peak_rss_mb": round(measured["peak_rss_mb"]),
        "stderr": log.read_text().strip(),
    }


def cases(d: Path) -> list[tuple[str, str, list[str]]]:
    """(name, what is on disk, command line), building each input."""
    model = d / "m.onnx"
    onnx.save(models.tiny_cnn(), model)
    np.savez(d / "d.npz", **models.tiny_cnn_data(8))
    calibrated = run(["calibrate", "m.onnx", "--data", "d.npz", "-o", "c.json", "--mode", "static"], d)
    assert calibrated["exit_code"] == 0, calibrated
    bombs.npz_bomb(d / "bomb.npz", 6 * GB)
    bombs.counts_bomb(d / "c.json", d / "counts.json", int(7.6 * GB))
    bombs.declared_initializer_model(d / "declared.onnx", 5 * 10**9)
    bombs.wide_graph(d / "wide.onnx", 10**6)
    (d / "endless.py").write_text(bombs.ENDLESS_LOADER)

    def size(name: str) -> str:
        return f"{(d / name).stat().st_size / MB:.1f} MB"

    convert = ["convert", "m.onnx", "-o", "q.onnx", "--mode", "static"]
    return [
        (
            "npz member declaring 6 GB (float32, the input's shape)",
            size("bomb.npz"),
            [*convert, "--data", "bomb.npz"],
        ),
        (
            "histogram counts inflating to 7.6 GB",
            size("counts.json"),
            [*convert, "--calibration", "counts.json"],
        ),
        ("--calibration /dev/zero", "endless", [*convert, "--calibration", "/dev/zero"]),
        (
            "initializer declaring 20 GB, holding none",
            size("declared.onnx"),
            ["convert", "declared.onnx", "-o", "q.onnx", "--mode", "weight-only"],
        ),
        ("graph of 1,000,000 nodes", size("wide.onnx"), ["inspect", "wide.onnx"]),
        ("endless --data-loader, no --max-samples", "endless", [*convert, "--data-loader", "endless:load"]),
        (
            "endless --data-loader, --max-samples 256 (runs)",
            "endless",
            [*convert, "--data-loader", "endless:load", "--max-samples", "256"],
        ),
    ]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantcli-bombs-") as folder:
        for name, on_disk, args in cases(Path(folder)):
            measured = run(args, Path(folder))
            within = measured["seconds"] <= SECONDS_BAR and measured["peak_rss_mb"] <= MB_BAR
            rows.append({"bomb": name, "on_disk": on_disk, "args": args, "within_bar": within, **measured})
            took = f"{measured['seconds']} s, {measured['peak_rss_mb']} MB"
            print(f"{name}: exit {measured['exit_code']}, {took}", file=sys.stderr)
            (Path(folder) / "q.onnx").unlink(missing_ok=True)
    lines = [
        "## Hostile inputs (bombs)",
        "",
        "`make bench-bombs` (`bench/bombs.py`): inputs small on disk and huge once read, at the sizes of "
        "issue 14, built with `tests/bombs.py`. Each row is one `quantcli` child process; peak RSS is its "
        f"own (`wait4`). The bar is {SECONDS_BAR:g} s and {MB_BAR} MB. {machine()}.",
        "",
        "| input | on disk | exit | time (s) | peak RSS (MB) | within bar | message |",
        "|---|---:|---:|---:|---:|---|---|",
        *(
            f"| {r['bomb']} | {r['on_disk']} | {r['exit_code']} | {r['seconds']} | {r['peak_rss_mb']} | "
            f"{'yes' if r['within_bar'] else 'NO'} | {_message(r)} |"
            for r in rows
        ),
        "",
        "Exit 1 is a refusal with one line; the last row is the endless loader read lazily, no further than "
        "`--max-samples`: it calibrates and writes a model (exit 0).",
    ]
    print(write_section("bombs", "\n".join(lines), rows))


def _message(row: dict[str, Any]) -> str:
    if row["exit_code"] == 0:
        return "(calibrated and wrote the model)"
    lines = row["stderr"].splitlines()
    return (lines[-1] if lines else "").replace("|", "\\|")


if __name__ == "__main__":
    main()
