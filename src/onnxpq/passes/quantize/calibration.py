"""Activation-range calibration for static (QDQ) quantization.

:func:`calibrate` runs the fp32 model in onnxruntime over calibration samples
and returns, for every requested tensor, the range ``[lo, hi]`` its
quantizer should cover. The model is never modified: an augmented copy, whose
graph outputs are exactly the requested tensors, is serialised and run.

Methods (x: every value the tensor takes over all samples; b: ``bits``)

``minmax``
    ``lo = min x``, ``hi = max x``; symmetric: ``[-a, a]`` with ``a = max |x|``.

``percentile`` (p = ``percentile``)
    The range that keeps p % of the values. Asymmetric: ``(100 − p) / 2`` % is
    cut from each tail, ``lo = Q_x((100 − p) / 200)``, ``hi = Q_x(1 − (100 − p) / 200)``
    (the convention of ``np.percentile(x, [(100 − p) / 2, 100 − (100 − p) / 2])``
    and of onnxruntime's percentile calibrator). Symmetric: ``a = Q_|x|(p / 100)``.
    Quantiles Q follow ``np.percentile``'s linear interpolation between order
    statistics, each placed inside its histogram bin: exact to within one bin
    width.

``entropy`` (TensorRT's KL-divergence calibration, Migacz 2017)
    On the histogram H of ``|x|`` over ``[0, max |x|]`` with B bins of width w,
    for every candidate i = L .. B (L quantized levels: ``2^(b−1)`` for a
    signed grid or a tensor with both signs, ``2^b − 1`` for a one-signed tensor
    on the unsigned grid):

    * reference ``P = H[0:i]`` with the outliers ``Σ H[i:]`` added to ``P[i−1]``;
    * ``H[0:i]`` is merged into L levels (level k covers bins
      ``⌊k·i/L⌋ .. ⌊(k+1)·i/L⌋ − 1`` — evenly spread, where TensorRT puts the
      remainder in the last level) and every level's count is spread evenly
      over the bins of that level where P is non-zero, giving Q;
    * ``KL(P‖Q) = Σ_{P>0} p log(p / q)`` on the normalised P and Q, where a
      q = 0 under p > 0 is floored at 10⁻⁴ counts (the smoothing of
      MXNet/onnxruntime's implementation).

    The threshold is ``t = i*·w`` (the upper edge of the last kept bin) for the
    i* with the smallest divergence. Symmetric: ``[-t, t]``. Asymmetric: the
    search runs on ``|x|`` too and the range is ``[-t, t] ∩ [min x, max x]``
    (clamped so that lo ≤ hi): one clip value for both signs, which is the
    published method; for a one-signed tensor (e.g. after ReLU) ``|x|`` is the
    tensor itself, so this is the one-sided histogram on the full unsigned grid.

``mse``
    Minimise the expected squared error of quantize-dequantize, clipping and
    rounding together, estimated from the histogram (bin centres ``x_k``,
    counts ``n_k``): ``E(r) = Σ_k n_k (x_k − x̂_r(x_k))²``.
    Symmetric: histogram of ``|x|``, candidates ``c_j = j·w`` (j = 1..B, every
    bin edge), ``s = c / (2^(b−1) − 1)``, ``x̂ = s·min(round(x / s), 2^(b−1) − 1)``;
    range ``[-c*, c*]``. Asymmetric: histogram of x over ``[min, max]``,
    candidates ``[lo·f, hi·f] ∩ [lo, hi]`` for ``f = j / B`` (j = 1..B), each
    quantized on the unsigned b-bit grid with
    :func:`onnxpq.passes.quantize.affine.asymmetric_params` (range widened to
    contain 0). Ties go to the smaller range.

Streaming and cost: statistics are updated batch by batch; no more than one
batch of the requested tensors' activations is held at a time (and the
tensors are split into groups of ``max_tensors_per_run``, each group with its
own session, so one run's extra outputs stay bounded). ``minmax`` makes one
pass over the calibration data per group. The histogram methods make **two**
passes per group — pass 1 finds ``min``/``max`` (which fix every histogram's
range, ``[min, max]`` or ``[0, max |x|]``), pass 2 fills the ``bins``-bin
histograms — so they cost two full runs over the calibration data. Memory:
one batch of outputs plus ``bins`` counters per tensor.

Sessions: CPU execution provider, one intra-op thread, graph optimisation
level BASIC. The calibration model keeps only the nodes the requested tensors
depend on (onnxruntime runs every node of a graph, needed or not), with
values read by If/Loop/Scan bodies from the outer scope counted as inputs.
Measured with onnxruntime 1.32: a tensor requested as a graph output survives
every optimisation level (ENABLE_ALL then skips the fusions
that would consume it, e.g. Conv+BatchNorm, MatMul+Add→Gemm, Gelu), with the
same values; BASIC is used because it still folds constants, is cheaper to
set up and rewrites nothing that calibration needs.

Initializers are not serialised: every initializer of the main graph with a
numpy-native dtype is handed to onnxruntime with
``SessionOptions.add_external_initializers`` as an OrtValue over the array
onnx-ir already holds — memory-mapped for external data, the in-memory array
otherwise — and the serialised graph carries an external-data placeholder of
the same name (onnxruntime only lets an initializer be replaced this way when
the graph declares it external). So no weight is copied into protobuf, the
2 GiB protobuf limit does not apply, and onnxruntime never has to resolve an
external file from in-memory bytes, which it refuses ("External data path for
model loaded from bytes escapes working directory"). Tensors under 1 KiB are
serialised inline. External tensors that cannot be injected (a dtype numpy
lacks, such as bfloat16 or int4; initializers of subgraphs; attribute tensors;
functions) keep their external reference and are resolved by onnxruntime
through the session option ``session.model_external_initializers_file_folder_path``
set to their (single) folder. Nothing is written anywhere.

Our own code, not onnxruntime.quantization's calibrators: those save the
augmented model to a file, hold the whole model in protobuf, and keep the
outputs of every batch until they compute (the histogram calibrators always;
MinMax unless ``max_intermediate_outputs`` is set); they offer no MSE search.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxpq.core.progress import ProgressBar
from onnxpq.core.progress import progress as progress_bar
from onnxpq.errors import DataError, PipelineError
from onnxpq.passes.quantize.affine import asymmetric_params, dequantize, quantize

__all__ = ["CalibrationMethod", "TensorRange", "calibrate"]

logger = logging.getLogger(__name__)

CalibrationMethod = Literal["minmax", "percentile", "entropy", "mse"]

_METHODS: tuple[str, ...] = get_args(CalibrationMethod)

#: Values processed at once when filling a histogram (bounds float64/int64 temporaries to 8 MiB each).
_CHUNK_ELEMENTS = 1 << 20

#: Candidates evaluated at once by the MSE search (bounds its [candidates, bins] temporaries).
_MSE_CANDIDATES_PER_STEP = 128

#: Initializers at least this large (or external) are injected as OrtValues instead of being serialised.
_INJECT_MIN_BYTES = 1024

#: The location written into the placeholders of injected initializers; onnxruntime never opens it.
_PLACEHOLDER_LOCATION = "onnxpq-calibration-in-memory"

#: Session option that resolves external data of a model given as bytes (onnxruntime ≥ 1.19).
_EXTERNAL_FOLDER_OPTION = "session.model_external_initializers_file_folder_path"

#: KL smoothing: a q = 0 where p > 0 counts as this many values.
_KL_FLOOR_COUNTS = 1e-4

_ORT_NUMPY_TYPES = frozenset(
    np.dtype(t)
    for t in (
        np.float16, np.float32, np.float64, np.bool_,
        np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    )
)


@dataclass(frozen=True)
class TensorRange:
    """The real range ``[lo, hi]`` a tensor's quantizer covers (lo ≤ hi, both finite)."""

    lo: float
    hi: float


