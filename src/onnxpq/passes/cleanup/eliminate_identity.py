"""``eliminate-identity``: remove Identity nodes.

A thin registered wrapper of ``onnx_ir.passes.common.IdentityEliminationPass``
(it keeps graph outputs' names: an Identity that renames a graph input to a
graph output stays). Exact. onnx-ir would also remove an Identity copying one
graph output to another (a Scan/Loop body's state and scan output) or an
outer-scope value to a subgraph output; both stay here, onnxruntime computes
the rewritten form wrongly.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass

__all__ = ["EliminateIdentityPass"]

logger = logging.getLogger(__name__)


class _KeepOutputCopies(IdentityEliminationPass):
    """onnx-ir's pass, minus the Identity nodes whose removal would merge two graph outputs or leak an outer value."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.domain == "" and len(node.inputs) == 1 and len(node.outputs) == 1:
            source, output = node.inputs[0], node.outputs[0]
            if source is not None and output.is_graph_output() and (source.is_graph_output() or source.graph is not node.graph):
                logger.debug("eliminate-identity: kept '%s': it copies '%s' to a graph output", node.name, source.name)
                return False
        return super()._try_eliminate_identity_node(node)


@register_pass
class EliminateIdentityPass(OnnxpqPass):
    """Remove Identity nodes, rewiring their consumers to the Identity's input."""

    name = "eliminate-identity"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = _KeepOutputCopies()(model)
        return ir.passes.PassResult(model, result.modified)
