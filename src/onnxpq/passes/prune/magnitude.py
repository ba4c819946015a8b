"""``prune-magnitude``: unstructured magnitude pruning of Conv, ConvTranspose, Gemm and MatMul weights.

The weight is input 1 of each node (Conv/ConvTranspose ``W``, Gemm ``B``,
MatMul ``B``); it must be a float initializer (float32, float16, bfloat16,
float64) that is not also a graph input. The ``k`` weights of smallest
magnitude are set to exact zeros in a *new* initializer (same name, same
dtype; the old tensor is never written to)::

    order = stable_argsort(|W|.flatten())       # ties: lower flat index first
    W'.flatten()[order[:k]] = 0                 # (computed in O(n) with a partition)

Layer scope (``scope=layer``): every weight loses ``k_l = ⌊s_l·n_l + ½⌋`` of
its ``n_l`` weights, ``s_l`` being ``sparsity`` or its ``per_node`` override.

Global scope (``scope=global``): one threshold over the raw ``|w|`` of every
weight in the pool (every candidate without a ``per_node`` override, which
keeps layer semantics). ``k = ⌊s·Σn_l + ½⌋`` weights go, the smallest in the
order ``(|w|, layer in graph order, flat index)``, except that no layer loses
more than ``cap_l = ⌊max_layer_sparsity·n_l⌋`` (the guard against pruning a
layer away): a layer that reaches its cap keeps the rest, and the remaining
count comes from the other layers, so the kept weights are exactly the largest
``|w|`` subject to the caps. Raw magnitudes are compared, not magnitudes
normalised per layer (the choice of Han et al. 2015 and of PyTorch's
``global_unstructured``): it is the one rule whose result is "the largest
weights survive", which a reader can check. Its known bias: layers with a
large fan-in have small weights (initialised ~1/√fan-in, or rescaled by a
folded BatchNorm) and are pruned harder — which is also where the redundancy
usually is; the cap stops it from emptying a layer, and ``per_node`` or
``scope=layer`` fix a layer that must not lose more. The threshold is found by
bisection on the bit pattern of ``|w|`` (non-negative floats sort like their
bits) with one sorted ``|w|`` copy per layer (4 bytes a weight; 8 for float64),
not a sort of all weights together.

The guard applies in layer scope too (a 1-weight layer at 50 % would otherwise
vanish); a layer held back by it is listed in the notes as ``capped``.

Zeros that are already there count: the pass only ever sets weights to zero,
so running it twice at the same sparsity changes nothing the second time
(``modified=False``), and a layer that already has ``k`` zeros is left as is.
``include_bias=True`` also prunes the bias (input 2 of Conv, ConvTranspose,
Gemm) by its own magnitudes, at the fraction its layer was pruned to.

A weight read by several nodes is pruned once, for all of them, when every
reader is a candidate with the same setting; otherwise it is left alone and
the notes say why. Left untouched with a DEBUG log: excluded nodes, nodes with
fewer than ``min_params`` weights, weights that are computed, graph inputs or
already quantized (prune *before* quantizing: a symmetric quantizer maps 0 to
0, so the zeros survive), and nodes inside subgraphs (If/Loop/Scan) or
model-local functions (counted in the notes). Unnamed nodes are addressed as
``<op_type>#<index>``, index in the main graph's node order.

What a target gains (``ctx.target.sparsity.unstructured``, noted and logged):

* ``storage`` (cpu): the file compresses, latency does not change — onnxruntime's
  CPU kernels are dense (measured 0.99x at 50 % and 90 % zeros);
* ``compute`` (vbit): zeros are skipped, bit-operations scale with density
  (:func:`onnxpq.analysis.macs.model_cost` with ``count_zeros=True``);
* ``none`` (gpu): no benefit from scattered zeros (WARNING): use ``prune-nm``
  (2:4 sparse tensor cores) or ``prune-channels``.

Storage. The model keeps dense initializers with exact zeros. The notes carry
what a sparse encoding of the pruned weights would take, per tensor
(``s`` = bytes per element, ``n`` elements, ``nnz`` non-zeros, W viewed as
``[rows = shape[0], cols = n / rows]``)::

    dense      n·s
    bitmap     ⌈n/8⌉ + nnz·s                           (1 presence bit per weight + the non-zeros)
    csr        nnz·(s + b_col) + (rows + 1)·b_ptr       (b_col, b_ptr: smallest of 1/2/4/8 bytes that fits)
    onnx_coo   nnz·(s + 8)                              (ONNX SparseTensorProto, int64 linear indices)

and ``best`` sums the smallest of dense/bitmap/csr per tensor. Why not write
ONNX sparse initializers: onnx-ir 1.1 drops ``graph.sparse_initializer`` when
it loads a model (the weight becomes a dangling input; checked here), so
every pass after this one would lose them; onnxruntime 1.32 turns them back
into dense tensors when it builds the graph (``Graph::Graph`` calls
``SparseTensorProtoToDenseTensorProto`` for each one), so they save nothing
at run time; and COO with int64 indices is *larger* than dense unless the
density is below ``s / (s + 8)`` (1/3 for float32, 1/5 for float16).

Own implementation: no library prunes ONNX initializers; the rule is a sort.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.core.pipeline_text import parse_node_values
from onnxpq.errors import PipelineError

__all__ = [
    "PruneMagnitudePass",
    "WeightUse",
    "magnitudes",
    "node_label",
    "storage_summary",
    "WEIGHT_OP_TYPES",
    "find_weight_uses",
    "group_by_weight",
    "replace_initializer",
    "smallest_indices",
    "sparse_storage_bytes",
    "untouched_nested_nodes",
]

logger = logging.getLogger(__name__)

#: Op types whose input 1 is a prunable weight.
WEIGHT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_BIAS_OP_TYPES = ("Conv", "ConvTranspose", "Gemm")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
_ONNX_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- shared with prune-nm


@dataclass(frozen=True)
class WeightUse:
    """A compute node, the name it is addressed by, and the weight initializer it reads at input 1."""

    node: ir.Node
    label: str
    weight: ir.Value


def node_label(node: ir.Node, index: int) -> str:
    """The node's name, or ``<op_type>#<index>`` for an unnamed node (index in the main graph)."""
    return node.name or f"{node.op_type}#{index}"


