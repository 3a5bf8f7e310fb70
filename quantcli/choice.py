"""Which mode a model is quantized in, and why: the decision ``--mode auto`` makes.

Auto measures its candidates with onnxruntime, so its pick can depend on timings. To keep
``convert`` deterministic where it runs unattended, the decision can be made once by ``calibrate``
and recorded in the calibration file (:class:`ModeChoice`); ``convert --calibration FILE`` then
replays it without timing anything. When auto has nothing to measure on, it follows a fixed rule
(:func:`unmeasured_mode`) instead of guessing from timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantcli.config import QuantMode

__all__ = ["LATENCY_TIE", "ModeChoice", "unmeasured_mode"]

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
