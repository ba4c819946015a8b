"""Honouring an accuracy gate by giving quantized nodes back to float.

When the optimized model loses more than the allowed accuracy, the nodes the
lossy passes changed are ranked by their *own* harm, and given back to float
(added to the passes' ``exclude_nodes``), most harmful first, one group at a
time, until the gate holds:

1. harm of node n: run the pipeline with every other quantized node excluded
   (only n quantized) and measure the output noise power against the float
   model, Σ (y − ŷ_n)² over the evaluation samples — leave-one-in, so that
   the errors of earlier layers do not pile onto later ones;
2. give back the top-ranked group, re-run the pipeline, re-measure the drop;
   groups are single nodes for up to ``max_steps`` nodes, else equal slices,
   so the number of re-runs stays bounded;
3. stop when the drop is within the gate, or everything is float again.

The drop is measured on the gate's own data: task accuracy with labels, else
1 − top-1 agreement with the float model. Calibration ranges are memoised in
the :class:`~onnxpq.core.context.PassContext`, so re-runs do not recalibrate.
Only passes with an ``exclude_nodes`` option take part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxpq.core.manager import PassManager
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.session import make_session, run_in_batches
from onnxpq.validation.data import Dataset
from onnxpq.validation.fidelity import is_classifier_output
from onnxpq.validation.figures import top1_accuracy

__all__ = ["FallbackResult", "excludable", "accuracy_drop", "give_back_until_gate", "with_excluded"]

logger = logging.getLogger(__name__)


@dataclass
class FallbackResult:
    """The model that meets the gate (or the most float one tried), and what was given back."""

    model: ir.Model
    records: list
    passes: list[OnnxpqPass] = field(default_factory=list)
    given_back: list[str] = field(default_factory=list)
    harm: dict[str, float] = field(default_factory=dict)
    drops: list[float] = field(default_factory=list)
    met: bool = False


def excludable(passes: Sequence[OnnxpqPass]) -> list[int]:
    """Indices of the lossy passes that can leave named nodes in float: the quantizing ones.

    Pruning passes take ``exclude_nodes`` too, but giving a node back to float
    means undoing its quantization, not its pruning: they keep their options.
    """
    return [
        i for i, p in enumerate(passes)
        if not p.exact and "exclude_nodes" in p.options() and not p.name.startswith("prune-")
    ]


def with_excluded(passes: Sequence[OnnxpqPass], names: Sequence[str]) -> list[OnnxpqPass]:
    """``passes`` with ``names`` added to every excludable pass's ``exclude_nodes``."""
    result = []
    for index, pass_ in enumerate(passes):
        if index in excludable(passes):
            options = pass_.options()
            merged = tuple(dict.fromkeys([*options["exclude_nodes"], *names]))
            result.append(type(pass_)(**{**options, "exclude_nodes": merged}))
        else:
            result.append(pass_)
    return result


def _outputs(model: ir.Model, dataset: Dataset) -> list[np.ndarray]:
    return run_in_batches(make_session(model), dataset.inputs)


def accuracy_drop(reference: list[np.ndarray], candidate: list[np.ndarray], dataset: Dataset) -> float:
    """Task accuracy drop with labels, else 1 − top-1 agreement of the first output."""
    if dataset.labels is not None:
        return top1_accuracy(reference[0], dataset.labels) - top1_accuracy(candidate[0], dataset.labels)
    if not is_classifier_output(reference[0]):
        raise ValueError("accuracy drop needs labels or a classifier-shaped first output")
    agree = np.mean(np.argmax(reference[0], axis=-1) == np.argmax(candidate[0], axis=-1))
    return float(1.0 - agree)


def _noise(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    return float(sum(np.sum((r.astype(np.float64) - c.astype(np.float64)) ** 2) for r, c in zip(reference, candidate, strict=True)))


def give_back_until_gate(
    model: ir.Model,
    passes: Sequence[OnnxpqPass],
    quantized: Sequence[str],
    dataset: Dataset,
    max_drop: float,
    *,
    make_manager: Callable[[Sequence[OnnxpqPass]], PassManager],
    max_steps: int = 16,
) -> FallbackResult:
    """Re-run ``passes`` on ``model`` with the most harmful of ``quantized`` nodes left float until the drop ≤ ``max_drop``.

    ``make_manager`` builds the pass manager (same instruments and context as the first run).
    """
    reference = _outputs(model, dataset)
    harm: dict[str, float] = {}
    for index, name in enumerate(quantized):
        others = [n for n in quantized if n != name]
        manager = make_manager(with_excluded(passes, others))
        only = manager(model).model
        harm[name] = _noise(reference, _outputs(only, dataset))
        logger.info("accuracy gate: harm of '%s' alone = %.4g (%d/%d)", name, harm[name], index + 1, len(quantized))
    ranked = sorted(quantized, key=lambda n: harm[n], reverse=True)
    group = max(1, -(-len(ranked) // max_steps))
    result = FallbackResult(model=model, records=[], harm=harm)
    for end in range(group, len(ranked) + group, group):
        given_back = ranked[: min(end, len(ranked))]
        tried = with_excluded(passes, given_back)
        manager = make_manager(tried)
        candidate = manager(model).model
        drop = accuracy_drop(reference, _outputs(candidate, dataset), dataset)
        result.model, result.records, result.passes, result.given_back = candidate, manager.records, tried, list(given_back)
        result.drops.append(drop)
        logger.info("accuracy gate: %d node(s) back in float, drop %.4f (allowed %.4f)", len(given_back), drop, max_drop)
        if drop <= max_drop:
            result.met = True
            break
    return result
