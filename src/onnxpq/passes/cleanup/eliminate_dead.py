"""``eliminate-dead``: remove nodes, initializers and functions nothing uses.

Wraps onnx-ir's ``RemoveUnusedNodesPass`` and ``RemoveUnusedFunctionsPass``
and fills three gaps they leave:

* ``RemoveUnusedNodesPass`` removes a dead If/Loop/Scan node but not the uses
  its body's nodes hold on values of the enclosing graph, so the producers of
  those values look used and survive. Uses from nodes of such detached bodies
  are dropped here and the sweep repeats until nothing changes.
* It removes unused initializers of the main graph only; here those of
  subgraphs go too (an initializer that is a graph input or output stays).
* Its ``modified`` counts removed nodes only, not the other edits it makes
  (trailing omitted inputs dropped, unused optional outputs such as Dropout's
  mask dropped, ``training_mode=0`` removed from BatchNormalization). Here
  ``modified`` compares the model's structure before and after, so it is exact.

What counts as dead: a node none of whose outputs is consumed (by a node of
its graph or of any nested subgraph) or is an output of its graph, removed
recursively, in the main graph, in subgraphs and in model-local functions.
Standard ONNX operators have no side effects; nodes of custom domains are
treated the same way (unused is unused) — a custom operator whose effect is
wanted must have a used output. Graph inputs are never removed (the model's
signature and a Loop/Scan body's signature stay as they are). Exact.

onnx-ir's ``RemoveUnusedOpsetsPass`` is not used: opset imports are not code,
and it drops a domain from the model's imports when only a function body
uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass

from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass

__all__ = ["EliminateDeadPass"]

logger = logging.getLogger(__name__)


def _live_graphs(model: ir.Model) -> set[ir.Graph]:
    """The main graph, its subgraphs, and the graphs of functions with their subgraphs."""
    graphs: set[ir.Graph] = set(model.graphs())
    for function in model.functions.values():
        graphs.add(function.graph)
        for node in ir.traversal.RecursiveGraphIterator(function):
            if node.graph is not None:
                graphs.add(node.graph)
    return graphs


def _drop_stale_uses(model: ir.Model) -> int:
    """Detach nodes of removed subgraphs from the live values they still use; returns how many uses."""
    live = _live_graphs(model)
    dropped = 0
    for graph in live:
        values = [*graph.inputs, *graph.initializers.values()]
        values.extend(output for node in graph for output in node.outputs)
        for value in values:
            for user, index in list(value.uses()):
                if user.graph not in live:
                    user.replace_input_with(index, None)
                    dropped += 1
    return dropped


def _remove_unused_subgraph_initializers(model: ir.Model) -> int:
    """Remove initializers of subgraphs that nothing uses; RemoveUnusedNodesPass does the main graph."""
    removed = 0
    for graph in model.graphs():
        if graph is model.graph:
            continue
        keep = {*graph.inputs, *graph.outputs}
        for name, value in list(graph.initializers.items()):
            if value not in keep and not value.uses():
                del graph.initializers[name]
                removed += 1
                logger.debug("eliminate-dead: removed unused initializer '%s' of subgraph '%s'", name, graph.name)
    return removed


def _structure(model: ir.Model) -> tuple[Hashable, ...]:
    """Everything this pass can change, as a comparable value (reads no tensor data)."""
    nodes = [*ir.traversal.RecursiveGraphIterator(model.graph)]
    for function in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(function))
    return (
        tuple(
            (id(node), tuple(id(v) for v in node.inputs), tuple(v.name for v in node.outputs), tuple(node.attributes))
            for node in nodes
        ),
        tuple((id(graph), tuple(graph.initializers)) for graph in model.graphs()),
        tuple(model.functions),
    )


@register_pass
class EliminateDeadPass(OnnxpqPass):
    """Remove nodes whose outputs nothing uses, unused initializers and unused functions, recursively."""

    name = "eliminate-dead"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _structure(model)
        while True:
            changed = RemoveUnusedNodesPass()(model).modified
            changed = _drop_stale_uses(model) > 0 or changed
            changed = _remove_unused_subgraph_initializers(model) > 0 or changed
            if not changed:
                break
        RemoveUnusedFunctionsPass()(model)
        after = _structure(model)
        modified = after != before
        if modified:
            logger.debug(
                "eliminate-dead: %d nodes, %d initializers, %d functions removed",
                len(before[0]) - len(after[0]),
                sum(len(names) for _, names in before[1]) - sum(len(names) for _, names in after[1]),
                len(before[2]) - len(after[2]),
            )
        return ir.passes.PassResult(model, modified)
