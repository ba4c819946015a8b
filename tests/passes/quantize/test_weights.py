"""quantize-weights: n-bit weight-only DQ against affine's numerics in onnxruntime, opset fallbacks, GPTQ, sharing, manager."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.analysis.macs import model_cost
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.affine import quantize_weight, sqnr_db
from onnxpq.passes.quantize.qdq import BITS_KEY
from onnxpq.passes.quantize.weights import (
    QuantizeWeightsPass,
    _conv_rows,
    _input_spec,
    _layout,
    gptq_quantize,
)

BITS = (2, 3, 4, 5, 6, 7, 8)
GRANULARITIES = ("per-tensor", "per-channel", "per-group")
BLOCK = 4  # small blocks so that every test weight has several, the last one partial


# --------------------------------------------------------------------------- models


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[TensorProto],
    opset: int = 21,
) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weight(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _matmul(w: np.ndarray, opset: int = 21) -> ir.Model:
    k, n = w.shape
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [_float("x", ["N", k])], [_float("y", ["N", n])],
                  [numpy_helper.from_array(w, "W")], opset)


def _gemm(w: np.ndarray, opset: int = 21) -> ir.Model:
    """``y = x Wᵀ + b`` with transB=1, W [N, K]."""
    n, k = w.shape
    bias = np.linspace(-1, 1, n).astype(np.float32)
    return _model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)], [_float("x", ["N", k])], [_float("y", ["N", n])],
                  [numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "b")], opset)


def _conv(w: np.ndarray, opset: int = 21, *, group: int = 1, **attrs: object) -> ir.Model:
    o, i, kh, kw = w.shape
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", group=group, **attrs)
    return _model([node], [_float("x", ["N", i * group, 7, 6])], [_float("y", ["N", "C", "H", "W"])], [numpy_helper.from_array(w, "W")], opset)


def _conv_transpose(w: np.ndarray, opset: int = 21) -> ir.Model:
    node = helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="deconv", strides=[2, 2])
    return _model([node], [_float("x", ["N", w.shape[0], 4, 4])], [_float("y", ["N", "C", "H", "W"])], [numpy_helper.from_array(w, "W")], opset)


def _session(model: ir.Model, *, fuse: bool = True) -> ort.InferenceSession:
    """A CPU session of the checked model: all graph optimisations, or (``fuse=False``) BASIC only.

    With every optimisation onnxruntime 1.32 fuses DequantizeLinear → MatMul into
    MatMulNBits with accuracy_level 4, which quantizes the *activations* to int8
    (about 1 % output error on its own); BASIC keeps the float MatMul, so the
    output is exactly the float op on the dequantized weight.
    """
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    """Outputs of the model's own arithmetic (no MatMulNBits fusion); the fully optimised session must load too."""
    _session(model)
    return _session(model, fuse=False).run(None, {"x": x})[0]


def _quantize(model: ir.Model, calibration: dict[str, np.ndarray] | None = None, **options: object) -> tuple[ir.passes.PassResult, dict]:
    with PassContext(calibration=calibration) as ctx:
        result = QuantizeWeightsPass(**options)(model)
    return result, ctx.details


def _dq_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type == "DequantizeLinear"]


