"""The per-layer planner: one setting per layer, least predicted error at a cost, or least cost at an error.

Every layer ``l`` has options ``o`` (quantization × sparsity × channel ratio,
the combinations of its measured single-axis candidates) with a predicted
error and cost::

    e_l(o) = D_l(q) + D_l(s) + D_l(r)          sensitivity noises (additive, see sensitivity)
    c_l(o) = C_l(q, s) · k_r + Σ_{m ∈ G_l, m ≠ l} C_m(ref_m) · (k_r − 1)

``C_l`` is :func:`onnxpq.analysis.cost_models.layer_cost` in the target's cost
model, ``k_r`` the fraction of channels pruning ratio r keeps (as measured), and
``G_l`` the other layers of the channel group l owns (other producers of a
residual group lose the same output channels; the consumers lose input
channels), priced at their reference setting ``ref_m`` (the target's default
treatment): the coupling is linearised so that the problem separates over
layers. :func:`configuration_cost` prices a finished configuration exactly
(every layer times the product of its groups' kept fractions).

Two solvers:

* Lagrangian relaxation (rate–distortion): for λ ≥ 0 every layer independently
  takes ``argmin_o e_l(o) + λ·c_l(o)``; sweeping λ traces the lower convex hull
  of the (cost, error) trade-off (Shoham & Gersho 1988; the "minimise Σ D + λ Σ R"
  view of mixed precision).
* Dynamic programming over layers (a multiple-choice knapsack, as in SPDY/OBC):
  costs shifted to ``c'_l(o) = c_l(o) − min_o c_l(o) ≥ 0`` and discretised into
  ``bins`` steps of ``w = Σ_l max_o c'_l(o) / bins`` (rounded *up*, so a plan
  never exceeds its budget by rounding; ``bins + L`` slots, so the dearest plan fits); ``E_i(b) = min_o E_{i−1}(b − ⌈c'_i(o)/w⌉) + e_i(o)``
  is the least error of the first i layers within budget b. It also finds the
  points inside the hull that λ cannot reach. The reverse question — least
  cost with predicted error ≤ ε — is the smallest b with ``E_L(b) ≤ ε``.

Both solve the *linearised* problem, whose cost is only as good as the sum of
per-layer costs (a measured cost prices each layer alone: the Q/DQ and
layout reorders between an int8 and a float neighbour are in no layer's
figure). :func:`anchor_plans` therefore adds plans that do not depend on it:
the reference configuration itself (every layer at the target's default
treatment) and its one-directional neighbours, ordered by measured
sensitivity alone —

* payoff: the layers whose reference treatment costs more than float alone
  (an int8 kernel slower than the float one) go back to float;
* toward accuracy: the k layers whose reference treatment is noisiest go back
  to float (k = 1, 2, 4, …);
* toward cost: among the cheaper options that stay quantized (pruning,
  sparsity, fewer bits; float is the payoff's move), each layer's option with
  the least noise per unit of cost saved, ``(e_l(o) − e_l(ref)) / (c_l(ref) − c_l(o))``;
  the k layers where that price is lowest take it (k = 1, 2, 4, …);
* uniform: each structural candidate (a channel ratio, a sparsity, an N:M
  pattern) on every layer it was measured for, on float and on the reference
  — the uniform configurations of the planner's own axes, so that no uniform
  setting of them is left for a baseline to hold alone.

They are real configurations, evaluated and (on a measured target) timed
like every other plan, so the frontier over them stays honest.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxpq.search.configuration import FLOAT_SETTING, LayerSetting
from onnxpq.search.sensitivity import LayerSpace, Sensitivity

__all__ = [
    "Option",
    "Plan",
    "Tradeoff",
    "layer_options",
    "lagrangian_plans",
    "configuration_cost",
    "sweep_plans",
    "anchor_plans",
]

logger = logging.getLogger(__name__)

CostOf = Callable[[str, LayerSetting], float]


@dataclass(frozen=True)
class Option:
    """One setting of one layer with its predicted error and (linearised) cost."""

    setting: LayerSetting
    error: float
    cost: float
    keep: float = 1.0


@dataclass
class Plan:
    """One setting per layer and the totals the planner predicts."""

    settings: dict[str, LayerSetting]
    predicted_error: float
    predicted_cost: float
    how: str = ""
    keeps: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return tuple(sorted((k, v) for k, v in self.settings.items() if v != FLOAT_SETTING))


def layer_options(
    space: LayerSpace,
    sensitivity: Sensitivity,
    cost_of: CostOf,
    reference: Mapping[str, LayerSetting],
) -> dict[str, list[Option]]:
    """Every combination of a layer's measured candidates (and float on each axis), priced (module docstring)."""
    options: dict[str, list[Option]] = {}
    for layer in space.layers:
        quants = [(None, 0.0)] + [(e.setting.quant, e.noise) for e in sensitivity.of(layer, "quant")]
        sparse = [((0.0, None), 0.0)] + [((e.setting.sparsity, e.setting.n_m), e.noise) for e in sensitivity.of(layer, "sparsity")]
        chans = [((0.0, 1.0), 0.0)] + [((e.setting.prune_ratio, e.keep), e.noise) for e in sensitivity.of(layer, "channels")]
        coupled = sum(cost_of(m, reference.get(m, FLOAT_SETTING)) for m in space.owner_group.get(layer, ()) if m != layer)
        out = []
        for (quant, eq), ((sparsity, n_m), es), ((ratio, keep), ec) in itertools.product(quants, sparse, chans):
            setting = LayerSetting(quant=quant, sparsity=sparsity, n_m=n_m, prune_ratio=ratio)
            error = eq + es + ec
            if not math.isfinite(error):
                continue
            cost = cost_of(layer, LayerSetting(quant=quant, sparsity=sparsity, n_m=n_m)) * keep + coupled * (keep - 1.0)
            out.append(Option(setting, error, cost, keep))
        options[layer] = out
    return options


