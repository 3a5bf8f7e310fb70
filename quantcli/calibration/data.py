"""Calibration and evaluation data: .npz files, folders of .npz, folders of .npy.

Everything is checked against the model's inputs when the data is opened, before any work, so a
wrong dtype or shape fails in a second with a message naming the file and the input instead of
deep inside onnxruntime after minutes of calibration. Arrays are read with ``allow_pickle=False``:
data files are often downloaded, and unpickling runs code.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.errors import CalibrationDataError

__all__ = ["Batch", "Dataset", "InputSpec", "dataset_from_samples", "model_inputs", "open_dataset"]

Batch = dict[str, npt.NDArray[np.generic]]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype and shape (None for a dynamic dim)."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int | None, ...]

    @property
    def batched(self) -> bool:
        """True when axis 0 is a batch axis we may fill (dynamic or 1)."""
        return len(self.shape) > 0 and self.shape[0] in (None, 1)

    @property
    def dynamic_batch(self) -> bool:
        return len(self.shape) > 0 and self.shape[0] is None

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def model_inputs(model: ir.Model) -> tuple[InputSpec, ...]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if value.dtype is None or value.shape is None:
            raise CalibrationDataError(f"model input '{value.name}' has no declared type or shape")
        shape = tuple(d if isinstance(d, int) else None for d in value.shape.dims)
        specs.append(InputSpec(str(value.name), np.dtype(value.dtype.numpy()), shape))
    return tuple(specs)


def _describe_array(array: npt.NDArray[np.generic]) -> str:
    return f"{array.dtype.name}[{','.join(str(d) for d in array.shape)}]"


_MAGIC = {".npz": b"PK", ".npy": b"\x93NUMPY"}
# Budgets on what a data file may inflate to: all its arrays (held in memory while its samples
# are fed), one sample of them, and how many arrays an .npz may hold.
MAX_FILE_BYTES = 2 * 2**30
MAX_SAMPLE_BYTES = 256 * 2**20
MAX_MEMBERS = 4096


def _check_magic(path: Path) -> None:
    # numpy treats a file without its magic as a pickle; say what the file really is instead.
    try:
        with path.open("rb") as handle:
            head = handle.read(6)
    except OSError as exc:
        raise CalibrationDataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not head.startswith(_MAGIC[path.suffix]):
        raise CalibrationDataError(f"{path}: not a readable numpy {path.suffix} file")


def _read_file(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    _check_magic(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        return {"": np.load(path, allow_pickle=False)}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise CalibrationDataError(
                f"{path}: holds pickled Python objects, which quantcli never loads; save plain numeric arrays"
            ) from exc
        raise CalibrationDataError(f"{path}: not a readable numpy file ({_first_line(exc)})") from exc
    except Exception as exc:  # zip, I/O, or a corrupt header reaching numpy's parser (TokenError, ...)
        raise CalibrationDataError(
            f"{path}: not a readable numpy file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


@dataclass(frozen=True)
class _Chunk:
    """One file's worth of samples; arrays are re-read when iterated, never all kept."""

    path: Path
    num_samples: int
    # Whether the file's arrays lack the sample axis (one sample per file).
    single_sample: bool
    # The file's rows in use, when samples holding NaN or Inf were skipped (None: all).
    rows: tuple[int, ...] | None = None
    skipped: int = 0
    # Samples made in memory (decoded images, a user's loader) instead of read from ``path``.
    arrays: dict[str, npt.NDArray[np.generic]] | None = None

    def file_rows(self) -> Sequence[int]:
        return self.rows if self.rows is not None else range(self.num_samples)


def _check_array(path: Path, spec: InputSpec, array: npt.NDArray[np.generic], *, stacked: bool) -> int:
    """Check one array against one input; return its number of samples."""
    where = f"{path}: input '{spec.name}'"
    if array.dtype.kind in "OSUV":
        raise CalibrationDataError(f"{where} holds {array.dtype} data; expected {spec.describe()}")
    # A "sample" is one row of the model's batch axis, or one whole feed for a model without one.
    sample_shape = spec.shape[1:] if spec.batched else spec.shape
    expected_rank = len(sample_shape) + (1 if stacked else 0)
    shape_ok = array.ndim == expected_rank and all(
        want is None or want == got
        for want, got in zip(sample_shape, array.shape[array.ndim - len(sample_shape) :], strict=True)
    )
    if array.dtype != spec.dtype or not shape_ok:
        layout = "samples along axis 0, then " if stacked else "one sample: "
        raise CalibrationDataError(
            f"{where} expects {spec.describe()}, got {_describe_array(array)} "
            f"({layout}{spec.dtype.name}[{','.join('?' if d is None else str(d) for d in sample_shape)}])"
        )
    return int(array.shape[0]) if stacked else 1


