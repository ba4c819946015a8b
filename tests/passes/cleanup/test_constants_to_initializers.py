"""constants-to-initializers: Constant nodes become initializers of their own graph; outputs do not change."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxpq.core.manager import PassManager
from onnxpq.passes.cleanup.constants_to_initializers import ConstantsToInitializersPass


def _parse(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _assert_same(before: list[np.ndarray], after: list[np.ndarray]) -> None:
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def _lift_and_compare(model: ir.Model, feeds_list: list[dict[str, np.ndarray]]) -> ir.passes.PassResult:
    before = [_run(model, feeds) for feeds in feeds_list]
    result = ConstantsToInitializersPass()(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    for feeds, expected in zip(feeds_list, before, strict=True):
        _assert_same(expected, _run(model, feeds))
    return result


def _constants(model: ir.Model) -> list[ir.Node]:
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Constant"]


X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}

ATTRIBUTE_CASES = {
    "value-tensor": ("value = float[3] {1.0, 2.0, 3.0}", "float[3]", ir.DataType.FLOAT, (3,)),
    "value-int64-tensor": ("value = int64[2] {4, 5}", "int64[2]", ir.DataType.INT64, (2,)),
    "value_float": ("value_float = 2.5", "float", ir.DataType.FLOAT, ()),
    "value_floats": ("value_floats = [1.0, -2.0]", "float[2]", ir.DataType.FLOAT, (2,)),
    "value_int": ("value_int = 7", "int64", ir.DataType.INT64, ()),
    "value_ints": ("value_ints = [1, 2, 3]", "int64[3]", ir.DataType.INT64, (3,)),
    "value_string": ('value_string = "hello"', "string", ir.DataType.STRING, ()),
    "value_strings": ('value_strings = ["a", "bc"]', "string[2]", ir.DataType.STRING, (2,)),
}


@pytest.mark.parametrize("case", list(ATTRIBUTE_CASES))
def test_constant_becomes_initializer_of_same_name(case: str) -> None:
    attribute, out_type, dtype, shape = ATTRIBUTE_CASES[case]
    model = _parse(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y, {out_type} z) {{
            y = Add(x, x)
            k = Constant<{attribute}>()
            z = Identity(k)
        }}
    """)
    result = _lift_and_compare(model, [X])
    assert result.modified is True
    assert _constants(model) == []
    k = model.graph.initializers["k"]
    assert k.dtype == dtype
    assert k.shape == ir.Shape(shape)
    assert model.graph.node(1).inputs[0] is k


def test_constant_feeding_reshape_becomes_initializer() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[3,2] y) {
            shape = Constant<value = int64[2] {3, 2}>()
            y = Reshape(x, shape)
        }
    """)
    assert _lift_and_compare(model, [X]).modified is True
    assert list(model.graph.initializers) == ["shape"]


def test_constant_in_if_branch_becomes_branch_initializer() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) {
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) {
                    k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
                    a = Add(x, k)
                },
                else_branch = else_g () => (float[2,3] b) {
                    k2 = Constant<value_floats = [4.0, 5.0, 6.0]>()
                    b = Mul(x, k2)
                }
            >
        }
    """)
    feeds = [{**X, "c": np.array(True)}, {**X, "c": np.array(False)}]
    assert _lift_and_compare(model, feeds).modified is True
    assert _constants(model) == []
    then_branch, else_branch = (model.graph.node(0).attributes[n].as_graph() for n in ("then_branch", "else_branch"))
    assert list(then_branch.initializers) == ["k"]
    assert list(else_branch.initializers) == ["k2"]
    assert list(model.graph.initializers) == []


