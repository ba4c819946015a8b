"""Steps that every reference-model script in ``models/`` shares: output folder, export, checks, files.

Each script (``mnist.py``, ``mobilenetv2.py``, ``minilm.py``, ``bert_base_shape.py``)
builds one model from data and weights that installed packages ship, and writes
four files into the output folder:

- ``<name>.onnx``: exported with ``torch.onnx.export(..., dynamo=False)``, opset
  :data:`OPSET`, ``do_constant_folding=True``, a dynamic batch axis named ``batch``;
- ``<name>_test.npz``: arrays named after the model inputs (first axis = samples),
  plus integer ``labels`` where the data has real labels;
- ``<name>_calib.npz``: calibration inputs from a split disjoint from the test split;
- ``<name>.json``: provenance (source packages and versions, seed, opset, the
  figures measured in onnxruntime, the floors they were checked against, and the
  SHA-256 of the three data files).

The output folder is ``--out-dir`` if given, else ``$ONNXPQ_MODELS`` if set, else
``~/.cache/onnxpq/models`` (:func:`resolve_out_dir`): built models never go into the
repository. Files are written atomically (a temporary file in the destination folder,
then a rename; the ``.onnx`` last), and carry no timestamps or timings, so the same
versions and seed give byte-identical files.

Only the standard library, numpy, onnx and onnxruntime are imported at module
level; torch is imported where it is used, so the cheap parts stay testable
without the ``models`` extra.

This module is imported by the scripts beside it (``python models/<name>.py`` puts
``models/`` first on ``sys.path``); it is not a script itself.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

__all__ = [
    "DEFAULT_OUT_DIR",
    "OPSET",
    "OUT_DIR_ENV",
    "SEED",
    "BuildError",
    "check",
    "cosine_similarity",
    "export_onnx",
    "make_parser",
    "max_abs_diff",
    "onnxruntime_session",
    "package_version",
    "resolve_out_dir",
    "run_batched",
    "seed_everything",
    "sha256_of",
    "sqnr_db",
    "start",
    "tensor_specs",
    "write_outputs",
]

logger = logging.getLogger(__name__)

SEED = 0
OPSET = 17
OUT_DIR_ENV = "ONNXPQ_MODELS"
DEFAULT_OUT_DIR = Path("~/.cache/onnxpq/models")
PRODUCER = "onnxpq-models"


class BuildError(RuntimeError):
    """A reference model failed a check (accuracy floor, torch/onnxruntime agreement, sanity)."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`BuildError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise BuildError(message)


def resolve_out_dir(cli_value: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """The output folder: ``--out-dir``, else ``$ONNXPQ_MODELS``, else ``~/.cache/onnxpq/models``."""
    environ = os.environ if environ is None else environ
    if cli_value is not None:
        return Path(cli_value).expanduser()
    if environ.get(OUT_DIR_ENV):
        return Path(environ[OUT_DIR_ENV]).expanduser()
    return DEFAULT_OUT_DIR.expanduser()


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The command line every script shares: ``--out-dir`` and ``--verbose``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=(
            f"folder for {name}.onnx, {name}_test.npz, {name}_calib.npz and {name}.json "
            f"(default: ${OUT_DIR_ENV} if set, else {DEFAULT_OUT_DIR})"
        ),
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    return parser


def start(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, Path]:
    """Parse ``argv``, set up logging and determinism; return the arguments and the output folder."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    seed_everything(SEED)
    return args, resolve_out_dir(args.out_dir)


def seed_everything(seed: int) -> None:
    """One thread, deterministic algorithms, seeded torch RNG (numpy generators are seeded where made)."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(
    module: Any,
    example_inputs: tuple[Any, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    doc_string: str,
) -> bytes:
    """Export ``module`` (put in eval mode) with the TorchScript exporter and return the model bytes.

    ``torch.onnx.export(..., dynamo=False, opset_version=OPSET, do_constant_folding=True)``;
    the result is checked with ``onnx.checker.check_model(full_check=True)`` and gets
    ``producer_name`` :data:`PRODUCER` and ``doc_string``.
    """
    import torch

    module.eval()
    buffer = io.BytesIO()
    started = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            module,
            example_inputs,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
        )
    # The exporter puts a module it was given in training mode back into training
    # mode afterwards; the callers' modules are in eval mode and must stay there.
    module.eval()
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = PRODUCER
    model.doc_string = doc_string
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    logger.info("exported %d nodes, %d bytes in %.1f s", len(model.graph.node), len(data), time.perf_counter() - started)
    return data


