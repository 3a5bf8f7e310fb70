"""A cost model of onnxruntime's CPU provider: how long a model is predicted to run, without timing it.

``--mode auto`` must give the same model for the same inputs on a busy machine and an idle one, so
it cannot choose by wall-clock time. It chooses by this prediction instead.

The prediction is made on the graph onnxruntime really runs, not on quantcli's plan: the model is
loaded with onnxruntime's own optimizations (its QDQ fusion, layout transforms and operator
fusions), run once on one sample with onnxruntime's profiler on, and the profiler's record of that
run gives every kernel that ran with its exact input and output shapes. The profiler's durations
are ignored: only what ran, and on what shapes, is used. So a Q/DQ pair onnxruntime did not fuse is
counted as the QuantizeLinear and DequantizeLinear kernels that run, and a fused QLinearConv as
one integer kernel, by the runtime's own decision rather than by a copy of its rules.

Each kernel costs ``overhead + ns_per_unit[op] * work``, where work is multiply-accumulates for
convolution, matrix-product and recurrent kernels and elements for everything else
(:func:`kernel_work`). The coefficients are data (``quantcli/data/ort_cpu_costs.json``), fitted by
``bench/cost_model.py`` on per-kernel profiles of the bench models on one thread; that script
also checks that the predicted ranking of candidates agrees with measured latency.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from quantcli.errors import ModelLoadError

__all__ = [
    "INTEGER_KERNELS",
    "CostModel",
    "Kernel",
    "Prediction",
    "constant_inputs",
    "default_cost_model",
    "kernel_work",
    "profile_kernels",
]

# Operators that multiply-accumulate, in every form onnxruntime runs them (float, fused, integer).
_CONV = {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "ConvInteger", "QLinearConv"}
_MATMUL = {
    "MatMul",
    "FusedMatMul",
    "Gemm",
    "FusedGemm",
    "QGemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
    "MatMulNBits",
}
_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
# The cost key suffix of a float kernel fed a dequantized weight (see Kernel.cost_key).
_DQ_WEIGHT = "/dq-weight"
_MAC_OPS = _CONV | _MATMUL | _RECURRENT | {"ConvTranspose"}
# Kernels whose multiply-accumulates run on integers: the share of MACs in these is how much of
# the heavy compute the quantized model moved off float.
INTEGER_KERNELS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "QGemm",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
        "DynamicQuantizeLSTM",
    }
)
# onnxruntime names a kernel after the node it came from, plus "_token_N" when a transformer
# rewrote that node (a fusion, a layout change).
_TOKEN = re.compile(r"_token_\d+$")

Dims = tuple[int, ...]


@dataclass(frozen=True)
class Kernel:
    """One kernel onnxruntime ran: its operator and the shapes of its inputs and outputs.

    onnxruntime's profile leaves out weights it pre-packed, so ``source_op`` and ``weights`` come
    from the node of the written model the kernel is named after: its op type and the dimensions
    of its constant inputs (None for an input computed at run time), read through a
    DequantizeLinear for quantized weights. ``duration_us`` is the profiler's median time, kept
    for ``bench/cost_model.py`` to fit the coefficients with; :meth:`CostModel.predict` never
    reads it, so a prediction does not depend on how busy the machine was.
    """

    op_type: str
    inputs: tuple[Dims, ...]
    outputs: tuple[Dims, ...]
    source_op: str = ""
    weights: tuple[Dims | None, ...] = ()
    # The weight reaches a float kernel through a DequantizeLinear (weight-only): onnxruntime does
    # not fold it, so the kernel gets a fresh float weight every run and cannot pre-pack it.
    dequantized_weight: bool = False
    duration_us: float = 0.0

    @property
    def cost_key(self) -> str:
        """The cost table's entry for this kernel."""
        if self.dequantized_weight and self.op_type not in INTEGER_KERNELS and self.op_type in _MAC_OPS:
            return f"{self.op_type}{_DQ_WEIGHT}"
        return self.op_type

    def weight(self, index: int) -> Dims | None:
        return self.weights[index] if index < len(self.weights) else None


def _elements(shape: Dims) -> int:
    return math.prod(shape) if shape else 1


