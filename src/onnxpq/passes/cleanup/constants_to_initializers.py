"""``constants-to-initializers``: turn Constant nodes into initializers.

Later passes look for weights among initializers (``value.const_value`` on an
initializer), so a weight held in a ``Constant`` node would be invisible to
them. This pass replaces every ``Constant`` node by an initializer of the same
name, holding the same tensor, in the graph the node lives in: a Constant
inside an If/Loop/Scan body becomes an initializer of that body (onnxruntime
accepts subgraph initializers). Exact: no value changes.

Handled attributes: ``value`` (any tensor, external data kept as is),
``value_float`` / ``value_floats`` (float32), ``value_int`` / ``value_ints``
(int64), ``value_string`` / ``value_strings``. Left untouched, with a DEBUG
log line saying why:

* ``sparse_value`` constants (a graph's dense initializers cannot hold
  them; note that onnx-ir 1.1 does not deserialise them at all yet);
* a Constant whose output is a graph output (not every runtime accepts an
  initializer as a graph output);
* Constants inside model-local functions (a function has no initializers);
* malformed Constants (not exactly one attribute, a reference attribute);
* every Constant of a model with IR version < 4, where each initializer
  would also have to be a graph input (an overridable one).

Own implementation rather than a wrapper of onnx-ir's
``LiftConstantsToInitializersPass``, which it otherwise mirrors: that pass
raises ``ValueError`` on a ``sparse_value`` Constant when asked to lift the
``value_*`` forms, and by default keeps constants under 16 elements.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass

__all__ = ["ConstantsToInitializersPass"]

logger = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")


def _label(node: ir.Node) -> str:
    return node.name or f"Constant -> {node.outputs[0].name}"


def _constant_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node produces, or None (logged) when it is not lifted."""
    if len(node.attributes) != 1:
        logger.debug(
            "constants-to-initializers: skipped '%s': it has %d attributes, not 1", _label(node), len(node.attributes)
        )
        return None
    attr = next(iter(node.attributes.values()))
    if attr.is_ref():
        logger.debug("constants-to-initializers: skipped '%s': its attribute is a function reference", _label(node))
        return None
    name = node.outputs[0].name
    if attr.name == "value":
        return attr.as_tensor()
    if attr.name == "value_float":
        return ir.tensor(np.array(attr.as_float(), dtype=np.float32), name=name)
    if attr.name == "value_floats":
        return ir.tensor(np.array(list(attr.as_floats()), dtype=np.float32), name=name)
    if attr.name == "value_int":
        return ir.tensor(np.array(attr.as_int(), dtype=np.int64), name=name)
    if attr.name == "value_ints":
        return ir.tensor(np.array(list(attr.as_ints()), dtype=np.int64), name=name)
    if attr.name == "value_string":
        return ir.StringTensor([attr.as_string().encode("utf-8")], shape=ir.Shape([]), name=name)
    if attr.name == "value_strings":
        strings = [s.encode("utf-8") for s in attr.as_strings()]
        return ir.StringTensor(strings, shape=ir.Shape([len(strings)]), name=name)
    if attr.name == "sparse_value":
        logger.debug("constants-to-initializers: skipped '%s': sparse_value constants stay nodes", _label(node))
        return None
    logger.debug("constants-to-initializers: skipped '%s': unknown attribute '%s'", _label(node), attr.name)
    return None


@register_pass
class ConstantsToInitializersPass(OnnxpqPass):
    """Replace Constant nodes by initializers of the same name, in the main graph and in subgraphs."""

    name = "constants-to-initializers"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for function in model.functions.values():
            if any(n.op_type == "Constant" for n in ir.traversal.RecursiveGraphIterator(function)):
                logger.debug(
                    "constants-to-initializers: function '%s' keeps its Constants (functions have no initializers)",
                    function.name,
                )
        if model.ir_version < 4:
            logger.debug(
                "constants-to-initializers: skipped: IR version %d < 4 needs every initializer to be a graph input",
                model.ir_version,
            )
            return ir.passes.PassResult(model, False)
        lifted = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type != "Constant" or node.domain not in _ONNX_DOMAINS or len(node.outputs) != 1:
                continue
            graph = node.graph
            output = node.outputs[0]
            if graph is None or not output.name:
                continue
            if output.is_graph_output():
                logger.debug("constants-to-initializers: skipped '%s': its output is a graph output", _label(node))
                continue
            tensor = _constant_tensor(node)
            if tensor is None:
                continue
            initializer = ir.Value(
                name=output.name,
                shape=ir.Shape(tensor.shape),
                type=ir.TensorType(tensor.dtype),
                const_value=tensor,
                doc_string=output.doc_string,
                metadata_props=dict(output.metadata_props),
            )
            initializer.meta.update(output.meta)
            # Free the name first: the initializer takes over the Constant's output name.
            output.replace_all_uses_with(initializer)
            graph.remove(node, safe=True)
            graph.register_initializer(initializer)
            lifted += 1
            logger.debug("constants-to-initializers: '%s' -> initializer '%s'", _label(node), initializer.name)
        if lifted:
            logger.debug("constants-to-initializers: lifted %d constants", lifted)
        return ir.passes.PassResult(model, lifted > 0)
