"""Exit codes, and the one place that maps exceptions to them.

0 ok, 1 user or data error, 2 usage (Typer/Click), 3 accuracy gate failed, 4 internal error,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from enum import IntEnum
from typing import TypeVar

import typer
from rich.console import Console

from quantcli.cli.text import markup
from quantcli.errors import QuantCliError

__all__ = ["ExitCode", "guarded"]

T = TypeVar("T")


class ExitCode(IntEnum):
    OK = 0
    USER_ERROR = 1
    USAGE = 2
    GATE_FAILED = 3
    INTERNAL = 4
    INTERRUPTED = 130  # the shell's 128 + SIGINT


def guarded(action: Callable[[], T], console: Console, *, debug: bool) -> T | ExitCode:
    """Run ``action``; turn a user error into one line and exit 1, a bug into exit 4.

    Errors are printed even under ``--quiet`` or ``--json`` (which silence tables and progress):
    in a build log the one line is all there is.
    """
    if console.quiet:
        console = Console(stderr=True, width=console.width)
    try:
        return action()
    except typer.BadParameter:
        raise  # a usage error found after parsing (flags that contradict): Typer prints it, exit 2
    except QuantCliError as exc:
        console.print(f"[bold red]error:[/] {markup(exc)}", highlight=False, soft_wrap=True)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]; nothing was written", highlight=False)
        return ExitCode.INTERRUPTED
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
