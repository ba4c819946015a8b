"""float16: float32 → float16/bfloat16 with float32 islands; valid, runnable, within fp16 tolerance, idempotent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pass, parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.float16 import DEFAULT_KEEP, KEEP_REASONS, Float16Pass, clamp_to_low_precision

OPSET = 21
F32, F16, BF16 = ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16
BF16_SKIP = (
    "onnxruntime's CPU execution provider has no bfloat16 kernels for Add/MatMul/Relu/Erf/...: "
    "the session fails with NOT_IMPLEMENTED; the bfloat16 model is only checked with onnx.checker here"
)


class Case(NamedTuple):
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    kept_ops: tuple[str, ...]  # op types that must stay float32 with the default options


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _model(nodes: list[onnx.NodeProto], inputs, outputs, initializers, opsets=((("", OPSET),))) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------- models

D = 64  # width of the If and Loop models: large enough that weights dominate the file


def cnn_case() -> Case:
    """Conv → BatchNormalization → Relu → MaxPool → GlobalAveragePool → Flatten → Gemm."""
    rng = _rng(0)
    c = 32
    inits = [
        _init("conv_w", (rng.standard_normal((c, 3, 3, 3)) * 0.2).astype(np.float32)),
        _init("conv_b", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        _init("bn_scale", (1.0 + rng.standard_normal(c) * 0.1).astype(np.float32)),
        _init("bn_bias", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        _init("bn_mean", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        _init("bn_var", (1.0 + rng.random(c)).astype(np.float32)),
        _init("fc_w", (rng.standard_normal((c, 64)) * 0.2).astype(np.float32)),
        _init("fc_b", (rng.standard_normal(64) * 0.1).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        inits,
    )
    return Case(model, {"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}, ())


def bert_case(mask: str = "where", gelu: str = "erf", fill: float = -3.4e38) -> Case:
    """One encoder block: attention with a padding mask, residual + LayerNorm, GELU FFN, residual + LayerNorm.

    ``mask="where"``: ``Where(mask == 0, fill, scores)``; ``mask="additive"``: ``scores + (1 - float(mask)) * fill``.
    """
    rng = _rng(1)
    hidden, heads, ffn = 32, 2, 64
    head = hidden // heads

    def weight(name: str, shape: tuple[int, ...], scale: float = 0.15) -> TensorProto:
        return _init(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    inits = [
        weight("wq", (hidden, hidden)), weight("bq", (hidden,), 0.05),
        weight("wk", (hidden, hidden)), weight("bk", (hidden,), 0.05),
        weight("wv", (hidden, hidden)), weight("bv", (hidden,), 0.05),
        weight("wo", (hidden, hidden)), weight("bo", (hidden,), 0.05),
        weight("w1", (hidden, ffn)), weight("b1", (ffn,), 0.05),
        weight("w2", (ffn, hidden)), weight("b2", (hidden,), 0.05),
        _init("ln1_s", (1 + rng.standard_normal(hidden) * 0.1).astype(np.float32)),
        _init("ln1_b", (rng.standard_normal(hidden) * 0.1).astype(np.float32)),
        _init("ln2_s", (1 + rng.standard_normal(hidden) * 0.1).astype(np.float32)),
        _init("ln2_b", (rng.standard_normal(hidden) * 0.1).astype(np.float32)),
        _init("split_shape", np.array([0, 0, heads, head], dtype=np.int64)),
        _init("merge_shape", np.array([0, 0, hidden], dtype=np.int64)),
        _init("mask_axes", np.array([1, 2], dtype=np.int64)),
        _init("scale", np.array(1.0 / np.sqrt(head), dtype=np.float32)),
        _init("fill", np.array(fill, dtype=np.float32)),
        _init("zero_i", np.array(0, dtype=np.int64)),
        _init("one", np.array(1.0, dtype=np.float32)),
        _init("half", np.array(0.5, dtype=np.float32)),
        _init("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), dtype=np.float32)),
    ]
    n = helper.make_node
    nodes: list[onnx.NodeProto] = []
    for p in ("q", "k", "v"):
        nodes += [
            n("MatMul", ["x", f"w{p}"], [f"{p}_mm"], name=f"{p}_matmul"),
            n("Add", [f"{p}_mm", f"b{p}"], [f"{p}_lin"], name=f"{p}_bias"),
            n("Reshape", [f"{p}_lin", "split_shape"], [f"{p}_4d"], name=f"{p}_split"),
        ]
    nodes += [
        n("Transpose", ["q_4d"], ["qt"], name="q_t", perm=[0, 2, 1, 3]),
        n("Transpose", ["k_4d"], ["kt"], name="k_t", perm=[0, 2, 3, 1]),
        n("Transpose", ["v_4d"], ["vt"], name="v_t", perm=[0, 2, 1, 3]),
        n("MatMul", ["qt", "kt"], ["scores_raw"], name="qk"),
        n("Mul", ["scores_raw", "scale"], ["scores"], name="scale_scores"),
    ]
    if mask == "where":
        nodes += [
            n("Equal", ["mask", "zero_i"], ["pad"], name="is_pad"),
            n("Unsqueeze", ["pad", "mask_axes"], ["pad4"], name="pad_4d"),
            n("Where", ["pad4", "fill", "scores"], ["masked"], name="apply_mask"),
        ]
    else:
        nodes += [
            n("Cast", ["mask"], ["mask_f"], name="mask_float", to=TensorProto.FLOAT),
            n("Sub", ["one", "mask_f"], ["inv_mask"], name="invert_mask"),
            n("Mul", ["inv_mask", "fill"], ["bias_2d"], name="mask_bias"),
            n("Unsqueeze", ["bias_2d", "mask_axes"], ["bias4"], name="bias_4d"),
            n("Add", ["scores", "bias4"], ["masked"], name="apply_mask"),
        ]
    nodes += [
        n("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "vt"], ["ctx4"], name="context"),
        n("Transpose", ["ctx4"], ["ctx_t"], name="ctx_t", perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merge_shape"], ["ctx"], name="merge"),
        n("MatMul", ["ctx", "wo"], ["o_mm"], name="o_matmul"),
        n("Add", ["o_mm", "bo"], ["o"], name="o_bias"),
        n("Add", ["o", "x"], ["res1"], name="residual1"),
        n("LayerNormalization", ["res1", "ln1_s", "ln1_b"], ["h1"], name="ln1", axis=-1, epsilon=1e-12),
        n("MatMul", ["h1", "w1"], ["f_mm"], name="ffn1_matmul"),
        n("Add", ["f_mm", "b1"], ["f"], name="ffn1_bias"),
    ]
    if gelu == "erf":
        nodes += [
            n("Mul", ["f", "inv_sqrt2"], ["f_s"], name="gelu_scale"),
            n("Erf", ["f_s"], ["f_erf"], name="gelu_erf"),
            n("Add", ["f_erf", "one"], ["f_1"], name="gelu_add"),
            n("Mul", ["f", "f_1"], ["f_m"], name="gelu_mul"),
            n("Mul", ["f_m", "half"], ["act"], name="gelu_half"),
        ]
    else:
        nodes += [n("Gelu", ["f"], ["act"], name="gelu")]
    nodes += [
        n("MatMul", ["act", "w2"], ["g_mm"], name="ffn2_matmul"),
        n("Add", ["g_mm", "b2"], ["g"], name="ffn2_bias"),
        n("Add", ["g", "h1"], ["res2"], name="residual2"),
        n("LayerNormalization", ["res2", "ln2_s", "ln2_b"], ["y"], name="ln2", axis=-1, epsilon=1e-12),
    ]
    used = {name for node in nodes for name in node.input}
    inits = [t for t in inits if t.name in used]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])],
        inits,
    )
    mask_value = np.ones((2, 6), dtype=np.int64)
    mask_value[0, 4:] = 0
    return Case(model, {"x": rng.standard_normal((2, 6, hidden)).astype(np.float32), "mask": mask_value}, ())


def if_case() -> Case:
    """x @ W, then If(c): then = Relu(h @ Wt), else = CumSum(h * 2) (kept, casts inside the branch); + bias."""
    rng = _rng(2)
    then_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "wt"], ["t_mm"], name="then_matmul"),
            helper.make_node("Relu", ["t_mm"], ["t_out"], name="then_relu"),
        ],
        "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", D])],
        [_init("wt", (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32))],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Mul", ["h", "two"], ["e_m"], name="else_mul"),
            helper.make_node("CumSum", ["e_m", "axis"], ["e_out"], name="else_cumsum"),
        ],
        "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", D])],
        [_init("two", np.array(2.0, dtype=np.float32)), _init("axis", np.array(1, dtype=np.int64))],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("If", ["c"], ["branch"], name="if", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Add", ["branch", "b"], ["y"], name="add"),
    ]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])],
        [
            _init("w", (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)),
            _init("b", (rng.standard_normal(D) * 0.1).astype(np.float32)),
        ],
    )
    return Case(model, {"x": rng.standard_normal((3, D)).astype(np.float32), "c": np.array(False)}, ("CumSum",))


def loop_case() -> Case:
    """Loop 3 times: v = Tanh(v @ W + b) carried, v scanned out; W and b are outer-scope initializers."""
    rng = _rng(3)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["v_in", "w"], ["mm"], name="body_matmul"),
            helper.make_node("Add", ["mm", "b"], ["pre"], name="body_add"),
            helper.make_node("Tanh", ["pre"], ["v_out"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            helper.make_node("Identity", ["v_out"], ["scan_out"], name="body_scan"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", D]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", D]),
            helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, ["N", D]),
        ],
    )
    nodes = [helper.make_node("Loop", ["trip", "keep_going", "x"], ["v_final", "ys"], name="loop", body=body)]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
        [
            helper.make_tensor_value_info("v_final", TensorProto.FLOAT, ["N", D]),
            helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, "N", D]),
        ],
        [
            _init("trip", np.array(3, dtype=np.int64)),
            _init("keep_going", np.array(True)),
            _init("w", (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)),
            _init("b", (rng.standard_normal(D) * 0.1).astype(np.float32)),
        ],
    )
    return Case(model, {"x": rng.standard_normal((2, D)).astype(np.float32)}, ())


def range_case() -> Case:
    """Positions from Range over Cast(Shape) (kept float32), ConstantOfShape fills, and a float Constant."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero_i"], ["rows"], name="rows", axis=0),
        helper.make_node("Cast", ["rows"], ["rows_f"], name="rows_float", to=TensorProto.FLOAT),
        helper.make_node("Range", ["start", "rows_f", "delta"], ["pos"], name="range"),
        helper.make_node("Unsqueeze", ["pos", "one_axis"], ["pos_col"], name="pos_col"),
        helper.make_node("ConstantOfShape", ["shape"], ["halves"], name="fill_half",
                         value=numpy_helper.from_array(np.array([0.5], dtype=np.float32))),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="fill_zero"),
        helper.make_node("Constant", [], ["three"], name="three", value_float=3.0),
        helper.make_node("Mul", ["x", "pos_col"], ["scaled"], name="scale"),
        helper.make_node("Mul", ["halves", "three"], ["h3"], name="half_times_three"),
        helper.make_node("Add", ["scaled", "h3"], ["s1"], name="add_half"),
        helper.make_node("Add", ["s1", "zeros"], ["y"], name="add_zero"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            _init("zero_i", np.array(0, dtype=np.int64)),
            _init("one_axis", np.array([1], dtype=np.int64)),
            _init("start", np.array(0.0, dtype=np.float32)),
            _init("delta", np.array(1.0, dtype=np.float32)),
        ],
    )
    return Case(model, {"x": _rng(4).standard_normal((5, 4)).astype(np.float32)}, ("Range",))


