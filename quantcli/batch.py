"""Many models converted in one run, each with its own settings, none stopping the others.

A batch is a list of :class:`BatchJob` (from paths, a folder, or a TOML manifest), each converted
by :func:`convert_job` exactly as ``convert`` would (model and report moved into place together,
or neither), in a local process pool or as Ray tasks. A job never raises: its failure becomes a
:class:`JobResult` with the outcome ``convert`` would have exited with, so one broken model
leaves the rest converted and the batch reports every one.

Manifest (paths relative to the manifest's folder; every key but ``path`` optional)::

    [defaults]                 # applies to every [[model]] that does not set the key
    data = "calib"
    max_drop = 1.0

    [[model]]
    path = "detector/model.onnx"
    name = "detector"          # output OUT_DIR/detector.int8.onnx, report detector.report.json
    data = "detector/calib.npz"
    eval_data = "detector/eval.npz"
    labels = "detector/labels.npy"
    recipe = "detector/recipe.toml"
    mode = "static"
    metric = "cosine"
    min_sqnr = 20.0
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from quantcli.calibration.sources import DataSource
from quantcli.config import GateMetric, Overrides, QuantConfig, QuantMode, load_recipe, merge
from quantcli.errors import ConfigError, QuantCliError
from quantcli.graph.output import StagedOutput
from quantcli.pipeline import quantize

__all__ = [
    "BatchJob",
    "JobResult",
    "Outcome",
    "Settings",
    "convert_job",
    "jobs_from_manifest",
    "jobs_from_paths",
    "run_local",
]


class Outcome(StrEnum):
    """How one conversion ended; the CLI maps each to the exit code ``convert`` would give."""

    OK = "ok"
    GATE_FAILED = "gate-failed"  # model and report written, the accuracy bound missed
    ERROR = "error"  # a user or data error: nothing written
    INTERNAL = "internal-error"  # a bug in quantcli, or the worker died: nothing written


@dataclass(frozen=True)
class BatchJob:
    """One model of a batch with everything its conversion needs (paths absolute)."""

    name: str
    model: Path
    output: Path
    report: Path
    config: QuantConfig
    data: DataSource | None = None
    eval_data: Path | None = None
    labels: Path | None = None
    force: bool = False


@dataclass(frozen=True)
class JobResult:
    """What one job did: JSON-ready, the same whether it ran here, in a pool or on Ray."""

    name: str
    model: str
    outcome: Outcome
    message: str = ""
    output: str | None = None
    report: str | None = None
    size_ratio: float | None = None
    mode: str | None = None
    gate: Mapping[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "status": self.outcome.value,
            "message": self.message,
            "output": self.output,
            "report": self.report,
            "size_ratio": self.size_ratio,
            "mode": self.mode,
            "gate": None if self.gate is None else dict(self.gate),
            "seconds": round(self.seconds, 3),
        }


def convert_job(job: BatchJob) -> JobResult:
    """Convert one model as ``convert --report`` does; never raises (see :class:`Outcome`)."""
    start = time.perf_counter()

    def failed(outcome: Outcome, message: str) -> JobResult:
        return JobResult(job.name, str(job.model), outcome, message, seconds=time.perf_counter() - start)

    try:
        with StagedOutput(force=job.force) as staging:
            result = quantize(
                job.model,
                job.output,
                config=job.config,
                data=job.data,
                eval_data=job.eval_data,
                labels=job.labels,
                force=job.force,
                staging=staging,
            )
            document = result.report.to_dict()
            text = json.dumps(document, indent=2, sort_keys=True) + "\n"
            staging.write_bytes(job.report, text.encode())
            staging.commit()
    except QuantCliError as exc:
        return failed(Outcome.ERROR, str(exc))
    except Exception as exc:  # a bug: reported for this model, the batch goes on
        return failed(Outcome.INTERNAL, f"{type(exc).__name__}: {exc}")
    report = result.report
    passed = report.gate is None or report.gate.passed
    return JobResult(
        job.name,
        str(job.model),
        Outcome.OK if passed else Outcome.GATE_FAILED,
        "" if passed else "the accuracy gate failed (model and report written)",
        output=str(job.output),
        report=str(job.report),
        size_ratio=report.size.ratio,
        mode=report.plan.mode.value,
        gate=document["gate"],
        seconds=time.perf_counter() - start,
    )


def run_local(
    jobs: Sequence[BatchJob], *, workers: int | None, on_result: Callable[[JobResult], None]
) -> None:
    """Every job in a pool of ``workers`` processes (None: one per CPU; 1: in this process).

    Processes are spawned, not forked: a fork of a process holding onnxruntime's thread pools can
    hang. ``on_result`` is called as each job finishes.
    """
    count = min(len(jobs), workers or os.cpu_count() or 1)
    if count <= 1:
        for job in jobs:
            on_result(convert_job(job))
        return
    with ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(convert_job, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                on_result(future.result())
            except Exception as exc:  # the worker process died (BrokenProcessPool): this job failed
                on_result(JobResult(job.name, str(job.model), Outcome.INTERNAL, f"worker died ({exc})"))


# Per-model settings: in a [[model]] table, in [defaults], and (for data) once on the command line.
_PATH_KEYS = ("data", "eval_data", "labels", "recipe")
_MODEL_KEYS = ("path", "name", *_PATH_KEYS, "mode", "metric", "max_drop", "min_sqnr")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What the command line gives every model (a manifest entry wins over it)."""

    out_dir: Path
    data: DataSource | None = None
    eval_data: Path | None = None
    labels: Path | None = None
    recipe: Path | None = None
    overrides: Overrides = field(default_factory=Overrides)  # from flags; a manifest wins
    force: bool = False


