"""Deployment bundles: the optimized model with everything needed to load, trust and re-check it.

``package`` optimizes a model (:func:`onnxpq.workflows.optimize`), tunes the
onnxruntime session for it on this machine
(:mod:`onnxpq.validation.session_tuning`) and writes one folder::

    bundle/
      model.onnx [+ its .data file]    the optimized model (and its external data, when it has any)
      manifest.json                    schema "onnxpq.bundle/1", see below
      report.json, report.html         the optimize report, with "session_tuning"
      golden.npz                       a few inputs and the outputs the recipe gave at packaging
      reference/<name>.onnx [+ data]   the original model (with include_reference)

``manifest.json`` holds: the target, the pipeline text, the versions that
made it (onnxpq, onnx, onnx-ir, onnxruntime, numpy, python), the model's
input and output signatures (name, element type, shape with symbolic
dimensions by name), the SHA-256 and size of every other file, the validation
figures (baseline, optimized, ratios, fidelity, gate), and a loading
**recipe** for onnxruntime — providers, provider options and session options
(thread counts, graph optimization level, execution mode, config entries) —
as plain data: ``onnxpq.validation.session_tuning.session_from_recipe`` or
a few lines of onnxruntime code (README) load it, no script ships.

Writing is atomic: the bundle is staged in a hidden folder beside the
destination and renamed into place; an existing non-empty destination is
refused unless ``force`` (then it is replaced in one rename, its old content
removed afterwards). Nothing is left behind on error.

``verify_bundle`` re-hashes every file (a missing or changed file is a
:class:`BundleError`, exit 2, naming it; a file the manifest does not list is
reported), loads the model with the recipe and re-runs the golden inputs
(outputs must match those recorded within ``GOLDEN_RTOL`` of their range),
and, when the bundle holds the reference or one is given, measures fidelity
against it and re-checks the accuracy gate (a failure is exit 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxpq.core.session import make_session, run_in_batches
from onnxpq.errors import OnnxpqError, OutputError
from onnxpq.io import external_files, load_model
from onnxpq.report.html import render_html
from onnxpq.report.schema import environment, report_json
from onnxpq.targets.profile import Target, load_target
from onnxpq.validation.data import Dataset, load_dataset, synthesized_dataset
from onnxpq.validation.fidelity import compare_outputs
from onnxpq.validation.figures import check_measurement_options, top1_accuracy
from onnxpq.validation.session_tuning import SessionSetting, SessionTuning, make_recipe, session_from_recipe, tune_session

__all__ = [
    "BUNDLE_SCHEMA",
    "BundleError",
    "PackageResult",
    "VerifyResult",
    "load_bundle_session",
    "package",
    "read_manifest",
    "verify_bundle",
]

logger = logging.getLogger(__name__)

BUNDLE_SCHEMA = "onnxpq.bundle/1"
MANIFEST = "manifest.json"
MODEL = "model.onnx"
GOLDEN = "golden.npz"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REFERENCE_DIR = "reference"
#: Golden samples kept in the bundle.
GOLDEN_SAMPLES = 8
#: Re-run outputs must match the recorded ones within this fraction of their largest magnitude (int8 kernels may
#: round one step differently on another CPU; a broken model is far outside).
GOLDEN_RTOL = 1e-2
_CHUNK = 1 << 20

PathLike = str | os.PathLike[str]


class BundleError(OnnxpqError):
    """A bundle is missing, incomplete, tampered with, or its model does not load (exit 2)."""


@dataclass
class PackageResult:
    """What ``package`` wrote."""

    path: Path
    manifest: dict[str, Any]
    report: dict[str, Any]

    @property
    def gate_passed(self) -> bool:
        return bool(self.report["gate"]["passed"])


@dataclass
class VerifyResult:
    """What ``verify_bundle`` found. ``problems`` make it fail (exit 1); ``extra_files`` are only reported."""

    path: Path
    checked_files: list[str]
    extra_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    golden: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    reference: str | None = None
    accuracy: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.path),
            "passed": self.passed,
            "checked_files": self.checked_files,
            "extra_files": self.extra_files,
            "problems": self.problems,
            "golden": self.golden,
            "reference": self.reference,
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
        }


# --------------------------------------------------------------------------- hashing, signatures


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the manifest, as sorted POSIX relative paths."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


def _signature(args: list[ort.NodeArg]) -> list[dict[str, Any]]:
    def elem(onnx_type: str) -> str:
        return onnx_type[len("tensor("):-1] if onnx_type.startswith("tensor(") else onnx_type

    return [
        {"name": a.name, "type": a.type, "dtype": elem(a.type),
         "shape": None if a.shape is None else [d if isinstance(d, (int, str)) else None for d in a.shape]}
        for a in args
    ]


def _one_inference(dataset: Dataset, session_inputs: list[ort.NodeArg], batch: int) -> dict[str, np.ndarray]:
    """One run's feed: ``batch`` samples on a symbolic batch axis, the model's own fixed batch, or one sample."""
    args = {a.name: a for a in session_inputs}
    feed = {}
    for name, array in dataset.inputs.items():
        shape = args[name].shape if name in args else []
        if array.ndim == len(shape) + 1:
            feed[name] = array[0]
        elif shape and isinstance(shape[0], int):
            feed[name] = array[: shape[0]]
        else:
            reps = -(-batch // max(1, len(array)))
            feed[name] = np.concatenate([array] * reps, axis=0)[:batch] if reps > 1 else array[:batch]
    return feed


# --------------------------------------------------------------------------- package


def _check_destination(dest: Path, force: bool, inputs: list[Path]) -> None:
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{dest}: the folder '{parent}' does not exist")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest}: exists and is not a folder; give a folder for the bundle")
    if dest.is_symlink():
        raise OutputError(f"{dest}: is a symbolic link; give a plain folder for the bundle")
    if dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise OutputError(f"{dest}: the folder is not empty; choose another or pass --force to replace it")
        resolved = dest.resolve()
        for path in inputs:
            if path.resolve().is_relative_to(resolved):
                raise OutputError(f"{dest}: refusing to replace a folder that holds the input {path}")


def _copy_reference(model_path: Path, folder: Path) -> str:
    """Copy the input model and its external data files into ``folder/reference``; return the model's bundle path."""
    ref_dir = folder / REFERENCE_DIR
    ref_dir.mkdir()
    source = load_model(model_path, check=False)
    base = model_path.resolve().parent
    for file in sorted(external_files(source)):
        rel = file.relative_to(base)  # the safe loader guarantees data files sit inside the model's folder
        (ref_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, ref_dir / rel)
    shutil.copyfile(model_path, ref_dir / model_path.name)
    return f"{REFERENCE_DIR}/{model_path.name}"