CASES: dict[str, Callable[[], Case]] = {
    "cnn": cnn_case,
    "bert-where-erf": lambda: bert_case("where", "erf"),
    "bert-additive-gelu": lambda: bert_case("additive", "op", fill=-1e9),
    "if": if_case,
    "loop": loop_case,
    "range-constantofshape": range_case,
}


# --------------------------------------------------------------------------- helpers


def _session(model: onnx.ModelProto | ir.Model) -> ort.InferenceSession:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _convert(case: Case, **options: object) -> tuple[ir.Model, ir.passes.PassResult, dict[str, object]]:
    model = ir.from_proto(case.model)
    with PassContext() as ctx:
        result = Float16Pass(**options)(model)
        notes = dict(ctx.details)
    return model, result, notes


def _all_nodes(model: ir.Model) -> list[ir.Node]:
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


def _cast_to(node: ir.Node) -> ir.DataType:
    return ir.DataType(node.attributes["to"].as_int())


def _redundant_casts(model: ir.Model) -> list[str]:
    """Adjacent inverse float Cast pairs and no-op Casts, by name."""
    found = []
    floats = {F32, F16, BF16}
    for node in _all_nodes(model):
        if node.op_type != "Cast":
            continue
        source = node.inputs[0]
        to = _cast_to(node)
        if source.dtype == to:
            found.append(f"no-op {node.name}")
        previous = source.producer()
        if previous is not None and previous.op_type == "Cast":
            origin = previous.inputs[0].dtype
            if origin == to and {origin, source.dtype} <= floats:
                found.append(f"pair {previous.name} -> {node.name}")
    return found