def _initializer_problem(value: ir.Value | None, what: str) -> str | None:
    """Why ``value`` cannot be pruned as a constant float initializer, or None."""
    if value is None:
        return f"no {what} input"
    if value.const_value is None or not value.is_initializer():
        producer = value.producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            return f"{what} is already quantized (DequantizeLinear); prune before quantizing"
        return f"{what} '{value.name}' is not a constant initializer"
    if value.is_graph_input():
        return f"{what} '{value.name}' is also a graph input (it can be overridden at run time)"
    if value.is_graph_output():
        return f"{what} '{value.name}' is also a graph output"
    dtype = value.const_value.dtype
    if dtype not in _FLOATS:
        return f"{what} '{value.name}' has dtype {dtype.name}, not a float type"
    if value.const_value.size == 0:
        return f"{what} '{value.name}' is empty"
    return None


def find_weight_uses(
    graph: ir.Graph,
    op_types: Sequence[str],
    *,
    pass_name: str,
    exclude_nodes: Iterable[str] = (),
    min_params: int = 0,
    accept: Callable[[ir.Node, ir.Value], str | None] | None = None,
) -> tuple[list[WeightUse], dict[str, str]]:
    """The prunable weights of the main graph's ``op_types`` nodes, and why the others were skipped.

    ``accept(node, weight)`` may refuse a node with a reason (checked last;
    reads only shapes). Shapes are read without loading external data.
    """
    excluded = set(exclude_nodes)
    uses: list[WeightUse] = []
    skipped: dict[str, str] = {}
    for index, node in enumerate(graph):
        if node.domain not in _ONNX_DOMAINS or node.op_type not in op_types:
            continue
        label = node_label(node, index)
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        reason = None
        if label in excluded:
            reason = "excluded by name"
        if reason is None:
            reason = _initializer_problem(weight, "weight")
        if reason is None and weight is not None:
            size = weight.const_value.size  # type: ignore[union-attr]
            if size < min_params:
                reason = f"{size} weights < min_params={min_params}"
        if reason is None and accept is not None and weight is not None:
            reason = accept(node, weight)
        if reason is not None:
            logger.debug("%s: '%s' skipped: %s", pass_name, label, reason)
            skipped[label] = reason
            continue
        uses.append(WeightUse(node, label, weight))  # type: ignore[arg-type]
    return uses, skipped


