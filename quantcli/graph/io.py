"""Reading models, fingerprinting them, checking them and opening onnxruntime sessions.

Loading goes through onnx_ir, whose external tensors are memory-mapped lazily: a weight is read
only while a pass works on it, so a model larger than protobuf's 2 GiB limit, or than memory,
can be quantized. Every external data reference is checked when the model is opened (inside the
model's folder, present, long enough) so that a bad one fails in a second with one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.version_converter
import onnx_ir as ir

from quantcli import target as _target
from quantcli.engine import Session, engine_name, open_session
from quantcli.errors import EngineCrashError, ModelLoadError, QuantizationError
from quantcli.graph.output import check_writable, write_atomic
from quantcli.scheme import QuantType, min_opset

__all__ = [
    "ModelFile",
    "check_model_file",
    "check_writable",
    "external_files",
    "external_folder",
    "fingerprint",
    "load_model",
    "open_session",
    "serialize",
    "unmap",
    "write_atomic",
]

logger = logging.getLogger(__name__)

# The opset every model is brought to on load: that of the int8 Q/DQ quantcli writes (per-axis
# parameters exist from opset 13 on). 4- and 16-bit or block-wise types need more (scheme.min_opset).
MIN_OPSET = min_opset(QuantType.INT8)
# The newest opset the installed onnx knows; a model beyond it cannot be checked.
MAX_OPSET = onnx.defs.onnx_opset_version()
# Graphs of more nodes (or initializers) are refused when loaded: building, checking and running
# a graph costs time and memory in proportion to them (a million nodes take minutes and gigabytes).
MAX_NODES = 250_000
# The keys an external_data entry may have (ONNX's ExternalData.md); others are refused.
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
# protobuf cannot serialize a message of 2 GiB or more.
_PROTOBUF_LIMIT = 2**31 - 1


def _external_tensors(model: ir.Model) -> Iterator[tuple[str, ir.ExternalTensor]]:
    """Every external tensor: initializers, and tensors held in node attributes (``Constant``'s
    ``value``, say), in every graph and subgraph."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield str(value.name), value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    tensors = [attr.value]
                elif attr.type == ir.AttributeType.TENSORS:
                    tensors = list(attr.value)
                else:
                    continue
                for tensor in tensors:
                    if isinstance(tensor, ir.ExternalTensor):
                        yield f"{node.name}.{attr.name}", tensor


def external_files(model: ir.Model) -> list[Path]:
    """The external data files a model reads, resolved (for the output guard)."""
    return sorted({(Path(t.base_dir) / t.location).resolve() for _, t in _external_tensors(model)})


def external_folder(model: ir.Model) -> Path | None:
    """The folder a model's external data locations are relative to (None: all inline)."""
    for _, tensor in _external_tensors(model):
        return Path(tensor.base_dir)
    return None


@dataclass(frozen=True)
class ModelFile:
    """A loaded model with where it came from; its external weights are still on disk."""

    path: Path
    model: ir.Model
    size_bytes: int
    # Whether the file came with external data (the output then does too).
    external_data: bool = False
    upgraded_from_opset: int | None = None  # the file's opset when it had to be upgraded

    @property
    def opset(self) -> int:
        return self.model.opset_imports.get("", self.model.opset_imports.get("ai.onnx", 0))


def _check_external_data(path: Path, model: ir.Model) -> int:
    """Refuse a data location outside the model's folder, a missing or a short data file.

    ``../../etc/passwd``, absolute paths, symlinks leading out and hard links (a second name of a
    file anywhere on the file system) are refused before anything is read. Returns the size of
    the data files, for the report.
    """
    folder = path.resolve().parent
    sizes: dict[Path, int] = {}
    for name, tensor in _external_tensors(model):
        where = f"{path}: external data of '{name}'"
        try:
            target = _data_target(where, folder, tensor)
            size = sizes.get(target)
            if size is None:
                info = target.stat()
                if info.st_nlink > 1:
                    raise ModelLoadError(
                        f"{where}: file {tensor.location} has {info.st_nlink} hard links; refusing to "
                        "read a file that may be another file's second name (copy it instead)"
                    )
                size = sizes[target] = info.st_size
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot read {tensor.location!r} ({exc.strerror or exc})") from exc
        length = tensor.length if tensor.length is not None else tensor.nbytes
        if length != tensor.nbytes:
            raise ModelLoadError(
                f"{where} declares {length} bytes, but {tensor.dtype}{list(tensor.shape)} needs "
                f"{tensor.nbytes} (re-export the model)"
            )
        if (tensor.offset or 0) + length > size:
            raise ModelLoadError(
                f"{where}: file {tensor.location} is too short ({size} bytes, needs "
                f"{(tensor.offset or 0) + length}); it was truncated (copy it again)"
            )
    return sum(sizes.values())


