"""``float16``: convert a float32 model to float16 (or bfloat16) for GPU targets, with float32 islands where needed.

Lossy. Meant for the ``gpu`` target: on onnxruntime's CPU execution provider
float16 gives no speed (measured ~1.0x; ORT computes many fp16 ops through its
own inserted casts) — only half the weight bytes.

How a node is decided, from the ONNX schema of its op at the model's opset
(``onnx.defs``; opset facts only, no checker or inference in the loop):

* the node's float inputs and outputs are grouped by **type constraint**
  (``T`` of Add binds A, B and C; ``T1``/``T2`` of Resize bind X/Y and roi;
  a literal ``tensor(float)`` such as Resize's ``scales`` is its own group);
* a group holding a float32 value is **converted** when the constraint allows
  the target type: all its slots become fp16 (bf16). Otherwise it stays
  float32 (e.g. LayerNormalization's ``U`` for Mean/InvStdDev, Resize's
  ``scales``, all of Range and NonMaxSuppression), so a node can be mixed;
* a group binding exactly one non-variadic *input* and no output (Shape's
  ``T``, Cast's ``T1``, Pow's exponent ``T1``, Resize's roi ``T2``) accepts
  any type the constraint allows: no Cast is put in front of it;
* groups binding only outputs convert only for ops whose output type is an
  attribute the pass rewrites (``dtype`` of EyeLike, RandomNormal[Like],
  RandomUniform[Like], Bernoulli);
* **kept** nodes (all their float32 slots stay float32): op types in
  ``keep_float32_ops``, names in ``keep_float32_nodes``, custom domains
  (including ``ai.onnx.ml`` and calls to model-local functions), ops without
  a schema at the model's opset, sequence/optional-typed values, and every
  node inside a kept If/Loop/Scan;
* **value sources** follow their consumers: a Constant with a float32 value,
  a ConstantOfShape with a float32 (or absent) ``value``, and a
  ``Cast(to=FLOAT)`` become fp16 (their attribute rewritten, values clamped)
  only when every consumer that needs a definite type wants fp16; otherwise
  they stay float32 and the consumers that want fp16 get a Cast. So the
  float arithmetic feeding a kept Range stays float32 end to end.

Initializers: used only by converted nodes → stored in fp16, clamped; used
only by kept nodes → untouched; used by both → both forms: the float32
initializer stays for the kept nodes and a second one ``<name>_fp16`` (a new
unique name) serves the converted nodes — no runtime Cast, no duplicate name.

Clamping (the same rule as onnxruntime's converter): finite values with
``|x| > max_finite`` become ``±max_finite`` and non-zero values with
``|x| < min_positive`` become ``±min_positive``; 0, ±inf and NaN are kept.
A ``-1e9`` or ``-3.4e38`` attention-mask constant therefore becomes
``-65504``, not ``-inf`` (``-inf`` in a fully masked Softmax row gives NaN).
Clamping applies to initializers, Constant values and ConstantOfShape values;
the count of clamped values is noted. With ``dtype="bfloat16"`` the bounds are
bfloat16's own (max 3.3895e38, smallest subnormal 9.2e-41): ``min_positive``
and ``max_finite`` describe float16 only.

Casts are inserted only where a value's type differs from what its consumer
needs: one Cast per (value, type), placed right after the value's producer
(or at the start of the graph defining it), so a float32 graph input read by
several converted nodes gets one Cast. With ``keep_io_types`` graph inputs
and outputs stay float32 under their own names, with one Cast at each
boundary. Afterwards the pass removes no-op Casts (input already of the
``to`` type) and adjacent inverse pairs ``Cast(fp16→fp32)→Cast(fp32→fp16)``
and ``Cast(fp32→fp16)→Cast(fp16→fp32)`` (the second is lossy in float32 but
is exactly what running the region in fp16 means); a Cast whose output is a
graph output is left in place.

Subgraphs are **converted consistently**: an If/Loop/Scan is converted like
any node; its bodies' float32 formal inputs and outputs become fp16 along with
the node's float32 inputs and outputs, and the nodes inside are decided by the
same rules (so a Range inside a branch stays float32 with Casts around it).
Outer-scope values read inside a body are cast in the graph that defines
them. A control-flow node that is kept (by name or op type) keeps its whole
bodies float32; any fp16 outer value they read is cast back to float32.
Other ops with graph attributes are kept with their bodies. Model-local
functions are left untouched (DEBUG log): their calls are custom-domain
nodes, so they run float32 with Casts around them.

Limitations: float arithmetic on shapes (``Cast(Shape) → Mul → Cast(int)``)
runs in fp16, which is exact only for integers up to 2048; a decomposed
LayerNorm (``ReduceMean(Pow(x - mean, 2))``) can overflow fp16 when
``|x - mean| > 256`` — fuse it to LayerNormalization (opset 17) first or name
its nodes in ``keep_float32_nodes``.

Facts taken from ``onnxruntime.transformers.float16`` (onnxruntime 1.32),
read, not imported or copied: its default block list (the default-domain part
is kept here; the ``ai.onnx.ml`` part is covered by the custom-domain rule);
the clamping rule and its defaults (``min_positive_val=5.96e-08`` — float16's
smallest subnormal, ``max_finite_val=65504``); that Resize's scales must
stay float32; that Cast ``to``, ConstantOfShape's ``value`` and the ``dtype``
of EyeLike/Random*/Bernoulli must be rewritten; that an initializer read only
by blocked nodes should stay float32. Own implementation on onnx-ir because
that converter works on protobuf (whole model in memory, onnx shape inference
on the full graph), decides input types per op name rather than from the
schema, and converts an initializer shared with a blocked node to fp16 for
both (the blocked node reads it through a Cast). onnxconverter-common's older
converter failed to load on a BERT-shaped graph here (Cast type error).

Measured on onnxruntime 1.32 CPU (x86-64): every fp16 op in these tests
loads and runs (Conv, BatchNormalization, Gemm, MatMul, LayerNormalization,
Softmax, Gelu, Erf, Where, Resize, TopK, CumSum, ...; ORT inserts its own
float32 casts where it has no fp16 kernel). bfloat16 does not run on ORT CPU:
Add, MatMul, Relu, Erf, ... have no bfloat16 kernel (NOT_IMPLEMENTED at
session creation) and the Python binding cannot feed bfloat16 arrays. Many
ops lack bfloat16 in the schema below opset 22 (e.g. Conv, pooling, TopK),
and are kept float32 by the schema rule.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import ml_dtypes
import numpy as np
import onnx.defs
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError

__all__ = ["Float16Pass", "DEFAULT_KEEP", "KEEP_REASONS", "clamp_to_low_precision"]

logger = logging.getLogger(__name__)

#: Why each default-kept op stays float32.
KEEP_REASONS: dict[str, str] = {
    "Range": "start + i·delta: fp16 holds integers exactly only up to 2048 (position ids); no fp16 in its schema",
    "CumSum": "a running sum: rounding error and overflow grow with the length (onnxruntime's converter keeps it)",
    "TopK": "rounding to fp16 creates ties and reorders near-equal values, changing the indices (onnxruntime keeps it)",
    "NonMaxSuppression": "box and IoU arithmetic; its schema is float32-only (onnxruntime keeps it)",
    "RoiAlign": "sampling coordinates lose integer precision past 2048 in fp16 (onnxruntime keeps it)",
    "Resize": "coordinate transforms run in the data type; its scales input is float32-only (onnxruntime pins it)",
    "Upsample": "deprecated Resize: same coordinate arithmetic, float32 scales (onnxruntime keeps it)",
    "GridSample": "sampling grid coordinates: same precision problem as RoiAlign",
    "RandomNormal": "sampling: 10 mantissa bits coarsen the distribution's tails",
    "RandomNormalLike": "sampling: 10 mantissa bits coarsen the distribution's tails",
    "RandomUniform": "sampling: fp16 has 1024 values per binade, so [0,1) draws are visibly discrete",
    "RandomUniformLike": "sampling, as RandomUniform (onnxruntime keeps it)",
    "Bernoulli": "probability thresholds near 0 and 1 collapse in fp16",
    "Multinomial": "log-probability accumulation over classes",
    "DFT": "sums over the whole signal length: error grows with N",
    "STFT": "sums over each frame: error grows with the frame length",
    "QuantizeLinear": "scales are calibration results: rounding them to fp16 moves the int8 grid (fp16 scales need opset 19)",
    "DequantizeLinear": "scales are calibration results: rounding them to fp16 moves the int8 grid (fp16 scales need opset 19)",
    "Min": "exact in fp16; kept as onnxruntime's converter keeps it (kernel coverage) — drop it when the target has fp16 Min",
    "Max": "exact in fp16; kept as onnxruntime's converter keeps it (kernel coverage) — drop it when the target has fp16 Max",
}

#: Op types kept in float32 by default (see :data:`KEEP_REASONS`).
DEFAULT_KEEP: tuple[str, ...] = tuple(KEEP_REASONS)

_ONNX_DOMAINS = ("", "ai.onnx")
_FLOAT = ir.DataType.FLOAT
_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
_LOW_TYPES = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
_CONTROL_FLOW = ("If", "Loop", "Scan")
#: Ops whose float output type is set by a ``dtype`` attribute (absent: the input's type, or FLOAT).
_DTYPE_ATTR_OPS = ("EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli")
_FP16_TINY = 5.96e-08  # float16's smallest subnormal, 2**-24 rounded down (as onnxruntime's converter)
_FP16_MAX = 65504.0


def _type_str(dtype: ir.DataType) -> str:
    return {ir.DataType.FLOAT16: "tensor(float16)", ir.DataType.BFLOAT16: "tensor(bfloat16)"}.get(
        dtype, f"tensor({dtype.name.lower()})"
    )


_TYPE_STRS = {
    "tensor(float)": ir.DataType.FLOAT,
    "tensor(float16)": ir.DataType.FLOAT16,
    "tensor(bfloat16)": ir.DataType.BFLOAT16,
    "tensor(double)": ir.DataType.DOUBLE,
}


def clamp_to_low_precision(
    array: np.ndarray, dtype: ir.DataType, min_positive: float, max_finite: float
) -> tuple[np.ndarray, int]:
    """``array`` in float16/bfloat16 with finite values clamped into range; and how many values were clamped.

    ``|x| > max_finite → ±max_finite``; ``0 < |x| < min_positive → ±min_positive``; 0, ±inf, NaN unchanged.
    """
    values = np.asarray(array, dtype=np.float32)
    magnitude = np.abs(values)
    finite = np.isfinite(values)
    big = finite & (magnitude > max_finite)
    tiny = finite & (values != 0) & (magnitude < min_positive)
    clamped = int(np.count_nonzero(big) + np.count_nonzero(tiny))
    if clamped:
        values = np.where(big, np.copysign(np.float32(max_finite), values), values)
        values = np.where(tiny, np.copysign(np.float32(min_positive), values), values)
    numpy_type = ml_dtypes.bfloat16 if dtype == ir.DataType.BFLOAT16 else np.float16
    return values.astype(numpy_type), clamped


@dataclass(frozen=True)
class _Demand:
    """The type a consumer needs at one input: ``prefer`` (cast target) unless the value is already in ``accept``."""

    prefer: ir.DataType
    accept: frozenset[ir.DataType]

    @property
    def strict(self) -> bool:
        return len(self.accept) == 1

    @staticmethod
    def exactly(dtype: ir.DataType) -> _Demand:
        return _Demand(dtype, frozenset({dtype}))


@dataclass
class _Plan:
    """What happens to one node."""

    mode: Literal["convert", "keep", "neutral", "source"]
    reason: str = ""
    inputs: dict[int, _Demand] = field(default_factory=dict)
    outputs: dict[int, ir.DataType] = field(default_factory=dict)  # output index -> new dtype
    set_dtype_attr: bool = False  # write ``dtype=<low>`` (EyeLike, Random*, Bernoulli)


class _Names:
    """Unique value and node names across the model and its subgraphs."""

    def __init__(self, model: ir.Model) -> None:
        self._used: set[str] = set()
        for graph in model.graphs():
            self._used.update(v.name for v in (*graph.inputs, *graph.outputs) if v.name)
            self._used.update(graph.initializers)
            for node in graph:
                if node.name:
                    self._used.add(node.name)
                self._used.update(v.name for v in node.outputs if v.name)

    def __call__(self, base: str) -> str:
        name, index = base, 1
        while name in self._used:
            name, index = f"{base}_{index}", index + 1
        self._used.add(name)
        return name


def _tensor_dtype(value: ir.Value | None) -> ir.DataType | None:
    """The element type of a tensor-typed value (None for unknown, sequence or optional types)."""
    if value is None:
        return None
    if value.type is not None:
        return value.dtype if isinstance(value.type, ir.TensorType) else None
    if value.const_value is not None:
        return value.const_value.dtype
    return None


def _is_non_tensor_float(value: ir.Value | None) -> bool:
    return (
        value is not None
        and value.type is not None
        and not isinstance(value.type, ir.TensorType)
        and value.type.dtype in _FLOAT_TYPES
    )


def _present(values: Iterable[ir.Value | None]) -> Iterator[tuple[int, ir.Value]]:
    for index, value in enumerate(values):
        if value is not None and (value.name or value.uses() or value.is_graph_output()):
            yield index, value


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    graphs: list[ir.Graph] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            graphs.append(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs.extend(attr.value)
    return graphs


def _attr_float_tensor(node: ir.Node, name: str) -> ir.TensorProtocol | None:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref() or attr.type != ir.AttributeType.TENSOR:
        return None
    return attr.value if attr.value.dtype == _FLOAT else None


def _is_source(node: ir.Node) -> bool:
    """A node whose float32 output type is an attribute: Constant, ConstantOfShape, Cast(to=FLOAT)."""
    if node.op_type == "Constant":
        return _attr_float_tensor(node, "value") is not None or any(
            k in node.attributes for k in ("value_float", "value_floats")
        )
    if node.op_type == "ConstantOfShape":
        return "value" not in node.attributes or _attr_float_tensor(node, "value") is not None
    if node.op_type == "Cast":
        to = node.attributes.get("to")
        return to is not None and not to.is_ref() and to.as_int() == _FLOAT
    return False


@register_pass
class Float16Pass(OnnxpqPass):
    """Convert float32 to float16 (or bfloat16), keeping fragile ops, custom ops and (optionally) graph I/O in float32."""

    name = "float16"
    exact = False

    def __init__(
        self,
        dtype: Literal["float16", "bfloat16"] = "float16",
        *,
        keep_io_types: bool = True,
        keep_float32_ops: tuple[str, ...] = DEFAULT_KEEP,
        keep_float32_nodes: tuple[str, ...] = (),
        min_positive: float = _FP16_TINY,
        max_finite: float = _FP16_MAX,
    ) -> None:
        if dtype not in ("float16", "bfloat16"):
            raise PipelineError(f"float16: dtype must be 'float16' or 'bfloat16', got {dtype!r}")
        if not (_FP16_TINY <= min_positive < max_finite <= _FP16_MAX):
            raise PipelineError(
                f"float16: need {_FP16_TINY} <= min_positive < max_finite <= {_FP16_MAX} (float16's range), "
                f"got min_positive={min_positive}, max_finite={max_finite}"
            )
        self.dtype = dtype
        self.keep_io_types = keep_io_types
        self.keep_float32_ops = tuple(keep_float32_ops)
        self.keep_float32_nodes = tuple(keep_float32_nodes)
        self.min_positive = min_positive
        self.max_finite = max_finite

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = PassContext.current()
        for function in model.functions.values():
            logger.debug("float16: function '%s' left untouched (its calls run in float32 with casts)", function.name)
        try:
            ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        except Exception as exc:  # noqa: BLE001 - partial types are still usable
            logger.debug("float16: shape inference failed (%s); using the types the model has", exc)
        run = _Conversion(self, model)
        changes = run.convert()
        for key, value in run.notes().items():
            ctx.note(key, value)
        logger.info(
            "float16: %d nodes converted to %s, %d kept in float32, %d casts inserted, %d removed, %d values clamped",
            run.converted, self.dtype, sum(run.kept.values()), run.casts_inserted, run.casts_removed, run.clamped,
        )
        return ir.passes.PassResult(model, modified=changes > 0)


class _Conversion:
    """One run of the pass on one model (all state lives here, none on the pass)."""

    def __init__(self, options: Float16Pass, model: ir.Model) -> None:
        self.model = model
        self.low = ir.DataType.FLOAT16 if options.dtype == "float16" else ir.DataType.BFLOAT16
        self.suffix = "fp16" if self.low == ir.DataType.FLOAT16 else "bf16"
        if self.low == ir.DataType.FLOAT16:
            self.min_positive, self.max_finite = options.min_positive, options.max_finite
        else:
            info = ml_dtypes.finfo(ml_dtypes.bfloat16)
            self.min_positive, self.max_finite = float(info.smallest_subnormal), float(info.max)
        self.keep_io = options.keep_io_types
        self.keep_ops = set(options.keep_float32_ops)
        self.keep_nodes = set(options.keep_float32_nodes)
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        self.names = _Names(model)
        self.plans: dict[ir.Node, _Plan] = {}
        self.orig: dict[ir.Value, ir.DataType | None] = {}
        self.new: dict[ir.Value, ir.DataType] = {}
        self.output_demand: dict[tuple[ir.Graph, int], ir.DataType] = {}
        self.outputs_of: dict[ir.Value, list[tuple[ir.Graph, int]]] = {}
        self.schemas: dict[str, onnx.defs.OpSchema | None] = {}
        self.casts: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
        # counters
        self.converted = 0
        self.kept: Counter[str] = Counter()
        self.kept_ops: Counter[str] = Counter()
        self.casts_inserted = 0
        self.casts_removed = 0
        self.clamped = 0
        self.initializers_converted = 0
        self.initializers_twinned = 0
        self.io_changed = 0

    # ------------------------------------------------------------------ types

    def dtype_of(self, value: ir.Value | None) -> ir.DataType | None:
        if value is None:
            return None
        if value not in self.orig:
            self.orig[value] = _tensor_dtype(value)
        return self.orig[value]

    def final_dtype(self, value: ir.Value) -> ir.DataType | None:
        return self.new.get(value, self.dtype_of(value))

    def schema(self, op_type: str) -> onnx.defs.OpSchema | None:
        if op_type not in self.schemas:
            try:
                self.schemas[op_type] = onnx.defs.get_schema(op_type, self.opset, "")
            except onnx.defs.SchemaError:
                self.schemas[op_type] = None
        return self.schemas[op_type]

    # ------------------------------------------------------------------ planning

    def touches_float(self, node: ir.Node) -> bool:
        values = [v for _, v in _present(node.inputs)] + [v for _, v in _present(node.outputs)]
        return any(self.dtype_of(v) == _FLOAT or _is_non_tensor_float(v) for v in values) or _is_source(node)

    def keep_plan(self, node: ir.Node, reason: str) -> _Plan:
        plan = _Plan("keep", reason)
        for index, value in _present(node.inputs):
            dtype = self.dtype_of(value)
            if dtype in _FLOAT_TYPES:
                plan.inputs[index] = _Demand.exactly(dtype)
        return plan

    def plan_graph(self, graph: ir.Graph, inherited: str | None) -> None:
        for node in graph:
            plan = self.plan_node(node, inherited)
            self.plans[node] = plan
            subgraphs = _subgraphs(node)
            if not subgraphs:
                continue
            converted = plan.mode == "convert"
            inner = None if converted else (inherited or f"inside kept {node.op_type}")
            for sub in subgraphs:
                for index, value in enumerate(sub.outputs):
                    if self.dtype_of(value) == _FLOAT:
                        self.output_demand[(sub, index)] = self.low if converted else _FLOAT
                if converted:
                    for value in sub.inputs:
                        if self.dtype_of(value) == _FLOAT:
                            self.new[value] = self.low
                self.plan_graph(sub, inner)

    def plan_node(self, node: ir.Node, inherited: str | None) -> _Plan:
        if not self.touches_float(node) and node.op_type not in _CONTROL_FLOW:
            return _Plan("neutral")
        if inherited is not None:
            return self.keep_plan(node, inherited)
        if node.domain not in _ONNX_DOMAINS:
            return self.keep_plan(node, "custom domain")
        if node.op_type in self.keep_ops:
            return self.keep_plan(node, "keep_float32_ops")
        if node.name and node.name in self.keep_nodes:
            return self.keep_plan(node, "keep_float32_nodes")
        values = [v for _, v in _present(node.inputs)] + [v for _, v in _present(node.outputs)]
        if any(_is_non_tensor_float(v) for v in values):
            return self.keep_plan(node, "sequence or optional types")
        if node.op_type in _CONTROL_FLOW:
            return self.plan_control_flow(node)
        if _subgraphs(node):
            return self.keep_plan(node, f"{node.op_type} has subgraphs")
        if _is_source(node):
            plan = _Plan("source")
            if node.op_type == "Cast":
                plan.inputs[0] = _Demand(_FLOAT, _FLOAT_TYPES)
            return plan
        schema = self.schema(node.op_type)
        if schema is None:
            return self.keep_plan(node, f"no schema at opset {self.opset}")
        return self.plan_from_schema(node, schema)

    def plan_control_flow(self, node: ir.Node) -> _Plan:
        """If/Loop/Scan: every float32 input (Loop: past M and cond) and output becomes low precision."""
        plan = _Plan("convert")
        first = 2 if node.op_type == "Loop" else 0
        for index, value in _present(node.inputs):
            if index >= first and self.dtype_of(value) == _FLOAT:
                plan.inputs[index] = _Demand.exactly(self.low)
        for index, value in _present(node.outputs):
            if self.dtype_of(value) == _FLOAT:
                plan.outputs[index] = self.low
        return plan

    def plan_from_schema(self, node: ir.Node, schema: onnx.defs.OpSchema) -> _Plan:
        constraints = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
        groups: dict[object, list[tuple[str, int, ir.Value, bool]]] = {}
        allowed: dict[object, list[str]] = {}

        def slot(kind: str, index: int, value: ir.Value, formals: list[onnx.defs.OpSchema.FormalParameter]) -> bool:
            if not formals:
                return False
            variadic_last = formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
            if index >= len(formals) and not variadic_last:
                return False
            formal = formals[min(index, len(formals) - 1)]
            variadic = formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
            if variadic and not formal.is_homogeneous:
                key: object = (kind, index)
            elif formal.type_str in constraints:
                key = formal.type_str
            else:
                key = (kind, index)
            allowed[key] = list(constraints.get(formal.type_str, [formal.type_str]))
            groups.setdefault(key, []).append((kind, index, value, variadic))
            return True

        for index, value in _present(node.inputs):
            if not slot("in", index, value, list(schema.inputs)):
                return self.keep_plan(node, "inputs do not match the schema")
        for index, value in _present(node.outputs):
            if not slot("out", index, value, list(schema.outputs)):
                return self.keep_plan(node, "outputs do not match the schema")

        plan = _Plan("convert")
        converted = stays = False
        target = _type_str(self.low)
        for key, slots in groups.items():
            if not any(self.dtype_of(v) == _FLOAT for _, _, v, _ in slots):
                continue
            for _, _, value, _ in slots:  # one constraint, one type: unknown members are float32 too
                if self.dtype_of(value) is None:
                    self.orig[value] = _FLOAT
            kinds = {kind for kind, _, _, _ in slots}
            types = frozenset(_TYPE_STRS[t] for t in allowed[key] if t in _TYPE_STRS)
            if kinds == {"in"} and len(slots) == 1 and not slots[0][3]:
                plan.inputs[slots[0][1]] = _Demand(_FLOAT, types)  # any type the constraint allows
                continue
            output_only = kinds == {"out"}
            if target in allowed[key] and (not output_only or node.op_type in _DTYPE_ATTR_OPS):
                converted = True
                for kind, index, _, _ in slots:
                    if kind == "in":
                        plan.inputs[index] = _Demand.exactly(self.low)
                    else:
                        plan.outputs[index] = self.low
                plan.set_dtype_attr = plan.set_dtype_attr or (output_only and node.op_type in _DTYPE_ATTR_OPS)
            else:
                stays = True
                for kind, index, _, _ in slots:
                    if kind == "in":
                        plan.inputs[index] = _Demand.exactly(_FLOAT)
        if converted:
            return plan
        if stays:
            return self.keep_plan(node, f"no {self.low.name.lower()} in the schema at opset {self.opset}")
        return _Plan("neutral", inputs=plan.inputs)

    def strict_demands(self, value: ir.Value) -> set[ir.DataType]:
        demands: set[ir.DataType] = set()
        for use in value.uses():
            plan = self.plans.get(use.node)
            demand = plan.inputs.get(use.idx) if plan is not None else None
            if demand is not None and demand.strict:
                demands.add(demand.prefer)
        for key in self.outputs_of.get(value, []):
            if key in self.output_demand:
                demands.add(self.output_demand[key])
        return demands

    def plan(self) -> None:
        main = self.model.graph
        for index, value in enumerate(main.outputs):
            if self.dtype_of(value) == _FLOAT:
                self.output_demand[(main, index)] = _FLOAT if self.keep_io else self.low
        if not self.keep_io:
            for value in main.inputs:
                if self.dtype_of(value) == _FLOAT:
                    self.new[value] = self.low
        self.plan_graph(main, None)
        for graph in self.model.graphs():
            for index, value in enumerate(graph.outputs):
                self.outputs_of.setdefault(value, []).append((graph, index))
        for node, plan in self.plans.items():
            if plan.mode == "source":
                if self.strict_demands(node.outputs[0]) == {self.low}:
                    plan.mode = "convert"
                    plan.outputs[0] = self.low
                else:
                    plan.mode = "neutral"  # stays float32 because its consumers are; not counted as kept
        for node, plan in self.plans.items():
            for index, dtype in plan.outputs.items():
                value = node.outputs[index]
                if self.dtype_of(value) in (_FLOAT, None):
                    self.new[value] = dtype
            if plan.mode == "convert" and plan.outputs:
                self.converted += 1
            elif plan.mode == "keep" and self.touches_float(node):
                self.kept[plan.reason] += 1
                self.kept_ops[node.op_type] += 1
                logger.debug("float16: '%s' (%s) kept in float32: %s", node.name, node.op_type, plan.reason)

    # ------------------------------------------------------------------ rewriting

    def convert_tensor(self, tensor: ir.TensorProtocol, name: str | None) -> ir.TensorProtocol:
        array, clamped = clamp_to_low_precision(tensor.numpy(), self.low, self.min_positive, self.max_finite)
        if clamped:
            logger.debug("float16: %d values of '%s' clamped into %s's range", clamped, name, self.low.name)
        self.clamped += clamped
        return ir.tensor(array, dtype=self.low, name=name)

    def rewrite_attributes(self, node: ir.Node, plan: _Plan) -> None:
        op = node.op_type
        if op == "Cast":
            node.attributes["to"] = ir.AttrInt64("to", int(self.low))
        elif op == "ConstantOfShape":
            tensor = _attr_float_tensor(node, "value")
            if tensor is None:
                low = ir.tensor(np.zeros(1, dtype=self.low.numpy()), dtype=self.low, name="value")
            else:
                low = self.convert_tensor(tensor, tensor.name or "value")
            node.attributes["value"] = ir.AttrTensor("value", low)
        elif op == "Constant":
            if "value" in node.attributes:
                tensor = node.attributes["value"].value
                array: np.ndarray = tensor.numpy()
                name = tensor.name
            elif "value_float" in node.attributes:
                array, name = np.array(node.attributes.pop("value_float").as_float(), dtype=np.float32), None
            else:
                array, name = np.array(node.attributes.pop("value_floats").as_floats(), dtype=np.float32), None
            low = self.convert_tensor(ir.tensor(array, dtype=_FLOAT), name or node.outputs[0].name)
            node.attributes["value"] = ir.AttrTensor("value", low)
        elif plan.set_dtype_attr:
            node.attributes["dtype"] = ir.AttrInt64("dtype", int(self.low))

    def rewrite_initializers(self) -> None:
        for graph in self.model.graphs():
            for value in list(graph.initializers.values()):
                if self.dtype_of(value) != _FLOAT or value.const_value is None:
                    continue
                if value.is_graph_input():
                    if value in self.new:  # an overridable default follows its graph input's type
                        value.const_value = self.convert_tensor(value.const_value, value.name)
                        self.initializers_converted += 1
                    continue
                demands = self.strict_demands(value)
                if demands == {self.low}:
                    value.const_value = self.convert_tensor(value.const_value, value.name)
                    self.new[value] = self.low
                    self.initializers_converted += 1
                elif self.low in demands:
                    self.twin_initializer(graph, value)

    def twin_initializer(self, graph: ir.Graph, value: ir.Value) -> None:
        """Give the converted consumers of a shared float32 initializer their own low-precision copy."""
        name = self.names(f"{value.name}_{self.suffix}")
        twin = ir.Value(
            name=name, shape=value.shape, type=ir.TensorType(self.low), const_value=self.convert_tensor(value.const_value, name)
        )
        graph.register_initializer(twin)
        self.orig[twin] = self.low
        for use in list(value.uses()):
            plan = self.plans.get(use.node)
            demand = plan.inputs.get(use.idx) if plan is not None else None
            if demand is not None and demand.strict and demand.prefer == self.low:
                use.node.replace_input_with(use.idx, twin)
        for key in self.outputs_of.get(value, []):
            if self.output_demand.get(key) == self.low:
                key[0].outputs[key[1]] = twin
        self.initializers_twinned += 1

    def retype(self) -> None:
        for value, dtype in self.orig.items():
            if dtype is not None and value.type is None and value not in self.new:
                value.type = ir.TensorType(dtype)  # known from a type constraint shared with a typed value
        for value, dtype in self.new.items():
            if _tensor_dtype(value) != dtype:
                value.type = ir.TensorType(dtype)
                if value.is_graph_input() and value.graph is self.model.graph:
                    self.io_changed += 1

    def cast(self, value: ir.Value, to: ir.DataType, output_name: str | None = None) -> ir.Value:
        """The value converted to ``to``: one Cast per (value, type), next to where the value is defined."""
        key = (value, to)
        if key in self.casts:
            return self.casts[key]
        suffix = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}.get(
            to, to.name.lower()
        )
        out = ir.Value(
            name=output_name or self.names(f"{value.name or 'value'}_{suffix}"), shape=value.shape, type=ir.TensorType(to)
        )
        node = ir.node("Cast", [value], {"to": int(to)}, outputs=[out], name=self.names(f"{value.name or 'value'}_cast_{suffix}"))
        producer = value.producer()
        if producer is not None and producer.graph is not None:
            producer.graph.insert_after(producer, node)
        else:
            graph = value.graph
            if graph is None:
                raise RuntimeError(f"float16: value '{value.name}' belongs to no graph")
            first = next(iter(graph), None)
            if first is None:
                graph.append(node)
            else:
                graph.insert_before(first, node)
        self.orig[out] = to
        self.casts[key] = out
        self.casts_inserted += 1
        return out

    def insert_casts(self) -> None:
        main = self.model.graph
        # Graph outputs first, so that a main-graph output keeps its name on the float32 side.
        for graph in self.model.graphs():
            for index, value in enumerate(list(graph.outputs)):
                want = self.output_demand.get((graph, index))
                have = _tensor_dtype(graph.outputs[index])
                if want is None or have is None or have == want or have not in _FLOAT_TYPES:
                    continue
                producer = value.producer()
                if graph is main and producer is not None and producer.graph is main and (value, want) not in self.casts:
                    name = value.name
                    value.name = self.names(f"{name}_{self.suffix}" if want == _FLOAT else f"{name}_fp32")
                    out = self.cast(value, want, output_name=name)
                else:
                    out = self.cast(value, want)
                graph.outputs[index] = out
        for graph in list(self.model.graphs()):
            for node in list(graph):
                plan = self.plans.get(node)
                if plan is None:
                    continue
                for index, demand in plan.inputs.items():
                    value = node.inputs[index]
                    have = _tensor_dtype(value) if value is not None else None
                    if value is None or have is None or have not in _FLOAT_TYPES or have in demand.accept:
                        continue
                    node.replace_input_with(index, self.cast(value, demand.prefer))

    def remove_redundant_casts(self) -> None:
        """Drop no-op Casts and adjacent inverse float Cast pairs (not those writing a graph output)."""
        graph_outputs = {id(v) for g in self.model.graphs() for v in g.outputs}
        changed = True
        while changed:
            changed = False
            for node in list(ir.traversal.RecursiveGraphIterator(self.model.graph)):
                if node.op_type != "Cast" or node.domain not in _ONNX_DOMAINS or node.graph is None:
                    continue
                to = node.attributes.get("to")
                source, out = node.inputs[0], node.outputs[0]
                if to is None or to.is_ref() or source is None or id(out) in graph_outputs:
                    continue
                target = ir.DataType(to.as_int())
                have = _tensor_dtype(source)
                replacement = None
                if have == target:
                    replacement = source
                else:
                    previous = source.producer()
                    if (
                        previous is not None
                        and previous.op_type == "Cast"
                        and previous.domain in _ONNX_DOMAINS
                        and previous.inputs[0] is not None
                        and {have, target} <= _FLOAT_TYPES
                        and _tensor_dtype(previous.inputs[0]) == target
                        and bool({have, target} & _LOW_TYPES)
                        and _FLOAT in {have, target}
                    ):
                        replacement = previous.inputs[0]
                if replacement is None:
                    continue
                out.replace_all_uses_with(replacement)
                node.graph.remove(node, safe=True)
                self.casts_removed += 1
                changed = True
                if source.producer() is not None and not source.uses() and id(source) not in graph_outputs:
                    upstream = source.producer()
                    if upstream.op_type == "Cast" and upstream.graph is not None:
                        upstream.graph.remove(upstream, safe=True)
                        self.casts_removed += 1

    def convert(self) -> int:
        self.plan()
        for node, plan in self.plans.items():
            if plan.mode == "convert" and plan.outputs and node.op_type not in _CONTROL_FLOW:
                self.rewrite_attributes(node, plan)
        self.rewrite_initializers()
        self.retype()
        self.insert_casts()
        self.remove_redundant_casts()
        return (
            self.converted
            + self.casts_inserted
            + self.casts_removed
            + self.initializers_converted
            + self.initializers_twinned
            + self.io_changed
        )

    def notes(self) -> dict[str, object]:
        return {
            "dtype": self.low.name.lower(),
            "converted_nodes": self.converted,
            "kept_nodes": sum(self.kept.values()),
            "kept_nodes_by_reason": dict(sorted(self.kept.items())),
            "kept_op_types": dict(sorted(self.kept_ops.items())),
            "casts_inserted": self.casts_inserted,
            "casts_removed": self.casts_removed,
            "initializers_converted": self.initializers_converted,
            "initializers_shared_with_float32": self.initializers_twinned,
            "values_clamped": self.clamped,
        }
