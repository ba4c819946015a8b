"""The jobs behind the public API: ``optimize`` and ``validate``.

optimize: load (safe) -> parse the pipeline for the target -> run the passes
(verified, with rollback) -> stage the output beside its destination and
check it -> measure baseline and output side by side in onnxruntime ->
evaluate the gate (giving the most harmful quantized nodes back to float
first when an accuracy gate is set, see :mod:`onnxpq.search.fallback`) ->
write the reports and commit the output (the model last). Any error before the commit leaves
nothing behind and the input untouched; a failed gate still writes
everything (exit code 1 in the CLI).

Without ``calibration``, a seeded quarter of ``data`` (at most 256 samples)
calibrates and the rest validates, so no figure is measured on the samples
the ranges were fitted to.

Memory. A model with external data (a large one) is never held in memory
whole: its weights are memory-mapped and released weight by weight; the
tensors the passes make go to a scratch file beside the output
(:class:`onnxpq.io.TensorStore`); the output is written with external data
too, and from staging on the optimized model reads its weights from the
staged file (:meth:`onnxpq.io.StagedModel.map_tensors`), so validation runs
with neither model's weights in memory. ``-vv`` logs the resident memory at
each stage (:func:`onnxpq.core.memory.log_memory`).
"""

from __future__ import annotations

import functools
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from onnxpq.analysis.model_inputs import input_specs
from onnxpq.core.context import PassContext
from onnxpq.core.memory import log_memory, return_freed_memory
from onnxpq.core.manager import Checkpoint, PassManager
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.core.session import IN_MEMORY_LIMIT_BYTES, has_external_data, make_session, run_in_batches
from onnxpq.errors import DataError, OutputError
from onnxpq.io import TensorStore, check_finite_weights, external_files, load_model, stage_model, write_text_atomic
from onnxpq.core.progress import progress_switch
from onnxpq.report.html import render_html
from onnxpq.report.layers import report_layers
from onnxpq.report.schema import build_report, report_json
from onnxpq.search.fallback import FallbackResult, accuracy_drop, excludable, give_back_until_gate
from onnxpq.search.payoff import PayoffResult, give_back_slow_nodes
from onnxpq.targets.profile import Target, load_target
from onnxpq.validation.data import Dataset, load_dataset, synthesized_dataset
from onnxpq.validation.figures import PairFigures, check_measurement_options, latency_feed, measure_pair