def group_by_weight(
    uses: Sequence[WeightUse], setting: Callable[[WeightUse], Hashable], *, pass_name: str
) -> tuple[list[list[WeightUse]], dict[str, str]]:
    """Group the candidate uses by weight, in graph order.

    A weight read by several nodes is pruned once for all of them; that is
    allowed only when every reader is a candidate reading it as its weight
    (input 1) with the same ``setting``. Otherwise each of its candidate uses
    is skipped with the reason.
    """
    by_weight: dict[ir.Value, list[WeightUse]] = {}
    for use in uses:
        by_weight.setdefault(use.weight, []).append(use)
    groups: list[list[WeightUse]] = []
    skipped: dict[str, str] = {}
    for weight, group in by_weight.items():
        readers = {id(u.node) for u in group}
        foreign = [
            use.node.name or use.node.op_type
            for use in weight.uses()
            if id(use.node) not in readers or use.idx != 1
        ]
        reason = None
        if foreign:
            reason = f"weight '{weight.name}' is also read by {', '.join(sorted(set(foreign)))}, which this pass does not prune"
        elif len({setting(u) for u in group}) > 1:
            reason = f"weight '{weight.name}' is shared by {', '.join(u.label for u in group)} with different settings"
        if reason is not None:
            for use in group:
                logger.debug("%s: '%s' skipped: %s", pass_name, use.label, reason)
                skipped[use.label] = reason
            continue
        groups.append(group)
    return groups, skipped


