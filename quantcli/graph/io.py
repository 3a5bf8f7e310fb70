"""Reading models, fingerprinting them, checking and writing them atomically.

Loading goes through onnx_ir, whose external tensors are read lazily, so weights are only in
memory while a pass works on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.version_converter
import onnx_ir as ir
import onnxruntime as ort

from quantcli.errors import ModelLoadError, OutputError, QuantizationError

__all__ = [
    "ModelFile",
    "check_model_proto",
    "check_writable",
    "fingerprint",
    "load_model",
    "open_session",
    "serialize",
    "write_atomic",
]

logger = logging.getLogger(__name__)

# QuantizeLinear/DequantizeLinear with per-axis parameters exist from opset 13 on.
MIN_OPSET = 13
# protobuf cannot serialize a message of 2 GiB or more.
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ModelFile:
    """A loaded model with where it came from."""

    path: Path
    model: ir.Model
    size_bytes: int
    upgraded_from_opset: int | None = None  # the file's opset when it had to be upgraded

    @property
    def opset(self) -> int:
        return self.model.opset_imports.get("", self.model.opset_imports.get("ai.onnx", 0))


def _file_size_with_external_data(path: Path, model: ir.Model) -> int:
    size = path.stat().st_size
    seen: set[Path] = set()
    for initializer in model.graph.initializers.values():
        tensor = initializer.const_value
        if isinstance(tensor, ir.ExternalTensor):
            data_path = Path(tensor.base_dir) / tensor.location
            if data_path not in seen and data_path.is_file():
                seen.add(data_path)
                size += data_path.stat().st_size
    return size


def _load_external_data(path: Path, model: ir.Model) -> None:
    """Read external weights into memory, refusing locations outside the model's folder.

    onnxruntime gets the model as bytes, where relative data paths mean nothing; models this
    release handles fit in memory (protobuf's 2 GiB limit applies to the output anyway). A
    location like ``../../etc/passwd`` or an absolute path is refused before anything is read.
    """
    folder = path.resolve().parent
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        target = (Path(tensor.base_dir) / tensor.location).resolve()
        if Path(tensor.location).is_absolute() or not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{path}: external data of '{value.name}' points outside the model's folder "
                f"({tensor.location}); refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(f"{path}: external data file {tensor.location} of '{value.name}' is missing")
    try:
        ir.external_data.load_to_model(model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: external data cannot be read ({exc})") from exc


def load_model(path: Path) -> ModelFile:
    """Load an ONNX model, raising :class:`ModelLoadError` with a one-line reason on failure."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf and onnx_ir raise many types; all mean "not a model"
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if len(model.graph) == 0:
        raise ModelLoadError(f"{path}: not an ONNX model (the graph has no nodes)")
    size = _file_size_with_external_data(path, model)
    _load_external_data(path, model)
    loaded = ModelFile(path=path, model=model, size_bytes=size)
    if loaded.opset < MIN_OPSET:
        upgraded = _upgrade_opset(path, model, loaded.opset)
        return ModelFile(path=path, model=upgraded, size_bytes=size, upgraded_from_opset=loaded.opset)
    return loaded


def _upgrade_opset(path: Path, model: ir.Model, opset: int) -> ir.Model:
    """The model converted to MIN_OPSET by onnx's version converter.

    Per-axis QuantizeLinear/DequantizeLinear need opset 13; many exported models (PaddlePaddle's,
    older PyTorch exports) are at 11 or 12. onnx's converter upgrades them op by op; a model it
    cannot convert is refused with its reason.
    """
    if opset < 7:
        raise ModelLoadError(
            f"{path}: opset {opset} is too old to upgrade automatically; quantcli needs >= {MIN_OPSET}"
        )
    try:
        converted = onnx.version_converter.convert_version(ir.to_proto(model), MIN_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeErrors / ValueErrors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path}: opset {opset} could not be upgraded to {MIN_OPSET} ({first_line}); "
            "upgrade it with onnx.version_converter and retry"
        ) from exc
    logger.info("%s: upgraded from opset %d to %d", path, opset, MIN_OPSET)
    return ir.from_proto(converted)


def fingerprint(model: ir.Model) -> str:
    """SHA-256 of the graph's structure and weights.

    It identifies "the same model" for calibration files: any change of a node, a name or a
    weight value changes it, while re-saving the same model does not. Weights are hashed tensor by
    tensor so a large model is never serialized whole.
    """
    digest = hashlib.sha256()
    graph = model.graph
    for value in (*graph.inputs, *graph.outputs):
        digest.update(f"io:{value.name}:{value.dtype}:{value.shape}\n".encode())
    for node in graph:
        digest.update(ir.serde.serialize_node(node).SerializeToString(deterministic=True))
    for name in sorted(graph.initializers):
        tensor = graph.initializers[name].const_value
        if tensor is None:
            continue
        digest.update(f"init:{name}:{tensor.dtype}:{tensor.shape}\n".encode())
        digest.update(tensor.tobytes())
    return digest.hexdigest()


def serialize(model: ir.Model, *, keep_value_info: bool = True) -> onnx.ModelProto:
    """The model as a protobuf, refusing models protobuf cannot hold.

    ``keep_value_info=False`` drops the intermediate shapes: they are a cache of shape inference,
    which onnxruntime redoes on load, and in a small model they weigh as much as a layer.
    """
    proto = ir.serde.serialize_model(model)
    if not keep_value_info:
        del proto.graph.value_info[:]
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise QuantizationError(
            "the quantized model is larger than 2 GiB; writing it with external data is not supported yet"
        )
    return proto


def open_session(proto: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``proto``, quiet unless something fails."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_model_proto(proto: onnx.ModelProto) -> ort.InferenceSession:
    """Run the ONNX checker with full shape/type checking and load it in onnxruntime.

    Raises QuantizationError naming what failed: a model we produce that fails either is never
    written. Returns the session, so evaluation runs the very model that was checked.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise QuantizationError(f"the quantized model fails the ONNX checker: {first_line}") from exc
    try:
        return open_session(proto)
    except Exception as exc:  # onnxruntime raises its own exception types
        first_line = str(exc).strip().splitlines()[0]
        raise QuantizationError(f"onnxruntime refuses the quantized model: {first_line}") from exc


def check_writable(path: Path, *, force: bool) -> None:
    """Refuse, before any work, an output whose folder is missing or that exists without force."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists (pass --force to replace it)")


def write_atomic(data: bytes, path: Path, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader never sees a half-written file, and on failure nothing new is left behind.
    """
    check_writable(path, force=force)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
