"""Side by side: onnxpq's quantization for the cpu target against onnxruntime.quantization, one table per model.

Models (``--models NAME...``, default all of them; a model whose files are
missing is skipped with a line saying how to build it):

* ``digits``: the CNN embedded in the package (``src/onnxpq/data/digits_cnn.onnx``,
  ``digits_test.npz`` with labels, ``digits_calib.npz``);
* ``mnist``, ``mobilenetv2``, ``minilm``, ``bert_base_shape``: the reference-model
  cache written by ``python models/<name>.py`` into ``$ONNXPQ_MODELS`` or
  ``~/.cache/onnxpq/models`` (``<name>.onnx``, ``<name>_test.npz``,
  ``<name>_calib.npz``).

Variants of every model:

* ``fp32``: the input model;
* ``ort-qdq-s8s8``: ``onnxruntime.quantization.quantize_static`` with
  ``QuantFormat.QDQ``, ``per_channel=True``, ``CalibrationMethod.MinMax`` and its
  default activation/weight types (QInt8/QInt8);
* ``ort-qdq-u8s8``: the same with ``activation_type=QUInt8, weight_type=QInt8``
  (the configuration onnxruntime's docstring recommends for x86 with VNNI: the
  fair comparison);
* ``ort-dynamic``: ``quantize_dynamic(weight_type=QInt8, per_channel=True)``, for
  MatMul/Gemm-dominated models only: a model with a Conv node is a CNN, where
  dynamic quantization becomes ConvInteger (3.5x *slower* than fp32 on this CPU,
  REFERENCES.md); ``--all-variants`` runs it anyway;
* ``onnxpq-cpu``: the cpu target's default pipeline (whatever quantization it
  chooses: static QDQ, dynamic for MatMul, ...); ``onnxpq-gpu`` and
  ``onnxpq-vbit``: the gpu and vbit targets' default pipelines. Those two targets'
  hardware is not here: their accuracy/fidelity is measured in onnxruntime on the
  CPU (QDQ simulates the arithmetic), and their latency is the onnxpq report's
  *estimate* from bit-operations; they are never timed here.

Both onnxruntime tools get ``onnxruntime.quantization.shape_inference.quant_pre_process``
first, because ``quantize_static``/``quantize_dynamic`` log "Please consider to
run pre-processing before quantization" when the model has not been through it
(onnxruntime's recommended flow); its time counts as tool time. Where its
default symbolic shape inference fails ("Incomplete symbolic shape inference",
the MiniLM and BERT exports), the first of ``auto_merge=True`` and
``skip_symbolic_shape=True`` that works is used (probed once per model, untimed,
and said in the model's notes).

The quantization step. Every tool run happens in a fresh subprocess under
``/usr/bin/time -v`` (wall time and "Maximum resident set size" = peak RSS),
interleaved over ``--tool-rounds`` rounds (ort-s8s8, ort-u8s8, [ort-dynamic],
onnxpq-cpu, onnxpq-gpu, onnxpq-vbit per round), medians. What each process does:

* onnxruntime: ``quant_pre_process`` + ``quantize_static`` (which calibrates:
  MinMax over the calibration samples, fed ``CALIB_BATCH`` at a time through a
  ``CalibrationDataReader``) + its save; or ``quant_pre_process`` + ``quantize_dynamic``;
* onnxpq: exactly what ``onnxpq.optimize`` does *before* validation: safe load,
  load the test data (the pass manager's numerical check of exact passes runs
  on its first 4 samples) and the calibration data, run the target's pipeline
  under the verified ``PassManager`` (its ``quantize-static`` calibrates on the
  same samples, ``CALIB_BATCH`` at a time, MinMax) and ``save_model``
  (atomic, fsync, onnx checker on the written file). Not counted: onnxpq's own
  validation (fp32 and output run over the test data, latency, kernel census),
  which onnxruntime's tool does not do. For reference, one full
  ``onnxpq.optimize(...)`` (50 latency runs, int8 payoff included) per onnxpq target is also run under
  ``/usr/bin/time -v`` (reported separately; its report gives the bops and the
  estimated latencies) and its output is checked to be byte-identical to the
  pipeline-only run's.

The pipeline text each onnxpq run reports is listed under the model's tables
(the targets' default pipelines change as onnxpq develops), and a change of
onnxpq's sources while the tools ran is flagged in the notes.

Both tools get the same calibration samples: the first ``--calib-samples``
(default 128) of ``<name>_calib.npz``, written to one ``.npz`` in the work folder.
Each tool keeps its own threading: onnxruntime's calibrator uses a default
session (all cores), onnxpq's calibration one intra-op thread.

Measurement of the produced models, in this process: sessions with
``onnxpq.core.session.make_session`` (CPU EP, ORT_ENABLE_ALL, inter-op 1), one
set of sessions per thread count (1 and 2), inputs from the test set at batch 1
and at ``--batch`` (default 8 for CNNs, 1 for transformers), ``WARMUP`` warm-up
runs per session, then ``--runs`` rounds each running every timed variant once
in turn (A B C ... per round); medians, and ratios of medians against fp32 in
the same configuration. Quality over the whole test set: task accuracy (top-1
of the first output against ``labels``) when labelled; else top-1 agreement
with fp32 when the test set carries ``reference_top1`` (the fp32 model's own
classes, not labels); else the SQNR of all outputs against fp32's
(:func:`onnxpq.validation.fidelity.compare_outputs`). Size: the ``.onnx`` plus
its external data. Kernels: :func:`onnxpq.validation.kernels.kernel_census` of
onnxruntime's optimized graph (integer kernels / float compute kernels left).

Below each table the targets from the issue are checked from the numbers:
(a) onnxpq-cpu latency <= 0.95x fp32; (b) onnxpq-cpu latency <= 1.05x
ort-qdq-u8s8's; (c) onnxpq-cpu quality >= ort-qdq-u8s8's; (d) labelled accuracy
drop <= 0.5 pt (digits, mnist); (e) for minilm and bert_base_shape: onnxpq tool
wall time and peak RSS <= 0.5x quantize_static's (u8s8).

The section of ``BENCHMARKS.md`` between ``<!-- bench_quantize:start -->`` and
``<!-- bench_quantize:end -->`` holds one block per model (each between its own
inner markers, with its own command line, date, machine and versions); blocks
of models not run this time are kept. The new blocks are also printed.

Usage::

    python tools/bench_quantize.py [--models digits mnist ...] [--runs 50] [--calib-samples 128]
        [--batch N] [--tool-rounds 3] [--all-variants] [--variants VARIANT...] [--keep DIR] [--benchmarks PATH]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_machine import machine_lines
from bench_sections import merge_model_blocks, read_section, replace_section
from bench_models import run_models
from typing import Any

logger = logging.getLogger("bench_quantize")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
START_MARKER = "<!-- bench_quantize:start -->"
END_MARKER = "<!-- bench_quantize:end -->"
PACKAGE_DATA = REPO_ROOT / "src" / "onnxpq" / "data"
MODELS_ENV = "ONNXPQ_MODELS"
DEFAULT_MODELS_DIR = Path("~/.cache/onnxpq/models")

KNOWN_MODELS = ("digits", "mnist", "mobilenetv2", "minilm", "bert_base_shape")
#: Models for which the issue sets target (e): the tool-cost target.
TOOL_COST_MODELS = ("minilm", "bert_base_shape")
#: Models for which the issue sets target (d): the labelled accuracy drop.
ACCURACY_DROP_MODELS = ("digits", "mnist")
MAX_ACCURACY_DROP = 0.005

VARIANTS = ("fp32", "ort-qdq-s8s8", "ort-qdq-u8s8", "ort-dynamic", "onnxpq-cpu", "onnxpq-gpu", "onnxpq-vbit")
ORT_VARIANTS = ("ort-qdq-s8s8", "ort-qdq-u8s8", "ort-dynamic")
ONNXPQ_TARGETS = {"onnxpq-cpu": "cpu", "onnxpq-gpu": "gpu", "onnxpq-vbit": "vbit"}
#: Variants whose latency is estimated by onnxpq (target hardware not here): never timed.
ESTIMATED_VARIANTS = ("onnxpq-gpu", "onnxpq-vbit")
FAIR_ORT = "ort-qdq-u8s8"

#: Calibration samples per onnxruntime run, for both tools (onnxpq's ``calibrate`` default batch).
CALIB_BATCH = 32
#: Samples per run when computing quality over the test set.
QUALITY_BATCH = 64
WARMUP = 10
#: Output SQNR under which a variant is flagged as not computing the model's function any more.
BROKEN_SQNR_DB = 10.0
THREADS = (1, 2)
#: Models over this size are written with external data by the onnxruntime tools (protobuf's limit is 2 GiB).
EXTERNAL_DATA_BYTES = int(1.5 * 2**30)
MODEL_NAME = "model.onnx"


# --------------------------------------------------------------------------- tool runs (child side)


def _model_inputs(path: Path) -> dict[str, int | None]:
    """Graph inputs that are not initializers, with their rank (None when unknown)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    ranks: dict[str, int | None] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        ranks[value.name] = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
    return ranks