def _assert_close(expected: list[np.ndarray], actual: list[np.ndarray], rtol: float = 1e-2) -> None:
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=True):
        assert a.shape == e.shape
        assert np.all(np.isfinite(a)), "non-finite values in the fp16 model's output"
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        scale = float(np.max(np.abs(e64)))
        error = float(np.max(np.abs(a64 - e64)))
        assert error <= rtol * scale + 1e-3, f"max abs error {error:.4g} > {rtol} x {scale:.4g}"


# --------------------------------------------------------------------------- properties of every model


@pytest.mark.parametrize("name", list(CASES))
def test_converted_model_passes_full_checker(name: str) -> None:
    model, result, _ = _convert(CASES[name]())
    assert result.modified is True
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_float32_within_fp16_tolerance(name: str) -> None:
    case = CASES[name]()
    expected = _session(case.model).run(None, case.feeds)
    model, _, _ = _convert(case)
    _assert_close(expected, _session(model).run(None, case.feeds))


@pytest.mark.parametrize("name", list(CASES))
def test_graph_inputs_and_outputs_stay_float32(name: str) -> None:
    case = CASES[name]()
    model, _, _ = _convert(case)
    before = ir.from_proto(case.model)
    assert [(v.name, v.dtype) for v in model.graph.inputs] == [(v.name, v.dtype) for v in before.graph.inputs]
    assert [(v.name, v.dtype) for v in model.graph.outputs] == [(v.name, v.dtype) for v in before.graph.outputs]
    outputs = _session(model).run(None, case.feeds)
    assert all(o.dtype == np.float32 for o in outputs)


