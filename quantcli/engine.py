"""Running a model on the engine a target names: onnxruntime, or OpenVINO's CPU plugin.

Everything that runs a model to judge it (the check that a written model loads and runs,
fidelity and the accuracy gate, latency, ``--speed measured``, per-layer diagnosis, ``compare``)
holds a :class:`Session`: the interface onnxruntime's ``InferenceSession`` already has
(``get_inputs``, ``get_outputs``, ``run``), which :class:`OpenVINOSession` implements over a
compiled OpenVINO model. Which engine opens a session is data, :attr:`Target.engine
<quantcli.target.Target.engine>`, looked up in :data:`_OPENERS`; callers never branch on it.

Calibration (activation statistics), bias correction and the cost model's profile stay on
onnxruntime for every target: a float model's tensors are the same arithmetic on either engine,
OpenVINO would need the same graph exposure to return them, and the cost model is fitted on
onnxruntime's kernels.

OpenVINO sessions run in child processes (:mod:`quantcli.engine_process`): a crash of the
plugin is then one line and exit 1 (:class:`~quantcli.errors.EngineCrashError`), not the end of
quantcli, and they are fed one sample at a time (:func:`batch_size`), which keeps the plugin's
activation memory at one sample's.

OpenVINO is an optional dependency (``pip install 'quantcli[openvino]'``). Without it a target
that asks for it is checked on onnxruntime instead (:func:`engine_for`), and the report says so
(:func:`summary`); only what OpenVINO alone can answer (its timings) is refused (:func:`require`).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import onnx
import onnx.external_data_helper
import onnxruntime as ort

from quantcli.engine_process import Refusal, give_back, lease
from quantcli.errors import ConfigError, ModelLoadError
from quantcli.target import ORT_CPU, Engine, Target

__all__ = [
    "OPENVINO_PRECISION",
    "OPENVINO_TIMING_THREADS",
    "EngineSummary",
    "OpenVINOSession",
    "Session",
    "batch_size",
    "engine_for",
    "engine_name",
    "installed",
    "open_session",
    "require",
    "run_time_ms",
    "summary",
    "timing_session",
    "version",
]

logger = logging.getLogger(__name__)

# OpenVINO's float layers run in f32. The CPU plugin's default inference precision is bf16 on a
# CPU with AMX or AVX512-BF16 (docs/openvino.md, "First fact"): the float reference would then be
# a bf16 model, fidelity would count bf16's error as quantization's (magika: top-1 0.781 at the
# bf16 default, 0.938 at f32) and differ from one CPU to the next. Pinned, fp32 is fp32 everywhere.
OPENVINO_PRECISION = "f32"
# Timing runs at one inference thread and one stream (the latency hint), as bench/_openvino.py
# and docs/openvino.md measure; ``--threads`` overrides it.
OPENVINO_TIMING_THREADS = 1
_OPENVINO_DEVICE = "CPU"

_PACKAGES = {Engine.ONNXRUNTIME: "onnxruntime", Engine.OPENVINO: "openvino"}
_INSTALL = {Engine.OPENVINO: "pip install 'quantcli[openvino]'"}
_NAMES = {Engine.ONNXRUNTIME: "onnxruntime", Engine.OPENVINO: "OpenVINO"}
_PROVIDERS = {"CPUExecutionProvider": "CPU provider"}


class Port(Protocol):
    """An input or output of a session, by name (onnxruntime's ``NodeArg`` has one too)."""

    @property
    def name(self) -> str: ...


class Session(Protocol):
    """What every caller uses of a session: onnxruntime's ``InferenceSession`` interface."""

    def get_inputs(self) -> Sequence[Port]: ...

    def get_outputs(self) -> Sequence[Port]: ...

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]: ...


