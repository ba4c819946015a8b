"""``matmul-nbits``: block-wise 2/4/8-bit weights as ``com.microsoft.MatMulNBits`` for large MatMuls on CPU.

Every float ``MatMul`` whose second operand is a constant 2-D weight
``W [K, N]`` with at least ``min_params`` elements becomes::

    Y = com.microsoft.MatMulNBits(A, B, scales[, zero_points])   K, N, bits, block_size, accuracy_level

Layout (onnxruntime's contrib-op schema; checked here against a numpy
dequantization and against ``onnxruntime.quantization.matmul_nbits_quantizer``):

* the weight is stored **transposed**: row ``n`` of ``B`` holds column ``n`` of
  ``W``, cut along K into ``k_blocks = ceil(K / block_size)`` blocks;
* ``B`` is uint8 ``[N, k_blocks, block_size · bits / 8]``; within a block,
  values are packed ``8 / bits`` per byte, the first in the lowest bits
  (4-bit: element ``2i`` in the low nibble, ``2i + 1`` in the high nibble);
* ``scales`` is ``[N, k_blocks]``, the weight's float type;
* ``zero_points`` (asymmetric only) is uint8 ``[N, ceil(k_blocks · bits / 8)]``,
  packed the same way along the blocks; absent, it is ``2^(bits−1)``
  (8 at 4 bits), so symmetric values are stored as ``q + 2^(bits−1)``;
* when K is not a multiple of ``block_size`` the last block is padded (with
  the zero point: the padding dequantizes to 0; onnxruntime ignores it).

Dequantization: ``W[k, n] = scales[n, b] · (q[n, k] − z[n, b])``, ``b = k // block_size``.

Quantization of one block x (``m = 2^(bits−1)``):

* symmetric (default): the element of largest magnitude ``e`` (keeping its
  sign) maps to ``−m``: ``s = e / −m`` (a *negative* scale when ``e > 0``), and
  ``q = clip(round(x / s), −m, m − 1)``. This is MLAS's (onnxruntime's own
  quantizer's) convention: it uses all ``2^bits`` levels and on Gaussian
  blocks of 128 its error is ~12% below ``s = max|x| / (m − 1)`` and within 1%
  of an MSE-optimal clip;
* asymmetric: ``[lo, hi]`` widened to contain 0, ``s = (hi − lo) / (2^bits − 1)``,
  ``z = clip(round(−lo / s), 0, 2^bits − 1)``, ``q = clip(round(x / s) + z, 0, 2^bits − 1)``.

``accuracy_level`` says how onnxruntime may compute with A: 0 (unset) and 1
run float32 math on the dequantized weight; 4 quantizes A to int8 per block
and runs integer dot products. Measured here (onnxruntime 1.32, one thread,
``[8, 128, 768] @ [768, 3072]``, 4-bit, block 128): level 4 is 0.63x the fp32
MatMul's time, level 0 0.99x — **the default level 0 is no faster (and on
other shapes slower) than fp32**, so this pass defaults to 4. Level 4 adds
the activation's int8 rounding (~0.5% relative) to the weight error.

Streaming: weights are processed one at a time, each read in chunks of whole
blocks (contiguous rows of its memory-mapped tensor), packed into a new
in-memory tensor; the float array is let go and an external tensor's memory
map is released before the next weight. The pass's own memory stays near
``chunk + packed output`` however large the model.

A model that already contains quantization nodes is left unchanged with a
WARNING — except ``DynamicQuantizeMatMul`` nodes, so that ``quantize-dynamic``
may have handled other MatMuls (run ``matmul-nbits`` first to give the large
weights 4 bits and the rest int8). Left in float with a DEBUG log: weights that
are graph inputs, not 2-D or not float32/float16, smaller than ``min_params``,
activation × activation products, excluded nodes, nodes in
subgraphs or model-local functions.

Own implementation: ``onnxruntime.quantization.matmul_nbits_quantizer`` loads
and rewrites the whole protobuf model in memory; it is used only as a
cross-check in the tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.qdq import NameAllocator, add_initializer

__all__ = ["MatMulNBitsPass", "PackedWeight", "pack_matmul_nbits", "dequantize_matmul_nbits", "SUPPORTED_BITS"]

logger = logging.getLogger(__name__)

#: Bit-widths onnxruntime's CPU MatMulNBits kernel runs.
SUPPORTED_BITS = (2, 4, 8)

_MS_DOMAIN = "com.microsoft"
_KERNEL = "MatMulNBits"
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
#: Quantization ops whose presence means "already quantized" (DynamicQuantizeMatMul is tolerated, see the module doc).
_QUANTIZATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QGemm", "MatMulNBits", "MatMulIntegerToFloat", "QAttention",
})
#: Weight elements read per chunk (at least one block-row); bounds the pass's memory.
_CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class PackedWeight:
    """The MatMulNBits form of one weight, with its quantization error."""

    packed: np.ndarray  # uint8 [N, k_blocks, blob_size]
    scales: np.ndarray  # float [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks * bits / 8)], None when symmetric
    k: int
    n: int
    signal: float  # sum of x^2
    noise: float  # sum of (x - x_hat)^2

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return float("inf")
        return 10.0 * float(np.log10(self.signal / self.noise)) if self.signal > 0 else float("-inf")


def _pack_last_axis(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit values along the last axis, ``8 / bits`` per byte, first value in the lowest bits."""
    per_byte = 8 // bits
    if per_byte == 1:
        return q.astype(np.uint8)
    grouped = q.astype(np.uint8).reshape(*q.shape[:-1], q.shape[-1] // per_byte, per_byte)
    out = np.zeros(grouped.shape[:-1], dtype=np.uint8)
    for j in range(per_byte):
        out |= grouped[..., j] << np.uint8(bits * j)
    return out


def _unpack_last_axis(packed: np.ndarray, bits: int) -> np.ndarray:
    per_byte = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    parts = [(packed >> np.uint8(bits * j)) & mask for j in range(per_byte)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)


def _quantize_blocks(
    blocks: np.ndarray, bits: int, symmetric: bool, scale_type: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize float32 blocks ``[..., block_size]``; returns (unsigned q, scales, zero points), all per block."""
    levels = (1 << bits) - 1
    mid = 1 << (bits - 1)
    hi = blocks.max(axis=-1)
    lo = blocks.min(axis=-1)
    if symmetric:
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = (extreme / np.float32(-mid)).astype(scale_type).astype(np.float32)
        zero = np.full(scale.shape, mid, dtype=np.float32)
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = ((hi - lo) / np.float32(levels)).astype(scale_type).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.where(scale != 0, np.clip(np.round(-lo / scale), 0, levels), 0).astype(np.float32)
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
    q = np.round(blocks * reciprocal[..., None]) + zero[..., None]
    np.clip(q, 0, levels, out=q)
    return q.astype(np.uint8), scale, zero.astype(np.uint8)


def pack_matmul_nbits(
    weight: np.ndarray, *, bits: int = 4, block_size: int = 128, symmetric: bool = True
) -> PackedWeight:
    """Quantize and pack a ``[K, N]`` weight for MatMulNBits (see the module doc for the layout).

    ``weight`` may be a memory map: it is read in chunks of whole blocks
    (contiguous rows), so memory stays near one chunk plus the packed result.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight [K, N], got shape {weight.shape}")
    k, n = (int(d) for d in weight.shape)
    scale_type = np.dtype(np.float16) if weight.dtype == np.float16 else np.dtype(np.float32)
    k_blocks = -(-k // block_size)
    blob = block_size * bits // 8
    packed = np.empty((n, k_blocks, blob), dtype=np.uint8)
    scales = np.empty((n, k_blocks), dtype=scale_type)
    zeros = np.empty((n, k_blocks), dtype=np.uint8)
    signal = noise = 0.0
    block_rows = max(1, _CHUNK_ELEMENTS // (block_size * n))  # blocks along K per chunk
    cols = min(n, max(1, _CHUNK_ELEMENTS // (block_rows * block_size)))
    for b0 in range(0, k_blocks, block_rows):
        b1 = min(b0 + block_rows, k_blocks)
        k0, k1 = b0 * block_size, min(b1 * block_size, k)
        for n0 in range(0, n, cols):
            n1 = min(n0 + cols, n)
            chunk = np.zeros((n1 - n0, (b1 - b0) * block_size), dtype=np.float32)
            chunk[:, : k1 - k0] = weight[k0:k1, n0:n1].T  # padding stays 0
            blocks = chunk.reshape(n1 - n0, b1 - b0, block_size)
            q, scale, zero = _quantize_blocks(blocks, bits, symmetric, scale_type)  # padding: q = z, i.e. 0
            packed[n0:n1, b0:b1] = _pack_last_axis(q, bits)
            scales[n0:n1, b0:b1] = scale
            zeros[n0:n1, b0:b1] = zero
            restored = (q.astype(np.float32) - zero[..., None]) * scale[..., None]
            signal += float(np.sum(np.square(chunk, dtype=np.float64)))
            noise += float(np.sum(np.square(blocks - restored, dtype=np.float64)))
            del chunk, blocks, q, restored
    zero_points = None
    if not symmetric:
        per_byte = 8 // bits
        padded = np.zeros((n, -(-k_blocks // per_byte) * per_byte), dtype=np.uint8)
        padded[:, :k_blocks] = zeros
        zero_points = _pack_last_axis(padded, bits)
    return PackedWeight(packed, scales, zero_points, k, n, signal, noise)


def dequantize_matmul_nbits(
    packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    *,
    k: int,
    bits: int,
    block_size: int,
) -> np.ndarray:
    """The float32 ``[K, N]`` weight a MatMulNBits node's inputs stand for (numpy reference of the kernel)."""
    n, k_blocks, _ = packed.shape
    q = _unpack_last_axis(packed, bits).astype(np.float32)  # [N, k_blocks, block_size]
    if zero_points is None:
        zero = np.full((n, k_blocks), 1 << (bits - 1), dtype=np.float32)
    else:
        zero = _unpack_last_axis(zero_points, bits)[:, :k_blocks].astype(np.float32)
    scale = np.asarray(scales, dtype=np.float32).reshape(n, k_blocks)
    w = (q - zero[..., None]) * scale[..., None]
    return np.ascontiguousarray(w.reshape(n, k_blocks * block_size)[:, :k].T)


def _node_labels(graph: ir.Graph) -> dict[ir.Node, str]:
    """Node names; an unnamed node is labelled ``<op>_<index>`` (the names quantize-static gives them)."""
    names = NameAllocator(graph)
    return {node: node.name or names(f"{node.op_type}_{index}") for index, node in enumerate(graph)}


def _existing_quantization(graph: ir.Graph) -> str | None:
    for node in graph.all_nodes():
        if node.domain in ("", "ai.onnx", _MS_DOMAIN) and node.op_type in _QUANTIZATION_OPS:
            return node.op_type
    return None


def _release(tensor: ir.TensorProtocol | None) -> None:
    """Close an external tensor's memory map (it maps again on the next read)."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # a view is still alive somewhere; the map goes when it does
            logger.debug("could not release the memory map of '%s' yet", tensor.name)


@register_pass
class MatMulNBitsPass(OnnxpqPass):
    """Block-wise 4-bit (2/8) weights for large MatMuls as com.microsoft.MatMulNBits (int8 compute at accuracy_level 4), cpu."""

    name = "matmul-nbits"
    exact = False

    def __init__(
        self,
        bits: int = 4,
        *,
        block_size: int = 128,
        accuracy_level: int = 4,
        symmetric: bool = True,
        min_params: int = 65536,
        exclude_nodes: tuple[str, ...] = (),
    ) -> None:
        if bits not in SUPPORTED_BITS:
            raise PipelineError(f"matmul-nbits: bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits}")
        if block_size < 16 or block_size & (block_size - 1):
            raise PipelineError(f"matmul-nbits: block_size must be a power of two >= 16, got {block_size}")
        if not 0 <= accuracy_level <= 4:
            raise PipelineError(
                f"matmul-nbits: accuracy_level must be in 0..4 (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8), got {accuracy_level}"
            )
        if min_params < 0:
            raise PipelineError(f"matmul-nbits: min_params must be >= 0, got {min_params}")
        self.bits = bits
        self.block_size = block_size
        self.accuracy_level = accuracy_level
        self.symmetric = symmetric
        self.min_params = min_params
        self.exclude_nodes = tuple(exclude_nodes)

    def _skip_reason(self, graph: ir.Graph, node: ir.Node) -> str | None:
        inputs = list(node.inputs)
        if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
            return "missing inputs"
        a, w = inputs
        if a.const_value is not None:
            return "first input is a constant (constant folding's job)"
        if w.const_value is None:
            return "activation x activation product"
        if w.is_graph_input() or graph.initializers.get(w.name) is not w:
            return "weight is a graph input or not an initializer of this graph"
        tensor = w.const_value
        if tensor.dtype not in _FLOATS:
            return f"weight type {tensor.dtype} (float32/float16 only)"
        if a.dtype is not None and a.dtype != tensor.dtype:
            return f"activation type {a.dtype} differs from weight type {tensor.dtype}"
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) != 2:
            return f"weight is not 2-D (shape {shape})"
        if shape[0] * shape[1] < self.min_params:
            return f"weight has {shape[0] * shape[1]} < min_params={self.min_params} elements"
        return None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        existing = _existing_quantization(graph)
        if existing is not None:
            logger.warning("matmul-nbits: the model already contains %s nodes; left unchanged", existing)
            ctx.note("skipped", f"already quantized ({existing} present)")
            return ir.passes.PassResult(model, False)
        labels = _node_labels(graph)
        jobs: list[tuple[ir.Node, str]] = []
        skipped: dict[str, str] = {}
        for node in graph:
            if node.domain not in ("", "ai.onnx") or node.op_type != "MatMul":
                continue
            label = labels[node]
            reason = "excluded by name" if label in self.exclude_nodes else self._skip_reason(graph, node)
            if reason is None:
                jobs.append((node, label))
            else:
                logger.debug("matmul-nbits: '%s' left in float: %s", label, reason)
                skipped[label] = reason
        for sub in graph.subgraphs():
            for node in sub:
                if node.op_type == "MatMul":
                    logger.debug("matmul-nbits: '%s' left in float: inside a subgraph", node.name)
                    skipped[node.name or "MatMul in a subgraph"] = "inside a subgraph (not handled)"
        for function in model.functions.values():
            if any(n.op_type == "MatMul" for n in function):
                logger.debug("matmul-nbits: function '%s' left in float: functions are not handled", function.name)
                skipped[f"function {function.name}"] = "inside a model-local function (not handled)"
        ctx.note("left_float", skipped)
        if not jobs:
            ctx.note("quantized_nodes", 0)
            logger.info("matmul-nbits: no MatMul with a constant weight of >= %d elements", self.min_params)
            return ir.passes.PassResult(model, False)

        names = NameAllocator(graph)
        done: dict[ir.Value, tuple[ir.Value, ir.Value, ir.Value | None, int, int, float]] = {}
        sqnr: dict[str, float] = {}
        for node, label in jobs:
            weight = node.inputs[1]
            if weight not in done:  # one weight at a time; a shared weight is packed once
                tensor = weight.const_value
                array = tensor.numpy()
                result = pack_matmul_nbits(array, bits=self.bits, block_size=self.block_size, symmetric=self.symmetric)
                del array
                _release(tensor)
                b_value = add_initializer(graph, names, f"{weight.name}_q{self.bits}", result.packed)
                s_value = add_initializer(graph, names, f"{weight.name}_scales", result.scales)
                z_value = None
                if result.zero_points is not None:
                    z_value = add_initializer(graph, names, f"{weight.name}_zero_points", result.zero_points)
                done[weight] = (b_value, s_value, z_value, result.k, result.n, result.sqnr_db)
                del result
            b_value, s_value, z_value, k, n, db = done[weight]
            sqnr[label] = round(db, 2)
            self._rewrite(graph, node, label, b_value, s_value, z_value, k, n)
        for weight in done:
            if not weight.uses() and not weight.is_graph_output():
                graph.initializers.pop(weight.name)
        model.opset_imports.setdefault(_MS_DOMAIN, 1)
        ctx.note("quantized_nodes", len(jobs))
        ctx.note("quantized_node_names", [label for _, label in jobs])
        ctx.note("kernel", f"{_MS_DOMAIN}.{_KERNEL}")
        ctx.note(
            "weights",
            f"{self.bits}-bit {'symmetric' if self.symmetric else 'asymmetric'} blocks of {self.block_size} along K, "
            f"accuracy_level {self.accuracy_level}",
        )
        ctx.note("weight_sqnr_db", sqnr)
        logger.info("matmul-nbits: %d MatMuls -> %s, %d left in float", len(jobs), _KERNEL, len(skipped))
        return ir.passes.PassResult(model, True)

    def _rewrite(
        self,
        graph: ir.Graph,
        node: ir.Node,
        label: str,
        b_value: ir.Value,
        s_value: ir.Value,
        z_value: ir.Value | None,
        k: int,
        n: int,
    ) -> None:
        old_out = node.outputs[0]
        inputs: list[ir.Value | None] = [node.inputs[0], b_value, s_value]
        if z_value is not None:
            inputs.append(z_value)
        out = ir.Value(name=old_out.name, shape=old_out.shape, type=old_out.type)
        new = ir.node(
            _KERNEL,
            inputs,
            domain=_MS_DOMAIN,
            attributes={
                "K": k,
                "N": n,
                "bits": self.bits,
                "block_size": self.block_size,
                "accuracy_level": self.accuracy_level,
            },
            outputs=[out],
            name=label,
        )
        ir.convenience.replace_nodes_and_values(graph, node, [node], [new], [old_out], [out])