def calibrate(
    model: ir.Model,
    tensors: Sequence[str],
    inputs: Mapping[str, np.ndarray],
    *,
    method: CalibrationMethod = "minmax",
    percentile: float = 99.99,
    bins: int = 2048,
    bits: int = 8,
    symmetric: bool = False,
    batch_size: int = 32,
    max_tensors_per_run: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, TensorRange]:
    """The calibrated range of every tensor in ``tensors``, keyed by name (see the module docstring for the math).

    ``inputs`` maps the model's input names to arrays whose first axis is the
    sample axis: an array with the model input's rank is fed ``batch_size``
    samples at a time (or the model's fixed batch size; a remainder that does
    not fill a fixed batch is skipped with a warning); an array with one more
    axis is fed sample by sample. Other keys (e.g. ``labels``) are ignored.

    ``symmetric`` returns ``[-a, a]`` ranges (signed activations), otherwise
    ``[lo, hi]`` (unsigned). ``bits`` sets the grid the entropy and MSE methods
    optimise for. A constant-zero tensor gets ``lo = hi = 0``.

    ``progress(done, total)`` is called after every onnxruntime run; ``total``
    counts all runs: groups of ``max_tensors_per_run`` tensors × passes (1 for
    minmax, 2 otherwise) × batches.

    Raises:
        PipelineError: an option is invalid, or a tensor is not a value of the main graph.
        DataError: inputs are missing or inconsistent, onnxruntime rejects a batch,
            or a tensor takes a NaN or infinite value.
    """
    _check_options(method, percentile, bins, bits, batch_size, max_tensors_per_run)
    names = list(dict.fromkeys(tensors))
    if not names:
        return {}
    values = _main_graph_values(model, names)
    groups = [names[i : i + max_tensors_per_run] for i in range(0, len(names), max_tensors_per_run)]
    external_folder = _folder_of_serialised_external_tensors(model)
    results: dict[str, TensorRange] = {}
    with progress_bar("calibration") as bar:  # a terminal bar; silent in CI, into a pipe, or with -q
        counter = _Progress(progress, passes=1 if method == "minmax" else 2, groups=len(groups), bar=bar)
        for group in groups:  # one session at a time: the previous one is released before the next is built
            results.update(
                _calibrate_group(
                    model, [values[name] for name in group], inputs, external_folder, counter,
                    method=method, percentile=percentile, bins=bins, bits=bits, symmetric=symmetric, batch_size=batch_size,
                )
            )
    for name in names:
        logger.debug("calibrated %s: [%g, %g]", name, results[name].lo, results[name].hi)
    return {name: results[name] for name in names}


