"""The ``measured`` cost model: per-layer kernel time on the target's onnxruntime execution provider.

For one layer (:class:`onnxpq.analysis.cost_models.LayerFacts`) and one
candidate (:class:`~onnxpq.analysis.cost_models.LayerChoice`):

1. a one-layer model of the node is built at its real shapes (batch 1; the
   shapes :func:`~onnxpq.analysis.cost_models.layer_facts` inferred), with
   seeded random weights, ``ceil(C · keep)`` output channels (raised to the
   target's ``channel_multiple``; a depthwise Conv keeps its input channels and
   groups in step) and the smallest ``1 − density`` of |w| set to 0;
2. the candidate's precision is applied by onnxpq's own passes, so Q/DQ sit
   where the optimizer puts them and onnxruntime fuses what it fuses in a
   real model (cpu semantics)::

       weight and activation bits   quantize-static   -> QLinearConv / QGemm / QLinearMatMul (int8 kernels;
                                                         b < 8 bits stored in int8 run the same kernel)
       weight bits only, MatMul ≤ 4 matmul-nbits      -> MatMulNBits (4-bit; 2 and 8 as asked)
       weight bits only, MatMul/Gemm quantize-dynamic -> DynamicQuantizeMatMul
       weight bits only, Conv       quantize-weights  -> DQ folded at load: float kernel
       weight bits, Gather table    quantize-gather   -> int8 rows, dequantized after the lookup
       float                        (none)

3. the model runs in onnxruntime with ``SessionOptions.enable_profiling``
   (``threads`` intra-op threads, default 1), ``warmup`` runs then ``runs``
   profiled runs; from the JSON trace the kernel times (``dur`` of the
   ``<node>_kernel_time`` events) of each run are summed, leaving out the
   activation boundary — QuantizeLinear/DequantizeLinear of the activations,
   the NHWC Transposes onnxruntime puts around QLinearConv and the NCHWc
   ReorderInput/ReorderOutput, i.e. those ops with a non-zero
   ``activation_size`` — which a chain of layers pays once, not per layer
   (a weight's DequantizeLinear, activation size 0, stays counted); the
   layer's cost is the median over runs, in ms.

Results are cached in a JSON file (default ``~/.cache/onnxpq/latency/latency.json``,
or ``$ONNXPQ_LATENCY_CACHE``) under a key made of the op, its shapes and
attributes, the precision label, the execution provider, the thread count
and the onnxruntime version; a cached figure is never re-measured.

Whole models are timed by wall clock (median ``session.run`` time at batch 1,
without the profiler), and :func:`cost_model_agreement` compares, over a set of
configurations, the sum of per-layer measured costs with the measured whole
model: Spearman's rank correlation and the ratio predicted/measured.
Operations that are not layers (pooling, Add, activations, reshapes) are not
priced per layer, so the ratio is below 1 by their share.

Own code: onnxruntime's profiler does the timing; model building, trace
parsing and the cache are here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx_ir as ir
import onnxruntime as ort

from onnxpq.analysis.cost_models import FLOAT_CHOICE, LayerChoice, LayerFacts, kept_channels, layer_facts
from onnxpq.errors import OnnxpqError

if TYPE_CHECKING:
    from onnxpq.targets.profile import Target

__all__ = [
    "DEFAULT_CACHE",
    "LatencyCache",
    "Configuration",
    "Agreement",
    "precision_of",
    "build_layer_model",
    "layer_latency_ms",
    "model_latency_ms",
    "spearman",
    "cost_model_agreement",
    "default_configurations",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "onnxpq" / "latency" / "latency.json"
_OPSET = 21
_BOUNDARY_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"})
_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}


class LatencyCache:
    """A JSON file of measured latencies, keyed by op, shapes, precision, EP, threads and onnxruntime version."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path or os.environ.get("ONNXPQ_LATENCY_CACHE") or DEFAULT_CACHE)
        self._entries: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text())
                self._entries = dict(data.get("entries", {})) if isinstance(data, dict) else {}
            except FileNotFoundError:
                self._entries = {}
            except (OSError, ValueError) as error:
                logger.warning("latency cache %s unreadable (%s); starting empty", self.path, error)
                self._entries = {}
        return self._entries

    def get(self, key: str) -> float | None:
        entry = self._load().get(key)
        return float(entry["ms"]) if entry is not None else None

    def put(self, key: str, ms: float, runs: int) -> None:
        from onnxpq.io import write_text_atomic

        entries = self._load()
        entries[key] = {"ms": ms, "runs": runs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({"schema": "onnxpq.latency-cache/1", "entries": entries}, indent=1, sort_keys=True))

    def __len__(self) -> int:
        return len(self._load())


