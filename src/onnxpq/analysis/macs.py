"""Multiply-accumulate counts (MACs) and bit-operations (BOPs) of a model, from shapes only.

For every compute node the count is read off tensor *shapes* (inferred on a
clone of the model); tensor *values* are read only when ``count_zeros=True``
asks for the density of the weights. External data is never materialised.

Formulas (``prod`` over an empty sequence is 1)::

    Conv, ConvInteger, QLinearConv
        MACs = N * C_out * prod(out_spatial) * (C_in / group) * prod(kernel)
        with Y = [N, C_out, *out_spatial] (inferred output) and
             W = [C_out, C_in / group, *kernel]
    ConvTranspose
        MACs = N * C_in * prod(in_spatial) * (C_out / group) * prod(kernel)
        with X = [N, C_in, *in_spatial] and W = [C_in, C_out / group, *kernel]
    Gemm
        MACs = M * N * K,  A' = [M, K], B' = [K, N]  (A' = A^T if transA, B' = B^T if transB)
    MatMul, MatMulInteger, QLinearMatMul  (numpy matmul rules)
        A = [*batch_a, M, K], B = [*batch_b, K, N]
        MACs = prod(broadcast(batch_a, batch_b)) * M * N * K
        a 1-D A is read as [1, K] (M = 1), a 1-D B as [K, 1] (N = 1);
        activation x activation products (attention's Q @ K^T, P @ V) count the same way.
    com.microsoft MatMulNBits  (attributes K, N, bits; int8 activations at accuracy_level 4)
    com.microsoft DynamicQuantizeMatMul, MatMulIntegerToFloat  (MatMul rules; int8 activations)
        MACs = prod(A.shape[:-1]) * K * N

    BOPs = round(MACs * weight_bits * activation_bits * density)

Bits of an operand: the bit width of its dtype (32 for float32, 16 for float16);
when it is produced by a ``DequantizeLinear`` node, the bit width of that node's
quantized input dtype, or ``n`` when the node carries
``metadata_props["onnxpq.bits"] = str(n)`` (a 4-bit grid stored in int8) —
for a weight (``quantize-weights``) and an activation (``quantize-activations``:
``Clip → QuantizeLinear → DequantizeLinear``, an n-bit grid in a uint8
container) alike, so a layer reading both counts ``MACs · b_w · b_a``. An
activation int8 QDQ without the metadata (``quantize-static``) counts 8 bits.
``MatMulNBits`` weights have the node's ``bits`` attribute. For an
activation x activation product the second operand takes the weight role (its
bits are ``weight_bits``; ``weight_params`` is 0).

``density`` is the fraction of non-zero weights of the multiplicand weight
(the bias is left out: its additions are not MACs). For a ``DequantizeLinear``-fed
weight a zero is a quantized value equal to its zero point. Packed
``MatMulNBits`` weights keep density 1.0.

``weight_params`` counts the elements of a node's weight and bias initializers,
directly or through a ``DequantizeLinear`` whose input is an initializer
(scales and zero points are not parameters). For ``MatMulNBits`` the weight
counts its logical ``N * K`` parameters rather than the packed uint8 bytes.

``ModelCost.weight_bits_total`` is the memory cost: every initializer of every
graph (subgraphs included), each counted once, as ``elements * bits`` where bits
is the storage dtype's bit width, or the quantized bit width (``onnxpq.bits``
metadata of the consuming ``DequantizeLinear``) for an initializer that feeds a
``DequantizeLinear``.

Subgraphs (If/Loop/Scan): the nodes inside are counted once each. An ``If``
counts both branches and a ``Loop``/``Scan`` body counts once, not once per
iteration; the totals are a static count, not an execution trace.

Model-local functions: a node calling one is not expanded; it is listed in
``ModelCost.unresolved`` and appears in ``ModelCost.nodes`` with 0 MACs (its
initializer inputs still count as ``weight_params``).

Node names: a node without a name is reported as ``"<op_type>#<index>"``,
``index`` being its position in a depth-first walk of the graph and subgraphs.

Shapes come from onnx shape inference, run through onnx-ir's
``ShapeInferencePass`` (reused: it swaps initializers above 1 KB out of the
serialised copy and keeps external tensors as references, so large models
serialise small and no external data is read) on ``model.clone()``, after the
dims named by ``input_shapes`` are bound. A symbolic dim that an
``input_shapes`` entry binds is substituted by its value in every shape of the
clone, so a bound batch dim resolves even where inference keeps the symbol.
Inference runs in non-strict mode; if it fails outright, the shapes already in
the model are used. A compute node whose needed dims are not all known
integers is listed in ``ModelCost.unresolved`` with 0 MACs, never guessed.
"""