def kernel_work(kernel: Kernel) -> tuple[int, bool]:
    """(work units, whether they are multiply-accumulates) for one kernel.

    Convolutions: output elements x the weight's elements per output channel. Transposed
    convolutions: input elements x the same. Matrix products: output elements x the reduction
    length. Recurrent kernels: steps x batch x (input and recurrent weight elements). Anything
    else: the largest of its tensors, in elements.
    """
    op = kernel.source_op or kernel.op_type
    ins, outs = kernel.inputs, kernel.outputs
    # A model written with QLinearConv nodes (QOperator format) holds the weight at input 3.
    weight = kernel.weight(3 if kernel.source_op == "QLinearConv" else 1)
    if weight is None and len(ins) > 1 and len(ins[1]) >= 3:
        weight = ins[1]  # a kernel renamed by a layout transform still lists its weight
    if op in _CONV and weight is not None and outs:
        return _elements(outs[0]) * _elements(weight[1:]), True
    if op == "ConvTranspose" and weight is not None and ins:
        return _elements(ins[0]) * _elements(weight[1:]), True
    if op in _MATMUL and ins and ins[0] and outs:
        return _elements(outs[0]) * ins[0][-1], True
    recurrent = kernel.weight(2)
    if op in _RECURRENT and weight is not None and recurrent is not None and ins and len(ins[0]) == 3:
        steps, batch = ins[0][0], ins[0][1]
        return steps * batch * (_elements(weight) + _elements(recurrent)), True
    return max((_elements(s) for s in (*ins, *outs)), default=1), kernel.op_type in _MAC_OPS


def _shapes(entries: list[dict[str, list[int]]]) -> tuple[Dims, ...]:
    # One {dtype: shape} entry per input or output the kernel saw.
    return tuple(tuple(int(d) for d in next(iter(entry.values()))) for entry in entries if entry)


@dataclass(frozen=True)
class _Source:
    op_type: str
    weights: tuple[Dims | None, ...]
    dequantized: bool  # its weight (input 1) is a DequantizeLinear of a constant


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it (If branches, Loop and Scan bodies), outer first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for inner in attribute.graphs:
                yield from _graphs(inner)


def constant_inputs(model: onnx.ModelProto) -> dict[str, _Source]:
    """Every node's op type and the dimensions of its constant inputs (through a
    DequantizeLinear of a constant), by node name, subgraphs' nodes included (onnxruntime
    profiles the kernels a branch runs under their own names); from the graph alone, no
    weight is read."""
    graphs = list(_graphs(model.graph))
    dims: dict[str, Dims] = {i.name: tuple(i.dims) for g in graphs for i in g.initializer}
    nodes = [node for g in graphs for node in g.node]
    dequantized: set[str] = set()
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in dims:
            dims[node.output[0]] = dims[node.input[0]]
            dequantized.add(node.output[0])
    return {
        n.name: _Source(
            n.op_type, tuple(dims.get(i) for i in n.input), len(n.input) > 1 and n.input[1] in dequantized
        )
        for n in nodes
    }


def profile_kernels(
    model: Path | onnx.ModelProto,
    feed: Mapping[str, np.ndarray],
    *,
    data_folder: Path | None = None,
    runs: int = 1,
) -> tuple[Kernel, ...]:
    """The kernels onnxruntime runs for ``model`` (a file, or a protobuf whose external data
    lives in ``data_folder``) on one ``feed``, in order.

    The session uses onnxruntime's default (full) graph optimization on one thread, as a user's
    session would; the profile is written to a private temporary folder and removed. With
    ``runs`` > 1 the model runs that often and each kernel's duration is the median.
    """
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, Path) else model
    sources = constant_inputs(proto)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="quantcli-profile-") as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # its failures arrive as exceptions; no log lines on stderr
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "run")
        if data_folder is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(data_folder)
            )
        try:
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"onnxruntime cannot load the model ({first_line})") from exc
        try:
            for _ in range(runs):
                session.run(None, dict(feed))
        except Exception as exc:  # the model fails on this input: the user's model or data
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                f"onnxruntime cannot run the model on the first sample ({first_line})"
            ) from exc
        events = json.loads(Path(session.end_profiling()).read_text())
    # One event per kernel per run, keyed by its name; the first run fixes the order.
    seen: dict[str, Kernel] = {}
    durations: dict[str, list[float]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        durations.setdefault(name, []).append(float(event.get("dur", 0.0)))
        if name not in seen:
            node = _TOKEN.sub("", name.removesuffix("_kernel_time"))
            source = sources.get(node, _Source("", (), False))
            seen[name] = Kernel(
                op_type=str(args.get("op_name", "")),
                inputs=_shapes(args.get("input_type_shape", [])),
                outputs=_shapes(args.get("output_type_shape", [])),
                source_op=source.op_type,
                weights=source.weights,
                dequantized_weight=source.dequantized,
            )
    return tuple(replace(k, duration_us=float(np.median(durations[n]))) for n, k in seen.items())


@dataclass(frozen=True)
class Prediction:
    """A model's predicted single-thread run time and where it goes.

    ``integer_mac_share``: the share of its multiply-accumulates that run in integer kernels
    (0 for a float model; weight-only keeps it 0, since its DequantizeLinear feeds float kernels).
    ``unmodeled``: operators the cost table has no coefficient for (costed at the default).
    """

    ms: float
    integer_mac_share: float
    kernels: int
    unmodeled: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ms": round(self.ms, 4),
            "integer_mac_share": round(self.integer_mac_share, 4),
            "kernels": self.kernels,
            "unmodeled": list(self.unmodeled),
        }


