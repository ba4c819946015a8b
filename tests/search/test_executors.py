"""Executors: order and callbacks of the local pool; Ray gives the same frontier as local."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from onnxpq.errors import OnnxpqError
from onnxpq.search.executors import InlineExecutor, LocalExecutor, make_executor
from onnxpq.search.explore import explore


def test_local_pool_keeps_task_order_and_reports_each_result() -> None:
    seen: list[int] = []
    results = LocalExecutor(2).map(abs, [-3, 1, -2, 5], on_result=lambda i, r: seen.append(i))
    assert results == [3, 1, 2, 5]
    assert sorted(seen) == [0, 1, 2, 3]


def test_inline_progress_counts_up() -> None:
    progress: list[tuple[int, int]] = []
    InlineExecutor().map(abs, [-1, -2], progress=lambda d, t: progress.append((d, t)))
    assert progress == [(1, 2), (2, 2)]


def test_unknown_executor_is_refused() -> None:
    with pytest.raises(OnnxpqError, match="unknown executor"):
        make_executor("dask")


def _frontier(doc: dict) -> list[tuple]:
    return sorted(
        (p["pipeline"], p["quality"], p["costs"]["bops"], p["on_frontier"]["bops"])
        for p in doc["points"] if p["kind"] in ("planned", "baseline")
    )


@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (the [ray] extra)")
def test_ray_gives_the_same_frontier_as_local(tmp_path: Path, tiny_cnn) -> None:
    import ray

    model, data = tiny_cnn(tmp_path)
    local = explore(model, tmp_path / "local", target="vbit", data=data, points=3, weight_bits=(2, 8),
                    weight_method="rtn", sparsities=(), latency_runs=2).document
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        remote = explore(model, tmp_path / "ray", target="vbit", data=data, points=3, weight_bits=(2, 8),
                         weight_method="rtn", sparsities=(), latency_runs=2, executor="ray").document
    finally:
        ray.shutdown()
    assert _frontier(remote) == _frontier(local)
    assert remote["chosen"] == local["chosen"]
