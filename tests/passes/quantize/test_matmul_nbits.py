"""matmul-nbits: large constant-weight MatMuls become MatMulNBits with exactly the documented packing."""

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
from onnxpq.passes.quantize.matmul_nbits import MatMulNBitsPass, dequantize_matmul_nbits, pack_matmul_nbits
from onnxpq.validation.kernels import kernel_census

OPSET = 17
K, N = 256, 96


def _weight(shape: Sequence[int], seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(dtype)


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
) -> ir.Model:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _matmul_model(w: np.ndarray, x_shape: Sequence[int | str] | None = None, elem: int = TensorProto.FLOAT) -> ir.Model:
    x_shape = list(x_shape) if x_shape is not None else ["b", "s", w.shape[0]]
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", elem, x_shape)],
        [helper.make_tensor_value_info("y", elem, [*x_shape[:-1], w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.astype(np.float64) - expected) / np.linalg.norm(expected))


def _quantize(model: ir.Model, pass_: MatMulNBitsPass | None = None) -> tuple[ir.Model, bool, dict]:
    with PassContext() as ctx:
        result = (pass_ or MatMulNBitsPass(min_params=0))(model)
        return result.model, result.modified, dict(ctx.details)


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def _node_inputs(model: ir.Model) -> tuple[ir.Node, np.ndarray, np.ndarray, np.ndarray | None]:
    (node,) = [n for n in model.graph if n.op_type == "MatMulNBits"]
    arrays = [v.const_value.numpy() if v is not None else None for v in node.inputs[1:]]
    return node, arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("bits, block_size", [(4, 128), (4, 32), (2, 16), (8, 64)], ids=["4b-128", "4b-32", "2b-16", "8b-64"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k", [256, 200, 72], ids=["K-divisible", "K-padded", "K-below-block"])
def test_onnxruntime_computes_with_exactly_the_numpy_dequantized_weight(bits: int, block_size: int, symmetric: bool, k: int) -> None:
    """accuracy_level 1 (fp32 math): ORT's output is x @ dequantize(B, scales, zero_points) to float rounding."""
    w = _weight((k, N))
    model = _matmul_model(w)
    model, modified, _ = _quantize(model, MatMulNBitsPass(bits, block_size=block_size, symmetric=symmetric, accuracy_level=1, min_params=0))
    assert modified
    node, packed, scales, zero_points = _node_inputs(model)
    k_blocks = -(-k // block_size)
    assert packed.dtype == np.uint8 and packed.shape == (N, k_blocks, block_size * bits // 8)
    assert scales.shape == (N, k_blocks)
    assert (zero_points is None) == symmetric
    if zero_points is not None:
        assert zero_points.shape == (N, -(-k_blocks * bits // 8))
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    assert attrs == {"K": k, "N": N, "bits": bits, "block_size": block_size, "accuracy_level": 1}
    w_hat = dequantize_matmul_nbits(packed, scales, zero_points, k=k, bits=bits, block_size=block_size)
    x = np.random.default_rng(1).standard_normal((2, 3, k)).astype(np.float32)
    (actual,) = _run(model, {"x": x})
    np.testing.assert_allclose(actual, x @ w_hat, rtol=1e-4, atol=1e-4)


def test_four_bit_values_are_packed_low_nibble_first_with_offset_8() -> None:
    """A column [-8s, -7s, ..., 7s] (one block of 16): stored q + 8 = 0..15, element 2i in the low nibble."""
    column = np.arange(-8, 8, dtype=np.float32)
    w = np.stack([column, -column], axis=1)  # the second column's extreme is +8: its scale is negative
    packed = pack_matmul_nbits(w, bits=4, block_size=16)
    assert packed.packed[0, 0].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert packed.scales[:, 0].tolist() == [1.0, -1.0]
    assert packed.packed[1, 0].tolist() == packed.packed[0, 0].tolist()  # -column / -1 == column
    assert packed.zero_points is None


def test_padding_of_the_last_block_dequantizes_to_zero() -> None:
    w = _weight((40, 3))
    for symmetric in (True, False):
        result = pack_matmul_nbits(w, bits=4, block_size=32, symmetric=symmetric)
        restored = dequantize_matmul_nbits(result.packed, result.scales, result.zero_points, k=64, bits=4, block_size=32)
        np.testing.assert_array_equal(restored[40:], 0.0)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k", [256, 200], ids=["K-divisible", "K-padded"])
def test_packing_agrees_with_onnxruntime_quantizer(symmetric: bool, k: int) -> None:
    """Cross-check with onnxruntime.quantization's MatMulNBits quantizer (MLAS): same scales, same weights."""
    quantizer_module = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    w = _weight((k, N), seed=4)
    config = quantizer_module.DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=symmetric, bits=4)
    ref_packed, ref_scales, ref_zero = quantizer_module.DefaultWeightOnlyQuantizer(config).qbits_block_quant(w)
    ours = pack_matmul_nbits(w, bits=4, block_size=128, symmetric=symmetric)
    np.testing.assert_allclose(ours.scales, ref_scales, rtol=1e-6)
    ref_zero = None if symmetric else ref_zero
    if not symmetric:
        np.testing.assert_array_equal(ours.zero_points, ref_zero)
    np.testing.assert_array_equal(
        dequantize_matmul_nbits(ours.packed, ours.scales, ours.zero_points, k=k, bits=4, block_size=128),
        dequantize_matmul_nbits(ref_packed, ref_scales, ref_zero, k=k, bits=4, block_size=128),
    )


# --------------------------------------------------------------------------- the pass


@pytest.mark.parametrize(
    "x_shape, feed_shape",
    [((K,), (K,)), (("n", K), (5, K)), (("b", "s", K), (4, 16, K)), ((2, 3, K), (2, 3, K))],
    ids=["1d", "2d-dynamic-batch", "3d-batch-seq", "3d-static"],
)
def test_matmul_becomes_matmul_nbits_within_4bit_error(x_shape, feed_shape, tmp_path: Path) -> None:
    model = _matmul_model(_weight((K, N)), x_shape)
    x = np.random.default_rng(1).standard_normal(feed_shape).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    model, modified, details = _quantize(model)
    assert modified and _ops(model) == ["MatMulNBits"]
    assert model.opset_imports["com.microsoft"] == 1
    assert "W" not in model.graph.initializers
    (actual,) = _run(model, {"x": x})
    assert actual.shape == expected.shape
    assert _relative_error(actual, expected) < 0.15
    path = tmp_path / "q.onnx"
    onnx.save(ir.to_proto(model), path)
    census = kernel_census(path)
    assert census.integer == {"MatMulNBits": 1} and census.float_total == 0
    assert details["quantized_node_names"] == ["mm"] and details["weight_sqnr_db"]["mm"] > 17.0


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_accuracy_levels_both_run_within_4bit_error(accuracy_level: int) -> None:
    model = _matmul_model(_weight((K, N)))
    x = np.random.default_rng(1).standard_normal((2, 8, K)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    model, _, _ = _quantize(model, MatMulNBitsPass(accuracy_level=accuracy_level, min_params=0))
    assert _relative_error(_run(model, {"x": x})[0], expected) < 0.15


def test_eight_bit_blocks_are_near_lossless() -> None:
    model = _matmul_model(_weight((K, N)))
    x = np.random.default_rng(1).standard_normal((2, 8, K)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    model, _, _ = _quantize(model, MatMulNBitsPass(8, min_params=0))
    assert _relative_error(_run(model, {"x": x})[0], expected) < 0.02


def test_float16_weights_keep_float16_scales() -> None:
    model = _matmul_model(_weight((K, N), dtype=np.float16), elem=TensorProto.FLOAT16)
    x = np.random.default_rng(1).standard_normal((2, 8, K)).astype(np.float16)
    (expected,) = _run(model, {"x": x})
    model, _, _ = _quantize(model)
    assert _node_inputs(model)[2].dtype == np.float16
    assert _relative_error(_run(model, {"x": x})[0], expected.astype(np.float64)) < 0.15


def test_small_weights_are_skipped_per_min_params() -> None:
    model = _model(
        [
            helper.make_node("MatMul", ["x", "Wsmall"], ["h"], name="small"),
            helper.make_node("MatMul", ["h", "Wbig"], ["y"], name="big"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 512])],
        [numpy_helper.from_array(_weight((64, 256)), "Wsmall"), numpy_helper.from_array(_weight((256, 512)), "Wbig")],
    )
    model, _, details = _quantize(model, MatMulNBitsPass())  # default min_params = 65536: 64x256 stays float
    assert _ops(model) == ["MatMul", "MatMulNBits"]
    assert "min_params" in details["left_float"]["small"]


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
    model, _, details = _quantize(model, MatMulNBitsPass(min_params=0, exclude_nodes=("keep",)))
    keep, quantized = list(model.graph)
    assert (keep.op_type, keep.name, keep.inputs[1].name) == ("MatMul", "keep", "W1")
    assert (quantized.op_type, quantized.name) == ("MatMulNBits", "quantize")
    assert details["left_float"] == {"keep": "excluded by name"}


def test_activation_times_activation_matmul_stays_float() -> None:
    model = _model(
        [helper.make_node("MatMul", ["q", "k"], ["y"], name="scores")],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["b", 8, K]), helper.make_tensor_value_info("k", TensorProto.FLOAT, ["b", K, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 8])],
    )
    model, modified, details = _quantize(model)
    assert not modified
    assert details["left_float"] == {"scores": "activation x activation product"}


def test_gemm_and_conv_are_not_touched() -> None:
    model = _model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, N])],
        [numpy_helper.from_array(_weight((K, N)), "W")],
    )
    model, modified, _ = _quantize(model)
    assert not modified and _ops(model) == ["Gemm"]


def test_already_quantized_model_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
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
    before = _ops(model)
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.matmul_nbits"):
        model, modified, details = _quantize(model)
    assert not modified and _ops(model) == before
    assert "already contains DequantizeLinear" in caplog.text
    assert details["skipped"] == "already quantized (DequantizeLinear present)"


def test_second_run_reports_unmodified() -> None:
    model, first, _ = _quantize(_matmul_model(_weight((K, N))))
    model, second, _ = _quantize(model)
    assert first and not second


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(bits=3), "bits must be one of 2, 4, 8"),
        (dict(block_size=100), "power of two"),
        (dict(block_size=8), "power of two >= 16"),
        (dict(accuracy_level=5), "accuracy_level must be in 0..4"),
        (dict(min_params=-1), "min_params"),
    ],
    ids=["bits", "block-not-power-of-two", "block-too-small", "accuracy-level", "min-params"],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        MatMulNBitsPass(**options)


