"""How a run's stages show on stderr: a Rich progress display for a person at a terminal, one
plain line per slow stage for a log, nothing under ``--json`` or ``--quiet``.

:class:`StageDisplay` is the CLI's side of the library's progress protocol
(``quantcli.calibration.collect.Progress``): the library says which stage begins and how many
units of it are done; only this module knows about Rich.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console

from quantcli.cli.text import markup, shown

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["PLAIN_MIN_SECONDS", "StageDisplay"]

# A log gets a line for a stage that took at least this long: where the time went, without a
# line for every millisecond stage in front of a one-line error.
PLAIN_MIN_SECONDS = 1.0


class StageDisplay:
    """Named stages (``calibrate 120/256``, ``build candidate static 1/4``, ...) on ``console``.

    ``rich``: one live display, a row per stage with its bar, count, elapsed and remaining time.
    ``plain`` (stderr is not a terminal): when a stage ends, one line ``stage: 3.2 s`` if it took
    :data:`PLAIN_MIN_SECONDS` or more. ``off`` under ``--quiet`` or ``--json``.
    """

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._clock = clock
        if console.quiet:
            self.kind = "off"
        elif console.is_terminal:
            self.kind = "rich"
        else:
            self.kind = "plain"
        self._live: Progress | None = None
        self._task: TaskID | None = None
        self._label = ""
        self._started = 0.0
        self._done: tuple[int, int] | None = None

    def __enter__(self) -> StageDisplay:
        if self.kind == "rich":
            self._live = _live_display(self._console)
            self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if error is None:
            self._finish()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def stage(self, name: str, index: int = 0, count: int = 0, total: int | None = None) -> None:
        """A stage begins; the one before it is done."""
        self._finish()
        self._label = name + (f" {index}/{count}" if count else "")
        self._started = self._clock()
        self._done = (0, total) if total is not None else None
        if self._live is not None:
            self._task = self._live.add_task(markup(self._label), total=total, counted=total is not None)

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current stage."""
        self._done = (done, total)
        if self._live is not None and self._task is not None:
            self._live.update(self._task, completed=done, total=total)

    def _finish(self) -> None:
        if not self._label:
            return
        if self._live is not None and self._task is not None:
            task = next(t for t in self._live.tasks if t.id == self._task)
            if task.total is None:
                self._live.update(self._task, total=1, completed=1)  # done: the spinner turns into a tick
            self._live.stop_task(self._task)
        elif self.kind == "plain":
            seconds = self._clock() - self._started
            if seconds >= PLAIN_MIN_SECONDS:
                counted = f" {self._done[0]}/{self._done[1]}" if self._done is not None else ""
                self._console.print(
                    f"{shown(self._label)}{counted}: {seconds:.1f} s", markup=False, highlight=False
                )
        self._label, self._task = "", None


def _live_display(console: Console) -> Progress:
    """A row per stage: tick or spinner, name, then for a counted stage (calibration samples)
    its bar, count and time left; every stage shows how long it took."""
    # Imported here: --version and --help never need it.
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text  # noqa: PLC0415

    class Counted(ProgressColumn):
        """``column`` for a stage that counts units; blank for one that does not."""

        def __init__(self, column: ProgressColumn) -> None:
            super().__init__()
            self.column = column

        def render(self, task: Task) -> Any:
            return self.column.render(task) if task.fields.get("counted") else Text("")

    return Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        Counted(BarColumn()),
        Counted(MofNCompleteColumn()),
        TimeElapsedColumn(),
        Counted(TimeRemainingColumn()),
        console=console,
    )
