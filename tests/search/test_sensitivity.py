"""Per-layer sensitivity on a tiny CNN: candidates, kept channel fractions, the on-disk cache, additivity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxpq.search.explore import explore
from onnxpq.search.sensitivity import additivity


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


@pytest.fixture(scope="module")
def explored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("sens")
    model, data = _tiny_cnn(folder)
    return explore(model, folder / "out", target="vbit", data=data, points=3, weight_bits=(2, 8),
                   weight_method="rtn", latency_runs=2).document


def test_every_layer_gets_the_target_candidates(explored: dict) -> None:
    sens = explored["sensitivity"]
    assert set(sens) == {"conv1", "conv2", "fc"}
    for layer in sens:
        names = {e["candidate"] for e in sens[layer]}
        assert {"w2", "w8", "s50%"} <= names  # vbit: weight bits and unstructured zeros (it skips them)


def test_fewer_bits_are_noisier(explored: dict) -> None:
    for layer, entries in explored["sensitivity"].items():
        noise = {e["candidate"]: e["noise"] for e in entries}
        assert 0 < noise["w8"] < noise["w2"], layer


def test_channel_candidates_record_the_kept_fraction(explored: dict) -> None:
    entries = {e["candidate"]: e for e in explored["sensitivity"]["conv1"] if e["axis"] == "channels"}
    assert entries["prune50%"]["keep"] == pytest.approx(0.5)  # 32 channels, multiple 16: 16 kept
    assert "prune25%" not in entries  # 24 would round back up to 32: removes nothing, dropped


def test_additivity_statistics_on_a_perfect_and_a_broken_predictor() -> None:
    predicted = [1e-4, 1e-3, 1e-2, 1e-1]
    good = additivity(predicted, [2 * p for p in predicted])
    assert good["pearson_log10"] == pytest.approx(1.0) and good["ratio_median"] == pytest.approx(2.0)
    bad = additivity(predicted, list(reversed(predicted)))
    assert bad["spearman"] == pytest.approx(-1.0)
