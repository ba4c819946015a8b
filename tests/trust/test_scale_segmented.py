"""SegmentedSession (large models validated segment by segment) gives the outputs of one whole session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.core import session as session_module
from onnxpq.core.session import SegmentedSession, make_session, run_in_batches


def _skip_chain(folder: Path) -> Path:
    """x -> 4 x (MatMul + Relu) with a residual Add from layer 0 to layer 3, and a mid-graph output 'h1'; external data."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    current = "x"
    for layer in range(4):
        inits.append(numpy_helper.from_array((rng.standard_normal((64, 64)) * 0.2).astype(np.float32), f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"], name=f"mm{layer}"))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"h{layer}"], name=f"relu{layer}"))
        current = f"h{layer}"
    nodes.append(helper.make_node("Add", ["h3", "h0"], ["y"], name="residual"))
    graph = helper.make_graph(
        nodes,
        "skip_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64]), helper.make_tensor_value_info("h1", TensorProto.FLOAT, ["N", 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def _plain(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("budget", [1, 16 * 1024, 40 * 1024])
def test_segmented_session_matches_one_session(tmp_path: Path, budget: int) -> None:
    path = _skip_chain(tmp_path)
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    options = ort.SessionOptions()
    segmented = SegmentedSession(path, options, ["CPUExecutionProvider"], budget=budget)
    assert len(segmented._segments) > 1
    for got, want in zip(run_in_batches(segmented, {"x": x}), _plain(path, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_make_session_segments_models_over_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _skip_chain(tmp_path)
    monkeypatch.setattr(session_module, "SEGMENTED_ABOVE_BYTES", 4)
    assert isinstance(make_session(path), SegmentedSession)
    monkeypatch.setattr(session_module, "SEGMENTED_ABOVE_BYTES", 1 << 30)
    assert not isinstance(make_session(path), SegmentedSession)


def test_segmented_census_model_lists_every_segments_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _skip_chain(tmp_path)
    monkeypatch.setattr(session_module, "SEGMENTED_ABOVE_BYTES", 4)
    monkeypatch.setattr(session_module, "SEGMENT_BYTES", 16 * 1024)
    optimized = tmp_path / "optimized.onnx"
    make_session(path, optimized_model_path=str(optimized))
    ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    assert sum(op in ("MatMul", "FusedMatMul", "Gemm") for op in ops) == 4


def test_segment_sessions_run_without_the_cpu_arena_or_prepacking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's CPU arena keeps what it grew to (a segment's dequantized weights, run after run) until the session goes."""
    path = _skip_chain(tmp_path)
    options_seen: list[ort.SessionOptions] = []
    real = ort.InferenceSession

    def recording(model: bytes, sess_options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        options_seen.append(sess_options)
        return real(model, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(session_module.ort, "InferenceSession", recording)
    segmented = SegmentedSession(path, ort.SessionOptions(), ["CPUExecutionProvider"], budget=16 * 1024)
    run_in_batches(segmented, {"x": np.ones((2, 64), np.float32)})
    assert len(options_seen) == len(segmented._segments) > 1
    assert all(not o.enable_cpu_mem_arena for o in options_seen)
    assert all(o.get_session_config_entry("session.disable_prepacking") == "1" for o in options_seen)
