"""The accuracy gate gives the most harmful quantized nodes back to float."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxpq.cli import main
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import parse_pipeline
from onnxpq.search.fallback import accuracy_drop, excludable, give_back_until_gate
from onnxpq.validation.data import Dataset

DATA = resources.files("onnxpq").joinpath("data")


def test_only_lossy_passes_with_exclude_nodes_take_part() -> None:
    passes = parse_pipeline("fold-batchnorm,quantize-static,eliminate-dead")
    assert excludable(passes) == [1]


def test_accuracy_drop_uses_labels_when_given() -> None:
    ref = [np.array([[0.9, 0.1], [0.2, 0.8]])]
    cand = [np.array([[0.1, 0.9], [0.2, 0.8]])]
    assert accuracy_drop(ref, cand, Dataset({}, np.array([0, 1]), "t")) == pytest.approx(0.5)
    assert accuracy_drop(ref, cand, Dataset({}, None, "t")) == pytest.approx(0.5)


def _two_layer_model() -> ir.Model:
    """x -> MatMul(w1) -> Relu -> MatMul(w2): w1 has a huge outlier column, so int8 hurts it most."""
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[N, 16] x) => (float[N, 4] y) {
      h = MatMul(x, w1)
      r = Relu(h)
      y = MatMul(r, w2)
    }
    """
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    proto.graph.node[0].name, proto.graph.node[2].name = "first", "second"
    return ir.from_proto(proto)


def test_give_back_ranks_by_harm_and_stops_when_the_gate_holds() -> None:
    model = _two_layer_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    x[:, 3] *= 50.0  # one input feature with a wide range: the first layer's input quantizes coarsely
    dataset = Dataset({"x": x}, None, "test")
    passes = parse_pipeline("quantize-static")
    with PassContext(calibration={"x": x}):
        result = give_back_until_gate(
            model, passes, ["first", "second"], dataset, 0.0,
            make_manager=lambda run: PassManager(run, progress=False),
        )
    assert result.met
    assert set(result.harm) == {"first", "second"}
    ranked = sorted(result.harm, key=result.harm.get, reverse=True)
    assert result.given_back == ranked[: len(result.given_back)]
    assert result.drops[-1] == 0.0
    assert result.passes[0].exclude_nodes == tuple(result.given_back)


def test_cli_gate_gives_two_bit_layers_back_until_it_passes(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    with resources.as_file(DATA.joinpath("digits_cnn.onnx")) as model, resources.as_file(
        DATA.joinpath("digits_test.npz")
    ) as test, resources.as_file(DATA.joinpath("digits_calib.npz")) as calib:
        code = main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(test),
                     "--calibration", str(calib), "--pipeline", "fold-batchnorm,quantize-weights{bits=2}",
                     "--max-accuracy-drop", "0.005", "--report", str(report),
                     "--latency-runs", "2", "-q", "--no-payoff"])  # the gate alone decides here
    gate = json.loads(report.read_text())["gate"]
    assert code == 0
    assert gate["passed"] and gate["accuracy_drop"] <= 0.005
    assert gate["given_back"], "2-bit weights everywhere lose more than half a point on digits"
    harm = gate["fallback"]["harm"]
    ranked = sorted(harm, key=harm.get, reverse=True)
    assert gate["given_back"] == ranked[: len(gate["given_back"])]
    assert "exclude_nodes=[" in json.loads(report.read_text())["pipeline"]
