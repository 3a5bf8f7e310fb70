"""``inspect``: a model's interface, size and ops, and the plan ``convert`` would follow for it.

Nothing is run and nothing is written: the summary is read from the model (and a calibration
file's recorded decision), so inspecting a large model costs its load and one plan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.calibration.data import InputSpec, model_inputs
from quantcli.choice import recorded_mode
from quantcli.config import QuantConfig, QuantMode
from quantcli.engine import EngineSummary, summary
from quantcli.inputs import prepare as _prepare
from quantcli.inputs import read_calibration_for as _read_calibration_for
from quantcli.plan import NodeRole, QuantPlan, select, target_of

__all__ = ["ModelSummary", "inspect_model"]


@dataclass(frozen=True)
class ModelSummary:
    """What ``inspect`` shows: the model's interface, size, ops and the quantization plan."""

    path: str
    size_bytes: int
    opset: int
    inputs: tuple[InputSpec, ...]
    outputs: tuple[tuple[str, str, str], ...]
    parameters: int
    op_types: dict[str, int]
    plan: QuantPlan
    mode_reason: str = ""
    target: str = "ort-cpu"
    # What convert would check, evaluate and time the model on for this target.
    engine: EngineSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON values (``inspect --json``)."""
        decisions = self.plan.decisions
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "parameters": self.parameters,
            "inputs": [{"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)} for s in self.inputs],
            "outputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in self.outputs],
            "op_types": self.op_types,
            "target": self.target,
            "engine": None if self.engine is None else self.engine.to_dict(),
            "mode": self.plan.mode.value,
            "mode_reason": self.mode_reason,
            "nodes": [asdict(d) | {"role": d.role.value} for d in decisions],
            "quantized_nodes": sum(d.role is not NodeRole.FLOAT for d in decisions),
        }


def inspect_model(
    model_path: Path, config: QuantConfig | None = None, *, calibration: Path | None = None
) -> ModelSummary:
    """Describe a model and the plan :func:`quantcli.quantize` would follow for it: in the mode
    asked for, or the one ``calibration`` records. Auto with no recorded decision decides by
    measuring, which inspect does not do: it shows the static plan and says so."""
    config = config or QuantConfig()
    loaded = _prepare(model_path)
    model = loaded.model
    recorded = (calibration, _read_calibration_for(loaded, calibration)) if calibration is not None else None
    mode, mode_reason, kept_float = recorded_mode(model, config, recorded)
    if mode is QuantMode.AUTO:
        mode = QuantMode.STATIC
        mode_reason = "auto decides by measuring every mode (convert or calibrate); this is static's plan"
    outputs = tuple(
        (
            str(v.name),
            np.dtype(v.dtype.numpy()).name if v.dtype is not None else "?",
            "[" + ",".join(str(d) if isinstance(d, int) else "?" for d in v.shape.dims) + "]"
            if v.shape
            else "[?]",
        )
        for v in model.graph.outputs
    )
    parameters = sum(
        int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None
    )
    return ModelSummary(
        path=str(model_path),
        size_bytes=loaded.size_bytes,
        opset=loaded.opset,
        inputs=model_inputs(model),
        outputs=outputs,
        parameters=parameters,
        op_types=dict(sorted(Counter(n.op_type for n in model.graph).items())),
        plan=select(model, config, kept_float, mode=mode),
        mode_reason=mode_reason,
        target=config.target.value,
        engine=summary(target_of(config), warn=False),
    )
