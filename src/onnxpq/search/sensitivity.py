"""Per-layer sensitivity: the output error of each candidate treatment of one layer, everything else float.

For every planned layer ``l`` (a Conv, ConvTranspose, Gemm or MatMul with a
constant weight) and every single-axis candidate ``c`` the target offers —

* quantization: ``int8`` (weights and activations, the target's int8
  quantizers) where the target has them; ``w<b>`` for each weight width b in
  ``target.quantize.weight_bits`` where it quantizes weights only;
* activations (axis ``activation``): ``a<a>``, the layer's input alone at a
  bits, for each width a in ``target.quantize.activation_bits``, where the
  target's pipeline has ``quantize-activations``;
* sparsity: unstructured (``prune-magnitude``) where the target skips zeros
  (``sparsity.unstructured = "compute"``), N:M for each ``sparsity.n_m`` pattern;
* channels: ratios (0.25, 0.5 by default) of the coupling group the layer
  *owns* (the first producer of a :class:`~onnxpq.analysis.channel_groups.ChannelGroup`;
  a residual group is one decision) —

the layer alone is treated on the exactly cleaned model and the relative
output noise on the calibration samples is measured in onnxruntime::

    D_l(c) = Σ (y − ŷ_{l,c})² / Σ y²         (all outputs; SQNR_l(c) = −10·log10 D_l(c))

Noise powers of independent errors add, so the planner predicts a whole
configuration as ``D ≈ Σ_l D_l(c_l)``, and a layer's combined treatment (pruned
*and* quantized) as the sum of its single-axis noises. That is an assumption
(errors interact through nonlinearities, and pruned channels change what later
layers quantize); :func:`additivity` measures how well it holds. The same
model makes the quantization options ``w<b>a<a>`` (b-bit weights reading a-bit
activations) that :meth:`Sensitivity.of` offers for the axis ``quant`` beside
the measured ones — predicted, not measured::

    D_l(w<b>a<a>) = D_l(w<b>) + D_l(a<a>)

(rounding the weights and rounding the input are independent errors of the
layer's output, to first order).

A channel candidate also records the fraction of channels actually kept (the
pass rounds to the target's ``channel_multiple``); one that removes nothing
(a group smaller than one multiple) is dropped.

Results are cached on disk through :class:`~onnxpq.search.evaluation.ResultStore`:
the key hashes the model's bytes, the candidate's pipeline (layer and
candidate), the data's and calibration's bytes and the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpq.analysis.channel_groups import ChannelGroups
from onnxpq.analysis.cost_models import LayerFacts
from onnxpq.search.configuration import LayerSetting, TargetPasses
from onnxpq.search.evaluation import Evaluation, ResultStore, run_evaluations

__all__ = [
    "LayerSpace",
    "SensitivityEntry",
    "Sensitivity",
    "single_candidates",
    "measure_sensitivity",
    "additivity",
    "PLANNED_OPS",
]

logger = logging.getLogger(__name__)

#: Layer ops the planner decides for (Gather tables stay with the target's own passes).
PLANNED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LayerSpace:
    """The planned layers and the channel groups they own.

    Attributes:
        layers: planned layer names, graph order.
        facts: their :class:`LayerFacts`.
        owner_group: owner layer → the group's members that are layers (producers and consumers).
        layer_groups: layer → the owners of every group it belongs to (its own output group, its input group).
        owner_producers: owner layer → every layer producing the group's channels (the owner first); a
            Concat group has one producer per section, and pruning the owner's group prunes all of them.
    """

    layers: list[str]
    facts: dict[str, LayerFacts]
    owner_group: dict[str, tuple[str, ...]] = field(default_factory=dict)
    layer_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    owner_producers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, model: ir.Model, facts: dict[str, LayerFacts]) -> LayerSpace:
        layers = [name for name, f in facts.items() if f.op_type in PLANNED_OPS]
        planned = set(layers)
        owner_group: dict[str, tuple[str, ...]] = {}
        owner_producers: dict[str, tuple[str, ...]] = {}
        layer_groups: dict[str, list[str]] = {name: [] for name in layers}
        try:
            groups = ChannelGroups.compute(model).prunable
        except Exception as exc:  # noqa: BLE001 - an analysis failure means no channel candidates, not no plan
            logger.warning("channel groups could not be computed (%s); no channel pruning candidates", exc)
            groups = []
        for group in groups:
            if group.units < 2:
                continue
            owner = next((p for p in group.producers if p in planned), None)
            if owner is None or owner in owner_group:
                continue
            members = tuple(dict.fromkeys(n for n in (*group.producers, *group.consumers) if n in planned))
            owner_group[owner] = members
            owner_producers[owner] = tuple(dict.fromkeys((owner, *(p for p in group.producers if p in planned))))
            for member in members:
                layer_groups[member].append(owner)
        return cls(layers, {n: facts[n] for n in layers}, owner_group,
                   {k: tuple(dict.fromkeys(v)) for k, v in layer_groups.items()}, owner_producers)


@dataclass(frozen=True)
class SensitivityEntry:
    """One measured single-axis candidate of one layer."""

    layer: str
    axis: str  # "quant" | "activation" | "sparsity" | "channels"
    setting: LayerSetting
    noise: float
    keep: float = 1.0  # channels: fraction of the group's channels actually kept
    measured: bool = True  # False: predicted from measured entries (w<b>a<a> = w<b> + a<a>)

    @property
    def sqnr_db(self) -> float:
        return math.inf if self.noise <= 0 else -10.0 * math.log10(self.noise)


@dataclass
class Sensitivity:
    """Every measured entry, by layer."""

    entries: dict[str, list[SensitivityEntry]]

    def of(self, layer: str, axis: str) -> list[SensitivityEntry]:
        """The layer's entries on ``axis``; for ``quant`` also every ``w<b>a<a>`` predicted from ``w<b>`` and ``a<a>``."""
        found = [e for e in self.entries.get(layer, []) if e.axis == axis]
        if axis == "quant":
            weights = [e for e in found if e.setting.quant and e.setting.quant.startswith("w") and e.setting.activation_bits is None]
            found += [
                SensitivityEntry(layer, "quant", LayerSetting(quant=f"{w.setting.quant}a{a.setting.activation_bits}"),
                                 w.noise + a.noise, measured=False)
                for w in weights
                for a in self.of(layer, "activation")
            ]
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            layer: [
                {"axis": e.axis, "candidate": e.setting.label(), "noise": e.noise,
                 "sqnr_db": None if math.isinf(e.sqnr_db) else e.sqnr_db, "keep": e.keep}
                for e in entries
            ]
            for layer, entries in self.entries.items()
        }


