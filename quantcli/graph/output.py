"""Writing outputs as one set: temporary names next to the targets, renamed at the end.

A build job killed halfway, a full disk, or a model that fails its check must leave either every
new output or nothing new. Each file is written into a hidden staging folder inside its target
folder (the same file system, so the final rename is atomic) and moved into place only by
:meth:`StagedOutput.commit`; leaving the ``with`` block without committing removes everything
staged. A staged model can be read back (checked, run) from its staging folder before the commit,
because its external data file sits beside it under its final name.

Large models: initializers of ``external_threshold`` bytes or more are written tensor by tensor
to ``<model file name>.data``, so neither the protobuf (limited to 2 GiB) nor the memory of this
process ever holds all the weights at once.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import onnx_ir as ir

from quantcli.errors import OutputError
from quantcli.graph.guard import NAME_MAX, PathGuard

__all__ = ["StagedModel", "StagedOutput", "check_writable", "data_file_name", "write_atomic"]

# Tensors of at least this many bytes go to the external data file when one is written.
EXTERNAL_THRESHOLD = 1024
# Offsets of external tensors are aligned to pages, so onnxruntime can map them.
_ALIGNMENT = 4096
# Reading an input's external tensor to copy it into the output, this much at a time.
_COPY_CHUNK = 16 * 2**20


def data_file_name(model_path: Path) -> str:
    """The external data file written beside ``model_path``."""
    return f"{model_path.name}.data"


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_writable(path: Path, *, force: bool) -> None:
    """Refuse, before any work, an output whose folder is missing or read-only, or that exists
    without ``force``."""
    if "\x00" in str(path):
        raise OutputError(f"{str(path)!r}: the path holds a NUL byte")
    # The data file and the staging names add to it: leave room for ".data".
    if len(os.fsencode(path.name)) > NAME_MAX - len(".data"):
        raise OutputError(f"{path}: the file name is longer than {NAME_MAX - len('.data')} bytes")
    try:
        _check_folder(path, force=force)
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on a parent...
        raise OutputError(f"{path}: cannot write there ({exc.strerror or exc})") from exc


def _check_folder(path: Path, *, force: bool) -> None:
    folder = _folder(path)
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {folder} is not writable (choose another output folder)")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder (give a file name)")
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists (pass --force to replace it)")


def _write_chunk(fd: int, data: memoryview) -> int:
    """One os-level write; its own function so tests can make the disk run full."""
    return os.write(fd, data)


def _write_file(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
    """Write ``chunks`` to a new file and flush it to disk; return the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    written = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                count = _write_chunk(fd, view)
                view = view[count:]
                written += count
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _external_chunks(tensor: ir.ExternalTensor) -> Iterator[bytes]:
    """An input's external tensor, read from its file a piece at a time (never mapped whole)."""
    remaining = tensor.length if tensor.length is not None else tensor.nbytes
    with open(tensor.path, "rb") as source:
        source.seek(tensor.offset or 0)
        while remaining > 0:
            block = source.read(min(_COPY_CHUNK, remaining))
            if not block:
                raise OutputError(f"{tensor.path}: external data of '{tensor.name}' ended early")
            remaining -= len(block)
            yield block


def _tensor_chunks(tensor: ir.TensorProtocol) -> Iterator[bytes]:
    if isinstance(tensor, ir.ExternalTensor):
        yield from _external_chunks(tensor)
    else:
        yield tensor.tobytes()


@dataclass(frozen=True)
class StagedModel:
    """A model written under a temporary name: ``path`` can be loaded until the commit."""

    path: Path
    final: Path
    size_bytes: int
    external_data: bool


def _initializers(model: ir.Model) -> list[ir.Value]:
    return [v for graph in model.graphs() for v in graph.initializers.values() if v.const_value is not None]


