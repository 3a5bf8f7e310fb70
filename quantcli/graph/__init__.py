"""Graph layer: loading, saving and naming on top of onnx_ir."""

from quantcli.graph.exchange import expose, ir_copy
from quantcli.graph.io import (
    ModelFile,
    check_model_file,
    external_folder,
    fingerprint,
    load_model,
    open_session,
    serialize,
    unmap,
)
from quantcli.graph.names import NameAllocator
from quantcli.graph.output import StagedModel, StagedOutput, check_writable, write_atomic

__all__ = [
    "ModelFile",
    "NameAllocator",
    "StagedModel",
    "StagedOutput",
    "check_model_file",
    "check_writable",
    "expose",
    "external_folder",
    "fingerprint",
    "ir_copy",
    "load_model",
    "open_session",
    "serialize",
    "unmap",
    "write_atomic",
]