def installed(engine: Engine) -> bool:
    """Whether ``engine``'s package can be imported here. Found, not imported: OpenVINO runs in
    child processes (:class:`OpenVINOSession`), so this process never loads its libraries."""
    name = _PACKAGES[engine]
    if name in sys.modules:  # imported already, or hidden (None) as a test does
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def engine_for(target: Target) -> Engine:
    """The engine that runs models for ``target`` here: its own, or onnxruntime when that one is
    not installed (the report says so: :func:`summary`)."""
    return target.engine if installed(target.engine) else Engine.ONNXRUNTIME


def _missing(target: Target) -> str:
    engine = target.engine
    return f"the {_PACKAGES[engine]} package is not installed ({_INSTALL.get(engine, '')})"


def require(target: Target, asked: str) -> None:
    """Refuse ``asked`` (a flag or command that only ``target``'s engine can answer, such as
    timing on it) when that engine is not installed, with one line saying how to install it.

    Checking and fidelity fall back to onnxruntime instead (a user converting for OpenVINO on a
    machine without it still gets the placement, and a check that the model loads and runs the
    same arithmetic); a timing of onnxruntime would answer a question the user did not ask, and
    auto would choose by it: that is refused."""
    if not installed(target.engine):
        raise ConfigError(f"{asked} runs on {target.runtime}, but {_missing(target)}")


@dataclass(frozen=True)
class EngineSummary:
    """The engine that checked, evaluated and timed a model, as the report names it."""

    name: str  # Engine value
    runtime: str  # "OpenVINO's CPU plugin"
    precision: str  # the float layers' inference precision ("" : the engine's only one)
    timing_threads: int | None  # threads timing runs at (None: the engine's default)
    note: str = ""  # why it is not the target's engine, when it is not

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "precision": self.precision,
            "timing_threads": self.timing_threads,
            "note": self.note,
        }

    @property
    def line(self) -> str:
        """One line for a terminal."""
        facts = [f for f in (self.precision and f"{self.precision} float layers",) if f]
        if self.timing_threads is not None:
            facts.append(f"{self.timing_threads} thread{'s' * (self.timing_threads > 1)} when timing")
        return (
            self.runtime
            + (f" ({', '.join(facts)})" if facts else "")
            + (f"; {self.note}" if self.note else "")
        )


def summary(target: Target, threads: int | None = None, *, warn: bool = True) -> EngineSummary:
    """What ran (or will run) ``target``'s checks; ``warn``: log the fallback note (one stderr
    line) when the target's engine is not installed."""
    engine = engine_for(target)
    note = ""
    if engine is not target.engine:
        note = f"checking, fidelity and timing run on onnxruntime, not {target.runtime}: {_missing(target)}"
        if warn:
            logger.warning("%s", note)
    if engine is Engine.OPENVINO:
        timing = threads if threads is not None else OPENVINO_TIMING_THREADS
        return EngineSummary(engine.value, target.runtime, OPENVINO_PRECISION, timing, note)
    # onnxruntime on the target's providers: TensorRT's model is checked on the CPU provider.
    providers = " / ".join(_PROVIDERS.get(p, p) for p in target.check_providers)
    return EngineSummary(engine.value, f"onnxruntime's {providers}", "", threads, note)