def test_constant_in_loop_body_becomes_body_initializer() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            trips = Constant<value = int64 {3}>()
            cond = Constant<value = bool {1}>()
            y = Loop(trips, cond, x) <
                body = body (int64 i, bool c_in, float[2,3] acc) => (bool c_out, float[2,3] acc_out) {
                    step = Constant<value = float[3] {0.5, 1.0, 1.5}>()
                    c_out = Identity(c_in)
                    acc_out = Add(acc, step)
                }
            >
        }
    """)
    assert _lift_and_compare(model, [X]).modified is True
    body = model.graph.node(0).attributes["body"].as_graph()
    assert list(body.initializers) == ["step"]
    assert set(model.graph.initializers) == {"trips", "cond"}


def test_constant_in_scan_body_becomes_body_initializer() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[3] total, float[2,3] scanned) {
            init = Constant<value = float[3] {0.0, 0.0, 0.0}>()
            total, scanned = Scan(init, x) <
                num_scan_inputs = 1,
                body = body (float[3] s_in, float[3] row) => (float[3] s_out, float[3] row_out) {
                    w = Constant<value = float[3] {2.0, 3.0, 4.0}>()
                    row_out = Mul(row, w)
                    s_out = Add(s_in, row_out)
                }
            >
        }
    """)
    assert _lift_and_compare(model, [X]).modified is True
    assert _constants(model) == []
    assert list(model.graph.node(0).attributes["body"].as_graph().initializers) == ["w"]


def test_main_graph_constant_used_inside_a_branch_is_rewired() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) {
            k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) { a = Add(x, k) },
                else_branch = else_g () => (float[2,3] b) { b = Sub(x, k) }
            >
        }
    """)
    feeds = [{**X, "c": np.array(True)}, {**X, "c": np.array(False)}]
    assert _lift_and_compare(model, feeds).modified is True
    k = model.graph.initializers["k"]
    assert {use.node.op_type for use in k.uses()} == {"Add", "Sub"}


def test_constant_that_is_a_graph_output_stays_a_node() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y, float[3] k) {
            y = Add(x, x)
            k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
        }
    """)
    before = ir.to_proto(model).SerializeToString()
    assert ConstantsToInitializersPass()(model).modified is False
    assert ir.to_proto(model).SerializeToString() == before


def test_sparse_constant_stays_a_node(caplog: pytest.LogCaptureFixture) -> None:
    # onnx-ir cannot deserialise sparse_value attributes yet, so the node is built in the IR.
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3]))
    constant = ir.Node(
        "", "Constant", [], [ir.Attr("sparse_value", ir.AttributeType.SPARSE_TENSOR, None)], num_outputs=1
    )
    add = ir.Node("", "Add", [x, constant.outputs[0]], num_outputs=1)
    graph = ir.Graph([x], add.outputs, nodes=[constant, add], opset_imports={"": 17})
    model = ir.Model(graph, ir_version=8)
    caplog.set_level("DEBUG", logger="onnxpq.passes.cleanup.constants_to_initializers")
    assert ConstantsToInitializersPass()(model).modified is False
    assert list(model.graph) == [constant, add]
    assert list(model.graph.initializers) == []
    assert "sparse_value" in caplog.text


def test_constant_inside_a_function_stays_a_node() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,3] x) => (float[2,3] y) {
            y = local.add_one(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        add_one (a) => (b) {
            one = Constant<value_float = 1.0>()
            b = Add(a, one)
        }
    """)
    before = ir.to_proto(model).SerializeToString()
    assert ConstantsToInitializersPass()(model).modified is False
    assert ir.to_proto(model).SerializeToString() == before


def test_model_with_ir_version_3_is_left_unchanged() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [3], [1, 2, 3])),
            helper.make_node("Add", ["x", "k"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3))
    assert ConstantsToInitializersPass()(model).modified is False
    assert len(_constants(model)) == 1


def test_constants_to_initializers_is_idempotent() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
            y = Add(x, k)
        }
    """)
    assert ConstantsToInitializersPass()(model).modified is True
    assert ConstantsToInitializersPass()(model).modified is False


def test_constants_to_initializers_passes_the_managers_numerical_check() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) {
            k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
            total = ReduceSum<keepdims = 0>(x)
            zero = Constant<value_float = 0.0>()
            c = Greater(total, zero)
            y = If(c) <
                then_branch = then_g () => (float[N,3] a) {
                    two = Constant<value_float = 2.0>()
                    s = Mul(x, two)
                    a = Add(s, k)
                },
                else_branch = else_g () => (float[N,3] b) { b = Sub(x, k) }
            >
        }
    """)
    manager = PassManager([ConstantsToInitializersPass()], progress=False)
    assert manager(model).modified is True
    (record,) = manager.records
    assert record.numerical_check.startswith("passed"), record.numerical_check
