"""``quantize-dynamic``: int8 weights, activations quantized at run time, for MatMul/Gemm-dominated graphs on CPU.

Every float ``MatMul`` / ``Gemm`` whose second operand is a constant 2-D
weight initializer ``W [K, N]`` becomes one onnxruntime contrib node::

    Y = com.microsoft.DynamicQuantizeMatMul(A, W_q, s_w[, , bias])

with ``W_q`` int8, symmetric (zero point 0, narrow grid [−127, 127]) and one
scale per output column (``s_w[n] = max_k |W[k, n]| / 127``, or the
MSE-optimal clip with ``weight_clip="mse"``; one scalar with
``per_channel=False``). At run time onnxruntime quantizes ``A`` per tensor to
uint8 (``s_a = (max(A, 0) − min(A, 0)) / 255``, ``z_a = round(−min / s_a)``),
runs the u8·s8 integer GEMM (AVX-512 VNNI here) and rescales::

    Y[m, n] = s_a · s_w[n] · Σ_k (A_q[m, k] − z_a) · W_q[k, n] + bias[n]

Gemm: ``transB=1`` weights ``[N, K]`` are stored transposed as ``[K, N]``;
``alpha`` is folded into the scales (``s_w · alpha``); the bias ``beta · C``
stays float: a ``[N]``/``[1, N]``/scalar constant ``C`` goes to the node's
``bias`` input, any other ``C`` (``[M, N]``, or an activation with
``beta = 1``) is added by a float ``Add`` after the node. ``transA=1`` and a
non-constant ``C`` with ``beta ≠ 1`` are left in float with a DEBUG log.

Why this node and not a QDQ pattern (measured here, onnxruntime 1.32, one
thread, ``[8, 128, 768] @ [768, 3072]`` + bias, 41 interleaved runs, median):

======================================================  =========  ==========================================
form written                                             vs fp32    what onnxruntime runs
======================================================  =========  ==========================================
``DynamicQuantizeMatMul`` (this pass)                     0.27x      itself, at every optimization level
``DynamicQuantizeLinear → MatMulInteger → Cast → Mul``    0.27x      fused to DynamicQuantizeMatMul (EXTENDED+);
                                                                     unfused 0.61x at BASIC, 1.4x *slower* with
                                                                     optimizations off
``DynamicQuantizeLinear → DQ``, ``DQ(W) → MatMul → Add``  0.29x      fused, but the bias Add stays separate;
                                                                     1.4x *slower* than fp32 below EXTENDED
``DQ(W) → MatMul`` (weight-only int8)                     0.73x      MatMulNBits with 8-bit weights
======================================================  =========  ==========================================

Writing the fused node directly is as fast as the best fusion, carries the
bias for free, and does not depend on the session's optimization level. The
price: the model needs onnxruntime (the ``com.microsoft`` domain, opset 1, is
imported), which is the cpu target's runtime anyway.

Never Conv: ``ConvInteger`` runs 3–4x *slower* than float Conv on CPU; Conv
nodes are left in float with a DEBUG log and listed in the pass details
(``conv_left_float``); use ``quantize-static`` for CNNs. Left in float too,
with a DEBUG log: activation × activation MatMuls (attention scores and
context), weights that are graph inputs, not 2-D or not float32, weights with
fewer than ``min_params`` elements, excluded nodes, and nodes inside
subgraphs (If/Loop/Scan) or model-local functions.

Nodes already quantized by another pass are not touched: their weights come
through a DequantizeLinear (or they are MatMulNBits / integer kernels), not
from a float initializer. So ``quantize-static`` can take the Convs of a model
and this pass the MatMuls left in float (the cpu target's pipeline), and
``matmul-nbits`` can take the large MatMuls first. A second run finds nothing
left and reports ``modified=False``.

Weights are streamed: one weight at a time, read in column chunks from its
(memory-mapped) tensor; the float array is let go before the next weight and
an external tensor's mapping is released.

Own implementation, not ``onnxruntime.quantization.quantize_dynamic``: that
tool loads the whole model through protobuf (3–5x the model size in memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.affine import quantize, quantize_weight, symmetric_grid, symmetric_scale
from onnxpq.passes.quantize.qdq import NameAllocator, add_initializer

__all__ = ["QuantizeDynamicPass", "SUPPORTED_OP_TYPES", "quantize_int8_weight"]

logger = logging.getLogger(__name__)

#: Op types this pass can rewrite.
SUPPORTED_OP_TYPES = ("MatMul", "Gemm")

_MS_DOMAIN = "com.microsoft"
_KERNEL = "DynamicQuantizeMatMul"
#: Quantization ops whose presence means "already quantized" (MatMulNBits is tolerated, see the module doc).
_QUANTIZATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
})
#: Elements of float64 work per chunk while quantizing a weight (bounds the pass's memory).
_CHUNK_ELEMENTS = 1 << 16


@dataclass
class _Job:
    """One node to rewrite and how."""

    node: ir.Node
    label: str
    weight: ir.Value
    transposed: bool  # the initializer is [N, K] (Gemm transB=1)
    alpha: float
    bias: np.ndarray | None  # float [N], goes to the node's bias input
    add_after: ir.Value | None  # float tensor added after the node (Gemm C that is not a row vector)
    add_scale: float  # beta for add_after (1.0 or the factor to bake into a new constant)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return float(attr.value) if attr is not None else default


def _node_labels(graph: ir.Graph) -> dict[ir.Node, str]:
    """Node names; an unnamed node is labelled ``<op>_<index>`` (the names quantize-static gives them)."""
    names = NameAllocator(graph)
    return {node: node.name or names(f"{node.op_type}_{index}") for index, node in enumerate(graph)}


def _constant_weight(graph: ir.Graph, value: ir.Value | None) -> ir.Value | None:
    """``value`` when it is an initializer of ``graph`` (not an overridable graph input)."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    if graph.initializers.get(value.name) is not value:
        return None
    return value