def _data_target(where: str, folder: Path, tensor: ir.ExternalTensor) -> Path:
    location = str(tensor.location)
    if "\x00" in location or len(location) > 1024:
        shown = location[:60].replace("\x00", "\\0")
        raise ModelLoadError(f"{where}: location {shown!r}... is not a file name (NUL byte or too long)")
    target = (Path(tensor.base_dir) / location).resolve()
    if Path(location).is_absolute() or not target.is_relative_to(folder):
        raise ModelLoadError(f"{where} points outside the model's folder ({location}); refusing to read it")
    if not target.is_file():
        raise ModelLoadError(f"{where}: file {location} is missing (copy it next to the model)")
    return target


def _proto_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor of a graph and its subgraphs: initializers and attribute tensors."""
    stack = [graph]
    while stack:
        current = stack.pop()
        for tensor in current.initializer:
            yield tensor.name, tensor
        for node in current.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield f"{node.name}.{attr.name}", attr.t
                for tensor in attr.tensors:
                    yield f"{node.name}.{attr.name}", tensor
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _node_count(graph: onnx.GraphProto) -> int:
    count, stack = 0, [graph]
    while stack:
        current = stack.pop()
        count += len(current.node)
        if count > MAX_NODES:  # enough to refuse; no need to walk a million nodes' attributes
            return count
        for node in current.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return count


def _check_proto(path: Path, proto: onnx.ModelProto) -> None:
    """Refuse, before the model is built in memory, a graph past MAX_NODES, an external data
    entry with a key the format does not define, and a tensor declaring more elements than the
    file holds (a few bytes of protobuf must not make quantcli allocate gigabytes)."""
    if len(proto.graph.initializer) > MAX_NODES:
        raise ModelLoadError(
            f"{path}: the graph has {len(proto.graph.initializer)} initializers, past quantcli's limit of "
            f"{MAX_NODES}; split the model"
        )
    nodes = _node_count(proto.graph)
    if nodes > MAX_NODES:
        raise ModelLoadError(
            f"{path}: the graph has {nodes} nodes or more, past quantcli's limit of {MAX_NODES}; "
            "split the model"
        )
    for name, tensor in _proto_tensors(proto.graph):
        where = f"{path}: tensor '{name}'"
        if any(d < 0 for d in tensor.dims):
            raise ModelLoadError(f"{where} has a negative dimension {list(tensor.dims)}")
        if tensor.data_type == onnx.TensorProto.STRING:
            continue
        try:
            bits = ir.DataType(tensor.data_type).bitwidth
        except (ValueError, TypeError):  # not a data type onnx defines, or UNDEFINED
            raise ModelLoadError(f"{where} has no valid data type ({tensor.data_type})") from None
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external_entry(where, tensor)
            continue
        elements = math.prod(tensor.dims)
        if tensor.raw_data:
            held = len(tensor.raw_data) * 8 // max(bits, 1)
        else:  # one typed entry per element (two 4-bit elements share one, at most)
            held = 2 * sum(
                len(field)
                for field in (
                    tensor.float_data,
                    tensor.int32_data,
                    tensor.int64_data,
                    tensor.double_data,
                    tensor.uint64_data,
                )
            )
        if elements > held:
            raise ModelLoadError(
                f"{where} declares {elements} elements {list(tensor.dims)} but the file holds data "
                "for fewer; the model is corrupt (re-export it)"
            )


def _check_external_entry(where: str, tensor: onnx.TensorProto) -> None:
    keys = [entry.key for entry in tensor.external_data]
    unknown = sorted(set(keys) - _EXTERNAL_KEYS)
    if unknown or len(keys) != len(set(keys)):
        what = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "repeated keys"
        raise ModelLoadError(
            f"{where}: its external_data has {what} (valid: {', '.join(sorted(_EXTERNAL_KEYS))}); "
            "refusing the model"
        )
    for entry in tensor.external_data:
        if entry.key in ("offset", "length") and not (entry.value.isdigit() and len(entry.value) < 20):
            raise ModelLoadError(f"{where}: external data {entry.key} {entry.value[:40]!r} is not a size")


def load_model(path: Path) -> ModelFile:
    """Load an ONNX model, raising :class:`ModelLoadError` with a one-line reason on failure."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise many types; all mean "not a model"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {first_line})"
        ) from exc
    _check_proto(path, proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx_ir refuses malformed fields with many types
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {first_line})"
        ) from exc
    del proto
    # External data locations are relative to the model's folder (as ir.load does).
    ir.external_data.set_base_dir(model.graph, os.path.dirname(path))
    if len(model.graph) == 0:
        raise ModelLoadError(f"{path}: not an ONNX model (the graph has no nodes)")
    size = path.stat().st_size + _check_external_data(path, model)
    loaded = ModelFile(
        path=path, model=model, size_bytes=size, external_data=external_folder(model) is not None
    )
    if loaded.opset < MIN_OPSET:
        if not loaded.opset:
            raise ModelLoadError(
                f"{path}: no default-domain opset is imported; quantcli needs opset >= {MIN_OPSET} "
                "(add one to the model's opset_import)"
            )
        upgraded = _upgrade_opset(path, model, loaded.opset)
        _modernize_ir(upgraded)
        folder = external_folder(model)
        if folder is not None:  # the converted copy refers to the same external files
            ir.external_data.set_base_dir(upgraded.graph, folder)
        return ModelFile(
            path=path,
            model=upgraded,
            size_bytes=size,
            external_data=loaded.external_data,
            upgraded_from_opset=loaded.opset,
        )
    if loaded.opset > MAX_OPSET:
        raise ModelLoadError(
            f"{path}: opset {loaded.opset} is newer than this onnx knows ({MAX_OPSET}); "
            f"convert the model to opset {MAX_OPSET} or older"
        )
    _modernize_ir(model)
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


