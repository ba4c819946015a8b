"""``prune-nm``: N:M structured sparsity along the reduction axis (2:4 for sparse tensor cores).

In every group of ``M`` consecutive weights along the axis the layer *sums
over* (the reduction dimension K of its GEMM), the ``N`` largest ``|w|`` stay
and the others become exact zeros (a new initializer; ties: the lower index
stays). Which axis, per weight layout::

    op               weight              reduction axis   a group is M consecutive ...
    Conv (any group) [O, I/g, k1, ...]   1                input channels of one group, at one (o, k1, ...)
    Gemm transB=1    [N, K]              1                K elements of one row
    Gemm transB=0    [K, N]              0                K elements of one column
    MatMul           [..., K, N]         -2 (0 for 2-D)   K elements of one column

Why axis 1 for Conv. TensorRT's rule for sparse tensor cores (Developer
Guide, "Structured Sparsity"; §6.8 "Sparsity" in the 8.5 guide): *"For each
output channel and for each spatial pixel in the kernel weights, every four
input channels must have at least two zeros"*, checked on the ``[K, C, R, S]``
weight as ``count_nonzero(weights[k, 4c:4c+4, r, s]) <= 2`` with
``C % 4 == 0``; it applies to convolution and fully connected weights and is
enabled by ``BuilderFlag.kSPARSE_WEIGHTS`` with fp16 or int8. NVIDIA's own
pruning tool does the same (apex ``contrib/sparsity/sparse_masklib.py``,
``create_mask``: a 4-D weight is permuted to ``(R, S, K, C)`` and masked in
groups of 4 along C). Put as a GEMM: the implicit-GEMM reduction ``K = C·R·S``
is laid out with the channel *innermost* (the KRSC / NHWC order tensor cores
read), so 4 consecutive K elements are 4 consecutive input channels at one
kernel position. Flattening in ``(C, R, S)`` order instead would put the
groups along the kernel width, which is not what TensorRT checks. For a
grouped convolution axis 1 already holds one group's ``I/g`` channels, so
groups never straddle two convolution groups.

Depthwise convolution (``I/g = 1``): the reduction over input channels has
length 1; no N:M pattern exists along it (TensorRT's ``C % 4 == 0`` fails
too), so the layer is skipped with that reason. A reduction length that is
not a multiple of ``M``: with ``skip_indivisible=True`` (the default) the
layer is skipped and noted, because TensorRT would not run it sparse anyway;
with ``skip_indivisible=False`` the axis is padded *logically* with zeros to a
multiple of ``M`` and the rule applied to the padded tensor: the last,
partial group of ``r < M`` weights keeps its ``min(N, r)`` largest (a
depthwise layer is then left unchanged). Nothing is padded in the model.

``n`` and ``m`` default (``None``) to the target's first ``sparsity.n_m``
pattern (``gpu``: 2:4) and to 2:4 without one; an option set explicitly wins.

Pruning is by magnitude only, one shot (no retraining, no channel
permutation search as in apex ASP); expect accuracy loss on small or
already-compact layers and fine-tune where it matters. Zeros already there
count, so a second run with the same pattern changes nothing
(``modified=False``). After pruning, every group of every pruned weight is
checked again (``pattern_check`` note); a failure raises, and the pass
manager rolls the model back.

Gain, always *estimated*: sparse tensor cores (NVIDIA Ampere and later) do the
2:4 matmul at twice the dense math rate (A100: 624 vs 312 dense fp16 TFLOPS),
so up to ~2x on the pruned layers' matmul time, less end to end; TensorRT
reports which layers were eligible and uses a sparse tactic only where it is
faster. On CPU nothing changes (measured 0.99x for 2:4): the file compresses,
latency does not change. The notes also give the size of the compressed N:M
format (N values + N·⌈log2 M⌉ index bits per group; for 2:4 fp16, 2 values
and 4 bits per 4 weights).

Own implementation (a per-group sort); shares weight discovery with
:mod:`onnxpq.passes.prune.magnitude`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError
from onnxpq.passes.prune.magnitude import (
    find_weight_uses,
    group_by_weight,
    magnitudes,
    node_label,
    replace_initializer,
    untouched_nested_nodes,
)

__all__ = ["PruneNMPass", "reduction_axis", "prune_n_m", "n_m_violations", "satisfies_pattern"]

logger = logging.getLogger(__name__)

_OP_TYPES = ("Conv", "Gemm", "MatMul")
_DEFAULT = (2, 4)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def reduction_axis(node: ir.Node, rank: int) -> int | None:
    """The axis of the node's weight (input 1) that the node sums over, or None for a layout it does not handle."""
    if node.op_type == "Conv":
        return 1 if rank >= 3 else None
    if node.op_type == "Gemm":
        return (1 if _int_attr(node, "transB", 0) else 0) if rank == 2 else None
    if node.op_type == "MatMul":
        if rank == 0:
            return None
        return 0 if rank == 1 else rank - 2
    return None