def _plan(options: Mapping[str, list[Option]], picks: Mapping[str, Option], how: str) -> Plan:
    return Plan(
        {layer: picks[layer].setting for layer in options},
        float(sum(picks[layer].error for layer in options)),
        float(sum(picks[layer].cost for layer in options)),
        how,
        {layer: picks[layer].keep for layer in options if picks[layer].keep < 1.0},
    )


def _unique(plans: Sequence[Plan]) -> list[Plan]:
    seen, out = set(), []
    for plan in plans:
        if plan.key not in seen:
            seen.add(plan.key)
            out.append(plan)
    return out


def lagrangian_plans(options: Mapping[str, list[Option]], lambdas: Sequence[float] | None = None) -> list[Plan]:
    """The distinct plans ``argmin_o e + λ·c`` per layer over a sweep of λ (geometric, from the options' slopes)."""
    if lambdas is None:
        slopes = []
        for opts in options.values():
            for a, b in itertools.combinations(opts, 2):
                dc, de = abs(a.cost - b.cost), abs(a.error - b.error)
                if dc > 0 and de > 0:
                    slopes.append(de / dc)
        if not slopes:
            lambdas = [0.0]
        else:
            lo, hi = min(slopes), max(slopes)
            lambdas = [0.0, *np.geomspace(lo / 2, hi * 2, 60).tolist(), math.inf]
    plans = []
    for lam in lambdas:
        picks = {}
        for layer, opts in options.items():
            if math.isinf(lam):
                picks[layer] = min(opts, key=lambda o: (o.cost, o.error))
            else:
                picks[layer] = min(opts, key=lambda o: (o.error + lam * o.cost, o.cost))
        plans.append(_plan(options, picks, f"lagrangian λ={lam:.3g}"))
    return _unique(plans)


class Tradeoff:
    """The dynamic-programming trade-off curve: least predicted error for every (discretised) cost budget."""

    def __init__(self, options: Mapping[str, list[Option]], bins: int = 400) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.options = {layer: list(opts) for layer, opts in options.items() if opts}
        self.layers = list(self.options)
        self.shift = sum(min(o.cost for o in opts) for opts in self.options.values())
        span = sum(max(o.cost for o in opts) - min(o.cost for o in opts) for opts in self.options.values())
        self.bins = bins
        self.width = span / bins if span > 0 else 1.0
        size = bins + len(self.layers)  # rounding up adds < 1 bin per layer: the dearest plan always fits
        self.size = size
        best = np.zeros(size + 1)
        self._choice: list[np.ndarray] = []
        for layer in self.layers:
            opts = self.options[layer]
            low = min(o.cost for o in opts)
            new = np.full(size + 1, np.inf)
            arg = np.full(size + 1, -1, dtype=np.int32)
            for k, o in enumerate(opts):
                w = int(math.ceil((o.cost - low) / self.width - 1e-9))
                if w > size:
                    continue
                cand = np.full(size + 1, np.inf)
                cand[w:] = best[: size + 1 - w] + o.error
                better = cand < new
                new[better], arg[better] = cand[better], k
            best = new
            self._choice.append(arg)
        self.best = best

    def _backtrack(self, b: int, how: str) -> Plan:
        picks = {}
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            k = int(self._choice[index][b])
            option = self.options[layer][k]
            picks[layer] = option
            low = min(o.cost for o in self.options[layer])
            b -= int(math.ceil((option.cost - low) / self.width - 1e-9))
        return _plan(self.options, picks, how)

    def cost_range(self) -> tuple[float, float]:
        return self.shift, self.shift + self.width * self.size

    def plan_for_budget(self, budget: float) -> Plan | None:
        """Least predicted error with predicted cost ≤ ``budget`` (None when even the cheapest plan costs more)."""
        b = int(math.floor((budget - self.shift) / self.width + 1e-9))
        if b < 0:
            return None
        b = min(b, self.size)
        return self._backtrack(b, f"dp budget {budget:.4g}")

    def plan_for_error(self, max_error: float) -> Plan | None:
        """Least predicted cost with predicted error ≤ ``max_error`` (None when no plan reaches it)."""
        ok = np.nonzero(self.best <= max_error)[0]
        if not ok.size:
            return None
        return self._backtrack(int(ok[0]), f"dp error {max_error:.4g}")


