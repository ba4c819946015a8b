"""``quantize-weights``: weight-only n-bit quantization (2–8 bits), round-to-nearest or GPTQ.

The weight initializer ``W`` of every Conv, Gemm, MatMul (2-D weight
``[K, N]`` at input 1) and ConvTranspose is replaced by
``DequantizeLinear(W_q, s, z)`` feeding the same float op; activations stay
float. Per layer the DQ node carries ``metadata_props["onnxpq.bits"] = n``
(:func:`onnxpq.passes.quantize.qdq.dequantized_weight`), so size and
bit-operation figures (:mod:`onnxpq.analysis.macs`) count n bits.

Axes. Scales are per output channel (``per-channel``) or per block of
``block_size`` consecutive weights along the *reduction* axis within one output
channel (``per-group``, the ONNX blocked Q/DQ layout)::

    op                          output-channel axis   reduction axis (blocks)
    MatMul  W [K, N]            1                     0
    Gemm    transB=0 [K, N]     1                     0
    Gemm    transB=1 [N, K]     0                     1
    Conv    W [O, I/g, k...]    0                     1  (each kernel position has its own blocks)
    ConvTranspose [I, O/g, k..] 1                     0

Storage. 8 bits: INT8 (symmetric) / UINT8 (asymmetric); 4 bits: INT4 / UINT4
(opset ≥ 21); 2, 3, 5, 6, 7 bits: an int8 / uint8 container holding values
of the n-bit grid (:func:`onnxpq.passes.quantize.affine.quantize_weight`
clips to it). Symmetric grids: ``[−2^(n−1), 2^(n−1) − 1]`` below 8 bits,
``[−127, 127]`` at 8; asymmetric: ``[0, 2^n − 1]`` with a zero point.

Opset fallbacks (never an attribute or type the model's opset lacks; an INFO
log and a ``ctx.note("fallbacks", ...)`` say which applied): per-group needs
opset 21 (``block_size``) and falls back to per-channel; per-channel needs
opset 13 (``axis``) and falls back to per-tensor; INT4/UINT4 need opset 21,
so 4 bits fall back to an int8/uint8 container with 4-bit values and the
``onnxpq.bits`` metadata; a float16/bfloat16 weight needs opset 19 (a DQ
output of that type) and is otherwise left in float; below opset 10 there is
no DequantizeLinear and the model is left unchanged. The opset is not
upgraded here: a proto round trip through ``onnx.version_converter`` would
materialise every tensor of the model.

Round to nearest (``method=rtn``): ``q = clip(round(w / s) + z)`` with the
clip range chosen per channel or block to minimise ``Σ (w − ŵ)²``
(``clip=mse``, Kuzmin et al.) or the full range (``clip=minmax``).

GPTQ (``method=gptq``; Frantar et al., "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", ICLR 2023) minimises
the layer's *output* error on calibration inputs instead of the weight error.
W is viewed as ``[rows = output channels, columns = reduction]`` and the layer
inputs as X ``[columns, n]``, one column per input vector: a row of the
MatMul/Gemm input (a column with Gemm transA), or an im2col patch of a Conv
(one Hessian per conv group; columns ordered (kernel position, input channel)
so that every block of the blocked layout is a run of consecutive columns)::

    minimise ‖W X − Ŵ X‖²  ⇒  H = 2 X Xᵀ / n   (accumulated batch by batch, X never held whole)
    H ← H + λ I,  λ = damp · mean(diag H)          (a dead input, H[j, j] = 0, gets H[j, j] = 1 first)
    U = chol(H⁻¹)ᵀ   (upper triangular, H⁻¹ = Uᵀ U)
    for each column j in order, in blocks of ``gptq_block`` columns:
        q_j = quant(w_j)                             (the scale is fixed before rounding)
        e_j = (w_j − q_j) / U[j, j]
        W[:, j+1:] −= e_j · U[j, j+1:]               (lazy batch update: inside the block at once; the
                                                      columns after the block get E_block · U[block, after] once)

Scales: per-tensor and per-channel scales are RTN's, computed on the original
W; a per-group scale is computed when the group's first column is reached,
from the group's columns as compensated so far. For every GPTQ layer the
output error ``tr(ΔW H ΔWᵀ)`` of GPTQ and of RTN on the same calibration
Hessian are noted (as output SQNR in dB) and the smaller one is kept (GPTQ
rarely loses, e.g. with a near-diagonal H). GPTQ covers MatMul, Gemm and Conv;
ConvTranspose uses RTN (noted). Without calibration data
(``PassContext.calibration``) GPTQ falls back to RTN with a WARNING and a note.
Layer inputs come from the *float* model (all weights are quantized before the
graph changes), not from the partly quantized one as in the paper's
sequential variant. Cost: one onnxruntime run over the first ``samples``
calibration samples per group of 64 distinct layer inputs; memory: one
``columns²`` float64 Hessian per distinct layer input of the current group
(128 MiB for a 4096-wide input), dropped once its weights are quantized.

onnxruntime note (1.32, CPU, default optimisation level): DequantizeLinear →
MatMul with a constant weight is fused into ``MatMulNBits`` with
``accuracy_level`` 4, which quantizes the *activations* to int8 as well (about
1 % output error on its own); session option
``session.qdq_matmulnbits_accuracy_level = 0`` (or level BASIC) keeps the
weight-only numerics this pass defines.

Memory: round-to-nearest quantizes a weight and puts its DequantizeLinear in
place before it reads the next, so the pass holds one weight's working copies
at a time; the quantized weights go to ``PassContext.tensor_store`` when the
context has one (``optimize`` gives one to models with external data) and
are then not held in memory at all. GPTQ holds every quantized weight until
the last is done (see above).

Left untouched with a DEBUG log: nodes in subgraphs and functions, excluded
nodes, weights that are not initializers of the main graph, weights smaller
than ``min_params``, weights also read by other ops (a shared weight read
only by quantized ops at their weight input, with the same layout and bits,
is quantized once behind one DQ). A model that already has quantization nodes
is left unchanged with a WARNING — except activation Q/DQ pairs
(``quantize-activations``), which compose: the layer reads a dequantized
activation and a dequantized weight. The float initializer is removed once none
of its uses remains.

Own implementation: onnxruntime's ``matmul_nbits_quantizer`` (RTN / GPTQ via
neural-compressor) covers MatMul only, loads the whole model into protobuf,
and emits MatMulNBits, not per-layer n-bit Q/DQ.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.core.pipeline_text import parse_node_values
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.affine import (
    QuantizedTensor,
    integer_range,
    quantize,
    quantize_weight,
    quantized_sqnr_db,
    storage_dtype,
    symmetric_grid,
)
from onnxpq.passes.quantize.qdq import BITS_KEY, NameAllocator, default_opset, dequantized_weight, is_quantized_model

__all__ = ["QuantizeWeightsPass", "gptq_quantize", "WEIGHT_OP_TYPES"]

logger = logging.getLogger(__name__)

Granularity = Literal["per-tensor", "per-channel", "per-group"]
WEIGHT_OP_TYPES = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_GPTQ_OP_TYPES = ("Conv", "Gemm", "MatMul")
_FLOAT32 = (ir.DataType.FLOAT,)
_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)

#: Elements of layer input converted to float64 at once while accumulating a Hessian (bounds temporaries to 32 MiB).
_CHUNK_ELEMENTS = 1 << 22
#: Layer inputs requested from one onnxruntime session (each group of them costs one run over the calibration data).
_TENSORS_PER_RUN = 64
#: Samples per onnxruntime run while collecting layer inputs.
_BATCH_SIZE = 32
#: Damping is multiplied by 10 this many times when H + λI is not positive definite.
_DAMP_RETRIES = 6


# --------------------------------------------------------------------------- GPTQ core


def _upper_cholesky_of_inverse(hessian: np.ndarray, damp: float) -> np.ndarray:
    """U with (H + λI)⁻¹ = Uᵀ U, λ = damp · mean(diag H); λ grows ×10 while H + λI is not positive definite."""
    h = np.array(hessian, dtype=np.float64)
    diagonal = np.diag(h).copy()
    dead = diagonal <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h))) if h.size else 1.0
    lam = damp * mean
    eye = np.eye(h.shape[0])
    for attempt in range(_DAMP_RETRIES + 1):
        try:
            lower = np.linalg.cholesky(h + lam * eye)
            inverse_lower = np.linalg.inv(lower)
            h_inv = inverse_lower.T @ inverse_lower
            return np.linalg.cholesky(h_inv).T
        except np.linalg.LinAlgError:
            if attempt == _DAMP_RETRIES:
                raise
            lam = max(lam * 10.0, 1e-8 * max(mean, 1e-12))
            logger.debug("gptq: H + λI not positive definite; damping raised to λ = %g", lam)
    raise AssertionError("unreachable")


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    *,
    bits: int,
    symmetric: bool = True,
    clip: str = "mse",
    scale: np.ndarray | None = None,
    zero_point: np.ndarray | None = None,
    groups: Sequence[tuple[int, int]] | None = None,
    damp: float = 0.01,
    block: int = 128,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of ``w`` ``[rows, columns]`` given the Hessian ``[columns, columns]`` of its inputs (math in the module docstring).

    Either ``scale``/``zero_point`` (shape ``[rows]``, fixed before rounding:
    per tensor or per channel) or ``groups``: consecutive column ranges
    ``(start, stop)`` covering ``[0, columns)``, each with its own per-row
    scale computed (affine's ``quantize_weight``, ``clip`` rule) from the
    group's compensated columns when its first column is reached.

    Returns ``(q, scales, zero_points)``: ``q`` int64 ``[rows, columns]`` on
    the grid, ``scales`` float64 and ``zero_points`` int64 of shape
    ``[rows, len(groups)]`` (``[rows, 1]`` with fixed scales).
    """
    w = np.array(w, dtype=np.float64)
    rows, columns = w.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"gptq: Hessian of shape {hessian.shape} for a weight with {columns} columns")
    if (scale is None) == (groups is None):
        raise ValueError("gptq: give either fixed scales or groups")
    q_min, q_max = symmetric_grid(bits) if symmetric else integer_range(bits, False)
    upper = _upper_cholesky_of_inverse(hessian, damp)
    q = np.zeros((rows, columns), dtype=np.int64)
    if groups is not None:
        starts = {start: (index, stop) for index, (start, stop) in enumerate(groups)}
        scales = np.ones((rows, len(groups)))
        zeros = np.zeros((rows, len(groups)), dtype=np.int64)
        current_scale, current_zero = np.ones(rows), np.zeros(rows, dtype=np.int64)
    else:
        current_scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (rows,))
        current_zero = np.broadcast_to(np.asarray(zero_point, dtype=np.int64), (rows,))
        scales, zeros = current_scale.reshape(rows, 1).copy(), current_zero.reshape(rows, 1).copy()
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if groups is not None and j in starts:
                index, stop = starts[j]
                current = w1[:, i : min(stop, i2) - i1]
                if stop > i2:  # columns past the block still lack this block's pending updates
                    beyond = w[:, i2:stop] - err1[:, :i] @ upper[i1:j, i2:stop]
                    current = np.concatenate([current, beyond], axis=1)
                params = quantize_weight(current, bits, axis=0, symmetric=symmetric, clip=clip)
                current_scale, current_zero = params.scale, params.zero_point
                scales[:, index], zeros[:, index] = current_scale, current_zero
            column = w1[:, i]
            q[:, j] = quantize(column, current_scale, current_zero, q_min, q_max)
            dequantized = (q[:, j] - current_zero) * current_scale
            err = (column - dequantized) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            err1[:, i] = err
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    return q, scales, zeros


