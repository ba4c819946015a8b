"""Tests for onnxpq.analysis.model_inputs: the input signature and inputs synthesised from it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from onnxpq.analysis.model_inputs import InputSpec, input_specs, synthesize_inputs

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'


def _model(signature: str, body: str = "y = Identity(x)") -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(f"{_HEADER}g {signature} {{ {body} }}"))


def _model_with_initializer_as_input() -> ir.Model:
    """y = x + w where w is both an initializer and a graph input (the IR < 4 convention)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    w = onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [x, w],
        [y],
        initializer=[onnx.numpy_helper.from_array(np.ones(3, np.float32), "w")],
    )
    return ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)]))


def test_input_specs_leave_out_initializers_listed_as_graph_inputs() -> None:
    model = _model_with_initializer_as_input()
    assert [value.name for value in model.graph.inputs] == ["x", "w"]
    assert [spec.name for spec in input_specs(model)] == ["x"]


def test_input_specs_give_dtype_and_dims_with_symbols_as_names() -> None:
    (spec,) = input_specs(_model("(float[batch,3,?] x) => (float[batch,3,?] y)"))
    assert spec == InputSpec("x", np.dtype(np.float32), ("batch", 3, None))
    assert spec.batched is True


def test_input_spec_with_a_fixed_first_dim_is_not_batched() -> None:
    (spec,) = input_specs(_model("(float[1,3] x) => (float[1,3] y)"))
    assert spec.shape == (1, 3)
    assert spec.batched is False


@pytest.mark.parametrize(
    ("onnx_type", "dtype"),
    [("float", np.float32), ("int64", np.int64), ("bool", np.bool_)],
)
def test_synthesize_inputs_draw_values_of_the_input_type(onnx_type: str, dtype: type) -> None:
    model = _model(f"({onnx_type}[batch,5] x) => ({onnx_type}[batch,5] y)")
    array = synthesize_inputs(model, 40)["x"]
    assert array.shape == (40, 5)
    assert array.dtype == dtype
    if dtype is np.int64:
        assert array.min() >= 0 and array.max() < 10
    if dtype is np.bool_:
        assert array.any() and not array.all()
    if dtype is np.float32:
        assert np.isfinite(array).all() and array.std() > 0.5


def test_synthesize_inputs_fill_every_input() -> None:
    model = _model(
        "(float[batch,2] a, int64[batch,3] b, bool[batch] c) => (float[batch,2] y)", "y = Identity(a)"
    )
    arrays = synthesize_inputs(model, 4)
    assert {name: (a.shape, a.dtype) for name, a in arrays.items()} == {
        "a": ((4, 2), np.dtype(np.float32)),
        "b": ((4, 3), np.dtype(np.int64)),
        "c": ((4,), np.dtype(np.bool_)),
    }


@pytest.mark.parametrize(
    ("dims", "shape"),
    [
        pytest.param({"seq": 7}, (3, 7, 2), id="named-dim-given"),
        pytest.param(None, (3, 1, 2), id="named-dim-defaults-to-1"),
        pytest.param({"batch": 9, "seq": 7}, (3, 7, 2), id="batch-takes-the-count"),
    ],
)
def test_synthesize_inputs_resolve_symbolic_dims(dims: dict[str, int] | None, shape: tuple[int, ...]) -> None:
    model = _model("(float[batch,seq,2] x) => (float[batch,seq,2] y)")
    assert synthesize_inputs(model, 3, dims=dims)["x"].shape == shape


def test_synthesize_inputs_give_an_unnamed_dim_size_one() -> None:
    model = _model("(float[batch,?] x) => (float[batch,?] y)")
    assert synthesize_inputs(model, 3)["x"].shape == (3, 1)


def test_synthesize_inputs_add_a_sample_axis_to_a_fixed_input() -> None:
    model = _model("(float[1,3] x) => (float[1,3] y)")
    assert synthesize_inputs(model, 5)["x"].shape == (5, 1, 3)


def test_synthesize_inputs_are_deterministic_for_a_seed() -> None:
    model = _model("(float[batch,4] x) => (float[batch,4] y)")
    np.testing.assert_array_equal(synthesize_inputs(model, 4, seed=7)["x"], synthesize_inputs(model, 4, seed=7)["x"])


def test_synthesize_inputs_refuse_an_input_without_shape() -> None:
    model = _model("(float x) => (float y)")
    model.graph.inputs[0].shape = None
    with pytest.raises(ValueError, match="no static type/rank"):
        synthesize_inputs(model)


def test_synthesize_inputs_refuse_a_string_input() -> None:
    with pytest.raises(ValueError, match="cannot be synthesised"):
        synthesize_inputs(_model("(string[batch] x) => (string[batch] y)"))