def _shape_of(value: ir.Value) -> tuple[int, ...] | None:
    """Static dims of a constant, from the tensor's header (no data read)."""
    tensor = value.const_value
    if tensor is None:
        return None
    return tuple(int(d) for d in tensor.shape)


def _release(tensor: ir.TensorProtocol | None) -> None:
    """Close an external tensor's memory map (it maps again on the next read)."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # a view is still alive somewhere; the map goes when it does
            logger.debug("could not release the memory map of '%s' yet", tensor.name)


def _existing_quantization(graph: ir.Graph) -> str | None:
    """The op type of a quantization node in the model (subgraphs included), MatMulNBits aside, or None."""
    for node in graph.all_nodes():
        if node.domain in ("", "ai.onnx", _MS_DOMAIN) and node.op_type in _QUANTIZATION_OPS:
            return node.op_type
    return None


def quantize_int8_weight(
    weight: np.ndarray, *, transposed: bool = False, per_channel: bool = True, clip: str = "minmax"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Symmetric int8 of a 2-D weight, per output column, streamed in column chunks.

    ``weight`` is ``[K, N]``, or ``[N, K]`` with ``transposed=True``; it may be a
    memory map, which is read one chunk at a time. Returns ``(W_q [K, N] int8,
    scale [N] or [], SQNR in dB)``.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {weight.shape}")
    n_out = weight.shape[0] if transposed else weight.shape[1]
    k_in = weight.shape[1] if transposed else weight.shape[0]
    values = np.empty((k_in, n_out), dtype=np.int8)
    signal = noise = 0.0
    step = max(1, _CHUNK_ELEMENTS // max(k_in, 1))

    def columns(start: int, stop: int) -> np.ndarray:
        """Columns [start, stop) of the [K, N] view, as float64 [K, stop - start]."""
        part = weight[start:stop, :].T if transposed else weight[:, start:stop]
        return np.asarray(part, dtype=np.float64)

    if per_channel:
        scale = np.empty(n_out, dtype=np.float64)
        for start in range(0, n_out, step):
            stop = min(start + step, n_out)
            chunk = columns(start, stop)
            quantized = quantize_weight(chunk, 8, axis=1, symmetric=True, clip=clip)
            values[:, start:stop] = quantized.values
            scale[start:stop] = quantized.scale
            signal += float(np.sum(chunk**2))
            noise += float(np.sum((chunk - quantized.dequantized()) ** 2))
    elif clip == "minmax":
        absmax = 0.0
        for start in range(0, n_out, step):
            absmax = max(absmax, float(np.max(np.abs(columns(start, min(start + step, n_out))), initial=0.0)))
        scale = symmetric_scale(absmax, 8)
        q_min, q_max = symmetric_grid(8)
        for start in range(0, n_out, step):
            stop = min(start + step, n_out)
            chunk = columns(start, stop)
            q = quantize(chunk, scale, 0, q_min, q_max)
            values[:, start:stop] = q
            signal += float(np.sum(chunk**2))
            noise += float(np.sum((chunk - q * scale) ** 2))
    else:  # per-tensor MSE clipping needs the whole tensor at once
        whole = columns(0, n_out)
        quantized = quantize_weight(whole, 8, axis=None, symmetric=True, clip=clip)
        values[:] = quantized.values
        scale = np.asarray(quantized.scale)
        signal, noise = float(np.sum(whole**2)), float(np.sum((whole - quantized.dequantized()) ** 2))
    sqnr = float("inf") if noise == 0.0 else (10.0 * np.log10(signal / noise) if signal > 0 else float("-inf"))
    return values, scale, sqnr


@register_pass
class QuantizeDynamicPass(OnnxpqPass):
    """Int8 weights and run-time quantized activations for MatMul/Gemm (com.microsoft.DynamicQuantizeMatMul), cpu."""

    name = "quantize-dynamic"
    exact = False

    def __init__(
        self,
        op_types: tuple[str, ...] = SUPPORTED_OP_TYPES,
        *,
        per_channel: bool = True,
        exclude_nodes: tuple[str, ...] = (),
        min_params: int = 0,
        weight_clip: Literal["mse", "minmax"] = "minmax",
    ) -> None:
        if "Conv" in op_types:
            raise PipelineError(
                "quantize-dynamic: Conv cannot be quantized dynamically on CPU (ConvInteger runs 3-4x slower than "
                "float Conv); use quantize-static for convolutions"
            )
        unknown = sorted(set(op_types) - set(SUPPORTED_OP_TYPES))
        if unknown:
            raise PipelineError(
                f"quantize-dynamic: cannot quantize op types {', '.join(unknown)}; supported: {', '.join(SUPPORTED_OP_TYPES)}"
            )
        if min_params < 0:
            raise PipelineError(f"quantize-dynamic: min_params must be >= 0, got {min_params}")
        if weight_clip not in ("mse", "minmax"):
            raise PipelineError(f"quantize-dynamic: weight_clip must be 'mse' or 'minmax', got {weight_clip!r}")
        self.op_types = tuple(op_types)
        self.per_channel = per_channel
        self.exclude_nodes = tuple(exclude_nodes)
        self.min_params = min_params
        self.weight_clip = weight_clip

    # ------------------------------------------------------------------ planning

    def _job(self, graph: ir.Graph, node: ir.Node, label: str) -> _Job | str:
        """The rewrite for ``node``, or why it stays float."""
        inputs = list(node.inputs)
        if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
            return "missing inputs"
        a, w = inputs[0], inputs[1]
        if a.const_value is not None:
            return "first input is a constant (constant folding's job)"
        if a.dtype is not None and a.dtype != ir.DataType.FLOAT:
            return f"input type {a.dtype} (DynamicQuantizeMatMul takes float32)"
        weight = _constant_weight(graph, w)
        if weight is None:
            if w.const_value is None:
                return "activation x activation product"
            return "weight is a graph input or not an initializer of this graph"
        if weight.const_value.dtype != ir.DataType.FLOAT:
            return f"weight type {weight.const_value.dtype} (only float32 weights)"
        shape = _shape_of(weight)
        if shape is None or len(shape) != 2:
            return f"weight is not 2-D (shape {shape})"
        if int(np.prod(shape)) < self.min_params:
            return f"weight has {int(np.prod(shape))} < min_params={self.min_params} elements"
        if node.op_type == "MatMul":  # any activation rank (1-D included): the kernel broadcasts like MatMul
            return _Job(node, label, weight, False, 1.0, None, None, 1.0)
        # Gemm: Y = alpha * A' @ B' + beta * C
        if _int_attr(node, "transA", 0):
            return "transA=1 (not supported; the activation would need a Transpose)"
        transposed = bool(_int_attr(node, "transB", 0))
        n_out = shape[0] if transposed else shape[1]
        alpha, beta = _float_attr(node, "alpha", 1.0), _float_attr(node, "beta", 1.0)
        c = inputs[2] if len(inputs) > 2 else None
        bias: np.ndarray | None = None
        add_after: ir.Value | None = None
        if c is not None and beta != 0.0:
            c_shape = _shape_of(c) if c.const_value is not None else None
            if c_shape is not None and int(np.prod(c_shape)) in (1, n_out) and (len(c_shape) < 2 or c_shape[0] == 1):
                row = np.broadcast_to(c.const_value.numpy().astype(np.float32).reshape(-1), (n_out,))
                bias = row * np.float32(beta) if beta != 1.0 else row.copy()
            elif c.const_value is not None or beta == 1.0:
                add_after = c
            else:
                return "C is an activation and beta != 1"
        return _Job(node, label, weight, transposed, alpha, bias, add_after, beta)

    def _plan(self, model: ir.Model, ctx: PassContext) -> tuple[list[_Job], dict[str, str]]:
        graph = model.graph
        labels = _node_labels(graph)
        jobs: list[_Job] = []
        skipped: dict[str, str] = {}
        conv_left: list[str] = []
        for node in graph:
            label = labels[node]
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in ("Conv", "ConvTranspose"):
                logger.debug(
                    "quantize-dynamic: '%s' (%s) left in float: dynamic int8 Conv (ConvInteger) is 3-4x slower than "
                    "float on CPU; use quantize-static", label, node.op_type,
                )
                conv_left.append(label)
                continue
            if node.op_type not in self.op_types:
                continue
            if label in self.exclude_nodes:
                reason = "excluded by name"
            else:
                job = self._job(graph, node, label)
                if isinstance(job, _Job):
                    jobs.append(job)
                    continue
                reason = job
            logger.debug("quantize-dynamic: '%s' (%s) left in float: %s", label, node.op_type, reason)
            skipped[label] = reason
        for sub in graph.subgraphs():
            for node in sub:
                if node.op_type in (*self.op_types, "Conv"):
                    logger.debug("quantize-dynamic: '%s' (%s) left in float: inside a subgraph", node.name, node.op_type)
                    skipped[node.name or f"{node.op_type} in a subgraph"] = "inside a subgraph (not handled)"
        for function in model.functions.values():
            if any(n.op_type in self.op_types for n in function):
                logger.debug("quantize-dynamic: function '%s' left in float: functions are not handled", function.name)
                skipped[f"function {function.name}"] = "inside a model-local function (not handled)"
        if conv_left:
            ctx.note("conv_left_float", conv_left)
        return jobs, skipped

    # ------------------------------------------------------------------ rewriting

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        existing = _existing_quantization(graph)
        if existing is not None:
            logger.info("quantize-dynamic: the model already contains %s nodes; quantizing the float MatMul/Gemm left", existing)
        jobs, skipped = self._plan(model, ctx)
        ctx.note("left_float", skipped)
        if not jobs:
            ctx.note("quantized_nodes", 0)
            logger.info("quantize-dynamic: nothing to quantize")
            return ir.passes.PassResult(model, False)

        names = NameAllocator(graph)
        done: dict[tuple[ir.Value, bool], tuple[ir.Value, np.ndarray, float]] = {}
        scales: dict[tuple[ir.Value, bool, float], ir.Value] = {}
        sqnr: dict[str, float] = {}
        for job in jobs:
            key = (job.weight, job.transposed)
            if key not in done:  # one weight at a time; a weight shared by several nodes is quantized once
                tensor = job.weight.const_value
                array = tensor.numpy()
                values, scale, db = quantize_int8_weight(
                    array, transposed=job.transposed, per_channel=self.per_channel, clip=self.weight_clip
                )
                del array
                _release(tensor)
                done[key] = (add_initializer(graph, names, f"{job.weight.name}_int8", values), scale, db)
            q_value, scale, db = done[key]
            sqnr[job.label] = round(db, 2)
            if (*key, job.alpha) not in scales:
                base = f"{job.weight.name}_scale" if job.alpha == 1.0 else f"{job.weight.name}_scale_alpha"
                scales[(*key, job.alpha)] = add_initializer(graph, names, base, (scale * job.alpha).astype(np.float32))
            self._rewrite(graph, names, job, q_value, scales[(*key, job.alpha)])

        for weight, _ in done:
            if not weight.uses() and not weight.is_graph_output():
                graph.initializers.pop(weight.name)
        model.opset_imports.setdefault(_MS_DOMAIN, 1)
        ctx.note("quantized_nodes", len(jobs))
        ctx.note("quantized_node_names", [job.label for job in jobs])
        ctx.note("kernel", f"{_MS_DOMAIN}.{_KERNEL}")
        ctx.note("weights", f"int8 symmetric {'per-channel' if self.per_channel else 'per-tensor'}, {self.weight_clip} clipping")
        ctx.note("weight_sqnr_db", sqnr)
        logger.info("quantize-dynamic: %d nodes -> %s, %d left in float", len(jobs), _KERNEL, len(skipped))
        return ir.passes.PassResult(model, True)

    def _rewrite(self, graph: ir.Graph, names: NameAllocator, job: _Job, q_value: ir.Value, s_value: ir.Value) -> None:
        node = job.node
        old_out = node.outputs[0]
        inputs: list[ir.Value | None] = [node.inputs[0], q_value, s_value]
        if job.bias is not None:
            bias_base = node.inputs[2].name if node.inputs[2] is not None and node.inputs[2].name else f"{job.label}_bias"
            inputs += [None, add_initializer(graph, names, f"{bias_base}_row", job.bias)]
        matmul_out = ir.Value(name=names(f"{job.label}_int8_out"), shape=old_out.shape, type=old_out.type)
        new_nodes = [
            ir.node(_KERNEL, inputs, domain=_MS_DOMAIN, outputs=[matmul_out], name=job.label),
        ]
        final = matmul_out
        if job.add_after is not None:
            addend = job.add_after
            if job.add_scale != 1.0:  # a constant C with beta != 1: bake beta * C into a new constant
                scaled = (addend.const_value.numpy().astype(np.float32) * np.float32(job.add_scale))
                addend = add_initializer(graph, names, f"{addend.name}_beta", scaled)
            final = ir.Value(name=names(f"{job.label}_biased"), shape=old_out.shape, type=old_out.type)
            new_nodes.append(ir.node("Add", [matmul_out, addend], outputs=[final], name=names(f"{job.label}_bias_add")))
        old_inputs = list(node.inputs)
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [old_out], [final])
        for value in old_inputs:
            if value is not None and value.const_value is not None and not value.uses() and value.name in graph.initializers:
                if not value.is_graph_output() and not value.is_graph_input() and value is not job.weight:
                    graph.initializers.pop(value.name)  # a Gemm C now carried by the bias input