# --------------------------------------------------------------------------- layouts and layer inputs


@dataclass(frozen=True)
class _Layout:
    """Where a weight's output channels and reduction lie; ``groups`` is the Conv group count."""

    out_axis: int
    red_axis: int
    groups: int = 1


@dataclass(frozen=True)
class _InputSpec:
    """How a layer input becomes rows of X: ``matrix`` (MatMul/Gemm, ``transpose`` for Gemm transA) or ``conv`` (im2col)."""

    kind: Literal["matrix", "conv"]
    columns: int
    transpose: bool = False
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    groups: int = 1

    def conv_pads(self, spatial: Sequence[int]) -> tuple[list[int], list[int]]:
        """(begin, end) pads of every spatial axis for an input of ``spatial`` size (auto_pad resolved)."""
        rank = len(spatial)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                small = total // 2
                first = small if self.auto_pad == "SAME_UPPER" else total - small
                begin.append(first)
                end.append(total - first)
            return begin, end
        if self.auto_pad == "VALID" or not self.pads:
            return [0] * rank, [0] * rank
        return list(self.pads[:rank]), list(self.pads[rank:])


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _ints_attr(node: ir.Node, name: str, default: Sequence[int]) -> tuple[int, ...]:
    attr = node.attributes.get(name)
    return tuple(int(v) for v in attr.value) if attr is not None else tuple(default)


