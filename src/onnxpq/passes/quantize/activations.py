"""``quantize-activations``: n-bit (2–8) fake quantization of the activations that Conv/Gemm/MatMul/ConvTranspose read.

For every wanted node, each of its *activation* operands ``x`` — the data
input of Conv and ConvTranspose, input A of Gemm and MatMul, and input B too
where it is not a constant (an activation × activation product such as
attention's ``Q Kᵀ``) — is replaced, for that node only, by its n-bit
quantize-dequantize::

    x' = DequantizeLinear(QuantizeLinear(Clip(x, r_lo, r_hi), s, z), s, z)

with the range ``[lo, hi]`` calibrated on ``PassContext.calibration``
(:func:`onnxpq.passes.quantize.calibration.calibrate`, ``bits`` passed on so
that the MSE and entropy searches optimise for the n-bit grid):

* asymmetric (default): the unsigned grid ``[0, 2^n − 1]``,
  ``s = (hi − lo) / (2^n − 1)`` and ``z = round(−lo / s)`` on the range
  widened to contain 0 (:func:`onnxpq.passes.quantize.affine.asymmetric_params`;
  a ReLU output gets ``z = 0``);
* ``symmetric=true``: the signed grid ``[−2^(n−1), 2^(n−1) − 1]``,
  ``s = max(|lo|, |hi|) / (2^(n−1) − 1)``, ``z = 0``.

The grid's real range is ``[r_lo, r_hi] = [s·(q_min − z), s·(q_max − z)]``.
Storage: UINT8 (INT8 symmetric) at every width. At 8 bits the container
saturates at exactly the grid and no Clip is inserted; below 8 bits its
QuantizeLinear would saturate at 0..255 (−128..127), so a ``Clip`` to
``[r_lo, r_hi]`` comes first: every value QuantizeLinear then sees rounds
into the n-bit grid, and ``x'`` takes at most ``2^n`` values. The
DequantizeLinear carries ``metadata_props["onnxpq.bits"] = n`` (as
``quantize-weights``' does), so :mod:`onnxpq.analysis.macs` counts the layer's
activation bits as n: ``BOPs = MACs · b_w · b_a · density``.

Why not UINT4/INT4 for 4-bit activations at opset 21: onnxruntime 1.32's QDQ
fusion (graph optimisation level EXTENDED and above) turns
``DQ(uint4 x) → Conv ← DQ(int8 w)`` followed by a Q into a ``QLinearConv``
with a uint4 input, and the session refuses the model ("Type 'tensor(uint4)'
… of operator (QLinearConv) … is invalid"). A Clip before a uint8 Q gives the
same 16 levels and every session loads. A related onnxruntime issue this pass
does not avoid: 8-bit activations with *blocked* (``per-group``) 8-bit-container
weights from ``quantize-weights`` are fused into a QLinearConv that fails at
run time ("filter scale shape invalid"); per-channel weights, 4-bit INT4
weights, or a session at level BASIC run.

Calibration methods: ``mse`` (default: the clip that minimises the expected
squared error of quantize-dequantize at n bits — at 4 bits clipping the tail
matters far more than at 8), ``percentile``, ``entropy``, ``minmax``. Each
width in use is calibrated once (one call per distinct width; the histogram
methods make two passes over ``samples`` calibration samples per call), on the
model as this pass finds it — float activations, weights possibly already
quantized — before any Q/DQ of this pass is inserted. Without calibration data
the inputs are synthesised from the model's input types (a WARNING says so).

One tensor read by layers given different widths gets one Q/DQ per width,
each feeding only its own readers; a tensor that is also a graph output stays
float there. Composes with the other passes: after pruning (calibrated on the
pruned model) and before or after ``quantize-weights`` (a DequantizeLinear
weight is a constant operand, not an activation; ``quantize-weights`` accepts a
model whose only quantization nodes are this pass's activation Q/DQ pairs).
Per node the widths come from ``bits_per_node`` (``name:bits``) or ``bits``.

Left untouched with a DEBUG log: nodes in subgraphs and functions, excluded
nodes and op types, operands already produced by a DequantizeLinear (this
pass run twice, or after ``quantize-static``: ``modified`` is then False), and
operands that are not float32/float16 tensors (float16 needs opset 19 for a
float16 QuantizeLinear input). Opset < 10 (no QuantizeLinear): the model is
left unchanged with a WARNING. Opset 10 takes Clip's bounds as attributes.

Own implementation: onnxruntime's ``quantize_static`` quantizes activations to
8 bits only (or 16/4 as whole-model types), with the weights and every other op
together; here the activations of each layer get their own width, and weights
stay with ``quantize-weights``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.pipeline_text import parse_node_values
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.affine import asymmetric_params, integer_range
from onnxpq.passes.quantize.calibration import TensorRange, calibrate
from onnxpq.passes.quantize.qdq import BITS_KEY, NameAllocator, add_initializer, default_opset, onnx_quantized_type

__all__ = ["QuantizeActivationsPass", "ACTIVATION_OP_TYPES", "ActivationParams", "activation_params"]

logger = logging.getLogger(__name__)

ACTIVATION_OP_TYPES = ("Conv", "Gemm", "MatMul", "ConvTranspose")
CalibrationMethod = Literal["minmax", "percentile", "entropy", "mse"]
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclass(frozen=True)
class ActivationParams:
    """Scale, zero point and the grid ``[q_min, q_max]`` of one n-bit activation quantizer."""

    bits: int
    scale: float
    zero_point: int
    q_min: int
    q_max: int
    signed: bool

    @property
    def real_range(self) -> tuple[float, float]:
        """``[s·(q_min − z), s·(q_max − z)]``: the values the grid can represent (the Clip bounds)."""
        return self.scale * (self.q_min - self.zero_point), self.scale * (self.q_max - self.zero_point)


def activation_params(r: TensorRange, bits: int, symmetric: bool) -> ActivationParams:
    """The n-bit grid for a calibrated range (formulas in the module docstring); a zero range gets s = 1."""
    if symmetric:
        q_min, q_max = integer_range(bits, True)
        absmax = max(abs(r.lo), abs(r.hi))
        return ActivationParams(bits, absmax / q_max if absmax > 0 else 1.0, 0, q_min, q_max, True)
    q_min, q_max = integer_range(bits, False)
    scale, zero = asymmetric_params(r.lo, r.hi, bits, False)
    return ActivationParams(bits, float(scale), int(zero), q_min, q_max, False)


def _display_names(graph: ir.Graph) -> dict[ir.Node, str]:
    """Node names; an unnamed node gets ``<op_type>_<index>`` (as quantize-weights and quantize-static name it)."""
    names = NameAllocator(graph)
    return {node: node.name or names(f"{node.op_type}_{index}") for index, node in enumerate(graph)}


def _is_dequantize(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx", "com.microsoft")


def _is_constant(value: ir.Value) -> bool:
    """An initializer, a Constant's output, or a DequantizeLinear of one (a quantized weight)."""
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    if producer is None:
        return False
    if producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        return True
    if _is_dequantize(producer):
        source = producer.inputs[0] if producer.inputs else None
        return source is not None and _is_constant(source)
    return False


