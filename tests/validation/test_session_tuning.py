"""Session tuning: the mechanism (what is measured, what is chosen, the recipe), never the timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.passes.quantize.matmul_nbits import MatMulNBitsPass
from onnxpq.validation.session_tuning import (
    MIN_RUNS,
    QDQ_MATMULNBITS_ACCURACY,
    SessionSetting,
    build_session_options,
    make_recipe,
    session_from_recipe,
    tune_session,
)

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[N, 16] x) => (float[N, 8] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def _mlp(path: Path, k: int = 16, hidden: int = 32, n: int = 8) -> Path:
    text = TEXT.replace("16", str(k)).replace("float[N, 8]", f"float[N, {n}]")
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((k, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((hidden, n)).astype(np.float32), "w2"),
    ])
    onnx.save(proto, path)
    return path


def _feed(k: int = 16, batch: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((batch, k)).astype(np.float32)}


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return _mlp(tmp_path / "mlp.onnx")


def test_chosen_setting_is_one_that_was_measured(mlp: Path) -> None:
    tuning = tune_session(mlp, _feed(), budget_s=0.5, max_threads=2)
    assert tuning.measured
    assert tuning.best in {row.setting for row in tuning.rows}
    assert any(row.chosen for row in tuning.rows)
    assert all(row.chosen == (row.setting == tuning.best) for row in tuning.rows)


def test_every_factor_is_measured_with_at_least_min_runs(mlp: Path) -> None:
    tuning = tune_session(mlp, _feed(), budget_s=0.5, max_threads=2)
    factors = {row.factor for row in tuning.rows}
    assert {"intra_op_threads", "graph_optimization", "execution_mode"} <= factors
    assert {row.setting.intra_op_threads for row in tuning.rows if row.factor == "intra_op_threads"} == {1, 2}
    assert {row.setting.graph_optimization for row in tuning.rows if row.factor == "graph_optimization"} == {
        "basic", "extended", "all"}
    assert all(row.runs >= MIN_RUNS and row.median_ms > 0 for row in tuning.rows)


def test_one_core_measures_no_thread_factor(mlp: Path) -> None:
    tuning = tune_session(mlp, _feed(), budget_s=0.3, max_threads=1)
    assert "intra_op_threads" not in {row.factor for row in tuning.rows}
    assert tuning.best.intra_op_threads == 1


def test_recipe_of_the_best_setting_loads_and_gives_the_default_outputs(mlp: Path) -> None:
    tuning = tune_session(mlp, _feed(), budget_s=0.5, max_threads=2)
    recipe = make_recipe(["CPUExecutionProvider"], tuning.best)
    got = session_from_recipe(mlp, recipe).run(None, _feed())[0]
    want = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]).run(None, _feed())[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert recipe["session_options"]["intra_op_num_threads"] == tuning.best.intra_op_threads


def test_recipe_sets_every_session_option() -> None:
    setting = SessionSetting(2, "extended", "parallel", (("session.intra_op.allow_spinning", "0"),))
    options = build_session_options(make_recipe(["CPUExecutionProvider"], setting)["session_options"])
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_missing_provider_is_not_measured_and_says_why(mlp: Path) -> None:
    tuning = tune_session(mlp, _feed(), providers=["NoSuchExecutionProvider"], budget_s=0.3)
    assert not tuning.measured and not tuning.rows
    assert "NoSuchExecutionProvider is not available" in tuning.reason
    assert tuning.best == SessionSetting()


def test_matmulnbits_accuracy_level_is_measured_and_only_recommended(tmp_path: Path) -> None:
    path = _mlp(tmp_path / "big.onnx", k=256, hidden=256, n=8)
    model = ir.load(path)
    MatMulNBitsPass(block_size=32, accuracy_level=1, min_params=1024)(model)
    assert any(node.op_type == "MatMulNBits" for node in model.graph)
    quantized = tmp_path / "q.onnx"
    ir.save(model, quantized)
    tuning = tune_session(quantized, _feed(k=256), budget_s=0.5, max_threads=1)
    levels = {row.setting.matmulnbits_accuracy_level for row in tuning.rows if row.factor == "matmulnbits_accuracy_level"}
    assert levels == {1, 4}
    assert tuning.best.matmulnbits_accuracy_level is None  # a node attribute: never part of the recipe
    assert all("accuracy_level=" in note and "not applied" in note for note in tuning.recommendations)


def test_blocked_dequantize_matmul_tunes_the_session_accuracy_level(tmp_path: Path) -> None:
    k, n, block = 64, 16, 32
    rng = np.random.default_rng(0)
    weight = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    scale = (rng.random((k // block, n)) * 0.1 + 0.01).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=block),
         helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor("wq", TensorProto.INT4, [k, n], weight.flatten().tolist()),
         numpy_helper.from_array(scale, "ws")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / "dq.onnx"
    onnx.save(model, path)
    tuning = tune_session(path, _feed(k=k), budget_s=0.5, max_threads=1)
    measured = {dict(row.setting.config_entries).get(QDQ_MATMULNBITS_ACCURACY)
                for row in tuning.rows if row.factor == "qdq_matmulnbits_accuracy_level"}
    assert measured == {"1", "4"}
    assert dict(tuning.best.config_entries).get(QDQ_MATMULNBITS_ACCURACY) in measured