def replace_initializer(graph: ir.Graph, old: ir.Value, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer under ``old``'s name and point every use of ``old`` at it."""
    tensor = old.const_value
    if tensor is None:
        raise ValueError(f"'{old.name}' is not a constant; nothing to replace")
    new_tensor = ir.Tensor(np.ascontiguousarray(array), dtype=tensor.dtype, name=old.name)
    new = ir.Value(
        name=old.name,
        shape=old.shape if old.shape is not None else ir.Shape(array.shape),
        type=old.type if old.type is not None else ir.TensorType(tensor.dtype),
        const_value=new_tensor,
    )
    old.replace_all_uses_with(new)
    graph.initializers.pop(old.name)
    graph.register_initializer(new)
    return new


def magnitudes(array: np.ndarray) -> np.ndarray:
    """``|array|`` as float32 (float64 for a float64 array); float16/bfloat16 values are exact in float32."""
    wide = array.dtype == np.float64
    return np.abs(array.astype(np.float64 if wide else np.float32, copy=False))


def _uint_width(max_value: int) -> int:
    for width in (1, 2, 4):
        if max_value < 256**width:
            return width
    return 8


def sparse_storage_bytes(shape: Sequence[int], nonzeros: int, itemsize: int) -> dict[str, int]:
    """Bytes of one tensor stored dense, as bitmap + non-zeros, as CSR, and as ONNX COO (see the module docstring)."""
    n = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = n // rows if rows else 0
    dense = n * itemsize
    bitmap = -(-n // 8) + nonzeros * itemsize
    csr = nonzeros * (itemsize + _uint_width(max(cols - 1, 0))) + (rows + 1) * _uint_width(nonzeros)
    return {
        "dense": dense,
        "bitmap": bitmap,
        "csr": csr,
        "onnx_coo": nonzeros * (itemsize + 8),
        "best": min(dense, bitmap, csr),
    }


def storage_summary(entries: Iterable[dict[str, int]]) -> dict[str, Any]:
    """Sum per-tensor storage estimates; ``ratio`` = best / dense."""
    total = {"dense": 0, "bitmap": 0, "csr": 0, "onnx_coo": 0, "best": 0}
    for entry in entries:
        for key in total:
            total[key] += entry[key]
    summary: dict[str, Any] = {f"{key}_bytes": value for key, value in total.items()}
    summary["ratio"] = round(total["best"] / total["dense"], 4) if total["dense"] else 1.0
    return summary


def untouched_nested_nodes(model: ir.Model, op_types: Sequence[str]) -> int:
    """``op_types`` nodes inside subgraphs (If/Loop/Scan) or model-local functions: left untouched."""
    top = {id(node) for node in model.graph}
    count = sum(
        1 for node in model.graph.all_nodes() if id(node) not in top and node.op_type in op_types
    )
    for function in model.functions.values():
        count += sum(1 for node in function.all_nodes() if node.op_type in op_types)
    return count


# --------------------------------------------------------------------------- magnitude selection


def _count(fraction: float, n: int) -> int:
    """``⌊fraction·n + ½⌋``: the number of weights a fraction of ``n`` is."""
    return int(math.floor(fraction * n + 0.5))


def _cap(max_fraction: float, n: int) -> int:
    """``⌊max_fraction·n⌋`` (with a hair of slack for float products like 0.98·50)."""
    return int(math.floor(max_fraction * n + 1e-9))


def smallest_indices(values: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of the ``count`` smallest of the 1-D ``values``, ties taken in index order.

    The same set as ``argsort(values, kind="stable")[:count]``, in O(n): the
    count-th smallest value ``v`` by partition, every index below ``v``, then
    the first indices equal to ``v``.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.intp)
    if count >= values.size:
        return np.arange(values.size)
    kth = np.partition(values, count - 1)[count - 1]
    below = np.flatnonzero(values < kth)
    ties = np.flatnonzero(values == kth)[: count - below.size]
    return np.concatenate([below, ties])


def prune_smallest(array: np.ndarray, count: int) -> tuple[np.ndarray, bool]:
    """A copy of ``array`` with its ``count`` smallest ``|w|`` set to 0 (ties: lower flat index) and whether a value changed."""
    if count <= 0:
        return array, False
    flat_in = array.reshape(-1)
    chosen = smallest_indices(magnitudes(flat_in), count)
    if not np.any(flat_in[chosen] != 0):
        return array, False
    flat = flat_in.copy()
    flat[chosen] = 0
    return flat.reshape(array.shape), True


def global_counts(
    arrays: Sequence[np.ndarray], caps: Sequence[int], total: int
) -> tuple[list[int], list[bool], float | None]:
    """How many weights each array loses so that the ``total`` smallest ``|w|`` overall go, none beyond its cap.

    Greedy in the order ``(|w|, array index, flat index)``, skipping the weights
    of arrays that reached their cap. Returns the counts, whether each array
    was held at its cap, and the threshold ``|w|`` (weights below it are pruned
    unless capped; ties at it are taken in array then index order), or None
    when the caps bind everywhere.
    """
    if total <= 0:
        return [0] * len(arrays), [False] * len(arrays), None
    if sum(caps) <= total:
        return list(caps), [c < a.size for c, a in zip(caps, arrays)], None
    wide = any(a.dtype == np.float64 for a in arrays)
    ftype, utype = (np.float64, np.uint64) if wide else (np.float32, np.uint32)
    keys = [np.sort(magnitudes(a).astype(ftype, copy=False).reshape(-1)).view(utype) for a in arrays]

    def below_or_at(bits: int) -> int:
        t = utype(bits)
        return sum(min(int(np.searchsorted(k, t, side="right")), c) for k, c in zip(keys, caps))

    lo, hi = 0, max(int(k[-1]) for k in keys)  # below_or_at(hi) = Σ caps > total
    while lo < hi:
        mid = (lo + hi) // 2
        if below_or_at(mid) >= total:
            hi = mid
        else:
            lo = mid + 1
    t = utype(lo)
    counts = [min(int(np.searchsorted(k, t, side="left")), c) for k, c in zip(keys, caps)]
    remaining = total - sum(counts)
    for i, (k, c) in enumerate(zip(keys, caps)):
        if remaining <= 0:
            break
        ties = int(np.searchsorted(k, t, side="right")) - int(np.searchsorted(k, t, side="left"))
        take = min(ties, c - counts[i], remaining)
        counts[i] += take
        remaining -= take
    capped = [n == c and int(np.searchsorted(k, t, side="right")) > c for n, k, c in zip(counts, keys, caps)]
    threshold = float(np.array(lo, dtype=utype).view(ftype))
    return counts, capped, threshold


# --------------------------------------------------------------------------- what the target does with zeros


def unstructured_effect(target: Any, density: float, storage_ratio: float) -> tuple[int, str]:
    """(log level, text): what ``target`` gains from scattered zeros at ``density`` (non-zero fraction)."""
    if target is None:
        return logging.INFO, (
            "no target: zeros are stored dense in the .onnx file; a compressed or sparse-stored copy of the pruned "
            f"weights takes {storage_ratio:.2f}x their bytes; dense kernels run at the same speed"
        )
    mode = target.sparsity.unstructured
    if mode == "storage":
        return logging.INFO, (
            f"{target.name}: the file compresses, latency does not change (dense kernels; measured 0.99x at 50-90% "
            f"zeros). The .onnx stores the zeros dense; compressed or sparse-stored, the pruned weights take "
            f"{storage_ratio:.2f}x their bytes"
        )
    if mode == "compute":
        return logging.INFO, (
            f"{target.name}: zeros are skipped, bit-operations scale with density "
            f"({density:.3f} of the pruned layers' weights remain)"
        )
    return logging.WARNING, (
        f"{target.name}: no benefit from scattered zeros: its kernels are dense and skip nothing, and the .onnx "
        "stores the zeros dense; for speed use prune-nm (2:4 sparse tensor cores) or prune-channels"
    )


# --------------------------------------------------------------------------- the pass


def _parse_overrides(items: Sequence[str]) -> dict[str, float]:
    return parse_node_values(
        items, where="prune-magnitude: per_node", kind=float, check=lambda v: 0.0 <= v < 1.0,
        expected="a sparsity in [0, 1)", form="name:sparsity",
    )


@dataclass
class _Layer:
    """One weight tensor to prune and the nodes that read it."""

    uses: list[WeightUse]
    fraction: float | None  # requested sparsity; None: set by the global threshold
    array: np.ndarray
    cap: int
    count: int = 0
    capped: bool = False

    @property
    def weight(self) -> ir.Value:
        return self.uses[0].weight


@register_pass
class PruneMagnitudePass(OnnxpqPass):
    """Set the smallest-magnitude weights of Conv, ConvTranspose, Gemm and MatMul to zero (per layer or one global threshold)."""

    name = "prune-magnitude"
    exact = False

    def __init__(
        self,
        sparsity: float = 0.5,
        *,
        scope: Literal["layer", "global"] = "layer",
        max_layer_sparsity: float = 0.98,
        per_node: tuple[str, ...] = (),
        exclude_nodes: tuple[str, ...] = (),
        min_params: int = 0,
        include_bias: bool = False,
    ) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise PipelineError(f"prune-magnitude: sparsity must be in [0, 1), got {sparsity}")
        if scope not in ("layer", "global"):
            raise PipelineError(f"prune-magnitude: scope must be layer or global, got '{scope}'")
        if not 0.0 < max_layer_sparsity <= 1.0:
            raise PipelineError(f"prune-magnitude: max_layer_sparsity must be in (0, 1], got {max_layer_sparsity}")
        if min_params < 0:
            raise PipelineError(f"prune-magnitude: min_params must be >= 0, got {min_params}")
        self._overrides = _parse_overrides(per_node)
        self.sparsity = sparsity
        self.scope = scope
        self.max_layer_sparsity = max_layer_sparsity
        self.per_node = tuple(per_node)
        self.exclude_nodes = tuple(exclude_nodes)
        self.min_params = min_params
        self.include_bias = include_bias

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        self._report_unmatched_names(graph, ctx)
        nested = untouched_nested_nodes(model, WEIGHT_OP_TYPES)
        if nested:
            logger.info("prune-magnitude: %d compute nodes inside subgraphs or functions are left untouched", nested)
            ctx.note("untouched_nested_nodes", nested)

        uses, skipped = find_weight_uses(
            graph, WEIGHT_OP_TYPES, pass_name=self.name, exclude_nodes=self.exclude_nodes, min_params=self.min_params
        )
        groups, shared_skips = group_by_weight(uses, lambda u: self._overrides.get(u.label), pass_name=self.name)
        skipped.update(shared_skips)
        ctx.note("scope", self.scope)
        ctx.note("skipped", skipped)
        if not groups:
            ctx.note("pruned_nodes", [])
            logger.info("prune-magnitude: no prunable weights")
            return ir.passes.PassResult(model, False)

        default = None if self.scope == "global" else self.sparsity
        layers = []
        for group in groups:
            array = group[0].weight.const_value.numpy()  # type: ignore[union-attr]
            fraction = self._overrides.get(group[0].label, default)
            layer = _Layer(group, fraction, array, _cap(self.max_layer_sparsity, array.size))
            if fraction is not None:
                wanted = _count(fraction, array.size)
                layer.count = min(wanted, layer.cap)
                layer.capped = wanted > layer.cap
            layers.append(layer)
        pool = [layer for layer in layers if layer.fraction is None]
        if pool:
            total = _count(self.sparsity, sum(layer.array.size for layer in pool))
            counts, capped, threshold = global_counts([l.array for l in pool], [l.cap for l in pool], total)
            for layer, count, held in zip(pool, counts, capped):
                layer.count, layer.capped = count, held
            if sum(counts) < total:
                logger.warning(
                    "prune-magnitude: max_layer_sparsity=%s allows %d of the %d zeros asked for",
                    self.max_layer_sparsity, sum(counts), total,
                )
            ctx.note("global_threshold", threshold)
        return self._apply(model, ctx, layers)

    def _apply(self, model: ir.Model, ctx: PassContext, layers: list[_Layer]) -> ir.passes.PassResult:
        graph = model.graph
        details: dict[str, dict[str, Any]] = {}
        storage: list[dict[str, int]] = []
        pruned: list[str] = []
        modified = False
        zeros_total = params_total = 0
        for layer in layers:
            array, size = layer.array, layer.array.size
            zeros_before = int(np.count_nonzero(magnitudes(array) == 0))
            new_array, changed = prune_smallest(array, layer.count)
            zeros = int(np.count_nonzero(magnitudes(new_array) == 0)) if changed else zeros_before
            if changed:
                replace_initializer(graph, layer.weight, new_array)
                pruned.extend(u.label for u in layer.uses)
                modified = True
            entry: dict[str, Any] = {
                "op_type": layer.uses[0].node.op_type,
                "weight": layer.weight.name,
                "params": size,
                "requested": layer.fraction if layer.fraction is not None else "global",
                "zeros_before": zeros_before,
                "zeros": zeros,
                "sparsity": round(zeros / size, 6),
                "capped": layer.capped,
            }
            if self.include_bias:
                modified |= self._prune_bias(graph, layer, layer.count / size, entry)
            for use in layer.uses:
                details[use.label] = entry
            storage.append(sparse_storage_bytes(tuple(array.shape), size - zeros, array.dtype.itemsize))
            zeros_total += zeros
            params_total += size

        density = 1.0 - zeros_total / params_total
        summary = storage_summary(storage)
        capped = sorted(label for label, entry in details.items() if entry["capped"])
        if capped:
            logger.info("prune-magnitude: held at max_layer_sparsity=%s: %s", self.max_layer_sparsity, ", ".join(capped))
        ctx.note("pruned_nodes", pruned)
        ctx.note("sparsity_per_node", {label: entry["sparsity"] for label, entry in details.items()})
        ctx.note("layers", details)
        ctx.note("total_sparsity", round(1.0 - density, 6))
        ctx.note("sparse_storage", summary)
        ctx.note(
            "storage_format",
            "dense initializers holding exact zeros (no ONNX sparse_initializer: onnx-ir drops them on load, "
            "onnxruntime densifies them when it builds the graph, and COO's int64 indices outweigh dense below 2/3 "
            "sparsity for float32)",
        )
        level, effect = unstructured_effect(ctx.target, density, summary["ratio"])
        ctx.note("target_effect", effect)
        logger.info(
            "prune-magnitude: %d of %d weights changed; %.1f%% of the prunable weights are zero",
            sum(1 for layer in layers if layer.uses[0].label in pruned), len(layers), 100.0 * (1.0 - density),
        )
        logger.log(level, "prune-magnitude: %s", effect)
        return ir.passes.PassResult(model, modified)

    def _prune_bias(self, graph: ir.Graph, layer: _Layer, fraction: float, entry: dict[str, Any]) -> bool:
        """Prune the bias of the layer's node(s) at ``fraction`` of its elements, by its own magnitudes; True if it changed."""
        node = layer.uses[0].node
        if node.op_type not in _BIAS_OP_TYPES or len(node.inputs) < 3 or node.inputs[2] is None:
            return False
        bias = node.inputs[2]
        problem = _initializer_problem(bias, "bias")
        readers = {id(u.node) for u in layer.uses}
        if problem is None and any(len(u.node.inputs) < 3 or u.node.inputs[2] is not bias for u in layer.uses):
            problem = "the nodes sharing this weight have different biases"
        if problem is None and any(id(use.node) not in readers or use.idx != 2 for use in bias.uses()):
            problem = f"bias '{bias.name}' is also read by other nodes"
        if problem is not None:
            logger.debug("prune-magnitude: bias of '%s' left as is: %s", layer.uses[0].label, problem)
            entry["bias_skipped"] = problem
            return False
        array = bias.const_value.numpy()  # type: ignore[union-attr]
        count = min(_count(fraction, array.size), _cap(self.max_layer_sparsity, array.size))
        new_array, changed = prune_smallest(array, count)
        if changed:
            replace_initializer(graph, bias, new_array)
        entry["bias_zeros"] = int(np.count_nonzero(magnitudes(new_array) == 0))
        return changed

    def _report_unmatched_names(self, graph: ir.Graph, ctx: PassContext) -> None:
        labels = {node_label(node, index) for index, node in enumerate(graph)}
        unknown_overrides = sorted(set(self._overrides) - labels)
        if unknown_overrides:
            logger.warning("prune-magnitude: per_node names no node of the main graph: %s", ", ".join(unknown_overrides))
            ctx.note("per_node_unmatched", unknown_overrides)
        unknown_excludes = sorted(set(self.exclude_nodes) - labels)
        if unknown_excludes:
            logger.info("prune-magnitude: exclude_nodes names no node of the main graph: %s", ", ".join(unknown_excludes))
            ctx.note("exclude_nodes_unmatched", unknown_excludes)