@pytest.mark.parametrize("name", list(CASES))
def test_no_inverse_cast_pairs_or_noop_casts_are_left(name: str) -> None:
    model, _, _ = _convert(CASES[name]())
    assert _redundant_casts(model) == []


@pytest.mark.parametrize("name", list(CASES))
def test_casts_sit_only_at_float32_float16_boundaries(name: str) -> None:
    model, _, _ = _convert(CASES[name]())
    for node in _all_nodes(model):
        if node.op_type == "Cast" and node.inputs[0].dtype in (F32, F16):
            assert {node.inputs[0].dtype, _cast_to(node)} == {F32, F16}, node.name


@pytest.mark.parametrize("name", list(CASES))
def test_default_kept_ops_stay_float32(name: str) -> None:
    case = CASES[name]()
    model, _, notes = _convert(case)
    kept = [n for n in _all_nodes(model) if n.op_type in case.kept_ops]
    assert {n.op_type for n in kept} == set(case.kept_ops)
    for node in kept:
        floats = [v for v in (*node.inputs, *node.outputs) if v is not None and v.dtype in (F32, F16)]
        assert floats and all(v.dtype == F32 for v in floats), node.name
    assert notes["kept_op_types"] == {op: 1 for op in case.kept_ops}


@pytest.mark.parametrize("name", ["cnn", "bert-where-erf", "if", "loop"])
def test_weights_are_stored_in_fp16_and_the_file_halves(name: str, tmp_path: Path) -> None:
    case = CASES[name]()
    model, _, _ = _convert(case)
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value.size > 1:
                assert value.const_value.dtype in (F16, ir.DataType.INT64), value.name
    before, after = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(case.model, before)
    onnx.save(ir.to_proto(model), after)
    ratio = after.stat().st_size / before.stat().st_size
    assert ratio < 0.62, f"fp16 file is {ratio:.2f} of the fp32 file"