def _calibrate_group(
    model: ir.Model,
    outputs: list[ir.Value],
    inputs: Mapping[str, np.ndarray],
    external_folder: str | None,
    counter: _Progress,
    *,
    method: str,
    percentile: float,
    bins: int,
    bits: int,
    symmetric: bool,
    batch_size: int,
) -> dict[str, TensorRange]:
    """Ranges of one group of tensors: pass 1 (min/max), then pass 2 (histograms) for the histogram methods."""
    group = [value.name for value in outputs]
    runner = _Runner.build(model, outputs, external_folder)
    plan = _BatchPlan.build(runner.session, inputs, batch_size)
    counter.start(plan)
    extremes = {name: _Extremes(name) for name in group}
    for batch in runner.run(plan, inputs, group):
        for name, out in zip(group, batch, strict=True):
            extremes[name].update(out)
        counter.advance(1)
        del batch, out  # let this batch go before the generator runs the next one
    if method == "minmax":
        return {name: _minmax_range(extremes[name], symmetric) for name in group}
    histograms = {
        name: hist for name in group if (hist := _Histogram.for_method(extremes[name], method, symmetric, bins)) is not None
    }
    if histograms:
        for batch in runner.run(plan, inputs, group):
            for name, out in zip(group, batch, strict=True):
                if name in histograms:
                    histograms[name].add(out)
            counter.advance(1)
            del batch, out  # as above: one batch of activations at a time
    else:  # every range is degenerate: the second pass has nothing to do
        counter.advance(plan.batches)
    return {
        name: _minmax_range(extremes[name], symmetric)
        if name not in histograms
        else _histogram_range(method, extremes[name], histograms[name], symmetric, bits, percentile)
        for name in group
    }