def _reference_matmul(x: np.ndarray, w_hat: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ w_hat


def _reference_gemm(x: np.ndarray, w_hat: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ w_hat.T + np.linspace(-1, 1, w_hat.shape[0])


def _reference_conv(x: np.ndarray, w_hat: np.ndarray) -> np.ndarray:
    """Float conv of x with w_hat, evaluated by onnxruntime on a float model (the dequantized weight as initializer)."""
    return _run(_conv(w_hat.astype(np.float32)), x).astype(np.float64)


# (build the model, reference y(x, ŵ), input shape, weight shape, output-channel axis, reduction axis)
OPS = {
    "matmul": (_matmul, _reference_matmul, (5, 20), (20, 6), 1, 0),
    "gemm": (_gemm, _reference_gemm, (5, 20), (6, 20), 0, 1),
    "conv": (_conv, _reference_conv, (2, 6, 7, 6), (4, 6, 3, 3), 0, 1),
}


def _affine_reference(w: np.ndarray, bits: int, granularity: str, out_axis: int, red_axis: int, symmetric: bool) -> np.ndarray:
    if granularity == "per-tensor":
        q = quantize_weight(w, bits, axis=None, symmetric=symmetric)
    elif granularity == "per-channel":
        q = quantize_weight(w, bits, axis=out_axis, symmetric=symmetric)
    else:
        q = quantize_weight(w, bits, axis=red_axis, block_size=BLOCK, symmetric=symmetric)
    return q.dequantized()


# --------------------------------------------------------------------------- round to nearest


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("op", list(OPS))
def test_output_equals_float_op_on_affine_dequantized_weight(op: str, bits: int, granularity: str, symmetric: bool) -> None:
    build, reference, x_shape, w_shape, out_axis, red_axis = OPS[op]
    w = _weight(w_shape)
    model = build(w)
    result, _ = _quantize(model, bits=bits, granularity=granularity, block_size=BLOCK, symmetric=symmetric)
    assert result.modified
    x = np.random.default_rng(1).normal(size=x_shape).astype(np.float32)
    w_hat = _affine_reference(w.astype(np.float64), bits, granularity, out_axis, red_axis, symmetric)
    np.testing.assert_allclose(_run(model, x), reference(x, w_hat), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_output_sqnr_grows_with_bits(granularity: str) -> None:
    w = _weight((32, 16))
    x = np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)
    y = x @ w
    sqnrs = []
    for bits in BITS:
        model = _matmul(w)
        _quantize(model, bits=bits, granularity=granularity, block_size=8)
        sqnrs.append(sqnr_db(y, _run(model, x)))
    assert all(a < b for a, b in zip(sqnrs, sqnrs[1:])), sqnrs


def test_weight_sqnr_is_noted_per_layer() -> None:
    w = _weight((20, 6))
    model = _matmul(w)
    _, details = _quantize(model, bits=5)
    expected = sqnr_db(w, quantize_weight(w, 5, axis=1).dequantized())
    assert details["layers"]["mm"]["bits"] == 5
    assert details["layers"]["mm"]["granularity"] == "per-channel"
    assert details["weight_sqnr_db"]["mm"] == pytest.approx(expected, abs=0.01)
    assert details["quantized_node_names"] == ["mm"]


def test_conv_transpose_weight_is_quantized_per_output_channel() -> None:
    w = _weight((4, 3, 3, 3))  # [C_in, C_out, kh, kw]: output channels on axis 1
    model = _conv_transpose(w)
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 4)).astype(np.float32)
    _quantize(model, bits=4)
    (dq,) = _dq_nodes(model)
    assert dq.attributes["axis"].value == 1
    w_hat = quantize_weight(w, 4, axis=1).dequantized().astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _run(_conv_transpose(w_hat), x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- storage types and opsets


@pytest.mark.parametrize(("symmetric", "dtype"), [(True, ir.DataType.INT4), (False, ir.DataType.UINT4)])
def test_4_bits_on_opset_21_are_stored_as_int4(symmetric: bool, dtype: ir.DataType) -> None:
    model = _matmul(_weight((20, 6)))
    _quantize(model, bits=4, symmetric=symmetric)
    (dq,) = _dq_nodes(model)
    assert dq.inputs[0].const_value.dtype == dtype
    assert dq.inputs[2].const_value.dtype == dtype
    assert dq.metadata_props[BITS_KEY] == "4"
    _session(model)


def test_3_bits_are_int8_container_with_bits_metadata() -> None:
    model = _matmul(_weight((20, 6)))
    _, details = _quantize(model, bits=3)
    (dq,) = _dq_nodes(model)
    values = dq.inputs[0].const_value
    assert values.dtype == ir.DataType.INT8
    assert dq.metadata_props[BITS_KEY] == "3"
    assert values.numpy().min() >= -4 and values.numpy().max() <= 3
    assert details["layers"]["mm"]["storage"] == "int8"


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_output_loads_in_onnxruntime_for_every_opset(opset: int, bits: int, granularity: str) -> None:
    w = _weight((4, 6, 3, 3))
    model = _conv(w, opset)
    _quantize(model, bits=bits, granularity=granularity, block_size=BLOCK)
    (dq,) = _dq_nodes(model)
    assert dq.metadata_props[BITS_KEY] == str(bits)
    if opset < 21:
        assert "block_size" not in dq.attributes
        assert dq.inputs[0].const_value.dtype == ir.DataType.INT8
    x = np.random.default_rng(1).normal(size=(1, 6, 7, 6)).astype(np.float32)
    assert np.all(np.isfinite(_run(model, x)))


def test_per_group_on_opset_13_falls_back_to_per_channel(caplog: pytest.LogCaptureFixture) -> None:
    w = _weight((4, 6, 3, 3))
    model = _conv(w, 13)
    with caplog.at_level(logging.INFO, logger="onnxpq.passes.quantize.weights"):
        _, details = _quantize(model, bits=4, granularity="per-group", block_size=BLOCK)
    (dq,) = _dq_nodes(model)
    assert dq.attributes["axis"].value == 0 and "block_size" not in dq.attributes
    assert dq.inputs[0].const_value.dtype == ir.DataType.INT8 and dq.metadata_props[BITS_KEY] == "4"
    assert details["granularity"] == "per-channel"
    assert any("per-group" in text for text in details["fallbacks"])
    assert any("INT4" in text for text in details["fallbacks"])
    assert "per-channel instead" in caplog.text
    x = np.random.default_rng(1).normal(size=(1, 6, 7, 6)).astype(np.float32)
    w_hat = quantize_weight(w, 4, axis=0).dequantized()
    np.testing.assert_allclose(_run(model, x), _reference_conv(x, w_hat), rtol=1e-4, atol=1e-4)


def test_per_channel_on_opset_11_falls_back_to_per_tensor() -> None:
    model = _matmul(_weight((20, 6)), opset=11)
    _, details = _quantize(model, bits=8)
    (dq,) = _dq_nodes(model)
    assert "axis" not in dq.attributes and dq.inputs[1].const_value.numpy().ndim == 0
    assert details["granularity"] == "per-tensor"
    _session(model)


def test_opset_below_10_is_left_unchanged() -> None:
    model = _matmul(_weight((20, 6)), opset=9)
    result, details = _quantize(model, bits=8)
    assert not result.modified and not _dq_nodes(model)
    assert "opset" in details["skipped"]


@pytest.mark.parametrize(("opset", "quantized"), [(17, False), (21, True)])
def test_float16_weight_needs_opset_19(opset: int, quantized: bool) -> None:
    w = _weight((20, 6)).astype(np.float16)
    proto_nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    model = _model(proto_nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 20])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 6])], [numpy_helper.from_array(w, "W")], opset)
    result, _ = _quantize(model, bits=8)
    assert result.modified is quantized
    x = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float16)
    assert _run(model, x).dtype == np.float16


