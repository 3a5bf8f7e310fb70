"""Calibration past one process: `calibrate --ray` with 1 and 2 workers against the plain local run.

Run: `.venv/bin/python bench/scale.py [--zoo DIR] [--model yolov8n_320] [--samples 2048]`
(needs the ray extra: `pip install -c constraints.txt -e '.[ray]'`). Writes the `scale` section
of bench/RESULTS.md and bench/results/scale.json.

The data is a folder of ``--samples`` one-sample .npz files: symlinks to the 64 samples of the
model's calib.npz, repeated in order (the cost of a sample does not depend on its values, and the
folder costs 64 files of disk). Each run is a child process of its own, with a Ray of its own
started inside it (`ray.init(num_cpus=W)`, W shards of one CPU each):
- wall time of the whole run (Ray's start included, and apart), and of the observation pass;
- driver peak RSS (VmHWM of the child), and each Ray worker's peak RSS, read from /proc while the
  run goes on (a worker's VmHWM is its peak; the largest is reported);
- bit-identity: the calibration file of every Ray run against the local one, byte for byte.
Then the costs a paper estimate needs, measured in this process on one thread: a task's fixed cost
(model load and sessions, a one-sample shard), the cost of one sample, the driver's per-sample cost
of opening and checking the data, and the cost of one merge; from them the wall time of 100k
samples on 1, 8 and 64 workers. The machine is shared: the load average is recorded beside every run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import machine, write_section

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "_work" / "scale"
TARGET_SAMPLES = 100_000
ESTIMATE_WORKERS = (1, 8, 64)
CORES = len(os.sched_getaffinity(0))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- child: one run


def _child(model: Path, data: Path, workers: int, out: Path, report: Path) -> None:
    from quantcli.calibration.file import write_calibration  # noqa: PLC0415
    from quantcli.config import QuantConfig, QuantMode  # noqa: PLC0415
    from quantcli.pipeline import calibrate  # noqa: PLC0415

    config = QuantConfig(mode=QuantMode.STATIC)
    start = time.perf_counter()
    startup = 0.0
    observing: list[float] = []
    collector = None
    if workers:
        import ray  # noqa: PLC0415

        from quantcli.distributed import RayCollector, RayOptions  # noqa: PLC0415

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        startup = time.perf_counter() - start
        ray_collector = RayCollector(RayOptions(workers=workers))

        def collector(work: Any, progress: Any) -> Any:
            began = time.perf_counter()
            stats = ray_collector(work, progress)
            observing.append(time.perf_counter() - began)
            return stats

    result = calibrate(model, data, config=config, collector=collector)
    write_calibration(result, out, force=True)
    seconds = time.perf_counter() - start
    if workers:
        import ray  # noqa: PLC0415

        ray.shutdown()
    report.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "startup_seconds": startup,
                "observe_seconds": observing[0] if observing else None,
                "driver_peak_rss_mb": _hwm_mb(),
                "samples": result.num_samples,
                "tensors": len(result.stats),
            }
        )
    )


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def run(model: Path, data: Path, workers: int, name: str) -> dict[str, Any]:
    """One calibration in a child; worker peaks polled from /proc while it runs."""
    out, report = WORK / f"{name}.json", WORK / f"{name}.report.json"
    before = _load()
    command = [
        sys.executable,
        __file__,
        "--child",
        str(model),
        str(data),
        str(workers),
        str(out),
        str(report),
    ]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(command, stderr=subprocess.PIPE)
    peaks: dict[int, float] = {}
    cpu: dict[int, float] = {}
    observing: set[int] = set()  # workers seen running a shard: more than W means some were restarted
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for pid in _descendants(child.pid):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if title.startswith(b"ray::_observe"):
                        observing.add(pid)
                    if title.startswith(b"ray::"):
                        peaks[pid] = max(peaks.get(pid, 0.0), _hwm_mb(pid))
                        cpu[pid] = max(cpu.get(pid, 0.0), _cpu_seconds(pid))
                except OSError:
                    continue
            done.wait(0.5)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, stderr = child.communicate()
    done.set()
    watcher.join()
    if child.returncode != 0:
        raise SystemExit(f"{name}: failed\n{stderr.decode()[-2000:]}")
    row = json.loads(report.read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    process_cpu = (after.ru_utime + after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    # Ray's worker processes that ran tasks (an idle pool worker stays small); without Ray, the run's own.
    busy = sum(cpu.values()) if workers else process_cpu
    row.update(
        cpu_seconds=round(busy, 1),
        worker_restarts=max(0, len(observing) - workers),
        # Of the CPU time the run could have had (observing: W CPUs; local: every core) how much it got.
        cpu_share=round(busy / ((row["observe_seconds"] or row["seconds"]) * (workers or CORES)), 2),
        name=name,
        workers=workers,
        worker_peak_rss_mb=round(max(peaks.values()), 1) if peaks else None,
        load_before=before,
        load_after=_load(),
        file=str(out),
    )
    return row


# --------------------------------------------------------------------------- costs for the estimate


def costs(model: Path, data: Path, calibration: Path) -> dict[str, float]:
    """Per-task, per-sample, per-sample-on-the-driver and per-merge costs, on one thread here."""
    from quantcli.calibration.data import model_inputs  # noqa: PLC0415
    from quantcli.calibration.file import merge_calibrations, read_calibration  # noqa: PLC0415
    from quantcli.calibration.sampling import Selection  # noqa: PLC0415
    from quantcli.calibration.sources import open_source  # noqa: PLC0415
    from quantcli.inputs import ShardWork, observe_shard, prepare  # noqa: PLC0415
    from quantcli.plan import candidate_tensors  # noqa: PLC0415

    loaded = prepare(model)
    tensors = tuple(candidate_tensors(loaded.model))
    specs = model_inputs(loaded.model)
    began = time.perf_counter()
    dataset = open_source(data, specs)
    validate = (time.perf_counter() - began) / dataset.num_samples

    def timed(samples: int) -> float:
        work = ShardWork(model, data, tensors, Selection(samples, None), False, 16, True, "", samples)
        began = time.perf_counter()
        observe_shard(work, threads=1)
        return time.perf_counter() - began

    small, large = 1, 48
    fixed = min(timed(small) for _ in range(2))
    per_sample = (timed(large) - fixed) / (large - small)
    whole = read_calibration(calibration)
    a = whole.__class__(**{**whole.__dict__, "shards": ("1/2",), "choice": None})
    b = whole.__class__(**{**whole.__dict__, "shards": ("2/2",), "choice": None})
    reps = 10
    began = time.perf_counter()
    for _ in range(reps):
        merge_calibrations([(Path("a"), a), (Path("b"), b)])
    merge = (time.perf_counter() - began) / reps
    return {
        "task_fixed_seconds": fixed,
        "sample_seconds": per_sample,
        "driver_sample_seconds": validate,
        "merge_seconds": merge,
        "shard_result_bytes": len(pickle.dumps(whole.stats)),
    }


def estimate(cost: dict[str, float], startup: float, workers: int, samples: int) -> float:
    """Wall time on paper: start Ray, check the data on the driver, the slowest of ``workers``
    equal shards (fixed cost + its samples), then every merge on the driver one after another
    (an upper bound: most overlap with shards still running)."""
    return (
        startup
        + samples * cost["driver_sample_seconds"]
        + cost["task_fixed_seconds"]
        + samples * cost["sample_seconds"] / workers
        + workers * cost["merge_seconds"]
    )


# --------------------------------------------------------------------------- main


def sample_folder(model_dir: Path, count: int) -> Path:
    """``count`` one-sample .npz files: symlinks to calib.npz's samples, repeated in order."""
    base = WORK / f"{model_dir.name}_base"
    if not base.is_dir():
        base.mkdir(parents=True)
        with np.load(model_dir / "calib.npz") as archive:
            arrays = {k: archive[k] for k in archive.files}
        for i in range(len(next(iter(arrays.values())))):
            np.savez(base / f"{i:05d}.npz", **{k: v[i : i + 1] for k, v in arrays.items()})
    files = sorted(base.glob("*.npz"))
    folder = WORK / f"{model_dir.name}_{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"{i:06d}.npz"
        if not link.exists():
            link.symlink_to(files[i % len(files)])
    return folder


