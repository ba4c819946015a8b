"""Channel coupling groups: the parameter slices that structured pruning must remove together.

The DepGraph idea (Fang et al., CVPR 2023) on an ONNX graph. A *channel axis*
is a pair ``(value name, axis)`` of the main graph: the output-channel axis of
a Conv weight, the hidden axis of a MatMul, and every axis that must shrink
with it. :class:`ChannelGroups` builds a networkx graph whose nodes are these
pairs and whose edges say "removing a slice here removes slices there"; its
connected components are the *groups*. Inside a group the individual
elements (channels) are linked too, so a group also knows which channels of
each member go together: a *unit* is the smallest set of channels that can be
removed on its own (one channel; one attention head; one whole group of a
grouped convolution). Pruning removes whole units.

How it is built. Sources are the output-channel axes of constant weights:
``Conv`` ``W[C_out, C_in/g, k...]`` axis 0, ``ConvTranspose``
``W[C_in, C_out/g, k...]`` axis 1 (axis 0 when grouped), ``Gemm`` B's N axis
(axis 0 with ``transB=1``, else 1) and a 2-D ``MatMul`` weight ``[K, N]``
axis 1. From every source a breadth-first walk visits each channel axis it
reaches and asks, for the node producing the value and every node reading
it, how that node relates the axis to its other inputs and outputs. Each op
answers with a *class*: the set of ``(port, axis)`` pairs tied to the touched
one, each with an element map into a class-local index space (elements with
the same local index are removed together). The rules:

``Conv`` (group 1)
    ``X`` axis 1 ↔ ``W`` axis 1 (consumer: the weight's input channels);
    ``W`` axis 0 ↔ ``Y`` axis 1 ↔ ``B`` (producer).
``Conv`` (group g > 1, depthwise included)
    whole groups only: input channel ``c`` and output channel ``o`` are tied
    when ``c // (C_in/g) == o // (C_out/g)``; ``W`` axis 0 and ``B`` follow
    ``Y``; the ``group`` attribute becomes the number of groups kept.
    Depthwise (``C_in/g = 1``) therefore ties input channel c to its
    ``C_out/g`` output channels.
``ConvTranspose``
    ``W[C_in, C_out/g, k...]``: group 1, ``X`` axis 1 ↔ ``W`` axis 0 and
    ``W`` axis 1 ↔ ``Y`` axis 1 ↔ ``B``; grouped, whole groups as for Conv.
``Gemm``
    ``A'[M, K] · B'[K, N] + C`` (after ``transA``/``transB``): K of A ↔ K of B;
    N of B ↔ ``Y`` axis 1 ↔ C's last axis when C has N there (a scalar or
    ``[1]`` C broadcasts); M of A ↔ ``Y`` axis 0.
``MatMul``
    ``A[..., M, K] · B[..., K, N]``: K ↔ K, N of B ↔ last axis of Y, M of A ↔
    axis −2 of Y, and every batch axis of Y with the operands' batch axes
    that do not broadcast (attention's head axis).
``BatchNormalization`` / ``InstanceNormalization``
    ``X`` axis 1 ↔ ``Y`` axis 1 ↔ every parameter (scale, bias, mean, var).
Element-wise ops
    Unary ops and activations (Relu, Clip, Sigmoid, HardSwish, Gelu, Erf, …)
    pass every axis through. Broadcasting ops (Add, Sub, Mul, Div, Pow, Max,
    Min, Sum, Mean, PRelu, Where, …): inputs aligned from the right; an
    operand with the channel count on the aligned axis is tied (a per-channel
    constant is sliced, a second activation is a coupled branch: residual
    blocks); an operand that is 1 there or lacks the axis broadcasts.
``Concat``
    on the channel axis: input i's channel j ↔ output channel ``offset_i + j``;
    on another axis: every input and the output tied.
``Split`` / ``Slice``
    static sizes / starts, ends and steps only: output k's channel j ↔ input
    channel ``offset_k + j`` (Slice: step 1 only); sizes, starts and ends are
    rewritten for the channels kept.
``Flatten`` / ``Reshape``
    The input and output dims are aligned into blocks of equal product. A
    block of one dim on both sides passes the axis through. A *merge* (``[C,
    H, W] → [C·H·W]``) ties channel c to the ``H·W`` output elements whose
    row-major multi-index has c at the channel's position — what a Gemm
    after Flatten reads as K rows; the block's other dims must be static. A
    *split* (``[D] → [H, dh]``) prunes whole blocks of the outermost factor:
    the elements ``h·dh .. h·dh + dh − 1`` of D go with element h of H
    (attention heads). A block that mixes several dims on both sides is
    refused. The shape constant's entry is rewritten (a literal in an
    initializer, Constant or a constant piece of a Concat; ``-1`` or a ``0``
    copying the channel itself need nothing).
``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Identity``, ``Dropout``, ``Cast``
    axis permuted, removed or inserted as the op says (static axes only).
Pooling (``MaxPool``, ``AveragePool``, ``LpPool``, ``Global*Pool``), ``Pad``,
``Resize``/``Upsample`` and ``Expand`` with 0 padding / scale 1 / size 1 on the axis
    channel axis passes through.
``Softmax``, ``LayerNormalization``, ``Reduce*``
    pass the axis through when they do not normalise or reduce over it.
``Shape``
    allowed when its output is only read at other indices (a Gather or Slice
    of constant indices): the computed shapes then follow the pruned tensor.

Constants. An initializer, a Constant's output or an ``Identity`` of either
(exporters copy deduplicated tensors that way) is sliced by the pruner. A
weight read by several nodes couples their channels (tied weights stay tied);
a bias, BatchNormalization parameter or other per-channel constant read by
several nodes (equal tensors deduplicated into one) is instead a per-use
member (:attr:`ChannelSlice.use`): that reader gets its own sliced copy.

Shapes. Dims come from onnx shape inference on a clone (onnx-ir's
``ShapeInferencePass``, as in :mod:`onnxpq.analysis.macs`), then refined:
exported transformers build Reshape targets at run time (``Concat`` of
``Gather(Shape(x), k)`` and constants, the ``Where(Equal(s, -1), 1, s)`` of
``expand``), which inference gives up on. A small interpreter follows those
integer tensors (entries are ints or dim symbols), Reshape/Expand/Transpose/
MatMul/element-wise outputs are recomputed from it, and contraction axes
(MatMul's K, Gemm's K, Conv's input channels) take their static size from the
weight. Reshape blocks are aligned left to right, or from the right over the
static trailing dims when dynamic leading dims (batch, sequence) differ in
spelling: a row-major reshape acts on a static suffix of equal product on
its own.

Multi-head attention follows from these rules: the Q/K/V projections' output
axes are split into heads by the Reshape, tied per head through the
Transposes and the batch (head) axes of ``Q·Kᵀ`` and ``P·V``, merged back by
the second Reshape, and end at the O projection's K axis: units are heads.
Transformer FFNs (MatMul → Add bias → Gelu/Relu → MatMul) are plain groups.

Unprunable. Anything a rule cannot map marks the whole group unprunable,
with the reason: an op without a rule, a custom domain or a model-local
function, a Reshape mixing the channel with other dims, dynamic dims where a
map needs static ones, a shape computed at run time, a graph input or output
on the axis (graph shapes never change), a value read inside a subgraph
(If/Loop/Scan), or an op that normalises or reduces over the axis.

Units are the connected components of the element links (a numpy
union-find); a group's *sections* are its units partitioned by the producer
weights they hold channels of (Concat inputs are separate sections: each
producer is pruned by its own ratio). Reads no tensor data except constants
of at most 1,024 elements (shapes, axes, split sizes): weights are never
materialised. Our own code: onnx-ir and onnxscript have no coupling analysis, and
Torch-Pruning works on PyTorch modules, not ONNX graphs.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

__all__ = ["ChannelGroups", "ChannelGroup", "ChannelSlice", "GroupSection", "NodeUpdate", "Key", "node_labels"]

logger = logging.getLogger(__name__)

Key = tuple[str, int]
"""A channel axis: (value name, axis)."""

_ONNX_DOMAINS = ("", "ai.onnx")

#: Constants up to this many elements are read by the analysis (shape arithmetic); larger ones never.
_SMALL_CONSTANT = 1024

#: Member roles, strongest first: a constant read at several places keeps the strongest.
_ROLE_ORDER = ("producer", "consumer", "bn-scale", "param", "activation")


# --------------------------------------------------------------------------- public results


@dataclass(frozen=True, eq=False)
class ChannelSlice:
    """One member of a group: a value and the axis of it that shrinks.

    Attributes:
        value: the value's name (an initializer, a Constant's output or an activation).
        axis: the axis (non-negative).
        size: its length along ``axis``.
        units: for each of the ``size`` elements, the unit it belongs to (0 .. ``group.units − 1``).
        role: ``producer`` (output channels of a Conv/ConvTranspose/Gemm/MatMul weight),
            ``consumer`` (input channels of a weight), ``bn-scale`` (BatchNormalization gamma),
            ``param`` (biases, BN shift/mean/var, per-channel constants, attention constants) or
            ``activation`` (a computed tensor: only its shape changes).
        constant: True when the pruner slices the tensor itself (initializer or Constant output).
        nodes: the nodes through which this axis was linked (producer and readers).
        use: for a constant parameter that several nodes share (equal biases deduplicated into
            one initializer), the one (node, input index) this member slices — the pruner gives
            that input its own copy; None when every use of the value is in the group.
    """

    value: str
    axis: int
    size: int
    units: np.ndarray
    role: str
    constant: bool
    nodes: tuple[str, ...]
    use: tuple[str, int] | None = None


@dataclass(frozen=True, eq=False)
class GroupSection:
    """Units of a group that hold channels of the same producer weights (one ratio applies to them).

    ``blocks`` maps each producer weight to its channels per unit (None when units differ in size).
    """

    producers: tuple[str, ...]
    units: np.ndarray
    blocks: dict[str, int | None]


@dataclass(frozen=True, eq=False)
class NodeUpdate:
    """A node attribute or shape constant that encodes a channel count of the group.

    kind and data:
        ``group``: Conv/ConvTranspose ``group`` = kept channels of ``keys[0]`` / ``data["per_group"]``.
        ``reshape``: the shape entry for output axis ``data["position"]`` becomes the kept size of
            ``keys[0]``; ``data["source"]`` is ``("const", value)``, ``("piece", concat node, input,
            offset)`` or ``("inferred",)`` (a -1 or a 0 that copies the channel itself).
        ``split``: sizes become the kept sizes of ``keys[1:]`` (outputs, in order); ``keys[0]`` is the input.
        ``slice``: starts/ends of ``data["axis"]`` at ``data["position"]`` follow the kept elements of
            ``keys[0]`` (input) inside ``[data["start"], data["end"])``.
    """

    node: str
    kind: str
    keys: tuple[Key, ...]
    data: dict[str, Any]


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channel axes that must be pruned together, and whether they can be.

    Attributes:
        index: position in :attr:`ChannelGroups.groups`.
        members: every (value, axis) of the group with its element → unit map.
        units: number of removable units.
        channels: channels of the group's widest producer output (e.g. a Concat's total).
        block: channels per unit of the first producer (1 for plain channels, head_dim for
            attention heads, C_out/g for whole groups of a grouped conv).
        prunable: False when some rule could not map the group.
        reason: why it is not prunable (None when it is).
        producers / consumers: node names owning producer / consumer weights.
        sections: units partitioned by the producers they hold channels of.
        updates: attribute and shape-constant rewrites the pruner must apply.
        nodes: every node linked into the group.
    """

    index: int
    members: tuple[ChannelSlice, ...]
    units: int
    channels: int
    block: int
    prunable: bool
    reason: str | None
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    sections: tuple[GroupSection, ...]
    updates: tuple[NodeUpdate, ...]
    nodes: tuple[str, ...]

    def member(self, value: str, axis: int) -> ChannelSlice | None:
        """The member for ``(value, axis)``, or None."""
        for slice_ in self.members:
            if slice_.value == value and slice_.axis == axis:
                return slice_
        return None

    def describe(self) -> str:
        """One line for logs and reports."""
        state = "prunable" if self.prunable else f"unprunable: {self.reason}"
        return (
            f"group {self.index}: {self.channels} channels in {self.units} units of {self.block} "
            f"(producers {', '.join(self.producers) or '-'}): {state}"
        )


