"""Gather int8 rows from an int8 table and dequantize only the rows gathered."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from quantcli.graph.names import NameAllocator
from quantcli.passes._base import MainGraphPass, values_by_name
from quantcli.passes._qdq import dequantized_constant, require_quantized

__all__ = ["GatherQuantizedRowsPass"]


class GatherQuantizedRowsPass(MainGraphPass[ir.Value]):
    """Move a table's DequantizeLinear from before its Gather nodes to after them.

    ``table -> DequantizeLinear -> Gather`` would rebuild the whole float table at every run (an
    embedding table is the largest tensor of a small encoder); ``Gather -> DequantizeLinear``
    dequantizes the few rows a batch uses. Runs after QuantizeInitializersPass; the tables must
    have per-tensor parameters, which the plan guarantees (``requires`` checks both). Other
    readers of the table keep the original DequantizeLinear.
    """

    def __init__(self, tables: Sequence[str]) -> None:
        super().__init__()
        self.tables = tuple(tables)

    def requires(self, model: ir.Model) -> None:
        values = values_by_name(model.graph)
        tables = {table: values.get(table) for table in self.tables}
        require_quantized(type(self).__name__, tables)
        for table, value in tables.items():
            found = dequantized_constant(value)
            assert found is not None
            if found[1].const_value is None or found[1].const_value.size != 1:
                raise ir.passes.PreconditionError(f"table '{table}' is not quantized per tensor")

    def targets(self, graph: ir.Graph) -> list[ir.Value]:
        """Each table's DequantizeLinear output."""
        values = values_by_name(graph)
        return [values[table] for table in self.tables]

    def rewrite(self, graph: ir.Graph, names: NameAllocator, target: ir.Value) -> bool:
        dequantize = target.producer()
        assert dequantize is not None and dequantize.op_type == "DequantizeLinear", target.name
        quantized = dequantize.inputs[0]
        assert quantized is not None
        gathers = [use.node for use in list(target.uses()) if use.node.op_type == "Gather" and use.idx == 0]
        for gather in gathers:
            self._move_after(graph, names, gather, dequantize, quantized)
        return bool(gathers)

    @staticmethod
    def _move_after(
        graph: ir.Graph, names: NameAllocator, gather: ir.Node, dequantize: ir.Node, quantized: ir.Value
    ) -> None:
        graph = gather.graph or graph  # the table may be an outer value of an If branch's Gather
        rows = gather.outputs[0]
        gather.replace_input_with(0, quantized)
        float_rows = ir.Value(name=names.fresh(f"{rows.name}_dequantized"), shape=rows.shape, type=rows.type)
        node = ir.Node(
            "",
            "DequantizeLinear",
            [rows, *dequantize.inputs[1:]],
            list(dequantize.attributes.values()),
            outputs=[float_rows],
            name=names.fresh(f"{rows.name}_DequantizeLinear"),
        )
        graph.insert_after(gather, node)
        for use in list(rows.uses()):
            if use.node is not node:
                use.node.replace_input_with(use.idx, float_rows)
        for index, out in enumerate(graph.outputs):
            if out is rows:
                graph.outputs[index] = float_rows
        original_name = rows.name
        rows.name = names.fresh(f"{original_name}_int8")
        rows.type = quantized.type
        float_rows.name = original_name
