"""``prune-channels``: structured pruning that physically removes coupled channels.

Groups come from :class:`onnxpq.analysis.channel_groups.ChannelGroups`: every
parameter slice and activation axis that must shrink together, in *units*
(one channel, one attention head, one whole group of a grouped conv). Groups
the analysis cannot map, and groups that touch a node in ``exclude_nodes``,
are left as they are and listed with the reason in the pass notes.

Importance of a unit u (summed over the group's producer weights W, each
sliced along its output-channel axis; ``W_u`` is every producer slice of u):

* ``l1``: ``Σ |W_u|``; ``l2``: ``sqrt(Σ W_u²)`` (the group norm of DepGraph);
* ``bn-scale``: ``Σ |γ_u|`` over the group's BatchNormalization scales (Network
  Slimming, Liu et al. 2017); groups without a BatchNormalization use ``l1``;
* ``activation`` (data-aware): the output error the group's consumers suffer
  when the unit is replaced by its mean, measured where the consumers read it
  — *after* the nonlinearity (ReLU6, GELU, a depthwise conv, ...)::

      score_u = Σ_consumers Σ_{e ∈ u} Var[x_e] · ||W[:, e]||²

  (``x_e``: the consumer's input element on the calibration data, ``W[:, e]``
  its weight slice over outputs and kernel offsets; ``E[x_e²]`` instead of the
  variance where the consumer has no bias to compensate into, or with
  ``compensate=false``). A channel that only passes a constant (a folded-BN
  bias through ReLU6) scores 0 — L1 on weights cannot see that. Consumers are
  Conv (group 1), Gemm and 2-D-weight MatMul; a group without one falls back
  to ``Σ mean |y_u|`` over the producers' outputs (``activation-output``);
* ``auto`` (default): ``activation`` when the context has calibration data,
  else ``l1``.

Compensation (``compensate``, on by default). Removing input element e of a
consumer drops ``W[:, e] · x_e`` from its output; replacing x_e by a constant
``μ_e`` keeps the output's mean::

    b'_consumer = b_consumer + α · Σ_{removed e} Σ_k W[:, e, k] · μ_e

(k: kernel offsets; α: Gemm's alpha, C gets ``/β``). With calibration data μ_e
is the mean of x_e in the unpruned model; without, it is the value the
consumer reads when the removed channels' producer weights are zero (their
bias through whatever follows: the constant channel; measured on two
synthesised inputs). A Conv gets a bias when it had none; a MatMul needs a
following Add of a constant vector (else no compensation, and the importance
uses ``E[x²]``). Zero padding at a conv's border sees 0, not μ, there.

Selection. Each group is split into *sections* (the units of the same
producers: a Concat's inputs are separate sections). ``scope=layer``: every
section drops ``floor(ratio · units)`` of its least important units (its
producer node's ``per_node`` ratio when given; the smallest when a section
has several producers with overrides). ``scope=global``: importances are
divided by their group's mean and ranked together; the least important units
go until ``ratio`` of all channels (sections with a ``per_node`` ratio keep
their own). Then, per section, the kept count is raised to a multiple of
``multiple`` channels (``multiple`` from the target's
``sparsity.channel_multiple`` by default; a section smaller than one multiple
is left whole) and to at least ``min_channels``; every tensor keeps at least
one element along each pruned axis.

Pruning slices every member constant into a new initializer (never in place),
updates activation shapes, and rewrites what encodes channel counts: Conv
and ConvTranspose ``group``, Reshape target shapes (the constant, or the
constant piece of a Concat, copied for this Reshape when shared), Split
sizes, Slice starts/ends. Graph inputs and outputs never change shape (the
analysis refuses groups that reach them).

Reconstruction (``reconstruct``: ``on``; ``auto`` = on when the context has
calibration data) refits every layer whose input channels were removed — Conv
(group 1, any kernel, by im2col), Gemm and MatMul with a constant weight — by
ridge least squares against the unpruned model's outputs, with the ridge
strength chosen by k-fold cross-validation over groups of near-duplicate
calibration samples unless ``damping`` fixes it; see
:mod:`onnxpq.passes.prune.reconstruction` for the math. A refit is kept only
when it lowers the layer's held-out output error. ``reconstruct_inputs``:

* ``original`` (He et al.; ThiNet): the layer's inputs X come from the
  *unpruned* model, restricted to the kept channels; every layer's statistics
  are collected in one streamed run (per chunk of layers) before any edit.
* ``pruned``: layers are refitted in dependency order, each with X from the
  pruned model as refitted so far (one run per level of layers, the pruned and
  the original model side by side), so a layer also corrects the error its
  inputs already carry; slower (a run per level), a little better on deep nets.

End-to-end check. Per-layer gains need not add up: on a transformer, refits
that each lower their own layer's held-out error can together move the
model's output further from the unpruned model's than compensation alone
does. So the refits stay only when they lower the *model's* output error on
held-out calibration samples::

    E = mean over float outputs of Σ_samples ||ŷ − y||² / Σ_samples ||y||²

(y: the unpruned model's outputs; ``10 · log10(1 / E)`` is the SQNR), measured
for the pruned model without refits (compensation only) and with them — where
each sample of fold f runs every refitted layer with the fit that never saw
fold f (the folds of the ridge search), so no sample is judged by weights
fitted on it. Both variants run in one onnxruntime session (the refitted
weights fed as inputs), after one run of the unpruned model for y. The refits
stay, all of them, when E with them is lower by at least 0.1 %; else every
refit is undone and the model is the one ``reconstruct=off`` gives. When no
sample can be held out (one calibration sample, so one fold) or no float
output has one row per sample, the per-layer decisions stand, and the notes
and the log say so. With ``reconstruct_inputs=pruned`` a layer's statistics
come from inputs that earlier refits (fitted on every fold) already shaped: the
check is held out for each layer's own weights only. Memory: the unpruned
model's outputs on the calibration data, and k + 1 copies of the refitted
layers' weights (k folds, and the weights without refit).

Layers left out of reconstruction: ConvTranspose, grouped Conv, a weight or
bias that is not an initializer, a weight shared by several nodes (tying is
kept), more than 8192 input features. Bias: a Conv or Gemm gets (or updates)
its own; a MatMul followed by an Add of a constant vector updates that vector.

Notes (``PassContext.note``): ``pruned_groups`` — per group its producers,
channels before and after, units removed, block, the importance used and, per
refitted layer, the relative output error ``||Y − Ŷ||² / ||Y||²`` before and
after on the calibration rows and held out, the chosen damping and whether the
refit was applied (with the reason when not); ``reconstruction_check`` — the
end-to-end check: ``checked``, and either ``reason`` or ``samples``, ``folds``,
``outputs``, ``heldout_output_error_without_refits`` and
``heldout_output_error_with_refits`` (E above) and ``refits_kept``;
``unprunable_groups`` and ``excluded_groups`` with their reasons; totals
``channels_before`` / ``channels_after``.

Our own code: onnxruntime and onnx-ir have no structured pruning; Torch-Pruning
and NNI work on PyTorch modules. Sessions and batching reuse
:mod:`onnxpq.passes.quantize.calibration`'s runner (initializers handed over
without copies, only the needed nodes kept).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import onnx_ir as ir

from onnxpq.analysis.channel_groups import ChannelGroup, ChannelGroups, Key, NodeUpdate, node_labels
from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.pipeline_text import parse_node_values
from onnxpq.core.registry import register_pass
from onnxpq.errors import DataError, PipelineError
from onnxpq.passes.prune.reconstruction import LayerStatistics, _lowers, conv_patches, refit, sample_folds

__all__ = ["PruneChannelsPass"]

logger = logging.getLogger(__name__)

Importance = Literal["auto", "l1", "l2", "bn-scale", "activation"]
Scope = Literal["layer", "global"]
Reconstruct = Literal["auto", "on", "off"]
ReconstructInputs = Literal["original", "pruned"]

#: Samples fed to onnxruntime at once (when the model's batch axis is free).
_BATCH_SIZE = 16

#: Tensors requested from one onnxruntime session (bounds one batch's extra outputs).
_TENSORS_PER_RUN = 32

#: Layers with more input features than this (C_in · prod(kernel)) are not refitted (G would be too large).
_MAX_FEATURES = 8192

_ONNX_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- small helpers


def _constant_array(value: ir.Value) -> np.ndarray:
    """The array of an initializer or of a Constant node's output (``value`` or ``value_int(s)/float(s)``),
    also through Identity nodes (exporters copy deduplicated tensors with them)."""
    while value.const_value is None and value.producer() is not None and value.producer().op_type == "Identity":  # type: ignore[union-attr]
        value = value.producer().inputs[0]  # type: ignore[union-attr, assignment]
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        if "value" in producer.attributes:
            return np.asarray(producer.attributes["value"].value.numpy())
        for name in ("value_int", "value_ints", "value_float", "value_floats"):
            if name in producer.attributes:
                return np.asarray(producer.attributes[name].value, dtype=np.int64 if "int" in name else np.float32)
    raise PipelineError(f"prune-channels: '{value.name}' is not a constant")


def _const_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of a constant (initializer, Constant output, through Identity nodes) without reading it; else None."""
    for _ in range(16):
        if value is None or value.is_graph_input():
            return None
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape)
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "Constant":
            attr = producer.attributes.get("value")
            return tuple(int(d) for d in attr.value.shape) if attr is not None else tuple(_constant_array(value).shape)
        if producer.op_type != "Identity":
            return None
        value = producer.inputs[0]
    return None


