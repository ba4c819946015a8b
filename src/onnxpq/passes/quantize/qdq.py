"""Building QuantizeLinear / DequantizeLinear pairs in an onnx-ir graph.

Shared by the quantize passes. Two shapes of rewrite:

* an **activation** ``t`` gets ``t → QuantizeLinear → DequantizeLinear → t'``
  inserted right after its producer, and every consumer of ``t`` (except the
  new Q) reads ``t'``; ``t`` itself stays, so a graph output keeps its name
  and its float values;
* a **weight** initializer ``W`` is replaced, for the consumers asked, by
  ``DequantizeLinear(W_q, s, z[, axis][, block_size])`` with ``W_q`` stored
  as an integer initializer; the DQ node records the bit-width in
  ``metadata_props["onnxpq.bits"]`` so that size and bit-operation figures
  count n bits even in an int8 container.

Opset facts: per-axis Q/DQ needs opset ≥ 13, blocked Q/DQ and INT4/UINT4 need
opset ≥ 21. The caller checks the model's opset first (:func:`default_opset`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.passes.quantize.affine import QuantizedTensor

__all__ = [
    "BITS_KEY",
    "NameAllocator",
    "default_opset",
    "onnx_quantized_type",
    "add_initializer",
    "insert_activation_qdq",
    "dequantized_weight",
    "is_quantized_model",
]

logger = logging.getLogger(__name__)

#: metadata_props key on DequantizeLinear nodes: the real bit-width of an int8/int4 container.
BITS_KEY = "onnxpq.bits"

_QDQ_TYPES = {
    (8, True): ir.DataType.INT8,
    (8, False): ir.DataType.UINT8,
    (4, True): ir.DataType.INT4,
    (4, False): ir.DataType.UINT4,
    (16, True): ir.DataType.INT16,
    (16, False): ir.DataType.UINT16,
}

_QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}


def default_opset(model: ir.Model) -> int:
    """The model's default-domain opset version."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def onnx_quantized_type(bits: int, signed: bool) -> ir.DataType:
    """The ONNX type holding b-bit values: INT4/UINT4 at 4 bits (opset 21), else the 8- or 16-bit container."""
    if bits == 4:
        return _QDQ_TYPES[(4, signed)]
    return _QDQ_TYPES[(8 if bits <= 8 else 16, signed)]


def _is_activation_qdq(node: ir.Node) -> bool:
    """A QuantizeLinear of a non-constant tensor, or the DequantizeLinear right after one (activation fake quantization)."""
    if node.op_type == "QuantizeLinear":
        source = node.inputs[0] if node.inputs else None
        return source is not None and source.const_value is None and not source.is_initializer()
    if node.op_type == "DequantizeLinear":
        source = node.inputs[0] if node.inputs else None
        producer = source.producer() if source is not None else None
        return producer is not None and producer.op_type == "QuantizeLinear" and _is_activation_qdq(producer)
    return False


def is_quantized_model(graph: ir.Graph, *, allow_activation_qdq: bool = False) -> str | None:
    """The op type of a quantization node already in the graph, or None.

    ``allow_activation_qdq``: QuantizeLinear → DequantizeLinear pairs on
    activations (``quantize-activations``' fake quantization) do not count;
    weights behind a DequantizeLinear and quantized kernels still do.
    """
    for node in graph.all_nodes():
        if node.op_type in _QUANTIZED_OPS and node.domain in ("", "ai.onnx", "com.microsoft"):
            if allow_activation_qdq and _is_activation_qdq(node):
                continue
            return node.op_type
    return None


class NameAllocator:
    """Unique value and node names for a graph (its own names plus every name handed out)."""

    def __init__(self, graph: ir.Graph) -> None:
        self._taken: set[str] = set()
        for node in graph.all_nodes():
            if node.name:
                self._taken.add(node.name)
            for value in (*node.inputs, *node.outputs):
                if value is not None and value.name:
                    self._taken.add(value.name)
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            if value.name:
                self._taken.add(value.name)

    def __call__(self, base: str) -> str:
        name, index = base, 1
        while name in self._taken:
            name = f"{base}_{index}"
            index += 1
        self._taken.add(name)
        return name


