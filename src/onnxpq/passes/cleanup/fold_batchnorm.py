"""``fold-batchnorm``: fold inference BatchNormalization into the preceding Conv, ConvTranspose, Gemm or MatMul.

BatchNormalization in inference form computes, per channel ``c`` (axis 1)::

    y = gamma * (x - mean) / sqrt(var + eps) + beta = s * x + t
    s = gamma / sqrt(var + eps)        t = beta - mean * s

When ``x = W * a + b`` is the output of a linear operator whose output
channel ``c`` is BN's axis 1, the BN is absorbed into its weight and bias::

    W'[c] = W[c] * s[c]                b' = (b - mean) * s + beta = b * s + t

per operator:

* Conv, weight ``[C_out, C_in/group, k...]``: scale along axis 0, whatever
  the group count (grouped and depthwise alike).
* ConvTranspose, weight ``[C_in, C_out/group, k...]``: output channel
  ``g * C_out/group + j`` is column ``j`` of group ``g``'s rows, so the weight
  is viewed as ``[group, C_in/group, C_out/group, k...]`` and scaled by
  ``s`` viewed as ``[group, 1, C_out/group, 1...]``.
* Gemm ``Y = alpha * A' B' + beta * C`` with output ``[M, N]``: ``B`` is
  ``[K, N]`` (``transB=0``, scale columns) or ``[N, K]`` (``transB=1``, scale
  rows); ``alpha`` is folded into the weight (``B' = alpha * B * s``) and
  ``beta`` into the bias (``C' = beta * C * s + t``), and both attributes are
  dropped. ``C`` must be absent, a scalar or 1-D (``[1]`` or ``[N]``).
* MatMul ``a @ W`` with a constant 2-D ``W [K, N]``, when its output is 2-D
  ``[M, N]`` (so BN's axis 1 is ``N``): replaced by ``Gemm(a, W * s, t)``.
  A 3-D MatMul output ``[B, T, N]`` normalised over axis 1 is not foldable.

Folded only when: the BN is in inference form (one output, ``training_mode``
absent or 0, not ``spatial=0``); its scale, bias, mean and var and the
producer's weight (and bias) are initializers that are not graph inputs; the
weight is float32, float16 or double; the producer's output has the BN as its
only consumer and is not a graph output; both are in the same graph. The
arithmetic is done in float64 and cast back to the weight's dtype. A producer
without a bias gets one.

Tensors are never written in place: the folded weight and bias are new
initializers (``<weight>_bnfold``, ``<bias>_bnfold``), and the old ones are
removed only when nothing else uses them (a shared weight stays for its other
users). BN's consumers, and the graph output when BN's output is one, are
rewired to the producer's output; a graph output keeps its name.

Handled in the main graph and in If/Loop/Scan bodies. Everything else is left
untouched with a DEBUG line saying why: other producers (e.g. Relu), custom
domains, non-constant weights, shared producer outputs, training-form BN,
model-local functions (which have no initializers). Exact, up to float
rounding (float16 weights are rounded once, after folding).

Own implementation: onnxscript's ``fuse_batchnorm`` rules do not check the
BN's training mode, Gemm bias shapes or MatMul, and reuse the weight's name
for the new initializer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass

__all__ = ["FoldBatchNormPass"]

logger = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


@dataclass
class _Fold:
    """The new weight and bias of a producer, and the attributes to drop from it."""

    weight: np.ndarray
    bias: np.ndarray
    drop_attributes: tuple[str, ...] = ()


class _Skip(Exception):
    """A fold that does not apply; the message says why."""


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def _constant(value: ir.Value | None, what: str) -> ir.TensorProtocol:
    """The tensor of an initializer that is not a graph input; _Skip otherwise."""
    if value is None:
        raise _Skip(f"its {what} is absent")
    if not value.is_initializer() or value.const_value is None:
        raise _Skip(f"its {what} '{value.name}' is not an initializer")
    if value.is_graph_input():
        raise _Skip(f"its {what} '{value.name}' is a graph input (it can be overridden)")
    return value.const_value


def _bias(producer: ir.Node) -> ir.TensorProtocol | None:
    """The producer's bias tensor (input 2), or None when it has none."""
    if len(producer.inputs) < 3 or producer.inputs[2] is None:
        return None
    return _constant(producer.inputs[2], "bias")