# --------------------------------------------------------------------------- per-node options


def _two_layer() -> ir.Model:
    """conv1 (Conv) -> Flatten -> fc2 (Gemm) -> fc3 (MatMul)."""
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["h"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W2"], ["g"], name="fc2", transB=1),
        helper.make_node("MatMul", ["g", "W3"], ["y"], name="fc3"),
    ]
    inits = [numpy_helper.from_array(_weight((4, 2, 3, 3), 1), "W1"), numpy_helper.from_array(_weight((10, 64), 2), "W2"),
             numpy_helper.from_array(_weight((10, 3), 3), "W3")]
    return _model(nodes, [_float("x", ["N", 2, 4, 4])], [_float("y", ["N", 3])], inits)


def _bits_by_node(model: ir.Model) -> dict[str, int]:
    return {use.node.name: int(dq.metadata_props[BITS_KEY]) for dq in _dq_nodes(model) for use in dq.outputs[0].uses()}


def test_bits_per_node_overrides_the_default() -> None:
    model = _two_layer()
    _, details = _quantize(model, bits=8, bits_per_node=("conv1:4", "fc3:3"))
    assert _bits_by_node(model) == {"conv1": 4, "fc2": 8, "fc3": 3}
    assert details["bits"] == {"conv1": 4, "fc2": 8, "fc3": 3}
    _session(model)


def test_bits_per_node_naming_no_node_warns(caplog: pytest.LogCaptureFixture) -> None:
    model = _two_layer()
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.weights"):
        _, details = _quantize(model, bits_per_node=("conv9:4",))
    assert details["bits_per_node_unmatched"] == ["conv9"]
    assert "conv9" in caplog.text