def _golden(session: ort.InferenceSession, dataset: Dataset, folder: Path) -> dict[str, Any]:
    head = dataset.head(GOLDEN_SAMPLES)
    outputs = run_in_batches(session, head.inputs)
    names = [o.name for o in session.get_outputs()]
    arrays = {f"input.{k}": v for k, v in head.inputs.items()}
    arrays.update({f"output.{n}": v for n, v in zip(names, outputs, strict=True)})
    with (folder / GOLDEN).open("wb") as handle:
        np.savez(handle, **arrays)
    return {"file": GOLDEN, "samples": head.samples, "source": dataset.source, "rtol": GOLDEN_RTOL}


def _dataset_for(model_path: Path, data: PathLike | None) -> Dataset:
    model = load_model(model_path, check=False)
    return synthesized_dataset(model) if data is None else load_dataset(data, model)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(stage: Path, dest: Path) -> None:
    old: Path | None = None
    try:
        if dest.is_dir() and any(dest.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=".onnxpq-old-", dir=dest.parent))
            os.rename(dest, old / dest.name)
        os.rename(stage, dest)  # onto a missing or empty folder: one rename
    except OSError as exc:
        if old is not None and (old / dest.name).exists() and not dest.exists():
            os.rename(old / dest.name, dest)  # put the old bundle back
        raise OutputError(f"{dest}: cannot move the bundle into place ({exc.strerror or exc})") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def package(
    model: PathLike,
    bundle: PathLike,
    *,
    target: str | Path | Target = "cpu",
    pipeline: str | None = None,
    data: PathLike | None = None,
    calibration: PathLike | None = None,
    max_accuracy_drop: float | None = None,
    latency_runs: int = 50,
    latency_batch: int = 1,
    threads: int = 1,
    tune: bool = True,
    tune_budget: float = 10.0,
    include_reference: bool = False,
    force: bool = False,
    progress: bool = False,
    **optimize_options: Any,
) -> PackageResult:
    """Optimize ``model`` for ``target`` and write a deployment bundle folder at ``bundle``.

    Args:
        model: input ``.onnx`` (never modified).
        bundle: the bundle folder; must not exist or be empty, unless ``force``.
        target, pipeline, data, calibration, max_accuracy_drop, latency_runs,
            latency_batch, threads, progress: as for :func:`onnxpq.optimize`;
            ``optimize_options`` are passed on to it too.
        tune: measure session settings (:func:`~onnxpq.validation.session_tuning.tune_session`)
            for the recipe; without it the recipe is onnxruntime's defaults with ``threads`` threads.
        tune_budget: seconds for the tuning, roughly.
        include_reference: copy the input model into ``reference/`` so that
            ``verify_bundle`` can measure fidelity without being given it.
        force: replace a non-empty ``bundle`` folder.

    Raises:
        OnnxpqError: bad input; nothing is written.
    """
    from onnxpq.workflows import optimize

    model_path, dest = Path(model), Path(bundle)
    check_measurement_options(latency_runs=latency_runs, latency_batch=latency_batch, threads=threads)
    chosen = target if isinstance(target, Target) else load_target(target)
    inputs = [model_path] + [Path(p) for p in (data, calibration) if p is not None]
    _check_destination(dest, force, inputs)
    if tune_budget <= 0:
        raise OnnxpqError(f"--tune-budget must be a positive number of seconds, got {tune_budget}")
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        stage = Path(tempfile.mkdtemp(prefix=".onnxpq-bundle-", dir=parent))
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle folder gets the usual permissions
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write in '{parent}' ({exc.strerror or exc})") from exc
    try:
        result = optimize(
            model_path, stage / MODEL, target=chosen, pipeline=pipeline, data=data, calibration=calibration,
            max_accuracy_drop=max_accuracy_drop, latency_runs=latency_runs, latency_batch=latency_batch,
            threads=threads, progress=progress, **optimize_options,
        )
        report = result.report
        dataset = _dataset_for(stage / MODEL, data)
        probe = make_session(stage / MODEL, providers=chosen.providers)
        if tune:
            feed = _one_inference(dataset, probe.get_inputs(), latency_batch)
            tuning = tune_session(stage / MODEL, feed, providers=chosen.providers, budget_s=tune_budget)
        else:
            start = SessionSetting(intra_op_threads=threads)
            tuning = SessionTuning(chosen.providers[0], False, start, start, reason="tuning off (--no-tune)")
        recipe = make_recipe(chosen.providers, tuning.best)
        session = session_from_recipe(stage / MODEL, recipe)
        golden = _golden(session, dataset, stage)
        reference = _copy_reference(model_path, stage) if include_reference else None
        report["session_tuning"] = tuning.to_dict()
        report["output"] = str(dest / MODEL)
        (stage / REPORT_JSON).write_text(report_json(report), encoding="utf-8")
        (stage / REPORT_HTML).write_text(render_html(report), encoding="utf-8")
        files = [{"path": rel, "sha256": _sha256(stage / rel), "size_bytes": (stage / rel).stat().st_size}
                 for rel in _listed_files(stage)]
        manifest = {
            "schema": BUNDLE_SCHEMA,
            "model": MODEL,
            "target": report["target"],
            "pipeline": report["pipeline"],
            "pipeline_full": report.get("pipeline_full"),
            "created_with": environment(),
            "inputs": _signature(session.get_inputs()),
            "outputs": _signature(session.get_outputs()),
            "files": files,
            "validation": {key: report.get(key) for key in ("data", "baseline", "optimized", "ratios", "fidelity", "gate")},
            "recipe": recipe,
            "session_tuning": report["session_tuning"],
            "golden": golden,
            "reference": reference,
            "report": {"json": REPORT_JSON, "html": REPORT_HTML},
        }
        (stage / MANIFEST).write_text(report_json(manifest), encoding="utf-8")
        del session, probe
        _move_into_place(stage, dest)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    logger.info("wrote the bundle %s (%d files)", dest, len(files) + 1)
    return PackageResult(dest, manifest, report)


