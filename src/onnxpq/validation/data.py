"""Datasets for validation and calibration: ``.npz`` files or synthesised inputs.

An ``.npz`` holds one array per model input, named after it, first axis =
samples, plus an optional integer ``labels`` array (class indices for the
first output) that turns on task accuracy. Arrays are checked against the
model's input signature; floating arrays of another float width are cast
(with a log line), anything else that does not fit is a :class:`DataError`.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxpq.analysis.model_inputs import input_specs, synthesize_inputs
from onnxpq.errors import DataError

__all__ = ["Dataset", "load_dataset", "synthesized_dataset", "LABELS"]

logger = logging.getLogger(__name__)

LABELS = "labels"


@dataclass
class Dataset:
    """Inputs (first axis = samples), optional labels, and where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def split(self, fraction: float = 0.25, cap: int = 256, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(calibration, validation): a seeded random ``fraction`` of the samples (at most ``cap``), and the rest."""
        count = self.samples
        take = max(1, min(cap, int(count * fraction)))
        order = np.random.default_rng(seed).permutation(count)
        chosen, rest = np.sort(order[:take]), np.sort(order[take:])

        def pick(index: np.ndarray, source: str) -> Dataset:
            labels = self.labels[index] if self.labels is not None else None
            return Dataset({k: v[index] for k, v in self.inputs.items()}, labels, source)

        return (
            pick(chosen, f"{self.source} (calibration split: {take} samples)"),
            pick(rest, f"{self.source} (validation split: {count - take} samples)"),
        )

    def head(self, count: int) -> Dataset:
        """The first ``count`` samples."""
        labels = self.labels[:count] if self.labels is not None else None
        return Dataset({k: v[:count] for k, v in self.inputs.items()}, labels, self.source)


def synthesized_dataset(model: ir.Model, count: int = 32, *, seed: int = 0) -> Dataset:
    """Inputs drawn from the model's input types (no labels)."""
    try:
        return Dataset(synthesize_inputs(model, count, seed=seed), None, "synthesized")
    except ValueError as exc:
        raise DataError(f"cannot synthesise inputs: {exc}") from exc


def load_dataset(path: str | Path, model: ir.Model) -> Dataset:
    """Load and check an ``.npz`` dataset against ``model``'s inputs."""
    path = Path(path)
    if path.is_file() and path.suffix != ".npy" and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz (zip) archive of arrays named after the model inputs")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: is a .npy array, not an .npz archive of arrays named after the model inputs")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such data file") from exc
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    specs = input_specs(model)
    expected = {spec.name for spec in specs}
    missing = sorted(expected - set(arrays))
    if missing:
        raise DataError(f"{path}: no array for model input(s) {', '.join(missing)}; arrays present: {', '.join(sorted(arrays)) or 'none'}")
    extra = sorted(set(arrays) - expected - {LABELS})
    if extra:
        logger.warning("%s: ignoring arrays that are not model inputs: %s", path, ", ".join(extra))
    inputs: dict[str, np.ndarray] = {}
    counts = set()
    for spec in specs:
        array = arrays[spec.name]
        if array.ndim == 0:
            raise DataError(f"{path}: '{spec.name}' is a scalar; the first axis must be samples")
        if spec.dtype is not None and array.dtype != spec.dtype:
            if np.issubdtype(array.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating):
                logger.info("%s: casting '%s' from %s to %s", path, spec.name, array.dtype, spec.dtype)
                array = array.astype(spec.dtype)
            elif np.issubdtype(array.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer):
                info = np.iinfo(spec.dtype)
                if array.size and (array.min() < info.min or array.max() > info.max):
                    raise DataError(
                        f"{path}: '{spec.name}' has values in [{array.min()}, {array.max()}], outside {spec.dtype}"
                    )
                array = array.astype(spec.dtype)
            else:
                raise DataError(f"{path}: '{spec.name}' has type {array.dtype}, the model expects {spec.dtype}")
        if spec.shape is not None:
            rank = len(spec.shape)
            if array.ndim not in (rank, rank + 1):
                raise DataError(
                    f"{path}: '{spec.name}' has shape {list(array.shape)}; the model input is {spec.describe()} "
                    "(give samples on the first axis)"
                )
            model_dims = spec.shape if array.ndim == rank + 1 else spec.shape[1:]
            if array.ndim == rank and rank and isinstance(spec.shape[0], int) and len(array) % spec.shape[0]:
                raise DataError(
                    f"{path}: '{spec.name}' has {len(array)} samples, not a multiple of the model's fixed batch "
                    f"{spec.shape[0]}"
                )
            for got, want in zip(array.shape[1:], model_dims, strict=True):
                if isinstance(want, int) and got != want:
                    raise DataError(
                        f"{path}: '{spec.name}' has shape {list(array.shape)}, which does not fit {spec.describe()}"
                    )
        counts.add(len(array))
        inputs[spec.name] = array
    if len(counts) > 1:
        raise DataError(f"{path}: inputs have different sample counts {sorted(counts)}")
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must be a 1-D integer array of class indices")
        if counts and len(labels) != next(iter(counts)):
            raise DataError(f"{path}: {len(labels)} labels for {next(iter(counts))} samples")
    if not counts or next(iter(counts)) == 0:
        raise DataError(f"{path}: the dataset has no samples")
    return Dataset(inputs, labels, str(path))
