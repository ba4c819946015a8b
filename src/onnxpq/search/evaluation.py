"""One candidate evaluation: run a pipeline on a model, measure the result in onnxruntime.

The unit every executor ships (:mod:`onnxpq.search.executors`): a frozen
dataclass of paths and text — model path, pipeline text, data paths, target
name — so that it pickles small, runs anywhere the files are, and gives the
same result every time (the passes are deterministic). :func:`evaluate`
returns plain data:

* ``noise``: relative output noise power against the float reference
  outputs ``y`` stored beside the data, ``N = Σ (y − ŷ)² / Σ y²`` over every
  output (``SQNR = −10·log10 N``). Noise powers of independent errors add,
  which is what lets the planner sum per-layer sensitivities;
* ``accuracy``: top-1 against ``labels`` when the data has them;
* ``top1_agreement``: argmax agreement with the reference (classifier-shaped first output);
* ``macs``, ``bops``, ``weight_bits``: per sample, from the produced model's
  shapes (:func:`onnxpq.analysis.macs.model_cost`, zeros counted);
* ``pruned``: the ``prune-channels`` notes (channels before/after per group),
  so a sensitivity candidate knows the channel fraction actually kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxpq.analysis.macs import model_cost
from onnxpq.analysis.model_inputs import input_specs
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import parse_pipeline
from onnxpq.core.session import make_session, run_in_batches
from onnxpq.errors import OnnxpqError
from onnxpq.io import load_model, save_model
from onnxpq.targets.profile import load_target
from onnxpq.validation.data import load_dataset
from onnxpq.validation.fidelity import compare_outputs, is_classifier_output
from onnxpq.validation.figures import top1_accuracy

__all__ = ["Evaluation", "ResultStore", "evaluate", "run_evaluations", "file_digest", "relative_noise", "batch_one_shapes", "REFERENCE_PREFIX"]

logger = logging.getLogger(__name__)

#: Arrays of the reference ``.npz`` are named ``output_<i>``.
REFERENCE_PREFIX = "output_"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def relative_noise(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """``Σ (y − ŷ)² / Σ y²`` over every output (inf for a non-finite candidate)."""
    signal = noise = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        r, c = ref.astype(np.float64), cand.astype(np.float64)
        if not np.all(np.isfinite(c)):
            return float("inf")
        signal += float(np.sum(r * r))
        noise += float(np.sum((r - c) ** 2))
    return noise / signal if signal > 0 else (0.0 if noise == 0 else float("inf"))


def batch_one_shapes(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Input shapes of one sample (batch 1) for cost figures."""
    shapes = {}
    for spec in input_specs(model):
        array = inputs[spec.name]
        rank = len(spec.shape) if spec.shape is not None else array.ndim
        shapes[spec.name] = list(array.shape[1:]) if array.ndim == rank + 1 else [1, *array.shape[1:]]
    return shapes


@dataclass(frozen=True)
class Evaluation:
    """What to run and on what: serialisable, idempotent.

    Attributes:
        model: the input ``.onnx`` (for explore: the exactly cleaned model).
        pipeline: pipeline text run on it; empty for the model as it is.
        data: ``.npz`` to measure on (inputs, optional ``labels``).
        reference: ``.npz`` of the float model's outputs on ``data`` (``output_0`` ...).
        calibration: ``.npz`` the passes calibrate on.
        target: built-in target name or TOML path.
        digests: content hashes of the files above (they make :attr:`key` content-addressed).
        save_to: where to write the produced model too (empty: nowhere); not part of :attr:`key`, and a
            path on the machine that runs the task (explore sets it for executors on this machine only).
    """

    model: str
    pipeline: str
    data: str
    reference: str
    calibration: str
    target: str
    digests: tuple[str, ...] = ()
    save_to: str = ""

    @property
    def key(self) -> str:
        """A content hash: same files, same pipeline, same target → same key."""
        text = "\n".join(["onnxpq.evaluation/1", self.pipeline, self.target, *self.digests])
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pruned_notes(records: list[Any]) -> list[dict[str, Any]]:
    notes = []
    for record in records:
        for group in record.details.get("pruned_groups", []) or []:
            notes.append(
                {
                    "producers": list(group.get("producers", [])),
                    "channels_before": group.get("channels_before"),
                    "channels_after": group.get("channels_after"),
                }
            )
    return notes


