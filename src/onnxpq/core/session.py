"""onnxruntime sessions for checks and validation.

One place builds sessions so that thread counts, providers and logging are
the same everywhere. An in-memory model is serialised to bytes; a model with
external data must be given by path (onnxruntime resolves its data files
relative to the model's folder).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

__all__ = ["make_session", "run_in_batches", "has_external_data", "IN_MEMORY_LIMIT_BYTES"]

logger = logging.getLogger(__name__)

#: In-memory models above this size are not serialised for checks (the pass manager skips its numerical check).
IN_MEMORY_LIMIT_BYTES = 512 * 1024 * 1024


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
    return ort.InferenceSession(source, sess_options=options, providers=chosen)


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
    results: list[list[np.ndarray]] = []
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
        outputs = session.run(None, feed)
        if not results:
            results = [[] for _ in outputs]
        for bucket, out in zip(results, outputs, strict=True):
            bucket.append(np.asarray(out))
    if per_sample:
        return [np.stack(bucket) for bucket in results]
    return [np.concatenate(bucket, axis=0) if bucket[0].ndim else np.stack(bucket) for bucket in results]
