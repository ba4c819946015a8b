"""The Pareto frontier of quality against cost, and the comparison with a baseline.

A point ``a`` *dominates* ``b`` when ``quality(a) ≥ quality(b)`` and
``cost(a) ≤ cost(b)`` with at least one of them strict. The frontier is the
set of points no other point dominates (duplicates of a frontier point — same
cost and quality — are all on it). Points with an unknown cost or quality
(None, NaN) are never on it and dominate nothing.

:func:`versus_baseline` answers the benchmark's question for one baseline
``(c_b, q_b)``: is there a frontier point at cost ≤ c_b with quality ≥ q_b
(``as_accurate_at_cost``), and the cheapest frontier point with quality ≥ q_b —
is it at most as costly (``as_cheap_at_accuracy``)?
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["dominates", "pareto_mask", "versus_baseline"]


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


def versus_baseline(
    points: Sequence[tuple[float | None, float | None]], baseline: tuple[float | None, float | None]
) -> dict[str, Any]:
    """Frontier points against one baseline ``(cost, quality)``; see the module docstring."""
    cost_b, quality_b = baseline
    usable = [(c, q) for c, q in points if _known(c) and _known(q)]
    if not _known(cost_b) or not _known(quality_b) or not usable:
        return {"as_accurate_at_cost": None, "as_cheap_at_accuracy": None, "best_quality_at_cost": None,
                "least_cost_at_quality": None, "dominates": None}
    at_cost = [q for c, q in usable if c <= cost_b]  # type: ignore[operator]
    at_quality = [c for c, q in usable if q >= quality_b]  # type: ignore[operator]
    best_q = max(at_cost) if at_cost else None
    least_c = min(at_quality) if at_quality else None
    accurate = best_q is not None and best_q >= quality_b  # type: ignore[operator]
    cheap = least_c is not None and least_c <= cost_b  # type: ignore[operator]
    return {
        "as_accurate_at_cost": accurate,
        "as_cheap_at_accuracy": cheap,
        "best_quality_at_cost": best_q,
        "least_cost_at_quality": least_c,
        "dominates": accurate and cheap,
    }
