"""Session tuning: the onnxruntime settings that matter for one model on this machine, measured.

For the target's first execution provider, when it exists here, settings are
tried one factor at a time (coordinate descent from onnxruntime's defaults
with one thread), each factor's candidates timed **interleaved** (A B C A B C
...) after a warm-up, and compared by their medians:

1. ``intra_op_num_threads``: 1, 2, 4, ... up to the cores of this machine;
2. ``graph_optimization_level``: basic, extended, all;
3. ``execution_mode``: sequential, parallel (``inter_op_num_threads`` = the threads);
4. ``session.intra_op.allow_spinning`` (only with more than one thread): "1" (spin), "0" (sleep);
5. MatMulNBits accuracy: for a model with blocked-int4 ``DequantizeLinear -> MatMul``
   the session config ``session.qdq_matmulnbits_accuracy_level`` (onnxruntime
   fuses them into ``MatMulNBits``; "1" computes in float32, "4" quantizes the
   activation to int8 per block); for a model that already has ``MatMulNBits``
   nodes the level is their ``accuracy_level`` *attribute*, which no session
   option changes: those levels are measured on temporary copies and reported
   as a recommendation (a pipeline option), never applied behind the model's back.

A candidate replaces the current best only when its median is at least
``MIN_GAIN`` faster (the simpler, earlier setting wins ties: fewer threads,
onnxruntime's defaults). Candidates that change numerics (accuracy levels)
must keep the outputs of the default setting within ``MIN_SQNR_DB``. The
chosen setting is then timed against the starting point, interleaved, so the
reported speed-up is a measurement of its own.

Time is bounded: ``budget_s`` seconds in all (sessions built, warm-up and
timed runs), split over the factors by their candidate counts; every
candidate gets at least ``MIN_RUNS`` runs. The table of everything measured is
kept (``rows``): the choice is always one of its settings.

Own implementation: onnxruntime has no auto-tuner for session options (its
perf_test tool times one configuration per run).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxpq.validation.fidelity import compare_outputs

__all__ = [
    "MIN_GAIN",
    "MIN_RUNS",
    "MIN_SQNR_DB",
    "SessionSetting",
    "SessionTuning",
    "TuningRow",
    "build_session_options",
    "make_recipe",
    "session_from_recipe",
    "tune_session",
]

logger = logging.getLogger(__name__)

#: A candidate must be this much faster (relative, by median) to replace the current best.
MIN_GAIN = 0.03
#: Timed runs per candidate, at least.
MIN_RUNS = 3
#: Timed runs per candidate, at most.
MAX_RUNS = 200
#: Outputs of a numerics-changing candidate must stay this close (SQNR, dB) to the default setting's.
MIN_SQNR_DB = 30.0
#: Session config key of the DequantizeLinear + MatMul -> MatMulNBits fusion's accuracy level.
QDQ_MATMULNBITS_ACCURACY = "session.qdq_matmulnbits_accuracy_level"
ALLOW_SPINNING = "session.intra_op.allow_spinning"

_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


@dataclass(frozen=True)
class SessionSetting:
    """One combination of session settings."""

    intra_op_threads: int = 1
    graph_optimization: str = "all"
    execution_mode: str = "sequential"
    config_entries: tuple[tuple[str, str], ...] = ()
    #: MatMulNBits nodes' ``accuracy_level`` attribute (None: as in the model). Measured, never applied.
    matmulnbits_accuracy_level: int | None = None

    def label(self) -> str:
        parts = [f"threads={self.intra_op_threads}", f"opt={self.graph_optimization}", f"mode={self.execution_mode}"]
        parts += [f"{k}={v}" for k, v in self.config_entries]
        if self.matmulnbits_accuracy_level is not None:
            parts.append(f"MatMulNBits.accuracy_level={self.matmulnbits_accuracy_level}")
        return " ".join(parts)

    def with_entry(self, key: str, value: str) -> SessionSetting:
        entries = dict(self.config_entries)
        entries[key] = value
        return replace(self, config_entries=tuple(sorted(entries.items())))

    def session_options(self) -> dict[str, Any]:
        """The setting as ``onnxruntime.SessionOptions`` attributes (enum values by name) plus config entries."""
        return {
            "intra_op_num_threads": self.intra_op_threads,
            "inter_op_num_threads": self.intra_op_threads if self.execution_mode == "parallel" else 1,
            "graph_optimization_level": _LEVELS[self.graph_optimization].name,
            "execution_mode": _MODES[self.execution_mode].name,
            "config_entries": dict(self.config_entries),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config_entries"] = dict(self.config_entries)
        return data


@dataclass(frozen=True)
class TuningRow:
    """One measured setting."""

    factor: str
    setting: SessionSetting
    median_ms: float
    p90_ms: float
    runs: int
    chosen: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "setting": self.setting.label(),
            "session_options": self.setting.session_options(),
            "matmulnbits_accuracy_level": self.setting.matmulnbits_accuracy_level,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "runs": self.runs,
            "chosen": self.chosen,
            "note": self.note,
        }


@dataclass
class SessionTuning:
    """What was measured and what was chosen."""

    provider: str
    measured: bool
    best: SessionSetting
    start: SessionSetting
    rows: list[TuningRow] = field(default_factory=list)
    reason: str = ""
    speedup: float | None = None
    start_median_ms: float | None = None
    best_median_ms: float | None = None
    seconds: float = 0.0
    budget_s: float = 0.0
    recommendations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "measured": self.measured,
            "reason": self.reason,
            "method": (
                "coordinate descent from onnxruntime defaults (1 thread); per factor, candidates interleaved after "
                f"a warm-up, medians; a candidate must be {MIN_GAIN:.0%} faster to be chosen"
            ),
            "best": self.best.to_dict(),
            "best_session_options": self.best.session_options(),
            "start": self.start.to_dict(),
            "start_median_ms": self.start_median_ms,
            "best_median_ms": self.best_median_ms,
            "speedup": self.speedup,
            "recommendations": list(self.recommendations),
            "seconds": self.seconds,
            "budget_s": self.budget_s,
            "table": [row.to_dict() for row in self.rows],
        }


def make_recipe(providers: Sequence[str], setting: SessionSetting) -> dict[str, Any]:
    """How to load the model in onnxruntime: providers, their options, session options (plain data, JSON-ready)."""
    return {
        "providers": list(providers),
        "provider_options": [{} for _ in providers],
        "session_options": setting.session_options(),
    }


def build_session_options(session_options: Mapping[str, Any]) -> ort.SessionOptions:
    """``onnxruntime.SessionOptions`` from a recipe's ``session_options`` (enum values by name, config entries)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in session_options.items():
        if key == "config_entries":
            for entry, entry_value in value.items():
                options.add_session_config_entry(str(entry), str(entry_value))
        elif key == "graph_optimization_level":
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        elif key == "execution_mode":
            options.execution_mode = getattr(ort.ExecutionMode, value)
        else:
            setattr(options, key, value)
    return options