from __future__ import annotations

__all__ = ["ModelCost", "NodeCost", "model_cost"]

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

logger = logging.getLogger(__name__)

_BITS_METADATA_KEY = "onnxpq.bits"
_ONNX_DOMAINS = frozenset({"", "ai.onnx"})
_MS_DOMAIN = "com.microsoft"
_DEFAULT_BITS = 32


@dataclass(frozen=True)
class NodeCost:
    """Cost of one compute node; see the module docstring for the formulas."""

    node: str
    op_type: str
    macs: int
    weight_params: int
    weight_bits: int
    activation_bits: int
    density: float
    bops: int


@dataclass(frozen=True)
class ModelCost:
    """Per-node costs and their sums; ``unresolved`` names nodes counted as 0 MACs."""

    nodes: tuple[NodeCost, ...]
    macs: int
    bops: int
    weight_bits_total: int
    unresolved: tuple[str, ...]


@dataclass(frozen=True)
class _Roles:
    """Which inputs of a compute node are the activation, the weight, and the biases."""

    activation: ir.Value | None
    weight: ir.Value | None
    biases: tuple[ir.Value, ...]
    extra_weights: tuple[ir.Value, ...] = ()  # an operand that is constant besides the weight


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def _is_dequantize(node: ir.Node | None) -> bool:
    return (
        node is not None
        and node.op_type == "DequantizeLinear"
        and node.domain in _ONNX_DOMAINS | {_MS_DOMAIN}
    )


def _weight_initializer(value: ir.Value | None) -> ir.Value | None:
    """The initializer behind ``value``: itself, or the input of its DequantizeLinear producer."""
    if value is None:
        return None
    if value.is_initializer():
        return value
    producer = value.producer()
    if _is_dequantize(producer):
        quantized = _input(producer, 0)
        if quantized is not None and quantized.is_initializer():
            return quantized
    return None


def _static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    """The dims of ``value`` if its shape is fully known, else None."""
    if value is None:
        return None
    shape = value.shape
    if shape is None and value.const_value is not None:
        shape = value.const_value.shape
    if shape is None:
        return None
    dims = tuple(shape)
    if not all(isinstance(dim, int) for dim in dims):
        return None
    return dims  # type: ignore[return-value]


def _num_elements(initializer: ir.Value) -> int:
    tensor = initializer.const_value
    dims = tuple(tensor.shape) if tensor is not None else _static_dims(initializer)
    if dims is None:
        logger.warning(
            "initializer %r has no static shape; counted as 0 parameters", initializer.name
        )
        return 0
    return math.prod(dims)


def _dtype_bits(value: ir.Value) -> int:
    dtype = value.dtype
    if dtype is None and value.const_value is not None:
        dtype = value.const_value.dtype
    if dtype is None or dtype == ir.DataType.STRING:
        logger.debug("dtype of %r is %s; assuming %d bits", value.name, dtype, _DEFAULT_BITS)
        return _DEFAULT_BITS
    return dtype.bitwidth


def _metadata_bits(node: ir.Node) -> int | None:
    text = node.metadata_props.get(_BITS_METADATA_KEY)
    if text is None:
        return None
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if bits <= 0:
        logger.warning(
            "node %r: metadata %s=%r is not a positive integer; using its dtype's bit width",
            node.name,
            _BITS_METADATA_KEY,
            text,
        )
        return None
    return bits


def _dequantize_bits(node: ir.Node) -> int:
    """Bit width of a DequantizeLinear's quantized input (``onnxpq.bits`` metadata wins)."""
    bits = _metadata_bits(node)
    if bits is not None:
        return bits
    quantized = _input(node, 0)
    return _DEFAULT_BITS if quantized is None else _dtype_bits(quantized)