def _layout(node: ir.Node, shape: tuple[int, ...]) -> _Layout | str:
    """The weight's layout, or why the node's weight is not handled."""
    op, rank = node.op_type, len(shape)
    if op == "MatMul":
        return _Layout(1, 0) if rank == 2 else f"weight is {rank}-D, not [K, N]"
    if op == "Gemm":
        if rank != 2:
            return f"weight is {rank}-D"
        return _Layout(0, 1) if _int_attr(node, "transB", 0) else _Layout(1, 0)
    if op == "Conv":
        group = _int_attr(node, "group", 1)
        if rank < 3:
            return f"weight is {rank}-D"
        if group < 1 or shape[0] % group:
            return f"{shape[0]} output channels do not split into {group} groups"
        return _Layout(0, 1, group)
    if op == "ConvTranspose":
        return _Layout(1, 0) if rank >= 3 else f"weight is {rank}-D"
    return f"op type {op} is not handled"


def _input_spec(node: ir.Node, shape: tuple[int, ...], layout: _Layout) -> _InputSpec | None:
    """How the layer input of ``node`` (input 0) maps to the reduction columns; None where GPTQ does not apply."""
    op = node.op_type
    if op in ("MatMul", "Gemm"):
        return _InputSpec("matrix", shape[layout.red_axis], transpose=op == "Gemm" and bool(_int_attr(node, "transA", 0)))
    if op == "Conv":
        kernel = tuple(shape[2:])
        rank = len(kernel)
        return _InputSpec(
            "conv",
            math.prod(kernel) * shape[1],
            kernel=kernel,
            strides=_ints_attr(node, "strides", [1] * rank),
            pads=_ints_attr(node, "pads", [0] * (2 * rank)),
            dilations=_ints_attr(node, "dilations", [1] * rank),
            auto_pad=str(node.attributes["auto_pad"].value) if "auto_pad" in node.attributes else "NOTSET",
            groups=layout.groups,
        )
    return None


