"""Wall time of `quantcli --version` and `quantcli --help`: what a person (or shell completion)
waits for before anything is quantized. The commands import numpy, onnx and onnxruntime only
when they run, so these two should stay well under 0.3 s.

Run: `make bench-startup` (or `.venv/bin/python bench/startup.py`). Each command runs once to
warm the file cache, then RUNS times as a fresh process through the installed entry point; the
section reports the median, min and max.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import machine, write_section

RUNS = 20
LIMIT_S = 0.3  # issue 15's bound


def _entry_point() -> list[str]:
    exe = Path(sys.executable).parent / "quantcli"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("quantcli")
    return [found] if found else [sys.executable, "-m", "quantcli"]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    base = _entry_point()
    rows = []
    # Floors on this machine at this load: the interpreter alone, and the Typer import --help needs.
    commands = {
        "quantcli --version": [*base, "--version"],
        "quantcli --help": [*base, "--help"],
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "python -c 'import typer' (floor of --help)": [sys.executable, "-c", "import typer"],
    }
    for name, command in commands.items():
        _wall(command)  # warm-up: the first run reads the files from disk
        times = [_wall(command) for _ in range(RUNS)]
        rows.append(
            {
                "command": name,
                "runs": RUNS,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
            }
        )
    lines = [
        "## Start-up time (`make bench-startup`, bench/startup.py)",
        "",
        f"Made by `make bench-startup` (bench/startup.py) with {machine()}.",
        f"Wall time of a fresh process through the installed entry point, median of {RUNS} runs after "
        f"one warm-up; bound {LIMIT_S} s.",
        "",
        "| command | median s | min s | max s | under bound |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        within = "yes" if row["median_s"] < LIMIT_S else "no"
        within = within if row["command"].startswith("quantcli") else ""
        figures = " | ".join(f"{row[k]:.3f}" for k in ("median_s", "min_s", "max_s"))
        lines.append(f"| `{row['command']}` | {figures} | {within} |")
    with open("/proc/loadavg") as load:
        lines += [
            "",
            f"Load average while measuring: {load.read().split()[0]} (1 min) on this shared machine.",
        ]
    target = write_section("startup", "\n".join(lines), rows)
    print("\n".join(lines[6:]))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
