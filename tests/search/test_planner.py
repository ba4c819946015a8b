"""The planner: DP is optimal on small problems, Lagrangian plans lie on the DP curve, exact configuration cost."""

from __future__ import annotations

import itertools
import random

import pytest

from onnxpq.analysis.cost_models import LayerFacts
from onnxpq.search.configuration import LayerSetting
from onnxpq.search.planner import Option, Tradeoff, anchor_plans, configuration_cost, lagrangian_plans, sweep_plans
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


def _anchor_options() -> dict[str, list[Option]]:
    """Three layers: float, int8 (the reference) and an int8+pruned option; 'b' is dearer in int8 than in float."""
    out = {}
    for name, (int8_error, float_cost, int8_cost) in {"a": (0.3, 10.0, 6.0), "b": (0.1, 4.0, 5.0), "c": (0.2, 8.0, 4.0)}.items():
        out[name] = [
            Option(LayerSetting(), 0.0, float_cost),
            Option(LayerSetting(quant="int8"), int8_error, int8_cost),
            Option(LayerSetting(quant="int8", prune_ratio=0.5), int8_error + 0.05, int8_cost / 2, 0.5),
        ]
    return out


def test_anchors_start_with_the_reference_configuration() -> None:
    plans = anchor_plans(_anchor_options(), {k: LayerSetting(quant="int8") for k in "abc"})
    assert plans[0].settings == {k: LayerSetting(quant="int8") for k in "abc"}
    assert plans[0].predicted_cost == pytest.approx(15.0) and plans[0].how.startswith("anchor")


def test_anchors_toward_accuracy_give_the_noisiest_layers_back_to_float() -> None:
    plans = {p.how: p for p in anchor_plans(_anchor_options(), {k: LayerSetting(quant="int8") for k in "abc"})}
    one = next(p for how, p in plans.items() if "1 noisiest" in how)
    two = next(p for how, p in plans.items() if "2 noisiest" in how)
    assert one.settings["a"] == LayerSetting() and one.settings["c"] == LayerSetting(quant="int8")
    assert two.settings["a"] == two.settings["c"] == LayerSetting() and two.settings["b"] == LayerSetting(quant="int8")


def test_anchors_toward_cost_take_the_least_noise_per_cost_saved_first() -> None:
    int8, pruned = LayerSetting(quant="int8"), LayerSetting(quant="int8", prune_ratio=0.5)
    plans = [p for p in anchor_plans(_anchor_options(), {k: int8 for k in "abc"}) if "cheaper option" in p.how]
    # pruned: a saves 3 at 0.05 noise, b 2.5, c 2 at the same noise; float (cheaper for b) is not a cost move
    assert [(p.settings["a"], p.settings["b"], p.settings["c"]) for p in plans] == [
        (pruned, int8, int8), (pruned, pruned, int8), (pruned, pruned, pruned)]
    assert all(p.predicted_cost < 15.0 for p in plans)


def test_payoff_anchor_gives_back_layers_dearer_than_float() -> None:
    options = _anchor_options()
    options["c"][0] = Option(LayerSetting(), 0.0, 3.0)  # c too: its float kernel is the faster one
    plans = anchor_plans(options, {k: LayerSetting(quant="int8") for k in "abc"})
    payoff = [p for p in plans if "dearer" in p.how]
    assert len(payoff) == 1
    assert payoff[0].settings == {"a": LayerSetting(quant="int8"), "b": LayerSetting(), "c": LayerSetting()}


def test_anchors_are_distinct() -> None:
    plans = anchor_plans(_anchor_options(), {k: LayerSetting(quant="int8") for k in "abc"})
    assert len({p.key for p in plans}) == len(plans)


def test_uniform_anchors_put_each_structural_candidate_on_every_layer() -> None:
    int8 = LayerSetting(quant="int8")
    options = _anchor_options()
    options["c"].append(Option(LayerSetting(prune_ratio=0.5), 0.05, 4.0, 0.5))  # only c has float+prune measured
    configs = [p.settings for p in anchor_plans(options, {k: int8 for k in "abc"})]
    assert {"a": LayerSetting(), "b": LayerSetting(), "c": LayerSetting(prune_ratio=0.5)} in configs
    assert {k: LayerSetting(quant="int8", prune_ratio=0.5) for k in "abc"} in configs