def test_excluded_nodes_keep_their_float_weight() -> None:
    model = _two_layer()
    w2 = model.graph.initializers["W2"].const_value.numpy().copy()
    _quantize(model, bits=4, exclude_nodes=("fc2",))
    fc2 = next(node for node in model.graph if node.name == "fc2")
    assert fc2.inputs[1].name == "W2" and fc2.inputs[1].is_initializer()
    np.testing.assert_array_equal(fc2.inputs[1].const_value.numpy(), w2)
    assert set(_bits_by_node(model)) == {"conv1", "fc3"}


def test_min_params_skips_small_weights() -> None:
    model = _two_layer()
    _, details = _quantize(model, bits=4, min_params=100)  # W1 has 72, W2 640, W3 30 parameters
    assert set(_bits_by_node(model)) == {"fc2"}
    assert details["skipped_nodes"] == 2


def test_model_cost_reports_the_chosen_weight_bits() -> None:
    model = _two_layer()
    _quantize(model, bits=8, bits_per_node=("conv1:4", "fc3:3"))
    cost = model_cost(model, {"x": [1, 2, 4, 4]})
    assert {node.node: node.weight_bits for node in cost.nodes} == {"conv1": 4, "fc2": 8, "fc3": 3}
    weights = 72 * 4 + 640 * 8 + 30 * 3
    scales = 32 * (4 + 10 + 3)  # float32, one per output channel
    zero_points = 4 * 4 + 10 * 8 + 3 * 8  # int4 for conv1, int8 containers for fc2 and fc3
    assert cost.weight_bits_total == weights + scales + zero_points


def test_unnamed_nodes_are_named_and_reported() -> None:
    model = _matmul(_weight((20, 6)))
    next(iter(model.graph)).name = ""
    _, details = _quantize(model, bits=8)
    assert details["quantized_node_names"] == ["MatMul_0"]
    assert next(node for node in model.graph if node.op_type == "MatMul").name == "MatMul_0"


# --------------------------------------------------------------------------- what is left alone


def test_float_initializer_is_removed_once_every_use_is_replaced() -> None:
    model = _matmul(_weight((20, 6)))
    _quantize(model, bits=8)
    assert "W" not in model.graph.initializers
    assert {v.const_value.dtype for v in model.graph.initializers.values()} == {ir.DataType.INT8, ir.DataType.FLOAT}


def test_already_quantized_model_is_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    model = _matmul(_weight((20, 6)))
    _quantize(model, bits=8)
    before = ir.to_proto(model).SerializeToString()
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.weights"):
        result, details = _quantize(model, bits=4)
    assert not result.modified
    assert ir.to_proto(model).SerializeToString() == before
    assert "already" in details["skipped"] and "already contains DequantizeLinear" in caplog.text


def test_weight_computed_in_the_graph_is_left_alone() -> None:
    nodes = [helper.make_node("Neg", ["V"], ["W"]), helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    model = _model(nodes, [_float("x", ["N", 20])], [_float("y", ["N", 6])], [numpy_helper.from_array(_weight((20, 6)), "V")])
    result, details = _quantize(model)
    assert not result.modified and not _dq_nodes(model) and details["quantized_nodes"] == 0


def test_weight_shared_with_a_non_target_op_is_left_alone() -> None:
    """A tied embedding: W [V, D] is read by Gather (lookup) and by Gemm transB=1 (logits)."""
    nodes = [
        helper.make_node("Gather", ["W", "ids"], ["e"], name="embed"),
        helper.make_node("Gemm", ["e", "W"], ["y"], name="logits", transB=1),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])], [_float("y", ["N", 10])],
                   [numpy_helper.from_array(_weight((10, 8)), "W")])
    result, _ = _quantize(model, bits=4)
    assert not result.modified and not _dq_nodes(model)


