"""quantize-activations: n-bit activation Q/DQ in onnxruntime — the grid, calibration, bits metadata and BOPs, composition, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.analysis.macs import model_cost
from onnxpq.cli import main
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.errors import DataError, OnnxpqError, PipelineError
from onnxpq.passes.quantize.activations import QuantizeActivationsPass
from onnxpq.passes.quantize.affine import sqnr_db
from onnxpq.passes.quantize.qdq import BITS_KEY

BITS = (2, 3, 4, 5, 6, 7, 8)


# --------------------------------------------------------------------------- models


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[TensorProto], opset: int = 21) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10 if opset >= 21 else 7
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _identity(k: int = 16, opset: int = 21) -> ir.Model:
    """``y = x @ I``: the output *is* the quantized-dequantized input."""
    return _model([helper.make_node("MatMul", ["x", "I"], ["y"], name="mm")], [_float("x", ["N", k])], [_float("y", ["N", k])],
                  [numpy_helper.from_array(np.eye(k, dtype=np.float32), "I")], opset)


def _cnn(opset: int = 21) -> ir.Model:
    """conv (3→8, 3x3) → Relu → Flatten → fc (Gemm 288→10, transB=1)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) / 3
    fc = rng.normal(size=(10, 288)).astype(np.float32) / 12
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "F", "b"], ["y"], name="fc", transB=1),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(fc, "F"),
             numpy_helper.from_array(np.linspace(-1, 1, 10).astype(np.float32), "b")]
    return _model(nodes, [_float("x", ["N", 3, 8, 8])], [_float("y", ["N", 10])], inits, opset)


def _two_convs() -> ir.Model:
    """conv → Relu → conv2 → Relu → Flatten → fc: a quantized layer input right after a Conv (onnxruntime's QDQ fusion)."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W3"], ["y"], name="fc"),
    ]
    inits = [numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)
             for name, shape in (("W1", (8, 3, 3, 3)), ("W2", (8, 8, 3, 3)), ("W3", (128, 10)))]
    return _model(nodes, [_float("x", ["N", 3, 8, 8])], [_float("y", ["N", 10])], inits)


def _attention() -> ir.Model:
    """``s = (x Wq) (x Wk)ᵀ``: the second MatMul multiplies two activations."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), n) for n in ("Wq", "Wk")]
    return _model(nodes, [_float("x", [6, 8])], [_float("s", [6, 6])], inits)


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _quantize(model: ir.Model, x: np.ndarray | None, text: str = "quantize-activations") -> tuple[ir.Model, list]:
    manager = PassManager(parse_pipeline(text), progress=False)
    with PassContext(calibration=None if x is None else {"x": x}):
        result = manager(model)
    return result.model, manager.records


def _activation_dqs(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].producer() is not None]


# --------------------------------------------------------------------------- the n-bit grid


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_quantized_input_takes_at_most_2_to_the_n_values_on_its_grid(bits: int, symmetric: bool, opset: int) -> None:
    x = _x((64, 16))
    out, _ = _quantize(_identity(opset=opset), x, f"quantize-activations{{bits={bits},symmetric={str(symmetric).lower()},calibration=minmax}}")
    (dq,) = _activation_dqs(out)
    scale = float(dq.inputs[1].const_value.numpy())
    zero = int(dq.inputs[2].const_value.numpy())
    y = _run(out, x)
    levels = np.round(y / scale).astype(np.int64) + zero
    assert len(np.unique(y)) <= 2**bits
    np.testing.assert_allclose(y, (levels - zero) * scale, rtol=0, atol=1e-5 * scale)
    q_min, q_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert levels.min() >= q_min and levels.max() <= q_max
    assert np.abs(y - x).max() <= scale / 2 + 1e-5  # minmax: nothing is clipped, rounding only


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_widths_below_8_clip_before_a_uint8_container(bits: int, opset: int) -> None:
    out, _ = _quantize(_identity(opset=opset), _x((64, 16)), f"quantize-activations{{bits={bits}}}")
    assert [n.op_type for n in out.graph] == ["Clip", "QuantizeLinear", "DequantizeLinear", "MatMul"]
    assert out.graph.node(1).outputs[0].dtype == ir.DataType.UINT8


