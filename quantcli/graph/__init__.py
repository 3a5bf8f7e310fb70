"""Graph layer: loading, saving and naming on top of onnx_ir."""

from quantcli.graph.io import (
    ModelFile,
    check_model_proto,
    check_writable,
    fingerprint,
    load_model,
    serialize,
    write_atomic,
)
from quantcli.graph.names import NameAllocator

__all__ = [
    "ModelFile",
    "NameAllocator",
    "check_model_proto",
    "check_writable",
    "fingerprint",
    "load_model",
    "serialize",
    "write_atomic",
]