def evaluate(task: Evaluation) -> dict[str, Any]:
    """Run ``task.pipeline`` on ``task.model`` and measure it (see the module docstring)."""
    start = time.perf_counter()
    target = load_target(task.target)
    model = load_model(task.model, check=False)
    data = load_dataset(task.data, model)
    calibration = load_dataset(task.calibration, model)
    with np.load(task.reference) as archive:
        reference = [archive[f"{REFERENCE_PREFIX}{i}"] for i in range(len(archive.files))]
    records: list[Any] = []
    if task.pipeline.strip():
        manager = PassManager(parse_pipeline(task.pipeline), check_numerics=False, progress=False)
        with PassContext(target=target, calibration=calibration.inputs):
            model = manager(model).model
        records = manager.records
    if task.save_to:
        try:
            save_model(model, task.save_to)
        except OnnxpqError as exc:  # the measurement stands; whoever needs the model builds it again
            logger.warning("evaluation: could not keep the model of %r at %s (%s)", task.pipeline[:80], task.save_to, exc)
    outputs = run_in_batches(make_session(model), data.inputs)
    fidelity = compare_outputs(reference, outputs)
    result: dict[str, Any] = {
        "noise": relative_noise(reference, outputs),
        "sqnr_db": None if not np.isfinite(fidelity.sqnr_db) else fidelity.sqnr_db,
        "accuracy": top1_accuracy(outputs[0], data.labels) if data.labels is not None else None,
        "top1_agreement": fidelity.top1_agreement if is_classifier_output(reference[0]) else None,
        "pruned": _pruned_notes(records),
    }
    cost = model_cost(model, batch_one_shapes(model, data.inputs), count_zeros=True)
    result.update({"macs": cost.macs, "bops": cost.bops, "weight_bits": cost.weight_bits_total})
    result["seconds"] = time.perf_counter() - start
    return result


class ResultStore:
    """Evaluation results on disk, one JSON line per finished task, keyed by :attr:`Evaluation.key`.

    Append-only (only the coordinating process writes), so an interrupted run
    keeps every finished result and a second run re-evaluates nothing already
    done. A truncated last line (a killed writer) is ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._results: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    logger.debug("%s: skipping a truncated line", self.path)
                    continue
                self._results[entry["key"]] = entry["result"]

    def get(self, task: Evaluation) -> dict[str, Any] | None:
        return self._results.get(task.key)

    def put(self, task: Evaluation, result: dict[str, Any]) -> None:
        self._results[task.key] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"key": task.key, "pipeline": task.pipeline, "result": result}) + "\n")

    def __len__(self) -> int:
        return len(self._results)


def run_evaluations(
    tasks: list[Evaluation], executor: Any, store: ResultStore | None, progress: Any = None
) -> list[dict[str, Any]]:
    """Results of ``tasks``: from ``store`` where known, the others through ``executor`` (then stored)."""
    results: dict[str, dict[str, Any]] = {}
    todo: list[Evaluation] = []
    for task in tasks:
        known = store.get(task) if store is not None else None
        if known is not None:
            results[task.key] = known
        elif task.key not in {t.key for t in todo}:
            todo.append(task)
    if todo:
        logger.info("evaluating %d candidate(s) (%d cached)", len(todo), len(tasks) - len(todo))

        def keep(index: int, result: dict[str, Any]) -> None:
            results[todo[index].key] = result
            if store is not None:
                store.put(todo[index], result)

        executor.map(evaluate, todo, progress, keep)
    return [results[task.key] for task in tasks]
