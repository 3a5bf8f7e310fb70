"""Calibration and evaluation data: .npz files, folders of .npz, folders of .npy.

The model decides how a file is read. A sample is what one ``InferenceSession.run`` takes, each
input at the model's own rank; a file whose arrays have one more axis holds a stack of samples.
Axis 0 is a batch axis only where the model says it may vary (a symbolic, unnamed or negative
dim, shared by every input): then a feed of N rows is N samples, and samples of one shape may be
stacked into a batch. A fixed leading dim (an RNN state ``[2, ?, 128]``) is never a sample axis.

Everything is checked against the model's inputs when the data is opened, before any work, so a
wrong dtype or shape fails in a second with a message naming the file and the input instead of
deep inside onnxruntime after minutes of calibration. Arrays are read with ``allow_pickle=False``:
data files are often downloaded, and unpickling runs code.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.errors import CalibrationDataError

__all__ = [
    "Batch",
    "Dataset",
    "Feed",
    "InputSpec",
    "dataset_from_samples",
    "has_batch_axis",
    "model_inputs",
    "npy_header",
    "open_dataset",
]

Batch = dict[str, npt.NDArray[np.generic]]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype and shape (None for a dim that may vary).

    ``symbols`` holds the dims' names where the model gives them (None for unnamed or fixed dims);
    it tells whether the first dims of two inputs are the same batch axis.
    """

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int | None, ...]
    symbols: tuple[str | None, ...] = ()

    def describe(self) -> str:
        return f"{self.dtype.name}[{_dims(self.shape)}]"


def _dims(shape: Sequence[int | None]) -> str:
    return ",".join("?" if d is None else str(d) for d in shape)


def model_inputs(model: ir.Model) -> tuple[InputSpec, ...]:
    """The inputs a caller must feed (graph inputs that are not initializers).

    A negative dim (``-1``, as Paddle exports write) is dynamic, as onnxruntime treats it.
    """
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if value.dtype is None or value.shape is None:
            raise CalibrationDataError(f"model input '{value.name}' has no declared type or shape")
        dims = value.shape.dims
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in dims)
        symbols = tuple(
            str(d.value) if isinstance(d, ir.SymbolicDim) and d.value is not None else None for d in dims
        )
        specs.append(InputSpec(str(value.name), np.dtype(value.dtype.numpy()), shape, symbols))
    return tuple(specs)


def has_batch_axis(specs: Sequence[InputSpec]) -> bool:
    """Whether axis 0 of every input is one batch axis: it may vary in every input, carries one
    name wherever it is named, and some input has more axes than that one (a model whose inputs
    are all 1-D is read as taking one sequence, not a batch of scalars)."""
    if not specs or any(len(s.shape) == 0 or s.shape[0] is not None for s in specs):
        return False
    if all(len(s.shape) < 2 for s in specs):
        return False
    names = {s.symbols[0] for s in specs if s.symbols and s.symbols[0] is not None}
    return len(names) <= 1


def _describe_array(array: npt.NDArray[np.generic]) -> str:
    return f"{array.dtype.name}[{','.join(str(d) for d in array.shape)}]"


_MAGIC = {".npz": b"PK", ".npy": b"\x93NUMPY"}
# Budgets on what a data file may inflate to: all its arrays (held in memory while its samples
# are fed), one feed of them, and how many arrays an .npz may hold.
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


def _check_held(path: Path, declared: npt.NDArray[np.generic], held: int) -> None:
    """Refuse an array header declaring more bytes than the file (or zip member) holds: numpy
    would allocate the declared size before finding out."""
    if declared.nbytes > held:
        raise CalibrationDataError(
            f"{path}: an array declares {declared.dtype.name}{list(declared.shape)} "
            f"({declared.nbytes} bytes) but holds {held} bytes; the file is truncated or corrupt"
        )