@pytest.mark.parametrize(("symmetric", "container"), [(False, ir.DataType.UINT8), (True, ir.DataType.INT8)])
def test_8_bits_need_no_clip(symmetric: bool, container: ir.DataType) -> None:
    out, _ = _quantize(_identity(), _x((64, 16)), f"quantize-activations{{bits=8,symmetric={str(symmetric).lower()}}}")
    assert [n.op_type for n in out.graph] == ["QuantizeLinear", "DequantizeLinear", "MatMul"]
    assert out.graph.node(0).outputs[0].dtype == container


@pytest.mark.parametrize("w_bits", [3, 4, 8])
@pytest.mark.parametrize("a_bits", [3, 4, 8])
def test_every_width_pair_loads_in_a_fully_optimised_session(a_bits: int, w_bits: int) -> None:
    """onnxruntime fuses DQ → Conv → Q into QLinearConv, which refuses a uint4 input: activations stay in uint8."""
    model = _two_convs()
    x = _x((8, 3, 8, 8))
    out, _ = _quantize(model, x, f"quantize-activations{{bits={a_bits}}},quantize-weights{{bits={w_bits}}}")
    assert sqnr_db(_run(model, x), _run(out, x)) > 3


def test_opset_10_gives_clip_its_bounds_as_attributes() -> None:
    x = _x((64, 16))
    out, _ = _quantize(_identity(opset=10), x, "quantize-activations{bits=3,calibration=minmax}")
    clip = out.graph.node(0)
    assert clip.op_type == "Clip" and set(clip.attributes) == {"min", "max"} and len(clip.inputs) == 1
    assert len(np.unique(_run(out, x))) <= 8


@pytest.mark.parametrize("symmetric", [False, True])
def test_each_bit_more_gains_about_6_db(symmetric: bool) -> None:
    x = _x((256, 16))
    db = []
    for bits in BITS:
        out, _ = _quantize(_identity(), x, f"quantize-activations{{bits={bits},symmetric={str(symmetric).lower()}}}")
        db.append(sqnr_db(x, _run(out, x)))
    steps = np.diff(db)
    assert np.all(steps > 3.0), db
    assert 4.5 < float(np.mean(steps[2:])) < 7.5, db


def test_relu_output_gets_zero_point_0_and_the_whole_unsigned_grid() -> None:
    x = _x((64, 3, 8, 8))
    out, _ = _quantize(_cnn(), x, "quantize-activations{bits=4}")
    dq = next(n for n in _activation_dqs(out) if n.outputs[0].uses()[0].node.name == "fc")
    assert int(dq.inputs[2].const_value.numpy()) == 0


@pytest.mark.parametrize("method", ["mse", "percentile,percentile=99.0", "entropy"])
def test_clipping_calibration_beats_minmax_at_4_bits_on_a_heavy_tail(method: str) -> None:
    x = np.random.default_rng(3).laplace(size=(512, 16)).astype(np.float32)
    x[0, 0] = 40.0  # one outlier stretches the min/max range
    minmax, _ = _quantize(_identity(), x, "quantize-activations{bits=4,calibration=minmax}")
    clipped, _ = _quantize(_identity(), x, f"quantize-activations{{bits=4,calibration={method}}}")
    assert sqnr_db(x, _run(clipped, x)) > sqnr_db(x, _run(minmax, x)) + 3.0


def test_mse_calibration_is_optimised_for_the_width_asked() -> None:
    x = np.random.default_rng(4).laplace(size=(512, 16)).astype(np.float32)
    ranges = {}
    for bits in (3, 8):
        out, _ = _quantize(_identity(), x, f"quantize-activations{{bits={bits}}}")
        (dq,) = _activation_dqs(out)
        ranges[bits] = float(dq.inputs[1].const_value.numpy()) * (2**bits - 1)
    assert ranges[3] < ranges[8]  # fewer levels: clip harder


# --------------------------------------------------------------------------- which tensors, which widths