def single_candidates(
    passes: TargetPasses,
    space: LayerSpace,
    *,
    channel_ratios: Sequence[float] = (0.25, 0.5),
    sparsities: Sequence[float] = (0.5,),
) -> list[tuple[str, str, LayerSetting]]:
    """(layer, axis, setting) for every single-axis candidate (see the module docstring)."""
    unstructured, patterns = passes.sparsity_kinds()
    out: list[tuple[str, str, LayerSetting]] = []
    for layer in space.layers:
        out += [(layer, "quant", LayerSetting(quant=q)) for q in passes.quant_choices()]
        out += [(layer, "activation", LayerSetting(quant=a)) for a in passes.activation_choices()]
        if unstructured:
            out += [(layer, "sparsity", LayerSetting(sparsity=float(s))) for s in sparsities]
        out += [(layer, "sparsity", LayerSetting(n_m=(int(n), int(m)))) for n, m in patterns]
        if layer in space.owner_group:
            out += [(layer, "channels", LayerSetting(prune_ratio=float(r))) for r in channel_ratios]
    return out


def _kept_fraction(result: dict[str, Any], owner: str) -> float:
    before = after = 0
    for group in result.get("pruned", []):
        if owner in group["producers"] and group["channels_before"]:
            before += group["channels_before"]
            after += group["channels_after"]
    return after / before if before else 1.0


def measure_sensitivity(
    passes: TargetPasses,
    space: LayerSpace,
    make_task: Callable[[str], Evaluation],
    executor: Any,
    store: ResultStore | None,
    *,
    channel_ratios: Sequence[float] = (0.25, 0.5),
    sparsities: Sequence[float] = (0.5,),
    progress: Callable[[int, int], None] | None = None,
) -> Sensitivity:
    """Measure every single-axis candidate; ``make_task(lossy pipeline text)`` builds the evaluation."""
    candidates = single_candidates(passes, space, channel_ratios=channel_ratios, sparsities=sparsities)
    tasks = [make_task(passes.lossy_text({layer: setting}, others=False)) for layer, _, setting in candidates]
    results = run_evaluations(tasks, executor, store, progress)
    entries: dict[str, list[SensitivityEntry]] = {layer: [] for layer in space.layers}
    for (layer, axis, setting), result in zip(candidates, results, strict=True):
        keep = 1.0
        if axis == "channels":
            keep = _kept_fraction(result, layer)
            if keep >= 1.0:
                logger.debug("sensitivity: pruning %s of '%s' removes nothing; dropped", setting.label(), layer)
                continue
        entries[layer].append(SensitivityEntry(layer, axis, setting, float(result["noise"]), keep))
    return Sensitivity(entries)


def additivity(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """How well Σ per-layer noise predicts the measured noise of whole configurations.

    Pearson correlation of log10 noise (the noises span decades), Spearman rank
    correlation, and the median and spread of measured / predicted.
    """
    pairs = [(p, m) for p, m in zip(predicted, measured, strict=True) if p > 0 and m > 0 and math.isfinite(m)]
    if len(pairs) < 3:
        return {"configurations": len(pairs), "pearson_log10": None, "spearman": None, "ratio_median": None}
    p = np.log10([a for a, _ in pairs])
    m = np.log10([b for _, b in pairs])
    ratio = 10 ** (m - p)

    def rank(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x)).astype(float)

    def corr(a: np.ndarray, b: np.ndarray) -> float | None:
        if np.std(a) == 0 or np.std(b) == 0:
            return None
        return float(np.corrcoef(a, b)[0, 1])

    return {
        "configurations": len(pairs),
        "pearson_log10": corr(p, m),
        "spearman": corr(rank(p), rank(m)),
        "ratio_median": float(np.median(ratio)),
        "ratio_p10": float(np.percentile(ratio, 10)),
        "ratio_p90": float(np.percentile(ratio, 90)),
    }