def add_initializer(graph: ir.Graph, names: NameAllocator, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
    """Register a new initializer holding ``array`` (converted to ``dtype`` when given, e.g. INT4).

    A large one goes to the context's tensor store when there is one (:meth:`PassContext.stored`), not into memory.
    """
    name = names(base)
    tensor = ir.Tensor(array, dtype=dtype, name=name) if dtype is not None else ir.tensor(array, name=name)
    tensor = PassContext.current().stored(tensor)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _scalar_or_vector(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.asarray(array).astype(dtype)


def insert_activation_qdq(
    graph: ir.Graph,
    names: NameAllocator,
    value: ir.Value,
    scale: float,
    zero_point: int,
    qtype: ir.DataType,
) -> ir.Value:
    """Insert Q/DQ on activation ``value``; rewire its consumers to the DQ output and return it."""
    float_type = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
    s = add_initializer(graph, names, f"{value.name}_scale", np.array(scale, dtype=float_type))
    z = add_initializer(graph, names, f"{value.name}_zero_point", np.array(zero_point, dtype=qtype.numpy()))
    q_out = ir.Value(name=names(f"{value.name}_quantized"), shape=value.shape, type=ir.TensorType(qtype))
    dq_out = ir.Value(name=names(f"{value.name}_dequantized"), shape=value.shape, type=value.type)
    consumers = [(use.node, use.idx) for use in value.uses()]
    q = ir.node("QuantizeLinear", [value, s, z], outputs=[q_out], name=names(f"{value.name}_QuantizeLinear"))
    dq = ir.node("DequantizeLinear", [q_out, s, z], outputs=[dq_out], name=names(f"{value.name}_DequantizeLinear"))
    producer = value.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, [q, dq])
    else:
        first = next(iter(graph), None)
        if first is None:
            graph.append(q)
            graph.append(dq)
        else:
            graph.insert_before(first, [q, dq])
    for node, index in consumers:
        node.replace_input_with(index, dq_out)
    return dq_out


def dequantized_weight(
    graph: ir.Graph,
    names: NameAllocator,
    weight: ir.Value,
    quantized: QuantizedTensor,
    *,
    signed: bool,
    before: ir.Node,
) -> ir.Value:
    """A DequantizeLinear of the quantized ``weight``, inserted before ``before``; returns its output.

    The caller replaces the weight input of the consumers it wants with the returned value.
    """
    float_type = weight.dtype.numpy() if weight.dtype is not None else np.dtype(np.float32)
    qtype = onnx_quantized_type(quantized.bits, signed)
    q_array = quantized.values
    w_q = add_initializer(graph, names, f"{weight.name}_quantized", q_array, qtype if quantized.bits == 4 else None)
    s = add_initializer(graph, names, f"{weight.name}_scale", _scalar_or_vector(quantized.scale, float_type))
    z = add_initializer(
        graph, names, f"{weight.name}_zero_point", _scalar_or_vector(quantized.zero_point, np.dtype(np.int64)).astype(q_array.dtype),
        qtype if quantized.bits == 4 else None,
    )
    attributes: dict[str, int] = {}
    if quantized.axis is not None and np.ndim(quantized.scale) > 0:
        attributes["axis"] = quantized.axis
    if quantized.block_size is not None:
        attributes["block_size"] = quantized.block_size
    out = ir.Value(name=names(f"{weight.name}_dequantized"), shape=weight.shape, type=weight.type)
    dq = ir.node(
        "DequantizeLinear",
        [w_q, s, z],
        attributes=attributes,
        outputs=[out],
        name=names(f"{weight.name}_DequantizeLinear"),
        metadata_props={BITS_KEY: str(quantized.bits)},
    )
    graph.insert_before(before, dq)
    return out