def sweep_plans(options: Mapping[str, list[Option]], count: int = 10, *, bins: int = 400) -> list[Plan]:
    """Distinct plans at ``count`` budgets evenly spaced over the cost range, plus the Lagrangian hull."""
    curve = Tradeoff(options, bins)
    low, high = curve.cost_range()
    plans = []
    for budget in np.linspace(low, high, max(2, count)):
        plan = curve.plan_for_budget(float(budget))
        if plan is not None:
            plans.append(plan)
    plans += lagrangian_plans(options)
    return sorted(_unique(plans), key=lambda p: p.predicted_cost)


def _doublings(count: int) -> list[int]:
    """1, 2, 4, … below ``count``, then ``count`` itself."""
    steps, k = [], 1
    while k < count:
        steps.append(k)
        k *= 2
    return [*steps, count] if count else []


def anchor_plans(options: Mapping[str, list[Option]], reference: Mapping[str, LayerSetting]) -> list[Plan]:
    """The reference configuration and its neighbours toward accuracy, toward cost and by payoff (module docstring).

    A layer whose reference setting is not among its options (not measured, or
    its error is not finite) is float in every anchor.
    """
    if not options:
        return []
    floats = {layer: next((o for o in opts if o.setting == FLOAT_SETTING), None) for layer, opts in options.items()}
    base: dict[str, Option] = {}
    for layer, opts in options.items():
        wanted = reference.get(layer, FLOAT_SETTING)
        pick = next((o for o in opts if o.setting == wanted), None) or floats[layer]
        if pick is None:
            logger.debug("anchors: layer %r has neither its reference nor a float option; left out", layer)
            return []
        base[layer] = pick
    plans = [_plan(options, base, "anchor: reference (every layer at the target's default)")]
    slow = {layer: f for layer, o in base.items() if (f := floats[layer]) is not None and f.cost < o.cost}
    if slow:
        plans.append(_plan(options, {**base, **slow}, f"anchor: {len(slow)} layer(s) dearer than float back to float"))

    noisy = sorted((layer for layer, o in base.items() if o.error > 0 and floats[layer] not in (None, o)),
                   key=lambda layer: -base[layer].error)
    for k in _doublings(len(noisy)):
        picks = {**base, **{layer: floats[layer] for layer in noisy[:k]}}  # type: ignore[dict-item]
        plans.append(_plan(options, picks, f"anchor: the {k} noisiest layer(s) back to float"))

    moves: dict[str, tuple[float, Option]] = {}
    for layer, ref in base.items():
        keeps_quant = ref.setting.quant is None or ref is floats[layer]
        cheaper = [o for o in options[layer] if o.cost < ref.cost and (keeps_quant or o.setting.quant is not None)]
        if cheaper:
            best = min(cheaper, key=lambda o: ((o.error - ref.error) / (ref.cost - o.cost), o.cost))
            moves[layer] = ((best.error - ref.error) / (ref.cost - best.cost), best)
    order = sorted(moves, key=lambda layer: moves[layer][0])
    for k in _doublings(len(order)):
        picks = {**base, **{layer: moves[layer][1] for layer in order[:k]}}
        plans.append(_plan(options, picks, f"anchor: the {k} least noisy cheaper option(s) per cost saved"))


    structural = sorted({(o.setting.sparsity, o.setting.n_m, o.setting.prune_ratio)
                         for opts in options.values() for o in opts
                         if o.setting.quant is None and o.setting != FLOAT_SETTING
                         and sum((o.setting.sparsity > 0 or o.setting.n_m is not None, o.setting.prune_ratio > 0)) == 1},
                        key=lambda v: (v[0], v[1] or (0, 0), v[2]))
    for sparsity, n_m, ratio in structural:
        label = LayerSetting(sparsity=sparsity, n_m=n_m, prune_ratio=ratio).label()
        for start, name in ((floats, "float"), (base, "the target's default")):
            picks = {}
            for layer, opts in options.items():
                quant = start[layer].setting.quant if start[layer] is not None else None
                wanted = LayerSetting(quant=quant, sparsity=sparsity, n_m=n_m, prune_ratio=ratio)
                picks[layer] = next((o for o in opts if o.setting == wanted), None) or start[layer] or base[layer]
            plans.append(_plan(options, picks, f"anchor: {label} on every layer it applies to, on {name}"))
    return _unique(plans)


def configuration_cost(
    space: LayerSpace,
    settings: Mapping[str, LayerSetting],
    keeps: Mapping[str, float],
    cost_of: CostOf,
) -> float:
    """Exact cost of a configuration: ``Σ_l C_l(q_l, s_l) · Π_{G ∋ l} k_G`` (``keeps``: owner → kept fraction)."""
    total = 0.0
    for layer in space.layers:
        setting = settings.get(layer, FLOAT_SETTING)
        factor = math.prod(keeps.get(owner, 1.0) for owner in space.layer_groups.get(layer, ()))
        total += cost_of(layer, LayerSetting(quant=setting.quant, sparsity=setting.sparsity, n_m=setting.n_m)) * factor
    return total