def _external_layout(model: ir.Model) -> tuple[list[tuple[ir.Value, int]], int]:
    """Which initializers go to the data file and at which offset (declaration order)."""
    layout = []
    offset = 0
    for value in _initializers(model):
        tensor = value.const_value
        assert tensor is not None
        if tensor.nbytes < EXTERNAL_THRESHOLD:
            continue
        offset = -(-offset // _ALIGNMENT) * _ALIGNMENT
        layout.append((value, offset))
        offset += tensor.nbytes
    return layout, offset


class StagedOutput:
    """Files written under temporary names and renamed into place together by :meth:`commit`."""

    def __init__(self, *, force: bool, guard: PathGuard | None = None) -> None:
        self.force = force
        # What this run reads: no staged file may land on it (see quantcli.graph.guard).
        self.guard = guard if guard is not None else PathGuard()
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final), in commit order
        self._folders: dict[Path, Path] = {}  # target folder -> its staging folder
        self._adopted: list[Path] = []  # staging folders taken over from other StagedOutputs

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.discard()

    def _reserve(self, path: Path) -> Path:
        check_writable(path, force=self.force)
        self.guard.check(path)
        if any(final.resolve() == path.resolve() for _, final in self._staged):
            raise OutputError(f"{path}: given for two outputs; choose different paths")
        folder = _folder(path).resolve()
        if folder not in self._folders:
            try:
                self._folders[folder] = Path(tempfile.mkdtemp(prefix=".quantcli-", dir=folder))
            except OSError as exc:
                raise OutputError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from exc
        staged = self._folders[folder] / path.name
        self._staged.append((staged, path))
        return staged

    def _write(self, path: Path, staged: Path, chunks: Iterable[bytes | memoryview]) -> int:
        try:
            return _write_file(staged, chunks)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written") from exc

    def write_bytes(self, path: Path, data: bytes) -> Path:
        """Stage ``data`` for ``path``; return the temporary file."""
        staged = self._reserve(path)
        self._write(path, staged, [data])
        return staged

    def write_model(self, model: ir.Model, path: Path, *, external_data: bool) -> StagedModel:
        """Stage ``model`` for ``path``, its large initializers in ``<name>.data`` if asked.

        Value-info (intermediate shapes) is dropped: it is a cache of shape inference that
        onnxruntime redoes on load. The bytes are deterministic: same model, same files.
        """
        saved = {v: v.const_value for v in _initializers(model)}
        data_size = 0
        if external_data:
            data_path = path.with_name(data_file_name(path))
            staged_data = self._reserve(data_path)
            layout, data_size = _external_layout(model)
            data_size = self._write(data_path, staged_data, self._data_chunks(layout))
            for value, offset in layout:
                tensor = saved[value]
                assert tensor is not None
                value.const_value = ir.ExternalTensor(
                    data_path.name,
                    offset,
                    tensor.nbytes,
                    tensor.dtype,
                    shape=ir.Shape(tensor.shape.numpy()),
                    name=str(value.name),
                    base_dir=staged_data.parent,
                )
        placed = {value for value, _ in layout} if external_data else set()
        for value, tensor in saved.items():
            # An input's external tensor left out of the data file (too small for it, or no data
            # file written) is copied inline: its location names the input's file, not ours.
            if value not in placed and isinstance(tensor, ir.ExternalTensor):
                value.const_value = ir.Tensor(tensor.numpy().copy(), name=str(value.name))
        try:
            proto = ir.serde.serialize_model(model)
        finally:
            for value, tensor in saved.items():
                value.const_value = tensor
        del proto.graph.value_info[:]
        staged = self._reserve(path)
        size = self._write(path, staged, [proto.SerializeToString(deterministic=True)])
        return StagedModel(staged, path, size + data_size, external_data)

    @staticmethod
    def _data_chunks(layout: list[tuple[ir.Value, int]]) -> Iterator[bytes]:
        position = 0
        for value, offset in layout:
            tensor = value.const_value
            assert tensor is not None
            if offset > position:
                yield bytes(offset - position)
            yield from _tensor_chunks(tensor)
            position = offset + tensor.nbytes

    def adopt(self, other: StagedOutput) -> None:
        """Take over ``other``'s staged files, to be committed (or discarded) with this set's.

        Candidates are staged apart and checked from their files; the one chosen joins the set.
        """
        for _, final in other._staged:
            if any(final.resolve() == mine.resolve() for _, mine in self._staged):
                raise OutputError(f"{final}: given for two outputs; choose different paths")
        self._staged.extend(other._staged)
        self._adopted.extend(other._folders.values())
        other._staged.clear()
        other._folders.clear()

    def commit(self) -> None:
        """Move every staged file into place (data files before the model that names them).

        Without ``force`` a file is linked to its final name, which fails if that name exists:
        of two runs writing one output at once, the second stops with "already exists" and the
        first one's files stay whole. Interrupted halfway (a signal), the files moved so far
        are removed again.
        """
        done: list[Path] = []
        final = Path()
        try:
            for staged, final in self._staged:
                self._place(staged, final)
                done.append(final)
                # A linked file loses its staged name at once: left behind, it would be a
                # second hard link to the output (which quantcli refuses as external data).
                staged.unlink(missing_ok=True)
        except BaseException as exc:
            for moved in done:
                moved.unlink(missing_ok=True)
            if isinstance(exc, FileExistsError):
                raise OutputError(
                    f"{final}: already exists (written meanwhile by another run?); pass --force to replace it"
                ) from exc
            if isinstance(exc, OSError):
                raise OutputError(f"{final}: cannot move into place ({exc.strerror or exc})") from exc
            raise
        self._staged.clear()
        self.discard()

    def _place(self, staged: Path, final: Path) -> None:
        if self.force:
            os.replace(staged, final)
            return
        try:
            os.link(staged, final)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A file system without hard links: check, then rename (not exclusive there).
            if final.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from exc
            os.replace(staged, final)

    def discard(self) -> None:
        """Remove whatever is staged and not committed; the targets are untouched."""
        self._staged.clear()
        for staging in [*self._folders.values(), *self._adopted]:
            shutil.rmtree(staging, ignore_errors=True)
        self._folders.clear()
        self._adopted.clear()


def write_atomic(data: bytes, path: Path, *, force: bool = False, guard: PathGuard | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader never sees a half-written file, and on failure nothing new is left behind.
    ``guard`` refuses ``path`` if the run read it.
    """
    with StagedOutput(force=force, guard=guard) as output:
        output.write_bytes(path, data)
        output.commit()