def npy_header(path: Path) -> npt.NDArray[np.generic]:
    """What a .npy file declares (see :func:`_header`), checked against what it holds."""
    try:
        with path.open("rb") as handle:
            if handle.read(6) != _MAGIC[".npy"]:
                raise CalibrationDataError(f"{path}: not a readable numpy .npy file")
            handle.seek(0)
            array = _header(handle, path)
            _check_held(path, array, path.stat().st_size - handle.tell())
            return array
    except OSError as exc:
        raise CalibrationDataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _headers(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays of a .npz or .npy file as :func:`_header` declares them, read from the headers."""
    _check_magic(path)
    try:
        if path.suffix == ".npy":
            return {"": npy_header(path)}
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            if len(members) > MAX_MEMBERS:
                raise CalibrationDataError(f"{path}: holds {len(members)} arrays, more than {MAX_MEMBERS}")
            headers = {}
            for member in members:
                with archive.open(member) as stream:
                    array = _header(stream, path)
                    _check_held(path, array, member.file_size - stream.tell())
                    headers[member.filename[: -len(".npy")]] = array
            return headers
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CalibrationDataError(
            f"{path}: not a readable numpy file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


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


class _Layout(Enum):
    """How one array holds an input's samples; each reading turns it into a stack of feeds."""

    FEED = "one sample at the model's shape"
    STACK = "a stack of samples along a new first axis"
    # Older forms, kept where they cannot mean anything else: the model's first dim is a batch
    # axis (dynamic, or a fixed 1) and the array leaves it out.
    FEED_UNBATCHED = "one sample without its batch axis"
    STACK_UNBATCHED = "samples along the batch axis of one"

    def stack(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """``array`` as [items, *the model's rank], a view."""
        if self is _Layout.FEED:
            return array[np.newaxis]
        if self is _Layout.FEED_UNBATCHED:
            return array[np.newaxis, np.newaxis]
        if self is _Layout.STACK_UNBATCHED:
            return array[:, np.newaxis]
        return array


def _fits(want: Sequence[int | None], got: Sequence[int]) -> bool:
    return len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got, strict=True))


def _layout(spec: InputSpec, shape: tuple[int, ...]) -> _Layout | None:
    """How an array of ``shape`` holds samples of ``spec`` (None: it does not fit)."""
    want = spec.shape
    if _fits(want, shape):
        return _Layout.FEED
    if len(shape) == len(want) + 1 and _fits(want, shape[1:]):
        return _Layout.STACK
    if want and want[0] in (None, 1) and _fits(want[1:], shape):
        return _Layout.FEED_UNBATCHED
    if want and want[0] == 1 and len(shape) == len(want) and _fits(want[1:], shape[1:]):
        return _Layout.STACK_UNBATCHED
    return None


def _how(spec: InputSpec) -> str:
    dims = _dims(spec.shape)
    stacked = f"N,{dims}" if dims else "N"
    return (
        f"write one sample at the model's shape, {spec.dtype.name}[{dims}], "
        f"or a stack of samples along a new first axis, {spec.dtype.name}[{stacked}]"
    )


def _check_array(path: Path, spec: InputSpec, array: npt.NDArray[np.generic]) -> _Layout:
    """Check one array against one input; return how it holds its samples."""
    where = f"{path}: input '{spec.name}'"
    if array.dtype.kind in "OSUV":
        raise CalibrationDataError(f"{where} holds {array.dtype} data; expected {spec.describe()}")
    layout = _layout(spec, tuple(int(d) for d in array.shape))
    if layout is None:
        raise CalibrationDataError(
            f"{where} expects {spec.describe()}, got {_describe_array(array)} ({_how(spec)})"
        )
    if array.dtype != spec.dtype:
        raise CalibrationDataError(
            f"{where} expects {spec.describe()}, got {_describe_array(array)} "
            f"(convert it with .astype(numpy.{spec.dtype.name}))"
        )
    return layout


@dataclass(frozen=True)
class _Chunk:
    """One file's worth of samples; arrays are re-read when iterated, never all kept.

    The file holds ``items`` feeds (one, or a stack); with ``split`` each feed's batch axis holds
    ``rows`` samples of one row each, else every feed is one sample. Sample ``j`` of the file is
    row ``j % rows`` of feed ``j // rows``.
    """

    path: Path
    layouts: tuple[_Layout, ...]
    items: int
    rows_per_item: int
    split: bool
    # Every input's shape in one sample of this file: samples of one shape may be batched.
    shapes: tuple[tuple[int, ...], ...]
    # The file's samples in use, when samples holding NaN or Inf were skipped (None: all).
    rows: tuple[int, ...] | None = None
    skipped: int = 0
    # Samples made in memory (decoded images, a user's loader) instead of read from ``path``.
    arrays: dict[str, npt.NDArray[np.generic]] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.rows) if self.rows is not None else self.items * self.rows_per_item

    def file_rows(self) -> Sequence[int]:
        return self.rows if self.rows is not None else range(self.num_samples)

    def stacks(self, arrays: Mapping[str, npt.NDArray[np.generic]], specs: Sequence[InputSpec]) -> Batch:
        """Every input as [items, *the model's rank] (views)."""
        if "" in arrays:
            arrays = {specs[0].name: arrays[""]}
        return {s.name: layout.stack(arrays[s.name]) for s, layout in zip(specs, self.layouts, strict=True)}

    def sample(self, stacks: Batch, row: int) -> Batch:
        item, within = divmod(row, self.rows_per_item)
        if self.split:
            return {name: a[item, within : within + 1] for name, a in stacks.items()}
        return {name: a[item] for name, a in stacks.items()}


