"""The ``quantcli`` executable: ``--version`` answers before Typer is imported.

Typer builds every command's parameters (pydantic type adapters included) before it can parse
anything; for a version check that is most of the wait. Everything else goes to the Typer app.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from quantcli import __version__

        sys.stdout.write(f"quantcli {__version__}\n")
        return
    from quantcli.cli.app import main as run

    run()