class _Names:
    """Unique value names for the tensors the pass creates; small integer constants are shared."""

    def __init__(self, model: ir.Model) -> None:
        self.used: set[str] = set()
        for graph in model.graphs():
            self.used.update(v.name for v in (*graph.inputs, *graph.outputs) if v.name)
            self.used.update(graph.initializers)
            for node in graph:
                self.used.update(v.name for v in node.outputs if v.name)
                if node.name:
                    self.used.add(node.name)
        self.shared: dict[tuple[str, str, tuple[int, ...], bytes], ir.Value] = {}

    def __call__(self, base: str) -> str:
        name, index = base, 1
        while name in self.used:
            name, index = f"{base}_{index}", index + 1
        self.used.add(name)
        return name


def _shared_constant(graph: ir.Graph, names: _Names, base: str, array: np.ndarray) -> ir.Value:
    """A new int64 shape/size constant, one per distinct content (three Reshapes rewritten alike share one)."""
    array = np.ascontiguousarray(array, dtype=np.int64)
    key = (base, array.dtype.str, array.shape, array.tobytes())
    value = names.shared.get(key)
    if value is None or value.graph is not graph:
        value = _new_initializer(graph, names, base, array)
        names.shared[key] = value
    return value


def _new_initializer(graph: ir.Graph, names: _Names, base: str, array: np.ndarray) -> ir.Value:
    name = names(base)
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _remove_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Drop an initializer, Constant or Identity-of-a-constant that nothing reads any more."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    if value.is_initializer() and graph.initializers.get(value.name or "") is value:
        del graph.initializers[value.name]
        return
    producer = value.producer()
    if producer is None or producer.graph is not graph or any(o.uses() or o.is_graph_output() for o in producer.outputs):
        return
    if producer.op_type == "Constant":
        graph.remove(producer, safe=True)
    elif producer.op_type == "Identity" and producer.inputs and producer.inputs[0] is not None:
        source = producer.inputs[0]
        graph.remove(producer, safe=True)
        _remove_if_unused(graph, source)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.value)


def _parse_per_node(items: tuple[str, ...]) -> dict[str, float]:
    return parse_node_values(
        items, where="prune-channels: per_node", kind=float, check=lambda r: 0.0 <= r < 1.0, expected="a ratio in [0, 1)",
        form="name:ratio",
    )


def _check_choice(option: str, value: object, annotation: object) -> None:
    choices = get_args(annotation)
    if value not in choices:
        raise PipelineError(f"prune-channels: {option} must be one of {', '.join(map(str, choices))}; got {value!r}")


# --------------------------------------------------------------------------- plan


@dataclass
class _SectionPlan:
    """One section of a group: its units, scores, and what the selection decided."""

    group: ChannelGroup
    producers: tuple[str, ...]  # producer node labels
    units: np.ndarray
    scores: np.ndarray  # per unit of the section (inf: never removed)
    unit_multiple: int
    min_units: int
    ratio: float
    overridden: bool
    block: int
    group_mean: float  # mean finite importance of the whole group (global scope divides by it)
    removed: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.units.size)


@dataclass
class _Job:
    """A layer whose input channels were removed: what to collect and how to write the refit back."""

    node: ir.Node
    label: str
    kind: str  # "conv" | "gemm" | "matmul"
    x: ir.Value
    y: ir.Value
    in_keep: np.ndarray
    out_keep: np.ndarray
    intercept: str | None  # "bias" | "add" | None
    add_node: ir.Node | None = None
    stats: LayerStatistics | None = None
    samples: int = 0  # samples accumulated so far (sample i goes to fold ``folds[i]``)
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    conv: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Consumer:
    """A layer that reads a group's channels through a constant weight (Conv group 1, Gemm, 2-D MatMul).

    ``units``: the group unit of each input element; ``bias``: where a shift of the layer's output
    can be written (``conv`` bias, ``gemm`` C, the ``add`` of a constant vector after a MatMul) or None.
    """

    node: ir.Node
    label: str
    x: str
    x_axis: int  # channel axis of the input (−1: the last)
    weight: str
    w_in_axis: int
    w_out_axis: int
    units: np.ndarray
    bias: str | None
    alpha: float = 1.0
    add_node: ir.Node | None = None

    @property
    def key(self) -> Key:
        return (self.x, self.x_axis)