@dataclass(frozen=True)
class CostModel:
    """Per-kernel costs: ``overhead_us`` per kernel plus ``ns_per_unit[key]`` per unit of work
    (key: :attr:`Kernel.cost_key`). A kernel the table has no entry for costs its family's
    default: float or integer multiply-accumulates, or elements."""

    runtime: str
    overhead_us: float
    ns_per_unit: Mapping[str, float]
    default_ns_per_element: float
    default_ns_per_mac: float
    default_ns_per_integer_mac: float
    default_ns_per_dq_weight_mac: float

    def rate(self, kernel: Kernel) -> float | None:
        """ns per unit of work, or None where the table has no entry for the kernel."""
        rate = self.ns_per_unit.get(kernel.cost_key)
        return self.ns_per_unit.get(kernel.op_type) if rate is None else rate

    def default_rate(self, kernel: Kernel, is_mac: bool) -> float:
        if not is_mac:
            return self.default_ns_per_element
        if kernel.op_type in INTEGER_KERNELS:
            return self.default_ns_per_integer_mac
        if kernel.cost_key.endswith(_DQ_WEIGHT):
            return self.default_ns_per_dq_weight_mac
        return self.default_ns_per_mac

    def predict(self, kernels: tuple[Kernel, ...]) -> Prediction:
        total_ns = 0.0
        macs = integer_macs = 0
        unmodeled: set[str] = set()
        for kernel in kernels:
            work, is_mac = kernel_work(kernel)
            rate = self.rate(kernel)
            if rate is None:
                unmodeled.add(kernel.cost_key)
                rate = self.default_rate(kernel, is_mac)
            total_ns += self.overhead_us * 1000.0 + rate * work
            if is_mac:
                macs += work
                integer_macs += work if kernel.op_type in INTEGER_KERNELS else 0
        return Prediction(
            ms=total_ns / 1e6,
            integer_mac_share=integer_macs / macs if macs else 0.0,
            kernels=len(kernels),
            unmodeled=tuple(sorted(unmodeled)),
        )

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> CostModel:
        return cls(
            runtime=str(entry["runtime"]),
            overhead_us=float(entry["overhead_us"]),
            ns_per_unit={str(k): float(v) for k, v in entry["ns_per_unit"].items()},
            default_ns_per_element=float(entry["default_ns_per_element"]),
            default_ns_per_mac=float(entry["default_ns_per_mac"]),
            default_ns_per_integer_mac=float(entry["default_ns_per_integer_mac"]),
            default_ns_per_dq_weight_mac=float(entry["default_ns_per_dq_weight_mac"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "overhead_us": self.overhead_us,
            "ns_per_unit": dict(sorted(self.ns_per_unit.items())),
            "default_ns_per_element": self.default_ns_per_element,
            "default_ns_per_mac": self.default_ns_per_mac,
            "default_ns_per_integer_mac": self.default_ns_per_integer_mac,
            "default_ns_per_dq_weight_mac": self.default_ns_per_dq_weight_mac,
        }


@cache
def default_cost_model() -> CostModel:
    """The coefficients fitted by ``bench/cost_model.py`` for onnxruntime's CPU provider."""
    text = resources.files("quantcli").joinpath("data/ort_cpu_costs.json").read_text(encoding="utf-8")
    return CostModel.from_dict(json.loads(text))
