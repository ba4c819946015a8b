"""Tests for onnxpq.report.layers: the per-layer table (``layers``) of real optimize runs on a tiny conv net."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.report.layers import layer_table
from onnxpq.validation.data import Dataset
from onnxpq.workflows import optimize

#: Exact cleanup first (batch-norm folded into conv), then the lossy pass under test.
CLEANUP = "constants-to-initializers,eliminate-identity,fold-batchnorm,eliminate-dead"


def _conv_net() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(16) -> BatchNorm -> Relu -> Conv(16) -> Relu -> Flatten -> Gemm(1024 -> 5)."""
    rng = np.random.default_rng(0)

    def arr(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [
        numpy_helper.from_array(arr(16, 3, 3, 3), "c1.w"),
        numpy_helper.from_array(1.0 + arr(16, scale=0.1), "bn.scale"),
        numpy_helper.from_array(arr(16, scale=0.1), "bn.bias"),
        numpy_helper.from_array(arr(16, scale=0.1), "bn.mean"),
        numpy_helper.from_array(1.0 + np.abs(arr(16, scale=0.1)), "bn.var"),
        numpy_helper.from_array(arr(16, 16, 3, 3, scale=0.1), "c2.w"),
        numpy_helper.from_array(arr(5, 1024, scale=0.05), "fc.w"),
        numpy_helper.from_array(arr(5, scale=0.1), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layers")
    onnx.save(_conv_net(), path / "model.onnx")
    np.savez(path / "data.npz", x=np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32))
    return path


def _run(folder: Path, name: str, pipeline: str, target: str = "gpu", **options: Any) -> dict[str, Any]:
    """optimize on the gpu target: latency is estimated here, so every quantized node stays quantized."""
    result = optimize(
        folder / "model.onnx", folder / f"{name}.onnx", target=target, pipeline=pipeline, data=folder / "data.npz",
        report=folder / f"{name}.json", latency_runs=2, progress=False, **options,
    )
    return result.report


@pytest.fixture(scope="module")
def quantized(folder: Path) -> dict[str, Any]:
    return _run(folder, "quantized", f"{CLEANUP},quantize-static")


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["layers"]}


def test_every_compute_layer_has_a_row_in_graph_order(quantized: dict[str, Any]) -> None:
    assert [row["name"] for row in quantized["layers"]] == ["conv1", "conv2", "fc"]
    assert [row["op_type"] for row in quantized["layers"]] == ["Conv", "Conv", "Gemm"]


def test_rows_carry_shapes_params_and_macs(quantized: dict[str, Any]) -> None:
    conv1 = _by_name(quantized)["conv1"]
    assert conv1["outputs"][0]["shape"] == ["N", 16, 8, 8]
    assert conv1["inputs"][0]["shape"] == ["N", 3, 8, 8]
    assert conv1["macs"] == 16 * 8 * 8 * 3 * 3 * 3
    assert conv1["params_before"] == 16 * 3 * 3 * 3
    assert conv1["params"] == 16 * 3 * 3 * 3 + 16  # the folded batch-norm became a bias


def test_quantized_weights_show_format_bits_and_granularity(quantized: dict[str, Any]) -> None:
    for row in quantized["layers"]:
        weight = row["weight"]
        assert weight["format"] == "qdq", row["name"]
        assert weight["bits"] == 8
        assert weight["granularity"] == "per-channel"
        assert weight["symmetric"] is True
        assert row["activation_bits"] == 8


def test_quantized_layers_have_a_measured_finite_error(quantized: dict[str, Any]) -> None:
    assert quantized["layer_error"]["measured"] == 3
    for row in quantized["layers"]:
        error = row["error"]
        assert error["measured"] is True
        assert error["identical"] is False
        assert 10.0 < error["sqnr_db"] < 80.0
        assert math.isclose(error["rel_rms"] ** 2, error["nsr"], rel_tol=1e-9)
    first = _by_name(quantized)["conv1"]["error"]
    assert first["added_nsr"] == pytest.approx(first["nsr"])  # nothing upstream: all of its noise is its own


def test_cleanup_only_layers_are_identical(folder: Path) -> None:
    report = _run(folder, "cleanup", CLEANUP)
    for row in report["layers"]:
        assert row["weight"]["format"] == "float"
        assert row["error"]["identical"] is True or row["error"]["sqnr_db"] > 100


def test_magnitude_pruning_shows_the_zeros(folder: Path) -> None:
    report = _run(folder, "sparse", f"{CLEANUP},prune-magnitude{{sparsity=0.5}}")
    for row in report["layers"]:
        assert row["weight"]["density"] == pytest.approx(0.5, abs=0.02), row["name"]


def test_channel_pruning_shows_the_channels_kept(folder: Path) -> None:
    report = _run(folder, "pruned", f"{CLEANUP},prune-channels{{ratio=0.5}}")
    rows = _by_name(report)
    assert rows["conv1"]["channels"]["out"] == [16, 8]
    assert rows["conv2"]["channels"]["in"] == [16, 8]
    assert rows["conv1"]["macs"] < rows["conv1"]["macs_before"]
    assert rows["conv1"]["error"]["measured"] is False
    assert "shape changed" in rows["conv1"]["error"]["reason"]


def test_layer_errors_can_be_skipped(folder: Path) -> None:
    report = _run(folder, "skipped", f"{CLEANUP},quantize-static", layer_errors=False)
    assert report["layer_error"]["skipped"] == "skipped on request"
    assert [row["weight"]["format"] for row in report["layers"]] == ["qdq"] * 3
    assert all(row["error"] == {"measured": False, "reason": "skipped on request"} for row in report["layers"])


def test_layers_are_in_the_json_report(folder: Path, quantized: dict[str, Any]) -> None:
    written = json.loads((folder / "quantized.json").read_text())
    assert written["layers"] == json.loads(json.dumps(quantized["layers"]))
    assert "layer_error" in written


def _tiny_pair() -> tuple[ir.Model, ir.Model, Dataset]:
    reference = ir.from_proto(_conv_net())
    optimized = reference.clone()
    weight = optimized.graph.initializers["c2.w"]
    weight.const_value = ir.Tensor(weight.const_value.numpy() * 1.1, name="c2.w")  # a 10 % error in conv2
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    return reference, optimized, Dataset({"x": x}, None, "test")


def test_added_noise_is_attributed_to_the_layer_that_made_it() -> None:
    reference, optimized, data = _tiny_pair()
    rows = {r["name"]: r for r in layer_table(reference, optimized, data).rows}
    assert rows["conv1"]["error"]["identical"] is True
    assert rows["conv2"]["error"]["sqnr_db"] == pytest.approx(20.0, abs=0.01)  # y' = 1.1 y: nsr = 0.01
    assert rows["conv2"]["error"]["added_nsr"] == pytest.approx(0.01, rel=1e-3)
    assert abs(rows["fc"]["error"]["added_nsr"]) < rows["conv2"]["error"]["added_nsr"]


def test_max_layers_caps_the_comparison() -> None:
    reference, optimized, data = _tiny_pair()
    table = layer_table(reference, optimized, data, max_layers=1)
    assert table.info["measured"] == 1
    assert table.rows[2]["error"] == {"measured": False, "reason": "over max_layers=1"}


def test_time_budget_stops_new_groups() -> None:
    reference, optimized, data = _tiny_pair()
    table = layer_table(reference, optimized, data, tensors_per_run=1, max_seconds=0.0)
    assert table.rows[0]["error"]["measured"] is True  # the first group always runs
    assert "time budget" in table.rows[1]["error"]["reason"]
    assert table.info["groups_skipped_for_time"] == 2


def test_max_samples_caps_the_samples() -> None:
    reference, optimized, data = _tiny_pair()
    assert layer_table(reference, optimized, data, max_samples=3).info["samples"] == 3