# --------------------------------------------------------------------------- verify


def read_manifest(bundle: PathLike) -> dict[str, Any]:
    """The bundle's manifest, checked for its schema and the fields verification needs."""
    folder = Path(bundle)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: missing {MANIFEST}; not an onnxpq bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(f"{path}: schema is {manifest.get('schema') if isinstance(manifest, dict) else None!r}, "
                          f"expected {BUNDLE_SCHEMA!r}")
    for key in ("model", "files", "recipe"):
        if key not in manifest:
            raise BundleError(f"{path}: '{key}' is missing")
    return manifest


def _inside(folder: Path, rel: Any) -> Path:
    """``folder/rel`` for a plain relative path in a manifest; BundleError for anything that could leave the folder."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or ".." in Path(rel).parts:
        raise BundleError(f"{folder / MANIFEST}: unsafe file path {rel!r} in the manifest")
    path = folder / rel
    if path.is_symlink():
        raise BundleError(f"{path}: is a symbolic link; bundles hold plain files")
    return path


def _check_files(folder: Path, manifest: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    listed, bad = [], []
    for entry in manifest["files"]:
        rel = entry.get("path") if isinstance(entry, dict) else None
        path = _inside(folder, rel)
        listed.append(rel)
        if not path.is_file():
            bad.append(f"{rel} is missing")
        elif path.stat().st_size != entry.get("size_bytes") or _sha256(path) != entry.get("sha256"):
            bad.append(f"{rel} was modified (SHA-256 or size differs from the manifest)")
    extra = [rel for rel in _listed_files(folder) if rel not in set(listed)]
    if bad:
        also = f"; not in the manifest: {', '.join(extra)}" if extra else ""
        raise BundleError(f"{folder}: {'; '.join(bad)}{also}")
    return listed, extra


def load_bundle_session(bundle: PathLike) -> ort.InferenceSession:
    """An onnxruntime session for the bundle's model, built with the manifest's recipe (files not re-hashed)."""
    folder = Path(bundle)
    manifest = read_manifest(folder)
    return session_from_recipe(_inside(folder, manifest["model"]), manifest["recipe"])


def _golden_check(session: ort.InferenceSession, folder: Path, manifest: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                                                     dict[str, np.ndarray]]:
    golden = manifest.get("golden") or {}
    if not golden.get("file"):
        return {"checked": False, "reason": "the bundle has no golden samples"}, {}
    path = _inside(folder, golden["file"])
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    inputs = {k[len("input."):]: v for k, v in arrays.items() if k.startswith("input.")}
    expected = [arrays[f"output.{o.name}"] for o in session.get_outputs() if f"output.{o.name}" in arrays]
    if len(expected) != len(session.get_outputs()):
        raise BundleError(f"{path}: does not hold an expected output for every model output")
    outputs = run_in_batches(session, inputs)
    worst = 0.0
    passed = True
    for got, want in zip(outputs, expected, strict=True):
        if got.shape != want.shape:
            passed, worst = False, float("inf")
            continue
        if not np.issubdtype(want.dtype, np.number):
            passed = passed and bool(np.array_equal(got, want))
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        worst = max(worst, diff)
        if not np.isfinite(diff) or diff > GOLDEN_RTOL * scale + 1e-6:
            passed = False
    return {"checked": True, "passed": passed, "samples": int(len(next(iter(inputs.values())))) if inputs else 0,
            "max_abs_error": worst, "rtol": GOLDEN_RTOL}, inputs


def verify_bundle(
    bundle: PathLike,
    *,
    reference: PathLike | None = None,
    data: PathLike | None = None,
    max_accuracy_drop: float | None = None,
) -> VerifyResult:
    """Re-check a bundle: hashes, the model loads with its recipe and reproduces its golden outputs, fidelity.

    Args:
        bundle: the bundle folder.
        reference: the original model [the bundle's ``reference/`` copy, when it has one].
        data: ``.npz`` for the fidelity check [the golden inputs]; with ``labels``, accuracy is compared too.
        max_accuracy_drop: the gate [the one recorded at packaging]; checked when a reference is at hand.

    Raises:
        BundleError: not a bundle, a missing or modified file, or the model does not load with the recipe.
    """
    folder = Path(bundle)
    manifest = read_manifest(folder)
    listed, extra = _check_files(folder, manifest)
    result = VerifyResult(folder, listed, extra)
    for rel in extra:
        logger.warning("%s: %s is not listed in the manifest", folder, rel)
    model_path = _inside(folder, manifest["model"])
    try:
        session = session_from_recipe(model_path, manifest["recipe"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{model_path}: does not load with the manifest's recipe: {first}") from exc
    result.golden, golden_inputs = _golden_check(session, folder, manifest)
    if result.golden.get("checked") and not result.golden["passed"]:
        result.problems.append(
            f"the model's outputs on the golden inputs differ from those recorded at packaging "
            f"(max |error| {result.golden['max_abs_error']:.3g})"
        )
    ref_path = Path(reference) if reference is not None else (
        _inside(folder, manifest["reference"]) if manifest.get("reference") else None)
    if ref_path is None:
        return result
    result.reference = str(ref_path)
    ref_model = load_model(ref_path)
    if data is not None:
        dataset = load_dataset(data, ref_model)
    elif golden_inputs:
        dataset = Dataset(golden_inputs, None, f"{GOLDEN} (golden inputs)")
    else:
        dataset = synthesized_dataset(ref_model)
    ref_out = run_in_batches(make_session(ref_path, providers=manifest["recipe"]["providers"]), dataset.inputs)
    got = run_in_batches(session, dataset.inputs)
    fidelity = compare_outputs(ref_out, got)
    result.fidelity = fidelity.to_dict() | {"data": dataset.source}
    gate = max_accuracy_drop
    if gate is None:
        gate = ((manifest.get("validation") or {}).get("gate") or {}).get("max_accuracy_drop")
    if dataset.labels is not None:
        base, opt = top1_accuracy(ref_out[0], dataset.labels), top1_accuracy(got[0], dataset.labels)
        result.accuracy = {"baseline": base, "optimized": opt, "drop": base - opt, "max_accuracy_drop": gate}
        if gate is not None and base - opt > gate:
            result.problems.append(f"accuracy drop {base - opt:.4f} exceeds the allowed {gate:.4f}")
    elif gate is not None and fidelity.top1_agreement is not None:
        drop = 1.0 - fidelity.top1_agreement
        result.accuracy = {"drop": drop, "measure": "1 - top-1 agreement (no labels)", "max_accuracy_drop": gate}
        if drop > gate:
            result.problems.append(f"1 - top-1 agreement {drop:.4f} exceeds the allowed {gate:.4f}")
    if not np.isfinite(fidelity.max_abs_error):
        result.problems.append("the model's outputs hold NaN or Inf where the reference's do not")
    with contextlib.suppress(Exception):
        del session
    return result
