"""The child process an OpenVINO session runs in (started by :mod:`quantcli.engine_process`).

Run as a script (``python -P .../engine_child.py READ_FD WRITE_FD``), not as ``-m quantcli...``:
it imports numpy and openvino only, not quantcli's package (onnx, onnxruntime), so a child
starts in about half a second and holds about 70 MB of its own besides the compiled model.

It serves one compiled model at a time over two pipes, one request at a time, until the parent closes its
end. Requests and replies are pickled tuples (``multiprocessing.connection`` frames them):

- ``("open", source, outputs, config)``: read the model (a file path or the model's bytes),
  compile it for the CPU plugin with ``config``; ``("ok", None)``.
- ``("run", names, feed)``: infer once; ``("ok", (outputs, milliseconds))``, copies of the named
  outputs in that order and the time ``infer`` and the copies took here (what one run cost when
  OpenVINO ran in the parent's process).
- ``("get", name)``: a property of the compiled model, as a string.
- ``("reset",)``: drop the compiled model (the child then waits, idle, for another ``open``).

A refusal by OpenVINO (a ``RuntimeError``) is replied as ``("error", stage, message)``; the
parent turns it into the one-line error it raised when OpenVINO ran in its own process. A crash
ends this process with the signal, which is what the parent reports.
"""

from __future__ import annotations

import importlib
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


class _Model:
    """One compiled model and its infer request."""

    def __init__(self, source: str | bytes, outputs: list[str], config: dict[str, Any]) -> None:
        core = importlib.import_module("openvino").Core()
        try:
            read = core.read_model(source)
        except RuntimeError as exc:
            raise _Refused("read", str(exc)) from exc
        try:
            self.compiled = core.compile_model(read, "CPU", config)
            self.ports = {name: self.compiled.output(name) for name in outputs}
        except RuntimeError as exc:
            raise _Refused("compile", str(exc)) from exc
        self.request = self.compiled.create_infer_request()

    def run(self, names: list[str], feed: dict[str, Any]) -> tuple[list[Any], float]:
        for name in names:
            if name not in self.ports:
                try:
                    self.ports[name] = self.compiled.output(name)
                except RuntimeError as exc:
                    raise _Refused("port", name) from exc
        begin = time.perf_counter()
        try:
            results = self.request.infer(feed)
        except RuntimeError as exc:
            raise _Refused("run", str(exc)) from exc
        outputs = [np.array(results[self.ports[name]]) for name in names]
        return outputs, (time.perf_counter() - begin) * 1000.0

    def get(self, name: str) -> str:
        value = self.compiled.get_property(name)
        return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


class _Refused(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _answer(model: _Model | None, request: tuple[Any, ...]) -> tuple[_Model | None, Any]:
    verb = request[0]
    if verb == "open":
        return _Model(*request[1:]), None
    if verb == "reset":
        return None, None  # the compiled model is destroyed: the plugin frees its memory
    assert model is not None, "a model is opened before it is run"
    if verb == "run":
        return model, model.run(*request[1:])
    return model, model.get(request[1])


def serve(inbox: Connection, outbox: Connection) -> None:
    """Answer requests until the parent closes the pipe."""
    model: _Model | None = None
    while True:
        try:
            request = inbox.recv()
        except EOFError:
            return
        try:
            model, value = _answer(model, request)
        except _Refused as exc:
            outbox.send(("error", exc.stage, str(exc)))
            continue
        outbox.send(("ok", value))


def main() -> None:
    # The parent handles Ctrl-C and SIGTERM and closes this process when it unwinds; it is also
    # started in a session of its own, so a terminal's signals reach the parent only.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox, outbox = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    serve(inbox, outbox)


if __name__ == "__main__":
    main()