def _markdown(
    rows: list[dict[str, Any]], cost: dict[str, float], guesses: dict[int, float], args: Any
) -> str:
    local = next(r for r in rows if r["workers"] == 0)
    lines = [
        "## scale: calibration on Ray (`bench/scale.py`)",
        "",
        f"`{args.model}`, {args.samples} samples (one .npz each), `calibrate --mode static` (min, max and "
        "histogram of every candidate tensor). Local: the plain run (onnxruntime's default threads). "
        "Ray W: a local Ray of W CPUs started in the run, W shards of 1 CPU and 1 onnxruntime thread each. "
        f"{machine()}; the load average (1, 5, 15 min) is the machine's, shared with other work. "
        "CPU s: CPU time the Ray workers (local: the run) used; share: that over the CPU time they "
        "had room for (observe wall x W; local: wall x cores): below 1, they waited for CPUs held by "
        "other work. Workers restarted: workers seen running a shard beyond W (Ray reruns the shard of a "
        "worker that died; here its memory monitor kills one when the machine nears its memory limit).",
        "",
        "| run | samples | wall s | Ray start s | observe s | speedup vs Ray 1 | CPU s (share) "
        "| driver peak MB | worker peak MB | workers restarted | file = local | load before -> after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    one = next((r for r in rows if r["workers"] == 1 and r["samples"] == args.samples), None)
    for r in rows:
        speed = (
            f"{one['observe_seconds'] / r['observe_seconds']:.2f}x"
            if one and r["observe_seconds"] and r["samples"] == one["samples"]
            else "-"
        )
        lines.append(
            f"| {r['name']} | {r['samples']} | {r['seconds']:.1f} | {r['startup_seconds']:.1f} | "
            f"{r['observe_seconds'] or 0:.1f} | {speed} | {r['cpu_seconds']:.0f} ({r['cpu_share']:.2f}) | "
            f"{r['driver_peak_rss_mb']:.0f} | "
            f"{r['worker_peak_rss_mb'] or '-'} | {r['worker_restarts'] if r['workers'] else '-'} | "
            f"{r.get('identical', '-')} | "
            f"{r['load_before']} -> {r['load_after']} |"
        )
    lines += [
        "",
        f"Local run: {local['seconds']:.1f} s. Costs measured on one thread in the bench process: a task's "
        f"fixed cost (model load, sessions) {cost['task_fixed_seconds']:.2f} s, one sample "
        f"{cost['sample_seconds'] * 1000:.1f} ms, the driver's opening and checking of one sample "
        f"{cost['driver_sample_seconds'] * 1000:.2f} ms, one merge of two shards' statistics "
        f"{cost['merge_seconds'] * 1000:.1f} ms ({cost['shard_result_bytes'] / 2**20:.1f} MiB of statistics "
        "per shard).",
        "",
        f"Paper estimate for {TARGET_SAMPLES:,} samples (Ray start as measured, the driver's check of "
        "every sample, one task's fixed cost, its 1/W of the samples, W merges one after another; "
        "assumes W free CPUs and storage that keeps up):",
        "",
        "| workers | estimated wall |",
        "| ---: | ---: |",
    ]
    lines += [f"| {w} | {s / 60:.1f} min ({s:.0f} s) |" for w, s in guesses.items()]
    lines += [
        "",
        "The driver's check of the data (it opens every file once before any work) does not divide by "
        "the workers: at 64 workers it is "
        f"{TARGET_SAMPLES * cost['driver_sample_seconds']:.0f} s of the estimate.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, model, data, workers, out, report = sys.argv
        _child(Path(model), Path(data), int(workers), Path(out), Path(report))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=BENCH / "zoo")
    parser.add_argument("--model", default="yolov8n_320")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--small", type=int, default=512, help="A second, smaller run on 2 workers.")
    args = parser.parse_args()
    model_dir = args.zoo / args.model
    model = model_dir / "model.onnx"
    WORK.mkdir(parents=True, exist_ok=True)
    data = sample_folder(model_dir, args.samples)
    rows = []
    for workers, name in ((0, "local"), (1, "Ray 1"), (2, "Ray 2")):
        print(f"scale: {name}, {args.samples} samples (load {_load()})", file=sys.stderr)
        rows.append(run(model, data, workers, name.replace(" ", "")))
        rows[-1]["name"] = name
        # Each row is kept as soon as it is measured: a failure later in the run loses nothing.
        (WORK / f"{name.replace(' ', '')}.row.json").write_text(json.dumps(rows[-1]))
    if args.small:
        small = sample_folder(model_dir, args.small)
        print(f"scale: Ray 2, {args.small} samples", file=sys.stderr)
        rows.append(run(model, small, 2, "Ray2_small") | {"name": "Ray 2"})
    local_bytes = Path(rows[0]["file"]).read_bytes()
    for r in rows[1:]:
        same_samples = r["samples"] == rows[0]["samples"]
        r["identical"] = (
            ("yes" if Path(r["file"]).read_bytes() == local_bytes else "NO") if same_samples else "-"
        )
    print("scale: costs", file=sys.stderr)
    cost = costs(model, sample_folder(model_dir, 64), Path(rows[0]["file"]))
    startup = next(r["startup_seconds"] for r in rows if r["workers"] == 2)
    guesses = {w: estimate(cost, startup, w, TARGET_SAMPLES) for w in ESTIMATE_WORKERS}
    document = {
        "model": args.model,
        "samples": args.samples,
        "runs": rows,
        "costs": cost,
        "estimate_seconds": {str(w): s for w, s in guesses.items()},
        "machine": machine(),
    }
    target = write_section("scale", _markdown(rows, cost, guesses, args), document)
    print(json.dumps(document, indent=2), file=sys.stderr)
    print(f"scale: wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
