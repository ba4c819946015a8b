"""Before/after figures of a reference and a candidate model, measured side by side.

* size: bytes on disk, the .onnx plus its external data files;
* MACs and bit-operations per sample (batch 1), from shapes (:mod:`onnxpq.analysis.macs`);
* latency: when the target's first execution provider exists here and its
  cost model is ``measured``, both models run in onnxruntime on one batch
  (``latency_batch`` samples, 1 by default), interleaved (A B A B ...) after a
  warm-up, and p50/p90 of one run are reported with the batch and thread
  count; otherwise latency is *estimated* as bops / bops_per_second for one
  sample and says so (``estimated: true``);
* task accuracy: top-1 of the first output against ``labels``, when given;
* fidelity of the candidate's outputs against the reference's;
* the kernels onnxruntime actually runs (:mod:`onnxpq.validation.kernels`):
  integer kernels versus float compute kernels left after its fusions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxpq.analysis.macs import ModelCost, model_cost
from onnxpq.analysis.model_inputs import input_specs
from onnxpq.core.progress import progress
from onnxpq.core.session import make_session, run_in_batches
from onnxpq.errors import ModelLoadError, OnnxpqError
from onnxpq.io import load_model, model_size_bytes
from onnxpq.targets.profile import Target
from onnxpq.validation.data import Dataset
from onnxpq.validation.fidelity import Fidelity, compare_outputs
from onnxpq.validation.kernels import KernelCensus, kernel_census

__all__ = [
    "Latency",
    "ModelFigures",
    "PairFigures",
    "check_measurement_options",
    "latency_feed",
    "measure_pair",
    "top1_accuracy",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Latency:
    """Latency of one sample, in milliseconds."""

    p50: float
    p90: float
    estimated: bool
    method: str
    threads: int | None = None
    runs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelFigures:
    """Size, cost, latency and accuracy of one model."""

    path: str
    size_bytes: int
    macs: int
    bops: int
    weight_bits: int
    latency: Latency
    accuracy: float | None
    cost: ModelCost | None = field(default=None, repr=False)
    kernels: KernelCensus | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "bops": self.bops,
            "weight_bits": self.weight_bits,
            "latency_ms": self.latency.to_dict(),
            "accuracy": self.accuracy,
            "macs_unresolved_nodes": list(self.cost.unresolved) if self.cost else [],
            "kernels": self.kernels.to_dict() if self.kernels else None,
        }


@dataclass
class PairFigures:
    """Baseline and candidate figures, and the candidate's fidelity."""

    baseline: ModelFigures
    optimized: ModelFigures
    fidelity: Fidelity


