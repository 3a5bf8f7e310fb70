"""Tensors made during a build, written to a scratch file at once and read back lazily.

Quantizing a model past memory makes its new weights one at a time; held until the model is
written, they would add up to the quantized model's size (and more, for 4-bit codes kept a byte
each). A :class:`Spill` writes each one to a scratch file in the output's folder (the disk the
output goes to, not a RAM-backed /tmp) as soon as it is made and returns an onnx_ir external
tensor over it, which the output writer copies into the output's data file piece by piece. The
folder is removed when the ``with`` block ends.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx_ir as ir

from quantcli.errors import OutputError

__all__ = ["Spill"]

# Offsets are kept aligned so a tensor read back is aligned for any dtype.
_ALIGNMENT = 64


class Spill:
    """A scratch data file beside ``output``; :meth:`store` appends a tensor to it."""

    def __init__(self, output: Path) -> None:
        self._output = output
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._fd = -1
        self._offset = 0
        self.bytes_written = 0

    def __enter__(self) -> Spill:
        folder = self._output.parent if str(self._output.parent) else Path(".")
        try:
            self._folder = tempfile.TemporaryDirectory(prefix=".quantcli-spill-", dir=folder)
            self._fd = os.open(
                Path(self._folder.name) / "tensors.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
        except OSError as exc:
            raise OutputError(
                f"{self._output}: cannot write scratch data in {folder} ({exc.strerror or exc})"
            ) from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def store(self, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.ExternalTensor:
        """``array`` written to the scratch file; an external tensor reading it back (its name is
        set when it becomes an initializer). ``dtype``: the ONNX type when numpy's is wider."""
        assert self._folder is not None and self._fd >= 0, "use Spill in a with block"
        data = np.ascontiguousarray(array)
        padding = -self._offset % _ALIGNMENT
        try:
            for chunk in (bytes(padding), data.reshape(-1).view(np.uint8).data):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise OutputError(
                f"{self._output}: cannot write scratch data ({exc.strerror or exc}); nothing was written"
            ) from exc
        offset = self._offset + padding
        self._offset = offset + data.nbytes
        self.bytes_written += data.nbytes
        return ir.ExternalTensor(
            "tensors.bin",
            offset,
            data.nbytes,
            dtype if dtype is not None else ir.DataType.from_numpy(data.dtype),
            shape=ir.Shape(data.shape),
            name="spilled",
            base_dir=self._folder.name,
        )