def _operand_bits(value: ir.Value | None) -> int:
    if value is None:
        return _DEFAULT_BITS
    producer = value.producer()
    if _is_dequantize(producer):
        return _dequantize_bits(producer)
    return _dtype_bits(value)


def _operand_roles(
    a: ir.Value | None, b: ir.Value | None
) -> tuple[ir.Value | None, ir.Value | None]:
    """(activation, weight) of a two-operand product: the constant operand is the weight."""
    if _weight_initializer(b) is None and _weight_initializer(a) is not None:
        return b, a
    return a, b


def _roles(node: ir.Node) -> _Roles:
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        bias = _input(node, 2)
        return _Roles(_input(node, 0), _input(node, 1), (bias,) if bias is not None else ())
    if op == "ConvInteger":
        return _Roles(_input(node, 0), _input(node, 1), ())
    if op == "QLinearConv":
        bias = _input(node, 8)
        return _Roles(_input(node, 0), _input(node, 3), (bias,) if bias is not None else ())
    if op == "MatMulNBits":
        bias = _input(node, 5)
        return _Roles(_input(node, 0), _input(node, 1), (bias,) if bias is not None else ())
    if op == "DynamicQuantizeMatMul":
        bias = _input(node, 4)
        return _Roles(_input(node, 0), _input(node, 1), (bias,) if bias is not None else ())
    if op == "MatMulIntegerToFloat":
        bias = _input(node, 6)
        return _Roles(_input(node, 0), _input(node, 1), (bias,) if bias is not None else ())
    if op == "Gemm":
        bias = _input(node, 2)
        biases = (bias,) if bias is not None else ()
        first, second = _input(node, 0), _input(node, 1)
    elif op == "QLinearMatMul":
        biases = ()
        first, second = _input(node, 0), _input(node, 3)
    else:  # MatMul, MatMulInteger
        biases = ()
        first, second = _input(node, 0), _input(node, 1)
    activation, weight = _operand_roles(first, second)
    extra = (activation,) if _weight_initializer(activation) is not None else ()
    return _Roles(activation, weight, biases, extra)  # type: ignore[arg-type]


def _conv_macs(node: ir.Node, weight_index: int) -> int | None:
    """N * C_out * prod(out_spatial) * (C_in/group) * prod(kernel), read from Y and W."""
    y = _static_dims(node.outputs[0])
    w = _static_dims(_input(node, weight_index))
    if y is None or w is None or len(y) < 2 or len(w) < 2:
        return None
    n, c_out, *out_spatial = y
    return n * c_out * math.prod(out_spatial) * w[1] * math.prod(w[2:])


def _conv_transpose_macs(node: ir.Node) -> int | None:
    """N * C_in * prod(in_spatial) * (C_out/group) * prod(kernel), read from X and W."""
    x = _static_dims(_input(node, 0))
    w = _static_dims(_input(node, 1))
    if x is None or w is None or len(x) < 2 or len(w) < 2:
        return None
    n, c_in, *in_spatial = x
    return n * c_in * math.prod(in_spatial) * w[1] * math.prod(w[2:])


def _gemm_macs(node: ir.Node) -> int | None:
    """M * N * K with A' = [M, K], B' = [K, N] after transA / transB."""
    a = _static_dims(_input(node, 0))
    b = _static_dims(_input(node, 1))
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m, k = reversed(a) if _attr_int(node, "transA", 0) else a
    _, n = reversed(b) if _attr_int(node, "transB", 0) else b
    return m * n * k


def _matmul_macs(a_value: ir.Value | None, b_value: ir.Value | None) -> int | None:
    """prod(broadcast(batch_a, batch_b)) * M * N * K under numpy matmul rules."""
    a = _static_dims(a_value)
    b = _static_dims(b_value)
    if a is None or b is None or not a or not b:
        return None
    if len(a) == 1:
        a = (1, *a)
    if len(b) == 1:
        b = (*b, 1)
    m, k = a[-2:]
    n = b[-1]
    batch_a, batch_b = a[:-2], b[:-2]
    rank = max(len(batch_a), len(batch_b))
    batch_a = (1,) * (rank - len(batch_a)) + batch_a
    batch_b = (1,) * (rank - len(batch_b)) + batch_b
    batch = 1
    for dim_a, dim_b in zip(batch_a, batch_b):
        if dim_a != dim_b and 1 not in (dim_a, dim_b):
            logger.warning("matmul batch dims %s and %s do not broadcast", a[:-2], b[:-2])
            return None
        batch *= max(dim_a, dim_b)
    return batch * m * n * k