def _first_line(exc: BaseException) -> str:
    """The line of an engine's exception that says what went wrong: OpenVINO's begin with
    "Exception from src/...cpp:N:" locations, onnxruntime's with the reason."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(exc).__name__])[0]


@dataclass(frozen=True)
class _Opening:
    """What a session is opened on: a protobuf (external data in ``data_folder``) or a file."""

    model: onnx.ModelProto | Path
    threads: int | None
    data_folder: Path | None
    for_timing: bool
    target: Target
    label: str  # the model as an error names it: its file, or what the caller calls it


def _onnxruntime(opening: _Opening) -> Session:
    """An onnxruntime session, quiet unless something fails, on the target's providers.

    A protobuf's external data locations are resolved in ``data_folder`` (onnxruntime reads the
    files itself, so weights are never copied through Python).

    onnxruntime's memory arena keeps the largest activations a session ever held, for as long
    as the session lives; auto holds a session per candidate, so with the arena on, PP-OCRv4 det
    (640x640, batches of 16) grew past 17 GB. Sessions are opened without it, freeing each run's
    activations, except ``for_timing``: a timed session runs as a user's would.
    """
    model, threads, data_folder, for_timing = (
        opening.model,
        opening.threads,
        opening.data_folder,
        opening.for_timing,
    )
    options = ort.SessionOptions()
    # onnxruntime's own log lines (coloured, multi-line) must not precede quantcli's one-line
    # error: its refusals arrive as exceptions, which carry the same text.
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = for_timing
    if threads is not None:
        options.intra_op_num_threads = threads
    if data_folder is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(data_folder)
        )
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    try:
        target = opening.target
        providers = target.timing_providers if for_timing else target.check_providers
        session: Session = ort.InferenceSession(source, options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"onnxruntime cannot load the model ({first_line})") from exc
    return session


class _Port(NamedTuple):
    name: str


def _openvino_config(threads: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


# What each stage of a refusal says (the same lines OpenVINO's exceptions gave in-process).
_REFUSED = {"read": "OpenVINO cannot read the model", "compile": "OpenVINO cannot compile the model"}


class OpenVINOSession:
    """A model compiled for OpenVINO's CPU plugin, run as an onnxruntime session is.

    The model is compiled and run in a child process of its own (:mod:`quantcli.engine_process`
    says why and what it costs), from its file when it has one. Inputs and outputs are named as
    the ONNX graph names them; ``run`` returns copies in the order asked for, and
    :attr:`last_run_ms` is the time the last run took in the child (``infer`` and the copies),
    without the pipe.
    ``label`` names the model when OpenVINO crashes on it.
    """

    def __init__(
        self,
        source: str | bytes,
        ports: tuple[Sequence[str], Sequence[str]],
        threads: int | None,
        label: str = "",
    ) -> None:
        self._source, self._label = source, label
        self._inputs, self._outputs = tuple(ports[0]), tuple(ports[1])
        self.last_run_ms = 0.0
        self._child = lease(label)
        try:
            self._child.ask(("open", source, list(self._outputs), _openvino_config(threads)), "compiling")
        except Refusal as exc:
            give_back(self._child)
            raise ModelLoadError(f"{_REFUSED[exc.stage]} ({_first_line(exc)})") from exc
        # Collected or closed, the session gives its child back (engine_process.lease).
        self._release = weakref.finalize(self, give_back, self._child)

    def get_inputs(self) -> list[_Port]:
        return [_Port(name) for name in self._inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(name) for name in self._outputs]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]:
        names = list(output_names) if output_names is not None else list(self._outputs)
        try:
            outputs, self.last_run_ms = self._child.ask(("run", names, dict(input_feed)), "running")
        except Refusal as exc:
            if exc.stage == "port":
                raise RuntimeError(f"OpenVINO's compiled model has no output '{exc}'") from exc
            raise RuntimeError(f"OpenVINO cannot run the model ({_first_line(exc)})") from exc
        return list(outputs)

    def close(self) -> None:
        """Free the model now (it is freed anyway when the session is collected)."""
        self._release()

    @property
    def inference_threads(self) -> int:
        """The threads one inference runs on, as the plugin compiled it."""
        return int(self._child.ask(("get", "INFERENCE_NUM_THREADS"), "asking"))

    @property
    def inference_precision(self) -> str:
        """The precision the plugin runs float layers in ("f32": OPENVINO_PRECISION)."""
        return str(self._child.ask(("get", "INFERENCE_PRECISION_HINT"), "asking"))

    def for_timing(self, threads: int | None = None) -> OpenVINOSession:
        """The same model compiled as timing runs it (one inference thread unless ``threads``)."""
        count = threads if threads is not None else OPENVINO_TIMING_THREADS
        return OpenVINOSession(self._source, (self._inputs, self._outputs), count, self._label)


def run_time_ms(session: Session, measured_ms: float) -> float:
    """The time ``session``'s last run took: on OpenVINO the child's own (it times ``infer`` and
    the copies, what one run cost in-process; PP-OCRv4 det's pipe adds 15 ms to 90 ms), else
    ``measured_ms``, what the caller timed around ``run``."""
    return session.last_run_ms if isinstance(session, OpenVINOSession) else measured_ms


def batch_size(runs_on: object, asked: int) -> int:
    """How many samples to feed a session (or every session of a Target) at once when ``asked``
    would be fed to onnxruntime: one on OpenVINO. Its CPU plugin keeps the activation memory of
    the largest batch a compiled model has run until the model is destroyed (onnxruntime,
    without its arena, frees it after each run): PP-OCRv4 det at 640x640 held 1.06 GB after a
    batch of 16 and 0.10 GB after single samples, which ran 16 samples in 2.86 s against 3.14 s,
    with the same output bits (docs/openvino.md, "Memory")."""
    on_openvino = isinstance(runs_on, OpenVINOSession) or (
        isinstance(runs_on, Target) and engine_for(runs_on) is Engine.OPENVINO
    )
    return 1 if on_openvino else asked


def _interface(proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v.name for v in proto.graph.input if v.name not in initializers]
    return inputs, [v.name for v in proto.graph.output]


def _inline(proto: onnx.ModelProto, data_folder: Path | None) -> bytes:
    """The model's bytes with its external weights read in: OpenVINO reads a model from memory
    with no folder to resolve external data locations in."""
    if data_folder is None:  # set only for a model with external data (graph.io.external_folder)
        return bytes(proto.SerializeToString())
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    onnx.external_data_helper.load_external_data_for_model(copy, str(data_folder))
    if copy.ByteSize() > 2**31 - 1:
        raise ModelLoadError("OpenVINO: a model of more than 2 GiB is checked from its file only")
    return bytes(copy.SerializeToString())


def _openvino(opening: _Opening) -> Session:
    """A session on OpenVINO's CPU plugin (it has no providers to choose): f32 float layers;
    ``for_timing`` at one thread unless told. A file is compiled from its path, so its bytes are
    read by OpenVINO alone."""
    model, threads = opening.model, opening.threads
    if isinstance(model, Path):
        proto = onnx.load(str(model), load_external_data=False)
        source: str | bytes = str(model)
    else:
        proto, source = model, _inline(model, opening.data_folder)
    count = threads if threads is not None or not opening.for_timing else OPENVINO_TIMING_THREADS
    return OpenVINOSession(source, _interface(proto), count, opening.label)


_Opener = Callable[[_Opening], Session]
_OPENERS: Mapping[Engine, _Opener] = {Engine.ONNXRUNTIME: _onnxruntime, Engine.OPENVINO: _openvino}


def open_session(
    model: onnx.ModelProto | Path,
    threads: int | None = None,
    *,
    data_folder: Path | None = None,
    for_timing: bool = False,
    target: Target = ORT_CPU,
    label: str | None = None,
) -> Session:
    """A session for a protobuf or a model file on ``target``'s engine (:func:`engine_for`), for
    checking (or for timing, ``for_timing``). Raises :class:`ModelLoadError` with the engine's
    first line when it refuses the model, :class:`EngineCrashError` naming ``label`` (default: the
    file, if ``model`` is one) when it crashes on it."""
    if label is None:
        label = str(model) if isinstance(model, Path) else ""
    opening = _Opening(model, threads, data_folder, for_timing, target, label)
    return _OPENERS[engine_for(target)](opening)


def timing_session(session: Session) -> Session:
    """``session`` as timing runs it: an OpenVINO model recompiled at one inference thread; an
    onnxruntime session as it is (its checking session is what onnxruntime times)."""
    return session.for_timing() if isinstance(session, OpenVINOSession) else session


def engine_name(target: Target) -> str:
    """The engine's name as an error message says it ("onnxruntime", "OpenVINO")."""
    return _NAMES[engine_for(target)]


def version(engine: Engine) -> str:
    """The installed version of ``engine``'s package."""
    try:
        return metadata.version(_PACKAGES[engine])
    except metadata.PackageNotFoundError:
        return "not installed"