def test_weight_shared_by_two_matmuls_is_quantized_once() -> None:
    w = _weight((20, 6))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm1"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["x", "W"], ["b"], name="mm2"), helper.make_node("Add", ["r", "b"], ["y"], name="add")]
    model = _model(nodes, [_float("x", ["N", 20])], [_float("y", ["N", 6])], [numpy_helper.from_array(w, "W")])
    _, details = _quantize(model, bits=4)
    (dq,) = _dq_nodes(model)
    assert {use.node.name for use in dq.outputs[0].uses()} == {"mm1", "mm2"}
    assert "W" not in model.graph.initializers
    assert details["layers"]["mm1"]["shared_with"] == ["mm1", "mm2"]
    x = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32)
    w_hat = quantize_weight(w, 4, axis=1).dequantized()
    np.testing.assert_allclose(_run(model, x), np.maximum(x @ w_hat, 0) + x @ w_hat, rtol=1e-4, atol=1e-4)


def test_weight_shared_with_an_excluded_node_stays_beside_its_dq() -> None:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm1"), helper.make_node("MatMul", ["x", "W"], ["b"], name="mm2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = _model(nodes, [_float("x", ["N", 20])], [_float("y", ["N", 6])], [numpy_helper.from_array(_weight((20, 6)), "W")])
    _quantize(model, bits=4, exclude_nodes=("mm2",))
    mm1, mm2 = (node for node in model.graph if node.name in ("mm1", "mm2"))
    assert mm1.inputs[1].producer().op_type == "DequantizeLinear"
    assert mm2.inputs[1].name == "W" and "W" in model.graph.initializers
    _session(model)