def _finite_rows(
    path: Path, arrays: dict[str, npt.NDArray[np.generic]], count: int, *, stacked: bool, skip: bool
) -> tuple[int, ...] | None:
    """The rows with only finite values (None: all are); refuse non-finite ones unless ``skip``."""
    good = np.ones(count, dtype=bool)
    for name in sorted(arrays):
        array = arrays[name]
        if array.dtype.kind not in "fc":
            continue
        finite = np.isfinite(array) if stacked else np.isfinite(array)[np.newaxis]
        row_ok = finite.reshape(count, -1).all(axis=1)
        if not skip and not row_ok.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise CalibrationDataError(
                f"{path}: input '{name}' contains {bad} NaN or Inf values; remove those samples "
                "(or pass --skip-nonfinite to skip them)"
            )
        good &= row_ok
    return None if good.all() else tuple(int(i) for i in np.flatnonzero(good))


def _header(stream: IO[bytes], path: Path) -> npt.NDArray[np.generic]:
    """An array of the dtype and shape a .npy header declares, taking no memory (all its
    elements are one element, repeated by zero strides): what the file will inflate to, known
    before a byte of it is inflated."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except Exception as exc:  # numpy raises ValueError, SyntaxError, TokenError... on bad headers
        raise CalibrationDataError(
            f"{path}: not a readable numpy file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if dtype.hasobject:
        raise CalibrationDataError(
            f"{path}: holds pickled Python objects, which quantcli never loads; save plain numeric arrays"
        )
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_FILE_BYTES:
        raise CalibrationDataError(
            f"{path}: an array of {dtype.name}{list(shape)} is {size} bytes, more than one data file may "
            f"hold ({MAX_FILE_BYTES}); split the samples into a folder of smaller files"
        )
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))


def _headers(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays of a .npz or .npy file as :func:`_header` declares them, read from the headers."""
    _check_magic(path)
    try:
        if path.suffix == ".npy":
            with path.open("rb") as handle:
                return {"": _header(handle, path)}
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            if len(members) > MAX_MEMBERS:
                raise CalibrationDataError(f"{path}: holds {len(members)} arrays, more than {MAX_MEMBERS}")
            headers = {}
            for member in members:
                with archive.open(member) as stream:
                    headers[member.filename[: -len(".npy")]] = _header(stream, path)
            return headers
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CalibrationDataError(
            f"{path}: not a readable numpy file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _open_file(
    path: Path, specs: Sequence[InputSpec], *, stacked: bool | None, skip_nonfinite: bool = False
) -> _Chunk:
    """Read and check one file. ``stacked=None`` (files in a folder) infers from the rank whether
    the file holds a stack of samples or a single one. Names, dtypes, shapes and sizes are checked
    from the array headers first, so a small file declaring gigabytes is refused uninflated."""
    declared, _, count = _check_layout(path, _headers(path), specs, stacked=stacked)
    per_sample = sum(a.dtype.itemsize * math.prod(a.shape) for a in declared.values()) // count
    if per_sample > MAX_SAMPLE_BYTES:
        raise CalibrationDataError(
            f"{path}: one sample is {per_sample} bytes, more than quantcli feeds at once "
            f"({MAX_SAMPLE_BYTES}); check the array shapes"
        )
    return _check_arrays(path, _read_file(path), specs, stacked=stacked, skip_nonfinite=skip_nonfinite)


