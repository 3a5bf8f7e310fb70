"""What running OpenVINO in a child process costs (quantcli.engine_process): per inference at one
thread, and to open a session, on a small and a large zoo model.

For each model, three ways of running its fp32 file on the CPU plugin (f32, latency hint, one
stream, 1 inference thread, as quantcli times), interleaved run by run on the first evaluation
sample so load drifts hit all alike:

- ``in-process``: compiled in this process with OpenVINO's API, what quantcli did before;
- ``child, wall``: quantcli's OpenVINOSession, timed around ``run`` here (the pipe included);
- ``child, own``: the same runs as the child timed them (``last_run_ms``: what quantcli's
  latency figures use).

Open time: a session opened in a new child (child started, model read and compiled), in an idle
child a closed session gave back (compiled, and one run), against compiling in process. Run
with a Python that has openvino (the `openvino` extra) and this worktree first on the path:

    PYTHONPATH=. .venv/bin/python bench/openvino_child.py --zoo bench/zoo \
        --models magika_v3_3,ppocrv4_det [--rounds 30] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import openvino
from _results import write_section

from quantcli import engine
from quantcli.target import OPENVINO


def _first_sample(zoo_model: Path) -> dict[str, np.ndarray]:
    found = zoo_model / "eval.npz"
    path = found if found.exists() else sorted((zoo_model / "eval").glob("*.npz"))[0]
    with np.load(path) as data:
        return {name: data[name][:1] for name in data.files}


def _in_process(path: Path) -> tuple[object, object, float]:
    begin = time.perf_counter()
    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {**config, "INFERENCE_NUM_THREADS": 1})
    return compiled, compiled.create_infer_request(), time.perf_counter() - begin


def measure(zoo_model: Path, rounds: int) -> dict[str, object]:
    path = zoo_model / "model.onnx"
    feed = _first_sample(zoo_model)
    begin = time.perf_counter()
    session = engine.open_session(path, for_timing=True, target=OPENVINO)
    child_open = time.perf_counter() - begin
    assert isinstance(session, engine.OpenVINOSession)
    compiled, request, local_open = _in_process(path)
    outputs = list(compiled.outputs)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {"in-process": [], "child, wall": [], "child, own": []}
    for _ in range(3):  # warm-up
        session.run(None, feed)
        request.infer(feed)  # type: ignore[attr-defined]
    for index in range(rounds):
        for turn in (0, 1) if index % 2 == 0 else (1, 0):
            start = time.perf_counter()
            if turn == 0:
                results = request.infer(feed)  # type: ignore[attr-defined]
                _ = [np.array(results[o]) for o in outputs]
                times["in-process"].append((time.perf_counter() - start) * 1000)
            else:
                session.run(None, feed)
                times["child, wall"].append((time.perf_counter() - start) * 1000)
                times["child, own"].append(session.last_run_ms)
    session.close()  # its child drops the model and waits idle: the next session reuses it
    begin = time.perf_counter()
    engine.open_session(path, for_timing=True, target=OPENVINO).run(None, feed)
    reopen = time.perf_counter() - begin
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": zoo_model.name,
        "input": {k: list(v.shape) for k, v in feed.items()},
        "rounds": rounds,
        "median_ms": medians,
        "pipe_ms": medians["child, wall"] - medians["child, own"],
        "own_over_in_process": medians["child, own"] / medians["in-process"],
        "open_s": {"child": child_open, "idle child": reopen, "in-process": local_open},
    }


def _markdown(rows: list[dict[str, object]], load: tuple[float, float], command: str) -> str:
    lines = [
        "## openvino_child: what OpenVINO in a child process costs",
        "",
        f"`{command}`; OpenVINO's CPU plugin, f32, 1 inference thread, first evaluation sample, "
        f"interleaved rounds; 1-min load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
        "",
        "| model | input | in-process ms | child ms (wall, pipe included) | child ms (its own timer) "
        "| pipe ms | own / in-process | open s: new child / idle child / in-process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["median_ms"]
        o = row["open_s"]
        assert isinstance(m, dict) and isinstance(o, dict)
        lines.append(
            f"| {row['model']} | {row['input']} | {m['in-process']:.3f} | {m['child, wall']:.3f} "
            f"| {m['child, own']:.3f} | {row['pipe_ms']:.3f} | {row['own_over_in_process']:.3f} "
            f"| {o['child']:.2f} / {o['idle child']:.2f} / {o['in-process']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--models", default="magika_v3_3,ppocrv4_det")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    start = os.getloadavg()[0]
    rows = [measure(args.zoo / name, args.rounds) for name in args.models.split(",")]
    end = os.getloadavg()[0]
    command = f"bench/openvino_child.py --models {args.models} --rounds {args.rounds}"
    text = _markdown(rows, (start, end), command)
    print(text)
    if not args.no_write:
        write_section("openvino_child", text, rows)


if __name__ == "__main__":
    main()