@register_pass
class PruneChannelsPass(OnnxpqPass):
    """Remove whole output channels of Conv/Gemm/MatMul and everything coupled to them (lossy)."""

    name = "prune-channels"
    exact = False

    def __init__(
        self,
        ratio: float = 0.5,
        *,
        importance: Importance = "auto",
        scope: Scope = "layer",
        per_node: tuple[str, ...] = (),
        multiple: int | None = None,
        reconstruct: Reconstruct = "auto",
        reconstruct_inputs: ReconstructInputs = "original",
        min_channels: int = 1,
        exclude_nodes: tuple[str, ...] = (),
        damping: float | None = None,
        compensate: bool = True,
    ) -> None:
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise PipelineError(f"prune-channels: ratio must be in [0, 1), got {ratio}")
        _check_choice("importance", importance, Importance)
        _check_choice("scope", scope, Scope)
        _check_choice("reconstruct", reconstruct, Reconstruct)
        _check_choice("reconstruct_inputs", reconstruct_inputs, ReconstructInputs)
        if multiple is not None and (not isinstance(multiple, int) or multiple < 1):
            raise PipelineError(f"prune-channels: multiple must be a positive integer or none, got {multiple}")
        if not isinstance(min_channels, int) or min_channels < 1:
            raise PipelineError(f"prune-channels: min_channels must be a positive integer, got {min_channels}")
        if damping is not None and (not isinstance(damping, (int, float)) or not damping > 0.0):
            raise PipelineError(f"prune-channels: damping must be a positive number or none, got {damping}")
        _parse_per_node(tuple(per_node))
        self.ratio = float(ratio)
        self.importance = importance
        self.scope = scope
        self.per_node = tuple(per_node)
        self.multiple = multiple
        self.reconstruct = reconstruct
        self.reconstruct_inputs = reconstruct_inputs
        self.min_channels = min_channels
        self.exclude_nodes = tuple(exclude_nodes)
        self.damping = None if damping is None else float(damping)
        self.compensate = bool(compensate)

    # ---------------------------------------------------------------- driver

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        data = ctx.calibration
        reconstruct = self.reconstruct == "on" or (self.reconstruct == "auto" and data is not None)
        if data is None and self.reconstruct == "on":
            raise PipelineError("prune-channels: reconstruct=on needs calibration data (--calibration or --data)")
        if data is None and self.importance == "activation":
            raise PipelineError("prune-channels: importance=activation needs calibration data (--calibration or --data)")
        importance = self.importance if self.importance != "auto" else ("activation" if data is not None else "l1")
        multiple = self.multiple if self.multiple is not None else (ctx.target.sparsity.channel_multiple if ctx.target else 1)
        overrides = _parse_per_node(self.per_node)

        analysis = ctx.analyses.get(ChannelGroups, model)
        labels = node_labels(model.graph)
        nodes = {label: node for node, label in labels.items()}
        unknown = sorted(set(overrides) - set(nodes))
        if unknown:
            logger.warning("prune-channels: per_node names no node of the graph: %s", ", ".join(unknown))

        unprunable = [
            {"group": g.index, "channels": g.channels, "producers": list(g.producers), "reason": g.reason}
            for g in analysis.groups
            if not g.prunable
        ]
        candidates: list[ChannelGroup] = []
        excluded = []
        for group in analysis.prunable:
            hit = sorted(set(group.nodes) & set(self.exclude_nodes))
            if hit:
                reason = f"touches excluded node(s) {', '.join(hit)}"
                excluded.append({"group": group.index, "producers": list(group.producers), "reason": reason})
                logger.debug("prune-channels: group %d left whole: touches excluded %s", group.index, hit)
                continue
            if group.units < 2:
                continue
            candidates.append(group)
        for item in unprunable:
            logger.debug("prune-channels: group %d unprunable: %s", item["group"], item["reason"])

        consumers = {g.index: _weighted_consumers(g, nodes) for g in candidates}
        moments: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
        if data is not None and candidates and (importance == "activation" or self.compensate):
            moments = _input_moments(model, [c.key for cs in consumers.values() for c in cs], data)
        scores, used = self._importance(model, candidates, data, importance, consumers, moments)
        sections = self._sections(candidates, scores, multiple, overrides)
        if self.scope == "global":
            self._select_global(sections)
        else:
            for section in sections:
                self._select_layer(section)
        removed = self._removed_units(candidates, sections, scores)

        ctx.note("unprunable_groups", unprunable)
        if excluded:
            ctx.note("excluded_groups", excluded)
        ctx.note("importance", importance)
        ctx.note("multiple", multiple)
        if not any(r.size for r in removed.values()):
            ctx.note("pruned_groups", [])
            ctx.note("reconstruction", "not needed" if reconstruct else "off")
            logger.info("prune-channels: nothing to remove (%d prunable groups)", len(candidates))
            return ir.passes.PassResult(model, False)

        keep = self._keep_masks(candidates, removed)
        shifts: dict[str, tuple[_Consumer, np.ndarray]] = {}
        if self.compensate:
            if data is None:
                moments = _constant_means(model, candidates, removed, consumers)
            shifts = _bias_shifts(candidates, removed, consumers, moments)
        ctx.note("compensation", "off" if not self.compensate else "measured means" if data is not None else "constant channels")
        jobs, skipped = self._jobs(candidates, removed, keep, labels) if reconstruct else ([], {})
        sequential = bool(jobs) and self.reconstruct_inputs == "pruned"
        original = model.clone() if sequential else None
        folds = np.zeros(0, dtype=np.int64)
        reference: _Reference | None = None
        if jobs:
            folds = sample_folds(data)  # type: ignore[arg-type]
            for job in jobs:
                job.folds = folds
            ctx.note("calibration_folds", np.bincount(folds).tolist() if folds.size else [])
            reference, why_not = _reference_outputs(model, data, folds)  # type: ignore[arg-type]
            if reference is None:
                ctx.note("reconstruction_check", {"checked": False, "reason": why_not})
                logger.info("prune-channels: no end-to-end check of the refits (%s); per-layer decisions only", why_not)
        if jobs and not sequential:
            self._collect(model, jobs, data)  # type: ignore[arg-type]
        names = _Names(model)
        self._slice(model, candidates, removed, keep, nodes, names)
        self._apply_updates(model, candidates, keep, nodes, names)
        for consumer, shift in shifts.values():
            _add_bias_shift(model.graph, consumer, shift, keep, names)
        written: list[_Written] = []
        cross_fit = reference is not None
        if sequential:
            for level in _levels(model, jobs):
                self._collect_sequential(model, original, level, data)  # type: ignore[arg-type]
                written += [w for job in level if (w := self._refit(model, job, names, cross_fit)) is not None]
        else:
            written = [w for job in jobs if (w := self._refit(model, job, names, cross_fit)) is not None]
        keep = True
        if reference is not None and written:
            keep, check = _check_end_to_end(model, written, data, folds, reference)  # type: ignore[arg-type]
            ctx.note("reconstruction_check", check)
        elif reference is not None:
            reason = "no layer's refit lowered its held-out error"
            ctx.note("reconstruction_check", {"checked": False, "reason": reason})
        for item in written:
            if keep:
                _keep_edits(model.graph, item.edits)
            else:
                _undo_edits(model.graph, item.edits)
                item.job.result.update(
                    applied=False,
                    error_after=item.job.result["error_before"],
                    heldout_error_after=item.job.result["heldout_error_before"],
                    reason="the model's held-out output error is not lower with this refit (end-to-end check)",
                )

        records = []
        jobs_by_node = {job.label: job for job in jobs}
        for group in candidates:
            gone = removed[group.index]
            if not gone.size:
                continue
            kept_units = group.units - gone.size
            record: dict[str, Any] = {
                "group": group.index,
                "producers": list(group.producers),
                "channels_before": group.channels,
                "channels_after": kept_units * group.block,
                "units_removed": int(gone.size),
                "block": group.block,
                "importance": used.get(group.index, self.importance),
            }
            if reconstruct:
                record["reconstruction"] = [
                    jobs_by_node[c].result if c in jobs_by_node else {"node": c, "applied": False, "reason": skipped[c]}
                    for c in group.consumers
                    if c in jobs_by_node or c in skipped
                ]
            records.append(record)
        ctx.note("pruned_groups", records)
        ctx.note("reconstruction", "on" if reconstruct else "off")
        before = sum(r["channels_before"] for r in records)
        after = sum(r["channels_after"] for r in records)
        ctx.note("channels_before", before)
        ctx.note("channels_after", after)
        logger.info(
            "prune-channels: %d of %d prunable groups pruned, channels %d -> %d; %d groups unprunable; %d layers refitted",
            len(records), len(candidates), before, after, len(unprunable),
            sum(1 for j in jobs if j.result.get("applied")),
        )
        return ir.passes.PassResult(model, True)

    # ---------------------------------------------------------------- importance

    def _importance(
        self,
        model: ir.Model,
        groups: list[ChannelGroup],
        data: Mapping[str, np.ndarray] | None,
        importance: str,
        consumers: dict[int, list[_Consumer]],
        moments: dict[Key, tuple[np.ndarray, np.ndarray]],
    ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Score of every unit of every group (inf: a unit no producer owns, never removed)."""
        values = _main_values(model)
        activations: dict[Key, np.ndarray] = {}
        fallback = [g for g in groups if not consumers.get(g.index)]
        if importance == "activation" and fallback:
            activations = _mean_abs_activations(model, fallback, data or {}, values)  # type: ignore[arg-type]
        scores: dict[int, np.ndarray] = {}
        used: dict[int, str] = {}
        for group in groups:
            method = importance
            total = np.zeros(group.units)
            if method == "bn-scale":
                scales = [m for m in group.members if m.role == "bn-scale"]
                if scales:
                    for member in scales:
                        gamma = np.abs(_constant_array(values[member.value]).astype(np.float64).reshape(-1))
                        total += np.bincount(member.units, weights=gamma, minlength=group.units)
                else:
                    method = "l1"
            if method == "activation" and consumers.get(group.index):
                for consumer in consumers[group.index]:
                    mean, square = moments[consumer.key]
                    spread = square - mean * mean if (self.compensate and consumer.bias) else square
                    weight = _constant_array(values[consumer.weight]).astype(np.float64)
                    other = tuple(a for a in range(weight.ndim) if a != consumer.w_in_axis)
                    norms = np.square(weight).sum(axis=other) * consumer.alpha**2
                    total += np.bincount(consumer.units, weights=np.maximum(spread, 0.0) * norms, minlength=group.units)
            elif method == "activation":
                method = "activation-output"
                for key, mean_abs in activations.items():
                    member = group.member(*key)
                    if member is not None:
                        total += np.bincount(member.units, weights=mean_abs, minlength=group.units)
            if method in ("l1", "l2"):
                for member in group.members:
                    if member.role != "producer":
                        continue
                    array = _constant_array(values[member.value]).astype(np.float64)
                    other = tuple(a for a in range(array.ndim) if a != member.axis)
                    per_element = np.abs(array).sum(axis=other) if method == "l1" else np.square(array).sum(axis=other)
                    total += np.bincount(member.units, weights=per_element, minlength=group.units)
                if method == "l2":
                    total = np.sqrt(total)
            owned = np.zeros(group.units, dtype=bool)
            for member in group.members:
                if member.role == "producer":
                    owned[member.units] = True
            total[~owned] = np.inf
            scores[group.index] = total
            used[group.index] = method
        return scores, used

    # ---------------------------------------------------------------- selection

    def _sections(
        self,
        groups: list[ChannelGroup],
        scores: dict[int, np.ndarray],
        multiple: int,
        overrides: dict[str, float],
    ) -> list[_SectionPlan]:
        plans = []
        for group in groups:
            producer_nodes = {m.value: m.nodes for m in group.members if m.role == "producer"}
            finite = scores[group.index][np.isfinite(scores[group.index])]
            group_mean = float(finite.mean()) if finite.size else 0.0
            for section in group.sections:
                nodes = tuple(dict.fromkeys(n for w in section.producers for n in producer_nodes.get(w, ())))
                ratios = [overrides[n] for n in nodes if n in overrides]
                blocks = list(section.blocks.values())
                if multiple > 1 and all(b is not None for b in blocks):
                    unit_multiple = 1
                    for b in blocks:
                        unit_multiple = math.lcm(unit_multiple, multiple // math.gcd(multiple, b))  # type: ignore[arg-type]
                else:
                    unit_multiple = 1
                    if multiple > 1:
                        logger.debug(
                            "prune-channels: group %d: units of unequal size; multiple=%d not enforced", group.index, multiple
                        )
                smallest_block = min((b for b in blocks if b), default=1)
                plans.append(
                    _SectionPlan(
                        group=group,
                        producers=nodes,
                        units=section.units,
                        scores=scores[group.index][section.units],
                        unit_multiple=unit_multiple,
                        min_units=max(1, -(-self.min_channels // smallest_block)),
                        ratio=min(ratios) if ratios else self.ratio,
                        overridden=bool(ratios),
                        block=smallest_block,
                        group_mean=group_mean,
                    )
                )
        return plans

    def _select_layer(self, section: _SectionPlan) -> None:
        remove = int(math.floor(section.ratio * section.size + 1e-9))
        self._finish(section, section.size - remove, np.argsort(section.scores, kind="stable"))

    def _finish(self, section: _SectionPlan, keep: int, order: np.ndarray) -> None:
        """Keep ``keep`` units (raised to the minimum and to a multiple), removing the lowest of ``order``."""
        keep = max(keep, section.min_units)
        if section.unit_multiple > 1:
            keep = -(-keep // section.unit_multiple) * section.unit_multiple
        removable = [int(i) for i in order if np.isfinite(section.scores[i])]
        count = max(0, min(section.size - keep, len(removable)))
        if section.unit_multiple > 1 and (section.size - count) % section.unit_multiple:
            count = 0  # a section whose size is not a multiple stays whole rather than break the multiple
        section.removed = [int(section.units[i]) for i in removable[:count]]

    def _select_global(self, sections: list[_SectionPlan]) -> None:
        pooled = [s for s in sections if not s.overridden]
        for section in sections:
            if section.overridden:
                self._select_layer(section)
        if not pooled:
            return
        items = []
        total_channels = 0.0
        for index, section in enumerate(pooled):
            scores = section.scores
            normalised = scores / section.group_mean if section.group_mean > 0 else scores
            block = section.block
            total_channels += section.size * block
            for unit in range(section.size):
                if np.isfinite(scores[unit]):
                    items.append((float(normalised[unit]), index, unit, block))
        items.sort(key=lambda item: (item[0], item[1], item[2]))
        budget = self.ratio * total_channels
        removed: dict[int, list[int]] = {i: [] for i in range(len(pooled))}
        spent = 0.0
        for _, index, unit, block in items:
            if spent + block > budget + 1e-9:
                continue
            section = pooled[index]
            if section.size - len(removed[index]) - 1 < section.min_units:
                continue
            removed[index].append(unit)
            spent += block
        for index, section in enumerate(pooled):
            chosen = removed[index]
            rest = [u for u in np.argsort(section.scores, kind="stable").tolist() if u not in chosen]
            self._finish(section, section.size - len(chosen), np.asarray(chosen + rest, dtype=np.int64))

    def _removed_units(
        self, groups: list[ChannelGroup], sections: list[_SectionPlan], scores: dict[int, np.ndarray]
    ) -> dict[int, np.ndarray]:
        """Removed units per group, after making sure every member keeps at least one element."""
        removed: dict[int, set[int]] = {g.index: set() for g in groups}
        for section in sections:
            removed[section.group.index].update(section.removed)
        result = {}
        for group in groups:
            gone = removed[group.index]
            changed = True
            while changed and gone:
                changed = False
                for member in group.members:
                    mask = np.isin(member.units, list(gone))
                    if mask.all():
                        candidates = np.unique(member.units)
                        best = max(candidates.tolist(), key=lambda u: (scores[group.index][u], -u))
                        gone.discard(best)
                        logger.debug(
                            "prune-channels: group %d: unit %d kept so that '%s' keeps an element",
                            group.index, best, member.value,
                        )
                        changed = True
            result[group.index] = np.asarray(sorted(gone), dtype=np.int64)
        return result

    @staticmethod
    def _keep_masks(groups: list[ChannelGroup], removed: dict[int, np.ndarray]) -> dict[Key, np.ndarray]:
        keep: dict[Key, np.ndarray] = {}
        for group in groups:
            gone = removed[group.index]
            if not gone.size:
                continue
            for member in group.members:
                mask = ~np.isin(member.units, gone)
                if not mask.all():
                    keep[(member.value, member.axis)] = mask
        return keep

    # ---------------------------------------------------------------- editing

    @staticmethod
    def _slice(
        model: ir.Model,
        groups: list[ChannelGroup],
        removed: dict[int, np.ndarray],
        keep: dict[Key, np.ndarray],
        nodes: dict[str, ir.Node],
        names: _Names,
    ) -> None:
        """New sliced initializers for member constants (all uses, or the member's one use); new activation shapes."""
        graph = model.graph
        values = _main_values(model)
        constants: dict[tuple[str, tuple[str, int] | None], dict[int, np.ndarray]] = {}
        for group in groups:
            if not removed[group.index].size:
                continue
            for member in group.members:
                mask = keep.get((member.value, member.axis))
                if mask is None:
                    continue
                if member.constant:
                    constants.setdefault((member.value, member.use), {})[member.axis] = mask
                    continue
                value = values[member.value]
                if value.shape is not None and member.axis < len(value.shape):
                    dims = list(value.shape)
                    dims[member.axis] = int(mask.sum())
                    value.shape = ir.Shape(dims)
        for (name, use), masks in constants.items():
            old = values[name]
            array = _constant_array(old)
            for axis, mask in sorted(masks.items()):
                array = np.compress(mask, array, axis=axis)
            new = _new_initializer(graph, names, f"{name}_pruned", array)
            if use is None:
                old.replace_all_uses_with(new)
            else:
                nodes[use[0]].replace_input_with(use[1], new)
            _remove_if_unused(graph, old)

    def _apply_updates(
        self,
        model: ir.Model,
        groups: list[ChannelGroup],
        keep: dict[Key, np.ndarray],
        nodes: dict[str, ir.Node],
        names: _Names,
    ) -> None:
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        sizes = {(m.value, m.axis): m.size for g in groups for m in g.members}
        reshapes: dict[str, list[tuple[NodeUpdate, int]]] = {}
        for group in groups:
            for update in group.updates:
                if not any(key in keep for key in update.keys):
                    continue
                node = nodes[update.node]
                if update.kind == "group":
                    kept = _kept(keep, update.keys[0], sizes)
                    node.attributes["group"] = ir.AttrInt64("group", kept // int(update.data["per_group"]))
                elif update.kind == "reshape":
                    reshapes.setdefault(update.node, []).append((update, _kept(keep, update.keys[0], sizes)))
                elif update.kind == "split":
                    self._update_split(graph, node, [_kept(keep, key, sizes) for key in update.keys[1:]], opset, names)
                elif update.kind == "slice":
                    self._update_slice(graph, node, update, keep, opset, names)
        pieces: dict[tuple[int, frozenset[tuple[int, int, int]]], list[ir.Node]] = {}
        for label, entries in reshapes.items():
            node = nodes[label]
            changes = self._update_reshape_constant(graph, node, entries, names)
            if changes:
                pieces.setdefault((id(node.inputs[1]), frozenset(changes)), []).append(node)
        for (_, changes), readers in pieces.items():
            self._update_reshape_pieces(graph, readers, dict(((i, o), n) for i, o, n in changes), names)

    @staticmethod
    def _update_split(graph: ir.Graph, node: ir.Node, sizes: list[int], opset: int, names: _Names) -> None:
        if opset < 13:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
            return
        value = _shared_constant(graph, names, f"{node.name or 'split'}_sizes", np.asarray(sizes, dtype=np.int64))
        old = node.inputs[1] if len(node.inputs) > 1 else None
        if len(node.inputs) < 2:
            node.resize_inputs(2)
        node.replace_input_with(1, value)
        node.attributes.pop("num_outputs", None)
        if old is not None:
            _remove_if_unused(graph, old)

    @staticmethod
    def _update_slice(
        graph: ir.Graph, node: ir.Node, update: NodeUpdate, keep: dict[Key, np.ndarray], opset: int, names: _Names
    ) -> None:
        """New starts/ends: the kept input elements before the old start, and those inside the old range."""
        start, end, position = int(update.data["start"]), int(update.data["end"]), int(update.data["position"])
        mask = keep.get(update.keys[0])
        if mask is None:
            return
        new_start = int(mask[:start].sum())
        new_end = new_start + int(mask[start:end].sum())
        if opset < 10:
            for attr, new in (("starts", new_start), ("ends", new_end)):
                entries = [int(v) for v in node.attributes[attr].value]
                entries[position] = new
                node.attributes[attr] = ir.AttrInt64s(attr, entries)
            return
        for index, new in ((1, new_start), (2, new_end)):
            old = node.inputs[index]
            array = _constant_array(old).astype(np.int64).reshape(-1).copy()  # type: ignore[arg-type]
            array[position] = new
            value = _shared_constant(graph, names, f"{old.name or 'slice'}_pruned", array)  # type: ignore[union-attr]
            node.replace_input_with(index, value)
            _remove_if_unused(graph, old)  # type: ignore[arg-type]

    @staticmethod
    def _update_reshape_constant(
        graph: ir.Graph, node: ir.Node, entries: list[tuple[NodeUpdate, int]], names: _Names
    ) -> set[tuple[int, int, int]]:
        """Rewrite a constant target shape; return the (Concat input, offset, size) changes of a computed one."""
        const_changes: dict[int, int] = {}
        piece_changes: set[tuple[int, int, int]] = set()
        for update, size in entries:
            source = update.data["source"]
            if source[0] == "const":
                const_changes[int(update.data["position"])] = size
            elif source[0] == "piece":
                piece_changes.add((int(source[2]), int(source[3]), size))
        shape = node.inputs[1]
        if const_changes:
            array = _constant_array(shape).astype(np.int64).reshape(-1).copy()  # type: ignore[arg-type]
            for position, size in const_changes.items():
                array[position] = size
            value = _shared_constant(graph, names, f"{shape.name or 'shape'}_pruned", array)  # type: ignore[union-attr]
            node.replace_input_with(1, value)
            _remove_if_unused(graph, shape)  # type: ignore[arg-type]
        return piece_changes

    @staticmethod
    def _update_reshape_pieces(
        graph: ir.Graph, readers: list[ir.Node], changes: dict[tuple[int, int], int], names: _Names
    ) -> None:
        """Rewrite constant pieces of a Concat target shape: in place when only ``readers`` read it, else in one copy."""
        shape = readers[0].inputs[1]
        concat = shape.producer()  # type: ignore[union-attr]
        assert concat is not None  # the analysis checked that the entry is a constant piece of a Concat
        others = [u for u in shape.uses() if u.node not in readers]  # type: ignore[union-attr]
        if others or shape.is_graph_output():  # type: ignore[union-attr]
            copy = ir.Node(
                concat.domain, "Concat", inputs=list(concat.inputs), attributes=list(concat.attributes.values()),
                name=names(f"{concat.name or 'shape'}_pruned"), num_outputs=1,
            )
            copy.outputs[0].name = names(f"{shape.name or 'shape'}_pruned")  # type: ignore[union-attr]
            copy.outputs[0].type = shape.type  # type: ignore[union-attr]
            copy.outputs[0].shape = shape.shape  # type: ignore[union-attr]
            graph.insert_after(concat, copy)
            for reader in readers:
                reader.replace_input_with(1, copy.outputs[0])
            concat = copy
        for index in sorted({i for i, _ in changes}):
            piece = concat.inputs[index]
            array = _constant_array(piece).astype(np.int64).reshape(-1).copy()  # type: ignore[arg-type]
            for (i, offset), size in changes.items():
                if i == index:
                    array[offset] = size
            value = _shared_constant(graph, names, f"{piece.name or 'shape'}_pruned", array)  # type: ignore[union-attr]
            concat.replace_input_with(index, value)
            _remove_if_unused(graph, piece)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- reconstruction

    @staticmethod
    def _jobs(
        groups: list[ChannelGroup],
        removed: dict[int, np.ndarray],
        keep: dict[Key, np.ndarray],
        labels: dict[ir.Node, str],
    ) -> tuple[list[_Job], dict[str, str]]:
        """Reconstruction jobs of the consumers whose input channels go; the others with the reason."""
        nodes = {label: node for node, label in labels.items()}
        jobs: list[_Job] = []
        skipped: dict[str, str] = {}
        for group in groups:
            if not removed[group.index].size:
                continue
            for label in group.consumers:
                node = nodes[label]
                job, reason = _job_for(node, label, keep)
                if job is None and reason:
                    skipped[label] = reason
                elif job is not None and job.in_keep.sum() * job.conv.get("kernel_size", 1) > _MAX_FEATURES:
                    skipped[label] = f"more than {_MAX_FEATURES} input features"
                elif job is not None:
                    jobs.append(job)
        for label, reason in skipped.items():
            logger.debug("prune-channels: no reconstruction for '%s': %s", label, reason)
        return jobs, skipped

    def _collect(self, model: ir.Model, jobs: list[_Job], data: Mapping[str, np.ndarray]) -> None:
        """One streamed pass per chunk of layers over the calibration data: G, C and e of every job."""
        from onnxpq.passes.quantize.calibration import _BatchPlan, _folder_of_serialised_external_tensors, _Runner

        folder = _folder_of_serialised_external_tensors(model)
        chunk: list[_Job] = []
        chunks: list[list[_Job]] = []
        for job in jobs:
            wanted = {v.name for j in chunk for v in (j.x, j.y)} | {job.x.name, job.y.name}
            if chunk and len(wanted) > _TENSORS_PER_RUN:
                chunks.append(chunk)
                chunk = []
            chunk.append(job)
        if chunk:
            chunks.append(chunk)
        for chunk in chunks:
            outputs = list({id(v): v for j in chunk for v in (j.x, j.y)}.values())
            names = [v.name for v in outputs]
            runner = _Runner.build(model, outputs, folder)
            plan = _BatchPlan.build(runner.session, data, _BATCH_SIZE)
            for batch in runner.run(plan, data, names):  # type: ignore[arg-type]
                arrays = dict(zip(names, batch, strict=True))
                for job in chunk:
                    _accumulate(job, arrays[job.x.name], arrays[job.y.name])
            del runner

    def _collect_sequential(
        self, model: ir.Model, original: ir.Model, jobs: list[_Job], data: Mapping[str, np.ndarray]
    ) -> None:
        """G, C and e of independent layers: inputs from the pruned model as refitted so far, outputs from the original.

        Both models run over the same batches side by side (one onnxruntime
        session each, only the nodes the requested tensors need).
        """
        from onnxpq.passes.quantize.calibration import _BatchPlan, _folder_of_serialised_external_tensors, _Runner

        targets = _main_values(original)
        for start in range(0, len(jobs), _TENSORS_PER_RUN // 2):
            chunk = jobs[start : start + _TENSORS_PER_RUN // 2]
            inputs = list({id(j.x): j.x for j in chunk}.values())
            outputs = list({j.y.name: targets[j.y.name] for j in chunk}.values())
            pruned_runner = _Runner.build(model, inputs, _folder_of_serialised_external_tensors(model))
            original_runner = _Runner.build(original, outputs, _folder_of_serialised_external_tensors(original))
            plan = _BatchPlan.build(pruned_runner.session, data, _BATCH_SIZE)
            x_names, y_names = [v.name for v in inputs], [v.name for v in outputs]
            batches = zip(
                pruned_runner.run(plan, data, x_names), original_runner.run(plan, data, y_names), strict=True  # type: ignore[arg-type]
            )
            for x_batch, y_batch in batches:
                xs, ys = dict(zip(x_names, x_batch, strict=True)), dict(zip(y_names, y_batch, strict=True))
                for job in chunk:
                    _accumulate(job, xs[job.x.name], ys[job.y.name], inputs_pruned=True)
            del pruned_runner, original_runner

    def _refit(self, model: ir.Model, job: _Job, names: _Names, cross_fit: bool) -> _Written | None:
        """Refit one layer; write the refit when it lowers the layer's held-out error (undoable until kept).

        ``cross_fit``: also the fit without each calibration fold, for the end-to-end check.
        """
        stats = job.stats
        if stats is None or stats.rows == 0:
            job.result = {"node": job.label, "applied": False, "reason": "no calibration rows"}
            return None
        current = _current_matrix(job)
        result = refit(stats, current, self.damping, cross_fit=cross_fit)
        job.result = {
            "node": job.label,
            "error_before": float(result.error_before),
            "error_after": float(result.error_after if result.improved else result.error_before),
            "heldout_error_before": result.heldout_before,
            "heldout_error_after": result.heldout_after if result.improved else result.heldout_before,
            "damping": result.damping,
            "rows": stats.rows,
            "applied": bool(result.improved),
        }
        logger.debug(
            "prune-channels: '%s' relative output error %.3g -> %.3g (held out %s -> %s, damping %g): %s",
            job.label, result.error_before, result.error_after, result.heldout_before, result.heldout_after,
            result.damping, "kept" if result.improved else "refit discarded",
        )
        if not result.improved:
            return None
        without = [_refit_arrays(job, w) if w is not None else None for w in result.without or ()]
        written = _Written(job, [], _refit_arrays(job, current) if cross_fit else [], without)
        written.edits = _write_arrays(model.graph, job, _refit_arrays(job, result.weights), names)
        return written


# --------------------------------------------------------------------------- module-level workers


def _main_values(model: ir.Model) -> dict[str, ir.Value]:
    graph = model.graph
    values: dict[str, ir.Value] = {v.name: v for v in graph.inputs if v.name}
    values.update(graph.initializers)
    for node in graph:
        values.update((v.name, v) for v in node.outputs if v.name)
    return values


def _kept(keep: dict[Key, np.ndarray], key: Key, sizes: dict[Key, int]) -> int:
    """Elements of ``key`` that stay: the mask's count, or the whole axis when nothing of it goes."""
    mask = keep.get(key)
    return sizes[key] if mask is None else int(mask.sum())


def _weighted_consumers(group: ChannelGroup, nodes: dict[str, ir.Node]) -> list[_Consumer]:
    """The group's consumers that read its channels through a constant weight (importance, compensation)."""
    result = []
    for label in group.consumers:
        node = nodes.get(label)
        if node is None or node.domain not in _ONNX_DOMAINS or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        x, w = node.inputs[0], (node.inputs[1] if len(node.inputs) > 1 else None)
        shape = _const_shape(w)
        if x is None or w is None or not x.name or not w.name or shape is None or _const_shape(x) is not None:
            continue
        op = node.op_type
        alpha, add_node, bias = 1.0, None, None
        if op == "Conv":
            if _int_attr(node, "group", 1) != 1:
                continue
            in_axis, out_axis, x_axis, bias = 1, 0, 1, "conv"
            if len(node.inputs) > 2 and node.inputs[2] is not None and _const_shape(node.inputs[2]) is None:
                bias = None
        elif op == "Gemm":
            if len(shape) != 2:
                continue
            in_axis, out_axis = (1, 0) if _int_attr(node, "transB", 0) else (0, 1)
            x_axis = 0 if _int_attr(node, "transA", 0) else 1
            alpha = _float_attr(node, "alpha", 1.0)
            c = node.inputs[2] if len(node.inputs) > 2 else None
            c_shape = _const_shape(c) if c is not None else ()
            if _float_attr(node, "beta", 1.0) != 0.0 and c_shape is not None and (len(c_shape) < 2 or c_shape[0] == 1):
                bias = "gemm"
        else:
            if len(shape) != 2:
                continue
            in_axis, out_axis, x_axis = 0, 1, -1
            y = node.outputs[0]
            uses = y.uses()
            if len(uses) == 1 and not y.is_graph_output():
                user = uses[0].node
                other = user.inputs[1 - uses[0].idx] if user.op_type == "Add" and len(user.inputs) == 2 else None
                other_shape = _const_shape(other)
                if other_shape and all(d == 1 for d in other_shape[:-1]) and other_shape[-1] == shape[1]:
                    bias, add_node = "add", user
        member = group.member(w.name, in_axis)
        if member is None or member.role != "consumer":
            continue
        result.append(_Consumer(node, label, x.name, x_axis, w.name, in_axis, out_axis, member.units, bias, alpha, add_node))
    return result


def _input_moments(
    model: ir.Model, keys: list[Key], data: Mapping[str, np.ndarray]
) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """``(E[x], E[x²])`` per element of every ``(value, axis)`` on the calibration data (one streamed run per chunk)."""
    from onnxpq.passes.quantize.calibration import _BatchPlan, _folder_of_serialised_external_tensors, _Runner

    keys = list(dict.fromkeys(keys))
    values = _main_values(model)
    sums: dict[Key, list[Any]] = {key: [0.0, 0.0, 0] for key in keys}
    folder = _folder_of_serialised_external_tensors(model)
    names_all = list(dict.fromkeys(name for name, _ in keys))
    for start in range(0, len(names_all), _TENSORS_PER_RUN):
        names = names_all[start : start + _TENSORS_PER_RUN]
        runner = _Runner.build(model, [values[n] for n in names], folder)
        plan = _BatchPlan.build(runner.session, data, _BATCH_SIZE)
        for batch in runner.run(plan, data, names):
            arrays = dict(zip(names, batch, strict=True))
            for key in keys:
                if key[0] not in arrays:
                    continue
                array = np.asarray(arrays[key[0]], dtype=np.float64)
                if array.ndim == 0 or key[1] >= array.ndim:
                    raise DataError(f"prune-channels: '{key[0]}' has rank {array.ndim} on the calibration data")
                flat = np.moveaxis(array, key[1], -1).reshape(-1, array.shape[key[1]])
                entry = sums[key]
                entry[0] = entry[0] + flat.sum(axis=0)
                entry[1] = entry[1] + np.square(flat).sum(axis=0)
                entry[2] += flat.shape[0]
        del runner
    return {key: (np.asarray(s0) / max(n, 1), np.asarray(s1) / max(n, 1)) for key, (s0, s1, n) in sums.items()}


def _constant_means(
    model: ir.Model,
    groups: list[ChannelGroup],
    removed: dict[int, np.ndarray],
    consumers: dict[int, list[_Consumer]],
) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """Without data: what the consumers read from the removed channels when their producer weights are zero.

    A channel whose producer slices are zero outputs a constant (its bias, through BatchNormalization,
    ReLU6, a depthwise conv's bias, ...); a low-L1 channel is close to that. The constant is measured
    on a copy of the model with those slices zeroed, on two synthesised inputs (means over all
    positions; a zero-padded border makes it a little lower than the interior's value).
    """
    from onnxpq.analysis.model_inputs import synthesize_inputs

    keys = [c.key for g in groups if removed[g.index].size for c in consumers.get(g.index, []) if c.bias]
    if not keys:
        return {}
    try:
        inputs = synthesize_inputs(model, 2, seed=0)
    except ValueError as exc:
        logger.debug("prune-channels: no constant-channel compensation: %s", exc)
        return {}
    copy = model.clone()
    values = _main_values(copy)
    for group in groups:
        gone = removed[group.index]
        if not gone.size:
            continue
        for member in group.members:
            value = values.get(member.value)
            if member.role != "producer" or value is None or value.const_value is None:
                continue
            array = np.array(value.const_value.numpy())
            index = [slice(None)] * array.ndim
            index[member.axis] = np.isin(member.units, gone)  # type: ignore[call-overload]
            array[tuple(index)] = 0
            value.const_value = ir.tensor(array, name=value.name)
    return _input_moments(copy, keys, inputs)


def _bias_shifts(
    groups: list[ChannelGroup],
    removed: dict[int, np.ndarray],
    consumers: dict[int, list[_Consumer]],
    moments: dict[Key, tuple[np.ndarray, np.ndarray]],
) -> dict[str, tuple[_Consumer, np.ndarray]]:
    """Per consumer node, the output shift that replaces its removed inputs by their means (full output width).

    ``δ_o = α · Σ_{removed e} Σ_k W[o, e, k] · μ_e`` (k: kernel offsets) — added to the consumer's bias,
    this keeps the output's mean: a removed channel that carried a constant costs nothing.
    """
    shifts: dict[str, tuple[_Consumer, np.ndarray]] = {}
    for group in groups:
        gone = removed[group.index]
        if not gone.size:
            continue
        for consumer in consumers.get(group.index, []):
            if not consumer.bias or consumer.key not in moments:
                continue
            mean = moments[consumer.key][0] * np.isin(consumer.units, gone)
            if not np.any(mean):
                continue
            weight = _constant_array(consumer.node.inputs[1]).astype(np.float64)  # type: ignore[arg-type]
            moved = np.moveaxis(weight, (consumer.w_out_axis, consumer.w_in_axis), (0, -1))
            shift = consumer.alpha * (moved * mean).reshape(moved.shape[0], -1).sum(axis=1)
            if consumer.label in shifts:
                shift = shift + shifts[consumer.label][1]
            shifts[consumer.label] = (consumer, shift)
    return shifts


def _add_bias_shift(graph: ir.Graph, consumer: _Consumer, shift: np.ndarray, keep: dict[Key, np.ndarray], names: _Names) -> None:
    """Add ``shift`` (restricted to the kept output channels) to the consumer's bias; a new initializer."""
    node = consumer.node
    mask = keep.get((consumer.weight, consumer.w_out_axis))
    if mask is not None:
        shift = shift[mask]
    label = node.name or node.op_type.lower()
    if consumer.bias == "conv":
        old = node.inputs[2] if len(node.inputs) > 2 else None
        dtype = _constant_array(node.inputs[1]).dtype  # type: ignore[arg-type]
        current = _constant_array(old).astype(np.float64).reshape(-1) if old is not None else np.zeros(shift.size)
        _set_bias(graph, node, 2, (current + shift).astype(dtype), names, f"{label}_bias_compensated")
    elif consumer.bias == "gemm":
        beta = _float_attr(node, "beta", 1.0)
        old = node.inputs[2] if len(node.inputs) > 2 else None
        dtype = _constant_array(node.inputs[1]).dtype  # type: ignore[arg-type]
        current = _constant_array(old).astype(np.float64) if old is not None else np.zeros(shift.size)
        new = np.broadcast_to(current.reshape(-1) if current.ndim else current, shift.shape) + shift / beta
        if current.ndim == 2:
            new = new.reshape(1, -1)
        _set_bias(graph, node, 2, new.astype(dtype), names, f"{label}_bias_compensated")
    elif consumer.add_node is not None:
        add = consumer.add_node
        index = 1 if add.inputs[0] is node.outputs[0] else 0
        old = add.inputs[index]
        current = _constant_array(old)  # type: ignore[arg-type]
        new = (current.astype(np.float64) + shift.reshape(current.shape)).astype(current.dtype)
        value = _new_initializer(graph, names, f"{old.name or 'add'}_compensated", new)  # type: ignore[union-attr]
        add.replace_input_with(index, value)
        _remove_if_unused(graph, old)  # type: ignore[arg-type]


def _mean_abs_activations(
    model: ir.Model, groups: list[ChannelGroup], data: Mapping[str, np.ndarray], values: dict[str, ir.Value]
) -> dict[Key, np.ndarray]:
    """Mean |y| per element of every producer output axis of ``groups`` on the calibration data."""
    from onnxpq.passes.quantize.calibration import _BatchPlan, _folder_of_serialised_external_tensors, _Runner

    wanted: dict[Key, None] = {}
    for group in groups:
        for member in group.members:
            if member.role != "producer":
                continue
            for user in values[member.value].uses():
                for out in user.node.outputs:
                    if out.name and group.member(out.name, _producer_out_axis(user.node, out)) is not None:
                        wanted[(out.name, _producer_out_axis(user.node, out))] = None
    keys = list(wanted)
    sums = {key: np.zeros(0) for key in keys}
    counts = dict.fromkeys(keys, 0)
    folder = _folder_of_serialised_external_tensors(model)
    for start in range(0, len(keys), _TENSORS_PER_RUN):
        chunk = keys[start : start + _TENSORS_PER_RUN]
        names = list(dict.fromkeys(name for name, _ in chunk))
        runner = _Runner.build(model, [values[n] for n in names], folder)
        plan = _BatchPlan.build(runner.session, data, _BATCH_SIZE)
        for batch in runner.run(plan, data, names):
            arrays = dict(zip(names, batch, strict=True))
            for key in chunk:
                array = np.abs(np.asarray(arrays[key[0]], dtype=np.float64))
                axis = key[1]
                if array.ndim <= axis:
                    raise DataError(f"prune-channels: '{key[0]}' has rank {array.ndim} on the calibration data")
                other = tuple(a for a in range(array.ndim) if a != axis)
                total = array.sum(axis=other)
                sums[key] = total if sums[key].size == 0 else sums[key] + total
                counts[key] += array.size // max(array.shape[axis], 1)
        del runner
    return {key: sums[key] / max(counts[key], 1) for key in keys}


def _producer_out_axis(node: ir.Node, out: ir.Value) -> int:
    """The channel axis of a producer's output: 1 for Conv/ConvTranspose/Gemm, the last for MatMul."""
    if node.op_type == "MatMul":
        rank = len(out.shape) if out.shape is not None else None
        if rank is None:
            a, b = node.inputs[0], node.inputs[1]
            ranks = [len(v.shape) for v in (a, b) if v is not None and v.shape is not None]
            rank = max(ranks) if ranks else 2
        return rank - 1
    return 1


def _job_for(node: ir.Node, label: str, keep: dict[Key, np.ndarray]) -> tuple[_Job | None, str]:
    """The reconstruction job of a consumer node, or None and why not."""
    op = node.op_type
    if node.domain not in _ONNX_DOMAINS or op not in ("Conv", "Gemm", "MatMul"):
        return None, f"{op} layers are not refitted"
    x, w = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    if x is None or w is None or not w.name or len(w.uses()) != 1:
        return None, "its weight is shared by several nodes"
    if _const_shape(x) is not None:
        return None, "its input is a constant"
    shape = _const_shape(w)
    if shape is None:
        return None, "its weight is not a constant"
    if op == "Conv" and len(node.inputs) > 2 and node.inputs[2] is not None and _const_shape(node.inputs[2]) is None:
        return None, "its bias is not a constant"
    if op == "Conv":
        if _int_attr(node, "group", 1) != 1:
            return None, "grouped Conv"
        in_axis, out_axis = 1, 0
    elif op == "Gemm":
        if len(shape) != 2:
            return None, "weight is not 2-D"
        trans_b = _int_attr(node, "transB", 0)
        in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    else:
        if len(shape) != 2:
            return None, "weight is not 2-D"
        in_axis, out_axis = 0, 1
    in_keep = keep.get((w.name, in_axis))
    if in_keep is None:
        return None, "no input channel removed"
    out_keep = keep.get((w.name, out_axis), np.ones(shape[out_axis], dtype=bool))
    intercept: str | None = "bias"
    add_node = None
    if op == "Gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if _float_attr(node, "beta", 1.0) == 0.0:
            intercept = None
        elif c is not None:
            c_shape = _const_shape(c)
            if c_shape is None:
                return None, "its C input is not a constant"
            if len(c_shape) == 2 and c_shape[0] != 1:
                return None, "its C input has a row axis"
    elif op == "MatMul":
        intercept = None
        uses = y.uses()
        if len(uses) == 1 and not y.is_graph_output():
            user = uses[0].node
            other = user.inputs[1 - uses[0].idx] if user.op_type == "Add" and len(user.inputs) == 2 else None
            other_shape = _const_shape(other)
            if other_shape and all(d == 1 for d in other_shape[:-1]) and other_shape[-1] == shape[1]:
                intercept, add_node = "add", user
    job = _Job(node, label, op.lower(), x, y, in_keep.copy(), np.asarray(out_keep).copy(), intercept, add_node)
    if op == "Conv":
        kernel = list(shape[2:])
        def ints(name: str, default: list[int]) -> list[int]:
            attr = node.attributes.get(name)
            return [int(v) for v in attr.value] if attr is not None else default

        job.conv = {
            "kernel": kernel,
            "kernel_size": math.prod(kernel),
            "strides": ints("strides", [1] * len(kernel)),
            "dilations": ints("dilations", [1] * len(kernel)),
            "pads": ints("pads", [0] * 2 * len(kernel)),
            "auto_pad": str(node.attributes["auto_pad"].value) if "auto_pad" in node.attributes else "NOTSET",
        }
    return job, ""


def _levels(model: ir.Model, jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs in dependency levels: a layer comes after every refitted layer its input depends on."""
    position = {node: index for index, node in enumerate(model.graph)}
    by_node = {job.node: job for job in jobs}
    level: dict[ir.Node, int] = {}
    for job in sorted(jobs, key=lambda j: position[j.node]):
        deepest = -1
        seen: set[ir.Node] = set()
        stack = [job.x.producer()] if job.x.producer() is not None else []
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in by_node and node in level:
                deepest = max(deepest, level[node])
            stack.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
        level[job.node] = deepest + 1
    grouped: dict[int, list[_Job]] = {}
    for job in jobs:
        grouped.setdefault(level[job.node], []).append(job)
    return [grouped[k] for k in sorted(grouped)]


def _accumulate(job: _Job, x: np.ndarray, y: np.ndarray, *, inputs_pruned: bool = False) -> None:
    """Add one batch, each sample's rows to its fold (``job.folds``); ``inputs_pruned``: x holds only the kept inputs."""
    features = int(job.in_keep.sum())
    if job.kind == "conv":
        features *= job.conv["kernel_size"]
    folds = job.folds if job.folds.size else np.zeros(1, dtype=np.int64)
    if job.stats is None:
        job.stats = LayerStatistics(features, int(job.out_keep.sum()), job.intercept is not None, int(folds.max()) + 1)

    def fold_of(index: int) -> int:
        return int(folds[index]) if index < folds.size else index % len(job.stats.folds)  # type: ignore[union-attr]

    if job.kind == "conv":
        spec = job.conv
        out_spatial = list(y.shape[2:])
        pads = _conv_pads(spec, list(x.shape[2:]), out_spatial)
        kept = x if inputs_pruned else x[:, job.in_keep]
        for n in range(x.shape[0]):
            rows = conv_patches(kept[n : n + 1], spec["kernel"], spec["strides"], pads, spec["dilations"], out_spatial)
            outputs = np.moveaxis(y[n : n + 1], 1, -1).reshape(-1, y.shape[1])[:, job.out_keep]
            job.stats.add(rows, outputs, fold=fold_of(job.samples))
            job.samples += 1
        return
    if job.kind == "gemm" and _int_attr(job.node, "transA", 0):
        x = x.T
    count = x.shape[0] if x.ndim > 1 else 1
    rows = x.reshape(count, -1, x.shape[-1])
    outputs = y.reshape(count, -1, y.shape[-1])
    sample_folds = np.asarray([fold_of(job.samples + i) for i in range(count)])
    for fold in np.unique(sample_folds):
        picked = sample_folds == fold
        fold_rows = rows[picked].reshape(-1, rows.shape[-1])
        if not inputs_pruned:
            fold_rows = fold_rows[:, job.in_keep]
        fold_outputs = outputs[picked].reshape(-1, outputs.shape[-1])[:, job.out_keep]
        if fold_rows.shape[0]:
            job.stats.add(fold_rows, fold_outputs, fold=int(fold))
    job.samples += count


def _conv_pads(spec: dict[str, Any], in_spatial: list[int], out_spatial: list[int]) -> list[int]:
    auto_pad = spec["auto_pad"]
    kernel, strides, dilations = spec["kernel"], spec["strides"], spec["dilations"]
    if auto_pad in ("NOTSET", ""):
        return spec["pads"]
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    begins, ends = [], []
    for size, out, k, s, d in zip(in_spatial, out_spatial, kernel, strides, dilations, strict=True):
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _current_matrix(job: _Job) -> np.ndarray:
    """The pruned layer's weights (and bias) as W̃ [features(+1), outputs], in the job's row/column layout."""
    node = job.node
    w = _constant_array(node.inputs[1]).astype(np.float64)  # type: ignore[arg-type]
    outputs = w.shape[0] if job.kind == "conv" else None
    if job.kind == "conv":
        matrix = w.reshape(w.shape[0], -1).T
    elif job.kind == "gemm":
        matrix = (w.T if _int_attr(node, "transB", 0) else w) * _float_attr(node, "alpha", 1.0)
        outputs = matrix.shape[1]
    else:
        matrix = w
        outputs = matrix.shape[1]
    if job.intercept is None:
        return matrix
    bias = np.zeros(outputs)
    if job.kind == "conv" and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = _constant_array(node.inputs[2]).astype(np.float64).reshape(-1)
    elif job.kind == "gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        c = _constant_array(node.inputs[2]).astype(np.float64)
        bias = np.broadcast_to(c.reshape(-1) if c.ndim else c, (outputs,)) * _float_attr(node, "beta", 1.0)
    elif job.kind == "matmul" and job.add_node is not None:
        bias = np.zeros(outputs)  # Y is the MatMul output; the Add's constant is outside Y
    return np.concatenate([matrix, np.broadcast_to(bias, (outputs,))[None, :]], axis=0)


def _refit_slots(job: _Job) -> list[tuple[ir.Node, int]]:
    """The node inputs a refit writes: the weight, then the bias (Conv B, Gemm C, the following Add's constant)."""
    node = job.node
    slots = [(node, 1)]
    if job.intercept is None:
        return slots
    if job.kind in ("conv", "gemm"):
        slots.append((node, 2))
    elif job.add_node is not None:
        slots.append((job.add_node, 1 if job.add_node.inputs[0] is job.y else 0))
    return slots


def _refit_arrays(job: _Job, weights: np.ndarray) -> list[np.ndarray]:
    """The arrays ``W̃ [features(+1), outputs]`` puts into the :func:`_refit_slots` (in the weight's dtype).

    The layer's current inputs are read (the Add's constant to add the intercept to), never changed;
    ``_refit_arrays(job, _current_matrix(job))`` is the layer as it is (a missing bias as zeros).
    """
    node = job.node
    old_w = _constant_array(node.inputs[1])  # type: ignore[arg-type]
    features = job.stats.features  # type: ignore[union-attr]
    matrix, bias = weights[:features], (weights[features] if job.intercept is not None else None)
    if job.kind == "conv":
        new_w = matrix.T.reshape(old_w.shape)
    elif job.kind == "gemm":
        new_w = matrix / _float_attr(node, "alpha", 1.0)
        if _int_attr(node, "transB", 0):
            new_w = new_w.T
    else:
        new_w = matrix
    arrays = [np.ascontiguousarray(new_w.astype(old_w.dtype))]
    if bias is None:
        return arrays
    if job.kind == "conv":
        arrays.append(bias.astype(old_w.dtype))
    elif job.kind == "gemm":
        old_c = node.inputs[2] if len(node.inputs) > 2 else None
        c = bias / _float_attr(node, "beta", 1.0)
        if old_c is not None and len(_const_shape(old_c) or ()) == 2:
            c = c.reshape(1, -1)
        arrays.append(c.astype(old_w.dtype))
    elif job.add_node is not None:
        add, index = _refit_slots(job)[1]
        current = _constant_array(add.inputs[index])  # type: ignore[arg-type]
        arrays.append((current.astype(np.float64) + bias.reshape(current.shape)).astype(current.dtype))
    return arrays


@dataclass
class _Edit:
    """One node input replaced by a new initializer; ``old`` stays in the graph until the edit is kept."""

    node: ir.Node
    index: int
    old: ir.Value | None
    new: ir.Value
    grown: bool  # the node had no input at ``index`` before


@dataclass
class _Written:
    """A layer's refit as written, and what the end-to-end check feeds in its place.

    ``current``: the :func:`_refit_slots` arrays of the layer without the refit; ``without[f]``:
    those of the fit that never saw calibration fold f (None: no such fit); both empty when there
    is no check.
    """

    job: _Job
    edits: list[_Edit]
    current: list[np.ndarray]
    without: list[list[np.ndarray] | None]


def _write_arrays(graph: ir.Graph, job: _Job, arrays: list[np.ndarray], names: _Names) -> list[_Edit]:
    """New initializers for the refit's arrays in the layer's slots; the old values stay until kept or undone."""
    edits = []
    for (node, index), array in zip(_refit_slots(job), arrays, strict=True):
        old = node.inputs[index] if len(node.inputs) > index else None
        if index == 1 and node is job.node:
            base = f"{old.name}_refit"  # type: ignore[union-attr]
        elif old is not None and old.name:
            base = f"{old.name}_refit"
        else:
            base = f"{node.name or job.kind}_bias_refit"
        value = _new_initializer(graph, names, base, array)
        grown = len(node.inputs) <= index
        if grown:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        edits.append(_Edit(node, index, old, value, grown))
    return edits


def _keep_edits(graph: ir.Graph, edits: list[_Edit]) -> None:
    for edit in edits:
        if edit.old is not None:
            _remove_if_unused(graph, edit.old)


def _undo_edits(graph: ir.Graph, edits: list[_Edit]) -> None:
    """Put the old inputs back and drop the refit's initializers."""
    for edit in reversed(edits):
        edit.node.replace_input_with(edit.index, edit.old)
        if edit.grown:
            edit.node.resize_inputs(edit.index)
        _remove_if_unused(graph, edit.new)


@dataclass
class _Reference:
    """The unpruned model's float outputs on the calibration data, samples first (see :func:`_check_end_to_end`)."""

    names: list[str]
    plan: Any  # the calibration runner's batch plan
    arrays: list[np.ndarray]
    folds: np.ndarray


def _batch_rows(plan: Any, index: int) -> tuple[int, int]:
    """First sample and sample count of batch ``index`` of a calibration batch plan."""
    if plan.per_sample:
        return index, 1
    start = index * plan.step
    return start, min(plan.step, plan.count - start)


def _reference_outputs(
    model: ir.Model, data: Mapping[str, np.ndarray], folds: np.ndarray
) -> tuple[_Reference | None, str]:
    """The unpruned model's float outputs on every calibration sample, or None and why no check is possible."""
    from onnxpq.passes.quantize.calibration import _BatchPlan, _folder_of_serialised_external_tensors, _Runner

    if folds.size < 2 or int(folds.max()) < 1:
        return None, f"{folds.size} calibration sample(s) in one fold: none can be held out"
    outputs = [v for v in model.graph.outputs if v.name and v.dtype is not None and v.dtype.is_floating_point()]
    if not outputs:
        return None, "the model has no float output"
    runner = _Runner.build(model, outputs, _folder_of_serialised_external_tensors(model))
    plan = _BatchPlan.build(runner.session, data, _BATCH_SIZE)
    names = [v.name for v in outputs]
    pieces: list[list[np.ndarray] | None] = [[] for _ in names]
    for index, batch in enumerate(runner.run(plan, data, names)):
        _, count = _batch_rows(plan, index)
        for position, array in enumerate(batch):
            array = array[None] if plan.per_sample else array
            kept = pieces[position]
            if kept is not None and (array.ndim == 0 or array.shape[0] != count):
                logger.debug(
                    "prune-channels: output '%s' has no sample axis; left out of the end-to-end check", names[position]
                )
                pieces[position] = None
            elif kept is not None:
                kept.append(array)
    del runner
    usable = [i for i, p in enumerate(pieces) if p]
    if not usable:
        return None, "no float output has one row per sample"
    arrays = [np.concatenate(pieces[i]) for i in usable]  # type: ignore[arg-type]
    return _Reference([names[i] for i in usable], plan, arrays, folds), ""


def _check_end_to_end(
    model: ir.Model, written: list[_Written], data: Mapping[str, np.ndarray], folds: np.ndarray, reference: _Reference
) -> tuple[bool, dict[str, Any]]:
    """Whether the written refits bring the model's outputs on held-out samples closer to the unpruned model's.

    Output error of a variant: ``E = mean over float outputs of Σ_samples ||ŷ − y||² / Σ_samples ||y||²``
    (y: the unpruned model's outputs, 10·log10(1/E) its SQNR). Without refits every sample runs the
    pruned model with compensation only; with refits, each sample of fold f runs every refitted layer
    with the fit that never saw fold f (:func:`~onnxpq.passes.prune.reconstruction.cross_fits`), so no
    sample is judged by weights fitted on it. One onnxruntime session serves both: the refitted
    weights are graph inputs (their written values as defaults) and each run feeds its variant's
    arrays. The refits stay when ``E`` with them is lower by at least 0.1 % of ``E`` without.
    Returns the decision and the figures for the notes.
    """
    from onnxpq.passes.quantize.calibration import _folder_of_serialised_external_tensors, _Runner

    graph = model.graph
    outputs = {v.name: v for v in graph.outputs}
    extra = [edit.new for item in written for edit in item.edits]
    feed_names = [value.name for value in extra]
    graph.inputs.extend(extra)
    try:
        folder = _folder_of_serialised_external_tensors(model)
        runner = _Runner.build(model, [outputs[n] for n in reference.names], folder)
    finally:
        for _ in extra:
            graph.inputs.pop()
    plan = reference.plan
    count = len(reference.arrays[0])

    def weights(refitted: bool, fold: int) -> dict[str, np.ndarray]:
        arrays: list[np.ndarray] = []
        for item in written:
            held_out = item.without[fold] if refitted else None
            arrays += held_out if held_out is not None else item.current
        return dict(zip(feed_names, arrays, strict=True))

    def error(refitted: bool) -> float:
        num = np.zeros(len(reference.names))
        den = np.zeros(len(reference.names))
        for index, (_, feed) in enumerate(plan.feeds(data)):
            start, rows = _batch_rows(plan, index)
            fold_of_row = folds[start : start + rows]
            # without refits every fold runs the same weights: one run per batch
            for fold in np.unique(fold_of_row) if refitted else fold_of_row[:1]:
                picked = fold_of_row == fold if refitted else np.ones(rows, dtype=bool)
                results = runner.session.run(reference.names, {**feed, **weights(refitted, int(fold))})
                for position, (got, want) in enumerate(zip(results, reference.arrays, strict=True)):
                    got = np.asarray(got[None] if plan.per_sample else got, dtype=np.float64)[picked]
                    want = np.asarray(want[start : start + rows], dtype=np.float64)[picked]
                    num[position] += float(np.sum(np.square(got - want)))
                    den[position] += float(np.sum(np.square(want)))
        value = float(np.mean(num / np.where(den > 0, den, 1.0)))
        return value if math.isfinite(value) else math.inf

    without = error(refitted=False)
    with_refits = error(refitted=True)
    del runner
    keep = _lowers(with_refits, without)
    record = {
        "checked": True,
        "samples": count,
        "folds": int(folds[:count].max()) + 1,
        "outputs": list(reference.names),
        "heldout_output_error_without_refits": without,
        "heldout_output_error_with_refits": with_refits,
        "refits_kept": keep,
    }
    logger.info(
        "prune-channels: end-to-end check on %d held-out calibration samples: output error %.4g without refits, "
        "%.4g with the %d refits: %s",
        count, without, with_refits, len(written), "refits kept" if keep else "refits discarded",
    )
    return keep, record


def _set_bias(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, names: _Names, base: str) -> None:
    old = node.inputs[index] if len(node.inputs) > index else None
    if old is not None and old.name:
        base = f"{old.name}_refit"
    value = _new_initializer(graph, names, base, array)
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if old is not None:
        _remove_if_unused(graph, old)