def test_pass_manager_structure_check_passes() -> None:
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])],
        [numpy_helper.from_array(_weight((K, 512)), "W1"), numpy_helper.from_array(_weight((512, N), 1), "W2")],
    )
    x = np.random.default_rng(1).standard_normal((2, 5, K)).astype(np.float32)
    (expected,) = _run(model, {"x": x})
    manager = PassManager([MatMulNBitsPass(min_params=0)], progress=False)
    result = manager(model)
    (record,) = manager.records
    assert record.modified and record.details["quantized_nodes"] == 2
    assert _relative_error(_run(result.model, {"x": x})[0], expected) < 0.15


# --------------------------------------------------------------------------- streaming external data


def test_external_data_model_is_quantized_tensor_by_tensor(tmp_path: Path) -> None:
    """Eight 1024x1024 float32 weights (32 MiB) in an external file: the pass's Python peak stays < 12 MiB."""
    count, size = 8, 1024
    nodes, inits = [], []
    for i in range(count):
        nodes.append(helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"], name=f"mm{i}"))
        inits.append(numpy_helper.from_array(_weight((size, size), i), f"W{i}"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["n", size]) for i in range(count)], inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    onnx.save(proto, source, save_as_external_data=True, location="model.data", size_threshold=0)
    del proto, inits, graph
    x = np.random.default_rng(1).standard_normal((3, size)).astype(np.float32)
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    model = load_model(source)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    total = count * size * size * 4
    tracemalloc.start()
    try:
        _, modified, details = _quantize(model, MatMulNBitsPass())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert modified and details["quantized_nodes"] == count
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of weights"
    assert not any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())

    (tmp_path / "out").mkdir()
    written = save_model(model, tmp_path / "out" / "model.onnx")
    actual = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, e in zip(actual, expected):
        assert _relative_error(a, e) < 0.15


def test_pipeline_text_round_trips() -> None:
    from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline

    text = "matmul-nbits{bits=8,block_size=32,accuracy_level=0,symmetric=false,min_params=0,exclude_nodes=[lm_head]}"
    (pass_,) = parse_pipeline(text)
    assert pass_ == MatMulNBitsPass(8, block_size=32, accuracy_level=0, symmetric=False, min_params=0, exclude_nodes=("lm_head",))
    assert format_pipeline([pass_]) == text


def test_dynamic_quantize_matmul_nodes_do_not_count_as_already_quantized() -> None:
    """quantize-dynamic may have run first on other MatMuls; the float ones left are still packed."""
    from onnxpq.passes.quantize.dynamic import QuantizeDynamicPass

    model = _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="big"),
            helper.make_node("MatMul", ["h", "W2"], ["y"], name="small"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(_weight((K, K)), "W1"), numpy_helper.from_array(_weight((K, N), 1), "W2")],
    )
    with PassContext():
        QuantizeDynamicPass(exclude_nodes=("big",))(model)
    model, modified, _ = _quantize(model)
    assert modified and _ops(model) == ["MatMulNBits", "DynamicQuantizeMatMul"]
