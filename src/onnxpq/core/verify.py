"""The cheap structural verifier run after load and after every pass.

It checks what a pass can break without onnxruntime noticing until run time:

* every node input is defined: a graph input, an initializer, the output of
  an earlier node, or (in a subgraph) a value of an enclosing scope;
* nodes are in topological order and the graph has no cycle;
* value names are unique (SSA) and every graph output is produced;
* QuantizeLinear / DequantizeLinear keep consistent types: the zero point's
  type equals the quantized type, scales are floating point.

It is O(nodes + values) and reads no tensor data.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

__all__ = ["StructureError", "verify_structure"]

logger = logging.getLogger(__name__)

_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


class StructureError(Exception):
    """The graph is structurally invalid; the message says where."""


def _node_label(node: ir.Node) -> str:
    return f"node '{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    """A value's type, from its annotation, its constant tensor, or the Constant node producing it."""
    if value is None:
        return None
    if value.dtype is not None:
        return value.dtype
    if value.const_value is not None:
        return value.const_value.dtype
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        tensor = producer.attributes["value"].value
        return getattr(tensor, "dtype", None)
    return None


def _verify_qdq(node: ir.Node) -> None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return
    inputs = node.inputs
    scale = inputs[1] if len(inputs) > 1 else None
    zero_point = inputs[2] if len(inputs) > 2 else None
    scale_type = _dtype(scale)
    if scale_type is not None and scale_type not in _FLOATS:
        raise StructureError(f"{_node_label(node)}: scale '{scale.name}' has non-float type {scale_type}")
    zero_type = _dtype(zero_point)
    quantized_type = _dtype(node.outputs[0] if node.op_type == "QuantizeLinear" else inputs[0])
    if zero_type is not None and quantized_type is not None and zero_type != quantized_type:
        raise StructureError(
            f"{_node_label(node)}: zero point type {zero_type} differs from quantized type {quantized_type}"
        )


def _verify_graph(graph: ir.Graph | ir.Function, outer: set[ir.Value], where: str) -> None:
    defined: set[ir.Value] = set(outer)
    names: dict[str, str] = {}

    def define(value: ir.Value, what: str) -> None:
        if value.name:
            if value.name in names and value not in defined:
                raise StructureError(f"{where}: name '{value.name}' is defined twice ({names[value.name]} and {what})")
            names[value.name] = what
        defined.add(value)

    for value in graph.inputs:
        define(value, "a graph input")
    if isinstance(graph, ir.Graph):
        for value in graph.initializers.values():
            if value not in defined:
                define(value, "an initializer")
    for node in graph:
        for value in node.inputs:
            if value is None:
                continue
            if value not in defined:
                producer = value.producer()
                if producer is not None and producer.graph is graph:
                    raise StructureError(
                        f"{where}: {_node_label(node)} uses '{value.name}' before {_node_label(producer)} "
                        "defines it (nodes out of order or a cycle)"
                    )
                raise StructureError(
                    f"{where}: {_node_label(node)} uses '{value.name}', which nothing defines (dangling input)"
                )
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _verify_graph(attr.value, defined, f"{where} > {_node_label(node)}.{attr.name}")
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    _verify_graph(sub, defined, f"{where} > {_node_label(node)}.{attr.name}")
        _verify_qdq(node)
        for value in node.outputs:
            define(value, _node_label(node))
    for value in graph.outputs:
        if value not in defined:
            raise StructureError(f"{where}: graph output '{value.name}' is not produced by anything")


def verify_structure(model: ir.Model) -> None:
    """Raise :class:`StructureError` if the model's main graph, subgraphs or functions are malformed."""
    _verify_graph(model.graph, set(), "main graph")
    for function in model.functions.values():
        _verify_graph(function, set(), f"function '{function.name}'")