def _array(tensor: ir.TensorProtocol) -> np.ndarray:
    """The tensor's values in float64 (reads the data; shapes are checked before this)."""
    return tensor.numpy().astype(np.float64)


def _dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape)


def _broadcast(scale: np.ndarray, rank: int, axis: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = -1
    return scale.reshape(shape)


def _fold_conv(producer: ir.Node, weight: ir.TensorProtocol, s: np.ndarray, t: np.ndarray) -> _Fold:
    shape = _dims(weight)
    if len(shape) < 3 or shape[0] != s.size:
        raise _Skip(f"Conv weight shape {list(shape)} does not have {s.size} output channels on axis 0")
    bias = _bias(producer)
    if bias is not None and _dims(bias) != (s.size,):
        raise _Skip(f"Conv bias shape {list(_dims(bias))} is not [{s.size}]")
    new_bias = t if bias is None else _array(bias) * s + t
    return _Fold(_array(weight) * _broadcast(s, len(shape), 0), new_bias)


def _fold_conv_transpose(producer: ir.Node, weight: ir.TensorProtocol, s: np.ndarray, t: np.ndarray) -> _Fold:
    group = _int_attr(producer, "group", 1)
    shape = _dims(weight)
    if len(shape) < 3 or group < 1 or shape[0] % group or shape[1] * group != s.size:
        raise _Skip(
            f"ConvTranspose weight shape {list(shape)} with group={group} does not have {s.size} output channels"
        )
    bias = _bias(producer)
    if bias is not None and _dims(bias) != (s.size,):
        raise _Skip(f"ConvTranspose bias shape {list(_dims(bias))} is not [{s.size}]")
    c_in, per_group, kernel = shape[0], shape[1], shape[2:]
    grouped = _array(weight).reshape(group, c_in // group, per_group, *kernel)
    scale = s.reshape(group, 1, per_group, *([1] * len(kernel)))
    new_bias = t if bias is None else _array(bias) * s + t
    return _Fold((grouped * scale).reshape(shape), new_bias)


def _fold_gemm(producer: ir.Node, weight: ir.TensorProtocol, s: np.ndarray, t: np.ndarray) -> _Fold:
    trans_b = _int_attr(producer, "transB", 0)
    alpha = _float_attr(producer, "alpha", 1.0)
    beta = _float_attr(producer, "beta", 1.0)
    shape = _dims(weight)
    if len(shape) != 2:
        raise _Skip(f"Gemm weight is {len(shape)}-D, not 2-D")
    n = shape[0] if trans_b else shape[1]
    if n != s.size:
        raise _Skip(f"Gemm output has {n} columns, BN has {s.size} channels")
    bias = _bias(producer)
    if bias is None:
        c = np.zeros(n)
    elif len(_dims(bias)) == 0 or (len(_dims(bias)) == 1 and _dims(bias)[0] in (1, n)):
        c = np.broadcast_to(_array(bias).reshape(-1), (n,)) * beta
    else:
        raise _Skip(f"Gemm bias C has shape {list(_dims(bias))}, not a scalar, [1] or [{n}]")
    new_weight = alpha * _array(weight) * (s[:, None] if trans_b else s[None, :])
    return _Fold(new_weight, c * s + t, drop_attributes=("alpha", "beta"))


def _fold_matmul(producer: ir.Node, weight: ir.TensorProtocol, s: np.ndarray, t: np.ndarray) -> _Fold:
    shape = _dims(weight)
    if len(shape) != 2:
        raise _Skip(f"MatMul weight is {len(shape)}-D, not 2-D")
    ranks = {len(v.shape) for v in (producer.inputs[0], producer.outputs[0]) if v is not None and v.shape is not None}
    if not ranks:
        raise _Skip("the rank of MatMul's output is unknown")
    if ranks != {2}:
        raise _Skip(f"MatMul's output has rank {max(ranks)}: BN's channel axis 1 is not its last axis")
    if shape[1] != s.size:
        raise _Skip(f"MatMul weight has {shape[1]} columns, BN has {s.size} channels")
    return _Fold(_array(weight) * s[None, :], t)


_FOLDERS: dict[str, Callable[[ir.Node, ir.TensorProtocol, np.ndarray, np.ndarray], _Fold]] = {
    "Conv": _fold_conv,
    "ConvTranspose": _fold_conv_transpose,
    "Gemm": _fold_gemm,
    "MatMul": _fold_matmul,
}


def _model_names(model: ir.Model) -> set[str]:
    """Every value name of the main graph and its subgraphs."""
    names: set[str] = set()
    for graph in model.graphs():
        names.update(v.name for v in (*graph.inputs, *graph.outputs) if v.name)
        names.update(graph.initializers)
        names.update(v.name for node in graph for v in node.outputs if v.name)
    return names


def _new_initializer(graph: ir.Graph, base: str, array: np.ndarray, names: set[str]) -> ir.Value:
    name, index = base, 1
    while name in names:
        name, index = f"{base}_{index}", index + 1
    names.add(name)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _remove_if_unused(value: ir.Value) -> None:
    """Remove an initializer that nothing uses any more (graph inputs and outputs stay)."""
    graph = value.graph
    if (
        graph is None
        or not value.is_initializer()
        or value.uses()
        or value.is_graph_input()
        or value.is_graph_output()
        or graph.initializers.get(value.name or "") is not value
    ):
        return
    del graph.initializers[value.name]


def _check_batchnorm(bn: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    """BN's per-channel scale ``s`` and shift ``t`` in float64; _Skip when it is not a foldable inference BN."""
    extra = [o for o in bn.outputs[1:] if o.name or o.uses() or o.is_graph_output()]
    if extra:
        raise _Skip(f"it has {1 + len(extra)} outputs (training form)")
    training = bn.attributes.get("training_mode")
    if training is not None and (training.is_ref() or training.as_int() != 0):
        raise _Skip("training_mode is not 0")
    spatial = bn.attributes.get("spatial")
    if spatial is not None and (spatial.is_ref() or spatial.as_int() != 1):
        raise _Skip("spatial is not 1")
    if len(bn.inputs) != 5:
        raise _Skip(f"it has {len(bn.inputs)} inputs, not 5")
    params = [
        _constant(value, what).numpy().astype(np.float64)
        for value, what in zip(bn.inputs[1:], ("scale", "B", "mean", "var"), strict=True)
    ]
    if any(p.ndim != 1 or p.shape != params[0].shape for p in params):
        raise _Skip(f"its parameters are not 1-D of one size: {[list(p.shape) for p in params]}")
    gamma, beta, mean, var = params
    eps = _float_attr(bn, "epsilon", 1e-5)
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _fold(bn: ir.Node, graph: ir.Graph, opset: int, names: set[str]) -> None:
    """Fold one BN into its producer; _Skip (nothing changed) when it does not apply."""
    x = bn.inputs[0] if bn.inputs else None
    producer = x.producer() if x is not None else None
    if x is None or producer is None:
        raise _Skip("its input is not produced by a node")
    if producer.domain not in _ONNX_DOMAINS or producer.op_type not in _FOLDERS:
        where = f"{producer.domain or 'ai.onnx'}::{producer.op_type}"
        raise _Skip(f"its input comes from {where}, not Conv/ConvTranspose/Gemm/MatMul")
    if producer.graph is not graph:
        raise _Skip(f"its producer '{producer.name}' is in another graph")
    if len(producer.outputs) != 1 or len(producer.inputs) < 2:
        raise _Skip(f"its producer '{producer.name}' is malformed")
    if x.is_graph_output():
        raise _Skip(f"the producer's output '{x.name}' is a graph output")
    if len(x.uses()) != 1:
        raise _Skip(f"the producer's output '{x.name}' has {len(x.uses())} consumers")
    if producer.op_type == "MatMul" and opset < 7:
        raise _Skip(f"MatMul would become Gemm, which needs opset >= 7 (model has {opset})")
    s, t = _check_batchnorm(bn)
    weight_value = producer.inputs[1]
    weight_tensor = _constant(weight_value, "weight")
    if weight_tensor.dtype not in _FLOAT_TYPES:
        raise _Skip(f"its weight '{weight_value.name}' has dtype {weight_tensor.dtype}")
    dtype = weight_tensor.dtype.numpy()
    fold = _FOLDERS[producer.op_type](producer, weight_tensor, s, t)

    # Everything checked: edit the graph.
    old_bias = producer.inputs[2] if len(producer.inputs) > 2 else None
    weight_base = f"{weight_value.name or producer.name or 'weight'}_bnfold"
    bias_base = f"{old_bias.name}_bnfold" if old_bias is not None and old_bias.name else f"{weight_base}_bias"
    new_weight = _new_initializer(graph, weight_base, fold.weight.astype(dtype), names)
    new_bias = _new_initializer(graph, bias_base, fold.bias.astype(dtype), names)
    bn_params = list(bn.inputs[1:])
    y = bn.outputs[0]
    y_name = y.name
    y_is_output = y.is_graph_output()
    if producer.op_type == "MatMul":
        gemm = ir.Node("", "Gemm", inputs=[producer.inputs[0], new_weight, new_bias], name=producer.name, num_outputs=1)
        graph.insert_after(producer, gemm)
        out = gemm.outputs[0]
        out.type, out.shape = x.type, x.shape
        out_name = x.name
    else:
        producer.replace_input_with(1, new_weight)
        if len(producer.inputs) < 3:
            producer.resize_inputs(3)
        producer.replace_input_with(2, new_bias)
        for attr in fold.drop_attributes:
            producer.attributes.pop(attr, None)
        out = x
        out_name = x.name
    ir.convenience.replace_all_uses_with(y, out, replace_graph_outputs=True)
    graph.remove(bn, safe=True)
    if producer.op_type == "MatMul":
        graph.remove(producer, safe=True)
    if y_is_output:
        if out.type is None:
            out.type = y.type
        if out.shape is None:
            out.shape = y.shape
        out.name = y_name
    else:
        out.name = out_name
    for value in {weight_value, old_bias, *bn_params} - {None}:
        _remove_if_unused(value)


@register_pass
class FoldBatchNormPass(OnnxpqPass):
    """Fold inference BatchNormalization into the preceding Conv, ConvTranspose, Gemm or MatMul."""

    name = "fold-batchnorm"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for function in model.functions.values():
            if any(n.op_type == "BatchNormalization" for n in ir.traversal.RecursiveGraphIterator(function)):
                logger.debug(
                    "fold-batchnorm: function '%s' left untouched (functions have no initializers)", function.name
                )
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        names = _model_names(model)
        folded = 0
        for graph in list(model.graphs()):
            for node in list(graph):
                if node.op_type != "BatchNormalization" or node.domain not in _ONNX_DOMAINS or node.graph is not graph:
                    continue
                label = node.name or f"BatchNormalization -> {node.outputs[0].name}"
                try:
                    _fold(node, graph, opset, names)
                except _Skip as skip:
                    logger.debug("fold-batchnorm: skipped '%s': %s", label, skip)
                    continue
                folded += 1
                logger.debug("fold-batchnorm: folded '%s'", label)
        return ir.passes.PassResult(model, folded > 0)