__all__ = ["OptimizeResult", "ValidateResult", "optimize", "validate"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Synthesised samples when no data is given.
SYNTHESIZED_SAMPLES = 32


@dataclass
class OptimizeResult:
    """What ``optimize`` produced: the output path, the report, and whether every gate held."""

    output: Path
    report: dict[str, Any]

    @property
    def gate_passed(self) -> bool:
        return bool(self.report["gate"]["passed"])


@dataclass
class ValidateResult:
    """The figures of a model against its reference."""

    report: dict[str, Any]

    @property
    def gate_passed(self) -> bool:
        return bool(self.report["gate"]["passed"])


def _target(target: str | Path | Target) -> Target:
    return target if isinstance(target, Target) else load_target(target)


def _check_outputs(model: Path, *outputs: PathLike | None) -> None:
    """Refuse outputs that are the input model or each other, before any work."""
    seen: dict[Path, str] = {model.resolve(): "the input model"}
    for out in outputs:
        if out is None:
            continue
        resolved = Path(out).resolve()
        if resolved in seen:
            raise OutputError(f"{out}: refusing to write over {seen[resolved]}; choose another path")
        if not resolved.parent.is_dir():
            raise OutputError(f"{out}: the folder '{Path(out).parent}' does not exist")
        seen[resolved] = str(out)


def _dataset(model: Any, data: PathLike | None) -> Dataset:
    if data is None:
        return synthesized_dataset(model, SYNTHESIZED_SAMPLES)
    return load_dataset(data, model)


def _gate(figures: PairFigures, dataset: Dataset, max_accuracy_drop: float | None) -> dict[str, Any]:
    gate: dict[str, Any] = {
        "max_accuracy_drop": max_accuracy_drop, "passed": True, "reasons": [], "measure": None, "given_back": [],
    }
    if max_accuracy_drop is None:
        return gate
    base, opt = figures.baseline.accuracy, figures.optimized.accuracy
    if base is not None and opt is not None:
        drop, gate["measure"] = base - opt, "task accuracy (labels)"
    elif figures.fidelity.top1_agreement is not None:
        drop, gate["measure"] = 1.0 - figures.fidelity.top1_agreement, "1 - top-1 agreement (no labels)"
    else:  # checked before any work in _check_gate_possible
        raise DataError("--max-accuracy-drop needs labels in --data or a classifier-shaped first output")
    gate["accuracy_drop"] = drop
    if drop > max_accuracy_drop:
        gate["passed"] = False
        gate["reasons"].append(f"accuracy drop {drop:.4f} exceeds the allowed {max_accuracy_drop:.4f} ({gate['measure']})")
    return gate


def _check_gate_possible(model: Any, dataset: Dataset, max_accuracy_drop: float | None) -> None:
    if max_accuracy_drop is None:
        return
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise DataError(f"--max-accuracy-drop must be in [0, 1] (a fraction), got {max_accuracy_drop}")
    if dataset.labels is not None:
        return
    first = model.graph.outputs[0]
    shape = first.shape
    classifier = shape is not None and len(shape) >= 2 and isinstance(shape[-1], int) and shape[-1] > 1
    if not classifier:
        raise DataError(
            "--max-accuracy-drop needs labels in --data (an integer 'labels' array) "
            "or a classifier-shaped first output [samples, classes]"
        )


def _fit_payoff(
    model: Any,
    optimized: Any,
    passes: list[OnnxpqPass],
    records: list[Any],
    dataset: Dataset,
    target: Target,
    latency_batch: int,
    threads: int,
    latency_runs: int,
    make_manager: Any,
) -> PayoffResult | None:
    """Give back quantized nodes whose integer kernels make the model slower, measured (None: nothing to do)."""
    quantized = [name for record in records for name in record.details.get("quantized_node_names", [])]
    if not quantized or not excludable(passes):
        return None
    if target.providers[0] not in ort.get_available_providers():
        logger.info("int8 payoff: %s is not available here; nothing measured", target.providers[0])
        return None
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if has_external_data(model) or external_files(model) or weight_bytes > IN_MEMORY_LIMIT_BYTES // 2:
        logger.info("int8 payoff: model too large to time variants in memory; quantized nodes kept as they are")
        return None
    session = make_session(model, providers=target.providers, threads=threads)
    feed, _ = latency_feed(dataset, session.get_inputs(), latency_batch)
    return give_back_slow_nodes(
        model, passes, optimized, records, quantized, feed,
        make_manager=lambda run: make_manager(run, False), providers=target.providers, threads=threads,
        budget_s=0.06 * latency_runs, min_rounds=min(30, latency_runs),  # --latency-runs sets the effort
    )


def _fit_gate(
    model: Any,
    optimized: Any,
    passes: list[OnnxpqPass],
    records: list[Any],
    dataset: Dataset,
    max_drop: float,
    make_manager: Any,
) -> FallbackResult | None:
    """Give the most harmful quantized nodes back to float when the drop exceeds the gate (None: nothing to do)."""
    quantized = [name for record in records for name in record.details.get("quantized_node_names", [])]
    if not quantized or not excludable(passes):
        return None
    if has_external_data(model):
        logger.warning("accuracy gate: the model has external data; nodes are not given back to float automatically")
        return None
    reference = run_in_batches(make_session(model), dataset.inputs)
    drop = accuracy_drop(reference, run_in_batches(make_session(optimized), dataset.inputs), dataset)
    if drop <= max_drop:
        return None
    logger.warning("accuracy drop %.4f exceeds %.4f: giving quantized nodes back to float, most harmful first", drop, max_drop)
    return give_back_until_gate(
        model, passes, list(dict.fromkeys(quantized)), dataset, max_drop,
        make_manager=lambda run: make_manager(run, False),
    )


def _write_reports(report: dict[str, Any], json_path: PathLike | None, html_path: PathLike | None, protect: Path) -> list[Path]:
    """Write the reports asked for; on failure remove the ones already written (one clear error, nothing half-done)."""
    written: list[Path] = []
    try:
        if json_path is not None:
            written.append(write_text_atomic(json_path, report_json(report), protect=(protect,)))
        if html_path is not None:
            written.append(write_text_atomic(html_path, render_html(report), protect=(protect,)))
    except BaseException:
        _remove(written)
        raise
    return written


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _progress_argument(job: Any) -> Any:
    """Run ``job`` with the progress switch (:mod:`onnxpq.core.progress`) off when its ``progress`` argument is False.

    True means automatic: bars on a terminal, never in CI or into a pipe.
    """

    @functools.wraps(job)
    def run(*args: Any, **kwargs: Any) -> Any:
        with progress_switch(None if kwargs.get("progress", True) else False):
            return job(*args, **kwargs)

    return run


@_progress_argument
def optimize(
    model: PathLike,
    output: PathLike,
    *,
    target: str | Path | Target = "cpu",
    pipeline: str | None = None,
    data: PathLike | None = None,
    calibration: PathLike | None = None,
    report: PathLike | None = None,
    html: PathLike | None = None,
    max_accuracy_drop: float | None = None,
    dump_on_failure: PathLike | None = None,
    latency_runs: int = 50,
    latency_batch: int = 1,
    threads: int = 1,
    progress: bool = True,
    layer_errors: bool = True,
    payoff: bool | None = None,
    nonfinite_weights: str = "refuse",
) -> OptimizeResult:
    """Optimize ``model`` for ``target`` and write it to ``output``.

    Args:
        model: input ``.onnx`` path (never modified).
        output: output ``.onnx`` path (not the input).
        target: built-in target name, a TOML path, or a :class:`Target`.
        pipeline: pipeline text; defaults to the target's pipeline.
        data: ``.npz`` with arrays named after the inputs (+ optional ``labels``).
        calibration: ``.npz`` for calibration; defaults to ``data``.
        report, html: where to write the JSON report and the HTML page.
        max_accuracy_drop: gate on the absolute accuracy drop (fraction).
        dump_on_failure: folder for a reproducer when a pass fails.
        latency_runs: timed runs per model (interleaved).
        latency_batch: samples per timed run, for models with a batch axis.
        threads: onnxruntime intra-op threads for latency.
        progress: per-pass status line and progress bars on a terminal (never in CI or into a pipe).
        layer_errors: measure each layer's output error against the float reference for the
            report's ``layers`` table (:mod:`onnxpq.report.layers`; capped in samples, layers and time).
        nonfinite_weights: ``refuse`` (default) or ``warn`` when a weight holds NaN/Inf
            (see :func:`onnxpq.io.check_finite_weights`).
        payoff: measure whether each quantized node pays on the target and give the slow ones
            back to float (:mod:`onnxpq.search.payoff`); default: when the target's latency is
            measured here (its cost model is ``measured`` and its provider is available).

    Raises:
        OnnxpqError: bad input (nothing written); see :mod:`onnxpq.errors`.
    """
    model_path, out_path = Path(model), Path(output)
    check_measurement_options(latency_runs=latency_runs, latency_batch=latency_batch, threads=threads)
    chosen = _target(target)
    pipeline_text = pipeline if pipeline is not None else chosen.pipeline
    passes = parse_pipeline(pipeline_text)
    _check_outputs(model_path, out_path, report, html)
    ir_model = load_model(model_path)
    check_finite_weights(ir_model, nonfinite_weights, source=model_path)
    log_memory("loading the input")
    dataset = _dataset(ir_model, data)
    _check_gate_possible(ir_model, dataset, max_accuracy_drop)
    if calibration is not None:
        calib = load_dataset(calibration, ir_model)
    elif data is not None and dataset.samples >= 8:
        calib, dataset = dataset.split()  # disjoint: figures are never measured on calibration samples
        logger.info("no --calibration: calibrating on %s; validating on the rest", calib.source)
    else:
        calib = dataset

    input_files = external_files(ir_model)
    with contextlib.ExitStack() as scratch:
        # a model with external data is a large one: the tensors the passes make go to a scratch file beside the
        # output (copied into it in the kernel on save), not into memory
        store = scratch.enter_context(TensorStore(out_path.parent)) if input_files else None

        if payoff is None:
            payoff = chosen.cost.model == "measured"
        # the searches below re-run the pipeline with nodes excluded from the quantizing passes only: they resume
        # from the model before the first of those, kept only when a search may run (and not for external-data
        # models: the checkpoint would hold a second set of their pruned/cleaned weights)
        searches = payoff or max_accuracy_drop is not None
        first_quantizing = min(excludable(passes), default=0) if searches and not input_files else 0
        checkpoint: Checkpoint | None = None

        def make_manager(
            run: list[OnnxpqPass] | tuple[OnnxpqPass, ...], show: bool = progress, checkpoint_after: int | None = None
        ) -> PassManager:
            return PassManager(run, check_inputs=dataset.head(4).inputs, progress=show, dump_on_failure=dump_on_failure,
                               checkpoint_after=checkpoint_after, resume=checkpoint)  # fmt: skip

        manager = make_manager(passes, checkpoint_after=first_quantizing)
        fallback: FallbackResult | None = None
        paid: PayoffResult | None = None
        with PassContext(target=chosen, calibration=calib.inputs, tensor_store=store):
            result = manager(ir_model)
            out_model, records = result.model, manager.records
            checkpoint = manager.checkpoint
            if payoff:
                paid = _fit_payoff(
                    ir_model, out_model, passes, records, dataset, chosen, latency_batch, threads, latency_runs, make_manager
                )
                if paid is not None:
                    out_model, records, passes = paid.model, paid.records, paid.passes
            if max_accuracy_drop is not None:
                fallback = _fit_gate(ir_model, out_model, passes, records, dataset, max_accuracy_drop, make_manager)
                if fallback is not None:
                    out_model, records, passes = fallback.model, fallback.records, fallback.passes
        del result
        checkpoint = manager.checkpoint = None  # the searches are done: free the model it holds
        log_memory("the passes")
        protected = (model_path, *input_files)
        # external data in, external data out: the output is then read piecewise (memory maps, validation segment by
        # segment) where a protobuf holding its weights inline would be parsed whole by every later step
        with stage_model(out_model, out_path, protect=protected, external_data=True if input_files else None) as staged:
            if input_files:  # a large model: its new weights are read back from the staged file from here on
                staged.map_tensors(out_model)
                return_freed_memory()
            log_memory("staging the output")
            figures = measure_pair(
                model_path, staged.path, chosen, dataset,
                latency_runs=latency_runs, latency_batch=latency_batch, threads=threads,
            )
            figures.optimized.path = str(out_path)
            log_memory("validation")
            gate = _gate(figures, dataset, max_accuracy_drop)
            if fallback is not None:
                gate["given_back"] = fallback.given_back
                gate["fallback"] = {"harm": fallback.harm, "drops": fallback.drops, "met": fallback.met}
            layers = report_layers(
                ir_model, out_model, passes, dataset,
                harm=fallback.harm if fallback is not None else None, measure_error=layer_errors,
            )
            log_memory("the per-layer table")
            the_report = build_report(
                command="optimize",
                input_path=str(model_path),
                output_path=str(out_path),
                target=chosen,
                pipeline=format_pipeline(passes),
                pipeline_full=format_pipeline(passes, full=True),
                records=records,
                figures=figures,
                dataset=dataset,
                gate=gate,
                layers=layers,
            )
            the_report["data"]["calibration"] = {"source": calib.source, "samples": calib.samples}
            if paid is not None:
                the_report["int8_payoff"] = paid.to_dict(batch=latency_batch, threads=threads, provider=chosen.providers[0])
            # reports before the model: a full disk or a bad report path fails before anything is visible
            reports = _write_reports(the_report, report, html, model_path)
            try:
                staged.commit()
            except BaseException:
                _remove(reports)
                raise
    if not gate["passed"]:
        logger.warning("gate failed: %s", "; ".join(gate["reasons"]))
    return OptimizeResult(out_path, the_report)


def validate(
    model: PathLike,
    reference: PathLike,
    *,
    target: str | Path | Target = "cpu",
    data: PathLike | None = None,
    report: PathLike | None = None,
    html: PathLike | None = None,
    max_accuracy_drop: float | None = None,
    latency_runs: int = 50,
    latency_batch: int = 1,
    threads: int = 1,
    layer_errors: bool = True,
) -> ValidateResult:
    """Measure ``model`` against ``reference`` on ``target`` (fidelity, accuracy, latency, size, cost)."""
    model_path, ref_path = Path(model), Path(reference)
    check_measurement_options(latency_runs=latency_runs, latency_batch=latency_batch, threads=threads)
    chosen = _target(target)
    _check_outputs(model_path, report, html)
    _check_outputs(ref_path, report, html)
    ref_model = load_model(ref_path)
    candidate = load_model(model_path)
    ref_inputs = {s.name for s in input_specs(ref_model)}
    cand_inputs = {s.name for s in input_specs(candidate)}
    if ref_inputs != cand_inputs:
        raise DataError(
            f"{model_path} and {ref_path} have different inputs ({sorted(cand_inputs)} vs {sorted(ref_inputs)})"
        )
    dataset = _dataset(ref_model, data)
    _check_gate_possible(ref_model, dataset, max_accuracy_drop)
    figures = measure_pair(
        ref_path, model_path, chosen, dataset, latency_runs=latency_runs, latency_batch=latency_batch, threads=threads
    )
    gate = _gate(figures, dataset, max_accuracy_drop)
    layers = report_layers(ref_model, candidate, [], dataset, measure_error=layer_errors)
    the_report = build_report(
        command="validate",
        input_path=str(ref_path),
        output_path=str(model_path),
        target=chosen,
        pipeline="",
        pipeline_full="",
        records=[],
        figures=figures,
        dataset=dataset,
        gate=gate,
        layers=layers,
    )
    _write_reports(the_report, report, html, model_path)
    return ValidateResult(the_report)
