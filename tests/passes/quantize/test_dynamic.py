"""quantize-dynamic: MatMul/Gemm with constant weights become DynamicQuantizeMatMul; Conv and the rest stay float."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.errors import PipelineError
from onnxpq.io import load_model, save_model
from onnxpq.passes.quantize.dynamic import QuantizeDynamicPass, quantize_int8_weight
from onnxpq.passes.quantize.matmul_nbits import MatMulNBitsPass
from onnxpq.validation.kernels import kernel_census

OPSET = 17
K, N = 64, 48


def _weight(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    opset_imports: Sequence[onnx.OperatorSetIdProto] = (),
) -> ir.Model:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", OPSET), *opset_imports]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _matmul_model(x_shape: Sequence[int | str] = ("b", "s", K), w: np.ndarray | None = None) -> ir.Model:
    w = _weight((K, N)) if w is None else w
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*x_shape[:-1], w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def _quantize(model: ir.Model, pass_: QuantizeDynamicPass | None = None) -> tuple[ir.Model, bool, dict]:
    """Run the pass in place under a context; return (model, modified, details)."""
    with PassContext() as ctx:
        result = (pass_ or QuantizeDynamicPass())(model)
        return result.model, result.modified, dict(ctx.details)


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def _census(model: ir.Model, tmp_path: Path):
    path = tmp_path / "quantized.onnx"
    onnx.save(ir.to_proto(model), path)
    return kernel_census(path)


# --------------------------------------------------------------------------- MatMul


@pytest.mark.parametrize(
    "x_shape, feed_shape",
    [((K,), (K,)), (("n", K), (5, K)), (("b", "s", K), (2, 7, K)), ((2, 3, K), (2, 3, K)), (("b", 4, "s", K), (2, 4, 3, K))],
    ids=["1d", "2d-dynamic-batch", "3d-batch-seq", "3d-static", "4d"],
)
def test_matmul_becomes_dynamic_quantize_matmul_within_int8_error(x_shape, feed_shape, tmp_path: Path) -> None:
    model = _matmul_model(x_shape)
    x = np.random.default_rng(1).standard_normal(feed_shape).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    model, modified, details = _quantize(model)
    assert modified and _ops(model) == ["DynamicQuantizeMatMul"]
    assert model.opset_imports["com.microsoft"] == 1
    (actual,) = _run(model, {"x": x})
    assert actual.shape == expected.shape
    assert _relative_error(actual, expected) < 0.02
    census = _census(model, tmp_path)
    assert census.integer == {"DynamicQuantizeMatMul": 1}
    assert census.float_total == 0
    assert details["quantized_node_names"] == ["mm"]
    assert details["weight_sqnr_db"]["mm"] > 35.0


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("weight_clip", ["minmax", "mse"])
def test_weight_options_stay_within_int8_error(per_channel: bool, weight_clip: str) -> None:
    w = _weight((K, N)) * np.linspace(0.1, 3.0, N, dtype=np.float32)  # column ranges differ 30x
    model = _matmul_model(w=w)
    x = np.random.default_rng(1).standard_normal((2, 5, K)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    model, _, _ = _quantize(model, QuantizeDynamicPass(per_channel=per_channel, weight_clip=weight_clip))
    scale = model.graph.initializers["W_scale"].const_value.numpy()
    assert scale.shape == ((N,) if per_channel else ())
    assert _relative_error(_run(model, {"x": x})[0], expected) < 0.02


def test_weights_are_symmetric_int8_per_output_column() -> None:
    w = _weight((K, N))
    values, scale, _ = quantize_int8_weight(w)
    assert values.dtype == np.int8 and values.shape == (K, N)
    assert values.min() >= -127  # narrow grid: -128 never used
    np.testing.assert_allclose(scale, np.abs(w.astype(np.float64)).max(axis=0) / 127.0, rtol=1e-12)
    transposed, scale_t, _ = quantize_int8_weight(np.ascontiguousarray(w.T), transposed=True)
    np.testing.assert_array_equal(transposed, values)
    np.testing.assert_array_equal(scale_t, scale)


def test_activation_times_activation_matmul_stays_float() -> None:
    model = _model(
        [helper.make_node("MatMul", ["q", "k"], ["y"], name="scores")],
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["b", 8, 16]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, ["b", 16, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 8])],
    )
    model, modified, details = _quantize(model)
    assert not modified and _ops(model) == ["MatMul"]
    assert details["left_float"] == {"scores": "activation x activation product"}


def test_weight_that_is_a_graph_input_stays_float() -> None:
    model = _matmul_model()
    model.graph.inputs.append(model.graph.initializers["W"])
    model, modified, details = _quantize(model)
    assert not modified
    assert "graph input" in details["left_float"]["mm"]


def test_graph_output_keeps_its_name_and_shape() -> None:
    model, _, _ = _quantize(_matmul_model())
    (output,) = model.graph.outputs
    assert output.name == "y"
    assert output.producer().op_type == "DynamicQuantizeMatMul"
    assert [d if isinstance(d, int) else str(d) for d in output.shape] == ["b", "s", N]


def test_weight_shared_by_two_matmuls_is_quantized_once() -> None:
    w = _weight((K, N))
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"], name="mm1"),
            helper.make_node("MatMul", ["x2", "W"], ["b"], name="mm2"),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["n", K]),
        ],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", N]), helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(w, "W")],
    )
    model, _, _ = _quantize(model)
    assert sorted(model.graph.initializers) == ["W_int8", "W_scale"]
    assert all(node.inputs[1].name == "W_int8" for node in model.graph)


# --------------------------------------------------------------------------- Gemm

M = 6


def _gemm_model(*, trans_b: int = 0, alpha: float = 1.0, beta: float = 1.0, c_shape: tuple[int, ...] | None = (N,)) -> tuple[ir.Model, np.ndarray, np.ndarray | None]:
    w = _weight((N, K) if trans_b else (K, N))
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    c = None
    if c_shape is not None:
        c = np.random.default_rng(3).standard_normal(c_shape).astype(np.float32)
        inits.append(numpy_helper.from_array(c, "C"))
        inputs.append("C")
    model = _model(
        [helper.make_node("Gemm", inputs, ["y"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        inits,
    )
    return model, w, c


GEMM_CASES = {
    "bias-row": dict(c_shape=(N,)),
    "no-bias": dict(c_shape=None),
    "bias-1xN": dict(c_shape=(1, N)),
    "bias-scalar": dict(c_shape=()),
    "bias-MxN": dict(c_shape=(M, N)),
    "bias-Mx1": dict(c_shape=(M, 1)),
    "transB": dict(trans_b=1),
    "alpha-beta": dict(alpha=0.5, beta=2.0),
    "transB-alpha-beta-MxN": dict(trans_b=1, alpha=1.5, beta=-0.5, c_shape=(M, N)),
}


@pytest.mark.parametrize("case", list(GEMM_CASES), ids=list(GEMM_CASES))
def test_gemm_becomes_dynamic_quantize_matmul_within_int8_error(case: str, tmp_path: Path) -> None:
    model, _, _ = _gemm_model(**GEMM_CASES[case])
    x = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    model, modified, _ = _quantize(model)
    assert modified and "DynamicQuantizeMatMul" in _ops(model) and "Gemm" not in _ops(model)
    (actual,) = _run(model, {"x": x})
    assert _relative_error(actual, expected) < 0.02
    assert _census(model, tmp_path).integer == {"DynamicQuantizeMatMul": 1}


@pytest.mark.parametrize("case", ["bias-row", "bias-1xN", "bias-scalar", "bias-MxN", "alpha-beta", "transB-alpha-beta-MxN"])
def test_gemm_bias_is_kept_exact(case: str) -> None:
    """With x = 0 the integer product is exactly 0, so the output is beta * C bit for bit."""
    params = GEMM_CASES[case]
    model, _, c = _gemm_model(**params)
    model, _, _ = _quantize(model)
    (actual,) = _run(model, {"x": np.zeros((M, K), np.float32)})
    expected = np.broadcast_to(np.float32(params.get("beta", 1.0)) * c, (M, N))
    np.testing.assert_array_equal(actual, expected)


def test_gemm_row_bias_goes_into_the_node_and_the_old_bias_is_dropped() -> None:
    model, _, _ = _quantize(_gemm_model()[0])
    (node,) = model.graph
    assert node.op_type == "DynamicQuantizeMatMul" and len(node.inputs) == 5 and node.inputs[3] is None
    assert "C" not in model.graph.initializers and "W" not in model.graph.initializers


def test_gemm_with_trans_a_stays_float() -> None:
    model = _model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transA=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, M])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(_weight((K, N)), "W")],
    )
    model, modified, details = _quantize(model)
    assert not modified and _ops(model) == ["Gemm"]
    assert "transA" in details["left_float"]["gemm"]


def test_gemm_with_activation_bias_adds_it_in_float() -> None:
    w = _weight((K, N))
    model = _model(
        [helper.make_node("Gemm", ["x", "W", "c"], ["y"], name="gemm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K]), helper.make_tensor_value_info("c", TensorProto.FLOAT, [M, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(w, "W")],
    )
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((M, K)).astype(np.float32), "c": rng.standard_normal((M, N)).astype(np.float32)}
    (expected,) = _run(model, feeds)
    model, modified, _ = _quantize(model)
    assert modified and _ops(model) == ["DynamicQuantizeMatMul", "Add"]
    assert _relative_error(_run(model, feeds)[0], expected) < 0.02


# --------------------------------------------------------------------------- what is left alone


def _conv_gemm_model() -> ir.Model:
    conv_w = _weight((4, 3, 3, 3))
    return _model(
        [
            helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "Wg"], ["y"], name="fc"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(conv_w, "Wc"), numpy_helper.from_array(_weight((64, 10)), "Wg")],
    )


def test_conv_is_never_dynamically_quantized(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _conv_gemm_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    with caplog.at_level(logging.DEBUG, logger="onnxpq.passes.quantize.dynamic"):
        model, modified, details = _quantize(model)
    assert modified and _ops(model) == ["Conv", "Flatten", "DynamicQuantizeMatMul"]
    assert details["conv_left_float"] == ["conv"]
    assert "'conv' (Conv) left in float" in caplog.text and "ConvInteger" in caplog.text
    census = _census(model, tmp_path)
    assert "ConvInteger" not in census.integer and census.integer == {"DynamicQuantizeMatMul": 1}
    assert _relative_error(_run(model, {"x": x})[0], expected) < 0.02


def test_conv_in_op_types_is_refused() -> None:
    with pytest.raises(PipelineError, match="ConvInteger"):
        QuantizeDynamicPass(op_types=("MatMul", "Conv"))


def test_unknown_op_type_is_refused() -> None:
    with pytest.raises(PipelineError, match="supported: MatMul, Gemm"):
        QuantizeDynamicPass(op_types=("Add",))


def test_op_types_limits_what_is_quantized() -> None:
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm"),
            helper.make_node("Gemm", ["h", "W2"], ["y"], name="gemm"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(_weight((K, K)), "W1"), numpy_helper.from_array(_weight((K, N), 1), "W2")],
    )
    model, _, _ = _quantize(model, QuantizeDynamicPass(op_types=("Gemm",)))
    assert _ops(model) == ["MatMul", "DynamicQuantizeMatMul"]


def test_small_weights_are_skipped_per_min_params() -> None:
    model = _model(
        [
            helper.make_node("MatMul", ["x", "Wsmall"], ["h"], name="small"),
            helper.make_node("MatMul", ["h", "Wbig"], ["y"], name="big"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(_weight((8, K)), "Wsmall"), numpy_helper.from_array(_weight((K, N)), "Wbig")],
    )
    model, _, details = _quantize(model, QuantizeDynamicPass(min_params=8 * K + 1))
    assert _ops(model) == ["MatMul", "DynamicQuantizeMatMul"]
    assert "min_params" in details["left_float"]["small"]
    assert "Wsmall" in model.graph.initializers


def test_excluded_nodes_are_untouched() -> None:
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="keep"),
            helper.make_node("MatMul", ["h", "W2"], ["y"], name="quantize"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(_weight((K, K)), "W1"), numpy_helper.from_array(_weight((K, N), 1), "W2")],
    )
    model, _, details = _quantize(model, QuantizeDynamicPass(exclude_nodes=("keep",)))
    keep, quantized = list(model.graph)
    assert (keep.op_type, keep.name, keep.inputs[1].name) == ("MatMul", "keep", "W1")
    assert (quantized.op_type, quantized.name) == ("DynamicQuantizeMatMul", "quantize")
    assert details["left_float"] == {"keep": "excluded by name"}


def test_unnamed_node_is_excluded_by_its_generated_label() -> None:
    """An unnamed node is known as ``<op>_<index>``, the name quantize-static gives it."""
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(_weight((K, N)), "W")],
    )
    model, modified, details = _quantize(model, QuantizeDynamicPass(exclude_nodes=("MatMul_0",)))
    assert not modified and details["left_float"] == {"MatMul_0": "excluded by name"}
    model, modified, details = _quantize(model)
    assert modified and [(n.op_type, n.name) for n in model.graph] == [("DynamicQuantizeMatMul", "MatMul_0")]


def test_only_the_float_matmuls_of_a_partly_quantized_model_are_quantized(caplog: pytest.LogCaptureFixture) -> None:
    model = _model(
        [
            helper.make_node("DequantizeLinear", ["Wq", "s"], ["W"], name="dq"),
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"),
            helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [
            numpy_helper.from_array(np.ones((K, K), np.int8), "Wq"),
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(_weight((K, N)), "W2"),
        ],
    )
    with caplog.at_level(logging.INFO, logger="onnxpq.passes.quantize.dynamic"):
        model, modified, details = _quantize(model)
    assert modified
    assert "already contains DequantizeLinear" in caplog.text
    assert details["quantized_node_names"] == ["mm2"]  # mm1 reads a dequantized weight: not a float initializer
    assert "MatMul" in _ops(model) and "DynamicQuantizeMatMul" in _ops(model)


def test_second_run_reports_unmodified() -> None:
    model, first, _ = _quantize(_matmul_model())
    model, second, _ = _quantize(model)
    assert first and not second


def test_matmul_in_a_subgraph_is_left_untouched() -> None:
    w = _weight((K, N))
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wb"], ["t"], name="inner")], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", N])], [numpy_helper.from_array(w, "Wb")],
    )
    other = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["e"], name="inner_else")], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", N])],
    )
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=other)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(w, "W")],
    )
    model, modified, details = _quantize(model)
    assert not modified
    assert details["left_float"]["inner"] == "inside a subgraph (not handled)"
    assert [n.op_type for n in model.graph.all_nodes()] == ["If", "MatMul", "MatMul"]


# --------------------------------------------------------------------------- pipelines and external data


def _mlp_model(hidden: int = 256, layers: int = 2) -> ir.Model:
    nodes, inits = [], []
    width, prev = K, "x"
    for i in range(layers):
        out_width = hidden if i < layers - 1 else N
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"], name=f"fc{i}"))
        inits.append(numpy_helper.from_array(_weight((width, out_width), i), f"W{i}"))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
        width = out_width
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
        [helper.make_tensor_value_info(f"h{layers - 1}", TensorProto.FLOAT, ["b", "s", N])],
        inits,
    )


def test_pass_manager_structure_check_passes() -> None:
    model = _mlp_model()
    x = np.random.default_rng(1).standard_normal((2, 5, K)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    manager = PassManager([QuantizeDynamicPass()], progress=False)
    result = manager(model)
    assert result.modified
    (record,) = manager.records
    assert record.modified and record.details["quantized_nodes"] == 2
    assert _relative_error(_run(result.model, {"x": x})[0], expected) < 0.02


def test_runs_after_matmul_nbits_on_the_remaining_matmuls(tmp_path: Path) -> None:
    """matmul-nbits takes the large weight (64x256 >= min_params), quantize-dynamic the smaller one (256x48)."""
    model = _mlp_model(hidden=256)
    manager = PassManager([MatMulNBitsPass(min_params=K * 256), QuantizeDynamicPass()], progress=False)
    result = manager(model)
    assert [n.op_type for n in result.model.graph] == ["MatMulNBits", "Relu", "DynamicQuantizeMatMul"]
    assert _census(result.model, tmp_path).integer == {"DynamicQuantizeMatMul": 1, "MatMulNBits": 1}


def test_external_data_model_is_quantized_with_low_peak_memory(tmp_path: Path) -> None:
    """Eight 512x1024 float32 weights (16 MiB) in an external file: the pass holds one at a time."""
    size, count = (512, 1024), 8
    nodes, inits = [], []
    for i in range(count):
        nodes.append(helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"], name=f"mm{i}"))
        inits.append(numpy_helper.from_array(_weight(size, i), f"W{i}"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size[0]])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["n", size[1]]) for i in range(count)], inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    onnx.save(proto, source, save_as_external_data=True, location="model.data", size_threshold=0)
    x = np.random.default_rng(1).standard_normal((3, size[0])).astype(np.float32)
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    model = load_model(source)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    total = count * size[0] * size[1] * 4
    tracemalloc.start()
    try:
        _, modified, _ = _quantize(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert modified
    assert peak < 0.5 * total, f"peak {peak / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of weights"
    (tmp_path / "out").mkdir()
    out = save_model(model, tmp_path / "out" / "model.onnx")
    actual = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, e in zip(actual, expected):
        assert _relative_error(a, e) < 0.02


def test_pipeline_text_round_trips() -> None:
    from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline

    text = "quantize-dynamic{op_types=[MatMul],per_channel=false,exclude_nodes=[a,b],min_params=1024,weight_clip=mse}"
    (pass_,) = parse_pipeline(text)
    assert pass_ == QuantizeDynamicPass(("MatMul",), per_channel=False, exclude_nodes=("a", "b"), min_params=1024, weight_clip="mse")
    assert format_pipeline([pass_]) == text