def _check_layout(
    path: Path,
    arrays: dict[str, npt.NDArray[np.generic]],
    specs: Sequence[InputSpec],
    *,
    stacked: bool | None,
) -> tuple[dict[str, npt.NDArray[np.generic]], bool, int]:
    """Names, dtypes and shapes of one file's arrays against the model's inputs: the arrays keyed
    by input name, whether they are stacks of samples, and how many samples they hold."""
    if "" in arrays:  # a .npy file: the model must have exactly one input
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise CalibrationDataError(
                f"{path}: a .npy file feeds a single-input model, but the model has inputs {names}; use .npz"
            )
        arrays = {specs[0].name: arrays[""]}
    expected = {s.name for s in specs}
    missing = sorted(expected - arrays.keys())
    unknown = sorted(arrays.keys() - expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown name(s) {', '.join(unknown)}")
        raise CalibrationDataError(
            f"{path}: {'; '.join(parts)} (model inputs: {', '.join(sorted(expected))})"
        )
    if stacked is None:
        first = specs[0]
        sample_rank = len(first.shape) - (1 if first.batched else 0)
        stacked = arrays[first.name].ndim != sample_rank
    counts = {s.name: _check_array(path, s, arrays[s.name], stacked=stacked) for s in specs}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise CalibrationDataError(f"{path}: inputs have different numbers of samples ({detail})")
    count = next(iter(counts.values()))
    if count == 0:
        raise CalibrationDataError(f"{path}: holds no samples")
    return arrays, stacked, count


def _check_arrays(
    path: Path,
    arrays: dict[str, npt.NDArray[np.generic]],
    specs: Sequence[InputSpec],
    *,
    stacked: bool | None,
    skip_nonfinite: bool = False,
    keep: bool = False,
) -> _Chunk:
    """Check one file's (or one in-memory sample's) arrays against the model's inputs; ``keep``
    holds them in the chunk instead of re-reading ``path``."""
    arrays, stacked, count = _check_layout(path, arrays, specs, stacked=stacked)
    rows = _finite_rows(path, arrays, count, stacked=stacked, skip=skip_nonfinite)
    held = arrays if keep else None
    if rows is None:
        return _Chunk(path, count, single_sample=not stacked, arrays=held)
    return _Chunk(
        path, len(rows), single_sample=not stacked, rows=rows, skipped=count - len(rows), arrays=held
    )


class Dataset:
    """Validated samples for a model, read file by file when iterated."""

    def __init__(
        self,
        source: Path,
        specs: tuple[InputSpec, ...],
        chunks: tuple[_Chunk, ...],
        selection: Sequence[int],
    ) -> None:
        self.source = source
        self.specs = specs
        self._chunks = chunks
        self._selection = selection

    @property
    def num_samples(self) -> int:
        return len(self._selection)

    def split(self, fraction: float) -> tuple[Dataset, Dataset]:
        """Split into (first part, last ``fraction``), deterministically; both keep >= 1 sample."""
        n = self.num_samples
        held = min(max(round(n * fraction), 1), n - 1) if n > 1 else 0
        first, rest = self._selection[: n - held], self._selection[n - held :]
        return (
            Dataset(self.source, self.specs, self._chunks, first),
            Dataset(self.source, self.specs, self._chunks, rest),
        )

    def limit(self, max_samples: int | None) -> Dataset:
        if max_samples is None or max_samples >= self.num_samples:
            return self
        return Dataset(self.source, self.specs, self._chunks, self._selection[:max_samples])

    def subset(self, positions: Sequence[int]) -> Dataset:
        """The samples at ``positions`` of this dataset; they are read in file order."""
        return Dataset(self.source, self.specs, self._chunks, sorted(self._selection[p] for p in positions))

    @property
    def can_batch(self) -> bool:
        return all(s.dynamic_batch for s in self.specs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Yield feeds of up to ``batch_size`` samples (1 when the model's batch axis is fixed)."""
        size = batch_size if self.can_batch else 1
        pending: list[Batch] = []
        pending_count = 0
        wanted = set(self._selection)
        index = 0
        for chunk in self._chunks:
            file_rows = chunk.file_rows()
            rows = [file_rows[i] for i in range(chunk.num_samples) if index + i in wanted]
            index += chunk.num_samples
            if not rows:
                continue
            arrays = chunk.arrays if chunk.arrays is not None else _read_file(chunk.path)
            if "" in arrays:
                arrays = {self.specs[0].name: arrays[""]}
            for start in range(0, len(rows), size):
                piece = self._rows(arrays, chunk, rows[start : start + size])
                pending.append(piece)
                pending_count += len(rows[start : start + size])
                if pending_count >= size:
                    yield from self._flush(pending, size)
                    pending, pending_count = [], 0
        if pending:
            yield from self._flush(pending, size)

    def _rows(self, arrays: dict[str, npt.NDArray[np.generic]], chunk: _Chunk, rows: list[int]) -> Batch:
        out: Batch = {}
        for spec in self.specs:
            array = arrays[spec.name]
            if chunk.single_sample:
                array = array[np.newaxis]
            out[spec.name] = np.ascontiguousarray(array[rows])
        return out

    def _flush(self, pending: list[Batch], size: int) -> Iterator[Batch]:
        merged = {s.name: np.concatenate([p[s.name] for p in pending]) for s in self.specs}
        total = next(iter(merged.values())).shape[0]
        for start in range(0, total, size):
            feed = {name: array[start : start + size] for name, array in merged.items()}
            if not self.can_batch:
                # The model takes one sample: without a batch axis, or with a fixed batch of 1.
                feed = {s.name: (feed[s.name] if s.batched else feed[s.name][0]) for s in self.specs}
            yield feed


def dataset_from_samples(
    source: str,
    samples: Iterable[Mapping[str, npt.NDArray[np.generic]]],
    specs: tuple[InputSpec, ...],
    *,
    skip_nonfinite: bool = False,
    max_samples: int | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """A dataset of samples made in memory, each a dict of arrays keyed by input name (one sample,
    or a stack of them along axis 0), checked exactly as files are; ``source`` names them in errors.

    ``samples`` is consumed lazily: no item is taken once ``max_samples`` samples are held, and
    holding more than ``max_bytes`` of arrays is refused."""
    chunks = []
    total = held = 0
    for index, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise CalibrationDataError(
                f"{source}: item {index} is a {type(sample).__name__}, "
                "not a dict of arrays keyed by input name"
            )
        where = Path(f"{source}[{index}]")
        try:
            arrays = {str(k): np.asarray(v) for k, v in sample.items()}
        except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot convert
            raise CalibrationDataError(
                f"{where}: not an array ({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        held += sum(a.nbytes for a in arrays.values())
        if max_bytes is not None and held > max_bytes:
            raise CalibrationDataError(
                f"{source}: yielded more than {max_bytes} bytes of samples by item {index}; "
                "pass --max-samples N to read only the first N"
            )
        chunk = _check_arrays(where, arrays, specs, stacked=None, skip_nonfinite=skip_nonfinite, keep=True)
        chunks.append(chunk)
        total += chunk.num_samples
        if max_samples is not None and total >= max_samples:
            break
    if total == 0:
        raise CalibrationDataError(f"{source}: yielded no usable samples")
    return Dataset(Path(source), specs, tuple(chunks), range(total))


def open_dataset(path: Path, specs: tuple[InputSpec, ...], *, skip_nonfinite: bool = False) -> Dataset:
    """Open and validate ``path`` (a .npz file, or a folder of .npz or .npy files) for ``specs``.

    Samples holding NaN or Inf are refused, or with ``skip_nonfinite`` left out and counted.
    """
    if "\x00" in str(path):
        raise CalibrationDataError(f"{str(path)!r}: the path holds a NUL byte")
    if not path.exists():
        raise CalibrationDataError(f"{path}: no such file or folder")
    if not path.is_file() and not path.is_dir():
        raise CalibrationDataError(
            f"{path}: not a regular file or a folder (a FIFO or device cannot be data)"
        )
    if path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise CalibrationDataError(f"{path}: expected a .npz or .npy file, or a folder of them")
        chunks: tuple[_Chunk, ...] = (_open_file(path, specs, stacked=True, skip_nonfinite=skip_nonfinite),)
    else:
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not files:
            raise CalibrationDataError(f"{path}: folder holds no .npz or .npy files")
        kinds = {p.suffix for p in files}
        if len(kinds) > 1:
            raise CalibrationDataError(f"{path}: folder mixes .npz and .npy files; use one kind")
        chunks = tuple(_open_file(p, specs, stacked=None, skip_nonfinite=skip_nonfinite) for p in files)
    total = sum(c.num_samples for c in chunks)
    skipped = sum(c.skipped for c in chunks)
    if skipped:
        logger.warning("%s: skipped %d sample(s) holding NaN or Inf, kept %d", path, skipped, total)
    if total == 0:
        raise CalibrationDataError(f"{path}: no sample is free of NaN and Inf; nothing to calibrate with")
    return Dataset(path, specs, chunks, range(total))
