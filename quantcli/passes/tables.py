"""Write constant Gather tables (embeddings) as 4-bit blocks read by ``GatherBlockQuantized``.

onnxruntime 1.32's CPU provider has ``com.microsoft.GatherBlockQuantized``: it gathers rows of
packed 4-bit codes (``uint8[V, D / 2]``, low nibble first, zero point 8 unless given) and
dequantizes only those rows with per-block scales ``[V, D / block_size]`` along the row. That is
the layout :class:`~quantcli.blockwise.layout.BlockQuantized` holds for a table of rows, so a
table quantizes with the MatMul weights' own round-to-nearest.

Chosen by measurement (bench/int4_gather.py: a 30522 x 384 table, MiniLM-L6's, block 32, 128
indices, onnxruntime 1.32 CPU, 1 thread): GatherBlockQuantized ran in 0.24 ms median against
19.9 ms for a blocked ``DequantizeLinear`` (int4, opset 21) feeding the Gather, which rebuilds
the whole float table every run (the reason int8 tables are dequantized after the gather,
:mod:`quantcli.passes.gather`); the two gave identical values. The DequantizeLinear form would
also need the model at opset 21.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from quantcli.blockwise.layout import BITS, BlockQuantized
from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass
from quantcli.passes._qdq import add_initializer
from quantcli.passes._rewrite import replace_node

__all__ = ["WriteBlockwiseTablesPass"]

MICROSOFT = "com.microsoft"


class WriteBlockwiseTablesPass(MainGraphPass[str]):
    """Replace every Gather of each table named in ``tables`` (initializer name -> its rows
    quantized, ``[V, D]``) by a GatherBlockQuantized, and drop the float table."""

    def __init__(self, tables: Mapping[str, BlockQuantized]) -> None:
        super().__init__()
        self.tables = dict(tables)

    def targets(self, graph: ir.Graph) -> list[str]:
        return sorted(self.tables)

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: str) -> bool:
        value = graph.initializers[target]
        quantized = self.tables[target]
        assert quantized.k == quantized.blocks * quantized.block_size, "the plan takes whole blocks only"
        packed = add_initializer(graph, names, f"{target}_nbits", quantized.packed().reshape(quantized.n, -1))
        scales = add_initializer(graph, names, f"{target}_scales", quantized.scale)
        inputs = [packed, None, scales]
        if not quantized.symmetric:
            zero_points = quantized.packed_zero_points().reshape(quantized.n, -1)
            inputs.append(add_initializer(graph, names, f"{target}_zero_points", zero_points))
        for use in list(value.uses()):
            gather = use.node
            assert gather.op_type == "Gather" and use.idx == 0, (gather.name, use.idx)
            inputs[1] = gather.inputs[1]
            replacement = replace_node(graph, names, gather, "GatherBlockQuantized", inputs)  # type: ignore[arg-type]
            replacement.domain = MICROSOFT
            attributes = {
                "gather_axis": 0,
                "quantize_axis": 1,
                "block_size": quantized.block_size,
                "bits": BITS,
            }
            for key, number in attributes.items():
                replacement.attributes[key] = ir.AttrInt64(key, number)
        graph.initializers.pop(target)
        return True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        if result.modified:
            model.opset_imports.setdefault(MICROSOFT, 1)
        return result
