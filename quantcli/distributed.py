"""quantcli's independent work as Ray tasks: calibration shards, search builds, batch conversions.

Imported only when ``--ray`` is given (the rest of quantcli never imports ray). Nothing here
decides anything: a statistics pass is split by :class:`~quantcli.calibration.sampling.Selection`
into the shards ``--shard K/N`` would make, each shard runs :func:`~quantcli.pipeline.observe_shard`
in a task with its own onnxruntime session, and the driver merges the results with the exact
merge of calibration files. Min, max and counts merge exactly and histograms are aligned on
powers of two, so the merged statistics are those of one local run, bit for bit, whatever the
number of workers or the order in which they finish.

A search (``--mode auto`` candidates, ``--auto-fallback`` trials) hands its rounds of builds to
:class:`RayBuilds`: each build runs in a task from :class:`~quantcli.build.Detached` values and
returns the model's bytes and its measured fidelity; the driver stages and checks them, and
profiles or times every candidate itself, so the choice reads what a local run would.

Workers read the model and the data themselves: both must be at the same path on every node
(shared storage), or the data a ``--data-loader`` every node can import. That is checked on
every node before any work, with one line naming the node and the path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from quantcli.batch import BatchJob, JobResult, Outcome, convert_job
from quantcli.build import (
    Built,
    Detached,
    LocalBuilds,
    Order,
    Shipped,
    Workshop,
    build_detached,
    detach,
    land,
)
from quantcli.calibration.collect import Advance, stage
from quantcli.calibration.file import CalibrationFile, merge_calibrations
from quantcli.calibration.observers import TensorStats
from quantcli.calibration.sampling import Shard
from quantcli.calibration.sources import DataSource, ImageFolder, UserLoader
from quantcli.config import CalibrationMethod, QuantConfig
from quantcli.errors import DistributedError, QuantCliError
from quantcli.pipeline import ShardResult, ShardWork, observe_shard

__all__ = [
    "RayBuilds",
    "RayCollector",
    "RayOptions",
    "absolute_source",
    "check_nodes",
    "convert_on_ray",
    "ray_session",
    "run_tasks",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """Where and how wide to run.

    Attributes:
        address: the cluster (``ray://host:10001`` or ``host:6379``); None: the ``RAY_ADDRESS``
            environment variable, else a local Ray started for the run and stopped after it.
        workers: tasks one pass is split into; None: the cluster's CPUs / ``cpus_per_task``.
        cpus_per_task: CPUs each task reserves, and onnxruntime's intra-op threads in it.
        retries: times a task whose worker died is run again before the run fails.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_task: int = 1
    retries: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise DistributedError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_task < 1:
            raise DistributedError(f"--worker-cpus must be at least 1, got {self.cpus_per_task}")


def _ray() -> Any:
    try:
        import ray  # noqa: PLC0415 (optional dependency, imported only with --ray)
    except ImportError as exc:
        raise DistributedError("--ray needs Ray: pip install 'quantcli[ray]'") from exc
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Connect to Ray for the duration of the block. A Ray the caller already started (a test,
    a notebook) is used as it is and left running; a local one started here is stopped after."""
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        if address == "local":
            # Its workers start in this working folder, so a --data-loader next to the data
            # imports there as it does here.
            ray.init(
                address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
            )
        else:
            _check_reachable(address)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DistributedError(f"Ray at {address}: cannot connect ({_first_line(exc)})") from exc
    try:
        yield
    finally:
        ray.shutdown()


# Ray retries an unreachable head for minutes; a plain connection answers in seconds.
_CONNECT_SECONDS = 10.0


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at ``host:port`` (or ``ray://host:port``)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_SECONDS).close()
    except OSError as exc:
        raise DistributedError(
            f"Ray at {address}: cannot connect ({exc.strerror or exc}); is the cluster up, and is "
            "this its head's address (--ray-address, or RAY_ADDRESS)?"
        ) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def absolute_source(source: DataSource) -> DataSource:
    """``source`` with its path absolute: a worker's working folder is not the driver's."""
    if isinstance(source, Path):
        return source.absolute()
    if isinstance(source, ImageFolder):
        return replace(source, path=source.path.absolute())
    return source


def _unreadable(paths: Sequence[Path], loader: str | None) -> str | None:
    """What this node cannot read (None: all of it). Runs on every node before any work."""
    for path in paths:
        if not path.exists():
            return f"{path}: not found"
        if not os.access(path, os.R_OK):
            return f"{path}: not readable"
    if loader is not None:
        module = loader.partition(":")[0]
        if "" not in sys.path:  # as the loader itself is imported (quantcli.calibration.sources)
            sys.path.insert(0, "")
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"--data-loader module '{module}' cannot be imported"
    return None


def check_nodes(paths: Sequence[Path], loader: str | None = None) -> None:
    """Fail with one line unless every alive node can read ``paths`` and import ``loader``."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415

    probe = ray.remote(num_cpus=0)(_unreadable)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            list(paths), loader
        )
        for n in nodes
    ]
    for node, problem in zip(nodes, ray.get(refs), strict=True):
        if problem is not None:
            raise DistributedError(
                f"Ray node {node.get('NodeManagerAddress', '?')}: {problem}; the model and data must be "
                "at the same path on every node (shared storage), a --data-loader importable on every node"
            )


