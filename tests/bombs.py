"""Hostile inputs that are small on disk and huge once read, built fast at any size.

Shared by tests/test_faults.py (small sizes, tight budgets) and bench/bombs.py (the full sizes
of issue 14). Deflate streams are built by repeating one fully flushed block: after a full
flush the compressor keeps no history, so the same input gives the same bytes, and N copies
inflate to N times the block, without compressing gigabytes each time.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = [
    "ENDLESS_LOADER",
    "counts_bomb",
    "declared_initializer_model",
    "npy_header",
    "npz_bomb",
    "png_header",
    "wide_graph",
]

_BLOCK = 1 << 20  # one repeated block: 1 MiB of zeros


def _repeated_deflate(prefix: bytes, zeros: int, *, wbits: int) -> tuple[bytes, int]:
    """A deflate stream of ``prefix`` then ``zeros`` zero bytes (rounded up to whole blocks);
    returns it and the inflated length."""
    blocks = -(-zeros // _BLOCK)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(_BLOCK)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()  # the final (empty) block and, for zlib streams, a checksum
    return head + block * blocks + tail, len(prefix) + blocks * _BLOCK


def npz_bomb(path: Path, inflated: int, name: str = "image", sample: tuple[int, ...] = (3, 16, 16)) -> None:
    """An .npz whose one float32 member, of shape (N, *sample), inflates to about ``inflated``
    bytes of zeros: the shape matches the input, only its size is hostile."""
    per_sample = 4 * int(np.prod(sample))
    count = max(1, inflated // per_sample)
    header = npy_header(np.dtype("<f4"), (count, *sample))
    data, size = _repeated_deflate(header, count * per_sample, wbits=-15)
    # The CRC covers the real content (header and zeros), computed block by block.
    crc = zlib.crc32(header)
    zero = bytes(_BLOCK)
    for _ in range((size - len(header)) // _BLOCK):
        crc = zlib.crc32(zero, crc)
    path.write_bytes(_zip(f"{name}.npy".encode(), data, size, crc))


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": dtype.str, "fortran_order": False, "shape": shape}).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _zip(name: bytes, data: bytes, size: int, crc: int) -> bytes:
    """A one-member deflated zip, zip64 sizes (NumPy's reader takes both forms)."""
    extra = struct.pack("<HHQQ", 1, 16, size, len(data))
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra)
    )
    central_extra = struct.pack("<HHQQQ", 1, 24, size, len(data), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        45,
        45,
        0,
        8,
        0,
        0,
        crc,
        0xFFFFFFFF,
        0xFFFFFFFF,
        len(name),
        len(central_extra),
        0,
        0,
        0,
        0,
        0xFFFFFFFF,
    )
    body = local + name + extra + data
    directory = central + name + central_extra
    offset = len(body)
    end64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, len(directory), offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, offset + len(directory), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(directory), 0xFFFFFFFF, 0)
    return body + directory + end64 + locator + end


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def counts_bomb(calibration: Path, out: Path, inflated: int) -> None:
    """``calibration`` with one tensor's histogram counts replaced by a zlib stream inflating to
    about ``inflated`` bytes (the format promises 4096 int64: 32 KiB)."""
    document = json.loads(calibration.read_text())
    name = sorted(document["tensors"])[0]
    stream, _ = _repeated_deflate(b"", inflated, wbits=15)
    document["tensors"][name]["counts"] = base64.b64encode(stream).decode("ascii")
    out.write_text(json.dumps(document))


def declared_initializer_model(path: Path, elements: int) -> None:
    """A valid-looking model whose one initializer declares ``elements`` float32 and holds none."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[elements])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "declared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def wide_graph(path: Path, nodes: int) -> None:
    """A chain of ``nodes`` Relu nodes: a few bytes each on disk, a Python object each in memory."""
    graph = onnx.GraphProto(name="wide")
    graph.input.append(helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 4]))
    graph.output.append(helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, 4]))
    for index in range(nodes):
        node = graph.node.add()
        node.op_type = "Relu"
        node.input.append(f"t{index}")
        node.output.append(f"t{index + 1}")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


# A --data-loader that never ends: without a bound it is drained until memory runs out.
ENDLESS_LOADER = """\
import numpy as np

def load():
    while True:
        yield {"image": np.ones((8, 3, 16, 16), np.float32)}
"""
