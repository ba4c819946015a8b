"""Shared by the explore, sensitivity and executor tests: a tiny labelled CNN built in the test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest


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


@pytest.fixture(scope="session")
def tiny_cnn() -> Callable[[Path], tuple[Path, Path]]:
    """``tiny_cnn(folder) -> (model path, data path)``: writes the CNN and 48 labelled samples into ``folder``."""
    return _tiny_cnn
