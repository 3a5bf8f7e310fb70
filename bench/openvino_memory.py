"""Peak memory and wall time of one `convert` on both targets, before and after a change, side
by side (issue 17's memory defect: PP-OCRv4 det on `--target openvino` peaked at 4.21 GB).

Each run is a fresh process, `python -m quantcli convert MODEL --data calib --eval-data eval
[--target openvino]`, with PYTHONPATH set to the source tree under test (`--before`, `--after`),
under `/usr/bin/time -v`. Memory is measured two ways:

- ``tree peak``: the largest sum of VmRSS over the process and all its descendants, sampled every
  50 ms (OpenVINO sessions run in child processes after the change; time -v alone would report
  the largest single process);
- ``max RSS``: GNU time's "Maximum resident set size" (the largest single process), the figure
  the issue quoted.

The runs alternate before/after per target; the output model's SHA-256 shows whether the bytes
are the same. Run with a Python that has openvino (the `openvino` extra):

    .venv/bin/python bench/openvino_memory.py --zoo bench/zoo --before /path/to/main --after .
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _results import machine, write_section

_SAMPLE_SECONDS = 0.05


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(c) for c in children.read().split()]
    except OSError:
        pass
    return found


def tree_rss_kb(root: int) -> int:
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kb(pid)
        todo += _children(pid)
    return total


def run(command: list[str], env: dict[str, str], cwd: str) -> dict[str, object]:
    """``command`` under /usr/bin/time -v, its process tree's RSS sampled until it ends."""
    with tempfile.TemporaryFile() as log:
        begin = time.perf_counter()
        timed = ["/usr/bin/time", "-v", *command]
        process = subprocess.Popen(timed, stdout=log, stderr=log, env=env, cwd=cwd)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss_kb(process.pid))
                time.sleep(_SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - begin
        done.set()
        sampler.join()
        log.seek(0)
        text = log.read().decode(errors="replace")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "exit_code": code,
        "wall_s": wall,
        "tree_peak_gb": peak / 2**20,
        "max_rss_gb": int(found.group(1)) / 2**20 if found else None,
        "tail": text.strip().splitlines()[-25:] if code else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--model", default="ppocrv4_det")
    parser.add_argument("--before", type=Path, required=True, help="source tree before (main)")
    parser.add_argument("--after", type=Path, required=True, help="source tree after (this branch)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    folder = args.zoo / args.model
    data = [f"{flag}={folder / name}" for flag, name in (("--data", "calib"), ("--eval-data", "eval"))]
    data = [d if Path(d.split("=", 1)[1]).exists() else d + ".npz" for d in data]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for target in ("openvino", "ort-cpu"):
            for label, tree in (("before", args.before), ("after", args.after)):
                output = Path(scratch) / f"{target}-{label}.onnx"
                command = [sys.executable, "-m", "quantcli", "convert", str(folder / "model.onnx")]
                command += ["-o", str(output), *data, "--target", target, "--quiet"]
                env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
                load = os.getloadavg()[0]
                row = run(command, env, scratch)  # not a source tree: -m finds PYTHONPATH's
                row.update(target=target, tree=label, load_start=load, load_end=os.getloadavg()[0])
                row["sha256"] = hashlib.sha256(output.read_bytes()).hexdigest() if output.exists() else None
                print(row, file=sys.stderr, flush=True)
                rows.append(row)
    text = _markdown(rows, args.model, machine())
    print(text)
    if not args.no_write:
        write_section("openvino_memory", text, rows)


def _markdown(rows: list[dict[str, object]], model: str, where: str) -> str:
    lines = [
        f"## openvino_memory: peak memory and wall time of `convert` on {model}, before and after",
        "",
        f"`bench/openvino_memory.py --model {model}` ({where}): `quantcli convert model.onnx --data "
        "calib --eval-data eval [--target openvino]` as fresh processes, before (main) and after "
        "(the child-process engine) alternating. tree peak = largest sum of RSS over the process and "
        "its children (sampled every 50 ms); max RSS = GNU time's, the largest single process.",
        "",
        "| target | code | exit | wall s | tree peak GB | max RSS GB | load start / end | output SHA-256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rss = row["max_rss_gb"]
        sha = row["sha256"]
        lines.append(
            f"| {row['target']} | {row['tree']} | {row['exit_code']} | {row['wall_s']:.1f} "
            f"| {row['tree_peak_gb']:.2f} | {rss if rss is None else f'{rss:.2f}'} "
            f"| {row['load_start']:.2f} / {row['load_end']:.2f} | {str(sha)[:12]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