def _node_dtype(node: ir.Node) -> ir.DataType | None:
    """The float type T of a Conv/Gemm/MatMul/ConvTranspose: all its inputs and its output share it."""
    for value in (*node.inputs, *node.outputs):
        if value is not None and value.dtype is not None:
            return value.dtype
    return None


def _parse_bits_per_node(items: Sequence[str]) -> dict[str, int]:
    return parse_node_values(
        items, where="quantize-activations: bits_per_node", kind=int, check=lambda b: 2 <= b <= 8,
        expected="bits in 2..8", form="name:bits",
    )


@dataclass
class _Request:
    """One activation tensor at one width and the (node, input index) pairs that read its quantized copy."""

    value: ir.Value
    bits: int
    uses: list[tuple[ir.Node, int]]


@register_pass
class QuantizeActivationsPass(OnnxpqPass):
    """n-bit (2–8) calibrated Q/DQ of the activation inputs of Conv/Gemm/MatMul/ConvTranspose, per node."""

    name = "quantize-activations"
    exact = False

    def __init__(
        self,
        bits: int = 8,
        *,
        calibration: Literal["minmax", "percentile", "entropy", "mse"] = "mse",
        percentile: float = 99.99,
        symmetric: bool = False,
        samples: int = 256,
        bins: int = 2048,
        bits_per_node: tuple[str, ...] = (),
        exclude_nodes: tuple[str, ...] = (),
        op_types: tuple[str, ...] = ACTIVATION_OP_TYPES,
    ) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
            raise PipelineError(f"quantize-activations: bits must be an integer in 2..8, got {bits!r}")
        if calibration not in get_args(CalibrationMethod):
            raise PipelineError(
                f"quantize-activations: calibration must be one of {', '.join(get_args(CalibrationMethod))}; got {calibration!r}"
            )
        if not (isinstance(percentile, (int, float)) and 0.0 < percentile <= 100.0):
            raise PipelineError(f"quantize-activations: percentile must be in (0, 100], got {percentile!r}")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise PipelineError(f"quantize-activations: samples must be an integer >= 1, got {samples!r}")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise PipelineError(f"quantize-activations: bins must be an integer >= 2, got {bins!r}")
        unknown = sorted(set(op_types) - set(ACTIVATION_OP_TYPES))
        if unknown:
            raise PipelineError(
                f"quantize-activations: cannot quantize the activations of {', '.join(unknown)}; "
                f"supported: {', '.join(ACTIVATION_OP_TYPES)}"
            )
        self._bits_by_node = _parse_bits_per_node(bits_per_node)
        self.bits = int(bits)
        self.calibration = calibration
        self.percentile = float(percentile)
        self.symmetric = bool(symmetric)
        self.samples = int(samples)
        self.bins = int(bins)
        self.bits_per_node = tuple(bits_per_node)
        self.exclude_nodes = tuple(exclude_nodes)
        self.op_types = tuple(op_types)

    # ------------------------------------------------------------------ planning

    @staticmethod
    def _operands(node: ir.Node) -> list[int]:
        """Indices of the operands that are activations (module docstring)."""
        inputs = list(node.inputs)
        if node.op_type in ("Conv", "ConvTranspose"):
            return [0] if inputs else []
        first, second = (inputs + [None, None])[:2]
        out = [0] if first is not None and not _is_constant(first) else []
        if second is not None and not _is_constant(second):
            out.append(1)
        return out

    def _plan(self, graph: ir.Graph, opset: int, display: Mapping[ir.Node, str]) -> tuple[list[_Request], list[ir.Node], int]:
        """The (tensor, width) requests in graph order, the nodes they quantize, and how many candidates were skipped."""
        requests: dict[tuple[ir.Value, int], _Request] = {}
        nodes: list[ir.Node] = []
        skipped = 0
        for node in graph:
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                logger.debug("quantize-activations: the subgraphs of '%s' (%s) are left untouched", display[node], node.op_type)
            if node.domain not in ("", "ai.onnx") or node.op_type not in self.op_types:
                continue
            name = display[node]
            if name in self.exclude_nodes:
                logger.debug("quantize-activations: '%s' (%s) excluded by name", name, node.op_type)
                skipped += 1
                continue
            dtype = _node_dtype(node)
            if dtype not in _FLOATS:
                logger.debug("quantize-activations: '%s' skipped: its type %s is not float32 or float16", name, dtype)
                skipped += 1
                continue
            if dtype == ir.DataType.FLOAT16 and opset < 19:
                logger.debug("quantize-activations: '%s' skipped: a float16 QuantizeLinear input needs opset 19 (model has %d)", name, opset)
                skipped += 1
                continue
            bits = self._bits_by_node.get(name, self.bits)
            taken = False
            for index in self._operands(node):
                value = node.inputs[index]
                if _is_dequantize(value.producer()):  # type: ignore[union-attr]
                    logger.debug("quantize-activations: '%s' input %d is already dequantized; left as it is", name, index)
                    continue
                request = requests.setdefault((value, bits), _Request(value, bits, []))  # type: ignore[arg-type]
                request.uses.append((node, index))
                taken = True
            if taken:
                nodes.append(node)
            else:
                skipped += 1
        return list(requests.values()), nodes, skipped

    # ------------------------------------------------------------------ calibration

    def _calibrate(self, model: ir.Model, ctx: PassContext, requests: list[_Request]) -> dict[tuple[str, int], TensorRange]:
        """Ranges of every (tensor name, width), one :func:`calibrate` call per width; reused within the context."""
        data = ctx.calibration
        if not data:
            from onnxpq.analysis.model_inputs import synthesize_inputs

            logger.warning("quantize-activations: no calibration data; calibrating on synthetic N(0,1) inputs (pass --calibration)")
            data = synthesize_inputs(model, min(self.samples, 32))
        data = {k: v[: self.samples] for k, v in data.items()}
        ranges: dict[tuple[str, int], TensorRange] = {}
        widths = sorted({r.bits for r in requests}) if self.calibration != "minmax" else [self.bits]
        for bits in widths:
            key = (self.name, self.calibration, self.percentile, self.symmetric, self.samples, self.bins, bits)
            memo: dict[str, TensorRange] = ctx.memo.setdefault(key, {})
            wanted = [r.value.name for r in requests if r.bits == bits or self.calibration == "minmax"]
            missing = [name for name in dict.fromkeys(wanted) if name not in memo]
            if missing:
                memo.update(
                    calibrate(
                        model, missing, data, method=self.calibration, percentile=self.percentile, bins=self.bins,
                        bits=bits, symmetric=self.symmetric,
                    )
                )
            for r in requests:
                if r.bits == bits or self.calibration == "minmax":
                    ranges[(r.value.name, r.bits)] = memo[r.value.name]  # type: ignore[index]
        return ranges

    # ------------------------------------------------------------------ rewriting

    def _insert(self, graph: ir.Graph, names: NameAllocator, request: _Request, p: ActivationParams, opset: int) -> None:
        """[Clip →] QuantizeLinear → DequantizeLinear after the tensor's producer; the requested readers take the DQ output."""
        value = request.value
        float_type = value.dtype if value.dtype in _FLOATS else _node_dtype(request.uses[0][0])
        numpy_float = float_type.numpy()  # type: ignore[union-attr]
        native = p.bits == 8  # 4 bits stay in 8-bit containers too (module docstring: onnxruntime's uint4 QLinearConv)
        qtype = onnx_quantized_type(8, p.signed)
        base = f"{value.name}_a{p.bits}"
        created: list[ir.Node] = []
        source = value
        if not native:
            lo, hi = p.real_range
            clipped = ir.Value(name=names(f"{base}_clipped"), shape=value.shape, type=ir.TensorType(float_type))
            if opset >= 11:
                bounds = [
                    add_initializer(graph, names, f"{base}_clip_min", np.array(lo, dtype=numpy_float)),
                    add_initializer(graph, names, f"{base}_clip_max", np.array(hi, dtype=numpy_float)),
                ]
                clip = ir.node("Clip", [value, *bounds], outputs=[clipped], name=names(f"{base}_Clip"))
            else:
                clip = ir.node("Clip", [value], attributes={"min": float(lo), "max": float(hi)}, outputs=[clipped], name=names(f"{base}_Clip"))
            created.append(clip)
            source = clipped
        scale = add_initializer(graph, names, f"{base}_scale", np.array(p.scale, dtype=numpy_float))
        zero_array = np.array(p.zero_point, dtype=np.int8 if p.signed else np.uint8)
        zero = add_initializer(graph, names, f"{base}_zero_point", zero_array)
        q_out = ir.Value(name=names(f"{base}_quantized"), shape=value.shape, type=ir.TensorType(qtype))
        dq_out = ir.Value(name=names(f"{base}_dequantized"), shape=value.shape, type=ir.TensorType(float_type))
        created.append(ir.node("QuantizeLinear", [source, scale, zero], outputs=[q_out], name=names(f"{base}_QuantizeLinear")))
        created.append(
            ir.node(
                "DequantizeLinear", [q_out, scale, zero], outputs=[dq_out], name=names(f"{base}_DequantizeLinear"),
                metadata_props={BITS_KEY: str(p.bits)},
            )
        )
        producer = value.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, created)
        else:  # a graph input or an initializer-free constant: before the first node
            graph.insert_before(next(iter(graph)), created)
        for node, index in request.uses:
            node.replace_input_with(index, dq_out)

    # ------------------------------------------------------------------ the pass

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        graph = model.graph
        opset = default_opset(model)
        if opset == 0:  # an ai.onnx.ml-only model: none of the ops this pass quantizes
            logger.info("quantize-activations: the model imports no default-domain opset; left unchanged")
            ctx.note("skipped", "no default-domain opset")
            return ir.passes.PassResult(model, False)
        if opset < 10:
            logger.warning("quantize-activations: opset %d has no QuantizeLinear; left unchanged", opset)
            ctx.note("skipped", f"opset {opset} < 10")
            return ir.passes.PassResult(model, False)
        if model.functions:
            logger.debug("quantize-activations: %d model-local function(s) left untouched", len(model.functions))
        display = _display_names(graph)
        unmatched = sorted(set(self._bits_by_node) - set(display.values()))
        if unmatched:
            logger.warning("quantize-activations: bits_per_node names no node of the graph: %s", ", ".join(unmatched))
            ctx.note("bits_per_node_unmatched", unmatched)
        requests, nodes, skipped = self._plan(graph, opset, display)
        if not requests:
            ctx.note("quantized_nodes", 0)
            return ir.passes.PassResult(model, False)

        names = NameAllocator(graph)
        for node in graph:
            if not node.name:
                names(display[node])  # reserve the names unnamed nodes get below
        for request in requests:
            if not request.value.name:
                request.value.name = names("activation")  # calibration finds tensors by name
        ranges = self._calibrate(model, ctx, requests)
        params = {id(r): activation_params(ranges[(r.value.name, r.bits)], r.bits, self.symmetric) for r in requests}  # type: ignore[index]
        for request in requests:
            self._insert(graph, names, request, params[id(request)], opset)
        for node, name in display.items():
            if not node.name:
                node.name = name

        layers: dict[str, dict[str, object]] = {}
        for request in requests:
            p = params[id(request)]
            for node, index in request.uses:
                entry = layers.setdefault(display[node], {"bits": request.bits, "inputs": {}})
                entry["inputs"][request.value.name] = {  # type: ignore[index]
                    "range": [round(v, 6) for v in p.real_range], "scale": p.scale, "zero_point": p.zero_point,
                }
        ctx.note("quantized_nodes", len(nodes))
        ctx.note("quantized_node_names", [display[n] for n in nodes])
        ctx.note("skipped_nodes", skipped)
        ctx.note("activation_tensors", len(requests))
        ctx.note("calibration", self.calibration)
        ctx.note("bits", {display[n]: layers[display[n]]["bits"] for n in nodes})
        ctx.note("layers", layers)
        logger.info(
            "quantize-activations: %d activation tensor(s) of %d node(s) quantized (%s calibration), %d node(s) skipped",
            len(requests), len(nodes), self.calibration, skipped,
        )
        return ir.passes.PassResult(model, True)
