"""Between onnx_ir models and the protobufs onnxruntime runs: extra outputs, independent copies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx
import onnx_ir as ir

__all__ = ["expose", "ir_copy", "ir_view"]


def expose(
    model: onnx.ModelProto, tensors: Iterable[str], types: Mapping[str, int] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` with each of ``tensors`` that is not one already added as a graph
    output, so that onnxruntime returns it. ``model`` is not changed. Each output is float, or
    of the ONNX element type ``types`` gives it (an If's boolean condition, an int64 index).

    Calibration, bias correction and diagnosis all observe tensors this way. onnxruntime
    materializes every graph output of a run, asked for or not, so callers expose only what they
    read (calibration splits large sets into several sessions).
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            exposed.graph.output.append(
                onnx.helper.make_tensor_value_info(
                    name, (types or {}).get(name, onnx.TensorProto.FLOAT), None
                )
            )
    return exposed


def ir_view(proto: onnx.ModelProto, data_folder: Path | None = None) -> ir.Model:
    """An onnx_ir model over ``proto``'s own tensors, to read without copying them. Never rewrite
    it: onnx_ir's tensors write renames through to the protobuf they wrap (use :func:`ir_copy`).
    External weights are resolved in ``data_folder``."""
    model = ir.serde.deserialize_model(proto)
    if data_folder is not None:
        ir.external_data.set_base_dir(model.graph, data_folder)
    return model


def ir_copy(proto: onnx.ModelProto, data_folder: Path | None = None) -> ir.Model:
    """An onnx_ir model independent of ``proto``, free to rewrite: deserializing ``proto`` itself
    would let a rewrite change the caller's model. External weights stay references to their
    files, resolved in ``data_folder``."""
    fresh = onnx.ModelProto()
    fresh.CopyFrom(proto)
    return ir_view(fresh, data_folder)