def test_nodes_inside_subgraphs_are_left_alone() -> None:
    """MatMuls inside If branches keep W; the main graph's MatMul reading W too keeps it float; V is quantized."""
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"], name="inner")], "then", [], [_float("t", ["N", 6])])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["e"], name="inner2")], "else", [], [_float("e", ["N", 6])])
    nodes = [
        helper.make_node("If", ["c"], ["i"], name="if", then_branch=branch, else_branch=other),
        helper.make_node("MatMul", ["x", "W"], ["m"], name="outer"),
        helper.make_node("MatMul", ["x", "V"], ["v"], name="own"),
        helper.make_node("Sum", ["i", "m", "v"], ["y"], name="sum"),
    ]
    inits = [numpy_helper.from_array(_weight((20, 6)), "W"), numpy_helper.from_array(_weight((20, 6), 1), "V")]
    model = _model(nodes, [_float("x", ["N", 20]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [_float("y", ["N", 6])], inits)
    _, details = _quantize(model, bits=4)
    assert details["quantized_node_names"] == ["own"]
    assert "W" in model.graph.initializers and "V" not in model.graph.initializers
    session = _session(model)
    assert session.run(None, {"x": np.ones((2, 20), np.float32), "c": np.array(True)})[0].shape == (2, 6)


def test_second_run_reports_no_change() -> None:
    model = _two_layer()
    assert _quantize(model, bits=4)[0].modified
    assert not _quantize(model, bits=4)[0].modified


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options",
    [{"bits": 1}, {"bits": 9}, {"granularity": "per-row"}, {"block_size": 1}, {"clip": "l1"}, {"method": "adaround"},
     {"bits_per_node": ("conv1",)}, {"bits_per_node": ("conv1:x",)}, {"bits_per_node": ("conv1:12",)},
     {"bits_per_node": ("a:4", "a:8")}, {"damp": -1.0}, {"gptq_block": 0}, {"op_types": ("Gather",)}],
)
def test_invalid_options_are_refused(options: dict) -> None:
    with pytest.raises(PipelineError, match="quantize-weights"):
        QuantizeWeightsPass(**options)


def test_pipeline_text_round_trips_bits_per_node() -> None:
    text = "quantize-weights{bits=4,granularity=per-group,block_size=32,bits_per_node=[conv1:4,fc2:8],method=gptq}"
    (pass_,) = parse_pipeline(text)
    assert pass_.bits_per_node == ("conv1:4", "fc2:8") and pass_.method == "gptq"
    assert parse_pipeline(format_pipeline([pass_])) == [pass_]


def test_pass_manager_runs_it_with_the_structure_check() -> None:
    (pass_,) = parse_pipeline("quantize-weights{bits=4,granularity=per-group,block_size=4,bits_per_node=[fc3:2]}")
    model = _two_layer()
    manager = PassManager([pass_], progress=False)
    result = manager(model)
    assert result.modified and not _dq_nodes(model)  # the manager works on a copy
    (record,) = manager.records
    assert record.modified and record.details["quantized_nodes"] == 3
    assert _bits_by_node(result.model) == {"conv1": 4, "fc2": 4, "fc3": 2}
    x = np.random.default_rng(1).normal(size=(2, 2, 4, 4)).astype(np.float32)
    assert sqnr_db(_run(model, x), _run(result.model, x)) > 10


# --------------------------------------------------------------------------- GPTQ


def _correlated(n: int, k: int, seed: int) -> np.ndarray:
    """X = Z · A: strongly correlated features, the case where GPTQ's compensation pays."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(100).normal(size=(k, k))
    return (rng.normal(size=(n, k)) @ mixing).astype(np.float32)


def _gptq_case(layout: str, w: np.ndarray) -> tuple[ir.Model, Callable[[np.ndarray], np.ndarray]]:
    """A model whose weight is ``w`` [K, N] in the given layout, and how to feed it rows x [n, K]."""
    k, n = w.shape
    if layout == "matmul":
        return _matmul(w), lambda x: x
    if layout == "matmul-3d":
        node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
        model = _model([node], [_float("x", ["B", 8, k])], [_float("y", ["B", 8, n])], [numpy_helper.from_array(w, "W")])
        return model, lambda x: x.reshape(-1, 8, k)
    if layout == "gemm-transB":
        node = helper.make_node("Gemm", ["x", "W"], ["y"], name="mm", transB=1)
        return _model([node], [_float("x", ["N", k])], [_float("y", ["N", n])], [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")]), lambda x: x
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="mm", transA=1)  # x is [K, N]
    return _model([node], [_float("x", [k, "N"])], [_float("y", ["N", n])], [numpy_helper.from_array(w, "W")]), lambda x: np.ascontiguousarray(x.T)


@pytest.mark.parametrize("layout", ["matmul", "matmul-3d", "gemm-transB", "gemm-transA"])
@pytest.mark.parametrize("granularity", ["per-channel", "per-group"])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_has_lower_output_error_than_rtn_on_correlated_inputs(bits: int, granularity: str, layout: str) -> None:
    w = _weight((64, 32))
    calibration, test = _correlated(512, 64, 1), _correlated(512, 64, 2)
    reference = test @ w.astype(np.float64)
    errors = {}
    for method in ("rtn", "gptq"):
        model, feed = _gptq_case(layout, w)
        _, details = _quantize(model, {"x": feed(calibration)}, bits=bits, method=method, granularity=granularity, block_size=16)
        errors[method] = float(np.mean((_run(model, feed(test)).reshape(reference.shape) - reference) ** 2))
        assert details["layers"]["mm"]["method"] == method
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


def test_gptq_improves_conv_output_error() -> None:
    w = _weight((8, 6, 3, 3))
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(6, 6))

    def images(n: int) -> np.ndarray:  # channels mixed, then smoothed along width: correlated patches
        z = np.einsum("nchw,cd->ndhw", rng.normal(size=(n, 6, 7, 6)), mixing)
        return (z + np.roll(z, 1, axis=3)).astype(np.float32)

    calibration, test = images(64), images(32)
    reference = _run(_conv(w, pads=[1, 1, 1, 1]), test)
    errors = {}
    for method in ("rtn", "gptq"):
        model = _conv(w, pads=[1, 1, 1, 1])
        _quantize(model, {"x": calibration}, bits=3, method=method)
        errors[method] = float(np.mean((_run(model, test) - reference) ** 2))
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gptq_on_grouped_conv_never_raises_the_calibration_output_error(granularity: str, symmetric: bool) -> None:
    """Grouped Conv (one Hessian per group), every scale layout and grid: the kept result is at least as good as RTN's."""
    model = _conv(_weight((4, 3, 3, 2)), group=2, pads=[1, 1, 1, 1], strides=[2, 1])
    calibration = _correlated(32 * 42, 6, 5).reshape(32, 7, 6, 6).transpose(0, 3, 1, 2).copy()
    _, details = _quantize(model, {"x": calibration}, bits=3, method="gptq", granularity=granularity, block_size=2, symmetric=symmetric)
    layer = details["layers"]["conv"]
    assert layer["output_sqnr_db_gptq"] is not None and layer["output_sqnr_db_rtn"] is not None
    kept = layer["output_sqnr_db_gptq"] if layer["method"] == "gptq" else layer["output_sqnr_db_rtn"]
    assert kept == max(layer["output_sqnr_db_gptq"], layer["output_sqnr_db_rtn"])
    assert np.all(np.isfinite(_run(model, calibration[:2])))


def test_gptq_without_calibration_falls_back_to_rtn(caplog: pytest.LogCaptureFixture) -> None:
    w = _weight((20, 6))
    model, rtn = _matmul(w), _matmul(w)
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.weights"):
        _, details = _quantize(model, bits=4, method="gptq")
    _quantize(rtn, bits=4)
    assert "calibration" in caplog.text and details["method"].startswith("rtn")
    x = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x), _run(rtn, x))


