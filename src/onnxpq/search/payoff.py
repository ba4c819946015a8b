"""Keeping int8 only where it pays: give quantized nodes back to float when that makes the model faster.

int8 does not pay everywhere on a CPU. A QLinearConv over one input channel
(3×3 kernel: 9 MACs per output element) costs more than the float Conv it
replaces, because the quantize/requantize work per element does not shrink
with the arithmetic; a lone QLinearAdd between float neighbours adds a
Q and a DQ. onnxruntime.quantization quantizes them anyway. onnxpq measures,
on the target's own execution provider, at the deployment's batch and
thread count, and keeps the faster choice:

1. candidates: the nodes the lossy passes quantized (their records'
   ``quantized_node_names``), cheapest first by float MACs per inference —
   the nodes whose integer kernel has the least arithmetic to win back its
   overhead — at most ``max_candidates`` of them;
2. one round: build the model with each remaining candidate given back to
   float (all lossy passes' ``exclude_nodes``), and time all of them, the
   current model and the float reference *interleaved* (A B C … A B C …),
   so that machine noise hits every variant alike; a variant's speed is the
   median of its per-round ratios ``t_variant / t_current``;
3. accept the best variant when that ratio is below ``1 − margin``; repeat
   from it with the rest, for at most ``max_rounds`` rounds or until no
   variant is faster.

The outcome (nodes given back, every ratio measured, the int8-vs-float ratio
before and after) goes into the report's ``int8_payoff`` field; the final
pipeline text lists the given-back nodes in ``exclude_nodes``, so re-running
that text reproduces the model byte for byte without measuring again.

The decision is a measurement: on a noisy machine two runs can give back
different nodes. Use ``--no-payoff`` (or ``payoff=False``) where byte-identical
output from the *target's default* pipeline matters more than speed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpq.analysis.macs import model_cost
from onnxpq.core.manager import PassManager
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.session import make_session
from onnxpq.search.fallback import excludable, with_excluded

__all__ = ["PayoffResult", "give_back_slow_nodes", "interleaved_ratios"]

logger = logging.getLogger(__name__)


@dataclass
class PayoffResult:
    """The fastest model found, the passes that build it, and the measurements behind the choice."""

    model: ir.Model
    records: list
    passes: list[OnnxpqPass]
    given_back: list[str] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    ratio_before: float = float("nan")  # quantized / float, all candidates quantized
    ratio_after: float = float("nan")  # quantized / float, after giving back

    def to_dict(self, *, batch: int, threads: int, provider: str) -> dict[str, Any]:
        return {
            "method": (
                f"measured: onnxruntime {provider}, batch {batch}, {threads} thread(s), "
                "interleaved rounds, medians of per-round ratios"
            ),
            "given_back": list(self.given_back),
            "ratio_vs_float_before": round(self.ratio_before, 4),
            "ratio_vs_float_after": round(self.ratio_after, 4),
            "pays": bool(self.ratio_after < 1.0),
            "trials": self.trials,
        }


def interleaved_ratios(
    models: Sequence[ir.Model],
    feed: Mapping[str, np.ndarray],
    *,
    providers: Sequence[str],
    threads: int,
    budget_s: float,
    min_rounds: int = 30,
    max_rounds: int = 2000,
) -> list[float]:
    """Median over interleaved rounds of ``t_i / t_0`` for every model ``i`` (the first is the reference).

    Each round runs every model once, in order; the number of rounds fits
    ``budget_s`` (at least ``min_rounds``) after a warm-up of 10 runs each.
    """
    sessions = [make_session(m, providers=providers, threads=threads) for m in models]
    feed = dict(feed)
    start = time.perf_counter()
    for session in sessions:
        for _ in range(10):
            session.run(None, feed)
    warm = (time.perf_counter() - start) / 10
    rounds = int(min(max_rounds, max(min_rounds, budget_s / max(warm, 1e-6))))
    times = np.empty((rounds, len(sessions)))
    for r in range(rounds):
        for i, session in enumerate(sessions):
            t0 = time.perf_counter()
            session.run(None, feed)
            times[r, i] = time.perf_counter() - t0
    return [float(np.median(times[:, i] / times[:, 0])) for i in range(len(sessions))]


def _cheapest_first(model: ir.Model, names: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    try:
        costs = {c.node: c.macs for c in model_cost(model, shapes).nodes}
    except Exception as exc:  # noqa: BLE001 - ranking is a heuristic; keep the pass order then
        logger.debug("int8 payoff: MACs unavailable (%s); candidates in graph order", exc)
        costs = {}
    return sorted(names, key=lambda n: costs.get(n, 0))


def give_back_slow_nodes(
    model: ir.Model,
    passes: Sequence[OnnxpqPass],
    quantized_model: ir.Model,
    records: list,
    quantized: Sequence[str],
    feed: Mapping[str, np.ndarray],
    *,
    make_manager: Callable[[Sequence[OnnxpqPass]], PassManager],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
    max_candidates: int = 8,
    max_rounds: int = 4,
    margin: float = 0.02,
    budget_s: float = 3.0,
    min_rounds: int = 30,
) -> PayoffResult:
    """Give back to float the quantized nodes whose integer kernels make ``quantized_model`` slower.

    Args:
        model: the float input model (the pipeline's input).
        passes: the pipeline that produced ``quantized_model`` from ``model``.
        quantized_model, records: its result and pass records.
        quantized: names of the nodes the lossy passes quantized.
        feed: one inference's inputs (the deployment batch).
        make_manager: builds a pass manager in the same context as the first run.
        budget_s: timing budget of one measuring round (all variants together).
    """
    if not excludable(passes):
        return PayoffResult(quantized_model, records, list(passes))
    shapes = {name: list(array.shape) for name, array in feed.items()}
    pool = _cheapest_first(model, list(dict.fromkeys(quantized)), shapes)[:max_candidates]
    current = PayoffResult(quantized_model, records, list(passes))
    first = True
    for round_index in range(max_rounds):
        variants: list[tuple[str, ir.Model, list, list[OnnxpqPass]]] = []
        for name in pool:
            tried = with_excluded(passes, [*current.given_back, name])
            manager = make_manager(tried)
            variants.append((name, manager(model).model, manager.records, tried))
        if not variants:
            break
        ratios = interleaved_ratios(
            [current.model, model, *(v[1] for v in variants)],
            feed, providers=providers, threads=threads, budget_s=budget_s, min_rounds=min_rounds,
        )
        float_ratio = 1.0 / ratios[1]  # current / float
        if first:
            current.ratio_before, first = float_ratio, False
        current.ratio_after = float_ratio
        step = [{"round": round_index + 1, "give_back": name, "ratio_vs_current": round(r, 4)}
                for (name, *_), r in zip(variants, ratios[2:], strict=True)]
        current.trials.extend(step)
        best = int(np.argmin(ratios[2:]))
        best_ratio = ratios[2 + best]
        logger.info(
            "int8 payoff round %d: current/float %.3f; best give-back %s at %.3f of current",
            round_index + 1, float_ratio, variants[best][0], best_ratio,
        )
        if best_ratio >= 1.0 - margin:
            break
        name, new_model, new_records, new_passes = variants[best]
        current = PayoffResult(
            new_model, new_records, new_passes, [*current.given_back, name], current.trials,
            current.ratio_before, float_ratio * best_ratio,
        )
        pool = [n for n in pool if n != name]
        if not pool or round_index == max_rounds - 1:  # measure where we stopped
            final = interleaved_ratios(
                [current.model, model], feed, providers=providers, threads=threads, budget_s=budget_s, min_rounds=min_rounds
            )
            current.ratio_after = 1.0 / final[1]
    return current