def _default_names(models: Sequence[Path]) -> list[str]:
    """Output names: the file's stem, or its folder's name where stems repeat (model.onnx)."""
    stems = Counter(p.stem for p in models)
    return [p.stem if stems[p.stem] == 1 else p.parent.name for p in models]


def _check_unique(names: Sequence[str], where: str) -> None:
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        raise ConfigError(
            f"{where}: two models would share the output name {repeated[0]!r}; "
            "name them in a manifest (name = ...)"
        )


def _job(name: str, model: Path, settings: Settings, entry: Mapping[str, Any]) -> BatchJob:
    manifest = Overrides(
        mode=entry.get("mode"),
        metric=entry.get("metric"),
        max_drop=entry.get("max_drop"),
        min_sqnr=entry.get("min_sqnr"),
    )
    recipe = entry.get("recipe", settings.recipe)
    data = entry.get("data", settings.data)
    return BatchJob(
        name=name,
        model=model.absolute(),
        output=(settings.out_dir / f"{name}.int8.onnx").absolute(),
        report=(settings.out_dir / f"{name}.report.json").absolute(),
        config=merge(
            QuantConfig() if recipe is None else load_recipe(recipe), manifest.over(settings.overrides)
        ),
        data=data.absolute() if isinstance(data, Path) else data,
        eval_data=entry.get("eval_data", settings.eval_data),
        labels=entry.get("labels", settings.labels),
        force=settings.force,
    )


def jobs_from_paths(paths: Sequence[Path], settings: Settings) -> list[BatchJob]:
    """One job per model file; a folder stands for every .onnx file under it."""
    models: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.onnx"))
            if not found:
                raise ConfigError(f"{path}: folder holds no .onnx models")
            models.extend(found)
        else:
            models.append(path)  # a missing file fails its own job, not the batch
    if not models:
        raise ConfigError("convert-many needs models: files, folders or a .toml manifest")
    names = _default_names(models)
    _check_unique(names, "convert-many")
    return [_job(n, m, settings, {}) for n, m in zip(names, models, strict=True)]


def _entry(raw: Any, where: str, path: Path) -> dict[str, Any]:
    """A [[model]] or [defaults] table, validated, its paths resolved next to the manifest."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    bad = sorted(set(raw) - set(_MODEL_KEYS))
    if bad:
        raise ConfigError(
            f"{path}: unknown key {bad[0]!r} in {where} (valid keys: {', '.join(sorted(_MODEL_KEYS))})"
        )
    entry: dict[str, Any] = {}
    kinds: dict[str, Any] = {
        "path": str,
        "name": str,
        **dict.fromkeys(_PATH_KEYS, str),
        "mode": QuantMode,
        "metric": GateMetric,
        "max_drop": float,
        "min_sqnr": float,
    }
    for key, value in raw.items():
        kind = kinds[key]
        try:
            typed = kind(value) if kind is not float or isinstance(value, int | float) else None
        except ValueError:
            typed = None
        if typed is None or (kind is str and not isinstance(value, str)) or isinstance(value, bool):
            raise ConfigError(f"{path}: {where}: {key} = {value!r} is not a valid {key}")
        entry[key] = (path.parent / typed).resolve() if key in ("path", *_PATH_KEYS) else typed
    return entry


def jobs_from_manifest(path: Path, settings: Settings) -> list[BatchJob]:
    """The jobs a TOML manifest lists (see the module docstring); strictly validated."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(document) - {"defaults", "model"})
    if unknown:
        raise ConfigError(f"{path}: unknown table {unknown[0]!r} (valid: defaults, model)")
    defaults = _entry(document.get("defaults", {}), "[defaults]", path)
    if "path" in defaults or "name" in defaults:
        raise ConfigError(f"{path}: [defaults] cannot set path or name (they are per model)")
    raw_models = document.get("model", [])
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"{path}: list the models as [[model]] tables with path = ...")
    entries = [defaults | _entry(raw, f"[[model]] #{i + 1}", path) for i, raw in enumerate(raw_models)]
    for index, entry in enumerate(entries):
        if "path" not in entry:
            raise ConfigError(f"{path}: [[model]] #{index + 1} needs path = ...")
    derived = _default_names([e["path"] for e in entries])
    names = [str(e.get("name", n)) for e, n in zip(entries, derived, strict=True)]
    _check_unique(names, str(path))
    return [_job(n, e["path"], settings, e) for n, e in zip(names, entries, strict=True)]