def test_gptq_on_conv_transpose_uses_rtn_and_says_so() -> None:
    model = _conv_transpose(_weight((4, 3, 3, 3)))
    x = np.random.default_rng(1).normal(size=(8, 4, 4, 4)).astype(np.float32)
    _, details = _quantize(model, {"x": x}, bits=4, method="gptq")
    assert details["layers"]["deconv"]["method"] == "rtn"
    assert details["layers"]["deconv"]["gptq_skipped"] == "ConvTranspose"


def test_gptq_with_uncorrelated_inputs_equals_rtn() -> None:
    """A diagonal H leaves nothing to compensate: every column rounds to nearest with the fixed scale."""
    w = np.random.default_rng(0).normal(size=(6, 20))
    fixed = quantize_weight(w, 3, axis=0)
    q, scales, _ = gptq_quantize(w, np.diag(np.linspace(1, 3, 20)), bits=3, scale=fixed.scale, zero_point=fixed.zero_point)
    np.testing.assert_array_equal(q, fixed.values)
    np.testing.assert_array_equal(scales[:, 0], fixed.scale)


@pytest.mark.parametrize("groups", [None, [(0, 5), (5, 10), (10, 15), (15, 20)]], ids=["per-channel", "per-group"])
def test_gptq_lazy_block_updates_equal_column_by_column(groups: list[tuple[int, int]] | None) -> None:
    """Blocks of 3 columns (groups of 5 straddle them) give the same result as unblocked GPTQ."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 20))
    x = rng.normal(size=(200, 20)) @ rng.normal(size=(20, 20))
    hessian = 2 * x.T @ x / 200
    fixed = {} if groups else {"scale": quantize_weight(w, 4, axis=0).scale, "zero_point": np.zeros(6, dtype=np.int64)}
    whole = gptq_quantize(w, hessian, bits=4, groups=groups, block=20, **fixed)
    blocked = gptq_quantize(w, hessian, bits=4, groups=groups, block=3, **fixed)
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_gptq_lowers_the_calibration_output_error() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 32))
    x = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    hessian = x.T @ x
    rtn = quantize_weight(w, 3, axis=0)
    q, scales, zeros = gptq_quantize(w, hessian, bits=3, scale=rtn.scale, zero_point=rtn.zero_point)

    def error(w_hat: np.ndarray) -> float:
        return float(np.sum(((w - w_hat) @ x.T) ** 2))

    assert error((q - zeros) * scales) < 0.7 * error(rtn.dequantized())


@pytest.mark.parametrize(
    "attrs",
    [{}, {"pads": [1, 0, 2, 1]}, {"strides": [2, 1]}, {"dilations": [2, 1], "pads": [1, 1, 1, 1]},
     {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {"auto_pad": "SAME_LOWER"}, {"group": 2}],
)
def test_conv_patches_reproduce_the_conv_output(attrs: dict) -> None:
    """The im2col rows GPTQ's Hessian is built from, times the weight in GPTQ's column order, give the Conv's output."""
    group = attrs.get("group", 1)
    w = _weight((4, 3, 3, 2))
    model = _conv(w, **attrs)
    node = next(iter(model.graph))
    layout = _layout(node, w.shape)
    spec = _input_spec(node, w.shape, layout)
    x = np.random.default_rng(1).normal(size=(2, 3 * group, 7, 6)).astype(np.float32)
    y = _run(model, x)
    per_group = 4 // group
    matrix = np.moveaxis(w, 1, -1).reshape(4, -1)  # [O, (kh, kw, c)]
    rows: dict[int, list[np.ndarray]] = {}
    for g, chunk in _conv_rows(x, spec):
        rows.setdefault(g, []).append(chunk)
    for g in range(group):
        patches = np.concatenate(rows[g])
        out = patches @ matrix[g * per_group : (g + 1) * per_group].T  # [N * H_out * W_out, O/g]
        expected = np.moveaxis(y[:, g * per_group : (g + 1) * per_group], 1, -1).reshape(-1, per_group)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("shape", "axis"), [((2048, 2100), 1), ((2100, 2048), 0), ((480, 1000, 3, 3), 0), ((700, 6100), -1)])