# IR version 4 made initializers constants of their own; before it every initializer had to be
# listed among the graph's inputs as well.
_INITIALIZERS_APART = 4


def _modernize_ir(model: ir.Model) -> None:
    """Make the weights of a model that lists them among its graph inputs constants, in place.

    Before IR 4 every initializer is also a graph input, and exporters still write them so by
    choice (PyTorch's ``keep_initializers_as_inputs``). From IR 4 on, onnxruntime treats such a
    weight as an input a caller may override: no constant folding, no prepacking. Quantization
    treats every weight as a constant anyway, and the checker refuses an IR 3 model whose added
    scales are not inputs; so they become plain initializers, by onnx_ir's pass, and an IR below 4
    is raised to the least the imported opsets need (onnx's table). A model without such inputs
    is left as it is, byte for byte.
    """
    overridable = [value for value in model.graph.inputs if value.is_initializer()]
    if overridable:
        ir.passes.common.RemoveInitializersFromInputsPass()(model)
        logger.info("%d weight(s) listed among the graph inputs are treated as constants", len(overridable))
    if model.ir_version < _INITIALIZERS_APART:
        opsets = [onnx.helper.make_opsetid(domain, v) for domain, v in model.opset_imports.items()]
        needed = onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        model.ir_version = max(_INITIALIZERS_APART, needed)


def fingerprint(model: ir.Model) -> str:
    """SHA-256 of the graph's structure and weights.

    It identifies "the same model" for calibration files: any change of a node, a name or a
    weight value changes it, while re-saving the same model does not. Weights are hashed tensor by
    tensor, and a memory-mapped one is unmapped right after, so a large model never sits in memory.
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
        unmap(tensor)
    return digest.hexdigest()


def unmap(tensor: ir.TensorProtocol) -> None:
    """Let the memory of a memory-mapped weight go once it has been read.

    Mapped pages count in the process's resident memory until unmapped; unmapping each weight
    after use keeps a large model's footprint at about one tensor. If the array is still
    referenced elsewhere the mapping stays, which is only a missed saving.
    """
    if isinstance(tensor, ir.ExternalTensor):
        with contextlib.suppress(BufferError):
            tensor.release()


def serialize(model: ir.Model) -> onnx.ModelProto:
    """The model as a protobuf; external weights stay references to their files.

    Only models whose in-memory weights exceed protobuf's 2 GiB limit are refused; those are
    written to files (:class:`quantcli.graph.output.StagedOutput`) instead.
    """
    proto = ir.serde.serialize_model(model)
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise QuantizationError(
            "the model holds more than 2 GiB of weights in memory; it must be written with external data"
        )
    return proto


def check_model_file(
    path: Path, target: _target.Target = _target.ORT_CPU, *, label: str | None = None
) -> Session:
    """Run the ONNX checker with full shape/type checking and load the file on ``target``'s
    engine (onnxruntime, or OpenVINO's CPU plugin: :mod:`quantcli.engine`).

    Raises QuantizationError naming what failed: a model we produce that fails either is never
    moved into place. Checking the file (not a protobuf in memory) works for any size and checks
    the external data exactly as a user will load it. Returns the session, so evaluation runs the
    very model that was checked.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise QuantizationError(f"the quantized model fails the ONNX checker: {first_line}") from exc
    try:
        return open_session(path, target=target, label=label)
    except ModelLoadError as exc:
        raise QuantizationError(f"{engine_name(target)} refuses the quantized model: {exc}") from exc
    except EngineCrashError as exc:  # a candidate it crashes on is one it refuses (auto goes on)
        raise QuantizationError(f"{engine_name(target)} refuses the quantized model: {exc.reason}") from exc