@pytest.mark.parametrize("name", list(CASES))
def test_second_run_changes_nothing(name: str) -> None:
    model, _, _ = _convert(CASES[name]())
    text = ir.to_onnx_text(model)
    assert Float16Pass()(model).modified is False
    assert ir.to_onnx_text(model) == text


@pytest.mark.parametrize("name", list(CASES))
def test_pass_manager_structure_check_passes(name: str) -> None:
    manager = PassManager([Float16Pass()], progress=False)
    result = manager(ir.from_proto(CASES[name]().model))
    assert result.modified is True
    (record,) = manager.records
    assert record.modified is True
    assert record.numerical_check == "not applicable (lossy pass)"
    assert record.details["converted_nodes"] > 0
    assert record.bytes_after <= record.bytes_before


# --------------------------------------------------------------------------- clamping


@pytest.mark.parametrize("fill", [-1e9, -3.4e38])
def test_attention_mask_fill_clamps_to_fp16_lowest_not_inf(fill: float) -> None:
    model, _, notes = _convert(bert_case("where", fill=fill))
    value = model.graph.initializers["fill"]
    assert value.dtype == F16
    assert value.const_value.numpy().item() == -65504.0
    assert notes["values_clamped"] >= 1


def test_additive_mask_cast_to_float_becomes_cast_to_fp16() -> None:
    model, _, _ = _convert(bert_case("additive", fill=-1e9))
    cast = next(n for n in model.graph if n.name == "mask_float")
    assert _cast_to(cast) == F16
    assert model.graph.initializers["fill"].const_value.numpy().item() == -65504.0


def test_clamp_keeps_sign_zero_inf_and_nan() -> None:
    values = np.array([-3.4e38, 7e4, 1e-9, -1e-9, 0.0, np.inf, -np.inf, np.nan, 1.5], dtype=np.float32)
    low, clamped = clamp_to_low_precision(values, F16, 5.96e-08, 65504.0)
    assert low.dtype == np.float16
    assert clamped == 4
    np.testing.assert_array_equal(low[:2], np.array([-65504.0, 65504.0], dtype=np.float16))
    assert low[2] > 0 and low[3] < 0  # raised to the smallest subnormal, not flushed to zero
    assert low[4] == 0 and np.isposinf(low[5]) and np.isneginf(low[6]) and np.isnan(low[7]) and low[8] == 1.5


