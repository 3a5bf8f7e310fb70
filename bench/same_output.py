"""Did a change alter what quantcli writes? Convert every model in every mode and hash the results.

A refactoring must not change a single byte of any output model, nor any figure of any report.
This converts each sample model (and, with --zoo, each bench-zoo model) with the default command
and with every concrete mode, hashes the written model and its report (paths, versions and wall
times removed), and either records the hashes (--record FILE) or compares them with a recording
(--check FILE), naming every conversion whose output changed.

    python bench/same_output.py --record bench/_work/before.json
    ... change the code ...
    python bench/same_output.py --check bench/_work/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Each variant is a name and the flags added to `convert MODEL -o OUT --data DATA`.
VARIANTS = {
    "default": [],
    "static": ["--mode", "static"],
    "mixed": ["--mode", "mixed"],
    "dynamic": ["--mode", "dynamic"],
    "weight-only": ["--mode", "weight-only"],
    "fallback": ["--auto-fallback"],
}
# Report fields that name paths (the data source too), tool versions or wall time: they differ
# between checkouts and runs without the quantization changing.
VOLATILE = {"command", "model", "output", "source", "versions", "report", "elapsed_s", "seconds", "wall_s"}


def _models(zoo: Path | None) -> list[tuple[str, Path, Path]]:
    found = []
    folders = sorted((ROOT / "sample_models").iterdir())
    if zoo is not None:
        folders += sorted(path for path in zoo.iterdir() if path.is_dir())
    for folder in folders:
        model = folder / "model.onnx"
        data = next((folder / name for name in ("calib.npz", "calib") if (folder / name).exists()), None)
        if model.exists() and data is not None:
            found.append((folder.name, model, data))
    return found


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _stable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


def _convert(model: Path, data: Path, flags: list[str], work: Path) -> dict[str, str]:
    output, report = work / "out.onnx", work / "report.json"
    for stale in (output, report):
        stale.unlink(missing_ok=True)
    command = [str(Path(sys.executable).parent / "quantcli"), "convert", str(model), "-o", str(output)]
    command += ["--data", str(data), "--report", str(report), "--force", "--quiet"]
    command += flags
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if not output.exists():
        last_line = (done.stderr.strip().splitlines() or [""])[-1]
        return {"exit": str(done.returncode), "error": last_line}
    stable_report = json.dumps(_stable(json.loads(report.read_text())), sort_keys=True)
    # Sentences in the report name the data's path too: the same data read from another checkout
    # is the same conversion.
    for folder in sorted({str(model.parent.parent), str(model.parent.parent.resolve()), str(ROOT)}, key=len)[
        ::-1
    ]:
        stable_report = stable_report.replace(folder, "<models>")
    return {
        "exit": str(done.returncode),
        "model": hashlib.sha256(output.read_bytes()).hexdigest(),
        "report": hashlib.sha256(stable_report.encode()).hexdigest(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", type=Path, help="write the hashes to this file")
    action.add_argument("--check", type=Path, help="compare with the hashes in this file")
    parser.add_argument("--zoo", type=Path, help="also convert every model under this bench-zoo folder")
    parser.add_argument("--only", default="", help="comma-separated model names to convert")
    parser.add_argument(
        "--models-only", action="store_true", help="compare exit codes and models, not reports"
    )
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, model, data in _models(args.zoo):
            if only and name not in only:
                continue
            for variant, flags in VARIANTS.items():
                key = f"{name}/{variant}"
                results[key] = _convert(model, data, flags, Path(scratch))
                print(f"{key}: {results[key]}", file=sys.stderr)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(results, indent=1, sort_keys=True))
        return 0
    recorded = json.loads(args.check.read_text())
    fields = ("exit", "model") if args.models_only else ("exit", "model", "report")

    def differs(key: str) -> bool:
        return any(recorded[key].get(field) != results[key].get(field) for field in fields)

    changed = [key for key in results if key in recorded and differs(key)]
    for key in changed:
        print(f"CHANGED {key}: {recorded[key]} -> {results[key]}")
    print(f"{len(results) - len(changed)} of {len(results)} conversions unchanged")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