def _target(target: Target | None) -> Target:
    if target is not None:
        return target
    from onnxpq.targets.profile import load_target

    return load_target("cpu")


def _provider(target: Target) -> str:
    """The target's first execution provider, which must exist here for a measurement."""
    provider = target.providers[0]
    if provider not in ort.get_available_providers():
        raise OnnxpqError(
            f"the measured cost model needs {provider} (target '{target.name}'), which this onnxruntime lacks; "
            "use cost model 'bops' or 'macs' here"
        )
    return provider


def precision_of(facts: LayerFacts, choice: LayerChoice, target: Target | None = None) -> tuple[str, str | None]:
    """(precision label, onnxpq pipeline text or None for float) that realises ``choice`` for the layer."""
    target = _target(target)
    op, w, a = facts.op_type, choice.weight_bits, choice.activation_bits
    if w is None and a is None:
        return "float", None
    if op == "Gather":
        return "int8-table", "quantize-gather"
    if a is not None:
        act = target.quantize.activation_type
        return f"qdq-w8a8-{act}", f"quantize-static{{activation_type={act},op_types=[{op}]}}"
    assert w is not None
    if op == "MatMul" and w <= 4:
        bits = 2 if w <= 2 else 4
        return f"nbits{bits}", f"matmul-nbits{{bits={bits},min_params=0}}"
    if op in ("MatMul", "Gemm"):
        return "dynamic-int8", f"quantize-dynamic{{op_types=[{op}]}}"
    return f"weight-only-{w}", f"quantize-weights{{bits={w},op_types=[{op}]}}"


def _layer_shapes(facts: LayerFacts, choice: LayerChoice, target: Target) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(input shape, weight shape, group) of the one-layer model after removing output channels."""
    if facts.input_shape is None:
        raise OnnxpqError(f"layer {facts.node!r}: its input shape is not static; pass input shapes to layer_facts")
    x, w = list(facts.input_shape), list(facts.weight_shape)
    group = facts.group
    keep = kept_channels(facts, choice.channel_keep, target.sparsity.channel_multiple) if choice.channel_keep < 1 else facts.out_channels
    if keep == facts.out_channels:
        return tuple(x), tuple(w), group
    if facts.op_type == "Conv" and group > 1:
        if group == facts.out_channels == x[1]:  # depthwise: input channels and groups follow
            x[1], group = keep, keep
        else:
            keep = -(-keep // group) * group
        w[0] = keep
    elif facts.op_type == "ConvTranspose":
        w[1] = max(1, keep // max(group, 1))
    else:
        w[facts.out_channel_axis] = keep
    return tuple(x), tuple(w), group


def build_layer_model(facts: LayerFacts, choice: LayerChoice = FLOAT_CHOICE, target: Target | None = None, *, seed: int = 0) -> ir.Model:
    """The layer alone, float, at its real shapes with ``choice``'s channels and density applied."""
    target = _target(target)
    x_shape, w_shape, group = _layer_shapes(facts, choice, target)
    rng = np.random.default_rng(seed)
    dtype = {"float16": np.float16}.get(facts.float_type, np.float32)
    elem = _ONNX_TYPES.get(facts.float_type, onnx.TensorProto.FLOAT)
    weight = (rng.standard_normal(w_shape) * 0.1).astype(dtype)
    if choice.density < 1.0:
        drop = int(round((1.0 - choice.density) * weight.size))
        if drop:
            order = np.argsort(np.abs(weight), axis=None)[:drop]
            weight.reshape(-1)[order] = 0
    attrs = dict(facts.attributes)
    if "group" in attrs:
        attrs["group"] = group
    inits = [onnx.numpy_helper.from_array(weight, "w")]
    if facts.op_type == "Gather":
        inputs = [oh.make_tensor_value_info("indices", onnx.TensorProto.INT64, list(x_shape))]
        node = oh.make_node("Gather", ["w", "indices"], ["y"], name="layer", **attrs)
    else:
        inputs = [oh.make_tensor_value_info("x", elem, list(x_shape))]
        names = ["x", "w"] if facts.weight_input == 1 else ["w", "x"]
        if facts.bias is not None:
            channels = w_shape[facts.out_channel_axis] * (group if facts.op_type == "ConvTranspose" else 1)
            inits.append(onnx.numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(dtype), "b"))
            names.append("b")
        node = oh.make_node(facts.op_type, names, ["y"], name="layer", **attrs)
    graph = oh.make_graph([node], "layer", inputs, [oh.make_tensor_value_info("y", elem, None)], inits)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", _OPSET)], ir_version=10)
    return ir.from_proto(proto)


