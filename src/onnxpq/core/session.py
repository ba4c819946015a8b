"""onnxruntime sessions for checks and validation.

One place builds sessions so that thread counts, providers and logging are
the same everywhere. An in-memory model is serialised to bytes; a model with
external data must be given by path (onnxruntime resolves its data files
relative to the model's folder).

Large models run segment by segment. An onnxruntime session holds every
weight of its model for its whole life (read into memory, or memory-mapped
and so resident once touched), and constant-folds ``DequantizeLinear`` of
int8 weights back to float32: validating a 3 GiB model would need at least
3 GiB. A model given by path whose weights, as onnxruntime would hold them,
exceed :data:`SEGMENTED_ABOVE_BYTES` is therefore run as a :class:`SegmentedSession`:
its main graph's nodes (in their topological file order) are cut into
consecutive segments of at most :data:`SEGMENT_BYTES` of weights (integer
weights counted 4x: onnxruntime may dequantize them to float32), each segment
a model of its own whose inputs are the values earlier segments (or the graph
inputs) produce and whose outputs are the values later segments (or the graph
outputs) use. Each segment's session is created, run on every sample, and
dropped before the next, with neither weight prepacking nor onnxruntime's CPU
memory arena (which keeps every block it grew to until the session goes), and
freed heap memory is handed back after every run: memory stays near one
segment's weights plus the activations crossing a cut. The results are the same computation (onnxruntime
fuses nothing across a cut, so float rounding may differ in the last bits);
latency measured this way is not the model's and is not reported as measured.
A model whose external data file is read by every segment is memory-mapped
piecewise by onnxruntime (``session.model_external_initializers_file_folder_path``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxpq.core.memory import return_freed_memory

__all__ = [
    "make_session",
    "run_in_batches",
    "has_external_data",
    "IN_MEMORY_LIMIT_BYTES",
    "SegmentedSession",
    "SEGMENTED_ABOVE_BYTES",
    "SEGMENT_BYTES",
]

logger = logging.getLogger(__name__)

#: In-memory models above this size are not serialised for checks (the pass manager skips its numerical check).
IN_MEMORY_LIMIT_BYTES = 512 * 1024 * 1024

#: Models given by path whose weights, as onnxruntime holds them (integer weights counted 4x: dequantized to
#: float32), exceed this run segment by segment (:class:`SegmentedSession`). BERT-base (440 MB) stays whole.
SEGMENTED_ABOVE_BYTES = 512 * 1024 * 1024

#: Weight bytes per segment of a :class:`SegmentedSession` (integer weights counted 4x).
SEGMENT_BYTES = 64 * 1024 * 1024


def has_external_data(model: ir.Model) -> bool:
    """True when any initializer still points to an external data file."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                return True
    return False


def make_session(
    model: ir.Model | str | os.PathLike[str],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    optimized_model_path: str | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session with a fixed thread count, on the providers that exist here.

    Providers the installed onnxruntime lacks are dropped (with a log line);
    the CPU provider is always last as the fallback.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: failures surface as exceptions, onnxpq prints them in one line
    options.graph_optimization_level = optimization
    if optimized_model_path is not None:
        options.optimized_model_filepath = optimized_model_path
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available]
    dropped = [p for p in providers if p not in available]
    if dropped:
        logger.info("providers not available here, using CPU instead: %s", ", ".join(dropped))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if isinstance(model, ir.Model):
        source: str | bytes = ir.to_proto(model).SerializeToString()
    else:
        source = str(Path(model))
        if _runtime_weight_bytes(Path(model)) > SEGMENTED_ABOVE_BYTES:
            segmented = SegmentedSession(Path(model), options, chosen)
            if optimized_model_path is not None:
                segmented.write_optimized_nodes(Path(optimized_model_path))
            return segmented  # type: ignore[return-value]
    return ort.InferenceSession(source, sess_options=options, providers=chosen)


def _runtime_weight_bytes(path: Path) -> int:
    """Weight bytes of a model file as onnxruntime would hold them, read from dims and types only (0 when unreadable).

    Small files are not parsed: a model under a quarter of the threshold on disk cannot reach it.
    """
    import onnx

    try:
        from onnxpq.io import model_size_bytes

        if model_size_bytes(path) < SEGMENTED_ABOVE_BYTES // 4:
            return 0
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable here: onnxruntime will say why when it loads it
        return 0
    return sum(_weight_bytes(t) for t in proto.graph.initializer)


@dataclass(frozen=True)
class _Arg:
    """What ``InferenceSession.get_inputs()`` / ``get_outputs()`` give: name, shape (ints, names or None), type."""

    name: str
    shape: list[int | str | None]
    type: str