def test_every_layer_input_is_quantized_and_the_output_stays_close() -> None:
    model = _cnn()
    x = _x((64, 3, 8, 8))
    out, records = _quantize(model, x, "quantize-activations{bits=8}")
    readers = {dq.outputs[0].uses()[0].node.name for dq in _activation_dqs(out)}
    assert readers == {"conv", "fc"}
    assert records[0].details["quantized_node_names"] == ["conv", "fc"]
    assert sqnr_db(_run(model, x), _run(out, x)) > 30


def test_bits_per_node_and_exclude_nodes_choose_per_layer() -> None:
    out, records = _quantize(_cnn(), _x((64, 3, 8, 8)), "quantize-activations{bits=6,bits_per_node=[fc:3]}")
    assert {dq.outputs[0].uses()[0].node.name: dq.metadata_props[BITS_KEY] for dq in _activation_dqs(out)} == {"conv": "6", "fc": "3"}
    assert records[0].details["bits"] == {"conv": 6, "fc": 3}
    out, _ = _quantize(_cnn(), _x((64, 3, 8, 8)), "quantize-activations{exclude_nodes=[conv]}")
    assert {dq.outputs[0].uses()[0].node.name for dq in _activation_dqs(out)} == {"fc"}


def test_op_types_restricts_the_layers() -> None:
    out, _ = _quantize(_cnn(), _x((64, 3, 8, 8)), "quantize-activations{op_types=[Gemm]}")
    assert {dq.outputs[0].uses()[0].node.name for dq in _activation_dqs(out)} == {"fc"}


def test_one_tensor_read_at_two_widths_gets_one_qdq_per_width() -> None:
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"], name="left"), helper.make_node("MatMul", ["x", "B"], ["b"], name="right"),
             helper.make_node("MatMul", ["x", "C"], ["c"], name="third")]
    inits = [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), n) for n in "ABC"]
    model = _model(nodes, [_float("x", ["N", 8])], [_float(n, ["N", 4]) for n in "abc"], inits)
    out, _ = _quantize(model, _x((32, 8)), "quantize-activations{bits=8,bits_per_node=[right:4]}")
    by_reader = {use.node.name: dq.metadata_props[BITS_KEY] for dq in _activation_dqs(out) for use in dq.outputs[0].uses()}
    assert by_reader == {"left": "8", "right": "4", "third": "8"}
    assert len(_activation_dqs(out)) == 2


