"""One place that writes bench results: each bench script owns a section.

A script calls :func:`write_section` with its name, a Markdown body and the raw rows; the rows go
to ``bench/results/<name>.json``, the body to ``bench/results/<name>.md``, and ``bench/RESULTS.md``
is rebuilt from every section present, in a fixed order, so one script's rerun never erases
another's figures.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import onnxruntime as ort

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

# The order sections appear in RESULTS.md; unknown sections follow, sorted by name.
ORDER = [
    "compare",
    "compare_misses",
    "light_sweep",
    "evidence",
    "branches",
    "modes",
    "auto",
    "cost_model",
    "calibration",
    "sample_speed",
    "startup",
    "large_model",
    "large_weight_ops",
    "scale",
    "scale_quiet",
    "tensorrt_fidelity",
    "tensorrt",
    "targets",
    "targets_rerun",
    "targets_quiet",
    "targets_others",
    "openvino_convs",
    "openvino_memory",
    "openvino_child",
    "int4",
    "int4_mixed",
    "int4_decoder",
    "int4_latency",
]

HEADER = """# quantcli benchmark results

Every figure here was produced by a script under `bench/`; rerun them all with `make bench-all`
(the zoo needs `make zoo` once; it installs bench-only packages into `.benchenv`).
Each section names the script and command that wrote it. Machines here are shared and noisy:
compare the ratios measured side by side in one run, not absolute times across sections.
"""


def machine() -> str:
    """One line naming the software and hardware a section was measured on."""
    return (
        f"onnxruntime {ort.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    )


def write_section(name: str, markdown: str, rows: Any) -> Path:
    """Store one script's results and rebuild bench/RESULTS.md from every stored section."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    present = {p.stem for p in RESULTS.glob("*.md")}
    ordered = [n for n in ORDER if n in present] + sorted(present - set(ORDER))
    body = [HEADER] + [(RESULTS / f"{n}.md").read_text() for n in ordered]
    target = BENCH / "RESULTS.md"
    target.write_text("\n".join(body))
    return target