def _matrix_rows(x: np.ndarray, spec: _InputSpec) -> Iterator[np.ndarray]:
    """Rows of X for a MatMul/Gemm input: x reshaped to [-1, K] (Gemm transA: xᵀ), in float64 chunks."""
    if spec.transpose:
        x = x.T
    if x.shape[-1] != spec.columns:
        raise PipelineError(f"quantize-weights: layer input of shape {x.shape} does not match a reduction of {spec.columns}")
    flat = x.reshape(-1, spec.columns)
    step = max(1, _CHUNK_ELEMENTS // max(1, spec.columns))
    for start in range(0, flat.shape[0], step):
        yield flat[start : start + step].astype(np.float64)


def _conv_rows(x: np.ndarray, spec: _InputSpec) -> Iterator[tuple[int, np.ndarray]]:
    """(conv group, rows of X) for a Conv input: im2col patches, columns ordered (kernel position, channel), float64 chunks."""
    rank = len(spec.kernel)
    if x.ndim != rank + 2:
        raise PipelineError(f"quantize-weights: Conv input of shape {x.shape} for a {rank}-D kernel")
    channels = x.shape[1]
    per_group = channels // spec.groups
    if per_group * spec.groups != channels or per_group * math.prod(spec.kernel) != spec.columns:
        raise PipelineError(f"quantize-weights: Conv input with {channels} channels does not match its weight")
    begin, end = spec.conv_pads(x.shape[2:])
    padded = np.pad(x, [(0, 0), (0, 0), *zip(begin, end)])
    extents = [(k - 1) * d + 1 for k, d in zip(spec.kernel, spec.dilations)]
    spatial_axes = tuple(range(2, 2 + rank))
    windows = np.lib.stride_tricks.sliding_window_view(padded, extents, axis=spatial_axes)
    index = (slice(None), slice(None), *(slice(None, None, s) for s in spec.strides), *(slice(None, None, d) for d in spec.dilations))
    windows = windows[index]  # [N, C, *out, *kernel]
    windows = windows.transpose(0, *range(2, 2 + 2 * rank), 1)  # [N, *out, *kernel, C]
    out = windows.shape[1 : 1 + rank]
    if 0 in out:
        return
    per_step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(out[1:]) * spec.columns))
    for sample in windows:
        for group in range(spec.groups):
            patches = sample[..., group * per_group : (group + 1) * per_group]
            for start in range(0, out[0], per_step):
                yield group, patches[start : start + per_step].reshape(-1, spec.columns).astype(np.float64)


class _HessianSum:
    """Σ x xᵀ over the rows of one layer input (one per conv group) and the row count."""

    def __init__(self, spec: _InputSpec) -> None:
        self.spec = spec
        self.sums = [np.zeros((spec.columns, spec.columns)) for _ in range(spec.groups)]
        self.rows = 0

    def add(self, x: np.ndarray) -> None:
        if not np.all(np.isfinite(x)):
            raise PipelineError("quantize-weights: a layer input takes NaN or infinite values on the calibration data")
        if self.spec.kind == "matrix":
            for rows in _matrix_rows(x, self.spec):
                self.sums[0] += rows.T @ rows
                self.rows += rows.shape[0]
            return
        counted = 0
        for group, rows in _conv_rows(x, self.spec):
            self.sums[group] += rows.T @ rows
            if group == 0:
                counted += rows.shape[0]
        self.rows += counted

    def hessians(self) -> list[np.ndarray]:
        """H = 2 Σ x xᵀ / n per conv group."""
        n = max(self.rows, 1)
        return [2.0 * s / n for s in self.sums]


def _stream_layer_inputs(model: ir.Model, values: list[ir.Value], data: Mapping[str, np.ndarray]) -> Iterator[list[np.ndarray]]:
    """Batches of ``values`` from the float model run in onnxruntime over ``data`` (one batch held at a time).

    Reuses the calibration module's session builder (initializers handed over
    without copies, only the needed nodes kept) and its batching.
    """
    from onnxpq.passes.quantize.calibration import _BatchPlan, _folder_of_serialised_external_tensors, _Runner

    runner = _Runner.build(model, values, _folder_of_serialised_external_tensors(model))
    plan = _BatchPlan.build(runner.session, data, _BATCH_SIZE)
    yield from runner.run(plan, data, [v.name for v in values])


# --------------------------------------------------------------------------- the pass


@dataclass
class _Job:
    """One weight initializer to quantize, with the nodes reading it at their weight input."""

    weight: ir.Value
    nodes: list[ir.Node]
    layout: _Layout
    bits: int
    input_keys: list[tuple[str, _InputSpec] | None] = field(default_factory=list)


def _display_names(graph: ir.Graph) -> dict[ir.Node, str]:
    """Node names; an unnamed node gets ``<op_type>_<index>`` (the name quantize-static gives it), unique in the graph."""
    names = NameAllocator(graph)
    return {node: node.name or names(f"{node.op_type}_{index}") for index, node in enumerate(graph)}


def _parse_bits_per_node(items: Sequence[str]) -> dict[str, int]:
    return parse_node_values(
        items, where="quantize-weights: bits_per_node", kind=int, check=lambda b: 2 <= b <= 8, expected="bits in 2..8", form="name:bits"
    )


def _rounded_db(value: float) -> float | None:
    """A dB figure for the report: 2 decimals; None when infinite (no error at all)."""
    return round(value, 2) if math.isfinite(value) else None


def _check_choice(option: str, value: object, annotation: object) -> None:
    choices = get_args(annotation)
    if value not in choices:
        raise PipelineError(f"quantize-weights: {option} must be one of {', '.join(map(str, choices))}; got {value!r}")