def _matmul_nbits_macs(node: ir.Node) -> int | None:
    """prod(A.shape[:-1]) * K * N with K, N the node's attributes."""
    a = _input(node, 0)
    if a is None or a.shape is None or len(a.shape) < 1:
        return None
    leading = tuple(a.shape)[:-1]
    if not all(isinstance(dim, int) for dim in leading):
        return None
    batch = math.prod(leading)  # type: ignore[arg-type]
    return batch * _attr_int(node, "K", 0) * _attr_int(node, "N", 0)


_MAC_FORMULAS: dict[tuple[str, str], Callable[[ir.Node], int | None]] = {
    ("", "Conv"): lambda node: _conv_macs(node, weight_index=1),
    ("", "ConvInteger"): lambda node: _conv_macs(node, weight_index=1),
    ("", "QLinearConv"): lambda node: _conv_macs(node, weight_index=3),
    ("", "ConvTranspose"): _conv_transpose_macs,
    ("", "Gemm"): _gemm_macs,
    ("", "MatMul"): lambda node: _matmul_macs(_input(node, 0), _input(node, 1)),
    ("", "MatMulInteger"): lambda node: _matmul_macs(_input(node, 0), _input(node, 1)),
    ("", "QLinearMatMul"): lambda node: _matmul_macs(_input(node, 0), _input(node, 3)),
    (_MS_DOMAIN, "MatMulNBits"): _matmul_nbits_macs,
    (_MS_DOMAIN, "DynamicQuantizeMatMul"): lambda node: _matmul_macs(_input(node, 0), _input(node, 1)),
    (_MS_DOMAIN, "MatMulIntegerToFloat"): lambda node: _matmul_macs(_input(node, 0), _input(node, 1)),
}
"""MAC formula of each compute op, keyed by (domain, op_type); every other op has 0 MACs."""


def _mac_formula(node: ir.Node) -> Callable[[ir.Node], int | None] | None:
    domain = "" if node.domain in _ONNX_DOMAINS else node.domain
    return _MAC_FORMULAS.get((domain, node.op_type))


def _density(weight: ir.Value | None) -> float:
    """Fraction of non-zero weights; for a DequantizeLinear-fed weight, of values != zero point.

    An external tensor's memory map is released after counting: every weight
    of a large model is read here, and mapped pages stay resident until unmapped.
    """
    initializer = _weight_initializer(weight)
    if initializer is None or initializer.const_value is None:
        return 1.0
    try:
        return _count_density(weight, initializer)
    finally:
        if isinstance(initializer.const_value, ir.ExternalTensor):
            try:
                initializer.const_value.release()
            except BufferError:  # a view is still alive elsewhere; the map goes with it
                logger.debug("could not release the memory map of %r yet", initializer.name)


def _count_density(weight: ir.Value | None, initializer: ir.Value) -> float:
    quantized = initializer.const_value.numpy()  # type: ignore[union-attr]
    if quantized.size == 0:
        return 1.0
    zero = np.zeros((), dtype=quantized.dtype)
    if initializer is not weight:  # through a DequantizeLinear
        dequantize = weight.producer()  # type: ignore[union-attr]
        zero_point = _input(dequantize, 2)
        if zero_point is not None and zero_point.const_value is not None:
            laid_out = _broadcast_zero_point(
                dequantize, zero_point.const_value.numpy(), quantized.shape
            )
            if laid_out is None:
                logger.warning(
                    "DequantizeLinear %r: zero point of shape %s does not lay out against weight "
                    "of shape %s; density taken as 1.0",
                    dequantize.name,
                    zero_point.const_value.shape,
                    quantized.shape,
                )
                return 1.0
            zero = laid_out
    return float(np.count_nonzero(quantized != zero)) / quantized.size


