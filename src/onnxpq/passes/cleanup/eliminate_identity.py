"""``eliminate-identity``: remove Identity nodes.

A thin registered wrapper of ``onnx_ir.passes.common.IdentityEliminationPass``
(it keeps graph outputs' names: an Identity that renames a graph input to a
graph output stays). Exact.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass

__all__ = ["EliminateIdentityPass"]

logger = logging.getLogger(__name__)


@register_pass
class EliminateIdentityPass(OnnxpqPass):
    """Remove Identity nodes, rewiring their consumers to the Identity's input."""

    name = "eliminate-identity"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = IdentityEliminationPass()(model)
        return ir.passes.PassResult(model, result.modified)