def _args(values: Sequence[Any]) -> list[_Arg]:
    import onnx

    args = []
    for value in values:
        tensor = value.type.tensor_type
        shape: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        ]
        name = onnx.TensorProto.DataType.Name(tensor.elem_type).lower() if tensor.elem_type else "undefined"
        args.append(_Arg(value.name, shape, f"tensor({name})"))
    return args


def _subgraph_names(node: Any) -> set[str]:
    """Every name a node's subgraphs read (a superset of the outer-scope values they capture)."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in graph.node:
                names.update(n for n in inner.input if n)
                names |= _subgraph_names(inner)
    return names


def _weight_bytes(tensor: Any) -> int:
    import onnx

    count = 1
    for dim in tensor.dims:
        count *= dim
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if tensor.data_type == onnx.TensorProto.DOUBLE:
        return 8 * count
    return count * (4 if tensor.data_type not in floats[2:] else 2)  # integers may become float32 in onnxruntime


class SegmentedSession:
    """Run a large model by path segment by segment, each segment's session alive only while it runs.

    Looks like an ``onnxruntime.InferenceSession`` to :func:`run_in_batches`
    (``get_inputs``, ``get_outputs``, ``get_providers``, ``run``); use
    :meth:`run_many` to run many feeds with one session per segment.
    """

    segmented = True

    def __init__(
        self, path: Path, options: ort.SessionOptions, providers: Sequence[str], *, budget: int | None = None
    ) -> None:
        import onnx

        self.path = path
        self._options = options
        self._providers = list(providers)
        self._proto = onnx.load(str(path), load_external_data=False)
        graph = self._proto.graph
        initializers = {t.name: t for t in graph.initializer}
        self._inputs = _args([v for v in graph.input if v.name not in initializers])
        self._outputs = _args(list(graph.output))
        budget = SEGMENT_BYTES if budget is None else budget
        self._segments = self._cut(budget)
        logger.info("%s: running in %d segments of at most %d MiB of weights", path, len(self._segments), budget >> 20)

    def _cut(self, budget: int) -> list[tuple[int, int]]:
        graph = self._proto.graph
        sizes = {t.name: _weight_bytes(t) for t in graph.initializer}
        cuts, start, used, seen = [], 0, 0, set()
        for index, node in enumerate(graph.node):
            needed = ({*node.input} | _subgraph_names(node)) & sizes.keys() - seen
            cost = sum(sizes[name] for name in needed)
            if index > start and used + cost > budget:
                cuts.append((start, index))
                start, used, seen = index, 0, set()
                needed = ({*node.input} | _subgraph_names(node)) & sizes.keys()
                cost = sum(sizes[name] for name in needed)
            used += cost
            seen |= needed
        cuts.append((start, len(graph.node)))
        return cuts

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def _segment_model(self, start: int, end: int, feed_types: Mapping[str, np.ndarray]) -> Any:
        """The model of nodes [start, end): inputs typed from the arrays that will feed them."""
        import onnx

        graph = self._proto.graph
        nodes = graph.node[start:end]
        produced = {name for node in nodes for name in node.output if name}
        read = set()
        for node in nodes:
            read.update(n for n in node.input if n)
            read |= _subgraph_names(node)
        initializers = [t for t in graph.initializer if t.name in read]
        init_names = {t.name for t in initializers}
        later = {name for node in graph.node[end:] for name in ({*node.input} | _subgraph_names(node))}
        graph_outputs = {v.name: v for v in graph.output}
        inputs = []
        for name in sorted(read - produced - init_names):
            if name not in feed_types:
                continue  # a subgraph's own value, not an outer one
            array = feed_types[name]
            dims = [f"{name}_d{i}" for i in range(array.ndim)]
            inputs.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims))
        outputs = [
            graph_outputs.get(name) or onnx.ValueInfoProto(name=name)
            for node in nodes
            for name in node.output
            if name and (name in later or name in graph_outputs)
        ]
        sub = onnx.helper.make_graph(list(nodes), f"{graph.name}_segment_{start}", inputs, outputs, initializers)
        model = onnx.ModelProto()
        model.CopyFrom(self._proto)
        model.graph.CopyFrom(sub)
        return model

    def _session(self, model: Any, optimized: Path | None = None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._options.intra_op_num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = self._options.log_severity_level
        options.graph_optimization_level = self._options.graph_optimization_level
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.path.parent.resolve()))
        options.add_session_config_entry("session.disable_prepacking", "1")  # no second, packed copy of the weights
        # no CPU arena: it keeps what it grew to until the session goes, and it grows run after run with a
        # segment's DequantizeLinear outputs (3 GiB int8 chain, 64 MiB segments: a segment's peak 820 MiB with it)
        options.enable_cpu_mem_arena = False
        if optimized is not None:
            options.optimized_model_filepath = str(optimized)
            # the census reads nodes only: weights go to a side file instead of being loaded back with the graph
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized.name + ".data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=self._providers)

    def run_many(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """The graph outputs for every feed; one session per segment, dropped before the next."""
        values = [dict(feed) for feed in feeds]
        graph = self._proto.graph
        for start, end in self._segments:
            model = self._segment_model(start, end, values[0] if values else {})
            session = self._session(model)
            names = [o.name for o in session.get_outputs()]
            wanted = {i.name for i in session.get_inputs()}
            keep = {n for node in graph.node[end:] for n in ({*node.input} | _subgraph_names(node))}
            keep |= {o.name for o in graph.output}
            for index, feed in enumerate(values):
                outputs = session.run(names, {k: v for k, v in feed.items() if k in wanted})
                feed.update(zip(names, outputs, strict=True))
                values[index] = {k: v for k, v in feed.items() if k in keep}
                # a run's buffers (the float32 outputs of the segment's DequantizeLinear nodes) go back to the heap;
                # handed back to the system now, or the heap fragments run after run (3 GiB int8 chain: a segment's
                # peak 360 MiB without, 195 MiB with)
                return_freed_memory()
            del session
            return_freed_memory()  # the segment's weights and buffers, before the next segment
        return [[values[i][o.name] for o in self._outputs] for i in range(len(values))]

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        (outputs,) = self.run_many([feed])
        if output_names is None:
            return outputs
        index = {o.name: i for i, o in enumerate(self._outputs)}
        return [outputs[index[name]] for name in output_names]

    def write_optimized_nodes(self, path: Path) -> None:
        """Write, as ``path``, one model holding the nodes of every segment's onnxruntime-optimized graph (no weights).

        For a kernel census: what onnxruntime runs, segment by segment.
        """
        import tempfile

        import onnx

        graph = self._proto.graph
        merged = onnx.GraphProto(name=graph.name)
        with tempfile.TemporaryDirectory(prefix="onnxpq-segments-") as folder:
            feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=_numpy_type(i.type)) for i in self._inputs}
            types: dict[str, np.ndarray] = dict(feed)
            for index, (start, end) in enumerate(self._segments):
                model = self._segment_model(start, end, types)
                optimized = Path(folder) / f"segment{index}.onnx"
                session = self._session(model, optimized)
                for out in session.get_outputs():
                    types[out.name] = np.zeros(0, dtype=_numpy_type(out.type))
                del session
                merged.node.extend(onnx.load(str(optimized), load_external_data=False).graph.node)
                return_freed_memory()
        model = onnx.ModelProto()
        model.CopyFrom(self._proto)
        model.graph.CopyFrom(merged)
        path.write_bytes(model.SerializeToString())


def _numpy_type(text: str) -> np.dtype:
    import onnx

    name = text[len("tensor(") : -1].upper() if text.startswith("tensor(") else "FLOAT"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(name)))
    except (ValueError, KeyError, TypeError):
        return np.dtype(np.float32)


def run_in_batches(
    session: ort.InferenceSession,
    inputs: Mapping[str, np.ndarray],
    *,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Run ``session`` over samples (the first axis of every array); stack the outputs per sample.

    When an array has the model input's rank, its first axis is the model's
    batch axis: samples are fed ``batch_size`` at a time (or the model's fixed
    batch size) and outputs are concatenated on axis 0. When it has one more
    axis than the model input, every sample is fed on its own and the outputs
    are stacked on a new axis 0.
    """
    names = list(inputs)
    if not names:
        return [np.asarray(out) for out in session.run(None, {})]
    count = len(inputs[names[0]])
    model_inputs = {i.name: i for i in session.get_inputs()}
    per_sample = any(inputs[n].ndim == len(model_inputs[n].shape) + 1 for n in names if n in model_inputs)
    if per_sample:
        step = 1
    else:
        fixed = [i.shape[0] for i in model_inputs.values() if i.shape and isinstance(i.shape[0], int)]
        step = min(fixed) if fixed else batch_size
    feeds: list[dict[str, np.ndarray]] = []
    for start in range(0, count, step):
        if per_sample:  # arrays with the model input's rank are a batch of one; the others one sample
            feed = {
                name: np.asarray(inputs[name][start])
                if name not in model_inputs or inputs[name].ndim != len(model_inputs[name].shape)
                else inputs[name][start : start + 1]
                for name in names
            }
        else:
            feed = {name: inputs[name][start : start + step] for name in names}
        feeds.append(feed)
    if isinstance(session, SegmentedSession):
        runs = session.run_many(feeds)
    else:
        runs = [session.run(None, feed) for feed in feeds]
    results: list[list[np.ndarray]] = [[] for _ in runs[0]] if runs else []
    for outputs in runs:
        for bucket, out in zip(results, outputs, strict=True):
            bucket.append(np.asarray(out))
    if per_sample:
        return [np.stack(bucket) for bucket in results]
    return [np.concatenate(bucket, axis=0) if bucket[0].ndim else np.stack(bucket) for bucket in results]