def test_large_tensors_quantize_in_channel_chunks_with_identical_results(shape, axis, monkeypatch) -> None:
    """Channels are independent: a tensor above CHUNK_ELEMENTS gives the same values, scales and axis as in one piece."""
    from onnxpq.passes.quantize import affine

    w = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    assert w.size > affine.CHUNK_ELEMENTS
    chunked = affine.quantize_weight(w, 8, axis=axis)
    monkeypatch.setattr(affine, "CHUNK_ELEMENTS", 1 << 40)
    whole = affine.quantize_weight(w, 8, axis=axis)
    assert chunked.axis == whole.axis == axis
    np.testing.assert_array_equal(chunked.values, whole.values)
    np.testing.assert_array_equal(chunked.scale, whole.scale)
    np.testing.assert_array_equal(chunked.zero_point, whole.zero_point)


def test_chunked_sqnr_equals_the_whole_tensor_sqnr() -> None:
    from onnxpq.passes.quantize import affine

    w = np.random.default_rng(4).standard_normal((2100, 2048)).astype(np.float32)
    q = affine.quantize_weight(w, 4, axis=0)
    assert affine.quantized_sqnr_db(w, q) == pytest.approx(affine.sqnr_db(w, q.dequantized()), abs=1e-9)


# --------------------------------------------------------------------------- memory: the tensor store


def _saved_bytes(model: ir.Model, folder: Path) -> dict[str, bytes]:
    from onnxpq.io import save_model

    folder.mkdir()
    save_model(model, folder / "q.onnx", external_data=True)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_weights_put_in_the_tensor_store_save_to_the_same_bytes(tmp_path: Path, method: str) -> None:
    from onnxpq.io import TensorStore

    calibration = {"x": _correlated(64, 64, 1)}
    plain = _two_layer_matmul()
    with PassContext(calibration=calibration):
        QuantizeWeightsPass(method=method, bits=4, granularity="per-group", block_size=16)(plain)
    stored = _two_layer_matmul()
    with TensorStore(tmp_path, min_bytes=2048) as store, PassContext(calibration=calibration, tensor_store=store):
        QuantizeWeightsPass(method=method, bits=4, granularity="per-group", block_size=16)(stored)
        moved = [v.name for v in stored.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
        assert moved == ["W1_quantized", "W2_quantized"] and store.bytes_stored == 2 * 64 * 64 // 2
        assert _saved_bytes(stored, tmp_path / "stored") == _saved_bytes(plain, tmp_path / "plain")


def _two_layer_matmul() -> ir.Model:
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"), helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(_weight((64, 64), 1), "W1"), numpy_helper.from_array(_weight((64, 64), 2), "W2")]
    return _model(nodes, [_float("x", ["N", 64])], [_float("y", ["N", 64])], inits)


def test_a_model_importing_only_ai_onnx_ml_is_left_unchanged_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["ai.onnx.ml": 1]>\n'
        "g (float[N, 3] x) => (float[N, 3] y) { y = ai.onnx.ml.Binarizer<threshold=0.5>(x) }"
    )
    model = ir.from_proto(proto)
    with caplog.at_level(logging.INFO), PassContext(calibration={"x": np.ones((4, 3), np.float32)}) as ctx:
        assert QuantizeWeightsPass()(model).modified is False
    assert ctx.details["skipped"] == "no default-domain opset"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("onnxpq")]