def _calibration_feeds(calib: Path, model: Path, batch: int) -> list[dict[str, Any]]:
    """The calibration samples as onnxruntime feeds: ``batch`` samples a time, or one by one without a batch axis."""
    import numpy as np

    ranks = _model_inputs(model)
    with np.load(calib, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in ranks}
    count = len(next(iter(arrays.values())))
    per_sample = any(rank is not None and arrays[name].ndim == rank + 1 for name, rank in ranks.items())
    step = 1 if per_sample else batch
    feeds = []
    for start in range(0, count, step):
        if per_sample:
            feeds.append({name: array[start] for name, array in arrays.items()})
        else:
            feeds.append({name: array[start : start + step] for name, array in arrays.items()})
    return feeds


#: ``quant_pre_process`` options tried in this order until one succeeds (see :func:`probe_preprocess`).
PREPROCESS_CHOICES: dict[str, dict[str, bool]] = {
    "default": {},
    "auto_merge": {"auto_merge": True},
    "skip_symbolic_shape": {"skip_symbolic_shape": True},
}


def _ort_preprocess(model: Path, scratch: Path, choice: str) -> tuple[Path, bool]:
    """``quant_pre_process`` into ``scratch``; returns the path and whether external data is used."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    big = _file_bytes(model) > EXTERNAL_DATA_BYTES
    pre = scratch / "preprocessed.onnx"
    quant_pre_process(
        str(model),
        str(pre),
        save_as_external_data=big,
        all_tensors_to_one_file=True,
        external_data_location="preprocessed.onnx.data" if big else None,
        **PREPROCESS_CHOICES[choice],
    )
    return pre, big


def probe_preprocess(model: Path, scratch: Path) -> dict[str, Any]:
    """The first ``quant_pre_process`` option set that works on ``model``, and why the others before it failed.

    ``quant_pre_process`` raises "Incomplete symbolic shape inference" on some
    transformer exports; its symbolic shape inference then needs
    ``auto_merge=True`` (merge conflicting symbolic dims). Run untimed, once per
    model, so that the timed runs do not pay for a failed attempt.
    """
    failures: dict[str, str] = {}
    for choice in PREPROCESS_CHOICES:
        try:
            _ort_preprocess(model, scratch, choice)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises plain Exception here
            failures[choice] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        return {"choice": choice, "failures": failures}
    return {"choice": None, "failures": failures}


def _file_bytes(model: Path) -> int:
    """The .onnx plus its sibling files that look like its external data (cheap, no protobuf parse)."""
    total = model.stat().st_size
    for sibling in model.parent.iterdir():
        if sibling != model and sibling.name.startswith(model.name) and sibling.is_file():
            total += sibling.stat().st_size
    return total


def run_ort_static(model: Path, calib: Path, out: Path, scratch: Path, unsigned: bool, choice: str) -> dict[str, float]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class NpzReader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, Any]]) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.feeds, None)

    start = time.perf_counter()
    pre, big = _ort_preprocess(model, scratch, choice)
    preprocessed = time.perf_counter()
    options: dict[str, Any] = {}
    if unsigned:
        options = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}
    quantize_static(
        str(pre),
        str(out),
        NpzReader(_calibration_feeds(calib, pre, CALIB_BATCH)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=big,
        **options,
    )
    done = time.perf_counter()
    return {"preprocess_s": preprocessed - start, "quantize_s": done - preprocessed, "op_s": done - start}


def run_ort_dynamic(model: Path, out: Path, scratch: Path, choice: str) -> dict[str, float]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    pre, big = _ort_preprocess(model, scratch, choice)
    preprocessed = time.perf_counter()
    quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=big)
    done = time.perf_counter()
    return {"preprocess_s": preprocessed - start, "quantize_s": done - preprocessed, "op_s": done - start}


def run_onnxpq_pipeline(model: Path, test: Path, calib: Path, out: Path, target_name: str) -> dict[str, float]:
    """What ``onnxpq.optimize`` does before it validates: load, run the target's pipeline (verified), save."""
    from onnxpq.core.context import PassContext
    from onnxpq.core.manager import PassManager
    from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
    from onnxpq.io import load_model, save_model
    from onnxpq.targets.profile import load_target
    from onnxpq.validation.data import load_dataset

    start = time.perf_counter()
    target = load_target(target_name)
    passes = parse_pipeline(target.pipeline)
    ir_model = load_model(model)
    loaded = time.perf_counter()
    dataset = load_dataset(test, ir_model)
    calibration = load_dataset(calib, ir_model)
    manager = PassManager(passes, check_inputs=dataset.head(4).inputs, progress=False)
    with PassContext(target=target, calibration=calibration.inputs):
        result = manager(ir_model)
    piped = time.perf_counter()
    save_model(result.model, out, protect=(model,))
    done = time.perf_counter()
    return {
        "load_s": loaded - start, "pipeline_s": piped - loaded, "save_s": done - piped, "op_s": done - start,
        "pipeline": format_pipeline(passes),
    }  # fmt: skip