def _finite_rows(path: Path, stacks: Batch, chunk: _Chunk, *, skip: bool) -> tuple[int, ...] | None:
    """The samples with only finite values (None: all are); refuse non-finite ones unless ``skip``."""
    count = chunk.items * chunk.rows_per_item
    good = np.ones(count, dtype=bool)
    for name in sorted(stacks):
        array = stacks[name]
        if array.dtype.kind not in "fc":
            continue
        finite = np.isfinite(array)
        row_ok = finite.reshape(count, -1).all(axis=1)
        if not skip and not row_ok.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise CalibrationDataError(
                f"{path}: input '{name}' contains {bad} NaN or Inf values; remove those samples "
                "(or pass --skip-nonfinite to skip them)"
            )
        good &= row_ok
    return None if good.all() else tuple(int(i) for i in np.flatnonzero(good))


def _name_arrays(
    path: Path, arrays: dict[str, npt.NDArray[np.generic]], specs: Sequence[InputSpec]
) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays keyed by input name; a .npy file's one array feeds a single-input model."""
    if "" in arrays:
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
    return arrays


def _item_count(
    path: Path,
    specs: Sequence[InputSpec],
    arrays: Mapping[str, npt.NDArray[np.generic]],
    stacks: Batch,
    layouts: Sequence[_Layout],
) -> int:
    """How many feeds every input holds: they must agree."""
    counts = {int(stacks[s.name].shape[0]) for s in specs}
    if len(counts) > 1:
        detail = ", ".join(
            f"'{s.name}' {_describe_array(arrays[s.name])}: {layout.value}"
            for s, layout in zip(specs, layouts, strict=True)
        )
        raise CalibrationDataError(
            f"{path}: inputs hold different numbers of samples ({detail}); write every input of a file "
            "the same way: each at the model's shape for one sample, or each stacked along a new first "
            "axis with the same N"
        )
    return counts.pop()


def _stacks(
    path: Path, arrays: dict[str, npt.NDArray[np.generic]], specs: Sequence[InputSpec]
) -> tuple[dict[str, npt.NDArray[np.generic]], tuple[_Layout, ...], Batch, int]:
    """The arrays keyed by input name, how each holds its samples, each as a stack of feeds, and
    how many feeds they hold: names, dtypes and shapes checked against the model's inputs."""
    arrays = _name_arrays(path, arrays, specs)
    layouts = tuple(_check_array(path, s, arrays[s.name]) for s in specs)
    stacks = {s.name: layout.stack(arrays[s.name]) for s, layout in zip(specs, layouts, strict=True)}
    return arrays, layouts, stacks, _item_count(path, specs, arrays, stacks, layouts)


def _open_file(path: Path, specs: Sequence[InputSpec], *, skip_nonfinite: bool) -> _Chunk:
    """Read and check one file. Names, dtypes, shapes and sizes are checked from the array
    headers first, so a small file declaring gigabytes is refused uninflated."""
    declared, _, stacks, items = _stacks(path, _headers(path), specs)
    # With a batch axis every row of a feed is a sample (the zoo's calib.npz: [64, 3, 640, 640]).
    batch_rows = {int(a.shape[1]) for a in stacks.values()} if has_batch_axis(specs) else set()
    rows = batch_rows.pop() if len(batch_rows) == 1 else 1
    per_sample = sum(a.nbytes for a in declared.values()) // max(items * rows, 1)
    if per_sample > MAX_SAMPLE_BYTES:
        raise CalibrationDataError(
            f"{path}: one sample is {per_sample} bytes, more than quantcli feeds at once "
            f"({MAX_SAMPLE_BYTES}); check the array shapes"
        )
    return _check_arrays(path, _read_file(path), specs, skip_nonfinite=skip_nonfinite)


def _check_arrays(
    path: Path,
    arrays: dict[str, npt.NDArray[np.generic]],
    specs: Sequence[InputSpec],
    *,
    skip_nonfinite: bool = False,
    keep: bool = False,
) -> _Chunk:
    """Check one file's (or one in-memory sample's) arrays against the model's inputs; ``keep``
    holds them in the chunk instead of re-reading ``path``."""
    arrays, layouts, stacks, items = _stacks(path, arrays, specs)
    # Rows of one batch axis are samples when every input has the same number of them.
    batch_rows = {int(a.shape[1]) for a in stacks.values()} if has_batch_axis(specs) else set()
    split = len(batch_rows) == 1
    rows_per_item = batch_rows.pop() if split else 1
    shapes = tuple(
        ((1, *stacks[s.name].shape[2:]) if split else tuple(stacks[s.name].shape[1:])) for s in specs
    )
    chunk = _Chunk(path, layouts, items, rows_per_item, split, shapes, arrays=arrays if keep else None)
    if chunk.num_samples == 0:
        raise CalibrationDataError(f"{path}: holds no samples")
    rows = _finite_rows(path, stacks, chunk, skip=skip_nonfinite)
    if rows is None:
        return chunk
    return _Chunk(
        path,
        layouts,
        items,
        rows_per_item,
        split,
        shapes,
        rows=rows,
        skipped=chunk.num_samples - len(rows),
        arrays=chunk.arrays,
    )


