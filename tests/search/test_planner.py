"""The planner: DP is optimal on small problems, Lagrangian plans lie on the DP curve, exact configuration cost."""

from __future__ import annotations

import itertools
import random

import pytest

from onnxpq.analysis.cost_models import LayerFacts
from onnxpq.search.configuration import LayerSetting
from onnxpq.search.planner import Option, Tradeoff, configuration_cost, lagrangian_plans, sweep_plans
from onnxpq.search.sensitivity import LayerSpace


def _options(seed: int, layers: int = 4, per_layer: int = 4) -> dict[str, list[Option]]:
    rng = random.Random(seed)
    out = {}
    for layer in range(layers):
        opts = [Option(LayerSetting(), 0.0, 10.0)]
        for k in range(per_layer - 1):
            opts.append(Option(LayerSetting(quant=f"w{k + 2}"), rng.uniform(0, 1), rng.uniform(0, 10)))
        out[f"l{layer}"] = opts
    return out


def _brute(options: dict[str, list[Option]], budget: float) -> float:
    best = float("inf")
    for combo in itertools.product(*options.values()):
        if sum(o.cost for o in combo) <= budget + 1e-9:
            best = min(best, sum(o.error for o in combo))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_dp_plan_is_optimal_within_its_budget(seed: int) -> None:
    options = _options(seed)
    curve = Tradeoff(options, bins=4000)
    for budget in (8.0, 15.0, 25.0, 40.0):
        plan = curve.plan_for_budget(budget)
        optimum = _brute(options, budget)
        if plan is None:
            assert optimum == float("inf")
            continue
        assert plan.predicted_cost <= budget + 1e-9
        # discretisation rounds costs up: the plan is optimal for a budget at most one bin per layer smaller
        assert plan.predicted_error <= _brute(options, budget - 4 * curve.width) + 1e-9
        assert plan.predicted_error >= optimum - 1e-9


def test_plan_for_error_is_the_cheapest_meeting_it() -> None:
    options = _options(3)
    curve = Tradeoff(options, bins=4000)
    plan = curve.plan_for_error(0.5)
    assert plan is not None and plan.predicted_error <= 0.5
    cheapest = min(sum(o.cost for o in c) for c in itertools.product(*options.values()) if sum(o.error for o in c) <= 0.5)
    assert plan.predicted_cost <= cheapest + 4 * curve.width + 1e-9
    assert curve.plan_for_error(-1.0) is None


def test_lagrangian_plans_are_not_beaten_by_dp_at_their_cost() -> None:
    options = _options(1)
    curve = Tradeoff(options, bins=4000)
    for plan in lagrangian_plans(options):
        dp = curve.plan_for_budget(plan.predicted_cost + 4 * curve.width)
        assert dp is not None and dp.predicted_error <= plan.predicted_error + 1e-9
        # a hull point is optimal at its own cost
        assert plan.predicted_error <= _brute(options, plan.predicted_cost) + 1e-9


def test_sweep_spans_cheapest_to_most_accurate() -> None:
    options = _options(2)
    plans = sweep_plans(options, 6)
    errors = [p.predicted_error for p in plans]
    assert min(errors) == 0.0  # the all-float plan (most accurate) is in the sweep
    cheapest = sum(min(o.cost for o in opts) for opts in options.values())
    assert min(p.predicted_cost for p in plans) == pytest.approx(cheapest)


def _facts(name: str) -> LayerFacts:
    return LayerFacts(node=name, op_type="Conv", weight=name + ".w", weight_shape=(8, 8, 1, 1), params=64, bias=None,
                      bias_params=0, macs=640, out_channels=8, out_channel_axis=0, input_shape=None, output_shape=None)


def test_configuration_cost_multiplies_the_kept_fractions_of_every_group() -> None:
    space = LayerSpace(["a", "b", "c"], {n: _facts(n) for n in "abc"}, {"a": ("a", "b")}, {"a": ("a",), "b": ("a",), "c": ()})
    cost_of = lambda layer, setting: 100.0  # noqa: E731
    assert configuration_cost(space, {}, {}, cost_of) == 300.0
    # a owns the group {a (producer), b (consumer)}: both shrink by the kept fraction, c does not
    assert configuration_cost(space, {"a": LayerSetting(prune_ratio=0.5)}, {"a": 0.5}, cost_of) == 200.0
