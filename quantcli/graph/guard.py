"""The output guard: no path a run writes may be a path the same run reads.

``--report m.onnx --force`` must not replace the model with JSON, nor ``-o calib.npz`` the data
being calibrated on. Every path is compared twice: resolved (so a symlink or ``a/../b`` is seen
through) and, when it exists, by ``(st_dev, st_ino)`` (so a hard link is seen through too). A
folder read (a ``--data`` folder) protects its members and refuses new files inside it. An
overlap is refused before any work, whatever ``--force`` says: ``--force`` replaces old outputs,
never inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from quantcli.errors import OutputError

__all__ = ["PathGuard", "file_identity"]

# The longest file name most file systems take (NAME_MAX); a path longer than PATH_MAX fails too.
NAME_MAX = 255
PATH_MAX = 4096


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of what ``path`` names (links followed), None if it does not exist."""
    try:
        info = path.stat()
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _resolved(path: Path, what: str) -> Path:
    """``path`` made absolute with symlinks followed; refuse names no file system takes."""
    text = os.fspath(path)
    if "\x00" in text:
        raise OutputError(f"{what} {text!r}: the path holds a NUL byte")
    if len(os.fsencode(text)) > PATH_MAX:
        raise OutputError(f"{what} {text[:60]}...: the path is longer than {PATH_MAX} bytes")
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise OutputError(f"{what} {path}: the file name is longer than {NAME_MAX} bytes")
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError before 3.13, OSError after
        raise OutputError(f"{what} {path}: cannot resolve the path ({exc})") from exc


@dataclass(frozen=True)
class _Entry:
    what: str  # e.g. "--report", "the model", "--data"
    path: Path
    resolved: Path
    identity: tuple[int, int] | None
    folder: bool

    def describe(self) -> str:
        return f"{self.what} {self.path}"


def _entry(path: Path, what: str) -> _Entry:
    resolved = _resolved(path, what)
    return _Entry(what, path, resolved, file_identity(resolved), resolved.is_dir())


def _overlap(out: _Entry, read: _Entry) -> bool:
    if out.resolved == read.resolved:
        return True
    if out.identity is not None and out.identity == read.identity:
        return True
    # A new file inside a folder that is read (its members are listed and read).
    return read.folder and out.resolved.is_relative_to(read.resolved)


class PathGuard:
    """The paths one run reads and writes; adding either side checks it against the other.

    Inputs and outputs may be declared in any order (the CLI knows the reports, the pipeline the
    model's external data files): each :meth:`reads` and :meth:`writes` checks at once, so the
    run stops at the first overlap, before it has written anything.
    """

    def __init__(self) -> None:
        self._reads: list[_Entry] = []
        self._writes: list[_Entry] = []

    def declare(
        self, *, reads: Mapping[str, Iterable[Path | None]], writes: Mapping[str, Path | None]
    ) -> None:
        """Declare several inputs and outputs at once (None: that flag was not given)."""
        for what, paths in reads.items():
            for path in paths:
                if path is not None:
                    self.reads(path, what)
        for what, out in writes.items():
            if out is not None:
                self.writes(out, what)

    def reads(self, path: Path, what: str) -> None:
        """Protect ``path`` (a file, or a folder and every file in it) from this run's outputs."""
        entry = _entry(path, what)
        entries = [entry]
        if entry.folder:
            try:
                members = sorted(entry.resolved.iterdir())
            except OSError:
                members = []
            entries += [_entry(p, f"{what} member") for p in members if p.is_file()]
        for read in entries:
            for out in self._writes:
                if _overlap(out, read):
                    raise _refusal(out, read)
        self._reads.extend(entries)

    def writes(self, path: Path, what: str) -> None:
        """Declare ``path`` an output; refuse it if it is (or lies in) anything this run reads."""
        out = self._checked(path, what)
        for other in self._writes:
            if other.resolved == out.resolved and other.what != what:
                raise OutputError(
                    f"{path}: given for two outputs ({other.what} and {what}); choose different paths"
                )
        self._writes.append(out)

    def check(self, path: Path, what: str = "the output") -> None:
        """Refuse ``path`` as an output if this run reads it (without declaring it)."""
        self._checked(path, what)

    def _checked(self, path: Path, what: str) -> _Entry:
        out = _entry(path, what)
        for read in self._reads:
            if _overlap(out, read):
                raise _refusal(out, read)
        return out


def _refusal(out: _Entry, read: _Entry) -> OutputError:
    inside = read.folder and out.resolved != read.resolved
    how = f"would be written inside {read.describe()}" if inside else f"would overwrite {read.describe()}"
    return OutputError(
        f"{out.path}: {out.what} {how}, which this run reads; choose another path (--force never "
        "replaces an input)"
    )
