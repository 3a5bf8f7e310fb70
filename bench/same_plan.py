"""Did a change alter any plan? Plan every test, sample and bench-zoo model in every mode and compare.

``plan.select`` decides what bench/same_output.py's conversions write; this checks the decisions
themselves, field by field, for more models and settings than a conversion could afford (every
concrete mode and auto's default, per-channel and per-tensor, uint8 and int8 activations, a
node kept float), in seconds. A decision's ``cause`` and ``overrides`` (provenance added after
main's recording) are left out of the comparison.

    python bench/same_plan.py --zoo bench/zoo --record bench/_work/plans.json
    ... change the code ...
    python bench/same_plan.py --zoo bench/zoo --check bench/_work/plans.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import models  # noqa: E402  (the test suite's tiny models)

from quantcli.config import ActivationType, QuantConfig, QuantMode  # noqa: E402
from quantcli.inputs import prepare  # noqa: E402
from quantcli.plan import QuantPlan, candidate_tensors, select  # noqa: E402

CONFIGS = {
    "default": QuantConfig(),
    "per-tensor": QuantConfig(per_channel=False),
    "int8": QuantConfig(activation_type=ActivationType.INT8),
}
MODES = (None, QuantMode.STATIC, QuantMode.MIXED, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)
TEST_MODELS = {
    "tiny_cnn": models.tiny_cnn,
    "tiny_transformer": models.tiny_transformer,
    "shared_weight_mlp": models.shared_weight_mlp,
    "hard_swish_conv": models.hard_swish_conv,
    "hard_swish_tail": lambda: models.hard_swish_conv(tail_conv=True),
    "reduce_mean_classifier": models.reduce_mean_classifier,
    "single_conv": models.single_conv,
    "two_convs_middle_output": models.two_convs_middle_output,
    "custom_op_model": models.custom_op_model,
    "outlier_mlp": models.outlier_mlp,
    "stacked_lstms": models.stacked_lstms,
    "conv_transpose_upsampler": models.conv_transpose_upsampler,
    "einsum_constant": models.einsum_constant,
    "crnn": models.crnn,
    "gemm_trans_b": lambda: models.gemm_head(trans_b=1),
    "gemm_scaled": lambda: models.gemm_head(trans_b=0, alpha=0.5, beta=2.0),
    **{f"recurrent_{op}": (lambda op=op: models.recurrent(op)) for op in ("LSTM", "GRU", "RNN")},
}


def _plain(plan: QuantPlan) -> Any:
    document = json.loads(json.dumps(dataclasses.asdict(plan), default=str))
    for decision in document["decisions"]:
        decision.pop("cause", None)
        decision.pop("overrides", None)
    return document


def _paths(zoo: Path | None, scratch: Path) -> dict[str, Path]:
    paths = {}
    for name, build in TEST_MODELS.items():
        paths[name] = scratch / f"{name}.onnx"
        onnx.save(build(), paths[name])
    folders = sorted((ROOT / "sample_models").iterdir()) + (sorted(zoo.iterdir()) if zoo else [])
    paths |= {folder.name: folder / "model.onnx" for folder in folders if (folder / "model.onnx").exists()}
    return paths


def _plans(name: str, path: Path) -> dict[str, Any]:
    model = prepare(path).model
    plans: dict[str, Any] = {f"{name}/candidates": list(candidate_tensors(model))}
    for label, config in CONFIGS.items():
        for mode in MODES:
            plans[f"{name}/{label}/{mode or 'auto'}"] = _plain(select(model, config, mode=mode))
    first = next((n.name for n in model.graph if n.op_type in ("Conv", "MatMul", "Gemm")), None)
    if first:
        kept = select(model, QuantConfig(), {first: "float: kept by same_plan"}, mode=QuantMode.STATIC)
        plans[f"{name}/kept-float"] = _plain(kept)
    return plans


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", type=Path, help="write the plans to this file")
    action.add_argument("--check", type=Path, help="compare with the plans in this file")
    parser.add_argument("--zoo", type=Path, help="also plan every model under this bench-zoo folder")
    args = parser.parse_args()
    plans: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in _paths(args.zoo, Path(scratch)).items():
            plans |= _plans(name, path)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(plans, sort_keys=True))
        print(f"{len(plans)} plans recorded")
        return 0
    recorded = json.loads(args.check.read_text())
    changed = sorted(key for key in plans if key in recorded and recorded[key] != plans[key])
    for key in changed:
        print(f"CHANGED {key}")
    compared = sum(key in recorded for key in plans)
    print(f"{compared - len(changed)} of {compared} plans unchanged ({len(plans) - compared} not recorded)")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