def run_onnxpq_optimize(model: Path, test: Path, calib: Path, out: Path, target_name: str, report: Path) -> dict[str, float]:
    """The whole ``onnxpq.optimize`` (validation, int8 payoff at batch 1 included): the product's own output."""
    import onnxpq

    start = time.perf_counter()
    onnxpq.optimize(
        model, out, target=target_name, data=test, calibration=calib, report=report, latency_runs=50, progress=False
    )
    return {"op_s": time.perf_counter() - start}


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    variant: str = args.child
    args.scratch.mkdir(parents=True, exist_ok=True)
    if variant == "ort-preprocess-probe":
        return probe_preprocess(args.model, args.scratch)
    if variant in ("ort-qdq-s8s8", "ort-qdq-u8s8"):
        unsigned = variant == "ort-qdq-u8s8"
        return run_ort_static(args.model, args.calib, args.out, args.scratch, unsigned, args.preprocess)
    if variant == "ort-dynamic":
        return run_ort_dynamic(args.model, args.out, args.scratch, args.preprocess)
    if variant in ONNXPQ_TARGETS:
        return run_onnxpq_pipeline(args.model, args.test, args.calib, args.out, ONNXPQ_TARGETS[variant])
    if variant.endswith(":optimize") and variant.split(":")[0] in ONNXPQ_TARGETS:
        target = ONNXPQ_TARGETS[variant.split(":")[0]]
        return run_onnxpq_optimize(args.model, args.test, args.calib, args.out, target, args.report)
    raise SystemExit(f"unknown child variant {variant!r}")


# --------------------------------------------------------------------------- models


@dataclass
class ModelFiles:
    name: str
    onnx: Path
    test: Path
    calib: Path


def models_dir() -> Path:
    value = os.environ.get(MODELS_ENV)
    return Path(value).expanduser() if value else DEFAULT_MODELS_DIR.expanduser()


def locate(name: str) -> tuple[ModelFiles | None, str]:
    """The model's files, or None and a line saying what is missing and how to build it."""
    if name == "digits":
        files = ModelFiles(name, PACKAGE_DATA / "digits_cnn.onnx", PACKAGE_DATA / "digits_test.npz",
                           PACKAGE_DATA / "digits_calib.npz")  # fmt: skip
        hint = "rebuild with `python models/digits.py` (writes into src/onnxpq/data)"
    else:
        folder = models_dir()
        files = ModelFiles(name, folder / f"{name}.onnx", folder / f"{name}_test.npz", folder / f"{name}_calib.npz")
        script = REPO_ROOT / "models" / f"{name}.py"
        hint = (
            f"build it with `python models/{name}.py` (writes into ${MODELS_ENV} or {DEFAULT_MODELS_DIR})"
            if script.is_file()
            else f"its build script models/{name}.py does not exist yet"
        )
    missing = [p.name for p in (files.onnx, files.test, files.calib) if not p.is_file()]
    if missing:
        folder_text = files.onnx.parent
        return None, f"{name}: skipped, missing {', '.join(missing)} in {folder_text}; {hint}."
    return files, ""


# --------------------------------------------------------------------------- measurement (parent side)


@dataclass
class ToolSample:
    max_rss_kib: int
    process_s: float
    timings: dict[str, Any]


@dataclass
class VariantResult:
    name: str
    path: Path | None = None
    skipped: str | None = None  # why it was not produced
    failed: str | None = None
    tool: list[ToolSample] = field(default_factory=list)
    optimize_run: ToolSample | None = None  # the full onnxpq.optimize (onnxpq variants only)
    optimize_report: dict[str, Any] | None = None
    identical_to_optimize: bool | None = None
    size_bytes: int | None = None
    census: Any = None
    quality: float | None = None  # accuracy, agreement or SQNR dB, per the model's metric
    fidelity: Any = None
    latency_ms: dict[tuple[int, int], float] = field(default_factory=dict)  # (threads, batch) -> median

    @property
    def ok(self) -> bool:
        return self.path is not None and self.failed is None and self.skipped is None

    def tool_median(self, what: str) -> float | None:
        values = []
        for sample in self.tool:
            if what == "rss_mib":
                values.append(sample.max_rss_kib / 1024)
            elif what == "process_s":
                values.append(sample.process_s)
            elif isinstance(sample.timings.get(what), (int, float)):
                values.append(sample.timings[what])
        return statistics.median(values) if values else None

    def pipelines(self) -> list[str]:
        """The distinct pipeline texts the onnxpq tool runs reported, in order."""
        return list(dict.fromkeys(str(s.timings["pipeline"]) for s in self.tool if "pipeline" in s.timings))