def _broadcast_zero_point(
    dequantize: ir.Node, zero_point: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray | None:
    """Zero point laid out against the quantized tensor: scalar, per-axis or blocked."""
    if zero_point.size == 1:
        return zero_point.reshape(())
    axis = _attr_int(dequantize, "axis", 1) % len(shape)
    if zero_point.ndim == 1:
        return zero_point.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    block_size = _attr_int(dequantize, "block_size", 0)
    if zero_point.ndim == len(shape) and block_size > 0:
        return np.repeat(zero_point, block_size, axis=axis).take(range(shape[axis]), axis=axis)
    return None


def _node_cost(
    node: ir.Node, name: str, formula: Callable[[ir.Node], int | None], count_zeros: bool
) -> tuple[NodeCost, bool]:
    """Cost of one compute node and whether its MACs were resolved."""
    roles = _roles(node)
    weight_initializer = _weight_initializer(roles.weight)
    params = 0
    if node.op_type == "MatMulNBits":
        params += _attr_int(node, "K", 0) * _attr_int(node, "N", 0)
        weight_bits = _attr_int(node, "bits", 4)
    else:
        if weight_initializer is not None:
            params += _num_elements(weight_initializer)
        weight_bits = _operand_bits(roles.weight)
    for value in (*roles.biases, *roles.extra_weights):
        initializer = _weight_initializer(value)
        if initializer is not None:
            params += _num_elements(initializer)
    activation_bits = _operand_bits(roles.activation)
    if node.op_type in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        weight_bits, activation_bits = _operand_bits(roles.weight), 8  # activations quantized at run time
    elif node.op_type == "MatMulNBits" and _attr_int(node, "accuracy_level", 0) == 4:
        activation_bits = 8  # accuracy level 4 computes with int8 activations
    density = 1.0
    if count_zeros:
        if node.op_type == "MatMulNBits":
            logger.debug("node %r: density of packed MatMulNBits weights not computed", name)
        else:
            density = _density(roles.weight)
    macs = formula(node)
    resolved = macs is not None
    macs = macs or 0
    bops = round(macs * weight_bits * activation_bits * density)
    cost = NodeCost(name, node.op_type, macs, params, weight_bits, activation_bits, density, bops)
    return cost, resolved


def _function_call_cost(node: ir.Node, name: str) -> NodeCost:
    """A call of a model-local function: not expanded, 0 MACs, its constant inputs as params."""
    constants = [v for v in node.inputs if v is not None and _weight_initializer(v) is not None]
    activations = [v for v in node.inputs if v is not None and _weight_initializer(v) is None]
    params = sum(_num_elements(_weight_initializer(v)) for v in constants)  # type: ignore[arg-type]
    weight_bits = _operand_bits(constants[0]) if constants else _DEFAULT_BITS
    activation_bits = _operand_bits(activations[0]) if activations else _DEFAULT_BITS
    return NodeCost(name, node.op_type, 0, params, weight_bits, activation_bits, 1.0, 0)


def _bind_input_shapes(model: ir.Model, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Set the shapes of ``model``'s graph inputs; substitute the symbols they bind everywhere."""
    inputs = {value.name: value for value in model.graph.inputs}
    symbols: dict[str, int] = {}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise ValueError(
                f"input_shapes names {name!r}, which is not a graph input; "
                f"inputs are {sorted(inputs)}"
            )
        value = inputs[name]
        bound = _checked_dims(name, dims)
        if value.shape is not None:
            _collect_symbols(name, value.shape, bound, symbols)
        value.shape = ir.Shape(bound)
    if symbols:
        _substitute_symbols(model, symbols)


def _checked_dims(name: str, dims: Sequence[int]) -> list[int]:
    def is_dim(dim: object) -> bool:
        return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0

    if not all(is_dim(dim) for dim in dims):
        raise ValueError(f"input_shapes[{name!r}] = {list(dims)} must be non-negative integers")
    return [int(dim) for dim in dims]


def _collect_symbols(
    name: str, shape: ir.Shape, bound: Sequence[int], symbols: dict[str, int]
) -> None:
    """Check ``bound`` against the input's declared ``shape``; record symbol -> value bindings."""
    if len(shape) != len(bound):
        raise ValueError(
            f"input_shapes[{name!r}] = {list(bound)} has rank {len(bound)}, "
            f"the model's input has shape {shape}"
        )
    for declared, dim in zip(shape, bound):
        if isinstance(declared, int):
            if declared != dim:
                raise ValueError(
                    f"input_shapes[{name!r}] = {list(bound)} contradicts the model's shape {shape}"
                )
        elif declared.value is not None and symbols.setdefault(declared.value, dim) != dim:
            raise ValueError(
                f"symbolic dim {declared.value!r} bound to both {symbols[declared.value]} and {dim}"
            )


def _substitute_symbols(model: ir.Model, symbols: Mapping[str, int]) -> None:
    """Replace each bound symbolic dim by its value in every shape of every graph."""

    def bind(dim: int | ir.SymbolicDim) -> int | ir.SymbolicDim:
        if isinstance(dim, ir.SymbolicDim) and dim.value in symbols:
            return symbols[dim.value]
        return dim

    for graph in model.graphs():
        values = [*graph.inputs, *graph.initializers.values()]
        values += [output for node in graph for output in node.outputs]
        for value in values:
            if value.shape is None:
                continue
            dims = [bind(dim) for dim in value.shape]
            if dims != list(value.shape):
                value.shape = ir.Shape(dims)


def _infer_shapes(model: ir.Model) -> None:
    """Non-strict onnx shape inference, in place; keeps the existing shapes if it fails."""
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception as error:  # noqa: BLE001 - inference is best effort, shapes already there stay
        logger.warning("shape inference failed (%s); using the shapes already in the model", error)


def _typed_input(graph: ir.Graph, name: str, dims: Sequence[int], dtype: ir.DataType) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(list(dims)), type=ir.TensorType(dtype))
    graph.inputs.append(value)
    return value


def _float_twin(graph: ir.Graph) -> None:
    """Rewrite quantized nodes into the float ops whose shapes inference knows, in place (on a throwaway clone).

    DequantizeLinear of an initializer becomes a typed float input of the
    same shape; DynamicQuantizeMatMul, MatMulIntegerToFloat and MatMulNBits
    become MatMul with a typed float weight input [K, N]. Value names are kept,
    so the shapes found map back to the real model.
    """
    for node in list(graph):
        key = (node.domain or "", node.op_type)
        out = node.outputs[0] if node.outputs else None
        if out is None:
            continue
        if key in (("", "DequantizeLinear"), ("ai.onnx", "DequantizeLinear")):
            source = node.inputs[0]
            if source is None or source.const_value is None:
                continue
            float_type = node.inputs[1].dtype if len(node.inputs) > 1 and node.inputs[1].dtype else ir.DataType.FLOAT
            replacement = _typed_input(graph, f"{out.name}__twin", source.const_value.shape, float_type)
        elif key in ((_MS_DOMAIN, "DynamicQuantizeMatMul"), (_MS_DOMAIN, "MatMulIntegerToFloat"), (_MS_DOMAIN, "MatMulNBits")):
            if node.op_type == "MatMulNBits":
                dims = [_attr_int(node, "K", 0), _attr_int(node, "N", 0)]
            else:
                weight = node.inputs[1]
                if weight is None or weight.const_value is None:
                    continue
                dims = list(weight.const_value.shape)
            weight_twin = _typed_input(graph, f"{out.name}__weight_twin", dims, ir.DataType.FLOAT)
            matmul_out = ir.Value(name=f"{out.name}__twin")
            matmul = ir.node("MatMul", [node.inputs[0], weight_twin], outputs=[matmul_out])
            graph.insert_before(node, matmul)
            replacement = matmul_out
        else:
            continue
        out.replace_all_uses_with(replacement, replace_graph_outputs=True)
        replacement.name, out.name = out.name, f"{out.name}__quantized"
        graph.remove(node, safe=False)


def _symbolic_shapes(model: ir.Model) -> None:
    """Fill the main graph's unresolved shapes with onnxruntime's symbolic shape inference.

    onnx's inference loses the batch dim of transformer exports (position ids
    built with Shape/Gather/Expand); onnxruntime's symbolic inference tracks it.
    Large initializers are handed over as typed graph inputs, without data.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # pragma: no cover - part of onnxruntime's wheel, but optional there
        return
    light = model.clone()
    graph = light.graph
    for node in graph:
        for value in node.outputs:
            if not value.is_graph_output():
                value.shape = None  # onnx's partial answers ('unk__' dims) would be kept as if known
    _float_twin(graph)
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is not None and tensor.nbytes > 1024:
            value.const_value = None
            graph.initializers.pop(name)
            value.type = ir.TensorType(tensor.dtype)
            value.shape = ir.Shape(tensor.shape)
            graph.inputs.append(value)
    try:
        inferred = SymbolicShapeInference.infer_shapes(ir.to_proto(light), auto_merge=True, guess_output_rank=True)
    except Exception as error:  # noqa: BLE001 - best effort, like onnx's inference
        logger.debug("symbolic shape inference failed: %s", error)
        return
    if inferred is None:
        return
    shapes: dict[str, list[int]] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        if all(isinstance(d, int) for d in dims):
            shapes[info.name] = dims  # type: ignore[assignment]
    for node in model.graph:
        for value in node.outputs:
            if value.name in shapes and (value.shape is None or not all(isinstance(d, int) for d in value.shape)):
                value.shape = ir.Shape(shapes[value.name])


def _weight_bits_total(model: ir.Model) -> int:
    """Sum of elements * bits over all initializers of all graphs; DQ-fed at quantized bits."""
    quantized_bits: dict[int, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        quantized = _input(node, 0) if _is_dequantize(node) else None
        if quantized is not None and quantized.is_initializer():
            quantized_bits.setdefault(id(quantized), _dequantize_bits(node))
    seen: set[int] = set()
    total = 0
    for graph in model.graphs():
        for initializer in graph.initializers.values():
            if id(initializer) in seen:
                continue
            seen.add(id(initializer))
            if initializer.dtype == ir.DataType.STRING:
                logger.debug("string initializer %r left out of weight bits", initializer.name)
                continue
            bits = quantized_bits.get(id(initializer)) or _dtype_bits(initializer)
            total += _num_elements(initializer) * bits
    return total


def model_cost(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    count_zeros: bool = False,
) -> ModelCost:
    """MACs, BOPs and weight memory of ``model``; ``model`` itself is not modified.

    Args:
        model: The model; its external data is not read (unless ``count_zeros``).
        input_shapes: Concrete shapes for graph inputs, e.g. ``{"input": [32, 1, 8, 8]}``;
            symbolic dims they bind (a batch ``N``) are bound throughout the model.
        count_zeros: Read the weight values to compute each node's density.

    Raises:
        ValueError: An ``input_shapes`` entry names no graph input, or contradicts its shape.
    """
    work = model.clone()
    if input_shapes:
        _bind_input_shapes(work, input_shapes)
    _infer_shapes(work)
    if any(
        _mac_formula(node) is not None and _mac_formula(node)(node) is None  # type: ignore[misc]
        for node in work.graph
    ):
        _symbolic_shapes(work)

    costs: list[NodeCost] = []
    unresolved: list[str] = []
    for index, node in enumerate(ir.traversal.RecursiveGraphIterator(work.graph)):
        name = node.name or f"{node.op_type}#{index}"
        if node.op_identifier() in work.functions:
            logger.debug(
                "node %r calls model-local function %s; not expanded", name, node.op_identifier()
            )
            costs.append(_function_call_cost(node, name))
            unresolved.append(name)
            continue
        formula = _mac_formula(node)
        if formula is None:
            continue
        cost, resolved = _node_cost(node, name, formula, count_zeros)
        if not resolved:
            logger.debug("node %r (%s): shapes not static; counted as 0 MACs", name, node.op_type)
            unresolved.append(name)
        costs.append(cost)
    if unresolved:
        logger.warning(
            "%d compute node(s) unresolved, counted as 0 MACs: %s", len(unresolved), unresolved
        )
    return ModelCost(
        nodes=tuple(costs),
        macs=sum(cost.macs for cost in costs),
        bops=sum(cost.bops for cost in costs),
        weight_bits_total=_weight_bits_total(work),
        unresolved=tuple(unresolved),
    )
