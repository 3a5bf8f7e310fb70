"""Where samples come from: numpy files, a folder of images, or the user's own loader.

Numpy files are read lazily (see :mod:`quantcli.calibration.data`); images are decoded and
preprocessed once into memory, so a folder of a few hundred images costs a few hundred MB; a
loader runs the user's code, which is theirs to trust.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quantcli.calibration.data import MAX_SAMPLE_BYTES, Dataset, InputSpec, dataset_from_samples, open_dataset
from quantcli.errors import CalibrationDataError, ConfigError, QuantCliError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_BYTES",
    "MAX_LOADER_BYTES",
    "DataSource",
    "ImageFolder",
    "Preprocess",
    "UserLoader",
    "loader_file",
    "open_source",
    "source_paths",
]

# A --data-loader's samples are kept in memory: without --max-samples, a loader yielding more than
# this many bytes of them is refused (with it, the user has said how many to hold).
MAX_LOADER_BYTES = 256 * 2**20
# Decoded images are held in memory too; a folder decoding to more than this needs --max-samples.
MAX_IMAGE_BYTES = 2 * 2**30
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_PREPROCESS_KEYS = ("resize", "layout", "scale", "mean", "std", "channels")


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How an image becomes a model input. ``resize`` is (height, width); None takes the model's
    fixed input size. ``layout`` None is inferred from which axis of the input has 3 channels."""

    resize: tuple[int, int] | None = None
    layout: str | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "rgb"

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """``resize=224,224;layout=nchw;scale=1/255;mean=0.485,0.456,0.406;std=...;channels=rgb``."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, _, raw = part.partition("=")
            key = key.strip()
            if key not in _PREPROCESS_KEYS or not raw:
                valid = ", ".join(_PREPROCESS_KEYS)
                raise ConfigError(
                    f"--preprocess: '{part}' is not KEY=VALUE with a known key (valid keys: {valid})"
                )
            try:
                values[key] = _value(key, raw.strip())
            except (ValueError, ZeroDivisionError) as exc:
                raise ConfigError(f"--preprocess: bad value for {key}: '{raw}' ({exc})") from exc
        return cls(**values)


def _value(key: str, raw: str) -> Any:
    numbers = (
        [float(Fraction(x.strip())) for x in raw.split(",")]
        if key in ("resize", "scale", "mean", "std")
        else []
    )
    if key == "resize":
        if len(numbers) != 2 or min(numbers) < 1:
            raise ValueError("expected HEIGHT,WIDTH")
        return (int(numbers[0]), int(numbers[1]))
    if key == "scale":
        if len(numbers) != 1:
            raise ValueError("expected one number, e.g. 1/255")
        return numbers[0]
    if key in ("mean", "std"):
        if len(numbers) not in (1, 3) or (key == "std" and min(numbers) <= 0):
            raise ValueError("expected 1 or 3 numbers (std > 0)")
        return tuple(numbers)
    allowed = ("nchw", "nhwc") if key == "layout" else ("rgb", "bgr")
    if raw.lower() not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}")
    return raw.lower()


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images feeding a model's single image input."""

    path: Path
    preprocess: Preprocess

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class UserLoader:
    """``package.module:function``: a function returning an iterable of input dicts."""

    reference: str

    def __str__(self) -> str:
        return self.reference


DataSource = Path | ImageFolder | UserLoader


def _image_geometry(spec: InputSpec, preprocess: Preprocess, folder: Path) -> tuple[str, tuple[int, int]]:
    """Layout and (height, width) for ``spec``, from the flags or the model's fixed shape."""
    if len(spec.shape) != 4 or spec.dtype != np.float32:
        raise CalibrationDataError(
            f"{folder}: images feed a 4-D float32 input, but '{spec.name}' is {spec.describe()}"
        )
    layout = preprocess.layout or ("nhwc" if spec.shape[3] == 3 and spec.shape[1] != 3 else "nchw")
    height, width = (spec.shape[2], spec.shape[3]) if layout == "nchw" else (spec.shape[1], spec.shape[2])
    if preprocess.resize is not None:
        height, width = preprocess.resize
    if height is None or width is None:
        raise CalibrationDataError(
            f"{folder}: input '{spec.name}' is {spec.describe()}, of no fixed size; "
            "give --preprocess resize=HEIGHT,WIDTH"
        )
    if height * width * 3 * 4 > MAX_SAMPLE_BYTES:
        raise CalibrationDataError(
            f"{folder}: images of {height}x{width} make samples larger than {MAX_SAMPLE_BYTES} bytes; "
            "resize them smaller (--preprocess resize=HEIGHT,WIDTH)"
        )
    return layout, (height, width)


def _decode(image_module: Any, path: Path, width: int, height: int) -> npt.NDArray[np.float32]:
    """One image as float32 RGB pixels at ``height`` x ``width``. Its size is checked from the
    header, before a pixel is decoded: a small file can declare gigapixels."""
    with warnings.catch_warnings():
        # Pillow's own bomb warning is moot: the size is checked here, in one line.
        warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
        with image_module.open(path) as image:
            if image.width * image.height * 3 > MAX_SAMPLE_BYTES:
                raise CalibrationDataError(
                    f"{path}: a {image.width}x{image.height} image is larger than quantcli decodes "
                    f"({MAX_SAMPLE_BYTES} bytes); shrink it"
                )
            rgb = image.convert("RGB").resize((width, height), image_module.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.float32)