@dataclass
class ModelRun:
    files: ModelFiles
    cnn: bool
    metric: str  # "accuracy" | "agreement" | "sqnr"
    batches: tuple[int, ...]
    calib_samples: int
    test_samples: int
    variants: dict[str, VariantResult]
    fixed_batch: int | None = None
    preprocess: str = "default"
    notes: list[str] = field(default_factory=list)


def _parse_time_v(text: str) -> tuple[int, float]:
    rss = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([\d:.]+)", text)
    if rss is None or elapsed is None:
        raise RuntimeError(f"could not parse /usr/bin/time -v output:\n{text}")
    seconds = 0.0
    for part in elapsed.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return int(rss.group(1)), seconds


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Fail)\w*:", line)]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def run_tool(
    child: str,
    files: ModelFiles,
    calib: Path,
    out_dir: Path,
    work: Path,
    *,
    report: Path | None = None,
    preprocess: str = "default",
) -> ToolSample:
    """One tool run in a fresh subprocess under ``/usr/bin/time -v``; the output goes to ``out_dir/model.onnx``.

    The child runs in an empty scratch folder (its working directory too:
    onnxruntime's symbolic shape inference writes ``sym_shape_infer_temp.onnx``
    and a randomly named data file into the working directory when it fails).
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.sync()  # do not let the previous run's dirty pages be written back during this one
    time_file, result_file = work / "time.txt", work / "result.json"
    command = [
        "/usr/bin/time", "-v", "-o", str(time_file),
        sys.executable, str(Path(__file__).resolve()), "--child", child,
        "--model", str(files.onnx), "--test", str(files.test), "--calib", str(calib),
        "--out", str(out_dir / MODEL_NAME), "--scratch", str(scratch), "--result", str(result_file),
        "--preprocess", preprocess,
    ]  # fmt: skip
    if report is not None:
        command += ["--report", str(report)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    if completed.returncode != 0:
        tail = (completed.stdout + "\n" + completed.stderr)[-4000:]
        logger.error("%s failed (exit %d):\n%s", child, completed.returncode, tail)
        raise RuntimeError(f"exit {completed.returncode}: {_first_error_line(completed.stderr or completed.stdout)}")
    rss_kib, process_s = _parse_time_v(time_file.read_text())
    return ToolSample(rss_kib, process_s, json.loads(result_file.read_text()))


def _load_arrays(path: Path, names: list[str]) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in names if name in archive.files}


def write_calibration(files: ModelFiles, count: int, dest: Path) -> int:
    """The first ``count`` calibration samples of every model input, into ``dest``; returns the sample count."""
    import numpy as np

    inputs = list(_model_inputs(files.onnx))
    arrays = _load_arrays(files.calib, inputs)
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise SystemExit(f"{files.calib}: no array for model input(s) {', '.join(missing)}")
    arrays = {name: array[:count] for name, array in arrays.items()}
    np.savez(dest, **arrays)
    return len(next(iter(arrays.values())))


def is_cnn(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in ("Conv", "ConvTranspose") for node in graph.node)


def quality_metric(test: Path) -> str:
    import numpy as np

    with np.load(test, allow_pickle=False) as archive:
        names = set(archive.files)
    if "labels" in names:
        return "accuracy"
    if "reference_top1" in names:
        return "agreement"
    return "sqnr"


METRIC_LABELS = {
    "accuracy": "accuracy (labels)",
    "agreement": "top-1 agreement with fp32",
    "sqnr": "output SQNR vs fp32",
}


def _feed(sessions_inputs: list[Any], arrays: dict[str, Any], batch: int) -> tuple[dict[str, Any], int]:
    """One inference's feed: ``batch`` samples on a symbolic batch axis, else the model's own batch."""
    import numpy as np

    feed, used = {}, 1
    for arg in sessions_inputs:
        array = arrays[arg.name]
        shape = arg.shape or []
        if array.ndim == len(shape) + 1:
            feed[arg.name] = array[0]
        elif shape and isinstance(shape[0], int):
            feed[arg.name] = array[: shape[0]]
            used = max(used, shape[0])
        else:
            if len(array) < batch:
                array = np.concatenate([array] * -(-batch // len(array)), axis=0)
            feed[arg.name] = np.ascontiguousarray(array[:batch])
            used = max(used, batch)
    return feed, used


def measure_quality(run: ModelRun, test_inputs: dict[str, Any], labels: Any) -> None:
    """Outputs of every variant over the test set; accuracy / agreement / SQNR; size; kernel census."""
    import numpy as np

    from onnxpq.core.session import make_session, run_in_batches
    from onnxpq.io import model_size_bytes
    from onnxpq.validation.fidelity import compare_outputs
    from onnxpq.validation.kernels import kernel_census

    reference: list[Any] | None = None
    for result in run.variants.values():
        if not result.ok:
            continue
        logger.info("%s %s: quality over %d samples, census", run.files.name, result.name, run.test_samples)
        session = make_session(result.path, threads=max(THREADS))
        outputs = run_in_batches(session, test_inputs, batch_size=QUALITY_BATCH)
        del session
        if reference is None:
            reference = outputs  # fp32 comes first
        result.fidelity = compare_outputs(reference, outputs)
        if run.metric == "accuracy":
            scores = outputs[0].reshape(len(labels), -1)
            result.quality = float(np.mean(np.argmax(scores, axis=-1) == labels))
        elif run.metric == "agreement":
            result.quality = result.fidelity.top1_agreement
        else:
            result.quality = result.fidelity.sqnr_db
        result.size_bytes = model_size_bytes(result.path)
        result.census = kernel_census(result.path)


def measure_latency(run: ModelRun, test_inputs: dict[str, Any], runs: int) -> None:
    """Interleaved medians per (threads, batch), one set of sessions per thread count."""
    from onnxpq.core.session import make_session

    timed = [r for r in run.variants.values() if r.ok and r.name not in ESTIMATED_VARIANTS]
    for threads in THREADS:
        sessions = [make_session(r.path, threads=threads) for r in timed]
        seen_batches: set[int] = set()
        for batch in run.batches:
            feeds = []
            used = batch
            for session in sessions:
                feed, used = _feed(session.get_inputs(), test_inputs, batch)
                feeds.append(feed)
            if used != batch:
                run.fixed_batch = used
            if used in seen_batches:
                continue
            seen_batches.add(used)
            logger.info(
                "%s: latency, %d thread(s), batch %d, %d variants x %d rounds",
                run.files.name, threads, used, len(sessions), runs,
            )  # fmt: skip
            for session, feed in zip(sessions, feeds, strict=True):
                for _ in range(WARMUP):
                    session.run(None, feed)
            times: list[list[float]] = [[] for _ in sessions]
            for _ in range(runs):
                for bucket, session, feed in zip(times, sessions, feeds, strict=True):
                    start = time.perf_counter()
                    session.run(None, feed)
                    bucket.append((time.perf_counter() - start) * 1e3)
            for result, bucket in zip(timed, times, strict=True):
                result.latency_ms[(threads, used)] = statistics.median(bucket)
        del sessions


def _same_files(a: Path, b: Path) -> bool:
    """Byte-identical .onnx and identical sibling data files (names and bytes)."""

    def contents(model: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(model.parent.iterdir()) if p.is_file() and p.name != "report.json"}

    return contents(a) == contents(b)


def source_fingerprint() -> str:
    """SHA-256 of onnxpq's sources (Python and target TOML): a change during a run means mixed versions."""
    digest = hashlib.sha256()
    root = REPO_ROOT / "src" / "onnxpq"
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.toml")]):
        digest.update(str(path.relative_to(root)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    return digest.hexdigest()


def git_state() -> str:
    """``<commit>`` plus ``+ uncommitted changes`` when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes in src/" if dirty else "")


def benchmark_model(files: ModelFiles, args: argparse.Namespace, work: Path) -> ModelRun:
    fingerprint = source_fingerprint()
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.npz"
    calib_samples = write_calibration(files, args.calib_samples, calib)
    cnn = is_cnn(files.onnx)
    batch = args.batch if args.batch is not None else (8 if cnn else 1)
    batches = (1,) if batch == 1 else (1, batch)
    metric = quality_metric(files.test)
    inputs = list(_model_inputs(files.onnx))
    test_arrays = _load_arrays(files.test, [*inputs, "labels"])
    labels = test_arrays.pop("labels", None)
    test_inputs = test_arrays
    run = ModelRun(
        files, cnn, metric, batches, calib_samples, len(next(iter(test_inputs.values()))),
        {name: VariantResult(name) for name in VARIANTS},
    )  # fmt: skip
    run.variants["fp32"].path = files.onnx
    for name in VARIANTS[1:]:
        if args.variants is not None and name not in args.variants:
            run.variants[name].skipped = "not requested (`--variants`)"
    if cnn and not args.all_variants and run.variants["ort-dynamic"].skipped is None:
        run.variants["ort-dynamic"].skipped = (
            "CNN: dynamic quantization runs Conv as ConvInteger, 3.5x slower than fp32 on this CPU "
            "(REFERENCES.md); `--all-variants` runs it"
        )
    samples_cap = _onnxpq_calibration_cap()
    if samples_cap is not None and calib_samples > samples_cap:
        run.notes.append(
            f"onnxpq's quantize-static calibrates on at most {samples_cap} samples (its `samples` option); "
            f"onnxruntime used all {calib_samples}."
        )

    tools = [name for name in VARIANTS if name != "fp32" and run.variants[name].skipped is None]
    preprocess = "default"
    if any(name in ORT_VARIANTS for name in tools):
        try:
            probe = run_tool("ort-preprocess-probe", files, calib, work / "probe", work).timings
        except RuntimeError as exc:
            probe = {"choice": None, "failures": {"probe": str(exc)}}
        shutil.rmtree(work / "probe", ignore_errors=True)
        for choice, error in probe["failures"].items():
            run.notes.append(f"`quant_pre_process` with {choice} options failed on this model: {error}")
        if probe["choice"] is None:
            for name in ORT_VARIANTS:
                if name in tools:
                    run.variants[name].failed = "`quant_pre_process` failed with every option set (see notes)"
        else:
            preprocess = probe["choice"]
            run.preprocess = preprocess
            if preprocess != "default":
                run.notes.append(
                    f"onnxruntime tools ran `quant_pre_process({', '.join(f'{k}=True' for k in PREPROCESS_CHOICES[preprocess])})`, "
                    "the first option set that works on this model (probed once, untimed)."
                )
    for round_index in range(args.tool_rounds):
        for name in tools:
            result = run.variants[name]
            if result.failed is not None:
                continue
            out_dir = work / name
            try:
                sample = run_tool(name, files, calib, out_dir, work, preprocess=preprocess)
            except RuntimeError as exc:
                result.failed = str(exc)
                continue
            result.tool.append(sample)
            result.path = out_dir / MODEL_NAME
            logger.info(
                "%s round %d/%d %-13s wall %7.2f s (op %7.2f s)  peak RSS %7.0f MiB",
                files.name, round_index + 1, args.tool_rounds, name, sample.process_s,
                sample.timings.get("op_s", float("nan")), sample.max_rss_kib / 1024,
            )  # fmt: skip
    for name in ONNXPQ_TARGETS:
        result = run.variants[name]
        if not result.ok:
            continue
        out_dir = work / f"{name}-optimize"
        report = work / f"{name}-report.json"
        try:
            result.optimize_run = run_tool(f"{name}:optimize", files, calib, out_dir, work, report=report)
        except RuntimeError as exc:
            run.notes.append(f"{name}: the full `onnxpq.optimize` failed: {exc}")
            continue
        result.optimize_report = json.loads(report.read_text())
        result.identical_to_optimize = _same_files(result.path, out_dir / MODEL_NAME)
        paid = result.optimize_report.get("int8_payoff")
        if paid is not None and paid["given_back"]:
            # The product is what optimize writes: measure that model, and say what the payoff step changed.
            result.path = out_dir / MODEL_NAME
            run.notes.append(
                f"{name}: the rows measure `onnxpq.optimize`'s output, whose int8 payoff step (batch 1, 1 thread) "
                f"gave {', '.join(paid['given_back'])} back to float (measured {paid['ratio_vs_float_before']:.2f}x "
                f"→ {paid['ratio_vs_float_after']:.2f}x of float); the tool columns time the pipeline alone"
            )
        logger.info(
            "%s %s full optimize: wall %.2f s, peak RSS %.0f MiB, identical output: %s",
            files.name, name, result.optimize_run.process_s, result.optimize_run.max_rss_kib / 1024,
            result.identical_to_optimize,
        )  # fmt: skip

    if source_fingerprint() != fingerprint:
        run.notes.append(
            "onnxpq's sources changed while the tools ran (concurrent edits): the onnxpq rows may mix code versions; "
            "re-run for a clean table."
        )
    measure_quality(run, test_inputs, labels)
    measure_latency(run, test_inputs, args.runs)
    return run


def _onnxpq_calibration_cap() -> int | None:
    from onnxpq.core.pipeline_text import parse_pipeline
    from onnxpq.targets.profile import load_target

    for p in parse_pipeline(load_target("cpu").pipeline):
        if getattr(p, "name", "") == "quantize-static":
            return int(getattr(p, "samples", 0)) or None
    return None


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" + suffix
    return f"{value:,.{digits}f}{suffix}"


def _quality_text(metric: str, value: float | None, reference: bool = False) -> str:
    if value is None:
        return "–"
    if metric == "sqnr":
        return "∞ (reference)" if reference else _fmt(value, 1, " dB")
    return f"{value * 100:.2f} %"


def _ratio(run: ModelRun, name: str, key: tuple[int, int], against: str = "fp32") -> float | None:
    a = run.variants[name].latency_ms.get(key)
    b = run.variants[against].latency_ms.get(key)
    return a / b if a is not None and b else None


def _configs(run: ModelRun) -> list[tuple[int, int]]:
    keys = run.variants["fp32"].latency_ms
    return [key for key in sorted(keys, key=lambda k: (k[0], k[1]))]


def _verdict(ok: bool | None, value: str) -> str:
    if ok is None:
        return f"not measured ({value})"
    return f"reached ({value})" if ok else f"NOT reached ({value})"


def targets_lines(run: ModelRun) -> list[str]:
    name = run.files.name
    cpu, ort, fp32 = run.variants["onnxpq-cpu"], run.variants[FAIR_ORT], run.variants["fp32"]
    lines = ["Targets of the issue, computed from the numbers above:", ""]
    configs = _configs(run)

    def latency_target(label: str, against: str, limit: float) -> str:
        parts, misses, measured = [], 0, 0
        for key in configs:
            ratio = _ratio(run, "onnxpq-cpu", key, against)
            tag = f"{key[0]}T b{key[1]}"
            if ratio is None:
                parts.append(f"{tag}: not measured")
                continue
            measured += 1
            misses += ratio > limit
            parts.append(f"{tag}: {'reached' if ratio <= limit else 'NOT reached'} ({ratio:.2f}x)")
        if measured == 0:
            verdict = "not measured (a variant failed)"
        elif misses == 0 and measured == len(configs):
            verdict = "reached in every configuration"
        elif misses == 0:
            verdict = f"reached where measured ({measured} of {len(configs)} configurations)"
        else:
            verdict = f"NOT reached in {misses} of {len(configs)} configurations"
        return f"- {label}: {verdict} — " + "; ".join(parts)

    lines.append(latency_target("(a) onnxpq-cpu latency ≤ 0.95x fp32", "fp32", 0.95))
    lines.append(latency_target(f"(b) onnxpq-cpu latency ≤ 1.05x {FAIR_ORT}", FAIR_ORT, 1.05))
    if run.variants["ort-dynamic"].ok:
        parts = []
        for key in configs:
            ratio = _ratio(run, "onnxpq-cpu", key, "ort-dynamic")
            parts.append(f"{key[0]}T b{key[1]}: {_fmt(ratio, 2)}x")
        lines.append("- for information, onnxpq-cpu latency / ort-dynamic's: " + "; ".join(parts))

    if cpu.quality is not None and ort.quality is not None:
        ok = cpu.quality >= ort.quality
        text = f"{_quality_text(run.metric, cpu.quality)} vs {_quality_text(run.metric, ort.quality)}"
        lines.append(f"- (c) onnxpq-cpu {METRIC_LABELS[run.metric]} ≥ {FAIR_ORT}'s: {_verdict(ok, text)}")
    else:
        lines.append(f"- (c) onnxpq-cpu quality ≥ {FAIR_ORT}'s: not measured (a variant failed)")

    if run.metric == "accuracy" and cpu.quality is not None and fp32.quality is not None:
        drop = (fp32.quality - cpu.quality) * 100
        ok = drop <= MAX_ACCURACY_DROP * 100 + 1e-9
        scope = "" if name in ACCURACY_DROP_MODELS else " (the issue sets it for digits and mnist; shown for information)"
        lines.append(f"- (d) labelled accuracy drop ≤ 0.5 pt{scope}: {_verdict(ok, f'{drop:+.2f} pt drop, {fp32.quality * 100:.2f} % → {cpu.quality * 100:.2f} %')}")
    elif name in ACCURACY_DROP_MODELS:
        lines.append("- (d) labelled accuracy drop ≤ 0.5 pt: not measured (no labels or a variant failed)")
    else:
        lines.append(f"- (d) labelled accuracy drop: n/a ({name} has no labels)")

    cw, cr = cpu.tool_median("process_s"), cpu.tool_median("rss_mib")
    ow, orr = ort.tool_median("process_s"), ort.tool_median("rss_mib")
    co, oo = cpu.tool_median("op_s"), ort.tool_median("op_s")
    if None in (cw, cr, ow, orr):
        lines.append(f"- (e) onnxpq tool wall time and peak RSS ≤ 0.5x quantize_static's: not measured (a tool failed)")
    else:
        wall_ratio, rss_ratio = cw / ow, cr / orr
        detail = (
            f"wall {cw:.2f} s vs {ow:.2f} s = {wall_ratio:.2f}x; peak RSS {cr:.0f} vs {orr:.0f} MiB = {rss_ratio:.2f}x; "
            f"in-process op time {co:.2f} vs {oo:.2f} s = {co / oo:.2f}x"
        )
        if name in TOOL_COST_MODELS:
            wall_text = f"wall {'reached' if wall_ratio <= 0.5 else 'NOT reached'} ({wall_ratio:.2f}x)"
            rss_text = f"peak RSS {'reached' if rss_ratio <= 0.5 else 'NOT reached'} ({rss_ratio:.2f}x)"
            both = wall_ratio <= 0.5 and rss_ratio <= 0.5
            lines.append(
                f"- (e) onnxpq tool wall time and peak RSS ≤ 0.5x {FAIR_ORT} quantize_static's: "
                f"{'reached' if both else 'NOT reached'} — {wall_text}, {rss_text}; {detail}"
            )
        else:
            lines.append(
                f"- (e) tool cost: n/a (the issue sets it for minilm and bert_base_shape); for information: {detail}"
            )
    return lines


def render_model(run: ModelRun, args: argparse.Namespace) -> str:
    name = run.files.name
    v = run.variants
    configs = _configs(run)
    fp32_quality = v["fp32"].quality
    lines = [
        f"### {name}",
        "",
        f"- Command: `{shlex.join(['python', 'tools/bench_quantize.py', *args.argv])}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        *machine_lines(),
        f"- onnxpq source: git {git_state()}",
        f"- Model: `{_display_path(run.files.onnx)}` ({'CNN' if run.cnn else 'MatMul/Gemm-dominated'}); "
        f"test set {run.test_samples} samples, quality = {METRIC_LABELS[run.metric]}"
        + (f" (fp32: {_quality_text(run.metric, fp32_quality)})" if run.metric == "accuracy" else ""),
        f"- Calibration: the first {run.calib_samples} samples of `{run.files.calib.name}` for every tool, "
        f"{CALIB_BATCH} per onnxruntime run; onnxruntime tools after `quant_pre_process`"
        + (f" ({run.preprocess} options)" if run.preprocess != "default" else ""),
        f"- Latency: {args.runs} interleaved rounds per configuration after {WARMUP} warm-up runs, medians; "
        f"threads {', '.join(map(str, THREADS))} (separate sessions); batch "
        f"{', '.join(str(b) for b in sorted({k[1] for k in configs}))}"
        + (f" (the model's batch axis is fixed at {run.fixed_batch})" if run.fixed_batch else ""),
        f"- Tool runs: {args.tool_rounds} interleaved rounds, each run a fresh process under `/usr/bin/time -v`; "
        "medians. onnxpq = load + verified pipeline + save (no validation), onnxruntime = "
        "`quant_pre_process` + `quantize_static`/`quantize_dynamic` (calibration included)",
        "",
    ]
    b_main = max(k[1] for k in configs) if configs else 1
    ratio_heads = []
    for key in configs:
        ratio_heads.append(f"ratio vs fp32, {key[0]} thread{'s' if key[0] > 1 else ''} b{key[1]}")
    header = ["variant", *ratio_heads, METRIC_LABELS[run.metric], "size MiB", "int / float compute kernels",
              "tool wall s", "tool peak RSS MiB"]  # fmt: skip
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for variant in VARIANTS:
        r = v[variant]
        if r.skipped is not None:
            lines.append(f"| {variant} | skipped: {r.skipped} |" + " |" * (len(header) - 2))
            continue
        if r.failed is not None:
            lines.append(f"| {variant} | failed: {r.failed} |" + " |" * (len(header) - 2))
            continue
        cells = [variant]
        for key in configs:
            if variant in ESTIMATED_VARIANTS:
                cells.append("est. only ↓")
            else:
                cells.append(_fmt(_ratio(run, variant, key), 2))
        cells.append(_quality_text(run.metric, r.quality, reference=variant == "fp32"))
        cells.append(_fmt(r.size_bytes / 2**20 if r.size_bytes is not None else None, 3))
        cells.append(f"{r.census.integer_total} / {r.census.float_total}" if r.census is not None else "–")
        cells.append(_fmt(r.tool_median("process_s"), 2) if variant != "fp32" else "–")
        cells.append(_fmt(r.tool_median("rss_mib"), 0) if variant != "fp32" else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *targets_lines(run), ""]
    broken = [
        f"{variant} ({r.fidelity.sqnr_db:.1f} dB)"
        for variant, r in v.items()
        if r.ok and r.fidelity is not None and r.fidelity.sqnr_db < BROKEN_SQNR_DB
    ]
    if broken:
        lines += [
            f"Warning: output SQNR below {BROKEN_SQNR_DB:.0f} dB (the output is mostly quantization noise, "
            f"whatever the latency): {', '.join(broken)}.",
            "",
        ]

    # Absolute latencies.
    lines += [
        "<details><summary>Details: latency medians (ms), kernels, fidelity, tool timings, estimated cost</summary>",
        "",
        "| variant | " + " | ".join(f"{k[0]}T b{k[1]} ms" for k in configs) + " |",
        "|---|" + "---:|" * len(configs),
    ]
    for variant in VARIANTS:
        r = v[variant]
        if r.ok and variant not in ESTIMATED_VARIANTS:
            lines.append(f"| {variant} | " + " | ".join(_fmt(r.latency_ms.get(k), 3) for k in configs) + " |")
    lines += [
        "",
        "| variant | integer kernels | float compute kernels | Q / DQ left | SQNR vs fp32 | top-1 agreement |",
        "|---|---|---|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        r = v[variant]
        if not r.ok or r.census is None:
            continue
        ints = ", ".join(f"{op} {n}" for op, n in r.census.integer.items()) or "–"
        floats = ", ".join(f"{op} {n}" for op, n in r.census.float_compute.items()) or "–"
        fid = r.fidelity
        agreement = "–" if fid is None or fid.top1_agreement is None else f"{fid.top1_agreement * 100:.2f} %"
        sqnr = "–" if fid is None else ("∞" if variant == "fp32" else _fmt(fid.sqnr_db, 1, " dB"))
        lines.append(
            f"| {variant} | {ints} | {floats} | {r.census.quantize_nodes} / {r.census.dequantize_nodes} | "
            f"{sqnr} | {agreement} |"
        )
    lines += [
        "",
        "| tool run | process wall s | in-process op s | of which | peak RSS MiB | runs |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for variant in VARIANTS:
        r = v[variant]
        if variant == "fp32" or not r.tool:
            continue
        parts = [k for k in ("preprocess_s", "quantize_s", "load_s", "pipeline_s", "save_s") if r.tool_median(k) is not None]
        of_which = ", ".join(f"{k[:-2]} {r.tool_median(k):.2f}" for k in parts)
        lines.append(
            f"| {variant} | {_fmt(r.tool_median('process_s'), 2)} | {_fmt(r.tool_median('op_s'), 2)} | {of_which} | "
            f"{_fmt(r.tool_median('rss_mib'), 0)} | {len(r.tool)} |"
        )
    for variant in ONNXPQ_TARGETS:
        r = v[variant]
        if r.optimize_run is None:
            continue
        same = {True: "output byte-identical to the pipeline-only run", False: "output differs from the pipeline-only run (int8 payoff; see the notes)", None: ""}[r.identical_to_optimize]
        lines.append(
            f"| {variant}: full `onnxpq.optimize` incl. payoff and validation | "
            f"{r.optimize_run.process_s:.2f} | {r.optimize_run.timings.get('op_s', float('nan')):.2f} | {same} | "
            f"{r.optimize_run.max_rss_kib / 1024:.0f} | 1 |"
        )
    lines.append("")
    for variant in ONNXPQ_TARGETS:
        texts = v[variant].pipelines()
        if texts:
            more = f" (the {len(v[variant].tool)} runs used {len(texts)} different pipelines: concurrent edits)" if len(texts) > 1 else ""
            lines.append(f"- {variant} pipeline: `{texts[-1]}`{more}")
    estimated = [variant for variant in VARIANTS if v[variant].optimize_report is not None]
    if estimated:
        lines += [
            "",
            "| onnxpq report | pipeline | bops fp32 → output (per sample) | bops ratio | latency ms (report) | how |",
            "|---|---|---:|---:|---:|---|",
        ]
        for variant in estimated:
            rep = v[variant].optimize_report
            base, opt = rep["baseline"], rep["optimized"]
            lat = opt["latency_ms"]
            ratio = rep["ratios"].get("bops")
            lines.append(
                f"| {variant} | `{rep['pipeline']}` | {base['bops']:.3g} → {opt['bops']:.3g} | {_fmt(ratio, 4)} | "
                f"{_fmt(base['latency_ms']['p50'], 4)} → {_fmt(lat['p50'], 4)}{' (estimated)' if lat['estimated'] else ''} | "
                f"{lat['method']} |"
            )
    lines += ["", "</details>", ""]
    if run.notes:
        lines += [f"- Note: {note}" for note in run.notes] + [""]
    return "\n".join(lines)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        home = Path.home()
        text = str(path)
        return "~" + text[len(str(home)) :] if text.startswith(str(home)) else text


def _model_markers(name: str) -> tuple[str, str]:
    return f"<!-- bench_quantize:model={name}:start -->", f"<!-- bench_quantize:model={name}:end -->"


INTRO = """## Quantization side by side: onnxpq (cpu target) vs onnxruntime.quantization

Written by `tools/bench_quantize.py` (its docstring has the method). Per model: latency
ratios of medians against fp32 (interleaved rounds, onnxruntime CPU EP), quality over the
test set, size on disk, the integer-kernel census of onnxruntime's optimized graph, and the
quantization step's wall time and peak RSS (fresh process under `/usr/bin/time -v`).
`onnxpq-gpu` / `onnxpq-vbit`: their hardware is not here, so they are not timed; their
quality is measured in onnxruntime on the CPU and their cost is the report's bops estimate.
"""


def write_section(benchmarks: Path, blocks: dict[str, str]) -> None:
    """Replace the given model blocks inside this script's section (kept: other models' blocks, other sections)."""
    old = read_section(benchmarks, START_MARKER, END_MARKER)
    replace_section(benchmarks, START_MARKER, END_MARKER, merge_model_blocks(old, INTRO, KNOWN_MODELS, _model_markers, blocks))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", metavar="NAME", choices=KNOWN_MODELS,
                        help=f"models to run (default: all available of {', '.join(KNOWN_MODELS)})")  # fmt: skip
    parser.add_argument("--runs", type=int, default=50, help="interleaved latency rounds per configuration (default 50)")
    parser.add_argument("--calib-samples", type=int, default=128, help="calibration samples for every tool (default 128)")
    parser.add_argument("--batch", type=int, help="second latency batch (default 8 for CNNs, 1 for transformers)")
    parser.add_argument("--tool-rounds", type=int, default=3, help="interleaved rounds of tool runs (default 3)")
    parser.add_argument("--all-variants", action="store_true", help="also run ort-dynamic on CNNs")
    parser.add_argument("--variants", nargs="+", metavar="VARIANT", choices=VARIANTS[1:],
                        help="only these quantized variants (default: all; fp32 always runs)")  # fmt: skip
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep the produced models there")
    parser.add_argument("--benchmarks", type=Path, default=DEFAULT_BENCHMARKS,
                        help=f"Markdown file to update (default {DEFAULT_BENCHMARKS.name})")  # fmt: skip
    # Child mode: one tool run in this process.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for option in ("--model", "--test", "--calib", "--out", "--scratch", "--result", "--report"):
        parser.add_argument(option, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--preprocess", choices=tuple(PREPROCESS_CHOICES), default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.child is None:
        for option in ("runs", "calib_samples", "tool_rounds"):
            if getattr(args, option) < 1:
                parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
        if args.batch is not None and args.batch < 1:
            parser.error(f"--batch must be at least 1, got {args.batch}")
        if not Path("/usr/bin/time").is_file():
            parser.error("/usr/bin/time (GNU time) is required: apt-get install time")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child is not None:
        logging.basicConfig(level=logging.WARNING)
        timings = run_child(args)
        args.result.write_text(json.dumps(timings))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return run_models(
        args, known=KNOWN_MODELS, locate=locate, benchmark=benchmark_model, render=render_model,
        write_section=write_section, has_block=_has_block, prefix="bench_quantize-",
    )


def _has_block(benchmarks: Path, name: str) -> bool:
    """True when BENCHMARKS.md already has a measured block for ``name`` (a skip line does not replace it)."""
    if not benchmarks.exists():
        return False
    text = benchmarks.read_text(encoding="utf-8")
    begin, finish = _model_markers(name)
    i, j = text.find(begin), text.find(finish)
    return i != -1 and j > i and "skipped, missing" not in text[i:j]


if __name__ == "__main__":
    sys.exit(main())