def test_activation_times_activation_matmul_quantizes_both_operands() -> None:
    out, _ = _quantize(_attention(), _x((6, 8)), "quantize-activations{bits=6}")
    scores = next(n for n in out.graph if n.name == "scores")
    assert [v.producer().op_type for v in scores.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    projections = [n for n in out.graph if n.name in ("q_proj", "k_proj")]
    assert all(n.inputs[1].producer() is None for n in projections)  # weights stay constants


def test_a_graph_output_read_by_a_layer_stays_float_at_the_output() -> None:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node("MatMul", ["h", "W"], ["y"], name="mm")]
    model = _model(nodes, [_float("x", ["N", 8])], [_float("h", ["N", 8]), _float("y", ["N", 4])],
                   [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W")])
    x = _x((16, 8))
    out, _ = _quantize(model, x, "quantize-activations{bits=3}")
    proto = ir.to_proto(out)
    h, _ = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(h, np.maximum(x, 0))


def test_second_run_changes_nothing() -> None:
    x = _x((64, 3, 8, 8))
    once, _ = _quantize(_cnn(), x, "quantize-activations{bits=4}")
    with PassContext(calibration={"x": x}):
        result = QuantizeActivationsPass(bits=4)(once)
    assert not result.modified


def test_unnamed_nodes_get_names_that_bits_per_node_can_use() -> None:
    rng = np.random.default_rng(6)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_float("x", ["N", 8])], [_float("y", ["N", 4])],
                   [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W")])
    out, _ = _quantize(model, _x((16, 8)), "quantize-activations{bits_per_node=[MatMul_0:5]}")
    (dq,) = _activation_dqs(out)
    assert dq.metadata_props[BITS_KEY] == "5" and dq.outputs[0].uses()[0].node.name == "MatMul_0"


def test_unknown_bits_per_node_name_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.activations"):
        _, records = _quantize(_cnn(), _x((16, 3, 8, 8)), "quantize-activations{bits_per_node=[nope:4]}")
    assert "nope" in caplog.text and records[0].details["bits_per_node_unmatched"] == ["nope"]


def test_opset_9_is_left_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    model = _identity(opset=9)
    with caplog.at_level(logging.WARNING), PassContext(calibration={"x": _x((8, 16))}):
        result = QuantizeActivationsPass()(model)
    assert not result.modified and "opset 9" in caplog.text


def test_without_calibration_data_warns_and_calibrates_on_synthetic_inputs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.activations"):
        out, _ = _quantize(_cnn(), None, "quantize-activations{bits=6}")
    assert "no calibration data" in caplog.text and len(_activation_dqs(out)) == 2


# --------------------------------------------------------------------------- bits metadata and bit-operations


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize(("w_bits", "a_bits"), [(4, 8), (3, 6), (8, 4), (2, 2)])
def test_bops_count_weight_bits_times_activation_bits(w_bits: int, a_bits: int, opset: int) -> None:
    model = _cnn(opset)
    float_cost = {n.node: n for n in model_cost(model, {"x": [1, 3, 8, 8]}).nodes}
    out, _ = _quantize(model, _x((32, 3, 8, 8)), f"quantize-activations{{bits={a_bits}}},quantize-weights{{bits={w_bits}}}")
    cost = {n.node: n for n in model_cost(out, {"x": [1, 3, 8, 8]}).nodes}
    for name in ("conv", "fc"):
        assert (cost[name].weight_bits, cost[name].activation_bits) == (w_bits, a_bits)
        assert cost[name].bops == float_cost[name].macs * w_bits * a_bits
    for dq in _activation_dqs(out):
        assert dq.metadata_props[BITS_KEY] == str(a_bits)


def test_bops_count_the_density_of_a_pruned_layer_too() -> None:
    out, _ = _quantize(_cnn(), _x((32, 3, 8, 8)), "prune-magnitude{sparsity=0.5},quantize-activations{bits=4},quantize-weights{bits=4}")
    cost = {n.node: n for n in model_cost(out, {"x": [1, 3, 8, 8]}, count_zeros=True).nodes}
    assert cost["fc"].activation_bits == 4 and cost["fc"].density == pytest.approx(0.5, abs=0.01)
    assert cost["fc"].bops == round(cost["fc"].macs * 16 * cost["fc"].density)


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize("text", [
    "quantize-activations{bits=6},quantize-weights{bits=4}",
    "quantize-weights{bits=4},quantize-activations{bits=6}",
    "quantize-activations{bits=6},quantize-weights{bits=4,method=gptq}",
])
def test_composes_with_quantize_weights_in_either_order(text: str) -> None:
    model = _cnn()
    x = _x((64, 3, 8, 8))
    out, records = _quantize(model, x, text)
    assert all(r.modified for r in records)
    for name in ("conv", "fc"):
        node = next(n for n in out.graph if n.name == name)
        assert [v.producer().op_type for v in node.inputs[:2]] == ["DequantizeLinear", "DequantizeLinear"]
    assert sqnr_db(_run(model, x), _run(out, x)) > 15


def test_quantize_weights_still_refuses_a_model_whose_weights_are_quantized() -> None:
    x = _x((32, 3, 8, 8))
    out, records = _quantize(_cnn(), x, "quantize-static,quantize-weights{bits=4}")
    assert records[0].modified and not records[1].modified


def test_gptq_sees_the_quantized_inputs_the_layer_reads() -> None:
    x = _x((64, 3, 8, 8))
    _, records = _quantize(_cnn(), x, "quantize-activations{bits=3},quantize-weights{bits=3,method=gptq}")
    layers = records[1].details["layers"]
    assert {layers[name]["method"].split()[0] for name in ("conv", "fc")} <= {"gptq", "rtn"}
    assert all(layers[name]["output_sqnr_db_gptq"] is not None for name in ("conv", "fc"))


# --------------------------------------------------------------------------- options and errors


@pytest.mark.parametrize(("text", "message"), [
    ("quantize-activations{bits=1}", "bits must be an integer in 2..8"),
    ("quantize-activations{bits=9}", "bits must be an integer in 2..8"),
    ("quantize-activations{calibration=kl}", "calibration.? must be one of"),
    ("quantize-activations{percentile=0}", "percentile must be in"),
    ("quantize-activations{samples=0}", "samples must be"),
    ("quantize-activations{bins=1}", "bins must be"),
    ("quantize-activations{bits_per_node=[conv]}", "must be written name:bits"),
    ("quantize-activations{bits_per_node=[conv:12]}", "bits in 2..8"),
    ("quantize-activations{op_types=[Add]}", "cannot quantize the activations of Add"),
    ("quantize-activations{granularity=per-channel}", "granularity"),
])
def test_invalid_options_raise_pipeline_error(text: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_pipeline_text_round_trips_the_options() -> None:
    text = "quantize-activations{bits=4,calibration=percentile,percentile=99.9,symmetric=true,bits_per_node=[conv:6],exclude_nodes=[fc]}"
    (pass_,) = parse_pipeline(text)
    assert pass_.bits == 4 and pass_.bits_per_node == ("conv:6",) and pass_.symmetric
    assert parse_pipeline(format_pipeline([pass_])) == [pass_]


def test_calibration_data_with_nan_fails_naming_the_pass() -> None:
    x = _x((16, 3, 8, 8))
    x[3, 0, 0, 0] = np.nan
    with pytest.raises(OnnxpqError, match="quantize-activations") as info:
        _quantize(_cnn(), x, "quantize-activations{bits=4}")
    assert "NaN" in str(info.value) and "\n" not in str(info.value).strip()


def test_calibration_data_missing_the_input_raises_data_error() -> None:
    with PassContext(calibration={"other": _x((8, 3, 8, 8))}), pytest.raises(DataError, match="no data for model input"):
        QuantizeActivationsPass()(_cnn())


def test_cli_reports_bad_calibration_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "cnn.onnx"
    onnx.save(ir.to_proto(_cnn()), model)
    bad = _x((16, 3, 8, 8))
    bad[0, 0, 0, 0] = np.inf
    np.savez(tmp_path / "calib.npz", x=bad)
    (tmp_path / "out").mkdir()
    code = main(["optimize", str(model), "-t", "vbit", "-o", str(tmp_path / "out" / "q.onnx"), "--calibration", str(tmp_path / "calib.npz"),
                 "--pipeline", "quantize-activations{bits=4}", "--latency-runs", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxpq: error:") and "quantize-activations" in lines[0], err


def test_invalid_calibration_from_python_raises_pipeline_error() -> None:
    with pytest.raises(PipelineError, match="calibration must be one of"):
        QuantizeActivationsPass(calibration="kl")  # type: ignore[arg-type]


def test_a_model_importing_only_ai_onnx_ml_is_left_unchanged_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["ai.onnx.ml": 1]>\n'
        "g (float[N, 3] x) => (float[N, 3] y) { y = ai.onnx.ml.Binarizer<threshold=0.5>(x) }"
    )
    model = ir.from_proto(proto)
    with caplog.at_level(logging.INFO), PassContext(calibration={"x": np.ones((4, 3), np.float32)}) as ctx:
        assert QuantizeActivationsPass()(model).modified is False
    assert ctx.details["skipped"] == "no default-domain opset"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("onnxpq")]


@pytest.mark.parametrize(("opset", "quantized"), [(21, True), (17, False)])
def test_float16_layers_need_opset_19(opset: int, quantized: bool) -> None:
    w = np.eye(8, dtype=np.float16)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 8])], [numpy_helper.from_array(w, "W")], opset)
    x = _x((32, 8)).astype(np.float16)
    out, records = _quantize(model, x, "quantize-activations{bits=4}")
    assert records[0].modified == quantized
    if quantized:
        y = _run(out, x)
        assert y.dtype == np.float16 and len(np.unique(y)) <= 16