def _groups_view(array: np.ndarray, axis: int, m: int) -> tuple[np.ndarray, int]:
    """The array as rows along ``axis`` (``[-1, length]``) and the logical padding that makes length a multiple of m."""
    moved = np.moveaxis(array, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    return rows, (-rows.shape[1]) % m


def prune_n_m(array: np.ndarray, axis: int, n: int, m: int) -> tuple[np.ndarray, bool]:
    """A copy of ``array`` keeping the n largest ``|w|`` of every m consecutive along ``axis``, and whether a value changed.

    Ties keep the lower index. A partial last group (length not a multiple of
    m) is compared as if padded with zeros, so it keeps its ``min(n, r)`` largest.
    """
    rows, pad = _groups_view(array, axis, m)
    mags = magnitudes(rows)
    padded = np.pad(mags, ((0, 0), (0, pad))) if pad else mags
    groups = padded.reshape(rows.shape[0], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(rows.shape[0], -1)[:, : rows.shape[1]]
    if not np.any(mags[~keep] != 0):
        return array, False
    new_rows = np.where(keep, rows, np.zeros((), dtype=rows.dtype))
    moved_shape = np.moveaxis(array, axis, -1).shape
    return np.ascontiguousarray(np.moveaxis(new_rows.reshape(moved_shape), -1, axis)), True


def n_m_violations(array: np.ndarray, axis: int, n: int, m: int) -> tuple[int, int]:
    """(groups, groups with more than n non-zeros) of ``array`` along ``axis``, zero-padded to a multiple of m."""
    rows, pad = _groups_view(array, axis, m)
    nonzero = magnitudes(rows) != 0
    if pad:
        nonzero = np.pad(nonzero, ((0, 0), (0, pad)))
    per_group = nonzero.reshape(rows.shape[0], -1, m).sum(axis=-1)
    return int(per_group.size), int(np.count_nonzero(per_group > n))


def satisfies_pattern(n: int, m: int, tn: int, tm: int) -> bool:
    """Whether every aligned n:m-sparse vector is also tn:tm-sparse (e.g. 1:4 and 2:8 satisfy 2:4; 4:8 does not)."""
    if m % tm == 0:
        return min(n, tm) <= tn
    if tm % m == 0:
        return n * (tm // m) <= tn
    return False


def _compressed_bytes(groups: int, n: int, m: int, itemsize: int) -> int:
    """Bytes of the compressed N:M format: n values and n index fields of ⌈log2 m⌉ bits per group."""
    index_bits = max(1, math.ceil(math.log2(m)))
    return groups * n * itemsize + -(-(groups * n * index_bits) // 8)


def _target_effect(target: Any, n: int, m: int, density: float) -> tuple[int, str]:
    pattern = f"{n}:{m}"
    if target is None:
        return logging.INFO, (
            f"no target: {pattern} sparsity is estimated to run the pruned layers' matmuls up to ~2x faster on "
            "sparse tensor cores (2:4-compatible patterns only); dense CPU kernels: no change"
        )
    patterns = tuple(target.sparsity.n_m)
    fitting = [f"{tn}:{tm}" for tn, tm in patterns if satisfies_pattern(n, m, tn, tm)]
    if fitting:
        return logging.INFO, (
            f"{target.name} runs {fitting[0]} on sparse tensor cores: the pruned layers' matmuls are estimated up to "
            "~2x faster (estimated, not measured; TensorRT needs kSPARSE_WEIGHTS with fp16 or int8 and uses a sparse "
            "tactic only where it is faster)"
        )
    if patterns:
        listed = ", ".join(f"{tn}:{tm}" for tn, tm in patterns)
        return logging.WARNING, f"{target.name} runs {listed}; {pattern} does not satisfy it: no speed-up expected"
    if target.sparsity.unstructured == "compute":
        return logging.INFO, (
            f"{target.name}: no N:M hardware, but zeros are skipped: bit-operations scale with density "
            f"({density:.3f} of the pruned layers' weights remain)"
        )
    return logging.WARNING, (
        f"{target.name}: no N:M hardware: dense kernels, no speed-up (measured 0.99x for 2:4 on CPU); "
        "the file compresses, latency does not change"
    )


@register_pass
class PruneNMPass(OnnxpqPass):
    """Keep the N largest of every M consecutive weights along the reduction axis (2:4 for sparse tensor cores)."""

    name = "prune-nm"
    exact = False

    def __init__(
        self,
        n: int | None = None,
        m: int | None = None,
        *,
        exclude_nodes: tuple[str, ...] = (),
        min_params: int = 0,
        skip_indivisible: bool = True,
    ) -> None:
        if n is not None and n < 1:
            raise PipelineError(f"prune-nm: n must be >= 1, got {n}")
        if m is not None and m < 2:
            raise PipelineError(f"prune-nm: m must be >= 2, got {m}")
        if n is not None and m is not None and n >= m:
            raise PipelineError(f"prune-nm: n must be < m, got {n}:{m}")
        if min_params < 0:
            raise PipelineError(f"prune-nm: min_params must be >= 0, got {min_params}")
        self.n = n
        self.m = m
        self.exclude_nodes = tuple(exclude_nodes)
        self.min_params = min_params
        self.skip_indivisible = skip_indivisible

    def _pattern(self, ctx: PassContext) -> tuple[int, int, str]:
        """(n, m, where they came from): options first, then the target's first n_m pattern, then 2:4."""
        target = ctx.target
        listed = tuple(target.sparsity.n_m) if target is not None else ()
        fallback, source = (listed[0], f"target {target.name}") if listed else (_DEFAULT, "default")  # type: ignore[union-attr]
        n = self.n if self.n is not None else fallback[0]
        m = self.m if self.m is not None else fallback[1]
        if self.n is not None and self.m is not None:
            source = "options"
        elif self.n is not None or self.m is not None:
            source = f"options and {source}"
        if not 0 < n < m:
            raise PipelineError(f"prune-nm: pattern {n}:{m} (from {source}) needs 0 < n < m; set both n and m")
        return n, m, source

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        n, m, source = self._pattern(ctx)
        ctx.note("pattern", f"{n}:{m}")
        ctx.note("pattern_source", source)
        labels = {node_label(node, index) for index, node in enumerate(graph)}
        unknown = sorted(set(self.exclude_nodes) - labels)
        if unknown:
            logger.info("prune-nm: exclude_nodes names no node of the main graph: %s", ", ".join(unknown))
            ctx.note("exclude_nodes_unmatched", unknown)
        nested = untouched_nested_nodes(model, _OP_TYPES)
        if nested:
            logger.info("prune-nm: %d compute nodes inside subgraphs or functions are left untouched", nested)
            ctx.note("untouched_nested_nodes", nested)

        def accept(node: ir.Node, weight: ir.Value) -> str | None:
            shape = tuple(weight.const_value.shape)  # type: ignore[union-attr]
            axis = reduction_axis(node, len(shape))
            if axis is None:
                return f"weight of shape {list(shape)} has no reduction axis this pass handles"
            length = shape[axis]
            if length % m == 0 or not self.skip_indivisible:
                return None
            if node.op_type == "Conv" and length == 1 and _int_attr(node, "group", 1) > 1:
                return (
                    f"depthwise convolution: 1 input channel per group, no {n}:{m} pattern exists along the input "
                    "channels (TensorRT needs C % 4 == 0)"
                )
            what = "input channels per group" if node.op_type == "Conv" else "reduction length"
            return f"{what} {length} (axis {axis}) is not a multiple of {m}"

        uses, skipped = find_weight_uses(
            graph, _OP_TYPES, pass_name=self.name, exclude_nodes=self.exclude_nodes, min_params=self.min_params,
            accept=accept,
        )
        groups, shared_skips = group_by_weight(
            uses, lambda u: reduction_axis(u.node, len(u.weight.const_value.shape)), pass_name=self.name  # type: ignore[union-attr]
        )
        skipped.update(shared_skips)
        ctx.note("skipped", skipped)

        details: dict[str, dict[str, Any]] = {}
        pruned: list[str] = []
        total_groups = violations = zeros_total = params_total = dense_bytes = compressed = 0
        for group in groups:
            weight = group[0].weight
            array = weight.const_value.numpy()  # type: ignore[union-attr]
            axis = reduction_axis(group[0].node, array.ndim)
            assert axis is not None  # accept() checked it
            zeros_before = int(np.count_nonzero(magnitudes(array) == 0))
            new_array, changed = prune_n_m(array, axis, n, m)
            count, bad = n_m_violations(new_array, axis, n, m)
            if bad:
                raise RuntimeError(f"prune-nm: {bad} of {count} groups of '{weight.name}' break the {n}:{m} pattern")
            if changed:
                replace_initializer(graph, weight, new_array)
                pruned.extend(u.label for u in group)
            zeros = int(np.count_nonzero(magnitudes(new_array) == 0)) if changed else zeros_before
            length = array.shape[axis]
            entry = {
                "op_type": group[0].node.op_type,
                "weight": weight.name,
                "axis": axis,
                "reduction_length": length,
                "groups": count,
                "padded": length % m != 0,
                "params": int(array.size),
                "zeros_before": zeros_before,
                "zeros": zeros,
                "sparsity": round(zeros / array.size, 6),
            }
            for use in group:
                details[use.label] = entry
            total_groups += count
            zeros_total += zeros
            params_total += array.size
            dense_bytes += array.nbytes
            compressed += _compressed_bytes(count, n, m, array.dtype.itemsize)

        ctx.note("pruned_nodes", pruned)
        ctx.note("layers", details)
        ctx.note("sparsity_per_node", {label: entry["sparsity"] for label, entry in details.items()})
        ctx.note(
            "pattern_check",
            {"pattern": f"{n}:{m}", "layers": len(groups), "groups": total_groups, "violations": violations, "passed": True},
        )
        ctx.note(
            "estimated_gain",
            "estimated, not measured: sparse tensor cores (NVIDIA Ampere and later, 2:4) run the pruned layers' "
            "matmuls up to ~2x faster, less end to end; on CPU nothing changes (dense kernels, measured 0.99x)",
        )
        if not groups:
            logger.info("prune-nm: no layer takes a %d:%d pattern", n, m)
            return ir.passes.PassResult(model, False)
        density = 1.0 - zeros_total / params_total
        ctx.note("total_sparsity", round(1.0 - density, 6))
        ctx.note(
            "n_m_storage",
            {"dense_bytes": dense_bytes, "compressed_bytes": compressed, "ratio": round(compressed / dense_bytes, 4)},
        )
        level, effect = _target_effect(ctx.target, n, m, density)
        ctx.note("target_effect", effect)
        logger.info(
            "prune-nm: %d:%d on %d layers (%d groups checked), %.1f%% of their weights are zero",
            n, m, len(groups), total_groups, 100.0 * (1.0 - density),
        )
        logger.log(level, "prune-nm: %s", effect)
        return ir.passes.PassResult(model, bool(pruned))