@dataclass
class ChannelGroups:
    """The channel coupling groups of a model's main graph (an analysis: :meth:`compute`)."""

    groups: list[ChannelGroup]
    graph: nx.Graph = field(repr=False)

    @classmethod
    def compute(cls, model: ir.Model) -> ChannelGroups:
        """Group the channel axes of ``model`` (not modified; shapes inferred on a clone)."""
        return _Builder(model).build()

    @property
    def prunable(self) -> list[ChannelGroup]:
        """The groups that can be pruned."""
        return [g for g in self.groups if g.prunable]

    def group_of(self, value: str, axis: int) -> ChannelGroup | None:
        """The group holding ``(value, axis)``, or None."""
        for group in self.groups:
            if group.member(value, axis) is not None:
                return group
        return None


def node_labels(graph: ir.Graph) -> dict[ir.Node, str]:
    """How groups name nodes: the node's name, or ``<name or op_type>#<index>`` when it is empty or not unique."""
    counts: dict[str, int] = {}
    for node in graph:
        if node.name:
            counts[node.name] = counts.get(node.name, 0) + 1
    labels = {}
    for index, node in enumerate(graph):
        name = node.name
        labels[node] = name if name and counts[name] == 1 else f"{name or node.op_type}#{index}"
    return labels


# --------------------------------------------------------------------------- rule results


class _Unmappable(Exception):
    """A rule cannot map the touched axis; the message says why."""


@dataclass
class _Member:
    port: tuple[str, int]  # ("in", i) or ("out", i)
    axis: int
    local: np.ndarray  # element -> class-local index
    role: str = "activation"


@dataclass
class _Class:
    members: list[_Member]
    size: int
    update: tuple[str, dict[str, Any], list[tuple[tuple[str, int], int]]] | None = None  # kind, data, member ports


