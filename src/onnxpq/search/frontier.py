"""The Pareto frontier of quality against cost, and the comparison with a baseline.

A point ``a`` *dominates* ``b`` when ``quality(a) ≥ quality(b)`` and
``cost(a) ≤ cost(b)`` with at least one of them strict. The frontier is the
set of points no other point dominates (duplicates of a frontier point — same
cost and quality — are all on it). Points with an unknown cost or quality
(None, NaN) are never on it and dominate nothing.

:func:`versus_baseline` answers the benchmark's question for one baseline
``(c_b, q_b)``: is there a frontier point at cost ≤ c_b with quality ≥ q_b
(``as_accurate_at_cost``), and the cheapest frontier point with quality ≥ q_b —
is it at most as costly (``as_cheap_at_accuracy``)? With a relative cost
``tolerance`` τ > 0 (a measured cost's noise, see :func:`median_interval`) it
also answers the same questions with the baseline's cost widened to
``c_b · (1 + τ)`` (``…_within_tolerance``): a frontier point that is as
accurate and at most τ dearer is a tie the measurement cannot resolve. The
strict answers are always there beside them.

:func:`median_interval` is the distribution-free confidence interval of a
median from order statistics: for n samples sorted ``x_(1) ≤ … ≤ x_(n)``, the
interval ``[x_(j), x_(k)]`` with ``j = ⌊n/2 − z·√n/2⌋``, ``k = ⌈n/2 + z·√n/2⌉ + 1``
(clamped to 1..n) covers the true median with probability ≈ 95 % for z = 1.96
(the binomial(n, ½) count of samples below the median, normal approximation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["dominates", "pareto_mask", "versus_baseline", "median_interval"]


def _known(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a = (cost, quality)`` dominates ``b``."""
    (ca, qa), (cb, qb) = a, b
    return ca <= cb and qa >= qb and (ca < cb or qa > qb)


def pareto_mask(costs: Sequence[float | None], qualities: Sequence[float | None]) -> list[bool]:
    """True for the points on the frontier (lower cost, higher quality are better). O(n log n)."""
    if len(costs) != len(qualities):
        raise ValueError(f"{len(costs)} costs but {len(qualities)} qualities")
    known = [i for i in range(len(costs)) if _known(costs[i]) and _known(qualities[i])]
    order = sorted(known, key=lambda i: (costs[i], -qualities[i]))  # type: ignore[operator]
    mask = [False] * len(costs)
    best = -math.inf  # best quality among strictly cheaper points, or equal-cost points seen before
    index = 0
    while index < len(order):
        cost = costs[order[index]]
        same = [i for i in order[index:] if costs[i] == cost]
        top = max(qualities[i] for i in same)  # type: ignore[type-var]
        for i in same:
            mask[i] = qualities[i] == top and top > best  # type: ignore[operator]
        best = max(best, top)  # type: ignore[type-var]
        index += len(same)
    return mask


def median_interval(samples: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(low, median, high): the median of ``samples`` and its order-statistic confidence interval (module docstring)."""
    values = sorted(float(v) for v in samples)
    n = len(values)
    if not n:
        raise ValueError("median_interval needs at least one sample")
    half = z * math.sqrt(n) / 2.0
    low = max(1, math.floor(n / 2.0 - half))
    high = min(n, math.ceil(n / 2.0 + half) + 1)
    middle = n // 2
    median = values[middle] if n % 2 else (values[middle - 1] + values[middle]) / 2.0
    return values[low - 1], median, values[high - 1]


def versus_baseline(
    points: Sequence[tuple[float | None, float | None]],
    baseline: tuple[float | None, float | None],
    *,
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """Frontier points against one baseline ``(cost, quality)``; see the module docstring."""
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    cost_b, quality_b = baseline
    usable = [(c, q) for c, q in points if _known(c) and _known(q)]
    if not _known(cost_b) or not _known(quality_b) or not usable:
        unknown = ("as_accurate_at_cost", "as_cheap_at_accuracy", "best_quality_at_cost", "least_cost_at_quality",
                   "dominates", "as_accurate_at_cost_within_tolerance", "as_cheap_at_accuracy_within_tolerance",
                   "dominates_within_tolerance")
        return {**dict.fromkeys(unknown), "tolerance": tolerance}
    at_quality = [c for c, q in usable if q >= quality_b]  # type: ignore[operator]
    least_c = min(at_quality) if at_quality else None
    result: dict[str, Any] = {}
    for suffix, limit in (("", cost_b), ("_within_tolerance", cost_b * (1.0 + tolerance))):  # type: ignore[operator]
        at_cost = [q for c, q in usable if c <= limit]  # type: ignore[operator]
        best_q = max(at_cost) if at_cost else None
        accurate = best_q is not None and best_q >= quality_b  # type: ignore[operator]
        cheap = least_c is not None and least_c <= limit
        result[f"as_accurate_at_cost{suffix}"] = accurate
        result[f"as_cheap_at_accuracy{suffix}"] = cheap
        result[f"dominates{suffix}"] = accurate and cheap
        if not suffix:
            result["best_quality_at_cost"] = best_q
    result["least_cost_at_quality"] = least_c
    result["tolerance"] = tolerance
    return result