def session_from_recipe(model: str | os.PathLike[str], recipe: Mapping[str, Any]) -> ort.InferenceSession:
    """An onnxruntime session built exactly as ``recipe`` says (providers missing here fall back to CPU)."""
    available = set(ort.get_available_providers())
    providers, provider_options = [], []
    for name, opts in zip(recipe["providers"], recipe.get("provider_options") or [{}] * len(recipe["providers"]),
                          strict=True):
        if name in available:
            providers.append(name)
            provider_options.append(dict(opts))
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
        provider_options.append({})
    return ort.InferenceSession(
        str(model), sess_options=build_session_options(recipe.get("session_options", {})), providers=providers,
        provider_options=provider_options,
    )


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class _Clock:
    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return max(0.0, self.budget_s - self.elapsed())


def _time_interleaved(
    sessions: Sequence[ort.InferenceSession], feed: Mapping[str, np.ndarray], budget_s: float
) -> list[list[float]]:
    """Warm every session, then run them round-robin within ``budget_s``; per-session run times in ms."""
    one = []
    for session in sessions:
        session.run(None, dict(feed))
        start = time.perf_counter()
        session.run(None, dict(feed))
        one.append(time.perf_counter() - start)
    per_round = max(sum(one), 1e-6)
    runs = int(min(MAX_RUNS, max(MIN_RUNS, budget_s / per_round)))
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for bucket, session in zip(times, sessions, strict=True):
            start = time.perf_counter()
            session.run(None, dict(feed))
            bucket.append((time.perf_counter() - start) * 1e3)
    return times