@register_pass
class QuantizeWeightsPass(OnnxpqPass):
    """Weight-only n-bit quantization (2–8 bits) of Conv/Gemm/MatMul/ConvTranspose weights as DequantizeLinear, RTN or GPTQ."""

    name = "quantize-weights"
    exact = False

    def __init__(
        self,
        bits: int = 8,
        *,
        granularity: Granularity = "per-channel",
        block_size: int = 128,
        symmetric: bool = True,
        clip: Literal["mse", "minmax"] = "mse",
        method: Literal["rtn", "gptq"] = "rtn",
        bits_per_node: tuple[str, ...] = (),
        exclude_nodes: tuple[str, ...] = (),
        min_params: int = 0,
        damp: float = 0.01,
        gptq_block: int = 128,
        samples: int = 256,
        op_types: tuple[str, ...] = WEIGHT_OP_TYPES,
    ) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
            raise PipelineError(f"quantize-weights: bits must be an integer in 2..8, got {bits!r}")
        _check_choice("granularity", granularity, Granularity)
        _check_choice("clip", clip, Literal["mse", "minmax"])
        _check_choice("method", method, Literal["rtn", "gptq"])
        if block_size < 2:
            raise PipelineError(f"quantize-weights: block_size must be >= 2, got {block_size}")
        if min_params < 0:
            raise PipelineError(f"quantize-weights: min_params must be >= 0, got {min_params}")
        if not (damp >= 0.0 and math.isfinite(damp)):
            raise PipelineError(f"quantize-weights: damp must be a finite number >= 0, got {damp}")
        if gptq_block < 1:
            raise PipelineError(f"quantize-weights: gptq_block must be >= 1, got {gptq_block}")
        if samples < 1:
            raise PipelineError(f"quantize-weights: samples must be >= 1, got {samples}")
        unknown = sorted(set(op_types) - set(WEIGHT_OP_TYPES))
        if unknown:
            raise PipelineError(
                f"quantize-weights: cannot quantize the weights of {', '.join(unknown)}; supported: {', '.join(WEIGHT_OP_TYPES)}"
            )
        self._bits_by_node = _parse_bits_per_node(bits_per_node)
        self.bits = int(bits)
        self.granularity = granularity
        self.block_size = block_size
        self.symmetric = symmetric
        self.clip = clip
        self.method = method
        self.bits_per_node = tuple(bits_per_node)
        self.exclude_nodes = tuple(exclude_nodes)
        self.min_params = min_params
        self.damp = float(damp)
        self.gptq_block = gptq_block
        self.samples = samples
        self.op_types = tuple(op_types)

    # ------------------------------------------------------------------ planning

    def _plan(self, graph: ir.Graph, opset: int, names: dict[ir.Node, str]) -> tuple[list[_Job], int]:
        """The weights to quantize, in graph order, and how many candidate nodes were skipped."""
        order = {node: index for index, node in enumerate(graph)}
        wanted: dict[ir.Node, tuple[_Layout, int]] = {}
        excluded: set[ir.Node] = set()  # their weight input stays float, beside a DQ that other readers may get
        skipped = 0
        for node in graph:
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                logger.debug("quantize-weights: the subgraphs of '%s' (%s) are left untouched", names[node], node.op_type)
            if node.domain not in ("", "ai.onnx") or node.op_type not in self.op_types:
                continue
            name = names[node]
            if name in self.exclude_nodes:
                logger.debug("quantize-weights: '%s' (%s) excluded by name", name, node.op_type)
                excluded.add(node)
                skipped += 1
                continue
            reason = self._skip_reason(node, opset)
            layout = reason or _layout(node, tuple(node.inputs[1].const_value.shape))
            if isinstance(layout, str):
                logger.debug("quantize-weights: '%s' (%s) skipped: %s", name, node.op_type, layout)
                skipped += 1
                continue
            wanted[node] = (layout, self._bits_by_node.get(name, self.bits))
        jobs: list[_Job] = []
        seen: set[ir.Value] = set()
        for node, (layout, bits) in wanted.items():
            weight = node.inputs[1]
            if weight in seen:
                continue
            seen.add(weight)
            uses = [(use.node, use.idx) for use in weight.uses()]
            readers = [n for n, idx in uses if n in wanted and idx == 1]
            foreign = [n for n, idx in uses if not ((n in wanted or n in excluded) and idx == 1)]
            reason = None
            if weight.is_graph_output():
                reason = "it is also a graph output"
            elif foreign:
                reason = f"it is also read by {', '.join(sorted({f'{n.op_type} ' + repr(names.get(n, n.name)) for n in foreign}))}"
            elif len({wanted[n][0] for n in readers}) > 1:
                reason = "its readers disagree on its layout"
            elif len({wanted[n][1] for n in readers}) > 1:
                reason = "its readers are given different bit-widths"
            if reason is not None:
                logger.debug("quantize-weights: weight '%s' left in float: %s", weight.name, reason)
                skipped += len(readers)
                continue
            jobs.append(_Job(weight, sorted(readers, key=order.__getitem__), layout, bits))
        return jobs, skipped

    def _skip_reason(self, node: ir.Node, opset: int) -> str | None:
        """Why the weight of a candidate node cannot be quantized, or None."""
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return "no weight input"
        weight = node.inputs[1]
        graph = node.graph
        if weight.const_value is None or graph is None or graph.initializers.get(weight.name) is not weight or weight.is_graph_input():
            return "weight is not an initializer of the main graph"
        dtype = weight.const_value.dtype
        if dtype not in (*_FLOAT32, *_HALF):
            return f"weight type {dtype} is not float32, float16 or bfloat16"
        if dtype in _HALF and opset < 19:
            return f"a {dtype} DequantizeLinear output needs opset 19 (model has {opset})"
        size = math.prod(weight.const_value.shape)
        if size == 0 or size < self.min_params:
            return f"weight has {size} parameters (min_params={self.min_params})"
        return None

    def _storage(self, opset: int, jobs: list[_Job], ctx: PassContext) -> tuple[Granularity, bool]:
        """Effective granularity and whether INT4/UINT4 may be used, for the model's opset (fallbacks noted)."""
        granularity: Granularity = self.granularity
        fallbacks: list[str] = []
        if granularity == "per-group" and opset < 21:
            granularity = "per-channel"
            fallbacks.append(f"per-group needs opset 21 (block_size), model has {opset}: per-channel instead")
        if granularity == "per-channel" and opset < 13:
            granularity = "per-tensor"
            fallbacks.append(f"per-channel needs opset 13 (axis), model has {opset}: per-tensor instead")
        int4 = opset >= 21
        if not int4 and any(job.bits == 4 for job in jobs):
            fallbacks.append(f"INT4 needs opset 21, model has {opset}: 4-bit values in an 8-bit container ({BITS_KEY}=4)")
        for text in fallbacks:
            logger.info("quantize-weights: %s", text)
        if fallbacks:
            ctx.note("fallbacks", fallbacks)
        return granularity, int4

    # ------------------------------------------------------------------ GPTQ inputs

    @staticmethod
    def _input_keys(job: _Job) -> list[tuple[str, _InputSpec] | None]:
        """The (layer input, input layout) of every reader of the job's weight; None where GPTQ does not apply."""
        keys: list[tuple[str, _InputSpec] | None] = []
        for node in job.nodes:
            x = node.inputs[0]
            spec = _input_spec(node, tuple(job.weight.const_value.shape), job.layout) if node.op_type in _GPTQ_OP_TYPES else None
            usable = spec is not None and x is not None and x.const_value is None and bool(x.name)
            keys.append((x.name, spec) if usable else None)  # type: ignore[union-attr]
        return keys

    def _hessian_groups(
        self, model: ir.Model, jobs: list[_Job], data: Mapping[str, np.ndarray]
    ) -> Iterator[tuple[list[_Job], dict[tuple[str, _InputSpec], list[np.ndarray]]]]:
        """(jobs whose Hessians are complete, Hessians by key), one group of layer inputs at a time.

        The float model runs once over the calibration data per group of
        ``_TENSORS_PER_RUN`` layer inputs; a Hessian is dropped once no job
        still waiting needs it, so at most about one group's are held.
        """
        pending = [job for job in jobs if None not in job.input_keys]
        values: dict[str, ir.Value] = {}
        for job in pending:
            for node, key in zip(job.nodes, job.input_keys):
                values.setdefault(key[0], node.inputs[0])  # type: ignore[index, arg-type]
        data = {name: array[: self.samples] for name, array in data.items()}
        names = list(values)
        ready: dict[tuple[str, _InputSpec], list[np.ndarray]] = {}
        for start in range(0, len(names), _TENSORS_PER_RUN):
            group = names[start : start + _TENSORS_PER_RUN]
            sums = {key: _HessianSum(key[1]) for job in pending for key in job.input_keys if key[0] in group}  # type: ignore[index]
            for batch in _stream_layer_inputs(model, [values[name] for name in group], data):
                arrays = dict(zip(group, batch, strict=True))
                for key, total in sums.items():
                    total.add(np.asarray(arrays[key[0]]))
                del arrays, batch
            ready.update((key, total.hessians()) for key, total in sums.items())
            del sums
            done = [job for job in pending if all(key in ready for key in job.input_keys)]
            pending = [job for job in pending if job not in done]
            yield done, ready
            needed = {key for job in pending for key in job.input_keys}
            ready = {key: h for key, h in ready.items() if key in needed}
        logger.info("quantize-weights: GPTQ Hessians of %d layer input(s) collected", len(names))

    # ------------------------------------------------------------------ quantization

    def _rtn(self, w: np.ndarray, layout: _Layout, bits: int, granularity: Granularity) -> QuantizedTensor:
        if granularity == "per-tensor":
            return quantize_weight(w, bits, axis=None, symmetric=self.symmetric, clip=self.clip)
        if granularity == "per-channel":
            return quantize_weight(w, bits, axis=layout.out_axis, symmetric=self.symmetric, clip=self.clip)
        return quantize_weight(w, bits, axis=layout.red_axis, block_size=self.block_size, symmetric=self.symmetric, clip=self.clip)

    def _gptq(
        self, w: np.ndarray, layout: _Layout, bits: int, granularity: Granularity, hessians: list[np.ndarray], rtn: QuantizedTensor
    ) -> QuantizedTensor:
        """GPTQ on W moved to [out, *rest, reduction] and flattened to [out, columns]; one run per conv group.

        Per-tensor and per-channel scales are RTN's (``rtn``); per-group scales are found as GPTQ goes.
        """
        moved = np.moveaxis(w, (layout.out_axis, layout.red_axis), (0, -1))
        out, reduction = moved.shape[0], moved.shape[-1]
        inner = moved.shape[1:-1]
        matrix = moved.reshape(out, -1)
        fixed: tuple[np.ndarray, np.ndarray] | None = None
        groups: list[tuple[int, int]] | None = None
        if granularity == "per-group":
            size = self.block_size
            groups = [
                (p * reduction + b, p * reduction + min(b + size, reduction))
                for p in range(math.prod(inner))
                for b in range(0, reduction, size)
            ]
        else:  # RTN's scales: computed on the original W, per tensor or per output channel (= row)
            fixed = (np.broadcast_to(rtn.scale, (out,)), np.broadcast_to(rtn.zero_point, (out,)))
        rows = out // len(hessians)
        q_parts, s_parts, z_parts = [], [], []
        for index, hessian in enumerate(hessians):
            part = slice(index * rows, (index + 1) * rows)
            q, s, z = gptq_quantize(
                matrix[part], hessian, bits=bits, symmetric=self.symmetric, clip=self.clip,
                scale=None if fixed is None else fixed[0][part], zero_point=None if fixed is None else fixed[1][part],
                groups=groups, damp=self.damp, block=self.gptq_block,
            )
            q_parts.append(q)
            s_parts.append(s)
            z_parts.append(z)
        q2, s2, z2 = np.concatenate(q_parts), np.concatenate(s_parts), np.concatenate(z_parts)
        values = np.moveaxis(q2.reshape(moved.shape), (0, -1), (layout.out_axis, layout.red_axis))
        values = values.astype(storage_dtype(bits, self.symmetric))
        if granularity == "per-tensor":
            return QuantizedTensor(values, s2[0, 0].reshape(()), z2[0, 0].reshape(()), bits, None, None)
        if granularity == "per-channel":
            return QuantizedTensor(values, s2[:, 0], z2[:, 0], bits, layout.out_axis, None)
        blocks = -(-reduction // self.block_size)
        scale = np.moveaxis(s2.reshape(out, *inner, blocks), (0, -1), (layout.out_axis, layout.red_axis))
        zero = np.moveaxis(z2.reshape(out, *inner, blocks), (0, -1), (layout.out_axis, layout.red_axis))
        return QuantizedTensor(values, scale, zero, bits, layout.red_axis, self.block_size)

    @staticmethod
    def _output_error(delta: np.ndarray, layout: _Layout, hessians: list[np.ndarray]) -> float:
        """tr(ΔW H ΔWᵀ) summed over conv groups (ΔW in GPTQ's [out, columns] layout)."""
        moved = np.moveaxis(delta, (layout.out_axis, layout.red_axis), (0, -1))
        matrix = moved.reshape(moved.shape[0], -1)
        rows = matrix.shape[0] // len(hessians)
        return float(sum(np.sum((matrix[i * rows : (i + 1) * rows] @ h) * matrix[i * rows : (i + 1) * rows]) for i, h in enumerate(hessians)))

    # ------------------------------------------------------------------ the pass

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        existing = is_quantized_model(graph, allow_activation_qdq=True)  # quantize-activations' Q/DQ pairs compose
        if existing is not None:
            logger.warning("quantize-weights: the model already contains %s nodes; left unchanged", existing)
            ctx.note("skipped", f"already quantized ({existing} present)")
            return ir.passes.PassResult(model, False)
        opset = default_opset(model)
        if opset == 0:  # an ai.onnx.ml-only model: none of the ops this pass quantizes
            logger.info("quantize-weights: the model imports no default-domain opset; left unchanged")
            ctx.note("skipped", "no default-domain opset")
            return ir.passes.PassResult(model, False)
        if opset < 10:
            logger.warning("quantize-weights: opset %d has no DequantizeLinear; left unchanged", opset)
            ctx.note("skipped", f"opset {opset} < 10")
            return ir.passes.PassResult(model, False)
        if model.functions:
            logger.debug("quantize-weights: %d model-local function(s) left untouched", len(model.functions))
        display = _display_names(graph)
        unmatched = sorted(set(self._bits_by_node) - set(display.values()))
        if unmatched:
            logger.warning("quantize-weights: bits_per_node names no node of the graph: %s", ", ".join(unmatched))
            ctx.note("bits_per_node_unmatched", unmatched)
        jobs, skipped = self._plan(graph, opset, display)
        if not jobs:
            ctx.note("quantized_nodes", 0)
            return ir.passes.PassResult(model, False)
        granularity, int4 = self._storage(opset, jobs, ctx)

        names = NameAllocator(graph)
        for node in graph:
            if not node.name:
                names(display[node])  # reserve the names unnamed nodes get below
        layers: dict[str, dict[str, object]] = {}
        for job, (quantized, layer) in self._quantized(model, jobs, granularity, ctx):
            self._replace(graph, names, job, quantized, int4)
            del quantized  # the graph holds it now (in the tensor store when the context has one)
            layer["storage"] = f"{'' if self.symmetric else 'u'}int{4 if job.bits == 4 and int4 else 8}"
            if len(job.nodes) > 1:
                layer["shared_with"] = [display[n] for n in job.nodes]
            layers.update((display[node], layer) for node in job.nodes)
        for node, name in display.items():
            if not node.name:
                node.name = name

        ctx.note("quantized_nodes", len(layers))
        ctx.note("quantized_node_names", list(layers))
        ctx.note("skipped_nodes", skipped)
        ctx.note("granularity", granularity)
        ctx.note("bits", {name: layer["bits"] for name, layer in layers.items()})
        ctx.note("weight_sqnr_db", {name: layer["weight_sqnr_db"] for name, layer in layers.items()})
        ctx.note("layers", layers)
        logger.info(
            "quantize-weights: %d weights of %d nodes quantized (%s, %s), %d nodes skipped",
            len(jobs), len(layers), granularity, self.method, skipped,
        )
        return ir.passes.PassResult(model, True)

    def _quantized(
        self, model: ir.Model, jobs: list[_Job], granularity: Granularity, ctx: PassContext
    ) -> Iterator[tuple[_Job, tuple[QuantizedTensor, dict[str, object]]]]:
        """Every job with its quantized tensor and report entry (RTN, or GPTQ where it applies), in job order.

        GPTQ's layer inputs come from the float model, so with GPTQ every weight
        is quantized before the first is handed out (and the graph changes).
        Round-to-nearest reads nothing but the weight: each is quantized when the
        caller asks for it, so one quantized weight at a time is in memory.
        """
        gptq = self.method == "gptq"
        if gptq and not ctx.calibration:
            logger.warning("quantize-weights: GPTQ needs calibration data (--calibration); using round-to-nearest")
            ctx.note("method", "rtn (gptq asked, no calibration data)")
            gptq = False
        if not gptq:
            for job in jobs:
                yield job, self._quantize_one(job, granularity, None)
            return
        results: dict[ir.Value, tuple[QuantizedTensor, dict[str, object]]] = {}
        ctx.note("method", "gptq")
        for job in jobs:
            job.input_keys = self._input_keys(job)
        for ready, hessians in self._hessian_groups(model, jobs, ctx.calibration):  # type: ignore[arg-type]
            for job in ready:
                summed = [sum(parts) for parts in zip(*(hessians[key] for key in job.input_keys))]  # type: ignore[index]
                results[job.weight] = self._quantize_one(job, granularity, summed)
        for job in jobs:
            if job.weight not in results:
                skip = "ConvTranspose" if job.nodes[0].op_type == "ConvTranspose" else "layer input is not an activation"
                logger.debug("quantize-weights: '%s': GPTQ does not apply (%s); round-to-nearest", job.weight.name, skip)
                results[job.weight] = self._quantize_one(job, granularity, None, skip)
        for job in jobs:
            yield job, results.pop(job.weight)

    def _quantize_one(
        self, job: _Job, granularity: Granularity, hessians: list[np.ndarray] | None, gptq_skipped: str | None = None
    ) -> tuple[QuantizedTensor, dict[str, object]]:
        # A float32 copy (float64 only for GPTQ's algebra): round-to-nearest quantizes large tensors a slice of
        # channels at a time, so the working memory stays a small multiple of the weight, not 8x its size.
        w = np.array(job.weight.const_value.numpy(), dtype=np.float64 if hessians is not None else np.float32)
        if isinstance(job.weight.const_value, ir.ExternalTensor):
            job.weight.const_value.release()  # the copy is all we need: unmap, or every weight stays resident
        quantized = self._rtn(w, job.layout, job.bits, granularity)
        layer: dict[str, object] = {"bits": job.bits, "granularity": granularity, "method": "rtn"}
        if gptq_skipped is not None:
            layer["gptq_skipped"] = gptq_skipped
        if hessians is not None:
            method, quantized, info = self._try_gptq(w, job, granularity, quantized, hessians)
            layer.update(method=method, **info)
        layer["weight_sqnr_db"] = _rounded_db(quantized_sqnr_db(w, quantized))
        return quantized, layer

    def _replace(self, graph: ir.Graph, names: NameAllocator, job: _Job, quantized: QuantizedTensor, int4: bool) -> None:
        """DequantizeLinear of the quantized weight before its first reader; the readers take it; the float weight goes if unused."""
        weight = job.weight
        container = quantized
        if job.bits == 4 and not int4:
            container = dataclasses.replace(quantized, bits=8)  # int8/uint8 container; the metadata says 4 below
        out = dequantized_weight(graph, names, weight, container, signed=self.symmetric, before=job.nodes[0])
        producer = out.producer()
        if producer is not None:
            producer.metadata_props[BITS_KEY] = str(job.bits)
        for node in job.nodes:
            node.replace_input_with(1, out)
        if not weight.uses() and not weight.is_graph_output() and not weight.is_graph_input():
            graph.initializers.pop(weight.name)

    def _try_gptq(
        self, w: np.ndarray, job: _Job, granularity: Granularity, rtn: QuantizedTensor, hessians: list[np.ndarray]
    ) -> tuple[str, QuantizedTensor, dict[str, object]]:
        """GPTQ of one weight; of it and RTN, the one with the smaller output error on the calibration data wins."""
        try:
            gptq = self._gptq(w, job.layout, job.bits, granularity, hessians, rtn)
        except np.linalg.LinAlgError:
            logger.warning("quantize-weights: '%s': the Hessian stays singular after damping; round-to-nearest", job.weight.name)
            return "rtn", rtn, {"gptq_skipped": "singular Hessian"}
        signal = self._output_error(w, job.layout, hessians)
        err_rtn = self._output_error(w - rtn.dequantized(), job.layout, hessians)
        err_gptq = self._output_error(w - gptq.dequantized(), job.layout, hessians)

        def db(err: float) -> float | None:
            return _rounded_db(10.0 * math.log10(signal / err)) if err > 0 and signal > 0 else None

        info: dict[str, object] = {"output_sqnr_db_rtn": db(err_rtn), "output_sqnr_db_gptq": db(err_gptq)}
        if err_gptq <= err_rtn:
            return "gptq", gptq, info
        logger.info("quantize-weights: '%s': round-to-nearest has the smaller calibration output error; kept", job.weight.name)
        return "rtn (gptq worse on calibration data)", rtn, info