@dataclass(frozen=True)
class Feed:
    """One onnxruntime feed: the samples at ``positions`` of a dataset (0-based, in dataset
    order), stacked along the batch axis when there are several (all of one shape)."""

    positions: tuple[int, ...]
    arrays: Batch

    def split(self) -> list[Feed]:
        """One feed per sample (the samples are rows of the batch axis)."""
        if len(self.positions) == 1:
            return [self]
        return [
            Feed((p,), {k: v[i : i + 1] for k, v in self.arrays.items()})
            for i, p in enumerate(self.positions)
        ]


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
        self._starts = [0, *itertools.accumulate(c.num_samples for c in chunks)][:-1]

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
        """Whether samples of one shape may be stacked into one run (the model has a batch axis)."""
        return has_batch_axis(self.specs)

    def _locate(self, sample: int) -> tuple[int, int]:
        """(chunk, the chunk's own sample index) of a sample of all the data."""
        chunk = bisect.bisect_right(self._starts, sample) - 1
        return chunk, sample - self._starts[chunk]

    def _groups(self) -> list[list[tuple[int, int, int]]]:
        """(position, chunk, sample in chunk) of every sample, grouped by shape where samples may
        be batched, each group in dataset order, groups in order of their first sample."""
        groups: dict[object, list[tuple[int, int, int]]] = {}
        for position, sample in enumerate(self._selection):
            chunk, within = self._locate(sample)
            key: object = self._chunks[chunk].shapes if self._chunks[chunk].split else position
            groups.setdefault(key, []).append((position, chunk, within))
        return list(groups.values())

    def batches(self, batch_size: int) -> Iterator[Feed]:
        """Yield feeds of up to ``batch_size`` samples of one shape (1 without a batch axis).

        Only samples whose every input has the same shape share a feed, so what a sample gives
        does not depend on the batch size. Each file is read once per pass: all its samples have
        one shape.
        """
        size = max(1, batch_size) if self.can_batch else 1
        cached: tuple[int, Batch] | None = None
        for group in self._groups():
            for start in range(0, len(group), size):
                pieces: list[Batch] = []
                for _, chunk_index, within in group[start : start + size]:
                    chunk = self._chunks[chunk_index]
                    if cached is None or cached[0] != chunk_index:
                        arrays = chunk.arrays if chunk.arrays is not None else _read_file(chunk.path)
                        cached = (chunk_index, chunk.stacks(arrays, self.specs))
                    pieces.append(chunk.sample(cached[1], chunk.file_rows()[within]))
                positions = tuple(p for p, _, _ in group[start : start + size])
                yield Feed(positions, _stack(pieces))

    def largest_sample(self) -> Batch | None:
        """The sample with the most input bytes (the first of them), as a feed."""
        best, best_bytes = None, -1
        for position, sample in enumerate(self._selection):
            chunk = self._chunks[self._locate(sample)[0]]
            shapes = zip(self.specs, chunk.shapes, strict=True)
            size = sum(math.prod(shape) * s.dtype.itemsize for s, shape in shapes)
            if size > best_bytes:
                best, best_bytes = position, size
        if best is None:
            return None
        return next(self.subset([best]).batches(1)).arrays


def _stack(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        # Not ascontiguousarray: it turns a scalar input into shape [1].
        return {name: np.asarray(a, order="C") for name, a in pieces[0].items()}
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}


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
    or a stack of them along a new first axis), checked exactly as files are; ``source`` names them
    in errors.

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
        chunk = _check_arrays(where, arrays, specs, skip_nonfinite=skip_nonfinite, keep=True)
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
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not files:
            raise CalibrationDataError(f"{path}: folder holds no .npz or .npy files")
        kinds = {p.suffix for p in files}
        if len(kinds) > 1:
            raise CalibrationDataError(f"{path}: folder mixes .npz and .npy files; use one kind")
    chunks = tuple(_open_file(p, specs, skip_nonfinite=skip_nonfinite) for p in files)
    total = sum(c.num_samples for c in chunks)
    skipped = sum(c.skipped for c in chunks)
    if skipped:
        logger.warning("%s: skipped %d sample(s) holding NaN or Inf, kept %d", path, skipped, total)
    if total == 0:
        raise CalibrationDataError(f"{path}: no sample is free of NaN and Inf; nothing to calibrate with")
    return Dataset(path, specs, chunks, range(total))
