"""Per-layer cost models: what one layer costs under a candidate precision and shape.

A *layer* is a node with a constant weight: Conv, ConvTranspose, Gemm, MatMul
(one operand an initializer, possibly behind a DequantizeLinear) and Gather
from a constant table (an embedding). :func:`layer_facts` reads each layer's
float facts once (shapes from onnx shape inference at batch 1, weight sizes
from tensor metadata: no weight is read); :func:`layer_cost` prices a
:class:`LayerChoice` for it; :func:`model_cost` sums a choice per layer.

Notation for one layer: ``MACs`` its multiply-accumulates per sample at float
(see :mod:`onnxpq.analysis.macs`), ``P`` its weight elements, ``P_b`` its bias
elements, ``b_w``/``b_a`` the weight/activation bits (the float width, 32 for
float32, when the choice says ``None``), ``k = channel_keep`` the fraction of
output channels kept (rounded up to the target's ``channel_multiple``, as
``prune-channels`` does) and ``d = density`` the fraction of weights kept by
unstructured or N:M pruning. Zeros pay only where the hardware uses them::

    d_compute = d  if the target skips zeros (sparsity.unstructured = "compute",
                   or the choice's N:M pattern is in sparsity.n_m) or no target is given,
                1  otherwise (dense kernels multiply the zeros)
    d_storage = d  if the target stores zeros compressed (unstructured != "none") or no target,
                1  otherwise

    macs           = MACs · k · d_compute
    bops           = MACs · k · d_compute · b_w · b_a       (Bayesian Bits; van Baalen et al. 2020)
    weight_memory  = P · k · d_storage · b_w + P_b · k · 32  (bits; "Prune or quantize?", Kioxia 2020)
    measured       = kernel time in ms of the layer alone on the target's onnxruntime EP
                     (:mod:`onnxpq.analysis.node_latency`)

Gather tables do no MACs: their ``macs``/``bops`` are 0 and only memory (and
measured time) prices them. Removing output channels also shrinks the *next*
layer's input; that coupling is the planner's (prune-channels' groups), not
priced here. Sparse-format index overhead is not counted (the equal-compression
convention of Kuzmin et al. 2023).

Own code: the formulas are the literature's; shapes reuse
:mod:`onnxpq.analysis.macs`' binding and inference (onnx's, with onnxruntime's
symbolic inference as fallback).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from onnxpq.analysis import macs as _macs

if TYPE_CHECKING:
    from onnxpq.targets.profile import Target

__all__ = [
    "COST_MODELS",
    "LayerFacts",
    "LayerChoice",
    "FLOAT_CHOICE",
    "layer_facts",
    "layer_cost",
    "model_cost",
    "kept_channels",
    "cost_unit",
]

logger = logging.getLogger(__name__)

#: The cost models :func:`layer_cost` knows, with their unit.
COST_MODELS: dict[str, str] = {
    "macs": "MACs per sample",
    "bops": "bit-operations per sample",
    "weight_memory": "bits",
    "measured": "ms per sample (onnxruntime profiling, kernel time)",
}

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
_BIAS_BITS = 32


@dataclass(frozen=True)
class LayerFacts:
    """Float facts of one layer, read from shapes at batch 1 (no weight values).

    ``input_shape``/``output_shape`` are the activation's (for Gather: the
    indices' and the gathered output's); ``None`` when inference could not
    resolve them. ``out_channel_axis`` is the weight axis that indexes output
    channels (Conv 0, ConvTranspose 1, Gemm 0 if transB else 1, MatMul 1,
    Gather 1 — a table's columns). ``attributes`` are the node's plain
    attributes as (name, value) pairs, enough to rebuild the node alone.
    """

    node: str
    op_type: str
    weight: str
    weight_shape: tuple[int, ...]
    params: int
    bias: str | None
    bias_params: int
    macs: int
    out_channels: int
    out_channel_axis: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    float_bits: int = 32
    float_type: str = "float32"
    weight_input: int = 1
    attributes: tuple[tuple[str, Any], ...] = ()

    @property
    def group(self) -> int:
        """Conv groups (1 for other ops)."""
        return int(dict(self.attributes).get("group", 1))


@dataclass(frozen=True)
class LayerChoice:
    """A candidate treatment of one layer.

    ``weight_bits``/``activation_bits``: bits, or ``None`` for float (the
    layer's float width). ``density``: fraction of weights kept by unstructured
    or N:M pruning. ``channel_keep``: fraction of output channels kept.
    ``n_m``: the N:M pattern when the zeros follow one (then ``density`` must be N/M).
    """

    weight_bits: int | None = None
    activation_bits: int | None = None
    density: float = 1.0
    channel_keep: float = 1.0
    n_m: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("weight_bits", "activation_bits"):
            bits = getattr(self, name)
            if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32):
                raise ValueError(f"LayerChoice.{name} must be None or an integer in 1..32, got {bits!r}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"LayerChoice.density must be in (0, 1], got {self.density}")
        if not 0.0 < self.channel_keep <= 1.0:
            raise ValueError(f"LayerChoice.channel_keep must be in (0, 1], got {self.channel_keep}")
        if self.n_m is not None:
            n, m = self.n_m
            if not 0 < n < m or not math.isclose(self.density, n / m):
                raise ValueError(f"LayerChoice.n_m={self.n_m} needs 0 < N < M and density = N/M, got {self.density}")


#: The float layer, untouched.
FLOAT_CHOICE = LayerChoice()


def cost_unit(cost_model: str) -> str:
    """The unit of a cost model's figures."""
    _check_cost_model(cost_model)
    return COST_MODELS[cost_model]


def _check_cost_model(cost_model: str) -> None:
    if cost_model not in COST_MODELS:
        raise ValueError(f"unknown cost model {cost_model!r}; valid: {', '.join(COST_MODELS)}")


def kept_channels(facts: LayerFacts, channel_keep: float, multiple: int = 1) -> int:
    """Output channels kept: ceil(C · keep) raised to a multiple of ``multiple`` (at most C, at least 1)."""
    total = facts.out_channels
    if total <= 0:
        return total
    kept = max(1, math.ceil(total * channel_keep - 1e-9))
    if multiple > 1 and total >= multiple:
        kept = min(total, -(-kept // multiple) * multiple)
    return kept


def _keep_fraction(facts: LayerFacts, choice: LayerChoice, target: Target | None) -> float:
    if choice.channel_keep >= 1.0 or facts.out_channels <= 0:
        return 1.0
    multiple = target.sparsity.channel_multiple if target is not None else 1
    return kept_channels(facts, choice.channel_keep, multiple) / facts.out_channels


def _compute_density(choice: LayerChoice, target: Target | None) -> float:
    if target is None or target.sparsity.unstructured == "compute":
        return choice.density
    if choice.n_m is not None and tuple(choice.n_m) in {tuple(p) for p in target.sparsity.n_m}:
        return choice.density
    return 1.0


def _storage_density(choice: LayerChoice, target: Target | None) -> float:
    if target is None or target.sparsity.unstructured != "none":
        return choice.density
    return 1.0


def layer_cost(
    facts: LayerFacts,
    choice: LayerChoice,
    cost_model: str,
    target: Target | None = None,
    **measure_options: Any,
) -> float:
    """Cost of ``facts``' layer under ``choice`` (formulas in the module docstring).

    ``cost_model`` is one of :data:`COST_MODELS`. ``target`` decides whether
    zeros pay and rounds kept channels; ``None`` prices the pure count.
    ``measure_options`` go to :func:`onnxpq.analysis.node_latency.layer_latency_ms`
    for ``"measured"`` (``cache``, ``threads``, ``runs``).

    Raises:
        ValueError: an unknown cost model.
    """
    _check_cost_model(cost_model)
    if cost_model == "measured":
        from onnxpq.analysis.node_latency import layer_latency_ms

        return layer_latency_ms(facts, choice, target, **measure_options)
    keep = _keep_fraction(facts, choice, target)
    if cost_model == "weight_memory":
        b_w = choice.weight_bits or facts.float_bits
        return float(facts.params * keep * _storage_density(choice, target) * b_w + facts.bias_params * keep * _BIAS_BITS)
    macs = facts.macs * keep * _compute_density(choice, target)
    if cost_model == "macs":
        return float(macs)
    b_w = choice.weight_bits or facts.float_bits
    b_a = choice.activation_bits or facts.float_bits
    return float(macs * b_w * b_a)


def model_cost(
    facts: Mapping[str, LayerFacts],
    choices: Mapping[str, LayerChoice] | None,
    cost_model: str,
    target: Target | None = None,
    **measure_options: Any,
) -> float:
    """Σ over layers of :func:`layer_cost`; a layer missing from ``choices`` is float.

    Raises:
        ValueError: ``choices`` names a layer that ``facts`` lacks, or an unknown cost model.
    """
    choices = dict(choices or {})
    unknown = sorted(set(choices) - set(facts))
    if unknown:
        raise ValueError(f"choices name layers that are not in the facts: {unknown[:5]}")
    return float(
        sum(
            layer_cost(layer, choices.get(name, FLOAT_CHOICE), cost_model, target, **measure_options)
            for name, layer in facts.items()
        )
    )


def _plain_attribute(value: Any) -> Any:
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, (int, float, str)) for v in value):
        return tuple(value)
    return None


def _attributes(node: ir.Node) -> tuple[tuple[str, Any], ...]:
    plain = []
    for name, attr in sorted(node.attributes.items()):
        value = _plain_attribute(attr.value)
        if value is None:
            logger.debug("node %r: attribute %r is not plain data; left out of its facts", node.name, name)
            continue
        plain.append((name, value))
    return tuple(plain)


def _dims(value: ir.Value | None) -> tuple[int, ...] | None:
    return _macs._static_dims(value)


def _weight_dims(initializer: ir.Value) -> tuple[int, ...]:
    tensor = initializer.const_value
    if tensor is not None:
        return tuple(int(d) for d in tensor.shape)
    return _dims(initializer) or ()


def _float_bits(node: ir.Node, weight: ir.Value) -> tuple[int, str]:
    """The layer's float width and type name: its output's dtype when float, else its weight's."""
    for value in (node.outputs[0] if node.outputs else None, weight):
        dtype = value.dtype if value is not None else None
        if dtype is not None and dtype.is_floating_point():
            return dtype.bitwidth, dtype.numpy().name if dtype != ir.DataType.BFLOAT16 else "bfloat16"
    return 32, "float32"


def _layer_of(node: ir.Node, name: str) -> LayerFacts | None:
    """Facts of ``node`` if it is a layer (constant weight), else None."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in _LAYER_OPS:
        return None
    if op == "Gather":
        table = _macs._weight_initializer(_macs._input(node, 0))
        indices = _macs._input(node, 1)
        if table is None or _macs._weight_initializer(indices) is not None:
            return None
        dims = _weight_dims(table)
        if len(dims) != 2 or _macs._attr_int(node, "axis", 0) != 0:
            logger.debug("node %r: Gather of a %d-D table or on axis != 0 is not a layer", name, len(dims))
            return None
        bits, float_type = _float_bits(node, table)
        return LayerFacts(
            node=name, op_type=op, weight=table.name or "", weight_shape=dims, params=math.prod(dims),
            bias=None, bias_params=0, macs=0, out_channels=dims[1], out_channel_axis=1,
            input_shape=_dims(indices), output_shape=_dims(node.outputs[0]),
            float_bits=bits, float_type=float_type, weight_input=0, attributes=_attributes(node),
        )
    roles = _macs._roles(node)
    weight = _macs._weight_initializer(roles.weight)
    if weight is None or roles.activation is None or _macs._weight_initializer(roles.activation) is not None:
        return None
    dims = _weight_dims(weight)
    if op == "MatMul" and len(dims) != 2:
        logger.debug("node %r: MatMul with a %d-D constant operand is not a layer", name, len(dims))
        return None
    weight_input = list(node.inputs).index(roles.weight)
    if op == "MatMul" and weight_input != 1:
        logger.debug("node %r: MatMul with a constant first operand is not a layer", name)
        return None
    if op == "Conv":
        axis = 0
    elif op == "ConvTranspose":
        axis = 1
    elif op == "Gemm":
        axis = 0 if _macs._attr_int(node, "transB", 0) else 1
    else:
        axis = 1
    out_channels = dims[axis] * (_macs._attr_int(node, "group", 1) if op == "ConvTranspose" else 1) if dims else 0
    bias_value = roles.biases[0] if roles.biases else None
    bias = _macs._weight_initializer(bias_value)
    formula = _macs._mac_formula(node)
    macs = formula(node) if formula is not None else None
    if macs is None:
        logger.warning("layer %r (%s): shapes not static; its MACs are counted as 0", name, op)
    bits, float_type = _float_bits(node, weight)
    return LayerFacts(
        node=name, op_type=op, weight=weight.name or "", weight_shape=dims, params=math.prod(dims) if dims else 0,
        bias=bias.name if bias is not None else None,
        bias_params=math.prod(_weight_dims(bias)) if bias is not None else 0,
        macs=int(macs or 0), out_channels=out_channels, out_channel_axis=axis,
        input_shape=_dims(roles.activation), output_shape=_dims(node.outputs[0]),
        float_bits=bits, float_type=float_type, weight_input=weight_input, attributes=_attributes(node),
    )


def _batch_one_shapes(model: ir.Model) -> dict[str, list[int]]:
    """Every graph input's shape with symbolic dims set to 1 (batch 1, and 1 for any other unknown)."""
    shapes = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.shape is None:
            continue
        dims = list(value.shape)
        if not all(isinstance(d, int) for d in dims):
            shapes[value.name] = [d if isinstance(d, int) else 1 for d in dims]
    return shapes


def layer_facts(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, LayerFacts]:
    """Facts of every layer of ``model``'s main graph, keyed by node name, in graph order.

    ``input_shapes`` binds graph inputs (e.g. a sequence length); inputs it
    does not name have their symbolic dims set to 1. Unnamed nodes are named
    ``"<op_type>#<index>"`` as :func:`onnxpq.analysis.macs.model_cost` names them.
    ``model`` is not modified and no weight is read.

    Raises:
        ValueError: ``input_shapes`` names no graph input or contradicts its shape.
    """
    work = model.clone()
    shapes = _batch_one_shapes(work)
    shapes.update({k: list(v) for k, v in (input_shapes or {}).items()})
    if shapes:
        _macs._bind_input_shapes(work, shapes)
    _macs._infer_shapes(work)
    layers = {}
    candidates = []
    for index, node in enumerate(ir.traversal.RecursiveGraphIterator(work.graph)):
        if node.graph is work.graph:
            candidates.append((node.name or f"{node.op_type}#{index}", node))
    if any(
        _macs._mac_formula(node) is not None and _macs._mac_formula(node)(node) is None  # type: ignore[misc]
        for _, node in candidates
    ):
        _macs._symbolic_shapes(work)
    for name, node in candidates:
        facts = _layer_of(node, name)
        if facts is not None:
            layers[name] = facts
    return layers