def _thread_counts(limit: int) -> list[int]:
    counts, n = [], 1
    while n < limit:
        counts.append(n)
        n *= 2
    counts.append(limit)
    return sorted(set(counts))


def _model_facts(model_path: Path) -> tuple[list[int], bool, bool]:
    """(MatMulNBits accuracy levels present, has blocked DQ -> MatMul, the model is one self-contained file)."""
    proto = onnx.load(str(model_path), load_external_data=False)
    levels, blocked_dq = [], False
    producers = {out: node for node in proto.graph.node for out in node.output}
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
            levels.append(int(level))
        if node.op_type == "MatMul" and len(node.input) > 1:
            producer = producers.get(node.input[1])
            if producer is not None and producer.op_type == "DequantizeLinear" and any(
                a.name == "block_size" and a.i > 0 for a in producer.attribute
            ):
                blocked_dq = True
    return levels, blocked_dq, not external


def _with_accuracy_level(model_path: Path, level: int, folder: Path) -> Path:
    proto = onnx.load(str(model_path))
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            for attr in list(node.attribute):
                if attr.name == "accuracy_level":
                    node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
    path = folder / f"accuracy_level_{level}.onnx"
    onnx.save(proto, str(path))
    return path


def tune_session(
    model: str | os.PathLike[str],
    feed: Mapping[str, np.ndarray],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    budget_s: float = 10.0,
    max_threads: int | None = None,
) -> SessionTuning:
    """Measure the session settings that matter for ``model`` on one inference ``feed``; see the module docstring.

    Args:
        model: the model's path (its external data beside it).
        feed: one inference's inputs, by name.
        providers: the target's providers; tuning runs on the first one, when it exists here.
        budget_s: seconds for the whole tuning, roughly (every candidate still gets ``MIN_RUNS`` runs).
        max_threads: most intra-op threads to try [the cores of this machine].
    """
    model_path = Path(model)
    start = SessionSetting()
    provider = providers[0] if providers else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return SessionTuning(provider, False, start, start, reason=f"{provider} is not available here: not measured")
    clock = _Clock(budget_s)
    used_providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    cores = max(1, max_threads or os.cpu_count() or 1)
    levels, blocked_dq, self_contained = _model_facts(model_path)

    factors: list[tuple[str, Any]] = [
        ("intra_op_threads", lambda best: [replace(best, intra_op_threads=n) for n in _thread_counts(cores)]),
        ("graph_optimization", lambda best: [replace(best, graph_optimization=g) for g in ("all", "extended", "basic")]),
        ("execution_mode", lambda best: [replace(best, execution_mode=m) for m in ("sequential", "parallel")]),
        ("allow_spinning", lambda best: [best.with_entry(ALLOW_SPINNING, v) for v in ("1", "0")]
         if best.intra_op_threads > 1 else []),
    ]
    if blocked_dq:
        factors.append(("qdq_matmulnbits_accuracy_level",
                        lambda best: [best.with_entry(QDQ_MATMULNBITS_ACCURACY, v) for v in ("4", "1")]))
    if levels and self_contained:
        current = max(set(levels), key=levels.count)
        factors.append(("matmulnbits_accuracy_level", lambda best: [
            replace(best, matmulnbits_accuracy_level=lv) for lv in dict.fromkeys((current, 4, 1))]))
    candidates_total = sum(max(1, len(f(start))) for _, f in factors) + 2
    rows: list[TuningRow] = []
    recommendations: list[str] = []
    best = start
    best_outputs: list[np.ndarray] | None = None
    with tempfile.TemporaryDirectory(prefix="onnxpq-tune-") as scratch:
        variants: dict[int | None, Path] = {None: model_path}

        def session_for(setting: SessionSetting) -> ort.InferenceSession:
            level = setting.matmulnbits_accuracy_level
            if level not in variants:
                variants[level] = _with_accuracy_level(model_path, level, Path(scratch))
            recipe = make_recipe(used_providers, setting)
            return session_from_recipe(variants[level], recipe)

        for factor, make in factors:
            candidates = list(dict.fromkeys(make(best)))
            if len(candidates) < 2:
                continue
            share = clock.left() * len(candidates) / max(1, candidates_total)
            candidates_total -= len(candidates)
            sessions = [session_for(c) for c in candidates]
            numerics: dict[int, str] = {}
            if factor.endswith("accuracy_level"):
                reference = best_outputs or [np.asarray(o) for o in sessions[0].run(None, dict(feed))]
                best_outputs = reference
                for index, session in enumerate(sessions):
                    fidelity = compare_outputs(reference, [np.asarray(o) for o in session.run(None, dict(feed))])
                    if fidelity.sqnr_db < MIN_SQNR_DB:
                        numerics[index] = f"outputs off by SQNR {fidelity.sqnr_db:.1f} dB < {MIN_SQNR_DB:.0f}: not eligible"
            times = _time_interleaved(sessions, feed, share)
            medians = [float(np.median(t)) for t in times]
            winner = 0
            for index in range(1, len(candidates)):
                if index in numerics:
                    continue
                if medians[index] <= medians[winner] * (1.0 - MIN_GAIN):
                    winner = index
            for index, (candidate, bucket) in enumerate(zip(candidates, times, strict=True)):
                rows.append(TuningRow(factor, candidate, medians[index], _percentile(bucket, 90), len(bucket),
                                      note=numerics.get(index, "")))
            chosen = candidates[winner]
            if factor == "matmulnbits_accuracy_level":
                if chosen.matmulnbits_accuracy_level != candidates[0].matmulnbits_accuracy_level:
                    recommendations.append(
                        f"MatMulNBits accuracy_level={chosen.matmulnbits_accuracy_level} was "
                        f"{medians[0] / medians[winner]:.2f}x faster here: re-run with "
                        f"matmul-nbits{{accuracy_level={chosen.matmulnbits_accuracy_level}}} (not applied: a node attribute)"
                    )
                chosen = replace(chosen, matmulnbits_accuracy_level=None)
            best = chosen
            logger.info("session tuning: %s -> %s", factor, best.label())
        rows = [replace(r, chosen=r.setting == best) for r in rows]
        tuning = SessionTuning(provider, True, best, start, rows, reason="", budget_s=budget_s,
                               recommendations=recommendations)
        if best != start:
            confirm = _time_interleaved([session_for(start), session_for(best)], feed, max(clock.left(), 0.2))
            tuning.start_median_ms, tuning.best_median_ms = (float(np.median(t)) for t in confirm)
            tuning.speedup = tuning.start_median_ms / tuning.best_median_ms if tuning.best_median_ms else None
        else:
            start_rows = [r.median_ms for r in rows if r.setting == start]
            tuning.start_median_ms = tuning.best_median_ms = start_rows[0] if start_rows else None
            tuning.speedup = 1.0
    tuning.seconds = clock.elapsed()
    if tuning.speedup is not None and not math.isfinite(tuning.speedup):
        tuning.speedup = None
    return tuning
