"""A weight quantized to 4-bit codes in blocks along its reduction axis, and its byte layouts.

Everything here works on the weight as rows of output channels, ``[N, K]`` (a MatMul's ``B``
transposed): each row is cut into blocks of ``block_size`` consecutive values along K, and each
block has its own scale and zero point. That is the layout of onnxruntime's ``MatMulNBits``
(``B: uint8[N, blocks, block_size / 2]``), so packing is a reshape and a nibble merge.

Codes are unsigned, 0..15, with the zero point applied: a value is ``(code - zero_point) x scale``.
A symmetric weight has zero point 8 in every block (MatMulNBits' default when the input is left
out), so one code layout serves both kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from quantcli.config import BLOCK_SIZES
from quantcli.scheme import QParams, QuantType, dequantize

__all__ = [
    "BITS",
    "BLOCK_SIZES",
    "CODE_TYPE",
    "BlockQuantized",
    "PackedBlocks",
    "pack_nibbles",
    "unpack_nibbles",
]

# Codes are unsigned 4-bit (held in uint8 arrays); a symmetric weight uses zero point 8.
CODE_TYPE = QuantType.UINT4
BITS = CODE_TYPE.bits
SYMMETRIC_ZERO_POINT = CODE_TYPE.symmetric_zero_point


@dataclass(frozen=True, eq=False)
class BlockQuantized:
    """One 4-bit block-wise weight, rows of output channels.

    ``codes``: uint8 ``[N, blocks x block_size]``, 0..15; the tail past ``k`` (when K is not a
    multiple of the block size) holds the block's zero point, so it dequantizes to 0.0.
    ``scale``: float32 ``[N, blocks]``; ``zero_point``: uint8 ``[N, blocks]``.
    ``input_scale``: float32 ``[K]`` or None. When set (AWQ), the codes quantize ``W x diag(s)``
    and the activation must be divided by ``s`` before the product; the written model does it.
    ``eq=False`` because numpy arrays do not compare to a bool.
    """

    codes: npt.NDArray[np.uint8]
    scale: npt.NDArray[np.float32]
    zero_point: npt.NDArray[np.uint8]
    block_size: int
    k: int
    symmetric: bool
    input_scale: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n, padded = self.codes.shape
        assert padded % self.block_size == 0 and padded - self.k < self.block_size, (padded, self.k)
        assert self.scale.shape == self.zero_point.shape == (n, padded // self.block_size)
        assert self.input_scale is None or self.input_scale.shape == (self.k,)

    @classmethod
    def from_qparams(
        cls,
        codes: npt.NDArray[np.uint8],
        qparams: QParams,
        k: int,
        symmetric: bool,
        input_scale: npt.NDArray[np.float32] | None = None,
    ) -> BlockQuantized:
        """From scheme's block-wise parameters of the ``[N, K]`` weight (block axis 1)."""
        assert qparams.block_size is not None and qparams.axis == 1 and qparams.dtype is CODE_TYPE
        zero_point = qparams.zero_point.astype(np.uint8)
        return cls(codes, qparams.scale, zero_point, qparams.block_size, k, symmetric, input_scale)

    @classmethod
    def from_packed(
        cls,
        packed: npt.NDArray[np.uint8],
        scale: npt.NDArray[np.float32],
        packed_zero_points: npt.NDArray[np.uint8] | None,
        block_size: int,
        k: int,
        input_scale: npt.NDArray[np.float32] | None = None,
    ) -> BlockQuantized:
        """The inverse of :meth:`packed` and :meth:`packed_zero_points`: a weight read back from
        a written model (``packed`` ``[N, ...]`` bytes of codes, ``scale`` ``[N, blocks]``; no
        zero points: symmetric)."""
        n, blocks = scale.shape
        codes = unpack_nibbles(packed.reshape(n, -1), blocks * block_size)
        if packed_zero_points is None:
            zero_point = np.full((n, blocks), SYMMETRIC_ZERO_POINT, np.uint8)
        else:
            zero_point = unpack_nibbles(packed_zero_points.reshape(n, -1), blocks)
        symmetric = packed_zero_points is None
        return cls(codes, scale.astype(np.float32), zero_point, block_size, k, symmetric, input_scale)

    @property
    def qparams(self) -> QParams:
        """scheme's view of the block-wise parameters (block axis 1 of ``[N, K]``)."""
        return QParams(self.scale, self.zero_point, 1, CODE_TYPE, self.block_size)

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def blocks(self) -> int:
        return int(self.scale.shape[1])

    def dequantized_codes(self) -> npt.NDArray[np.float32]:
        """``(code - zero point) x scale``, ``[N, K]`` float32: the weight the codes hold, as a
        kernel computes it (before any input scale)."""
        return dequantize(self.codes[:, : self.k], self.qparams)

    def dequantize(self) -> npt.NDArray[np.float32]:
        """The weight the written model computes with, ``[N, K]``: with AWQ's input scale undone."""
        values = self.dequantized_codes()
        if self.input_scale is None:
            return values
        return (values / self.input_scale[np.newaxis, :]).astype(np.float32)

    def packed(self) -> npt.NDArray[np.uint8]:
        """MatMulNBits' ``B``: uint8 ``[N, blocks, block_size / 2]``, two codes a byte, low first."""
        return pack_nibbles(self.codes).reshape(self.n, self.blocks, self.block_size // 2)

    def packed_zero_points(self) -> npt.NDArray[np.uint8]:
        """MatMulNBits' ``zero_points``: uint8 ``[N x ceil(blocks / 2)]``, each row padded to a byte."""
        return pack_nibbles(self.zero_point).reshape(-1)

    @property
    def nbytes(self) -> int:
        """Bytes the weight takes when written as MatMulNBits (codes, scales, zero points)."""
        zero_points = 0 if self.symmetric else self.n * ((self.blocks + 1) // 2)
        scale = 0 if self.input_scale is None else 4 * self.k
        return self.n * self.blocks * self.block_size // 2 + 4 * self.scale.size + zero_points + scale


# Makes a tensor of an array: in memory (``ir.tensor``), or written out (a Spill's ``store``).
Store = Callable[[npt.NDArray[np.generic]], ir.TensorProtocol]


@dataclass(frozen=True, eq=False)
class PackedBlocks:
    """A 4-bit weight as ``MatMulNBits`` reads it: packed codes ``uint8[N, blocks, block/2]``,
    scales ``float32[N x blocks]`` and, when asymmetric, packed zero points, each a tensor that
    may sit in memory or on disk (a weight of a model past memory, written as soon as rounded).
    """

    n: int
    k: int
    block_size: int
    symmetric: bool
    packed: ir.TensorProtocol
    scales: ir.TensorProtocol
    zero_points: ir.TensorProtocol | None
    input_scale: npt.NDArray[np.float32] | None = None

    @classmethod
    def of(cls, quantized: BlockQuantized, store: Store) -> PackedBlocks:
        """``quantized``'s MatMulNBits tensors, each made by ``store``."""
        zero_points = None if quantized.symmetric else store(quantized.packed_zero_points())
        return cls(
            quantized.n,
            quantized.k,
            quantized.block_size,
            quantized.symmetric,
            store(quantized.packed()),
            store(quantized.scale.reshape(-1)),
            zero_points,
            quantized.input_scale,
        )


def pack_nibbles(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Two 4-bit codes per byte along the last axis, the even position in the low nibble; an odd
    row length is padded with a zero nibble."""
    if codes.shape[-1] % 2:
        pad = np.zeros((*codes.shape[:-1], 1), np.uint8)
        codes = np.concatenate([codes, pad], axis=-1)
    low, high = codes[..., 0::2], codes[..., 1::2]
    packed = np.bitwise_or(np.bitwise_and(low, 0x0F), np.left_shift(np.bitwise_and(high, 0x0F), 4))
    result: npt.NDArray[np.uint8] = packed.astype(np.uint8)
    return result


def unpack_nibbles(packed: npt.NDArray[np.uint8], length: int) -> npt.NDArray[np.uint8]:
    """The inverse of :func:`pack_nibbles`: ``length`` codes per row of the last axis."""
    codes = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    codes[..., 0::2] = np.bitwise_and(packed, 0x0F)
    codes[..., 1::2] = np.right_shift(packed, 4)
    result: npt.NDArray[np.uint8] = codes[..., :length]
    return result
