"""Exit codes, and the one place that maps exceptions to them.

0 ok, 1 user or data error, 2 usage (Typer/Click), 3 accuracy gate failed, 4 internal error;
stopped by a signal: 128 + its number as a shell reports it (129 SIGHUP, 130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from enum import IntEnum
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console

from quantcli.cli.text import markup
from quantcli.errors import QuantCliError

if TYPE_CHECKING:
    from quantcli.batch import Outcome

__all__ = ["ExitCode", "exit_code", "guarded"]

T = TypeVar("T")


class ExitCode(IntEnum):
    OK = 0
    USER_ERROR = 1
    USAGE = 2
    GATE_FAILED = 3
    INTERNAL = 4
    HANGUP = 128 + signal.SIGHUP
    INTERRUPTED = 130  # the shell's 128 + SIGINT
    TERMINATED = 128 + signal.SIGTERM


class Stopped(BaseException):
    """A signal asked the run to stop. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way up swallows it and every ``with`` block (the staging folder's
    above all) cleans up as the stack unwinds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    # Further signals are ignored while the stack unwinds: cleanup takes milliseconds, and a
    # second SIGTERM from an impatient runner must not cut it short. SIGKILL still works.
    for number in (*_STOP_SIGNALS, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    raise Stopped(signum)


# SIGINT needs no handler: Python raises KeyboardInterrupt, which unwinds the same way.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM (CI runners, ``timeout``) and SIGHUP (a closed terminal) stop the run the way
    Ctrl-C does. Only the main thread can install handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (*_STOP_SIGNALS, signal.SIGINT)}
    for number in _STOP_SIGNALS:
        signal.signal(number, _stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# What each outcome of a batch's model would have exited with, had it been converted alone
# (keyed by value: quantcli.batch imports onnxruntime, which this module must not at startup).
_OUTCOMES = {
    "ok": ExitCode.OK,
    "gate-failed": ExitCode.GATE_FAILED,
    "error": ExitCode.USER_ERROR,
    "internal-error": ExitCode.INTERNAL,
}


def exit_code(outcome: Outcome) -> ExitCode:
    return _OUTCOMES[outcome.value]


def guarded(action: Callable[[], T], console: Console, *, debug: bool) -> T | ExitCode:
    """Run ``action``; turn a user error into one line and exit 1, a bug into exit 4.

    Errors are printed even under ``--quiet`` or ``--json`` (which silence tables and progress):
    in a build log the one line is all there is.
    """
    if console.quiet:
        console = Console(stderr=True, width=console.width)
    try:
        with _stop_on_signals():
            return action()
    except typer.BadParameter:
        raise  # a usage error found after parsing (flags that contradict): Typer prints it, exit 2
    except QuantCliError as exc:
        console.print(f"[bold red]error:[/] {markup(exc)}", highlight=False, soft_wrap=True)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]; nothing was written", highlight=False)
        return ExitCode.INTERRUPTED
    except Stopped as exc:
        console.print(f"[bold red]stopped by {exc}[/]; nothing was written", highlight=False)
        return ExitCode(128 + exc.signum)
    except Exception as exc:
        if debug:
            console.print(traceback.format_exc(), highlight=False, soft_wrap=True, markup=False)
        console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {markup(exc)} "
            "(this is a bug in quantcli; run with --debug for a traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        return ExitCode.INTERNAL