def tensor_specs(model_bytes: bytes) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``({input: {shape, dtype}}, {output: {shape, dtype}})`` of a serialized model; symbolic dims as names."""

    def describe(values: Sequence[onnx.ValueInfoProto]) -> dict[str, dict[str, Any]]:
        specs: dict[str, dict[str, Any]] = {}
        for value in values:
            tensor_type = value.type.tensor_type
            shape = [dim.dim_param or dim.dim_value for dim in tensor_type.shape.dim]
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            specs[value.name] = {"shape": shape, "dtype": dtype}
        return specs

    graph = onnx.load_from_string(model_bytes).graph
    initializers = {tensor.name for tensor in graph.initializer}
    return describe([v for v in graph.input if v.name not in initializers]), describe(graph.output)


def onnxruntime_session(model_bytes: bytes) -> ort.InferenceSession:
    """A one-thread CPU session, sequential execution, on serialized model bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_batched(
    function: Callable[[dict[str, np.ndarray]], np.ndarray],
    inputs: Mapping[str, np.ndarray],
    batch_size: int,
) -> np.ndarray:
    """Apply ``function`` to ``inputs`` in slices of ``batch_size`` samples and concatenate the results."""
    count = len(next(iter(inputs.values())))
    outputs = [
        function({name: array[start : start + batch_size] for name, array in inputs.items()})
        for start in range(0, count, batch_size)
    ]
    return np.concatenate(outputs, axis=0)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` over all elements."""
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - other)^2)`` in dB (inf when equal)."""
    reference = reference.astype(np.float64)
    noise = float(np.sum((reference - other.astype(np.float64)) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(np.sum(reference**2)) / noise))


def cosine_similarity(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over samples of the cosine between each sample's flattened outputs."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = other.reshape(len(other), -1).astype(np.float64)
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(cosines))


def _json_ready(value: Any) -> Any:
    """Turn numpy scalars and paths into JSON types; non-finite floats into strings ("inf")."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a temporary file in its folder, then rename it into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_outputs(
    out_dir: Path,
    name: str,
    model_bytes: bytes,
    test: Mapping[str, np.ndarray],
    calib: Mapping[str, np.ndarray],
    provenance: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``<name>_test.npz``, ``<name>_calib.npz``, ``<name>.json`` and ``<name>.onnx`` (last), atomically.

    Every array whose name is a model input must have the model input's dtype, and
    the test and calibration files must hold every model input; the JSON gets the
    model's input/output specs, sample counts, versions and file hashes added to
    ``provenance``.
    """
    inputs, outputs = tensor_specs(model_bytes)
    for split, arrays in (("test", test), ("calib", calib)):
        for input_name, spec in inputs.items():
            check(input_name in arrays, f"{name}: {split} data has no array for model input {input_name!r}")
            array = arrays[input_name]
            check(
                str(array.dtype) == spec["dtype"] and array.ndim == len(spec["shape"]),
                f"{name}: {split} array {input_name!r} is {array.dtype}{list(array.shape)}, model wants {spec}",
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "onnx": out_dir / f"{name}.onnx",
        "test": out_dir / f"{name}_test.npz",
        "calib": out_dir / f"{name}_calib.npz",
        "json": out_dir / f"{name}.json",
    }
    _atomic_write(paths["test"], lambda stream: np.savez(stream, **test))
    _atomic_write(paths["calib"], lambda stream: np.savez(stream, **calib))
    first_input = next(iter(inputs))
    record = {
        "name": name,
        **provenance,
        "opset": OPSET,
        "seed": SEED,
        "exporter": "torch.onnx.export(dynamo=False, do_constant_folding=True)",
        "versions": {
            distribution: package_version(distribution)
            for distribution in ("torch", "onnx", "onnxruntime", "numpy")
        },
        "inputs": inputs,
        "outputs": outputs,
        "files": {
            "onnx": {
                "file": paths["onnx"].name,
                "bytes": len(model_bytes),
                "sha256": hashlib.sha256(model_bytes).hexdigest(),
            },
            "test": {
                "file": paths["test"].name,
                "samples": len(test[first_input]),
                "arrays": sorted(test),
                "sha256": sha256_of(paths["test"]),
            },
            "calib": {
                "file": paths["calib"].name,
                "samples": len(calib[first_input]),
                "arrays": sorted(calib),
                "sha256": sha256_of(paths["calib"]),
            },
        },
    }
    text = json.dumps(_json_ready(record), indent=2, sort_keys=False) + "\n"
    _atomic_write(paths["json"], lambda stream: stream.write(text.encode()))
    _atomic_write(paths["onnx"], lambda stream: stream.write(model_bytes))
    for path in paths.values():
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return paths