def _feed(model: ir.Model, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` samples (extra leading axis) for every input: floats N(0,1), Gather indices in range."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in model.graph.inputs:
        dims = [d if isinstance(d, int) else 1 for d in value.shape]  # type: ignore[union-attr]
        if value.dtype == ir.DataType.INT64:
            table = model.graph.initializers["w"].const_value
            high = int(table.shape[0]) if table is not None else 1  # type: ignore[union-attr]
            feed[value.name] = rng.integers(0, high, [count, *dims]).astype(np.int64)
        else:
            feed[value.name] = rng.standard_normal([count, *dims]).astype(value.dtype.numpy())  # type: ignore[union-attr]
    return feed


def _apply(model: ir.Model, pipeline: str | None, target: Target, calibration: Mapping[str, np.ndarray]) -> ir.Model:
    if pipeline is None:
        return model
    from onnxpq.core.context import PassContext
    from onnxpq.core.manager import PassManager
    from onnxpq.core.pipeline_text import parse_pipeline

    with PassContext(target=target, calibration=calibration):
        manager = PassManager(parse_pipeline(pipeline), check_numerics=False, progress=False)
        return manager(model).model


@dataclass(frozen=True)
class _Trace:
    """Per profiled run: the model_run duration and, per node, (op, kernel µs, boundary?)."""

    runs: list[tuple[float, dict[str, tuple[str, float, bool]]]]


def _profile(
    model: ir.Model | str | os.PathLike[str], feed: Mapping[str, np.ndarray], provider: str, threads: int, warmup: int, runs: int
) -> _Trace:
    """Run ``model`` with profiling on; return the last ``runs`` runs of the trace."""
    with tempfile.TemporaryDirectory(prefix="onnxpq-profile-") as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "trace")
        source = ir.to_proto(model).SerializeToString() if isinstance(model, ir.Model) else str(model)
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
        for _ in range(warmup + runs):
            session.run(None, dict(feed))
        trace_path = session.end_profiling()
        events = json.loads(Path(trace_path).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-runs:]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    result = []
    for run in model_runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        kernels: dict[str, tuple[str, float, bool]] = {}
        for event in nodes:
            if start <= event["ts"] <= end:
                name = event["name"][: -len("_kernel_time")]
                args = event.get("args", {})
                op = args.get("op_name", "")
                boundary = op in _BOUNDARY_OPS and str(args.get("activation_size", "0")) != "0"
                previous = kernels.get(name, (op, 0.0, boundary))[1]
                kernels[name] = (op, previous + float(event["dur"]), boundary)
        result.append((float(run["dur"]), kernels))
    return _Trace(result)


def _cache_key(facts: LayerFacts, choice: LayerChoice, label: str, target: Target, provider: str, threads: int) -> str:
    x_shape, w_shape, group = _layer_shapes(facts, choice, target)
    attrs = dict(facts.attributes)
    if "group" in attrs:
        attrs["group"] = group
    density = "" if choice.density >= 1.0 else f"|density={choice.density:.4g}"
    return (
        f"{facts.op_type}|x={list(x_shape)}|w={list(w_shape)}|bias={facts.bias is not None}|{facts.float_type}"
        f"|attrs={json.dumps(attrs, sort_keys=True)}|{label}{density}|{provider}|threads={threads}|ort={ort.__version__}"
    )


def layer_latency_ms(
    facts: LayerFacts,
    choice: LayerChoice = FLOAT_CHOICE,
    target: Target | None = None,
    *,
    cache: LatencyCache | str | os.PathLike[str] | None = None,
    threads: int = 1,
    warmup: int = 3,
    runs: int = 15,
) -> float:
    """Median kernel time (ms, batch 1) of the layer under ``choice`` on ``target``'s first EP (module docstring).

    Raises:
        OnnxpqError: the EP is not available here, or the layer's shapes are not static.
    """
    target = _target(target)
    provider = _provider(target)
    store = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
    label, pipeline = precision_of(facts, choice, target)
    key = _cache_key(facts, choice, label, target, provider, threads)
    cached = store.get(key)
    if cached is not None:
        return cached
    model = build_layer_model(facts, choice, target)
    calibration = _feed(model, 8, seed=1)
    model = _apply(model, pipeline, target, calibration)
    feed = {name: array[0] for name, array in _feed(model, 1).items()}
    trace = _profile(model, feed, provider, threads, warmup, runs)
    totals = [sum(us for _, us, boundary in kernels.values() if not boundary) for _, kernels in trace.runs]
    ms = float(np.median(totals)) / 1000.0
    logger.debug("measured %s: %.4f ms (%s)", facts.node, ms, label)
    store.put(key, ms, runs)
    return ms


def model_latency_ms(
    model: ir.Model | str | os.PathLike[str],
    target: Target | None = None,
    *,
    feed: Mapping[str, np.ndarray] | None = None,
    threads: int = 1,
    warmup: int = 5,
    runs: int = 50,
) -> float:
    """Median wall-clock ``session.run`` time (ms) of the whole model at batch 1 on ``target``'s first EP.

    Timed without the profiler (its per-node events would inflate a many-node model).
    """
    import time

    target = _target(target)
    provider = _provider(target)
    loaded = model if isinstance(model, ir.Model) else _load(model)
    if feed is None:
        from onnxpq.analysis.model_inputs import synthesize_inputs

        feed = {name: array[None] if _batched(loaded, name) else array
                for name, array in ((n, a[0]) for n, a in synthesize_inputs(loaded, 1).items())}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    session = ort.InferenceSession(ir.to_proto(loaded).SerializeToString(), sess_options=options, providers=providers)
    times = []
    for index in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, dict(feed))
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000.0


def _load(path: str | os.PathLike[str]) -> ir.Model:
    from onnxpq.io import load_model

    return load_model(path)


def _batched(model: ir.Model, name: str) -> bool:
    from onnxpq.analysis.model_inputs import input_specs

    return any(spec.name == name and spec.batched for spec in input_specs(model))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of the ranks (ties get their average rank); nan if a side is constant."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("spearman needs two sequences of the same length >= 2")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty_like(v)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):  # average rank over ties
            tied = v == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x) - ranks(x).mean(), ranks(y) - ranks(y).mean()
    denominator = math.sqrt(float(np.sum(rx**2) * np.sum(ry**2)))
    return float(np.sum(rx * ry) / denominator) if denominator else math.nan


@dataclass(frozen=True)
class Configuration:
    """One whole-model configuration: the float model its layers are priced on, the choices, and the model that runs."""

    name: str
    float_model: ir.Model
    choices: Mapping[str, LayerChoice]
    runnable: ir.Model


@dataclass(frozen=True)
class Agreement:
    """Predicted (Σ per-layer measured) against measured whole-model latency over configurations."""

    names: tuple[str, ...]
    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]
    spearman: float
    ratios: tuple[float, ...]
    cost_model: str = "measured: sum of per-layer onnxruntime kernel times (profiling), layers only"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cost_model": self.cost_model,
            "configurations": [
                {"name": n, "predicted_ms": p, "measured_ms": m, "ratio": r}
                for n, p, m, r in zip(self.names, self.predicted_ms, self.measured_ms, self.ratios, strict=True)
            ],
            "spearman": self.spearman,
            "median_ratio": float(np.median(self.ratios)),
        }


def default_configurations(model: ir.Model, target: Target | None = None, calibration: Mapping[str, np.ndarray] | None = None) -> list[Configuration]:
    """Float; int8 static everywhere; int8 on every other layer; channels pruned 25 % and 50 %; 50 % pruned + int8."""
    target = _target(target)
    if calibration is None:
        from onnxpq.analysis.model_inputs import synthesize_inputs

        calibration = synthesize_inputs(model, 16)
    int8 = LayerChoice(8, 8)

    def run(source: ir.Model, text: str | None) -> ir.Model:
        return _apply(source.clone(), text, target, calibration)  # type: ignore[arg-type]

    def quantizable(facts: Mapping[str, LayerFacts]) -> list[str]:
        return [name for name, f in facts.items() if f.op_type in ("Conv", "Gemm", "MatMul")]

    act = target.quantize.activation_type
    configs = []
    base_facts = layer_facts(model)
    layers = quantizable(base_facts)
    configs.append(Configuration("float", model, {}, model))
    configs.append(Configuration("int8", model, {n: int8 for n in layers}, run(model, f"quantize-static{{activation_type={act}}}")))
    half = layers[1::2]
    excluded = ",".join(half)
    text = f"quantize-static{{activation_type={act},exclude_nodes=[{excluded}]}}" if half else None
    configs.append(Configuration("int8-alternate", model, {n: int8 for n in layers if n not in half}, run(model, text)))
    for ratio in (0.25, 0.5):
        pruned = run(model, f"prune-channels{{ratio={ratio},reconstruct=off,importance=l1}}")
        configs.append(Configuration(f"channels-{ratio:.0%}", pruned, {}, pruned))
    pruned = configs[-1].runnable
    configs.append(
        Configuration("channels-50%+int8", pruned, {n: int8 for n in quantizable(layer_facts(pruned))},
                      run(pruned, f"quantize-static{{activation_type={act}}}"))
    )
    return configs


def cost_model_agreement(
    configurations: Sequence[Configuration],
    target: Target | None = None,
    *,
    cache: LatencyCache | str | os.PathLike[str] | None = None,
    threads: int = 1,
    runs: int = 30,
) -> Agreement:
    """Spearman's ρ and ratios between Σ per-layer measured latency and the measured whole model."""
    target = _target(target)
    store = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
    names, predicted, measured = [], [], []
    for config in configurations:
        facts = layer_facts(config.float_model)
        total = sum(
            layer_latency_ms(f, config.choices.get(name, FLOAT_CHOICE), target, cache=store, threads=threads)
            for name, f in facts.items()
        )
        names.append(config.name)
        predicted.append(total)
        measured.append(model_latency_ms(config.runnable, target, threads=threads, runs=runs))
        logger.info("%s: predicted %.3f ms, measured %.3f ms", config.name, total, measured[-1])
    ratios = tuple(p / m if m else math.nan for p, m in zip(predicted, measured, strict=True))
    return Agreement(tuple(names), tuple(predicted), tuple(measured), spearman(predicted, measured), ratios)
