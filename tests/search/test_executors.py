"""Executors: order and callbacks of the local pool; Ray gives the same frontier as local."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxpq.errors import OnnxpqError
from onnxpq.search.executors import InlineExecutor, LocalExecutor, make_executor
from onnxpq.search.explore import explore


def _tiny_cnn(folder: Path) -> tuple[Path, Path]:
    """conv(1→32) relu conv(32→32) relu gap flatten gemm(32→4), named nodes; data labelled by the float model."""
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.normal(0, 0.5, (32, 1, 3, 3)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.normal(0, 0.2, (32, 32, 3, 3)).astype(np.float32), "w2")
    w3 = onnx.numpy_helper.from_array(rng.normal(0, 0.5, (4, 32)).astype(np.float32), "w3")
    b3 = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b3")
    h = onnx.helper
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        h.make_node("Flatten", ["g"], ["f"], name="flatten"),
        h.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], [w1, w2, w3, b3])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    path = folder / "tiny.onnx"
    onnx.save(model, path)
    x = rng.normal(0, 1, (48, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels = np.argmax(session.run(None, {"x": x})[0], axis=1).astype(np.int64)
    data = folder / "data.npz"
    np.savez(data, x=x, labels=labels)
    return path, data


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
def test_ray_gives_the_same_frontier_as_local(tmp_path: Path) -> None:
    import ray

    model, data = _tiny_cnn(tmp_path)
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
