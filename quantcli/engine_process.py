"""A child process that serves one compiled OpenVINO model (:mod:`quantcli.engine_child`).

Why a child: OpenVINO 2026.4.1's CPU plugin segfaults compiling or running some valid models
(PP-OCR cls quantized for onnxruntime: signal 11 at its first inference; docs/openvino.md). In
quantcli's own process that ended the command with no message, no exit code of ours and the
staging folder left behind. In a child, the crash ends the child: the parent sees its pipe close,
reads the signal from the exit status and raises :class:`~quantcli.errors.EngineCrashError`, one
line, exit 1, and the staging folder is removed as for any other error.

Why one child per live session, not one for every session: a crash then names the one model
that caused it, the other sessions live on (auto drops the candidate and goes on, as when
OpenVINO refuses one), and a closed session's compiled model, with the memory the plugin held for
it, is destroyed. Its child then waits idle for the next session (:func:`lease`, two at most),
because starting one is most of what opening a small model's session costs. What it costs,
measured by bench/openvino_child.py (docs/openvino.md, "OpenVINO in child processes"): 0.4-0.5 s
more to open a session in a new child than to compile in process, and each inference's arrays
pickled through a pipe (PP-OCRv4 det, 640x640: 15-21 ms on a 90-130 ms inference); the child
times ``infer`` itself, so timings carry no pipe time.

Chosen over a child that only compiles (then compiling again here): that child would not catch
a crash at inference, which is where PP-OCR cls crashes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from quantcli.errors import EngineCrashError

__all__ = ["Child", "Refusal", "close_idle", "give_back", "lease"]

_SCRIPT = Path(__file__).with_name("engine_child.py")
# How long a child that closed its pipe may take to exit before it is killed (it has nothing
# left to do but exit).
_EXIT_SECONDS = 10.0


class Refusal(Exception):
    """The engine refused a request (``stage``: read, compile, run or port): it lives on."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def command(read_fd: int, write_fd: int) -> list[str]:
    """How a child is started: the child script by path with ``-P`` (nothing of the script's
    folder shadows a module openvino imports), reading and writing the two pipe ends given."""
    return [sys.executable, "-P", str(_SCRIPT), str(read_fd), str(write_fd)]


def _stop(process: subprocess.Popen[bytes], pipes: tuple[Connection, Connection], log: IO[bytes]) -> None:
    """Close the pipes (the child's read then ends and it exits), reap it, drop its log."""
    for pipe in pipes:
        pipe.close()
    try:
        process.wait(timeout=_EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _signal(number: int) -> str:
    try:
        return f"signal {number}, {signal.Signals(number).name}"
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _last_line(log: IO[bytes]) -> str:
    if log.closed:  # asked again after the child was reaped
        return ""
    log.seek(0)
    lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Child:
    """One child process and the two pipes to it; closed by :meth:`close` or when collected."""

    def __init__(self, label: str) -> None:
        self.label = label  # the model, as a crash names it
        self.kind = _kind()  # what it runs: only a child of the current kind is reused
        child_read, parent_write = os.pipe()
        parent_read, child_write = os.pipe()
        # The child's stdout and stderr (OpenVINO's own prints): kept for the line a dying child
        # leaves, never shown otherwise.
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the child, by _stop)
        try:
            process = subprocess.Popen(
                command(child_read, child_write),
                pass_fds=(child_read, child_write),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError:
            for fd in (parent_read, parent_write):
                os.close(fd)
            log.close()
            raise
        finally:
            os.close(child_read)
            os.close(child_write)
        self._process, self._log = process, log
        self._inbox = Connection(parent_read, writable=False)
        self._outbox = Connection(parent_write, readable=False)
        self._finalizer = weakref.finalize(self, _stop, process, (self._outbox, self._inbox), log)

    def ask(self, request: tuple[Any, ...], doing: str) -> Any:
        """The child's answer to ``request``; raises :class:`Refusal` when the engine refused it,
        :class:`EngineCrashError` when the child died ``doing`` it ("compiling", "running")."""
        try:
            self._outbox.send(request)
            reply = self._inbox.recv()
        except (EOFError, OSError):  # the pipe closed under us: the child is gone
            raise self._died(doing) from None
        if reply[0] == "error":
            raise Refusal(reply[1], reply[2])
        return reply[1]

    def _died(self, doing: str) -> EngineCrashError:
        try:
            code = self._process.wait(timeout=_EXIT_SECONDS)
        except subprocess.TimeoutExpired:  # closed its pipe yet still running: end it
            self._process.kill()
            code = self._process.wait()
        if code < 0:
            how = f"crashed ({_signal(-code)})"
        else:
            said = _last_line(self._log)
            how = f"ended with exit code {code}" + (f" ({said})" if said else "")
        self.close()
        return EngineCrashError(
            self.label,
            f"OpenVINO {how} {doing} the model "
            "(OpenVINO cannot run it: try another --mode, or --target ort-cpu)",
        )

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self._process.poll() is None

    def close(self) -> None:
        self._finalizer()


# Children whose session was closed, each with no model, kept for the next session: starting one
# (Python, numpy, openvino's libraries and its CPU plugin) is most of what a small model's session
# costs to open. Two at most: a run holds the float model's session and a candidate's or two.
_IDLE: list[Child] = []
_IDLE_MAX = 2
_IDLE_LOCK = threading.Lock()


def _kind() -> tuple[str, ...]:
    """The command children are started with, pipe ends left out."""
    return tuple(command(-1, -1))


def lease(label: str) -> Child:
    """A child for a session of the model ``label``: an idle one, else a new one."""
    with _IDLE_LOCK:
        while _IDLE:
            child = _IDLE.pop()
            if child.alive and child.kind == _kind():
                child.label = label
                return child
            child.close()
    return Child(label)


def give_back(child: Child) -> None:
    """A session is done with ``child``: it drops its compiled model (and the memory the plugin
    held for it) and waits idle, or ends when enough wait already."""
    try:
        child.ask(("reset",), "closing")
    except (Refusal, EngineCrashError):
        child.close()
        return
    with _IDLE_LOCK:
        if len(_IDLE) < _IDLE_MAX and child.kind == _kind():
            _IDLE.append(child)
            return
    child.close()


def close_idle() -> None:
    """End every idle child (they end anyway when this process exits)."""
    with _IDLE_LOCK:
        idle = list(_IDLE)
        _IDLE.clear()
    for child in idle:
        child.close()