def test_layernorm_epsilon_initializer_is_raised_to_min_positive_not_zero() -> None:
    proto = _model(
        [helper.make_node("Add", ["x", "eps"], ["y"], name="add_eps")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [_init("eps", np.array([1e-12, -1e-12], dtype=np.float32))],
    )
    model, _, notes = _convert(Case(proto, {}, ()))
    eps = model.graph.initializers["eps"].const_value.numpy()
    assert eps[0] > 0 and eps[1] < 0
    assert notes["values_clamped"] == 2


# --------------------------------------------------------------------------- options


def test_keep_io_types_false_makes_graph_io_fp16() -> None:
    case = bert_case()
    expected = _session(case.model).run(None, case.feeds)
    model, _, _ = _convert(case, keep_io_types=False)
    assert model.graph.inputs[0].dtype == F16 and model.graph.inputs[1].dtype == ir.DataType.INT64
    assert model.graph.outputs[0].dtype == F16
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feeds = {"x": case.feeds["x"].astype(np.float16), "mask": case.feeds["mask"]}
    (actual,) = _session(model).run(None, feeds)
    assert actual.dtype == np.float16
    _assert_close(expected, [actual])


def test_extra_keep_op_stays_float32_between_casts() -> None:
    case = bert_case()
    expected = _session(case.model).run(None, case.feeds)
    model, _, notes = _convert(case, keep_float32_ops=(*DEFAULT_KEEP, "Softmax", "LayerNormalization"))
    for node in model.graph:
        if node.op_type in ("Softmax", "LayerNormalization"):
            assert node.inputs[0].dtype == F32 and node.outputs[0].dtype == F32
    assert model.graph.initializers["ln1_s"].dtype == F32  # read only by a kept node: untouched
    assert notes["kept_nodes_by_reason"] == {"keep_float32_ops": 3}
    assert _redundant_casts(model) == []
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    _assert_close(expected, _session(model).run(None, case.feeds))


def test_keep_float32_nodes_by_name() -> None:
    case = cnn_case()
    model, _, notes = _convert(case, keep_float32_nodes=("fc",))
    fc = next(n for n in model.graph if n.name == "fc")
    assert all(v.dtype == F32 for v in (*fc.inputs, *fc.outputs))
    assert model.graph.initializers["fc_w"].dtype == F32
    assert model.graph.initializers["conv_w"].dtype == F16
    assert notes["kept_nodes_by_reason"] == {"keep_float32_nodes": 1}
    _assert_close(_session(case.model).run(None, case.feeds), _session(model).run(None, case.feeds))


def test_initializer_shared_by_converted_and_kept_nodes_gets_an_fp16_twin() -> None:
    """``w`` feeds Add (converted) and Max (kept by default): both forms exist, under different names."""
    proto = _model(
        [
            helper.make_node("Add", ["x", "w"], ["a"], name="add"),
            helper.make_node("Max", ["x", "w"], ["m"], name="max"),
            helper.make_node("Mul", ["a", "m"], ["y"], name="mul"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [_init("w", np.linspace(-1, 1, 4, dtype=np.float32))],
    )
    case = Case(proto, {"x": _rng(5).standard_normal((2, 4)).astype(np.float32)}, ("Max",))
    model, _, notes = _convert(case)
    inits = model.graph.initializers
    assert inits["w"].dtype == F32 and inits["w_fp16"].dtype == F16
    add = next(n for n in model.graph if n.name == "add")
    mx = next(n for n in model.graph if n.name == "max")
    assert add.inputs[1] is inits["w_fp16"] and mx.inputs[1] is inits["w"]
    assert notes["initializers_shared_with_float32"] == 1
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    _assert_close(_session(proto).run(None, case.feeds), _session(model).run(None, case.feeds))


def test_custom_domain_op_stays_float32_with_casts() -> None:
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
            helper.make_node("Gelu", ["h"], ["g"], name="ms_gelu", domain="com.microsoft"),
            helper.make_node("Relu", ["g"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [_init("w", _rng(6).standard_normal((4, 4)).astype(np.float32))],
        opsets=(("", OPSET), ("com.microsoft", 1)),
    )
    case = Case(proto, {"x": _rng(7).standard_normal((2, 4)).astype(np.float32)}, ())
    model, _, notes = _convert(case)
    gelu = next(n for n in model.graph if n.name == "ms_gelu")
    assert gelu.inputs[0].dtype == F32 and gelu.outputs[0].dtype == F32
    assert gelu.inputs[0].producer().op_type == "Cast"
    assert notes["kept_nodes_by_reason"] == {"custom domain": 1}
    _assert_close(_session(proto).run(None, case.feeds), _session(model).run(None, case.feeds))


def test_invalid_options_raise_pipeline_error() -> None:
    with pytest.raises(PipelineError, match="max_finite"):
        Float16Pass(max_finite=1e6)
    with pytest.raises(PipelineError, match="min_positive"):
        Float16Pass(min_positive=0.0)
    with pytest.raises(PipelineError, match="dtype"):
        Float16Pass(dtype="float8")  # type: ignore[arg-type]


def test_pipeline_text_round_trips() -> None:
    pass_ = Float16Pass("bfloat16", keep_io_types=False, keep_float32_ops=("Range", "TopK"), keep_float32_nodes=("fc",))
    (parsed,) = parse_pipeline(format_pass(pass_))
    assert parsed == pass_


def test_every_default_kept_op_has_a_reason_and_exists_in_onnx() -> None:
    assert set(DEFAULT_KEEP) == set(KEEP_REASONS)
    for op in DEFAULT_KEEP:
        assert onnx.defs.has(op), op


# --------------------------------------------------------------------------- specific rewrites


def test_range_and_its_float_inputs_stay_float32_and_constant_of_shape_converts() -> None:
    model, _, _ = _convert(range_case())
    nodes = {n.name: n for n in model.graph}
    assert _cast_to(nodes["rows_float"]) == F32  # feeds only the kept Range: not converted
    assert nodes["range"].outputs[0].dtype == F32
    assert nodes["fill_half"].attributes["value"].value.dtype == F16
    assert nodes["fill_zero"].attributes["value"].value.dtype == F16  # absent value (float32 zero) made explicit
    assert nodes["three"].attributes["value"].value.dtype == F16
    assert nodes["pos_col"].inputs[0].producer().op_type == "Cast"  # the Range output enters fp16 through a Cast
    assert nodes["pos_col"].outputs[0].dtype == F16


def test_kept_op_inside_if_branch_gets_casts_inside_the_branch() -> None:
    model, _, _ = _convert(if_case())
    if_node = next(n for n in model.graph if n.op_type == "If")
    else_branch = if_node.attributes["else_branch"].value
    then_branch = if_node.attributes["then_branch"].value
    assert if_node.outputs[0].dtype == F16
    assert [v.dtype for v in then_branch.outputs] == [F16] and [v.dtype for v in else_branch.outputs] == [F16]
    assert then_branch.initializers["wt"].dtype == F16
    cumsum = next(n for n in else_branch if n.op_type == "CumSum")
    assert cumsum.inputs[0].dtype == F32 and cumsum.inputs[0].producer().op_type == "Cast"
    assert cumsum.inputs[0].producer().graph is else_branch


@pytest.mark.parametrize("cond", [True, False])
def test_kept_if_leaves_its_branches_float32(cond: bool) -> None:
    case = if_case()
    feeds = {**case.feeds, "c": np.array(cond)}
    model, _, notes = _convert(case, keep_float32_nodes=("if",))
    if_node = next(n for n in model.graph if n.op_type == "If")
    assert if_node.outputs[0].dtype == F32
    for attr in ("then_branch", "else_branch"):
        branch = if_node.attributes[attr].value
        assert all(v.dtype != F16 for n in branch for v in n.outputs)
        assert all(v.dtype == F32 for v in branch.initializers.values() if v.const_value.size > 1)
    assert notes["kept_nodes_by_reason"]["inside kept If"] == 4
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    _assert_close(_session(case.model).run(None, feeds), _session(model).run(None, feeds))


def test_loop_body_is_converted_consistently() -> None:
    model, _, _ = _convert(loop_case())
    loop = next(n for n in model.graph if n.op_type == "Loop")
    body = loop.attributes["body"].value
    assert body.inputs[2].dtype == F16
    assert [v.dtype for v in body.outputs] == [ir.DataType.BOOL, F16, F16]
    assert [v.dtype for v in loop.outputs] == [F16, F16]
    assert loop.inputs[2].producer().op_type == "Cast"


def test_inverse_cast_pairs_already_in_the_model_are_removed() -> None:
    """x → Cast(fp16) → Cast(fp32) → Relu: after conversion only the input boundary Cast is left."""
    proto = _model(
        [
            helper.make_node("Cast", ["x"], ["x16"], name="down", to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["x16"], ["x32"], name="up", to=TensorProto.FLOAT),
            helper.make_node("Cast", ["x32"], ["x32b"], name="noop", to=TensorProto.FLOAT),
            helper.make_node("Relu", ["x32b"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [],
    )
    case = Case(proto, {"x": _rng(8).standard_normal((2, 3)).astype(np.float32)}, ())
    model, _, notes = _convert(case)
    assert _redundant_casts(model) == []
    assert [n.op_type for n in model.graph] == ["Cast", "Relu", "Cast"]
    assert notes["casts_removed"] == 2
    _assert_close(_session(proto).run(None, case.feeds), _session(model).run(None, case.feeds))


def test_notes_count_converted_kept_casts_and_clamps() -> None:
    _, _, notes = _convert(if_case())
    assert notes["dtype"] == "float16"
    assert notes["converted_nodes"] == 6  # matmul, If, add; then_matmul, then_relu; else_mul
    assert notes["kept_nodes_by_reason"] == {"keep_float32_ops": 1}
    assert notes["casts_inserted"] == 4  # x in, y out, CumSum in and out
    assert notes["values_clamped"] == 0


# --------------------------------------------------------------------------- bfloat16


@pytest.mark.parametrize("name", ["cnn", "bert-where-erf", "if"])
def test_bfloat16_model_passes_full_checker(name: str) -> None:
    model, result, _ = _convert(CASES[name](), dtype="bfloat16")
    assert result.modified is True
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert _redundant_casts(model) == []
    assert any(v.dtype == BF16 for g in model.graphs() for v in g.initializers.values())


def test_bfloat16_keeps_ops_without_bfloat16_in_their_schema() -> None:
    model, _, notes = _convert(cnn_case(), dtype="bfloat16")
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.outputs[0].dtype == F32  # Conv has no bfloat16 before opset 22
    assert notes["kept_nodes_by_reason"]["no bfloat16 in the schema at opset 21"] >= 1
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert gemm.outputs[0].dtype == BF16


def test_bfloat16_mask_fill_stays_finite() -> None:
    model, _, _ = _convert(bert_case("where", fill=-3.4e38), dtype="bfloat16")
    fill = model.graph.initializers["fill"].const_value.numpy().astype(np.float32).item()
    assert np.isfinite(fill) and fill < -3e38


def test_bfloat16_model_in_onnxruntime_cpu() -> None:
    case = bert_case()
    model, _, _ = _convert(case, dtype="bfloat16")
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    try:
        session = _session(model)
    except Exception as exc:  # noqa: BLE001 - the reason goes into the skip message
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        pytest.skip(f"{BF16_SKIP} ({str(exc).splitlines()[0][:120]})")
    _assert_close(_session(case.model).run(None, case.feeds), session.run(None, case.feeds), rtol=5e-2)