def _ident(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    if attr.is_ref():
        raise _Unmappable(f"attribute '{name}' is a reference to a function attribute")
    return int(attr.value)


def _ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    if attr is None:
        return None
    if attr.is_ref():
        raise _Unmappable(f"attribute '{name}' is a reference to a function attribute")
    return [int(v) for v in attr.value]


def _floats_attr(node: ir.Node, name: str) -> list[float] | None:
    attr = node.attributes.get(name)
    return None if attr is None else [float(v) for v in attr.value]


def _label(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


# --------------------------------------------------------------------------- the builder


class _Builder:
    """Breadth-first walk from every source, then element unions and groups."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.dims_by_name = _inferred_dims(model)
        self.values: dict[str, ir.Value] = {}
        for value in self.graph.inputs:
            if value.name:
                self.values[value.name] = value
        for name, value in self.graph.initializers.items():
            self.values[name] = value
        for node in self.graph:
            for value in node.outputs:
                if value.name:
                    self.values[value.name] = value
        self.labels = node_labels(self.graph)
        self.shape_values: dict[str, list[int | str | None]] = {}
        self._refine_dims()
        self.nx = nx.Graph()
        self.sizes: dict[Key, int] = {}
        self.roles: dict[Key, str] = {}
        self.failures: dict[Key, list[str]] = {}
        self.key_nodes: dict[Key, dict[str, None]] = {}
        self.relations: list[tuple[Key, int, np.ndarray]] = []  # (key, class id, local map)
        self.class_sizes: list[int] = []
        self.class_keys: list[list[Key]] = []
        self.updates: list[tuple[NodeUpdate, Key]] = []
        self.role_nodes: dict[Key, dict[str, set[str]]] = {}
        self.applied: set[tuple[int, tuple[str, int], int]] = set()
        self.queue: deque[Key] = deque()
        self.order: dict[Key, int] = {}
        self.per_use: dict[Key, tuple[str, int]] = {}  # key -> (node label, input index) of a per-use constant

    # ---------------------------------------------------------------- facts

    def _refine_dims(self) -> None:
        """Fill dims onnx inference left symbolic where the graph fixes them.

        onnx shape inference gives up on a Reshape whose target shape is a Concat
        of ``Gather(Shape(x), k)`` pieces and constants (attention in exported
        transformers), and everything after it loses its static dims. One pass in
        graph order recomputes Reshape (reading the target's pieces), Transpose,
        MatMul, element-wise and broadcasting ops; a static dim replaces a
        symbolic or unknown one, never another static dim. Then contraction axes,
        which must match exactly, give their static size to the other side
        (a MatMul's A[..., K] from its weight [K, N], a Gemm's, a Conv's input
        channels), and the forward pass runs once more.
        """
        self._refine_forward()
        self._refine_contractions()
        self._refine_forward()

    def _set_dim(self, value: ir.Value | None, axis: int, size: int) -> None:
        if value is None or not value.name or value.const_value is not None:
            return
        dims = self.dims_by_name.get(value.name)
        if dims is None or not -len(dims) <= axis < len(dims) or isinstance(dims[axis], int):
            return
        updated = list(dims)
        updated[axis] = size
        self.dims_by_name[value.name] = tuple(updated)

    def _refine_contractions(self) -> None:
        for node in self.graph:
            if node.domain not in _ONNX_DOMAINS or len(node.inputs) < 2:
                continue
            a, w = node.inputs[0], node.inputs[1]
            a_dims, w_dims = self.dims(a), self.dims(w)
            if a_dims is None or w_dims is None:
                continue
            try:
                if node.op_type == "MatMul" and len(a_dims) >= 2 and len(w_dims) >= 2:
                    k_a, k_w = a_dims[-1], w_dims[-2]
                    if isinstance(k_w, int):
                        self._set_dim(a, -1, k_w)
                    if isinstance(k_a, int):
                        self._set_dim(w, -2, k_a)
                elif node.op_type == "Gemm" and len(a_dims) == 2 and len(w_dims) == 2:
                    a_k = 0 if _int_attr(node, "transA", 0) else 1
                    w_k = 1 if _int_attr(node, "transB", 0) else 0
                    if isinstance(w_dims[w_k], int):
                        self._set_dim(a, a_k, w_dims[w_k])  # type: ignore[arg-type]
                elif node.op_type == "Conv" and len(a_dims) >= 2 and len(w_dims) >= 2 and isinstance(w_dims[1], int):
                    self._set_dim(a, 1, w_dims[1] * _int_attr(node, "group", 1))
            except _Unmappable:
                continue

    def _refine_forward(self) -> None:
        for node in self.graph:
            if node.domain not in _ONNX_DOMAINS or not node.outputs or not node.outputs[0].name:
                continue
            try:
                values = _eval_shape_node(self, node)
            except (_Unmappable, ValueError, IndexError, TypeError, KeyError):
                values = None
            if values is not None:
                self.shape_values[node.outputs[0].name] = values
            try:
                computed = _refined_output_dims(self, node)
            except (_Unmappable, ValueError, IndexError, TypeError, KeyError):
                computed = None
            if computed is None:
                continue
            out = node.outputs[0]
            current = self.dims_by_name.get(out.name)
            if current is None or len(current) != len(computed):
                if current is None:
                    self.dims_by_name[out.name] = computed
                continue
            self.dims_by_name[out.name] = tuple(
                c if isinstance(c, int) or n is None else n for c, n in zip(current, computed, strict=True)
            )

    def dims(self, value: ir.Value | None) -> tuple[int | str | None, ...] | None:
        """The value's dims: int (static), str (symbolic) or None (unknown); None when the rank is unknown."""
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape)
        dims = self.dims_by_name.get(value.name or "")
        if dims is not None:
            return dims
        if value.shape is not None:
            return _shape_dims(value.shape)
        return None

    def rank(self, value: ir.Value | None) -> int | None:
        dims = self.dims(value)
        return None if dims is None else len(dims)

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """A small constant's array (initializer or Constant output), else None.

        Only tensors of at most ``_SMALL_CONSTANT`` elements are read (shapes, axes,
        sizes, indices): weights are never materialised here.
        """
        value = _through_identity(value)
        if value is None:
            return None
        tensor = value.const_value
        if tensor is None:
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant" and producer.domain in _ONNX_DOMAINS:
                attr = producer.attributes.get("value")
                if attr is not None and not attr.is_ref():
                    tensor = attr.value
                else:
                    for name in ("value_int", "value_ints", "value_float", "value_floats"):
                        attr = producer.attributes.get(name)
                        if attr is not None and not attr.is_ref():
                            return np.asarray(attr.value)
        if tensor is None or value.is_graph_input() or math.prod(tensor.shape) > _SMALL_CONSTANT:
            return None
        return np.asarray(tensor.numpy())

    def is_constant(self, value: ir.Value | None) -> bool:
        """True for an initializer that is not a graph input, a Constant node's output, or an Identity of either.

        (Exporters emit ``Identity(initializer)`` for tensors they deduplicate, e.g. equal biases.)
        """
        value = _through_identity(value)
        if value is None or value.is_graph_input():
            return False
        if value.is_initializer() or value.const_value is not None and value.producer() is None:
            return True
        producer = value.producer()
        return producer is not None and producer.op_type == "Constant" and producer.domain in _ONNX_DOMAINS

    @staticmethod
    def port_value(node: ir.Node, port: tuple[str, int]) -> ir.Value | None:
        side, index = port
        values = node.inputs if side == "in" else node.outputs
        return values[index] if index < len(values) else None

    # ---------------------------------------------------------------- walk

    def build(self) -> ChannelGroups:
        for node in self.graph:
            for key in self._sources(node):
                if key not in self.sizes:
                    self._add_key(key, self._size_of(key), None)
                    self._walk()
        return self._groups()

    def _size_of(self, key: Key) -> int:
        dims = self.dims(self.values[key[0]])
        assert dims is not None  # sources are constants with static shapes
        return int(dims[key[1]])  # type: ignore[arg-type]

    def _sources(self, node: ir.Node) -> list[Key]:
        if node.domain not in _ONNX_DOMAINS or len(node.inputs) < 2:
            return []
        weight = node.inputs[1]
        if weight is None or not weight.name or not self.is_constant(weight):
            return []
        dims = self.dims(weight)
        if dims is None:
            return []
        op = node.op_type
        axis: int | None = None
        try:
            if op == "Conv" and len(dims) >= 2:
                axis = 0
            elif op == "ConvTranspose" and len(dims) >= 2:
                axis = 1 if _int_attr(node, "group", 1) == 1 else 0
            elif op == "Gemm" and len(dims) == 2:
                axis = 0 if _int_attr(node, "transB", 0) else 1
            elif op == "MatMul" and len(dims) == 2:
                axis = 1
        except _Unmappable:
            return []
        if axis is None or not isinstance(dims[axis], int) or dims[axis] < 2:
            return []
        return [(weight.name, axis)]

    def _add_key(self, key: Key, size: int, node: ir.Node | None) -> bool:
        """Register a channel axis; False when it contradicts a size seen before."""
        if key in self.sizes:
            if self.sizes[key] != size:
                self._fail(key, f"'{key[0]}' axis {key[1]} is linked with {size} and {self.sizes[key]} elements")
                return False
            return True
        self.sizes[key] = size
        self.order[key] = len(self.order)
        self.nx.add_node(key)
        self.key_nodes[key] = {}
        self.queue.append(key)
        return True

    def _fail(self, key: Key, reason: str) -> None:
        reasons = self.failures.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)
            logger.debug("channel groups: %s", reason)

    def _walk(self) -> None:
        while self.queue:
            key = self.queue.popleft()
            name, axis = key
            value = self.values.get(name)
            if value is None:
                self._fail(key, f"'{name}' is not a value of the main graph")
                continue
            if value.is_graph_output():
                self._fail(key, f"'{name}' is a graph output (its shape must not change)")
            if value.is_graph_input():
                self._fail(key, f"'{name}' is a graph input (its shape must not change)")
            if key in self.per_use:
                continue  # a shared constant parameter sliced for one use: its other readers are not coupled
            producer = value.producer()
            if producer is not None and not self.is_constant(value):
                self._apply(producer, ("out", value.index() or 0), axis, key)
            for usage in value.uses():
                node = usage.node
                if node.graph is not self.graph:
                    self._fail(key, f"'{name}' is read inside a subgraph (by {_label(node)})")
                    continue
                self._apply(node, ("in", usage.idx), axis, key)

    def _apply(self, node: ir.Node, port: tuple[str, int], axis: int, key: Key) -> None:
        marker = (id(node), port, axis)
        if marker in self.applied:
            return
        self.applied.add(marker)
        self.key_nodes[key][self.labels[node]] = None
        if node.domain not in _ONNX_DOMAINS:
            self._fail(key, f"{_label(node)} of domain '{node.domain}' reads or produces '{key[0]}'; custom ops have no rule")
            return
        if node.op_identifier() in self.model.functions:
            self._fail(key, f"{_label(node)} calls a model-local function")
            return
        rule = _RULES.get(node.op_type)
        if rule is None:
            self._fail(key, f"{_label(node)} reads or produces '{key[0]}' axis {axis}; {node.op_type} has no coupling rule")
            return
        try:
            result = rule(self, node, port, axis)
        except _Unmappable as exc:
            self._fail(key, f"{_label(node)}: {exc}")
            return
        touched = [m for m in result.members if m.port == port and m.axis == axis]
        if not touched:
            self._fail(key, f"{_label(node)}: axis {axis} of its {port[0]}put {port[1]} is not a channel axis it can map")
            return
        size = self.sizes[key]
        if len(touched[0].local) != size:
            self._fail(key, f"{_label(node)}: maps {len(touched[0].local)} elements of '{key[0]}' axis {axis}, which has {size}")
            return
        self._add_class(node, result, key)

    def _add_class(self, node: ir.Node, result: _Class, touched: Key) -> None:
        cid = len(self.class_sizes)
        self.class_sizes.append(result.size)
        keys: list[Key] = []
        port_keys: dict[tuple[tuple[str, int], int], Key] = {}
        label = self.labels[node]
        for member in result.members:
            value = self.port_value(node, member.port)
            if value is None:
                continue
            if not value.name:
                self._fail(touched, f"{_label(node)}: a linked value has no name")
                continue
            key = (value.name, member.axis)
            if (
                member.port[0] == "in"
                and member.role in ("param", "bn-scale")
                and self.is_constant(value)
                and len({(u.node, u.idx) for u in value.uses()}) > 1
            ):
                # A bias or BN parameter shared by several nodes (deduplicated equal tensors)
                # is sliced for this use alone instead of coupling every reader's channels.
                key = (f"{value.name}@{label}#{member.port[1]}", member.axis)
                self.values[key[0]] = value
                self.per_use[key] = (label, member.port[1])
            if not self._add_key(key, len(member.local), node):
                continue
            self.key_nodes[key][label] = None
            port_keys[(member.port, member.axis)] = key
            keys.append(key)
            self.relations.append((key, cid, member.local))
            role = member.role if self.is_constant(value) else "activation"
            current = self.roles.get(key)
            if current is None or _ROLE_ORDER.index(role) < _ROLE_ORDER.index(current):
                self.roles[key] = role
            self.applied.add((id(node), member.port, member.axis))
            self.role_nodes.setdefault(key, {}).setdefault(role, set()).add(label)
            if key != touched:
                self.nx.add_edge(touched, key, node=label)
        self.class_keys.append(keys)
        if result.update is not None:
            kind, data, ports = result.update
            update_keys = tuple(port_keys[(p, a)] for p, a in ports if (p, a) in port_keys)
            self.updates.append((NodeUpdate(label, kind, update_keys, data), touched))

    # ---------------------------------------------------------------- groups

    def _groups(self) -> ChannelGroups:
        keys = sorted(self.sizes, key=self.order.__getitem__)
        base: dict[Key, int] = {}
        total = 0
        for key in keys:
            base[key] = total
            total += self.sizes[key]
        class_base = []
        for size in self.class_sizes:
            class_base.append(total)
            total += size
        left, right = [], []
        for key, cid, local in self.relations:
            left.append(base[key] + _ident(len(local)))
            right.append(class_base[cid] + local)
        roots = _union_find(total, np.concatenate(left) if left else np.zeros(0, np.int64),
                            np.concatenate(right) if right else np.zeros(0, np.int64))
        components = sorted(nx.connected_components(self.nx), key=lambda c: min(self.order[k] for k in c))
        updates_by_key: dict[Key, list[NodeUpdate]] = {}
        for update, key in self.updates:
            updates_by_key.setdefault(key, []).append(update)
        groups = []
        for index, component in enumerate(components):
            members = sorted(component, key=self.order.__getitem__)
            groups.append(self._group(index, members, base, roots, updates_by_key))
        for group in groups:
            logger.debug("channel groups: %s", group.describe())
        return ChannelGroups(groups, self.nx)

    def _group(
        self,
        index: int,
        keys: list[Key],
        base: dict[Key, int],
        roots: np.ndarray,
        updates_by_key: dict[Key, list[NodeUpdate]],
    ) -> ChannelGroup:
        producers_first = sorted(keys, key=lambda k: (self.roles.get(k) != "producer", self.order[k]))
        spans = np.concatenate([roots[base[k] : base[k] + self.sizes[k]] for k in producers_first])
        distinct, first_seen = np.unique(spans, return_index=True)
        unit_of_distinct = np.empty(distinct.size, dtype=np.int64)
        unit_of_distinct[np.argsort(first_seen, kind="stable")] = np.arange(distinct.size)
        slices = []
        producer_nodes: dict[str, None] = {}
        consumer_nodes: dict[str, None] = {}
        all_nodes: dict[str, None] = {}
        for key in keys:
            span = roots[base[key] : base[key] + self.sizes[key]]
            units = unit_of_distinct[np.searchsorted(distinct, span)]
            role = self.roles.get(key, "activation")
            value = self.values.get(key[0])
            nodes = tuple(self.key_nodes.get(key, {}))
            all_nodes.update(dict.fromkeys(nodes))
            for node_name in self.role_nodes.get(key, {}).get("producer", ()) if role == "producer" else ():
                producer_nodes[node_name] = None
            for node_name in self.role_nodes.get(key, {}).get("consumer", ()) if role == "consumer" else ():
                consumer_nodes[node_name] = None
            slices.append(
                ChannelSlice(
                    value.name if value is not None else key[0],  # type: ignore[arg-type]
                    key[1], self.sizes[key], units, role, self.is_constant(value), nodes, self.per_use.get(key),
                )
            )
        unit_count = int(distinct.size)
        reasons = [r for key in keys for r in self.failures.get(key, [])]
        producers = [s for s in slices if s.role == "producer"]
        if not producers and not reasons:
            reasons.append("no producer weight in the group")
        sections = _sections(producers, unit_count)
        block = (_block(producers[0], unit_count) or 1) if producers else 1
        channels = unit_count * block
        updates = [u for key in keys for u in updates_by_key.get(key, [])]
        reason = "; ".join(dict.fromkeys(reasons)) if reasons else None
        return ChannelGroup(
            index=index,
            members=tuple(slices),
            units=unit_count,
            channels=channels,
            block=block,
            prunable=reason is None,
            reason=reason,
            producers=tuple(producer_nodes),
            consumers=tuple(consumer_nodes),
            sections=tuple(sections),
            updates=tuple(updates),
            nodes=tuple(all_nodes),
        )


def _through_identity(value: ir.Value | None) -> ir.Value | None:
    """The value an Identity chain copies (the value itself when it is not an Identity's output)."""
    seen = 0
    while value is not None and seen < 16:
        producer = value.producer()
        if producer is None or producer.op_type != "Identity" or producer.domain not in _ONNX_DOMAINS:
            return value
        value = producer.inputs[0] if producer.inputs else None
        seen += 1
    return value


def _block(member: ChannelSlice, unit_count: int) -> int | None:
    """Elements per unit of a member, None when units differ (units without elements do not count)."""
    counts = np.bincount(member.units, minlength=unit_count)
    present = counts[counts > 0]
    if present.size == 0 or np.any(present != present[0]):
        return None
    return int(present[0])


def _sections(producers: list[ChannelSlice], unit_count: int) -> list[GroupSection]:
    """Units partitioned by the set of producer weights holding channels of them."""
    owners: list[tuple[str, ...]] = [() for _ in range(unit_count)]
    for member in producers:
        for unit in np.unique(member.units).tolist():
            owners[unit] = (*owners[unit], member.value)
    by_owner: dict[tuple[str, ...], list[int]] = {}
    for unit, owner in enumerate(owners):
        if owner:
            by_owner.setdefault(owner, []).append(unit)
    sections = []
    for owner, units in by_owner.items():
        unit_array = np.asarray(units, dtype=np.int64)
        blocks: dict[str, int | None] = {}
        for member in producers:
            if member.value in owner:
                counts = np.bincount(member.units, minlength=unit_count)[unit_array]
                blocks[member.value] = int(counts[0]) if np.all(counts == counts[0]) else None
        sections.append(GroupSection(owner, unit_array, blocks))
    return sections


def _union_find(count: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Root (smallest element) of every element after uniting left[i] with right[i]."""
    parent = np.arange(count, dtype=np.int64)

    def compress() -> None:
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return
            parent[:] = grand

    while left.size:
        compress()
        a, b = parent[left], parent[right]
        differ = a != b
        if not np.any(differ):
            break
        lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
        np.minimum.at(parent, hi, lo)
    compress()
    return parent


def _shape_dims(shape: ir.Shape) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append(dim)
        else:
            value = getattr(dim, "value", None)
            dims.append(value if isinstance(value, str) else None)
    return tuple(dims)


def _inferred_dims(model: ir.Model) -> dict[str, tuple[int | str | None, ...]]:
    """Dims of every named main-graph value after non-strict onnx shape inference on a clone."""
    work = model.clone()
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(work)
    except Exception as exc:  # noqa: BLE001 - inference is best effort; the model's own shapes stay
        logger.debug("channel groups: shape inference failed (%s); using the shapes in the model", exc)
    dims: dict[str, tuple[int | str | None, ...]] = {}
    graph = work.graph
    for value in graph.inputs:
        if value.name and value.shape is not None:
            dims[value.name] = _shape_dims(value.shape)
    for node in graph:
        for value in node.outputs:
            if value.name and value.shape is not None:
                dims[value.name] = _shape_dims(value.shape)
    return dims


# --------------------------------------------------------------------------- rules


Rule = Callable[[_Builder, ir.Node, tuple[str, int], int], _Class]


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise _Unmappable(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _require_rank(b: _Builder, value: ir.Value | None, what: str) -> int:
    rank = b.rank(value)
    if rank is None:
        raise _Unmappable(f"the rank of {what} is unknown")
    return rank


def _check_unused_outputs(node: ir.Node, first_extra: int) -> None:
    for value in node.outputs[first_extra:]:
        if value is not None and (value.uses() or value.is_graph_output()):
            raise _Unmappable(f"its output #{value.index()} ('{value.name}') is used")


def _unary(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """Input 0 and output 0 share every axis; other inputs are scalar parameters."""
    if port not in (("in", 0), ("out", 0)):
        raise _Unmappable(f"the channel axis reaches its {port[0]}put #{port[1]}, a parameter")
    _check_unused_outputs(node, 1)
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    return _Class([_Member(("in", 0), axis, _ident(size)), _Member(("out", 0), axis, _ident(size))], size)


def _broadcast(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """Numpy broadcasting: operands aligned from the right; size-1 or missing axes broadcast."""
    touched = b.port_value(node, port)
    size = b.sizes[(touched.name, axis)]  # type: ignore[union-attr]
    if size == 1:
        raise _Unmappable("a one-element axis: broadcasting is ambiguous")
    out = node.outputs[0]
    ranks = [b.rank(v) for v in node.inputs if v is not None]
    if any(r is None for r in ranks):
        raise _Unmappable("the rank of an operand is unknown")
    out_rank = b.rank(out) or max(ranks)  # type: ignore[type-var]
    touched_rank = _require_rank(b, touched, f"'{touched.name}'")  # type: ignore[union-attr]
    out_axis = axis + out_rank - touched_rank if port[0] == "in" else axis
    members = [_Member(("out", 0), out_axis, _ident(size))]
    for index, value in enumerate(node.inputs):
        if value is None:
            continue
        dims = b.dims(value)
        rank = len(dims)  # type: ignore[arg-type]
        in_axis = out_axis - (out_rank - rank)
        if in_axis < 0:
            continue
        dim = dims[in_axis]  # type: ignore[index]
        if dim == 1:
            continue
        if isinstance(dim, int) and dim != size:
            raise _Unmappable(f"operand #{index} has {dim} elements on the channel axis, not {size}")
        if not isinstance(dim, int) and (("in", index) != port):
            raise _Unmappable(f"operand #{index} ('{value.name}') has an unknown size on the channel axis")
        role = "param"
        members.append(_Member(("in", index), in_axis, _ident(size), role))
    return _Class(members, size)


def _conv(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """Conv: X[N, C_in, ...] * W[C_out, C_in/g, k...] + B[C_out] -> Y[N, C_out, ...]."""
    w = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    dims = b.dims(w)
    if dims is None or len(dims) < 3 or not isinstance(dims[0], int) or not isinstance(dims[1], int):
        raise _Unmappable("its weight shape is unknown")
    group = _int_attr(node, "group", 1)
    c_out, c_in_g = dims[0], dims[1]
    c_in = c_in_g * group
    out_side = {(("in", 1), 0), (("out", 0), 1), (("in", 2), 0)}
    in_side = {(("in", 0), 1), (("in", 1), 1)}
    if group == 1:
        if (port, axis) in in_side:
            return _Class([_Member(("in", 0), 1, _ident(c_in)), _Member(("in", 1), 1, _ident(c_in), "consumer")], c_in)
        if (port, axis) in out_side:
            members = [_Member(("in", 1), 0, _ident(c_out), "producer"), _Member(("out", 0), 1, _ident(c_out))]
            if bias is not None:
                members.append(_Member(("in", 2), 0, _ident(c_out), "param"))
            return _Class(members, c_out)
        raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is a batch, spatial or kernel axis")
    if c_out % group:
        raise _Unmappable(f"{c_out} output channels do not divide into {group} groups")
    c_out_g = c_out // group
    if (port, axis) in out_side | {(("in", 0), 1)}:
        members = [
            _Member(("in", 0), 1, _ident(c_in) // c_in_g),
            _Member(("in", 1), 0, _ident(c_out) // c_out_g, "producer"),
            _Member(("out", 0), 1, _ident(c_out) // c_out_g),
        ]
        if bias is not None:
            members.append(_Member(("in", 2), 0, _ident(c_out) // c_out_g, "param"))
        update = ("group", {"per_group": c_in_g}, [(("in", 0), 1)])
        return _Class(members, group, update)
    raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is the per-group input axis of a grouped Conv")


def _conv_transpose(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """ConvTranspose: X[N, C_in, ...], W[C_in, C_out/g, k...], B[C_out] -> Y[N, C_out, ...]."""
    w = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    dims = b.dims(w)
    if dims is None or len(dims) < 3 or not isinstance(dims[0], int) or not isinstance(dims[1], int):
        raise _Unmappable("its weight shape is unknown")
    group = _int_attr(node, "group", 1)
    c_in, c_out_g = dims[0], dims[1]
    c_out = c_out_g * group
    if group == 1:
        if (port, axis) in {(("in", 0), 1), (("in", 1), 0)}:
            return _Class([_Member(("in", 0), 1, _ident(c_in)), _Member(("in", 1), 0, _ident(c_in), "consumer")], c_in)
        if (port, axis) in {(("in", 1), 1), (("out", 0), 1), (("in", 2), 0)}:
            members = [_Member(("in", 1), 1, _ident(c_out), "producer"), _Member(("out", 0), 1, _ident(c_out))]
            if bias is not None:
                members.append(_Member(("in", 2), 0, _ident(c_out), "param"))
            return _Class(members, c_out)
        raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is a batch, spatial or kernel axis")
    if c_in % group:
        raise _Unmappable(f"{c_in} input channels do not divide into {group} groups")
    c_in_g = c_in // group
    if (port, axis) in {(("in", 0), 1), (("in", 1), 0), (("out", 0), 1), (("in", 2), 0)}:
        members = [
            _Member(("in", 0), 1, _ident(c_in) // c_in_g),
            _Member(("in", 1), 0, _ident(c_in) // c_in_g, "producer"),
            _Member(("out", 0), 1, _ident(c_out) // c_out_g),
        ]
        if bias is not None:
            members.append(_Member(("in", 2), 0, _ident(c_out) // c_out_g, "param"))
        return _Class(members, group, ("group", {"per_group": c_in_g}, [(("in", 0), 1)]))
    raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is the per-group output axis of a grouped ConvTranspose")


def _gemm(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """Gemm: Y[M, N] = alpha · A'[M, K] · B'[K, N] + beta · C."""
    a, w = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    a_dims, b_dims = b.dims(a), b.dims(w)
    if a_dims is None or b_dims is None or len(a_dims) != 2 or len(b_dims) != 2:
        raise _Unmappable("its operands are not known 2-D tensors")
    a_k = 0 if _int_attr(node, "transA", 0) else 1
    b_k = 1 if _int_attr(node, "transB", 0) else 0
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    c_dims = b.dims(c) if c is not None else None
    if c is not None and c_dims is None:
        raise _Unmappable("the shape of C is unknown")
    k_class = [(("in", 0), a_k, "consumer"), (("in", 1), b_k, "consumer")]
    n_class = [(("in", 1), 1 - b_k, "producer"), (("out", 0), 1, "activation")]
    m_class = [(("in", 0), 1 - a_k, "producer"), (("out", 0), 0, "activation")]
    if c_dims:
        if len(c_dims) >= 1 and c_dims[-1] not in (1,):
            n_class.append((("in", 2), len(c_dims) - 1, "param"))
        if len(c_dims) == 2 and c_dims[0] != 1:
            m_class.append((("in", 2), 0, "param"))
    for cls in (k_class, n_class, m_class):
        if any(p == port and ax == axis for p, ax, _ in cls):
            return _Class([_Member(p, ax, _ident(size), role) for p, ax, role in cls], size)
    raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is not an axis of the product")


def _matmul(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """MatMul: Y[..., M, N] = A[..., M, K] · B[..., K, N], batch axes broadcast."""
    a, w = node.inputs[0], node.inputs[1]
    ra = _require_rank(b, a, "A")
    rb = _require_rank(b, w, "B")
    if ra < 2 or rb < 2:
        raise _Unmappable("a 1-D operand")
    ry = max(ra, rb)
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    classes = [
        [(("in", 0), ra - 1, "consumer"), (("in", 1), rb - 2, "consumer")],
        [(("in", 1), rb - 1, "producer"), (("out", 0), ry - 1, "activation")],
        [(("in", 0), ra - 2, "producer"), (("out", 0), ry - 2, "activation")],
    ]
    for cls in classes:
        if any(p == port and ax == axis for p, ax, _ in cls):
            return _Class([_Member(p, ax, _ident(size), role) for p, ax, role in cls], size)
    classes = []
    a_dims, b_dims = b.dims(a), b.dims(w)
    touched_out_axis = axis if port[0] == "out" else axis + ry - (ra if port == ("in", 0) else rb)
    for out_axis in range(ry - 2):
        if out_axis != touched_out_axis:
            continue
        batch = [(("out", 0), out_axis, "activation")]
        for index, (rank, dims) in enumerate(((ra, a_dims), (rb, b_dims))):
            in_axis = out_axis - (ry - rank)
            if in_axis < 0:
                continue
            dim = dims[in_axis]  # type: ignore[index]
            if dim == 1:
                continue
            if not isinstance(dim, int) and ((("in", index), in_axis) != (port, axis)):
                raise _Unmappable(f"operand #{index} has an unknown size on batch axis {in_axis}")
            batch.append((("in", index), in_axis, "param"))
        classes.append(batch)
    for cls in classes:
        if any(p == port and ax == axis for p, ax, _ in cls):
            return _Class([_Member(p, ax, _ident(size), role) for p, ax, role in cls], size)
    raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is not an axis of the product")


def _batchnorm(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """BatchNormalization / InstanceNormalization: X axis 1 and every per-channel parameter."""
    _check_unused_outputs(node, 1)
    if node.op_type == "BatchNormalization" and _int_attr(node, "training_mode", 0):
        raise _Unmappable("training_mode is set")
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    channel_ports = {(("in", 0), 1), (("out", 0), 1)} | {(("in", i), 0) for i in range(1, len(node.inputs))}
    if (port, axis) not in channel_ports:
        raise _Unmappable(f"axis {axis} of its {port[0]}put #{port[1]} is not the channel axis")
    members = [_Member(("in", 0), 1, _ident(size)), _Member(("out", 0), 1, _ident(size))]
    for index in range(1, len(node.inputs)):
        role = "bn-scale" if index == 1 and node.op_type == "BatchNormalization" else "param"
        members.append(_Member(("in", index), 0, _ident(size), role))
    return _Class(members, size)


def _layernorm(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    _check_unused_outputs(node, 1)
    if port not in (("in", 0), ("out", 0)):
        raise _Unmappable("the channel axis reaches a normalisation parameter")
    rank = _require_rank(b, node.inputs[0], "X")
    first = _norm_axis(_int_attr(node, "axis", -1), rank)
    if axis >= first:
        raise _Unmappable(f"it normalises over axis {axis}")
    return _unary(b, node, port, axis)


def _softmax(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    rank = _require_rank(b, node.inputs[0], "its input")
    default = -1 if b.opset >= 13 else 1
    normalised = _norm_axis(_int_attr(node, "axis", default), rank)
    if axis == normalised or (b.opset < 13 and axis > normalised):
        raise _Unmappable(f"it normalises over axis {axis}")
    return _unary(b, node, port, axis)


def _pool(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    if axis not in (0, 1):
        raise _Unmappable(f"it pools over axis {axis}")
    return _unary(b, node, port, axis)


def _transpose(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    rank = _require_rank(b, node.inputs[0], "its input")
    perm = _ints_attr(node, "perm") or list(reversed(range(rank)))
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    in_axis = axis if port[0] == "in" else perm[axis]
    out_axis = perm.index(in_axis)
    return _Class([_Member(("in", 0), in_axis, _ident(size)), _Member(("out", 0), out_axis, _ident(size))], size)


def _axes_from(b: _Builder, node: ir.Node, input_index: int) -> list[int] | None:
    attr = _ints_attr(node, "axes")
    if attr is not None:
        return attr
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        array = b.const(node.inputs[input_index])
        if array is None:
            raise _Unmappable("its axes are computed at run time")
        return [int(v) for v in array.reshape(-1)]
    return None


def _unsqueeze(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    rank = _require_rank(b, node.inputs[0], "its input")
    axes = _axes_from(b, node, 1)
    if axes is None:
        raise _Unmappable("no axes")
    out_rank = rank + len(axes)
    inserted = sorted(_norm_axis(a, out_rank) for a in axes)
    kept = [i for i in range(out_rank) if i not in inserted]
    if port[0] == "in":
        in_axis, out_axis = axis, kept[axis]
    else:
        if axis in inserted:
            raise _Unmappable(f"output axis {axis} is an inserted axis")
        in_axis, out_axis = kept.index(axis), axis
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    return _Class([_Member(("in", 0), in_axis, _ident(size)), _Member(("out", 0), out_axis, _ident(size))], size)


def _squeeze(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    rank = _require_rank(b, node.inputs[0], "its input")
    axes = _axes_from(b, node, 1)
    if axes is None:
        raise _Unmappable("no axes (it would squeeze a pruned axis left with one channel)")
    removed = sorted(_norm_axis(a, rank) for a in axes)
    kept = [i for i in range(rank) if i not in removed]
    if port[0] == "in":
        if axis in removed:
            raise _Unmappable(f"it squeezes axis {axis}")
        in_axis, out_axis = axis, kept.index(axis)
    else:
        in_axis, out_axis = kept[axis], axis
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    return _Class([_Member(("in", 0), in_axis, _ident(size)), _Member(("out", 0), out_axis, _ident(size))], size)


def _reduce(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    rank = _require_rank(b, node.inputs[0], "its input")
    axes_input = 1
    axes = _axes_from(b, node, axes_input)
    if not axes:
        if _int_attr(node, "noop_with_empty_axes", 0):
            return _unary(b, node, port, axis)
        raise _Unmappable("it reduces over every axis")
    reduced = sorted(_norm_axis(a, rank) for a in axes)
    keepdims = _int_attr(node, "keepdims", 1)
    kept = [i for i in range(rank) if i not in reduced]
    if port[0] == "in":
        if axis in reduced:
            raise _Unmappable(f"it reduces over axis {axis}")
        in_axis = axis
        out_axis = axis if keepdims else kept.index(axis)
    else:
        in_axis = axis if keepdims else kept[axis]
        if in_axis in reduced:
            raise _Unmappable(f"it reduces over axis {in_axis}")
        out_axis = axis
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    return _Class([_Member(("in", 0), in_axis, _ident(size)), _Member(("out", 0), out_axis, _ident(size))], size)


def _concat(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    rank = _require_rank(b, b.port_value(node, port), "the touched value")
    cat_axis = _norm_axis(_int_attr(node, "axis", 0), rank)
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    if axis != cat_axis:
        members = [_Member(("out", 0), axis, _ident(size))]
        members += [_Member(("in", i), axis, _ident(size), "param") for i, v in enumerate(node.inputs) if v is not None]
        return _Class(members, size)
    members = []
    offset = 0
    for index, value in enumerate(node.inputs):
        dims = b.dims(value)
        dim = dims[cat_axis] if dims is not None and len(dims) == rank else None
        if not isinstance(dim, int):
            raise _Unmappable(f"input #{index} has an unknown size on the concat axis")
        if dim:
            members.append(_Member(("in", index), cat_axis, offset + _ident(dim), "param"))
        offset += dim
    members.append(_Member(("out", 0), cat_axis, _ident(offset)))
    return _Class(members, offset)


def _split(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    x = node.inputs[0]
    rank = _require_rank(b, x, "its input")
    split_axis = _norm_axis(_int_attr(node, "axis", 0), rank)
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    if axis != split_axis:
        members = [_Member(("in", 0), axis, _ident(size))]
        members += [_Member(("out", i), axis, _ident(size)) for i in range(len(node.outputs))]
        return _Class(members, size)
    if port[0] == "in" and port[1] != 0:
        raise _Unmappable("the channel axis reaches the split sizes")
    total = b.dims(x)[split_axis]  # type: ignore[index]
    if not isinstance(total, int):
        raise _Unmappable("the split axis has an unknown size")
    sizes = _split_sizes(b, node, total)
    members = [_Member(("in", 0), split_axis, _ident(total))]
    offset = 0
    ports = [(("in", 0), split_axis)]
    for index, count in enumerate(sizes):
        members.append(_Member(("out", index), split_axis, offset + _ident(count)))
        ports.append((("out", index), split_axis))
        offset += count
    if any(count == 0 for count in sizes):
        raise _Unmappable("an empty split output")
    return _Class(members, total, ("split", {"axis": split_axis}, ports))


def _split_sizes(b: _Builder, node: ir.Node, total: int) -> list[int]:
    attr = _ints_attr(node, "split")
    if attr is not None:
        sizes = attr
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = b.const(node.inputs[1])
        if array is None:
            raise _Unmappable("its split sizes are computed at run time")
        sizes = [int(v) for v in array.reshape(-1)]
    else:
        count = len(node.outputs)
        chunk = -(-total // count)
        sizes = [min(chunk, total - i * chunk) for i in range(count)]
    if sum(sizes) != total or len(sizes) != len(node.outputs):
        raise _Unmappable(f"split sizes {sizes} do not cover {total} elements in {len(node.outputs)} outputs")
    return sizes


def _slice(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    if port[0] == "in" and port[1] != 0:
        raise _Unmappable("the channel axis reaches a slice parameter")
    x = node.inputs[0]
    rank = _require_rank(b, x, "its input")
    if b.opset < 10:
        starts, ends = _ints_attr(node, "starts"), _ints_attr(node, "ends")
        axes = _ints_attr(node, "axes")
        steps = None
    else:
        arrays = [b.const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None for i in range(1, 5)]
        for index, array in enumerate(arrays[:2]):
            if array is None:
                raise _Unmappable(f"its {('starts', 'ends')[index]} are computed at run time")
        for index in (2, 3):
            if len(node.inputs) > index + 1 and node.inputs[index + 1] is not None and arrays[index] is None:
                raise _Unmappable(f"its {('axes', 'steps')[index - 2]} are computed at run time")
        starts, ends = [int(v) for v in arrays[0].reshape(-1)], [int(v) for v in arrays[1].reshape(-1)]  # type: ignore[union-attr]
        axes = [int(v) for v in arrays[2].reshape(-1)] if arrays[2] is not None else None
        steps = [int(v) for v in arrays[3].reshape(-1)] if arrays[3] is not None else None
    if starts is None or ends is None:
        raise _Unmappable("no starts or ends")
    axes = [_norm_axis(a, rank) for a in (axes if axes is not None else range(len(starts)))]
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    if axis not in axes:
        return _Class([_Member(("in", 0), axis, _ident(size)), _Member(("out", 0), axis, _ident(size))], size)
    position = axes.index(axis)
    step = steps[position] if steps is not None else 1
    if step != 1:
        raise _Unmappable(f"it slices the channel axis with step {step}")
    total = b.dims(x)[axis]  # type: ignore[index]
    if not isinstance(total, int):
        raise _Unmappable("the sliced axis has an unknown size")
    start, end = starts[position], ends[position]
    start = min(max(start + total if start < 0 else start, 0), total)
    end = min(max(end + total if end < 0 else end, 0), total)
    count = max(end - start, 0)
    if count == 0:
        raise _Unmappable("it slices out nothing")
    members = [_Member(("in", 0), axis, _ident(total)), _Member(("out", 0), axis, start + _ident(count))]
    data = {"axis": axis, "position": position, "start": start, "end": end}
    return _Class(members, total, ("slice", data, [(("in", 0), axis), (("out", 0), axis)]))


def _flatten(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    x = node.inputs[0]
    in_dims = b.dims(x)
    if in_dims is None:
        raise _Unmappable("the rank of its input is unknown")
    rank = len(in_dims)
    split = _int_attr(node, "axis", 1)
    split = split + rank if split < 0 else split
    blocks = [(0, split, 0, 1), (split, rank, 1, 2)]
    out_dims = (_product(in_dims[:split]), _product(in_dims[split:]))
    return _reshape_block(b, node, port, axis, in_dims, out_dims, blocks, update=None)


def _product(dims: Iterable[int | str | None]) -> int | None:
    total = 1
    for dim in dims:
        if not isinstance(dim, int):
            return None
        total *= dim
    return total


def _reshape(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    if port[0] == "in" and port[1] != 0:
        raise _Unmappable("the channel axis reaches the shape input")
    x, y = node.inputs[0], node.outputs[0]
    in_dims, out_dims = b.dims(x), b.dims(y)
    if in_dims is not None:
        out_dims = _merge_dims(out_dims, _reshape_dims(b, node, in_dims))
    if in_dims is None or out_dims is None:
        raise _Unmappable("the shape of its input or output is unknown")
    blocks = _align(in_dims, out_dims) or _align_suffix(in_dims, out_dims)
    if blocks is None:
        raise _Unmappable(f"cannot align input dims {list(in_dims)} with output dims {list(out_dims)}")
    return _reshape_block(b, node, port, axis, in_dims, out_dims, blocks, update="reshape")


def _target_entries(b: _Builder, shape: ir.Value | None) -> list[int | str | None] | None:
    """A Reshape's or Expand's target shape, entry by entry (see :func:`_shape_value`)."""
    return _shape_value(b, shape)


_Token = int | str | None
"""An entry of a small integer tensor: a known int, a dim's symbol (≥ 0), or unknown."""

#: Largest integer tensor the shape-value interpreter follows.
_SHAPE_VALUE_LIMIT = 16


def _shape_value(b: _Builder, value: ir.Value | None) -> list[_Token] | None:
    """The entries of a small 1-D (or scalar) integer tensor, when the graph fixes them.

    A tiny interpreter for the shape arithmetic exporters emit around Reshape and
    Expand (``view(batch, seq, heads, -1)``, ``mask.expand(...)``): constants,
    ``Shape`` (a dim's symbol when it is not static), Gather, Slice, Concat,
    Unsqueeze/Squeeze/Cast/Identity/Reshape, ConstantOfShape, Add/Sub/Mul/Div,
    Equal and Where. Entries read off a shape are never negative, which settles
    the ``Where(Equal(s, -1), 1, s)`` idiom.
    """
    if value is None:
        return None
    array = b.const(value)
    if array is not None:
        if array.dtype.kind not in "iub" or array.size > _SHAPE_VALUE_LIMIT:
            return None
        return [int(v) for v in array.reshape(-1)]
    return b.shape_values.get(value.name or "")


def _eval_shape_node(b: _Builder, node: ir.Node) -> list[_Token] | None:
    """The value of ``node``'s first output under :func:`_shape_value`'s rules, or None."""
    op = node.op_type
    if op not in _SHAPE_VALUE_OPS:
        return None
    args = [_shape_value(b, v) for v in node.inputs]
    if op == "Shape":
        dims = b.dims(node.inputs[0])
        if dims is None:
            return None
        return list(dims[slice(_int_attr(node, "start", 0), _int_attr(node, "end", len(dims)))])
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Flatten"):
        return args[0] if args and args[0] is not None and len(args[0]) <= _SHAPE_VALUE_LIMIT else None
    if op == "Concat":
        if any(a is None for a in args):
            return None
        return [t for a in args for t in a]  # type: ignore[union-attr]
    if op == "Gather":
        if _int_attr(node, "axis", 0) != 0 or args[0] is None or args[1] is None:
            return None
        data, indices = args[0], args[1]
        if not all(isinstance(i, int) for i in indices):
            return None
        return [data[int(i)] for i in indices]  # type: ignore[arg-type]
    if op == "Slice":
        if args[0] is None or len(args) < 3 or args[1] is None or args[2] is None:
            return None
        bounds = [*args[1], *args[2], *(args[3] or [0] if len(args) > 3 else [0]), *(args[4] or [1] if len(args) > 4 else [1])]
        if len(args[1]) != 1 or not all(isinstance(t, int) for t in bounds):
            return None
        step = bounds[3] if len(bounds) > 3 else 1
        return args[0][slice(bounds[0], bounds[1], step)]  # type: ignore[arg-type, misc]
    if op == "ConstantOfShape":
        if args[0] is None or not all(isinstance(t, int) for t in args[0]) or len(args[0]) != 1:
            return None
        attr = node.attributes.get("value")
        fill_array = np.asarray(attr.value.numpy()).reshape(-1) if attr is not None else np.zeros(1, np.float32)
        if fill_array.dtype.kind not in "iu":
            return None
        fill = int(fill_array[0])
        return [fill] * int(args[0][0])  # type: ignore[arg-type]
    if op in ("Add", "Sub", "Mul", "Div", "Equal") and len(args) == 2 and args[0] is not None and args[1] is not None:
        left, right = args[0], args[1]
        if len(left) != len(right) and 1 not in (len(left), len(right)):
            return None
        size = max(len(left), len(right))
        left = left * size if len(left) == 1 else left
        right = right * size if len(right) == 1 else right
        return [_arith(op, x, y) for x, y in zip(left, right, strict=True)]
    if op == "Where" and len(args) == 3 and all(a is not None for a in args):
        size = max(len(a) for a in args)  # type: ignore[arg-type]
        if any(len(a) not in (1, size) for a in args):  # type: ignore[arg-type]
            return None
        cond, x, y = (a * size if len(a) == 1 else a for a in args)  # type: ignore[operator]
        return [
            xi if c == 1 else yi if c == 0 else xi if xi == yi and xi is not None else None
            for c, xi, yi in zip(cond, x, y, strict=True)
        ]
    return None


_SHAPE_VALUE_OPS = frozenset(
    ("Shape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Flatten", "Concat", "Gather", "Slice",
     "ConstantOfShape", "Add", "Sub", "Mul", "Div", "Equal", "Where")
)


def _arith(op: str, x: _Token, y: _Token) -> _Token:
    if isinstance(x, int) and isinstance(y, int):
        if op == "Add":
            return x + y
        if op == "Sub":
            return x - y
        if op == "Mul":
            return x * y
        if op == "Div":
            return x // y if y else None
        return int(x == y)
    if op == "Mul" and (x == 1 or y == 1):
        return y if x == 1 else x
    if op == "Div" and y == 1:
        return x
    if op in ("Add", "Sub") and y == 0:
        return x
    if op == "Equal":
        if isinstance(x, str) and isinstance(y, int) and y < 0 or isinstance(y, str) and isinstance(x, int) and x < 0:
            return 0  # a dim is never negative
        if isinstance(x, str) and x == y:
            return 1
    return None


def _merge_dims(
    inferred: tuple[int | str | None, ...] | None, computed: tuple[int | str | None, ...] | None
) -> tuple[int | str | None, ...] | None:
    """Per dim, a static value from either source (inference may miss what the target shape says)."""
    if inferred is None or computed is None or len(inferred) != len(computed):
        return inferred if inferred is not None else computed
    merged: list[int | str | None] = []
    for a, c in zip(inferred, computed, strict=True):
        if isinstance(a, int) and isinstance(c, int) and a != c:
            raise _Unmappable(f"its output dims {list(inferred)} contradict its target shape {list(computed)}")
        merged.append(a if isinstance(a, int) else c if isinstance(c, int) else a if a is not None else c)
    return tuple(merged)


def _reshape_dims(
    b: _Builder, node: ir.Node, in_dims: tuple[int | str | None, ...]
) -> tuple[int | str | None, ...] | None:
    """Output dims from the target shape: 0 copies the input dim, -1 takes what is left."""
    entries = _target_entries(b, node.inputs[1] if len(node.inputs) > 1 else None)
    if entries is None:
        return None
    allowzero = _int_attr(node, "allowzero", 0)
    dims: list[int | str | None] = []
    for index, entry in enumerate(entries):
        if entry == 0 and not allowzero:
            dims.append(in_dims[index] if index < len(in_dims) else None)
        else:
            dims.append(entry)
    if None in dims and -1 in dims:
        dims[dims.index(-1)] = None
    if -1 in dims:
        rest = [d for d in dims if d != -1]
        in_symbols = sorted(str(d) for d in in_dims if not isinstance(d, int))
        out_symbols = sorted(str(d) for d in rest if not isinstance(d, int))
        known = _product(d for d in in_dims if isinstance(d, int))
        other = _product(d for d in rest if isinstance(d, int))
        symbols_cancel = in_symbols == out_symbols and None not in in_dims and None not in rest
        dims[dims.index(-1)] = known // other if symbols_cancel and known is not None and other else None
    return tuple(dims)


def _reshape_block(
    b: _Builder,
    node: ir.Node,
    port: tuple[str, int],
    axis: int,
    in_dims: tuple[int | str | None, ...],
    out_dims: tuple[int | str | None, ...],
    blocks: list[tuple[int, int, int, int]],
    update: str | None,
) -> _Class:
    side = 0 if port[0] == "in" else 2
    block = next((blk for blk in blocks if blk[side] <= axis < blk[side + 1]), None)
    if block is None:
        raise _Unmappable(f"axis {axis} is not in any aligned block")
    i0, i1, j0, j1 = block
    ins, outs = list(in_dims[i0:i1]), list(out_dims[j0:j1])
    if not all(isinstance(d, int) for d in ins + outs):
        raise _Unmappable(f"the channel's block has dynamic dims: input {ins}, output {outs}")
    ins_i: list[int] = ins  # type: ignore[assignment]
    outs_i: list[int] = outs  # type: ignore[assignment]
    if len(ins_i) == 1 and len(outs_i) == 1:
        size = ins_i[0]
        members = [_Member(("in", 0), i0, _ident(size)), _Member(("out", 0), j0, _ident(size))]
        cls = _Class(members, size)
        out_axis = j0
    elif len(outs_i) == 1:  # merge: in dims [.., C, ..] -> one dim
        if port[0] == "in":
            p = axis - i0
        else:
            p = next(i for i, d in enumerate(ins_i) if d > 1)
        total = outs_i[0]
        local = np.unravel_index(_ident(total), ins_i)[p].astype(np.int64)
        members = [_Member(("in", 0), i0 + p, _ident(ins_i[p])), _Member(("out", 0), j0, local)]
        cls = _Class(members, ins_i[p])
        out_axis = j0
    elif len(ins_i) == 1:  # split: one dim -> [H, dh, ...]; whole blocks of the outermost non-1 factor
        q = next(i for i, d in enumerate(outs_i) if d > 1)
        if port[0] == "out" and axis - j0 != q:
            raise _Unmappable(f"it splits the channel axis and axis {axis} is an inner factor")
        local = np.unravel_index(_ident(ins_i[0]), outs_i)[q].astype(np.int64)
        members = [_Member(("in", 0), i0, local), _Member(("out", 0), j0 + q, _ident(outs_i[q]))]
        cls = _Class(members, outs_i[q])
        out_axis = j0 + q
    else:
        raise _Unmappable(f"it mixes the channel axis with other dims: {ins_i} -> {outs_i}")
    if update == "reshape":
        source = _shape_entry(b, node, out_axis, identity=(len(ins_i) == 1 and len(outs_i) == 1 and i0 == j0))
        cls.update = ("reshape", {"position": out_axis, "source": source}, [(("out", 0), out_axis)])
    return cls


def _refined_output_dims(b: _Builder, node: ir.Node) -> tuple[int | str | None, ...] | None:
    """Output dims of the ops :meth:`_Builder._refine_dims` recomputes, else None."""
    op = node.op_type
    inputs = [b.dims(v) if v is not None else None for v in node.inputs]
    if not inputs or inputs[0] is None:
        return None
    first = inputs[0]
    if op == "Reshape":
        dims = _reshape_dims(b, node, first)
        return None if dims is None or -1 in dims else dims
    if op == "Transpose":
        perm = _ints_attr(node, "perm") or list(reversed(range(len(first))))
        return tuple(first[p] for p in perm)
    if op in _UNARY or op in ("Softmax", "LogSoftmax"):
        return first
    if op in _BROADCAST:
        if any(d is None for d in inputs):
            return None
        rank = max(len(d) for d in inputs)  # type: ignore[arg-type]
        padded = [(1,) * (rank - len(d)) + tuple(d) for d in inputs]  # type: ignore[arg-type]
        return tuple(_broadcast_dim([d[i] for d in padded]) for i in range(rank))
    if op == "Expand" and len(node.inputs) == 2:
        target = _target_entries(b, node.inputs[1])
        if target is None:
            return None
        rank = max(len(first), len(target))
        padded_in = (1,) * (rank - len(first)) + tuple(first)
        padded_target = (1,) * (rank - len(target)) + tuple(target)
        return tuple(_broadcast_dim([x, y]) for x, y in zip(padded_in, padded_target, strict=True))
    if op == "MatMul" and len(inputs) == 2 and inputs[1] is not None and len(first) >= 2 and len(inputs[1]) >= 2:
        a, w = first, inputs[1]
        rank = max(len(a), len(w))
        batch_a = (1,) * (rank - len(a)) + tuple(a[:-2])
        batch_b = (1,) * (rank - len(w)) + tuple(w[:-2])
        batch = tuple(_broadcast_dim([x, y]) for x, y in zip(batch_a, batch_b, strict=True))
        return (*batch, a[-2], w[-1])
    return None


def _broadcast_dim(dims: list[int | str | None]) -> int | str | None:
    static = {d for d in dims if isinstance(d, int) and d != 1}
    if len(static) == 1:
        return static.pop()
    if static:
        raise ValueError("dims do not broadcast")
    symbols = {d for d in dims if not isinstance(d, int)}
    if not symbols:
        return 1
    return symbols.pop() if len(symbols) == 1 and None not in symbols else None


def _align(
    in_dims: tuple[int | str | None, ...], out_dims: tuple[int | str | None, ...]
) -> list[tuple[int, int, int, int]] | None:
    """Blocks (i0, i1, j0, j1) of input and output dims with equal products, in order.

    A dynamic dim matches an equal symbol; when each side has exactly one dynamic dim
    and the two meet, they are matched too (the element count forces them equal once
    every static block matches).
    """
    blocks = []
    i = j = 0
    n, m = len(in_dims), len(out_dims)
    dynamic_in = [d for d in in_dims if not isinstance(d, int)]
    dynamic_out = [d for d in out_dims if not isinstance(d, int)]
    lone_dynamic = len(dynamic_in) == 1 and len(dynamic_out) == 1
    while i < n or j < m:
        if i < n and j < m and in_dims[i] == out_dims[j] and in_dims[i] is not None:
            blocks.append((i, i + 1, j, j + 1))
            i, j = i + 1, j + 1
            continue
        if lone_dynamic and i < n and j < m and not isinstance(in_dims[i], int) and not isinstance(out_dims[j], int):
            blocks.append((i, i + 1, j, j + 1))
            i, j = i + 1, j + 1
            continue
        if i < n and in_dims[i] == 1:
            blocks.append((i, i + 1, j, j))
            i += 1
            continue
        if j < m and out_dims[j] == 1:
            blocks.append((i, i, j, j + 1))
            j += 1
            continue
        if i >= n or j >= m:
            return None
        i0, j0 = i, j
        left, right = in_dims[i], out_dims[j]
        if not isinstance(left, int) or not isinstance(right, int):
            return None
        i, j = i + 1, j + 1
        while left != right:
            if left < right:
                if i >= n or not isinstance(in_dims[i], int):
                    return None
                left *= in_dims[i]  # type: ignore[operator]
                i += 1
            else:
                if j >= m or not isinstance(out_dims[j], int):
                    return None
                right *= out_dims[j]  # type: ignore[operator]
                j += 1
        blocks.append((i0, i, j0, j))
    return blocks


def _align_suffix(
    in_dims: tuple[int | str | None, ...], out_dims: tuple[int | str | None, ...]
) -> list[tuple[int, int, int, int]] | None:
    """Blocks aligned from the right over the static trailing dims; the rest is one opaque leading block.

    Row-major reshapes act on a static suffix on its own once the suffix products
    match, whatever the dynamic leading dims (batch, sequence) are.
    """
    i, j = len(in_dims), len(out_dims)
    blocks: list[tuple[int, int, int, int]] = []
    while i > 0 and j > 0:
        left, right = in_dims[i - 1], out_dims[j - 1]
        if left == 1:
            blocks.append((i - 1, i, j, j))
            i -= 1
            continue
        if right == 1:
            blocks.append((i, i, j - 1, j))
            j -= 1
            continue
        if not isinstance(left, int) or not isinstance(right, int):
            break
        i1, j1 = i, j
        i, j = i - 1, j - 1
        complete = True
        while left != right:
            if left < right:
                if i == 0 or not isinstance(in_dims[i - 1], int):
                    complete = False
                    break
                left *= in_dims[i - 1]  # type: ignore[operator]
                i -= 1
            else:
                if j == 0 or not isinstance(out_dims[j - 1], int):
                    complete = False
                    break
                right *= out_dims[j - 1]  # type: ignore[operator]
                j -= 1
        if not complete:
            i, j = i1, j1
            break
        blocks.append((i, i1, j, j1))
    if not blocks:
        return None
    if i > 0 or j > 0:
        blocks.append((0, i, 0, j))
    return list(reversed(blocks))


def _shape_entry(b: _Builder, node: ir.Node, position: int, *, identity: bool) -> tuple[Any, ...]:
    """Where the Reshape's target shape holds entry ``position``, so the pruner can rewrite it."""
    shape = node.inputs[1] if len(node.inputs) > 1 else None
    allowzero = _int_attr(node, "allowzero", 0)

    def classify(entry: int, found: tuple[Any, ...]) -> tuple[Any, ...]:
        if entry == -1:
            return ("inferred",)
        if entry == 0 and not allowzero:
            if identity:
                return ("inferred",)
            raise _Unmappable("its shape entry for the channel axis is 0 (a copy of another input dim)")
        return found

    array = b.const(shape)
    if array is not None:
        flat = array.reshape(-1)
        if position >= flat.size:
            raise _Unmappable("its shape constant is shorter than the output rank")
        return classify(int(flat[position]), ("const", shape.name))  # type: ignore[union-attr]
    producer = shape.producer() if shape is not None else None
    if producer is None or producer.op_type != "Concat" or producer.domain not in _ONNX_DOMAINS:
        raise _Unmappable("its target shape is computed at run time")
    offset = 0
    for index, piece in enumerate(producer.inputs):
        dims = b.dims(piece)
        if dims is None or len(dims) != 1 or not isinstance(dims[0], int):
            raise _Unmappable("its target shape is a Concat of pieces of unknown length")
        if offset <= position < offset + dims[0]:
            piece_array = b.const(piece)
            if piece_array is None:
                raise _Unmappable("its shape entry for the channel axis is computed at run time")
            entry = int(piece_array.reshape(-1)[position - offset])
            return classify(entry, ("piece", b.labels[producer], index, position - offset))
        offset += dims[0]
    raise _Unmappable("its target shape is shorter than the output rank")


def _shape_op(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    """Shape: fine when only other dims are read from its output."""
    rank = _require_rank(b, node.inputs[0], "its input")
    start = _int_attr(node, "start", 0)
    end = _int_attr(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    size = b.sizes[(node.inputs[0].name, axis)]  # type: ignore[union-attr]
    alone = _Class([_Member(("in", 0), axis, _ident(size))], size)
    if not start <= axis < end:
        return alone
    index = axis - start
    out = node.outputs[0]
    if out.is_graph_output():
        raise _Unmappable("its output is a graph output")
    length = end - start
    for usage in out.uses():
        reader = usage.node
        if usage.idx == 0 and reader.op_type == "Gather" and _int_attr(reader, "axis", 0) == 0:
            indices = b.const(reader.inputs[1])
            if indices is not None and index not in {int(v) % length for v in indices.reshape(-1)}:
                continue
        if usage.idx == 0 and reader.op_type == "Slice" and len(reader.inputs) >= 3:
            bounds = [b.const(v) if v is not None else None for v in reader.inputs[1:5]]
            bounds += [None] * (4 - len(bounds))
            if bounds[0] is not None and bounds[1] is not None and all(
                v is None or v.size == 1 for v in bounds
            ) and (bounds[3] is None or int(bounds[3].reshape(-1)[0]) == 1):
                lo, hi = int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])
                lo = min(max(lo + length if lo < 0 else lo, 0), length)
                hi = min(max(hi + length if hi < 0 else hi, 0), length)
                if not lo <= index < hi:
                    continue
        raise _Unmappable(f"the size of the channel axis is read by {_label(reader)}")
    return alone


def _pad(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    if port not in (("in", 0), ("out", 0)):
        raise _Unmappable("the channel axis reaches a Pad parameter")
    rank = _require_rank(b, node.inputs[0], "its input")
    if b.opset < 11:
        pads = _ints_attr(node, "pads")
        axes = list(range(rank))
    else:
        pads_array = b.const(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads_array is None:
            raise _Unmappable("its pads are computed at run time")
        pads = [int(v) for v in pads_array.reshape(-1)]
        axes_value = node.inputs[3] if len(node.inputs) > 3 else None
        if axes_value is not None:
            axes_array = b.const(axes_value)
            if axes_array is None:
                raise _Unmappable("its axes are computed at run time")
            axes = [_norm_axis(int(a), rank) for a in axes_array.reshape(-1)]
        else:
            axes = list(range(rank))
    if pads is None:
        raise _Unmappable("no pads")
    if axis in axes:
        k = axes.index(axis)
        if pads[k] != 0 or pads[k + len(axes)] != 0:
            raise _Unmappable(f"it pads axis {axis}")
    return _unary(b, node, port, axis)


def _resize(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    if port not in (("in", 0), ("out", 0)):
        raise _Unmappable("the channel axis reaches a Resize parameter")
    scale_index = 1 if node.op_type == "Upsample" else 2
    sizes_value = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
    if sizes_value is not None:
        raise _Unmappable("it is given output sizes (they would have to change)")
    scales = _floats_attr(node, "scales")
    if scales is None:
        value = node.inputs[scale_index] if len(node.inputs) > scale_index else None
        array = b.const(value)
        if array is None:
            raise _Unmappable("its scales are computed at run time")
        scales = [float(v) for v in array.reshape(-1)]
    axes = _ints_attr(node, "axes")
    rank = _require_rank(b, node.inputs[0], "its input")
    axes = [_norm_axis(a, rank) for a in axes] if axes else list(range(len(scales)))
    if axis in axes and scales[axes.index(axis)] != 1.0:
        raise _Unmappable(f"it rescales axis {axis}")
    return _unary(b, node, port, axis)


def _expand(b: _Builder, node: ir.Node, port: tuple[str, int], axis: int) -> _Class:
    if port not in (("in", 0), ("out", 0)):
        raise _Unmappable("the channel axis reaches the shape input")
    shape = _target_entries(b, node.inputs[1])
    if shape is None:
        raise _Unmappable("its shape is computed at run time")
    rank_in = _require_rank(b, node.inputs[0], "its input")
    rank_out = max(rank_in, len(shape))
    out_axis = axis + rank_out - rank_in if port[0] == "in" else axis
    in_axis = out_axis - (rank_out - rank_in)
    shape_axis = out_axis - (rank_out - len(shape))
    if in_axis < 0:
        raise _Unmappable("the channel axis is created by the expansion")
    if shape_axis >= 0 and shape[shape_axis] != 1:
        raise _Unmappable(f"its shape has {shape[shape_axis]} on the channel axis, not 1")
    size = b.sizes[(b.port_value(node, port).name, axis)]  # type: ignore[union-attr]
    return _Class([_Member(("in", 0), in_axis, _ident(size)), _Member(("out", 0), out_axis, _ident(size))], size)


_UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Gelu", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity", "Dropout",
    "Cast", "Floor", "Ceil", "Round", "Sin", "Cos", "Mish", "Sign", "ThresholdedRelu", "Shrink", "Not", "IsNaN",
    "IsInf",
)
_BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Mod",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
)
_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)

_RULES: dict[str, Rule] = {
    **dict.fromkeys(_UNARY, _unary),
    **dict.fromkeys(_BROADCAST, _broadcast),
    **dict.fromkeys(_POOLS, _pool),
    **dict.fromkeys(_REDUCE, _reduce),
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Shape": _shape_op,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Expand": _expand,
}
"""The coupling rule of each ai.onnx op; every other op makes its group unprunable."""