def run_tasks(
    function: Callable[..., R],
    items: Sequence[tuple[str, tuple[Any, ...]]],
    *,
    cpus: int,
    retries: int,
    on_result: Callable[[str, R], None],
    on_error: Callable[[str, Exception], None] | None = None,
) -> None:
    """Run ``function(*args)`` for each named ``(name, args)`` as a Ray task; call ``on_result``
    as each finishes, in finishing order. A task whose worker dies is retried ``retries`` times;
    one that raises, or dies every time, goes to ``on_error``, or without it cancels the rest and
    fails the run with its name."""
    ray = _ray()
    remote = ray.remote(num_cpus=cpus, max_retries=retries, retry_exceptions=False)(function)
    pending = {remote.remote(*args): name for name, args in items}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            name = pending.pop(ref)
            try:
                result = _get(ray, ref, name, retries)
            except (QuantCliError, RuntimeError) as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
                continue
            on_result(name, result)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _get(ray: Any, ref: Any, name: str, retries: int) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, QuantCliError):
            raise type(cause)(f"{name}: {cause}") from cause
        raise RuntimeError(f"{name}: {type(cause).__name__}: {_first_line(cause)}") from cause
    except ray.exceptions.RayError as exc:  # the worker or its node died, every attempt
        raise DistributedError(
            f"{name} failed for good: its worker died {retries + 1} times ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from exc


def _observe(work: ShardWork, shard: Shard, threads: int) -> ShardResult:
    return observe_shard(work, shard, threads=threads)


@dataclass(frozen=True)
class RayCollector:
    """A statistics pass split into shards run as Ray tasks, merged on the driver as they finish
    (so the driver holds at most the running total and one shard's statistics)."""

    options: RayOptions

    def shards(self, num_samples: int) -> int:
        if self.options.workers is not None:
            return self.options.workers
        return max(1, min(num_samples, _width(self.options)))

    def __call__(self, work: ShardWork, progress: Advance | None) -> dict[str, TensorStats]:
        work = replace(work, model=work.model.absolute(), source=absolute_source(work.source))
        paths = [work.model] + ([] if isinstance(work.source, UserLoader) else [Path(str(work.source))])
        check_nodes(paths, work.source.reference if isinstance(work.source, UserLoader) else None)
        count = self.shards(work.num_samples)
        merged: list[tuple[Path, CalibrationFile]] = []
        seen = 0

        def add(name: str, result: ShardResult) -> None:
            nonlocal seen
            if result.model_fingerprint != work.model_fingerprint:
                raise DistributedError(
                    f"{name}: the worker read another model at {work.model}; "
                    "every node must see the same file"
                )
            part = CalibrationFile(
                result.model_fingerprint,
                CalibrationMethod.MINMAX,
                100.0,
                result.num_samples,
                result.stats,
                shards=(name.rpartition(" ")[2],),
            )
            merged[:] = [(Path(name), merge_calibrations([*merged, (Path(name), part)]))]
            seen += result.num_samples
            if progress is not None:
                progress(seen, work.num_samples)

        run_tasks(
            _observe,
            [
                (f"calibration shard {k}/{count}", (work, Shard(k, count), self.options.cpus_per_task))
                for k in range(1, count + 1)
            ],
            cpus=self.options.cpus_per_task,
            retries=self.options.retries,
            on_result=add,
        )
        if seen != work.num_samples:
            raise DistributedError(
                f"{work.source}: the workers found {seen} samples where the driver found "
                f"{work.num_samples}; every node must see the same data"
            )
        return merged[0][1].stats


def _width(options: RayOptions) -> int:
    """Tasks run at once: ``--workers``, else the cluster's CPUs / CPUs per task."""
    if options.workers is not None:
        return options.workers
    return max(1, int(_ray().cluster_resources().get("CPU", 1)) // options.cpus_per_task)


def _build(order: Order, config: QuantConfig, detached: Detached) -> Shipped | QuantCliError:
    return build_detached(order, config, detached)


@dataclass(frozen=True)
class RayBuilds:
    """A search's rounds of builds as Ray tasks, ``width`` at once. A build that fails on a
    worker comes back as the error it raised, and fails as it fails locally; one whose worker
    died every time fails the run. A model with external weights is built here (its staged
    model is not one file of bytes to return)."""

    options: RayOptions

    @property
    def width(self) -> int:
        return _width(self.options)

    def __call__(
        self, orders: Sequence[Order], config: QuantConfig, shop: Workshop
    ) -> list[Built | QuantCliError]:
        detached = detach(shop)
        if detached is None:
            logger.info("the model has external data: its search builds run on the driver")
            return LocalBuilds()(orders, config, shop)
        if not orders:
            return []
        stage(*orders[0].progress)
        # The float model and the data once in the object store, not once per task.
        shared = _ray().put(detached)
        names = [f"{order.progress[0]} ({index + 1} of {len(orders)})" for index, order in enumerate(orders)]
        shipped: dict[str, Shipped | QuantCliError] = {}
        run_tasks(
            _build,
            [
                (name, (replace(order, model=None), config, shared))
                for name, order in zip(names, orders, strict=True)
            ],
            cpus=self.options.cpus_per_task,
            retries=self.options.retries,
            on_result=shipped.__setitem__,
        )
        return [land(shipped[name], shop) for name in names]


def convert_on_ray(
    jobs: Sequence[BatchJob], options: RayOptions, on_result: Callable[[JobResult], None]
) -> None:
    """Every job of a batch as a Ray task (``options.cpus_per_task`` CPUs each); a job whose
    worker died every time is reported as failed, and the others go on."""
    # What the driver can read must be readable everywhere; a model missing here fails its own job.
    paths = {p for job in jobs for p in (job.model, job.output.parent) if p.exists()}
    check_nodes(sorted(paths))
    by_name = {job.name: job for job in jobs}

    def failed(name: str, exc: Exception) -> None:
        job = by_name[name]
        on_result(JobResult(job.name, str(job.model), Outcome.INTERNAL, str(exc)))

    run_tasks(
        convert_job,
        [(job.name, (job,)) for job in jobs],
        cpus=options.cpus_per_task,
        retries=options.retries,
        on_result=lambda _, result: on_result(result),
        on_error=failed,
    )
