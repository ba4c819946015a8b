"""Pareto frontier: domination, ties, unknown values, baseline comparison."""

from __future__ import annotations

import pytest

from onnxpq.search.frontier import dominates, median_interval, pareto_mask, versus_baseline


def test_dominated_points_are_marked() -> None:
    costs = [1.0, 2.0, 3.0, 2.5]
    quality = [0.90, 0.95, 0.99, 0.94]  # (2.5, 0.94) is dominated by (2.0, 0.95)
    assert pareto_mask(costs, quality) == [True, True, True, False]


def test_equal_cost_keeps_only_the_best_quality() -> None:
    assert pareto_mask([1.0, 1.0, 2.0], [0.8, 0.9, 0.85]) == [False, True, False]


def test_exact_duplicates_are_both_on_the_frontier() -> None:
    assert pareto_mask([1.0, 1.0], [0.9, 0.9]) == [True, True]


def test_unknown_values_are_never_on_the_frontier() -> None:
    assert pareto_mask([None, 1.0, 2.0], [0.99, 0.5, float("nan")]) == [False, True, False]


def test_mask_matches_brute_force() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.randint(0, 5) * 1.0, rng.randint(0, 5) * 1.0) for _ in range(8)]
        mask = pareto_mask([c for c, _ in pts], [q for _, q in pts])
        brute = [not any(dominates(o, p) for o in pts) for p in pts]
        assert mask == brute


def test_versus_baseline_dominates_when_cheaper_and_as_accurate() -> None:
    result = versus_baseline([(1.0, 0.9), (2.0, 0.99)], (1.5, 0.95))
    assert result["as_accurate_at_cost"] is False  # at cost <= 1.5 the best is 0.9
    assert result["as_cheap_at_accuracy"] is False  # quality >= 0.95 costs 2.0
    assert versus_baseline([(1.0, 0.96), (2.0, 0.99)], (1.5, 0.95))["dominates"] is True


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        pareto_mask([1.0], [0.5, 0.6])


def test_a_tie_within_the_tolerance_is_reported_beside_the_strict_loss() -> None:
    result = versus_baseline([(1.02, 0.95), (2.0, 0.99)], (1.0, 0.95), tolerance=0.03)
    assert result["dominates"] is False and result["dominates_within_tolerance"] is True
    assert result["tolerance"] == 0.03
    assert versus_baseline([(1.05, 0.95)], (1.0, 0.95), tolerance=0.03)["dominates_within_tolerance"] is False


def test_tolerance_never_forgives_lower_quality() -> None:
    assert versus_baseline([(0.5, 0.94)], (1.0, 0.95), tolerance=0.5)["dominates_within_tolerance"] is False


def test_median_interval_covers_the_median_and_narrows_with_more_samples() -> None:
    import random

    rng = random.Random(0)
    small = [rng.gauss(1.0, 0.1) for _ in range(30)]
    large = [rng.gauss(1.0, 0.1) for _ in range(3000)]
    for samples in (small, large):
        low, median, high = median_interval(samples)
        assert low <= median <= high
    assert median_interval(large)[2] - median_interval(large)[0] < (median_interval(small)[2] - median_interval(small)[0]) / 3
    assert median_interval([2.0]) == (2.0, 2.0, 2.0)
