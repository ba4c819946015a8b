"""``quantize-gather``: int8 embedding tables, dequantized only for the rows looked up.

An embedding lookup ``y = Gather(W, ids)`` with a constant table ``W [V, D]``
(axis 0) is rewritten to gather from an int8 table and a per-row scale::

    s[v]  = max_d |W[v, d]| / 127                     (symmetric, per row)
    W_q   = round(W / s[:, None])  ∈ [-127, 127]
    y     = Cast(Gather(W_q, ids), float) · Gather(s[:, None], ids)

so only the looked-up rows are ever dequantized (a DequantizeLinear in front
of the Gather would dequantize the whole table on every run). The table
shrinks 4x; transformer word embeddings are often the largest single tensor
(all-MiniLM-L6-v2: 30522 x 384, 45 MiB of its 86). Tables read by anything
else than Gather on axis 0 (tied output projections), or smaller than
``min_params``, are left in float with a DEBUG log.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.qdq import NameAllocator, add_initializer

__all__ = ["QuantizeGatherPass"]

logger = logging.getLogger(__name__)

#: Rows quantized at a time (keeps the pass's float work small on large vocabularies).
_CHUNK_ROWS = 4096


def _gathers_of(value: ir.Value) -> list[ir.Node] | None:
    """The Gather(axis=0) nodes reading ``value`` as their data input, or None if anything else reads it."""
    nodes = []
    for use in value.uses():
        node = use.node
        axis = node.attributes.get("axis")
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or use.idx != 0 or (axis and axis.value != 0):
            return None
        nodes.append(node)
    return nodes


@register_pass
class QuantizeGatherPass(OnnxpqPass):
    """Int8 per-row embedding tables for Gather lookups; only the gathered rows are dequantized."""

    name = "quantize-gather"
    exact = False

    def __init__(self, *, min_params: int = 65536, exclude_nodes: tuple[str, ...] = ()) -> None:
        if min_params < 0:
            raise PipelineError(f"quantize-gather: min_params must be >= 0, got {min_params}")
        self.min_params = min_params
        self.exclude_nodes = tuple(exclude_nodes)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        names = NameAllocator(graph)
        done: dict[str, float | None] = {}
        for name, table in list(graph.initializers.items()):
            tensor = table.const_value
            if tensor is None or table.is_graph_input() or table.is_graph_output():
                continue
            if tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) or len(tensor.shape) != 2:
                continue
            if tensor.shape[1] == 1:
                continue  # a column of per-row scales (this pass's own output), not an embedding
            if tensor.size < self.min_params:
                continue
            gathers = _gathers_of(table)
            if not gathers:
                if table.uses():
                    logger.debug("quantize-gather: '%s' is read by other ops than Gather(axis=0); left float", name)
                continue
            if any(node.name in self.exclude_nodes for node in gathers):
                logger.debug("quantize-gather: '%s' excluded", name)
                continue
            done[name] = self._rewrite(graph, names, table, gathers)
        for name in done:
            graph.initializers.pop(name)
        ctx.note("quantized_tables", {k: {"sqnr_db": v} for k, v in done.items()})
        ctx.note("quantized_node_names", [])  # lookups are not compute nodes; the accuracy gate leaves them be
        return ir.passes.PassResult(model, bool(done))

    @staticmethod
    def _rewrite(graph: ir.Graph, names: NameAllocator, table: ir.Value, gathers: list[ir.Node]) -> float | None:
        weights = table.const_value.numpy()
        float_type = weights.dtype
        quantized = np.empty(weights.shape, dtype=np.int8)
        scale = np.empty(weights.shape[0], dtype=np.float64)
        signal = noise = 0.0
        for start in range(0, weights.shape[0], _CHUNK_ROWS):  # bounded float work, whatever the table size
            rows = weights[start : start + _CHUNK_ROWS].astype(np.float32)
            row_scale = np.max(np.abs(rows), axis=1).astype(np.float64) / 127.0
            row_scale = np.where(row_scale > 0, row_scale, 1.0)
            q = np.clip(np.round(rows / row_scale[:, None].astype(np.float32)), -127, 127)
            quantized[start : start + _CHUNK_ROWS] = q
            scale[start : start + _CHUNK_ROWS] = row_scale
            signal += float(np.sum(np.square(rows, dtype=np.float64)))
            noise += float(np.sum(np.square(rows - q * row_scale[:, None].astype(np.float32), dtype=np.float64)))
        error = float("inf") if noise == 0.0 else 10.0 * np.log10(signal / noise)
        q_table = add_initializer(graph, names, f"{table.name}_quantized", quantized)
        s_table = add_initializer(graph, names, f"{table.name}_row_scale", scale[:, None].astype(float_type))
        for node in gathers:
            ids = node.inputs[1]
            out = node.outputs[0]
            base = node.name or table.name
            q_rows = ir.Value(name=names(f"{base}_int8_rows"))
            f_rows = ir.Value(name=names(f"{base}_rows"))
            r_scale = ir.Value(name=names(f"{base}_row_scales"))
            new_out = ir.Value(name=names(f"{out.name}_dequantized"), shape=out.shape, type=out.type)
            new_nodes = [
                ir.node("Gather", [q_table, ids], attributes={"axis": 0}, outputs=[q_rows], name=names(f"{base}_int8")),
                ir.node("Cast", [q_rows], attributes={"to": ir.DataType(table.dtype)}, outputs=[f_rows],
                        name=names(f"{base}_cast")),
                ir.node("Gather", [s_table, ids], attributes={"axis": 0}, outputs=[r_scale], name=names(f"{base}_scale")),
                ir.node("Mul", [f_rows, r_scale], outputs=[new_out], name=names(f"{base}_dequantize")),
            ]
            graph.insert_after(node, new_nodes)
            out.replace_all_uses_with(new_out, replace_graph_outputs=True)
            if new_out.is_graph_output():
                new_out.name, out.name = out.name, names(f"{out.name}_float")
            graph.remove(node, safe=True)
        return None if np.isinf(error) else round(error, 2)
