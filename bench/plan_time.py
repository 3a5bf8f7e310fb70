"""How long plan.select takes on the bench zoo, every concrete mode, best of several rounds.

Planning runs once per candidate mode (and per fallback trial), so it should stay a small part
of a conversion. To compare two checkouts, run this script with each on PYTHONPATH:

    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/plan_time.py --zoo bench/zoo
    .venv/bin/python bench/plan_time.py --zoo bench/zoo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import quantcli
from quantcli.config import QuantConfig, QuantMode
from quantcli.inputs import prepare
from quantcli.plan import select

MODES = (QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zoo", type=Path, default=Path("bench/zoo"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"quantcli from {Path(quantcli.__file__).parent}")
    total = 0.0
    for folder in sorted(p for p in args.zoo.iterdir() if (p / "model.onnx").exists()):
        model = prepare(folder / "model.onnx").model
        best = float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for mode in MODES:
                select(model, QuantConfig(), mode=mode)
            best = min(best, time.perf_counter() - start)
        total += best
        print(f"{folder.name:20s} {len(model.graph):5d} nodes  {len(MODES)} modes {best * 1000:7.1f} ms")
    print(f"{'total':20s} {'':11s} {total * 1000:15.1f} ms")


if __name__ == "__main__":
    main()
