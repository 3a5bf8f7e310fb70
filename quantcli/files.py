"""Reading the small files a user names (recipes, calibration files, selection lists) with bounds.

``--calibration /dev/zero`` must not read forever, a FIFO must not block the run, and a
1,000-deep JSON or TOML document must fail with one line, not a RecursionError. Every such file
is opened without blocking, refused unless it is a regular file, read up to a size cap, and its
parsed document refused past a nesting depth.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantcli.errors import QuantCliError

__all__ = ["MAX_DEPTH", "check_regular", "parse_json", "parse_toml", "read_bounded"]

# Nesting deeper than this is refused in recipes and calibration files (theirs is 3 to 5).
MAX_DEPTH = 32


def _refuse(error: type[QuantCliError], path: Path, problem: str) -> QuantCliError:
    return error(f"{path}: {problem}")


def _open(path: Path, what: str, error: type[QuantCliError]) -> int:
    """A descriptor of ``path`` opened for reading, refused unless it is a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer otherwise; the mode check below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _refuse(error, path, "no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or exc
        raise _refuse(error, path, f"cannot read the {what} ({reason})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(error, path, f"is not a regular file (a FIFO, device or folder cannot be the {what})")
    return fd


def check_regular(path: Path, what: str, error: type[QuantCliError]) -> None:
    """Refuse a path that names no regular file: a FIFO, a device, a socket, a folder."""
    os.close(_open(path, what, error))


def read_bounded(path: Path, limit: int, what: str, error: type[QuantCliError]) -> bytes:
    """The bytes of the regular file ``path``, refused past ``limit`` bytes."""
    with os.fdopen(_open(path, what, error), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise _refuse(error, path, f"{size} bytes is larger than a {what} may be ({limit} bytes)")
        data = handle.read(size + 1)  # not limit + 1: that buffer would be allocated up front
    if len(data) > limit:  # grew while being read
        raise _refuse(error, path, f"larger than a {what} may be ({limit} bytes)")
    return data


def _depth(document: Any) -> int:
    """Nesting depth of parsed JSON/TOML, without recursion."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: list[Any] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse(
    *,
    data: bytes,
    path: Path,
    what: str,
    error: type[QuantCliError],
    parse: Callable[[str], Any],
    syntax: type[Exception],
) -> Any:
    try:
        document = parse(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _refuse(error, path, f"the {what} is not UTF-8 text (byte {exc.start})") from exc
    except RecursionError as exc:
        raise _refuse(error, path, f"the {what} nests deeper than {MAX_DEPTH} levels") from exc
    except syntax as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _refuse(error, path, f"not valid {what} ({first})") from exc
    if _depth(document) > MAX_DEPTH:
        raise _refuse(error, path, f"the {what} nests deeper than {MAX_DEPTH} levels")
    return document


def parse_json(data: bytes, path: Path, what: str, error: type[QuantCliError]) -> Any:
    """A JSON document, with one-line errors for bad encoding, syntax and nesting."""
    return _parse(data=data, path=path, what=what, error=error, parse=json.loads, syntax=json.JSONDecodeError)


def parse_toml(data: bytes, path: Path, what: str, error: type[QuantCliError]) -> Any:
    """A TOML document, with one-line errors for bad encoding, syntax and nesting."""
    return _parse(
        data=data, path=path, what=what, error=error, parse=tomllib.loads, syntax=tomllib.TOMLDecodeError
    )