@dataclass
class _Progress:
    """Counts onnxruntime runs (groups x passes x batches); reports them to the caller's callback and the terminal bar."""

    callback: Callable[[int, int], None] | None
    passes: int
    groups: int
    total: int = 0
    done: int = 0
    bar: ProgressBar | None = None

    def start(self, plan: _BatchPlan) -> None:
        if not self.total:
            self.total = self.groups * self.passes * plan.batches
            logger.info(
                "calibration over %d samples: %d group(s) of tensors x %d pass(es) x %d batch(es)",
                plan.count, self.groups, self.passes, plan.batches,
            )

    def advance(self, runs: int) -> None:
        self.done += runs
        if self.bar is not None:
            self.bar.update(self.done, self.total)
        if self.callback is not None:
            self.callback(self.done, self.total)


# --------------------------------------------------------------------------- validation


def _check_options(method: str, percentile: float, bins: int, bits: int, batch_size: int, max_tensors_per_run: int) -> None:
    if method not in _METHODS:
        raise PipelineError(f"calibration: unknown method {method!r}; valid methods: {', '.join(_METHODS)}")
    if not (isinstance(percentile, (int, float)) and 0.0 < percentile <= 100.0):
        raise PipelineError(f"calibration: percentile must be in (0, 100], got {percentile!r}")
    if not (isinstance(bins, (int, np.integer)) and bins >= 2):
        raise PipelineError(f"calibration: bins must be an integer >= 2, got {bins!r}")
    if not (isinstance(bits, (int, np.integer)) and 2 <= bits <= 16):
        raise PipelineError(f"calibration: bits must be in 2..16, got {bits!r}")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise PipelineError(f"calibration: batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(max_tensors_per_run, (int, np.integer)) and max_tensors_per_run >= 1):
        raise PipelineError(f"calibration: max_tensors_per_run must be a positive integer, got {max_tensors_per_run!r}")


def _main_graph_values(model: ir.Model, names: list[str]) -> dict[str, ir.Value]:
    """The main-graph value of every name; unknown names raise PipelineError listing them."""
    graph = model.graph
    values: dict[str, ir.Value] = {v.name: v for v in graph.inputs if v.name}
    values.update((name, v) for name, v in graph.initializers.items())
    for node in graph:
        values.update((v.name, v) for v in node.outputs if v.name)
    unknown = [name for name in names if name not in values]
    if unknown:
        nested: set[str] = set()
        for subgraph in graph.subgraphs():
            nested.update(v.name for v in subgraph.inputs if v.name)
            for node in subgraph:
                nested.update(v.name for v in node.outputs if v.name)
        described = [f"{name!r} (inside a subgraph: not supported)" if name in nested else repr(name) for name in unknown]
        raise PipelineError(f"calibration: unknown tensor(s) {', '.join(described)}: not a value of the model's main graph")
    return {name: values[name] for name in names}


# --------------------------------------------------------------------------- sessions


def _injectable(tensor: ir.TensorProtocol) -> bool:
    """Whether the tensor is handed to onnxruntime as an OrtValue (large or external, numpy-native dtype)."""
    if not isinstance(tensor, ir.ExternalTensor) and tensor.nbytes < _INJECT_MIN_BYTES:
        return False
    try:
        return np.dtype(tensor.dtype.numpy()) in _ORT_NUMPY_TYPES
    except (TypeError, ValueError):
        return False


def _injected_array(tensor: ir.TensorProtocol) -> np.ndarray:
    """The array onnxruntime borrows: memory-mapped for external data, the tensor's own array otherwise (no copy)."""
    return np.ascontiguousarray(tensor.numpy(), dtype=np.dtype(tensor.dtype.numpy()))


def _serialised_tensor(name: str, tensor: ir.TensorProtocol) -> onnx.TensorProto:
    """The tensor as onnx-ir serialises it: inline bytes, or the external reference of an external tensor."""
    proto = ir.serde.serialize_tensor(tensor)
    proto.name = name
    return proto


def _placeholder(name: str, tensor: ir.TensorProtocol, array: np.ndarray) -> onnx.TensorProto:
    proto = onnx.TensorProto(name=name, data_type=tensor.dtype.value, dims=array.shape)
    proto.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", _PLACEHOLDER_LOCATION), ("offset", "0"), ("length", str(array.nbytes))):
        proto.external_data.add(key=key, value=value)
    return proto


def _folder_of_serialised_external_tensors(model: ir.Model) -> str | None:
    """The folder onnxruntime must resolve external references in: those of tensors that are not injected.

    These are main-graph initializers of a dtype numpy cannot hold natively
    (bfloat16, float8, int4, ...) and every external tensor in subgraphs,
    attributes or functions. They are left as external references (never read
    into the protobuf) and must all come from one folder.
    """
    folders: set[str] = set()

    def add(tensor: object) -> None:
        if isinstance(tensor, ir.ExternalTensor):
            folders.add(os.path.abspath(os.fspath(tensor.base_dir) or "."))

    for value in model.graph.initializers.values():
        if value.const_value is not None and not _injectable(value.const_value):
            add(value.const_value)
    for subgraph in model.graph.subgraphs():
        for value in subgraph.initializers.values():
            add(value.const_value)
    nodes = [*ir.traversal.RecursiveGraphIterator(model.graph)]
    for function in model.functions.values():
        nodes += ir.traversal.RecursiveGraphIterator(function)
    for node in nodes:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                add(attr.value)
            elif attr.type == ir.AttributeType.TENSORS:
                for tensor in attr.value:
                    add(tensor)
    if not folders:
        return None
    if len(folders) > 1:
        raise PipelineError(
            "calibration: the model's external tensors come from several folders "
            f"({', '.join(sorted(folders))}); save it into one folder first"
        )
    return folders.pop()


def _backward_slice(graph: ir.Graph, outputs: list[ir.Value]) -> tuple[list[ir.Node], set[ir.Value]]:
    """The main-graph nodes the outputs depend on (in graph order) and the values those nodes read.

    onnxruntime runs every node of a graph, needed or not; the calibration
    model keeps only these. Values a subgraph (If/Loop/Scan body) reads from
    the outer scope count as inputs of the node that owns the subgraph.
    """
    needed: set[ir.Node] = set()
    used: set[ir.Value] = set()
    stack = [node for value in outputs if (node := value.producer()) is not None and node.graph is graph]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        reads = [value for value in node.inputs if value is not None]
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                subgraphs = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                subgraphs = list(attr.value)
            else:
                continue
            for subgraph in subgraphs:
                for inner in ir.traversal.RecursiveGraphIterator(subgraph):
                    reads += [value for value in inner.inputs if value is not None]
        for value in reads:
            used.add(value)
            producer = value.producer()
            if producer is not None and producer.graph is graph and producer not in needed:
                stack.append(producer)
    return [node for node in graph if node in needed], used


@dataclass
class _Runner:
    """A session whose outputs are the requested tensors, and the arrays it borrows."""

    session: ort.InferenceSession
    borrowed: list[object] = field(default_factory=list)  # OrtValues and arrays that must outlive the session

    @classmethod
    def build(cls, model: ir.Model, outputs: list[ir.Value], external_folder: str | None) -> _Runner:
        graph = model.graph
        nodes, used = _backward_slice(graph, outputs)
        view = ir.GraphView(
            graph.inputs, outputs, nodes=nodes, initializers=(), opset_imports=graph.opset_imports, name=graph.name
        )
        augmented = ir.Model(view, ir_version=model.ir_version, functions=list(model.functions.values()))
        proto = ir.serde.serialize_model(augmented)
        names: list[str] = []
        ort_values: list[ort.OrtValue] = []
        borrowed: list[object] = []
        keep = used | set(outputs) | set(graph.inputs)
        for name, value in graph.initializers.items():
            if value not in keep:
                continue
            tensor = value.const_value
            if tensor is None:
                logger.debug("initializer %s has no value; left out of the calibration model", name)
                continue
            if not _injectable(tensor):
                proto.graph.initializer.append(_serialised_tensor(name, tensor))
                continue
            array = _injected_array(tensor)
            proto.graph.initializer.append(_placeholder(name, tensor, array))
            ort_value = ort.OrtValue.ortvalue_from_numpy(array)
            names.append(name)
            ort_values.append(ort_value)
            borrowed += [array, ort_value]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if names:
            options.add_external_initializers(names, ort_values)
        if external_folder is not None:
            options.add_session_config_entry(_EXTERNAL_FOLDER_OPTION, external_folder)
        data = proto.SerializeToString()
        del proto
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        return cls(session, borrowed)

    def run(self, plan: _BatchPlan, inputs: Mapping[str, np.ndarray], names: list[str]) -> Iterator[list[np.ndarray]]:
        """One pass over the calibration data: the requested tensors of each batch, one batch at a time."""
        for index, (start, feed) in enumerate(plan.feeds(inputs)):
            try:
                outputs = self.session.run(names, feed)
            except Exception as error:  # onnxruntime raises its own exception types for bad feeds
                raise DataError(
                    f"calibration: onnxruntime rejected batch {index} (samples from {start}): {error}"
                ) from error
            yield [np.asarray(out) for out in outputs]
            del outputs


@dataclass(frozen=True)
class _BatchPlan:
    """How samples are fed: ``step`` at a time along axis 0, or one by one (``per_sample``)."""

    names: tuple[str, ...]
    count: int
    step: int
    per_sample: bool
    drop_remainder: bool = False

    @property
    def batches(self) -> int:
        if self.per_sample:
            return self.count
        if self.drop_remainder:
            return self.count // self.step
        return -(-self.count // self.step)

    @classmethod
    def build(cls, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray], batch_size: int) -> _BatchPlan:
        model_inputs = {i.name: i for i in session.get_inputs()}
        missing = [name for name in model_inputs if name not in inputs]
        if missing:
            raise DataError(f"calibration: no data for model input(s) {', '.join(map(repr, missing))}")
        ignored = [name for name in inputs if name not in model_inputs]
        if ignored:
            logger.debug("calibration ignores arrays that are not model inputs: %s", ", ".join(ignored))
        names = tuple(model_inputs)
        counts = {name: len(inputs[name]) if np.ndim(inputs[name]) else 0 for name in names}
        if len(set(counts.values())) > 1:
            raise DataError(f"calibration: inputs disagree on the number of samples: {counts}")
        count = next(iter(counts.values()), 0)
        if count == 0 and names:
            raise DataError("calibration: no calibration samples (the first axis of the inputs is empty)")
        if not names:
            return cls(names, 1, 1, True)
        per_sample = any(np.ndim(inputs[n]) == len(model_inputs[n].shape) + 1 for n in names)
        if per_sample:
            return cls(names, count, 1, True)
        fixed = [i.shape[0] for i in model_inputs.values() if i.shape and isinstance(i.shape[0], int)]
        if not fixed:
            return cls(names, count, batch_size, False)
        step = min(fixed)
        if count < step:
            raise DataError(f"calibration: {count} samples do not fill the model's fixed batch size {step}")
        if count % step:
            logger.warning(
                "calibration: the last %d of %d samples do not fill the model's fixed batch size %d and are skipped",
                count % step, count, step,
            )
        return cls(names, count, step, False, drop_remainder=True)

    def feeds(self, inputs: Mapping[str, np.ndarray]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if not self.names:
            yield 0, {}
            return
        if self.per_sample:
            for index in range(self.count):
                yield index, {name: np.asarray(inputs[name][index]) for name in self.names}
            return
        stop = self.count - self.count % self.step if self.drop_remainder else self.count
        for start in range(0, stop, self.step):
            yield start, {name: np.asarray(inputs[name][start : start + self.step]) for name in self.names}


# --------------------------------------------------------------------------- statistics


class _Extremes:
    """Running min and max of one tensor (pass 1)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lo = math.inf
        self.hi = -math.inf
        self.seen = False

    def update(self, values: np.ndarray) -> None:
        name = self.name
        if values.dtype.kind not in "biuf":
            raise PipelineError(f"calibration: tensor {name!r} is not numeric ({values.dtype}); only numeric tensors can be calibrated")
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())  # NaN propagates through min/max
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError(f"calibration: tensor {name!r} takes NaN or infinite values on the calibration data")
        self.lo, self.hi, self.seen = min(self.lo, lo), max(self.hi, hi), True

    @property
    def absmax(self) -> float:
        return max(-self.lo, self.hi) if self.seen else 0.0

    def bounds(self) -> tuple[float, float]:
        if not self.seen:
            logger.warning("calibration: tensor %s was empty on every sample; its range is [0, 0]", self.name)
            return 0.0, 0.0
        return self.lo, self.hi


class _Histogram:
    """A fixed-range histogram (pass 2): of x over [lo, hi], or of |x| over [0, max |x|] when ``absolute``."""

    def __init__(self, lo: float, hi: float, bins: int, absolute: bool) -> None:
        self.lo, self.hi, self.absolute = lo, hi, absolute
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = (hi - lo) / bins

    @classmethod
    def for_method(cls, extremes: _Extremes, method: str, symmetric: bool, bins: int) -> _Histogram | None:
        """The histogram the method needs, or None when the range is degenerate (nothing to clip)."""
        if not extremes.seen:
            return None
        if symmetric or method == "entropy":
            absmax = extremes.absmax
            return cls(0.0, absmax, bins, True) if absmax > 0 else None
        return cls(extremes.lo, extremes.hi, bins, False) if extremes.hi > extremes.lo else None

    def add(self, values: np.ndarray) -> None:
        bins = self.counts.size
        scale = bins / (self.hi - self.lo)
        flat = values.reshape(-1)
        for start in range(0, flat.size, _CHUNK_ELEMENTS):
            chunk = flat[start : start + _CHUNK_ELEMENTS].astype(np.float64)
            if self.absolute:
                np.abs(chunk, out=chunk)
            chunk -= self.lo
            chunk *= scale
            index = chunk.astype(np.int64)
            del chunk
            np.clip(index, 0, bins - 1, out=index)
            self.counts += np.bincount(index, minlength=bins)

    def quantile(self, fraction: float) -> float:
        """The ``fraction`` quantile as ``np.percentile`` (method "linear") defines it, read from the counts.

        With n values, rank ``h = (n − 1)·fraction`` lies between the order
        statistics ``x_(⌊h⌋)`` and ``x_(⌊h⌋+1)``; each is placed inside its own
        bin (the c values of a bin spread evenly across it), then interpolated
        linearly. Both estimates are within one bin width of the true order
        statistics, hence so is the result.
        """
        cumulative = np.cumsum(self.counts)
        total = int(cumulative[-1])
        rank = (total - 1) * fraction
        first = math.floor(rank)
        second = min(first + 1, total - 1)
        a, b = self._order_statistic(cumulative, first), self._order_statistic(cumulative, second)
        value = a + (rank - first) * (b - a)
        return min(max(value, self.lo), self.hi)

    def _order_statistic(self, cumulative: np.ndarray, j: int) -> float:
        """Estimate of the j-th smallest value (0-based): inside the bin that holds it; the extremes are exact."""
        if j == int(cumulative[-1]) - 1:
            return self.hi
        if j == 0 and not self.absolute:
            return self.lo
        k = int(np.searchsorted(cumulative, j, side="right"))
        before = int(cumulative[k - 1]) if k > 0 else 0
        return self.lo + (k + (j - before + 0.5) / int(self.counts[k])) * self.width


def _minmax_range(extremes: _Extremes, symmetric: bool) -> TensorRange:
    lo, hi = extremes.bounds()
    if symmetric:
        absmax = max(-lo, hi)
        return TensorRange(-absmax, absmax)
    return TensorRange(lo, hi)


def _histogram_range(
    method: str, extremes: _Extremes, hist: _Histogram, symmetric: bool, bits: int, percentile: float
) -> TensorRange:
    lo, hi = extremes.bounds()
    if method == "percentile":
        if symmetric:
            a = hist.quantile(percentile / 100.0)
            return TensorRange(-a, a)
        cut = (100.0 - percentile) / 200.0
        r_lo, r_hi = hist.quantile(cut), hist.quantile(1.0 - cut)
        return TensorRange(min(r_lo, r_hi), max(r_lo, r_hi))
    if method == "entropy":
        one_signed = lo >= 0.0 or hi <= 0.0
        levels = 2 ** bits - 1 if (one_signed and not symmetric) else 2 ** (bits - 1)
        t = _entropy_threshold_bins(hist.counts, levels) * hist.width
        if symmetric:
            return TensorRange(-t, t)
        r_lo = max(-t, lo)
        r_hi = max(min(t, hi), r_lo)
        return TensorRange(r_lo, r_hi)
    if symmetric:
        c = _mse_symmetric_clip(hist, bits)
        return TensorRange(-c, c)
    r_lo, r_hi = _mse_asymmetric_range(hist, bits)
    return TensorRange(r_lo, r_hi)


def _entropy_threshold_bins(counts: np.ndarray, levels: int) -> int:
    """The number i* of leading bins whose KL(P‖Q) is smallest (TensorRT's search, see the module docstring)."""
    bins = counts.size
    if levels >= bins:
        logger.debug("entropy: %d bins cannot resolve %d levels; keeping the full range", bins, levels)
        return bins
    hist = counts.astype(np.float64)
    if hist.size > 1:
        hist[0] = hist[1]  # the spike of exact zeros (ReLU outputs) would pull the threshold down; as TensorRT's tools do
    total = float(hist.sum())
    suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # suffix[i] = Σ hist[i:]
    floor = _KL_FLOOR_COUNTS / total
    level_index = np.arange(levels + 1)
    best_i, best_kl = bins, math.inf
    for i in range(levels, bins + 1):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += suffix[i]
        nonzero = p > 0
        edges = (level_index * i) // levels
        level_sum = np.add.reduceat(sliced, edges[:-1])
        level_nonzero = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        per_bin = np.divide(level_sum, level_nonzero, out=np.zeros(levels), where=level_nonzero > 0)
        q = np.repeat(per_bin, np.diff(edges)) * nonzero
        q_total = q.sum()
        if q_total <= 0:
            continue
        p_kept = p[nonzero] / total
        q_kept = np.maximum(q[nonzero] / q_total, floor)
        kl = float(np.sum(p_kept * np.log(p_kept / q_kept)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _bin_centres(hist: _Histogram) -> tuple[np.ndarray, np.ndarray]:
    """Centres and counts of the non-empty bins (empty bins add nothing to the error)."""
    occupied = np.flatnonzero(hist.counts)
    centres = hist.lo + (occupied + 0.5) * hist.width
    return centres, hist.counts[occupied].astype(np.float64)


def _mse_symmetric_clip(hist: _Histogram, bits: int) -> float:
    """c* = argmin_c Σ n_k (x_k − x̂_c(x_k))² over c = j·w, on the histogram of |x|."""
    centres, weights = _bin_centres(hist)
    q_max = 2 ** (bits - 1) - 1
    candidates = np.arange(1, hist.counts.size + 1) * hist.width
    best_c, best_err = hist.hi, math.inf
    for start in range(0, candidates.size, _MSE_CANDIDATES_PER_STEP):
        clip = candidates[start : start + _MSE_CANDIDATES_PER_STEP, None]
        scale = clip / q_max
        x_hat = np.minimum(np.round(centres / scale), q_max) * scale
        err = ((centres - x_hat) ** 2) @ weights
        j = int(np.argmin(err))
        if err[j] < best_err:
            best_c, best_err = float(clip[j, 0]), float(err[j])
    return best_c


def _mse_asymmetric_range(hist: _Histogram, bits: int) -> tuple[float, float]:
    """[lo·f, hi·f] ∩ [lo, hi] minimising Σ n_k (x_k − x̂(x_k))² on the unsigned b-bit grid, f = j / B."""
    centres, weights = _bin_centres(hist)
    q_min, q_max = 0, 2**bits - 1
    lo, hi = hist.lo, hist.hi
    fractions = np.arange(1, hist.counts.size + 1) / hist.counts.size
    best, best_err = (lo, hi), math.inf
    for start in range(0, fractions.size, _MSE_CANDIDATES_PER_STEP):
        f = fractions[start : start + _MSE_CANDIDATES_PER_STEP]
        cand_lo = np.clip(lo * f, lo, hi)
        cand_hi = np.clip(hi * f, lo, hi)
        scale, zero = asymmetric_params(cand_lo, cand_hi, bits, False)
        q = quantize(centres[None, :], scale[:, None], zero[:, None], q_min, q_max)
        x_hat = dequantize(q, scale[:, None], zero[:, None])
        err = ((centres - x_hat) ** 2) @ weights
        j = int(np.argmin(err))
        if err[j] < best_err:
            best, best_err = (float(cand_lo[j]), float(cand_hi[j])), float(err[j])
    return best