def _read_images(source: ImageFolder, spec: InputSpec) -> Iterator[dict[str, npt.NDArray[np.float32]]]:
    try:
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (optional: only image folders need it)
    except ImportError as exc:
        raise CalibrationDataError(
            f"{source.path}: reading images needs Pillow (pip install 'quantcli[images]')"
        ) from exc
    layout, (height, width) = _image_geometry(spec, source.preprocess, source.path)
    pre = source.preprocess
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    for path in sorted(p for p in source.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            pixels = _decode(Image, path, width, height)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise CalibrationDataError(f"{path}: not a readable image ({exc})") from exc
        if pre.channels == "bgr":
            pixels = pixels[..., ::-1]
        pixels = (pixels * np.float32(pre.scale) - mean) / std
        if layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        yield {spec.name: np.ascontiguousarray(pixels, dtype=np.float32)}


def loader_file(reference: str) -> Path | None:
    """The file ``package.module:function`` would be imported from, found without importing
    anything (None: not found on the path, or built in)."""
    module_name = reference.partition(":")[0]
    parts = module_name.split(".")
    if not module_name or not all(part.isidentifier() for part in parts):
        return None
    for entry in ["", *sys.path]:
        base = Path(entry or ".").joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def source_paths(source: DataSource) -> list[Path]:
    """The files and folders reading ``source`` touches (for the output guard)."""
    if isinstance(source, UserLoader):
        found = loader_file(source.reference)
        return [found] if found is not None else []
    return [source.path if isinstance(source, ImageFolder) else source]


def _call_loader(reference: str) -> Any:
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"--data-loader: expected package.module:function, got '{reference}'")
    # The current folder is importable, as for `python -m`: a loader next to the data just works.
    if "" not in sys.path:
        sys.path.insert(0, "")
    with _loader_errors(reference, f"importing module '{module_name}'"):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"--data-loader: cannot import module '{module_name}' ({exc})") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"--data-loader: module '{module_name}' has no function '{function_name}'")
    with _loader_errors(reference, f"calling {function_name}()"):
        return function()


@contextlib.contextmanager
def _loader_errors(reference: str, doing: str) -> Iterator[None]:
    """The user's code failing is the user's error (exit 1, named), not a bug in quantcli; a
    loader calling sys.exit() must not end the run with its exit code (0 would be a false success)."""
    try:
        yield
    except QuantCliError:
        raise
    except SystemExit as exc:
        raise CalibrationDataError(
            f"--data-loader {reference}: {doing} called sys.exit({exc.code!r}); a loader must return samples"
        ) from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CalibrationDataError(
            f"--data-loader {reference}: {doing} raised {type(exc).__name__}: {first}"
        ) from exc


def _guarded_items(reference: str, samples: Iterable[Any]) -> Iterator[Any]:
    """The loader's items, each ``next()`` under :func:`_loader_errors`."""
    with _loader_errors(reference, "iterating its samples"):
        iterator = iter(samples)
    index = 0
    while True:
        with _loader_errors(reference, f"producing item {index}"):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
        index += 1


def open_source(
    source: DataSource,
    specs: tuple[InputSpec, ...],
    *,
    skip_nonfinite: bool = False,
    max_samples: int | None = None,
) -> Dataset:
    """Open any data source as a checked :class:`Dataset`.

    A loader's items are held in memory, so it is read lazily: no further than ``max_samples``
    samples, and without ``max_samples`` never past :data:`MAX_LOADER_BYTES` (an endless
    generator is refused, not drained).
    """
    if isinstance(source, UserLoader):
        samples = _call_loader(source.reference)
        if isinstance(samples, Mapping) or not hasattr(samples, "__iter__"):
            raise CalibrationDataError(
                f"{source}: must return an iterable of dicts, got {type(samples).__name__}"
            )
        return dataset_from_samples(
            str(source),
            _guarded_items(source.reference, samples),
            specs,
            skip_nonfinite=skip_nonfinite,
            max_samples=max_samples,
            max_bytes=MAX_LOADER_BYTES if max_samples is None else None,
        )
    if (
        isinstance(source, Path)
        and source.is_dir()
        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in source.iterdir())
    ):
        source = ImageFolder(source, Preprocess())
    if isinstance(source, ImageFolder):
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise CalibrationDataError(f"{source}: images feed a single-input model; this one has {names}")
        return dataset_from_samples(
            str(source),
            _read_images(source, specs[0]),
            specs,
            skip_nonfinite=skip_nonfinite,
            max_samples=max_samples,
            max_bytes=MAX_IMAGE_BYTES if max_samples is None else None,
        )
    return open_dataset(source, specs, skip_nonfinite=skip_nonfinite)