def top1_accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax over the last axis equals the label."""
    scores = output.reshape(len(labels), -1)
    return float(np.mean(np.argmax(scores, axis=-1) == labels))


def latency_feed(dataset: Dataset, model_inputs: list[ort.NodeArg], batch: int) -> tuple[dict[str, np.ndarray], int]:
    """One inference's feed and its batch: ``batch`` samples on a symbolic batch axis, else the model's own."""
    feed, used = {}, 1
    args = {i.name: i for i in model_inputs}
    for name, array in dataset.inputs.items():
        shape = args[name].shape if name in args else []
        if array.ndim == len(shape) + 1:
            feed[name] = np.asarray(array[0])  # a 0-d array: onnxruntime refuses numpy scalars
        elif shape and isinstance(shape[0], int):
            feed[name] = array[: shape[0]]
            used = max(used, shape[0])
        else:
            if len(array) < batch:
                reps = -(-batch // len(array))
                array = np.concatenate([array] * reps, axis=0)
            feed[name] = array[:batch]
            used = max(used, batch)
    return feed, used


def _interleaved_latency(
    sessions: list[ort.InferenceSession], feeds: list[dict[str, np.ndarray]], runs: int, warmup: int
) -> list[list[float]]:
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    with progress("latency", total=runs) as bar:  # drawn between runs, outside the timed region
        for _ in range(runs):
            for bucket, session, feed in zip(times, sessions, feeds, strict=True):
                start = time.perf_counter()
                session.run(None, feed)
                bucket.append((time.perf_counter() - start) * 1e3)
            bar.advance()
    return times


def _input_shapes(dataset: Dataset, model: Any) -> tuple[dict[str, list[int]], int]:
    """Shapes of one inference (see :func:`_one_sample`) and the samples it covers."""
    shapes, samples = {}, 1
    for spec in input_specs(model):
        array = dataset.inputs[spec.name]
        rank = len(spec.shape) if spec.shape is not None else array.ndim - 1
        if array.ndim == rank + 1:
            shapes[spec.name] = list(array.shape[1:])
        else:
            batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else 1
            samples = max(samples, batch)
            shapes[spec.name] = [batch, *array.shape[1:]]
    return shapes, samples


def check_measurement_options(*, latency_runs: int = 1, latency_batch: int = 1, threads: int = 1) -> None:
    """Refuse measurement settings that cannot give a latency (one line; the CLI checks its flags alike).

    ``latency_runs`` and ``latency_batch`` must be at least 1 (a median needs one run, a run one
    sample); ``threads`` at least 1 (onnxruntime reads 0 as "all cores", which would silently time
    something other than what was asked). Booleans are not counts.
    """
    for name, value in (("latency_runs", latency_runs), ("latency_batch", latency_batch), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise OnnxpqError(f"{name} must be an integer of at least 1, got {value!r}")


def measure_pair(
    reference: str | Path,
    candidate: str | Path,
    target: Target,
    dataset: Dataset,
    *,
    latency_runs: int = 50,
    latency_batch: int = 1,
    warmup: int = 5,
    threads: int = 1,
) -> PairFigures:
    """Measure both models on ``dataset`` for ``target``; see the module docstring."""
    check_measurement_options(latency_runs=latency_runs, latency_batch=latency_batch, threads=threads)
    models = [load_model(reference, check=False), load_model(candidate, check=False)]
    sessions = []
    for index, path in enumerate((reference, candidate)):
        try:
            sessions.append(make_session(path, providers=target.providers, threads=threads))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if index == 0:
                raise ModelLoadError(f"{path}: onnxruntime cannot load the model: {first}") from exc
            raise OnnxpqError(f"{path}: the optimized model does not load in onnxruntime: {first}") from exc
    outputs = []
    for path, session in zip((reference, candidate), sessions, strict=True):
        try:
            outputs.append(run_in_batches(session, dataset.inputs))
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path}: the model fails in onnxruntime on the data: {first}") from exc
    fidelity = compare_outputs(outputs[0], outputs[1])

    available = target.providers[0] in ort.get_available_providers()
    segmented = any(getattr(s, "segmented", False) for s in sessions)  # too large for one session: no real latency
    measured = target.cost.model == "measured" and available and not segmented
    if measured:
        feeds_batches = [latency_feed(dataset, s.get_inputs(), latency_batch) for s in sessions]
        feeds = [feed for feed, _ in feeds_batches]
        times = _interleaved_latency(sessions, feeds, latency_runs, warmup)
        batch_used = feeds_batches[0][1]
        method = (
            f"measured: onnxruntime {target.providers[0]}, batch {batch_used}, {threads} thread(s), "
            f"interleaved A/B, {latency_runs} runs"
        )
    else:
        reason = (
            f"cost model '{target.cost.model}'"
            if target.cost.model != "measured"
            else f"{target.providers[0]} is not available here"
            if not available
            else "the model is too large for one onnxruntime session here and ran segment by segment"
        )
        method = f"estimated: bops / {target.cost.bops_per_second:.3g} bops/s ({reason})"

    figures = []
    for index, (path, model) in enumerate(zip((reference, candidate), models, strict=True)):
        shapes, per_run = _input_shapes(dataset, model)
        cost = model_cost(model, shapes)
        if measured:
            latency = Latency(
                float(np.percentile(times[index], 50)),
                float(np.percentile(times[index], 90)),
                False,
                method,
                threads,
                latency_runs,
            )
        else:
            ms = cost.bops / target.cost.bops_per_second * 1e3  # one inference (batch as fed)
            how = method
            if cost.unresolved:
                how += f"; LOWER BOUND: the shapes of {len(cost.unresolved)} compute node(s) could not be resolved (0 MACs)"
            latency = Latency(ms, ms, True, how)
        accuracy = top1_accuracy(outputs[index][0], dataset.labels) if dataset.labels is not None else None
        figures.append(
            ModelFigures(
                str(path), model_size_bytes(path), cost.macs // per_run, cost.bops // per_run,
                cost.weight_bits_total, latency, accuracy, cost, kernel_census(path, target.providers),
            )
        )
    return PairFigures(figures[0], figures[1], fidelity)
