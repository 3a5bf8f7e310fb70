"""Which mode a model is quantized in, and why: the decision ``--mode auto`` makes.

Auto measures its candidates with onnxruntime, so its pick can depend on timings. To keep
``convert`` deterministic where it runs unattended, the decision can be made once by ``calibrate``
and recorded in the calibration file (:class:`ModeChoice`); ``convert --calibration FILE`` then
replays it without timing anything. When auto has nothing to measure on, it follows a fixed rule
(:func:`unmeasured_mode`) instead of guessing from timings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from quantcli.config import QuantConfig, QuantMode
from quantcli.modes import auto_candidates, strategy
from quantcli.plan import NodeRole, QuantPlan, select, target_of

if TYPE_CHECKING:
    from quantcli.calibration.file import CalibrationFile

__all__ = [
    "LATENCY_TIE",
    "ModeChoice",
    "candidate_plans",
    "recorded_config",
    "recorded_mode",
    "roles",
    "unmeasured_mode",
]


# Candidates whose median latencies are within this factor of the fastest count as equally fast
# (shared machines vary by a few percent run to run); among those the most faithful wins.
LATENCY_TIE = 1.05


@dataclass(frozen=True)
class ModeChoice:
    """A mode decision as the calibration file records it.

    ``roles`` is every node's fate in that mode (integer, dynamic, weight-only, carry, folded,
    float); ``candidates`` what auto measured, as the report lists them (empty when the mode was
    given rather than chosen).
    """

    mode: QuantMode
    reason: str
    roles: dict[str, str] = field(default_factory=dict)
    candidates: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "reason": self.reason,
            "roles": dict(sorted(self.roles.items())),
            "candidates": list(self.candidates),
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ModeChoice:
        """Raises KeyError, TypeError or ValueError on a malformed entry."""
        mode = QuantMode(entry["mode"])
        if mode is QuantMode.AUTO:
            raise ValueError("a recorded mode must be a concrete mode, not auto")
        roles = entry["roles"]
        candidates = entry["candidates"]
        if not isinstance(roles, dict) or not isinstance(candidates, list):
            raise TypeError("roles must be an object and candidates a list")
        return cls(
            mode=mode,
            reason=str(entry["reason"]),
            roles={str(k): str(v) for k, v in roles.items()},
            candidates=tuple(dict(c) for c in candidates),
        )


def unmeasured_mode(*, has_ranges: bool, dynamic_applies: bool) -> tuple[QuantMode, str]:
    """Auto's mode when no evaluation data lets it compare candidates.

    With calibration ranges the user asked for activation quantization: static, the mode that
    integer kernels run. Without any data, dynamic when the model has MatMul/Gemm weights for it
    (it needs no calibration), else weight-only (the only mode left that shrinks the model).
    """
    if has_ranges:
        return (
            QuantMode.STATIC,
            "auto had no evaluation data to compare modes on; static uses the calibration given",
        )
    if dynamic_applies:
        return QuantMode.DYNAMIC, "auto had no data; dynamic is the mode that needs no calibration"
    return (
        QuantMode.WEIGHT_ONLY,
        "auto had no data and the model has no MatMul/Gemm for dynamic mode; weight-only shrinks it "
        "without calibration (give --data to let auto measure static)",
    )


def recorded_mode(
    model: ir.Model, config: QuantConfig, recorded: tuple[Path, CalibrationFile] | None
) -> tuple[QuantMode, str, dict[str, str]]:
    """Auto replays the mode decision a calibration file records; any other mode is the user's.

    A replay also leaves float the nodes the decision left float beyond the plan's rules (the
    cost model's unprofitable Convs, fallback's returns), by their recorded roles, so it writes the
    model the decision measured. Returns the mode, its reason and those nodes.
    """
    if config.mode is not QuantMode.AUTO:
        return config.mode, f"{config.mode} was asked for", {}
    if recorded is None or recorded[1].choice is None:
        return config.mode, "", {}  # decided later, by measuring or by rule
    path, choice = recorded[0], recorded[1].choice
    ruled = {d.name: d.role for d in select(model, config, mode=choice.mode).decisions}
    kept = {
        name: f"float: left float by the decision recorded in {path}"
        for name, role in sorted(choice.roles.items())
        if role == NodeRole.FLOAT.value and ruled.get(name, NodeRole.FLOAT) is not NodeRole.FLOAT
    }
    return choice.mode, f"auto: the decision recorded in {path} ({choice.reason})", kept


def candidate_plans(
    model: ir.Model,
    config: QuantConfig,
    mode: QuantMode,
    *,
    has_ranges: bool = True,
    kept_float: Mapping[str, str] | None = None,
) -> list[QuantPlan]:
    """The plans to build: ``mode``'s, or for auto one per registered mode it may build
    (:func:`quantcli.modes.auto_candidates`), each distinct and changing the model."""
    strategies = auto_candidates(has_ranges=has_ranges) if mode is QuantMode.AUTO else (strategy(mode),)
    if mode is QuantMode.AUTO:  # only the modes the target runs (--target tensorrt: static)
        strategies = tuple(s for s in strategies if target_of(config).runs(s.mode))
    plans: list[QuantPlan] = []
    seen: set[tuple[str, ...]] = set()
    for each in strategies:
        plan = select(model, config, kept_float, mode=each)
        signature = tuple(d.role.value for d in plan.decisions)
        if not each.changes(plan) or signature in seen:
            continue  # e.g. mixed is static again on a model without MatMul
        seen.add(signature)
        plans.append(plan)
    return plans


def roles(plan: QuantPlan) -> dict[str, str]:
    """Every node's fate in ``plan``, as a decision records it."""
    return {d.name: d.role.value for d in plan.decisions}


def recorded_config(config: QuantConfig, mode: QuantMode) -> QuantConfig:
    """The settings a report records: those that reproduce its model, so in the mode settled
    before any candidate was built (a recorded decision, auto's rule without data)."""
    return replace(config, mode=mode)
