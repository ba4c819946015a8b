"""``explore``: per-layer sensitivity → planner → evaluated configurations → Pareto frontier → the chosen model.

Steps (every evaluation is a serialisable :class:`~onnxpq.search.evaluation.Evaluation`
run by an executor — this process, a local pool or Ray — and cached in
``DIR/cache/evaluations.jsonl``, so a second run re-evaluates nothing):

1. clean: the target pipeline's exact prefix runs once (verified); unnamed
   nodes get names (the per-node options need them); ``DIR/cache/clean.onnx``;
2. data: ``--data`` is split as ``optimize`` does (a seeded quarter calibrates,
   the rest validates) unless ``--calibration`` is given; sensitivities are
   measured on the first ``sensitivity_samples`` calibration samples;
3. sensitivity (:mod:`onnxpq.search.sensitivity`) of every layer × candidate;
4. plans (:mod:`onnxpq.search.planner`): the DP trade-off at ``points``
   budgets plus the Lagrangian hull, in the target's cost model
   (:func:`onnxpq.analysis.cost_models.layer_cost`; ``measured``: each layer
   profiled at the shapes of one timed run, ``latency_batch``); with ``budget`` the plan
   for that budget, with ``max_accuracy_drop`` one refinement round between
   the cheapest passing and the most expensive failing plan; and the anchors
   (:func:`onnxpq.search.planner.anchor_plans`): the target's default on every
   layer and its neighbours by measured sensitivity (the noisiest layers back
   to float, the least noisy per cost saved cheaper, the layers whose default
   costs more than float back to float) and each structural candidate on
   every layer, which do not rely on the per-layer costs adding up;
5. evaluation of every plan and of the uniform baselines (float, the target's
   default pipeline, 4-bit weights, 50 % channels) on the validation data:
   task accuracy with labels, else top-1 agreement with float, else SQNR;
   MACs, BOPs and weight bits from the produced model; latency measured on this
   CPU (1 thread, every distinct model interleaved round-robin, medians of the
   times relative to their round, with their 95 % interval; points whose
   models are byte-identical share one timing) when
   the target's cost model is ``measured`` and its provider is here, else
   estimated as BOPs / ``bops_per_second`` and marked so; a planned or
   baseline evaluation keeps its model (``cache/built/``), so nothing is
   built twice;
6. the frontier per cost figure (:mod:`onnxpq.search.frontier`) over the
   planned configurations, compared with every baseline strictly and within
   the latency measurement's tolerance (``latency_noise``); the rank
   correlation of the planner's predicted cost with the primary cost
   (``planner.cost_agreement``); the chosen configuration: the cheapest (primary
   cost) within ``max_accuracy_drop`` (default 0.01 when neither is given), or
   the most accurate within ``budget`` (a fraction of the float model's
   primary cost);
7. outputs: ``frontier.json`` (schema ``onnxpq.frontier/1``), ``report.html``,
   ``models/<id>.onnx`` for the frontier of the primary cost, ``best.onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxpq.analysis.cost_models import LayerChoice, layer_cost, layer_facts
from onnxpq.analysis.node_latency import spearman
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.core.session import make_session, run_in_batches
from onnxpq.errors import DataError, OnnxpqError, OutputError
from onnxpq.io import load_model, save_model, write_text_atomic
from onnxpq.report.schema import environment
from onnxpq.search.configuration import FLOAT_SETTING, LayerSetting, TargetPasses
from onnxpq.search.evaluation import REFERENCE_PREFIX, Evaluation, ResultStore, file_digest, run_evaluations
from onnxpq.search.executors import make_executor
from onnxpq.search.frontier import median_interval, pareto_mask, versus_baseline
from onnxpq.search.planner import Plan, Tradeoff, anchor_plans, configuration_cost, layer_options, sweep_plans
from onnxpq.search.sensitivity import LayerSpace, additivity, measure_sensitivity
from onnxpq.targets.profile import Target, load_target
from onnxpq.validation.data import Dataset, load_dataset, synthesized_dataset
from onnxpq.validation.figures import check_measurement_options

__all__ = ["ExploreResult", "explore", "SCHEMA", "COST_FIGURES"]

logger = logging.getLogger(__name__)

SCHEMA = "onnxpq.frontier/1"
#: Cost figures every point carries (lower is better); ``latency_ms`` is measured or estimated.
COST_FIGURES = ("latency_ms", "bops", "macs", "weight_bits")
PathLike = str | os.PathLike[str]
Progress = Callable[[str, int, int], None]


@dataclass
class ExploreResult:
    """What ``explore`` wrote and chose."""

    out_dir: Path
    document: dict[str, Any]

    @property
    def best(self) -> dict[str, Any] | None:
        chosen = self.document["chosen"]
        return None if chosen is None else next(p for p in self.document["points"] if p["id"] == chosen)

    @property
    def gate_passed(self) -> bool:
        return bool(self.document["gate"]["passed"])


def _arrays_digest(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    for name in sorted(dataset.inputs):
        array = np.ascontiguousarray(dataset.inputs[name])
        digest.update(f"{name}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    if dataset.labels is not None:
        digest.update(np.ascontiguousarray(dataset.labels).tobytes())
    return digest.hexdigest()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _name_nodes(model: ir.Model) -> int:
    """Give unnamed main-graph nodes the name ``<op_type>_<index>`` (unique); how many were named."""
    taken = {n.name for n in model.graph if n.name}
    count = 0
    for index, node in enumerate(model.graph):
        if not node.name:
            name, k = f"{node.op_type}_{index}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{index}_{k}"
            node.name = name
            taken.add(name)
            count += 1
    return count


def _quality(result: dict[str, Any]) -> tuple[float | None, str]:
    if result.get("accuracy") is not None:
        return result["accuracy"], "accuracy"
    if result.get("top1_agreement") is not None:
        return result["top1_agreement"], "top1_agreement"
    return result.get("sqnr_db"), "sqnr_db"


def _interleaved_latency(models: dict[str, ir.Model], feed: dict[str, np.ndarray], runs: int) -> dict[str, list[float]]:
    """Every model's ms per run, 1 thread, round-robin over the models ``runs`` times after a warm-up."""
    sessions = {key: make_session(model, threads=1) for key, model in models.items()}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(runs):
        for key, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def _latency_feed(dataset: Dataset, model: ir.Model, batch: int) -> dict[str, np.ndarray]:
    """One timed run's feed: ``batch`` samples on a batch axis (one sample for per-sample data)."""
    session = make_session(model)
    feed = {}
    for arg in session.get_inputs():
        array = dataset.inputs[arg.name]
        if array.ndim == len(arg.shape) + 1:
            feed[arg.name] = array[0]
        else:
            reps = -(-batch // len(array))
            feed[arg.name] = np.concatenate([array] * reps)[:batch] if reps > 1 else array[:batch]
    return feed


class _Explorer:
    """State of one explore run (paths, data, target, executor)."""

    def __init__(self, model_path: Path, out_dir: Path, target: Target, executor: Any, progress: Progress | None) -> None:
        self.model_path, self.out_dir, self.target = model_path, out_dir, target
        self.cache = out_dir / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.progress = progress
        self.store = ResultStore(self.cache / "evaluations.jsonl")
        self.target_ref = target.source.split("'")[1] if target.source.endswith("(built-in)") else target.source

    def stage(self, name: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        report = self.progress
        return lambda done, total: report(name, done, total)

    def task(self, pipeline: str, *, data: str = "eval", model: Path | None = None, keep: bool = False) -> Evaluation:
        """The evaluation of ``pipeline`` on ``model`` (the cleaned one); ``keep``: the produced model is kept."""
        model = model or self.clean_path
        digest = self.clean_digest if model == self.clean_path else file_digest(model)
        task = Evaluation(
            model=str(model), pipeline=pipeline, data=str(self.cache / f"{data}.npz"),
            reference=str(self.cache / f"{data}_reference.npz"), calibration=str(self.cache / "calib.npz"),
            target=self.target_ref, digests=(digest, self.digests[data], self.digests["calib"], self.target.to_toml()),
        )
        if keep and model == self.clean_path and pipeline and getattr(self.executor, "name", "") in ("inline", "local"):
            task = replace(task, save_to=str(self.built_path(pipeline)))
        return task

    def built_path(self, lossy: str) -> Path:
        """Where the model of ``lossy`` (run on the cleaned model) is kept: named by the content hash of its evaluation."""
        folder = self.cache / "built"
        folder.mkdir(exist_ok=True)
        return folder / f"{self.task(lossy).key[:32]}.onnx"


def _prepare(ex: _Explorer, ir_model: ir.Model, data: PathLike | None, calibration: PathLike | None,
             sensitivity_samples: int, calibration_samples: int | None) -> None:
    dataset = synthesized_dataset(ir_model, 64) if data is None else load_dataset(data, ir_model)
    if calibration is not None:
        calib = load_dataset(calibration, ir_model)
    elif data is not None and dataset.samples >= 8:
        calib, dataset = dataset.split()
    else:
        calib = dataset
    if calibration_samples is not None:
        calib = calib.head(calibration_samples)
    sens = calib.head(sensitivity_samples)
    ex.has_labels = dataset.labels is not None
    ex.eval_samples, ex.calib_samples, ex.sens_samples = dataset.samples, calib.samples, sens.samples
    passes = parse_pipeline(ex.target.pipeline)
    cut = next((i for i, p in enumerate(passes) if not p.exact), len(passes))
    manager = PassManager(passes[:cut], check_inputs=dataset.head(4).inputs, progress=False)
    with PassContext(target=ex.target, calibration=calib.inputs):
        clean = manager(ir_model).model if cut else ir_model.clone()
    named = _name_nodes(clean)
    if named:
        logger.warning("%d unnamed node(s) were named in the cleaned model; pipelines name them so", named)
    ex.clean_path = ex.cache / "clean.onnx"
    save_model(clean, ex.clean_path)
    ex.clean_digest = file_digest(ex.clean_path)
    ex.clean = load_model(ex.clean_path, check=False)
    ex.digests = {}
    session = make_session(ex.clean)
    for name, ds in (("eval", dataset), ("calib", calib), ("sens", sens)):
        arrays = dict(ds.inputs)
        if ds.labels is not None:
            arrays["labels"] = ds.labels
        _write_npz(ex.cache / f"{name}.npz", arrays)
        ex.digests[name] = _arrays_digest(ds)
        if name != "calib":
            outputs = run_in_batches(session, ds.inputs)
            _write_npz(ex.cache / f"{name}_reference.npz", {f"{REFERENCE_PREFIX}{i}": o for i, o in enumerate(outputs)})
    ex.eval_data = dataset


def _planner_costs(ex: _Explorer, space: LayerSpace, cost_model: str,
                   latency_batch: int) -> tuple[Callable[[str, LayerSetting], float], str]:
    """The planner's per-layer cost; ``measured`` prices every layer at the shapes of one timed run (``latency_batch``).

    A layer's kernel time does not scale with the batch alike in int8 and float
    (per-call overheads weigh less at a larger batch), so pricing at batch 1 a
    model that is timed at batch 64 misranks configurations.
    """
    used = cost_model
    if cost_model == "measured" and ex.target.providers[0] not in ort.get_available_providers():
        logger.warning("planner: %s is not available here to profile layers; planning on bops", ex.target.providers[0])
        used = "bops"
    facts = space.facts
    if used == "measured":
        feed = _latency_feed(ex.eval_data, ex.clean, latency_batch)
        facts = layer_facts(ex.clean, {name: list(array.shape) for name, array in feed.items()})
    memo: dict[tuple[str, LayerSetting], float] = {}

    def cost_of(layer: str, setting: LayerSetting) -> float:
        key = (layer, setting)
        if key not in memo:
            choice = LayerChoice(setting.weight_bits, setting.activation_bits, setting.density, 1.0, setting.n_m)
            memo[key] = layer_cost(facts.get(layer, space.facts[layer]), choice, used, ex.target)
        return memo[key]

    return cost_of, used


def _baselines(ex: _Explorer, passes: TargetPasses) -> dict[str, str]:
    lossy = parse_pipeline(ex.target.pipeline)[len(passes.prefix):]
    weights = passes.weights[0] if passes.weights else parse_pipeline("quantize-weights")[0]
    return {
        "float": "",
        "target-default": format_pipeline(lossy) if lossy else "",
        "uniform-w4": format_pipeline([type(weights)(**{**weights.options(), "bits": 4, "bits_per_node": ()})]),
        "uniform-prune50": "prune-channels{ratio=0.5}",
    }


def explore(
    model: PathLike,
    out_dir: PathLike,
    *,
    target: str | Path | Target = "cpu",
    data: PathLike | None = None,
    calibration: PathLike | None = None,
    max_accuracy_drop: float | None = None,
    budget: float | None = None,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    points: int = 10,
    channel_ratios: tuple[float, ...] = (0.25, 0.5),
    sparsities: tuple[float, ...] = (0.5,),
    weight_method: str | None = None,
    weight_bits: tuple[int, ...] | None = None,
    sensitivity_samples: int = 64,
    calibration_samples: int | None = None,
    latency_runs: int = 30,
    latency_batch: int = 1,
    extra_baselines: dict[str, PathLike] | None = None,
    additivity_check: int = 0,
    progress: Progress | None = None,
) -> ExploreResult:
    """Search per-layer prune/quantize settings for ``model`` on ``target``; see the module docstring.

    Args:
        model: input ``.onnx`` (never modified).
        out_dir: output folder (created; a second run resumes from its cache).
        max_accuracy_drop: choose the cheapest configuration within this absolute drop (fraction).
        budget: choose the most accurate configuration within this fraction of the float model's cost
            (the target's cost model); exclusive with ``max_accuracy_drop``.
        executor, workers, address: where evaluations run (``local`` pool of ``workers``, or ``ray`` at ``address``).
        points: budgets the planner sweeps.
        channel_ratios, sparsities: candidate channel-pruning ratios and unstructured sparsities.
        weight_method: ``quantize-weights`` method (``rtn``/``gptq``) instead of the target's.
        weight_bits: a subset of the target's weight widths to consider (None: all).
        sensitivity_samples: calibration samples the sensitivities are measured on.
        calibration_samples: use at most this many calibration samples (None: all).
        latency_runs: interleaved timed runs per model when latency is measured.
        latency_batch: samples per timed run (latency_ms is per run of this batch).
        extra_baselines: name → a model file to show as a baseline (e.g. another tool's output).
        additivity_check: also evaluate this many random configurations for the additivity check.
        progress: ``progress(stage, done, total)`` after every evaluation.

    Raises:
        OnnxpqError: bad input (nothing written).
    """
    model_path, out = Path(model), Path(out_dir)
    check_measurement_options(latency_runs=latency_runs, latency_batch=latency_batch)
    chosen_target = target if isinstance(target, Target) else load_target(target)
    if max_accuracy_drop is not None and budget is not None:
        raise OnnxpqError("give --max-accuracy-drop or --budget, not both")
    if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
        raise DataError(f"--max-accuracy-drop must be in [0, 1] (a fraction), got {max_accuracy_drop}")
    if budget is not None and not budget > 0.0:
        raise OnnxpqError(f"--budget must be a positive fraction of the float model's cost, got {budget}")
    if points < 2:
        raise OnnxpqError(f"--points must be at least 2, got {points}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if model_path.resolve().parent == out.resolve():
        raise OutputError(f"{out}: is the input model's folder; choose another output folder")
    if max_accuracy_drop is None and budget is None:
        max_accuracy_drop = 0.01
    ir_model = load_model(model_path)
    run_executor = make_executor(executor, workers=workers, address=address)
    ex = _Explorer(model_path, out, chosen_target, run_executor, progress)
    started = time.perf_counter()
    _prepare(ex, ir_model, data, calibration, sensitivity_samples, calibration_samples)

    facts = layer_facts(ex.clean)
    space = LayerSpace.build(ex.clean, facts)
    if not space.layers:
        raise OnnxpqError(f"{model_path}: no Conv/Gemm/MatMul layer with a constant weight to plan for")
    passes = TargetPasses(chosen_target, space.layers, weight_method=weight_method, weight_bits=weight_bits,
                          group_producers=space.owner_producers)
    primary = "latency_ms" if chosen_target.cost.model == "measured" else chosen_target.cost.model
    cost_of, planner_cost = _planner_costs(ex, space, chosen_target.cost.model, latency_batch)

    sens_task = lambda text: ex.task(text, data="sens")  # noqa: E731
    sensitivity = measure_sensitivity(
        passes, space, sens_task, run_executor, ex.store,
        channel_ratios=channel_ratios, sparsities=sparsities, progress=ex.stage("sensitivity"),
    )
    reference = {layer: LayerSetting(quant=passes.reference_quant()) for layer in space.layers}
    options = layer_options(space, sensitivity, cost_of, reference)
    plans = sweep_plans(options, points) + anchor_plans(options, reference)
    curve = Tradeoff(options)
    float_pred = configuration_cost(space, {}, {}, cost_of)
    if budget is not None:
        targeted = curve.plan_for_budget(budget * float_pred)
        if targeted is not None:
            plans.append(targeted)
    plans = _dedupe(plans)

    baselines = _baselines(ex, passes)
    points_out: dict[str, dict[str, Any]] = {}
    _evaluate_plans(ex, passes, space, plans, points_out, cost_of)
    baseline_tasks = {f"b-{name}": ex.task(text, keep=True) for name, text in baselines.items()}
    for name, path in (extra_baselines or {}).items():
        baseline_tasks[f"b-{name}"] = ex.task("", model=Path(path))
    results = run_evaluations(list(baseline_tasks.values()), run_executor, ex.store, ex.stage("baselines"))
    for (key, task), result in zip(baseline_tasks.items(), results, strict=True):
        points_out[key] = _point(key, "baseline", task.pipeline, passes, result, None)
        if task.model != str(ex.clean_path):  # another tool's model, as it is: no pipeline of ours ran on it
            points_out[key]["model"], points_out[key]["pipeline"] = task.model, task.pipeline
    float_quality = points_out["b-float"]["quality"]

    if max_accuracy_drop is not None:
        extra = _refine(curve, [p for p in points_out.values() if p["kind"] == "planned"], float_quality, max_accuracy_drop)
        _evaluate_plans(ex, passes, space, extra, points_out, cost_of)

    if additivity_check:
        rng = np.random.default_rng(0)
        randoms = []
        for _ in range(additivity_check):
            picks = {layer: opts[int(rng.integers(len(opts)))] for layer, opts in options.items()}
            randoms.append(Plan({k: o.setting for k, o in picks.items()}, sum(o.error for o in picks.values()),
                                sum(o.cost for o in picks.values()), "random", {k: o.keep for k, o in picks.items() if o.keep < 1}))
        _evaluate_plans(ex, passes, space, randoms, points_out, cost_of, kind="random")

    latency_measured = chosen_target.cost.model == "measured" and chosen_target.providers[0] in ort.get_available_providers()
    latency_noise = _latencies(ex, passes, points_out, latency_measured, latency_runs, latency_batch)
    planned = [p for p in points_out.values() if p["kind"] == "planned"]
    frontiers = {}
    for figure in COST_FIGURES:
        mask = pareto_mask([p["costs"][figure] for p in planned], [p["quality"] for p in planned])
        for p, on in zip(planned, mask, strict=True):
            p["on_frontier"][figure] = on
        frontier_points = [(p["costs"][figure], p["quality"]) for p in planned if p["on_frontier"][figure]]
        tolerance = latency_noise["relative_tolerance"] if figure == "latency_ms" else 0.0
        frontiers[figure] = {
            key: versus_baseline(frontier_points, (b["costs"][figure], b["quality"]), tolerance=tolerance)
            for key, b in points_out.items() if b["kind"] == "baseline" and key != "b-float"
        }
    for p in points_out.values():
        p["drop"] = None if p["quality"] is None or float_quality is None else float_quality - p["quality"]

    chosen, gate = _choose(planned, primary, float_quality, points_out["b-float"], max_accuracy_drop, budget)
    _write_models(ex, passes, points_out, chosen, primary)
    predicted = [p["predicted_error"] for p in points_out.values() if p["kind"] in ("planned", "random")]
    measured = [p["noise"] for p in points_out.values() if p["kind"] in ("planned", "random")]
    document = {
        "schema": SCHEMA,
        "model": str(model_path),
        "target": chosen_target.to_dict(),
        "pipeline_prefix": passes.prefix_text,
        "quality_measure": points_out["b-float"]["quality_measure"],
        "primary_cost": primary,
        "latency": "measured" if latency_measured else "estimated",
        "latency_batch": latency_batch,
        "planner": {"cost_model": planner_cost, "cost_batch": latency_batch if planner_cost == "measured" else 1,
                    "points": points, "channel_ratios": list(channel_ratios),
                    "sparsities": list(sparsities), "weight_method": weight_method,
                    "sensitivity_evaluations": sum(len(v) for v in sensitivity.entries.values()),
                    "candidates": passes.quant_choices(),
                    "anchors": sum(1 for p in planned if (p["how"] or "").startswith("anchor")),
                    "cost_agreement": _cost_agreement(planned, primary)},
        "latency_noise": latency_noise,
        "data": {"eval_samples": ex.eval_samples, "calibration_samples": ex.calib_samples,
                 "sensitivity_samples": ex.sens_samples, "labels": ex.has_labels},
        "layers": [{"name": layer, "op_type": space.facts[layer].op_type, "macs": space.facts[layer].macs,
                    "params": space.facts[layer].params,
                    "channel_group": list(space.owner_group.get(layer, ())),
                    "channel_producers": list(space.owner_producers.get(layer, ()))} for layer in space.layers],
        "sensitivity": sensitivity.to_dict(),
        "additivity": additivity(predicted, measured),
        "points": sorted(points_out.values(), key=lambda p: (p["kind"] != "baseline", p["id"])),
        "baseline_comparison": frontiers,
        "chosen": chosen,
        "gate": gate,
        "seconds": time.perf_counter() - started,
        "evaluations_cached": len(ex.store),
        "environment": environment(),
    }
    write_text_atomic(out / "frontier.json", json.dumps(document, indent=1, default=_plain) + "\n")
    from onnxpq.report.pareto import render_explore_html

    write_text_atomic(out / "report.html", render_explore_html(document))
    return ExploreResult(out, document)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _cost_agreement(planned: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    """How the planner's predicted cost ranks the planned points against their ``primary`` cost (Spearman)."""
    pairs = [(p["predicted_cost"], p["costs"][primary]) for p in planned
             if p["predicted_cost"] is not None and p["costs"][primary] is not None]
    if len(pairs) < 3:
        return {"points": len(pairs), "spearman": None, "ratio_median": None}
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    return {"points": len(pairs), "spearman": None if math.isnan(rho) else rho,
            "ratio_median": float(np.median([a / b for a, b in pairs if b]))}


def _dedupe(plans: list[Plan]) -> list[Plan]:
    seen, out = set(), []
    for plan in plans:
        if plan.key not in seen:
            seen.add(plan.key)
            out.append(plan)
    return out


def _point(key: str, kind: str, lossy: str, passes: TargetPasses, result: dict[str, Any], plan: Plan | None) -> dict[str, Any]:
    quality, measure = _quality(result)
    point: dict[str, Any] = {
        "id": key,
        "kind": kind,
        "pipeline": ",".join(t for t in (passes.prefix_text, lossy) if t),
        "quality": quality,
        "quality_measure": measure,
        "accuracy": result.get("accuracy"),
        "top1_agreement": result.get("top1_agreement"),
        "sqnr_db": result.get("sqnr_db"),
        "noise": result.get("noise"),
        "costs": {"bops": result["bops"], "macs": result["macs"], "weight_bits": result["weight_bits"], "latency_ms": None},
        "on_frontier": {figure: False for figure in COST_FIGURES},
        "layers": None,
        "predicted_error": None,
        "predicted_cost": None,
        "how": None,
        "model": None,
    }
    if plan is not None:
        point["layers"] = {layer: plan.settings.get(layer, FLOAT_SETTING).label() for layer in passes.layers}
        point["predicted_error"] = plan.predicted_error
        point["how"] = plan.how
    return point


def _evaluate_plans(ex: _Explorer, passes: TargetPasses, space: LayerSpace, plans: list[Plan],
                   points_out: dict[str, dict[str, Any]], cost_of: Callable[[str, LayerSetting], float],
                   kind: str = "planned") -> None:
    """Evaluate ``plans`` (skipping configurations already among the points) and add them as points."""
    known = {p["pipeline"] for p in points_out.values() if p["kind"] in ("planned", "random")}
    todo = []
    for plan in plans:
        lossy = passes.lossy_text(plan.settings)
        full = ",".join(t for t in (passes.prefix_text, lossy) if t)
        if full in known:
            continue
        known.add(full)
        todo.append((plan, lossy))
    results = run_evaluations([ex.task(lossy, keep=kind == "planned") for _, lossy in todo], ex.executor, ex.store,
                              ex.stage(kind))
    count = sum(1 for p in points_out.values() if p["kind"] == kind)
    prefix = "p" if kind == "planned" else "r"
    for index, ((plan, lossy), result) in enumerate(zip(todo, results, strict=True)):
        key = f"{prefix}{count + index:02d}"
        point = _point(key, kind, lossy, passes, result, plan)
        point["predicted_cost"] = configuration_cost(space, plan.settings, plan.keeps, cost_of)
        points_out[key] = point


def _refine(curve: Tradeoff, planned: list[dict[str, Any]], float_quality: float | None, max_drop: float) -> list[Plan]:
    """Plans between the cheapest passing and the dearest cheaper failing configuration (predicted cost)."""
    if float_quality is None:
        return []
    passing = [p for p in planned if p["quality"] is not None and float_quality - p["quality"] <= max_drop]
    if not passing:
        return []
    cheapest = min(passing, key=lambda p: p["predicted_cost"])
    cheaper = [p for p in planned if p["predicted_cost"] < cheapest["predicted_cost"]]
    low = max((p["predicted_cost"] for p in cheaper), default=curve.cost_range()[0])
    plans = [curve.plan_for_budget(b) for b in np.linspace(low, cheapest["predicted_cost"], 5)[1:-1]]
    return [p for p in plans if p is not None]


def _latencies(ex: _Explorer, passes: TargetPasses, points: dict[str, dict[str, Any]], measured: bool, runs: int,
               batch: int) -> dict[str, Any]:
    """Every planned and baseline point's ``latency_ms``; what the measurement's noise allows (``latency_noise``).

    Measured: the distinct models (points whose model files have the same bytes —
    the same pipeline text, the same file, or different pipelines making the same
    model — are one model, timed once and sharing the figure) are timed
    interleaved, ``runs`` rounds. A round's times share the machine's drift, so
    each time ``t_{m,i}`` is divided by its round's geometric mean ``g_i`` over
    the models; a model's latency is ``median_i(t_{m,i} / g_i) · median_i(g_i)``
    with the 95 % interval of that median
    (:func:`~onnxpq.search.frontier.median_interval`), scaled alike (the raw
    median is kept beside it). The relative tolerance of the comparison with
    baselines is the median over the models of their interval's relative
    half-width. Random (additivity-check) points are not timed. Estimated:
    BOPs / ``bops_per_second``, tolerance 0.
    """
    bps = ex.target.cost.bops_per_second
    if not measured:
        for p in points.values():
            p["costs"]["latency_ms"] = p["costs"]["bops"] * batch / bps * 1e3
            p["latency_estimated"] = True
        return {"method": "estimated: bops / bops_per_second", "relative_tolerance": 0.0}
    groups: dict[str, list[str]] = {}
    for key, p in points.items():
        if p["kind"] == "random":
            p["latency_estimated"] = None
            continue
        groups.setdefault(f"file:{p['model']}" if p.get("model") else f"pipeline:{p['pipeline']}", []).append(key)
    models: dict[str, ir.Model] = {}
    merged: dict[str, list[str]] = {}
    for keys in groups.values():
        p = points[keys[0]]
        model = load_model(p["model"], check=False) if p.get("model") else _built(ex, p["pipeline"], passes)
        # different pipelines can make the same model (a per-node list naming every group at one ratio
        # is that uniform ratio): one model, one timing, so that noise cannot tell it from itself
        identity = _model_identity(ex, p, passes)
        models.setdefault(identity, model)
        merged.setdefault(identity, []).extend(keys)
    groups = merged
    feed = _latency_feed(ex.eval_data, ex.clean, batch)
    logger.info("timing %d distinct models (%d points), %d interleaved runs each (1 thread)",
                len(models), sum(len(k) for k in groups.values()), runs)
    times = _interleaved_latency(models, feed, runs)
    # the machine's drift (other processes, clocks) hits every model of a round alike: each time is divided by
    # its round's geometric mean, and the median of those ratios scaled back by the median round
    rounds = np.exp(np.mean(np.log(np.maximum(np.array(list(times.values())), 1e-9)), axis=0))
    scale = float(np.median(rounds))
    widths = []
    for identity, samples in times.items():
        low, median, high = (v * scale for v in median_interval(np.asarray(samples) / rounds))
        widths.append((high - low) / 2.0 / median if median > 0 else 0.0)
        for key in groups[identity]:
            points[key]["costs"]["latency_ms"] = median
            points[key]["latency_interval_ms"] = [low, high]
            points[key]["latency_raw_median_ms"] = float(np.median(samples))
            points[key]["latency_estimated"] = False
            points[key]["latency_shared_with"] = sorted(k for k in groups[identity] if k != key)
    return {
        "method": ("measured: 1 thread, every distinct model once per round, round-robin; a model's latency is the "
                   "median of its times divided by their round's geometric mean over the models, times the median "
                   "round (the drift common to a round cancels); its 95 % order-statistic interval likewise; "
                   "tolerance = median over the models of that interval's relative half-width"),
        "rounds": runs,
        "models": len(models),
        "relative_tolerance": float(np.median(widths)) if widths else 0.0,
        "relative_half_width_p90": float(np.percentile(widths, 90)) if widths else 0.0,
    }


def _model_identity(ex: _Explorer, point: dict[str, Any], passes: TargetPasses) -> str:
    """The sha256 of a point's model file (its kept build, or its own file); ``clean`` for the cleaned model.

    Saving is deterministic, so equal bytes are an equal model. A model saved with
    external data names its data file after its own path, so two copies of a large
    model stay two identities (timed twice): conservative, never a false merge.
    """
    if point.get("model"):
        path = Path(point["model"])
    else:
        lossy = _lossy_of(point["pipeline"], passes)
        if not lossy:
            return "clean"
        path = ex.built_path(lossy)
    return file_digest(path)


def _lossy_of(full_pipeline: str, passes: TargetPasses) -> str:
    prefix = passes.prefix_text
    return full_pipeline[len(prefix):].lstrip(",") if prefix and full_pipeline.startswith(prefix) else full_pipeline


def _built(ex: _Explorer, full_pipeline: str, passes: TargetPasses) -> ir.Model:
    """The model of a point: the one its evaluation kept, else built now (and kept)."""
    lossy = _lossy_of(full_pipeline, passes)
    if not lossy:
        return ex.clean
    path = ex.built_path(lossy)
    if path.is_file():
        return load_model(path, check=False)
    model = _build(ex, full_pipeline, passes)
    save_model(model, path)
    return model


def _build(ex: _Explorer, full_pipeline: str, passes: TargetPasses) -> ir.Model:
    """The model of a point: its lossy passes on the cleaned model (equal to its full pipeline on the input)."""
    lossy = _lossy_of(full_pipeline, passes)
    if not lossy:
        return ex.clean
    calib = load_dataset(ex.cache / "calib.npz", ex.clean)
    manager = PassManager(parse_pipeline(lossy), check_numerics=False, progress=False)
    with PassContext(target=ex.target, calibration=calib.inputs):
        return manager(ex.clean).model


def _choose(planned: list[dict[str, Any]], primary: str, float_quality: float | None, float_point: dict[str, Any],
            max_drop: float | None, budget: float | None) -> tuple[str | None, dict[str, Any]]:
    gate: dict[str, Any] = {"max_accuracy_drop": max_drop, "budget": budget, "passed": False, "reason": None}
    known = [p for p in planned if p["quality"] is not None and p["costs"][primary] is not None]
    if not known:
        gate["reason"] = "no configuration could be evaluated"
        return None, gate
    if budget is not None:
        limit = budget * float_point["costs"][primary]
        gate["budget_cost"] = limit
        within = [p for p in known if p["costs"][primary] <= limit]
        if within:
            best = max(within, key=lambda p: (p["quality"], -p["costs"][primary]))
            gate["passed"] = True
            return best["id"], gate
        gate["reason"] = f"no configuration costs at most {budget:.3g} of the float model ({primary})"
        return min(known, key=lambda p: p["costs"][primary])["id"], gate
    ok = [p for p in known if float_quality is not None and max_drop is not None and float_quality - p["quality"] <= max_drop]
    if ok:
        best = min(ok, key=lambda p: (p["costs"][primary], -p["quality"]))
        gate["passed"] = True
        return best["id"], gate
    gate["reason"] = f"no configuration is within an accuracy drop of {max_drop:.4f}"
    return max(known, key=lambda p: p["quality"])["id"], gate


def _write_models(ex: _Explorer, passes: TargetPasses, points: dict[str, dict[str, Any]], chosen: str | None, primary: str) -> None:
    folder = ex.out_dir / "models"
    folder.mkdir(exist_ok=True)
    for key, p in points.items():
        if p["kind"] == "planned" and p["on_frontier"][primary]:
            path = folder / f"{key}.onnx"
            save_model(_built(ex, p["pipeline"], passes), path)
            p["model"] = str(path)
    if chosen is not None:
        save_model(_built(ex, points[chosen]["pipeline"], passes), ex.out_dir / "best.onnx")
