"""eliminate-dead: unused nodes, initializers and functions go, in the main graph and in subgraphs; outputs stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpq.core.manager import PassManager
from onnxpq.passes.cleanup.eliminate_dead import EliminateDeadPass

X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5}


def _parse(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _eliminate_and_compare(model: ir.Model, feeds_list: list[dict[str, np.ndarray]]) -> ir.passes.PassResult:
    before = [_run(model, feeds) for feeds in feeds_list]
    result = EliminateDeadPass()(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    for feeds, expected in zip(feeds_list, before, strict=True):
        for b, a in zip(expected, _run(model, feeds), strict=True):
            np.testing.assert_array_equal(a, b)
    return result


def _op_types(graph: ir.Graph) -> list[str]:
    return [node.op_type for node in graph]


def test_dead_chain_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            s = Sigmoid(r)
            y = Add(x, x)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    assert _op_types(model.graph) == ["Add"]


def test_node_with_one_used_output_stays() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2,3] x) => (float[2,3] y) {
            a, b = Split<axis = 0, num_outputs = 2>(x)
            y = Concat<axis = 0>(a, a)
        }
    """)
    before = ir.to_proto(model).SerializeToString()
    assert _eliminate_and_compare(model, [X]).modified is False
    assert ir.to_proto(model).SerializeToString() == before


def test_unused_initializer_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) <float[3] unused = {1.0, 2.0, 3.0}, float[3] used = {4.0, 5.0, 6.0}> {
            y = Add(x, used)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    assert list(model.graph.initializers) == ["used"]


def test_initializer_that_is_a_graph_input_stays() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, float[3] bias) => (float[2,3] y) <float[3] bias = {1.0, 2.0, 3.0}> {
            y = Add(x, x)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is False
    assert list(model.graph.initializers) == ["bias"]
    assert [v.name for v in model.graph.inputs] == ["x", "bias"]


def test_initializer_that_is_a_graph_output_stays() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y, float[3] w) <float[3] w = {1.0, 2.0, 3.0}> {
            y = Add(x, x)
        }
    """)
    assert EliminateDeadPass()(model).modified is False
    assert list(model.graph.initializers) == ["w"]


def test_unused_graph_input_stays() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, float[2,3] unused) => (float[2,3] y) {
            y = Add(x, x)
        }
    """)
    assert EliminateDeadPass()(model).modified is False
    assert [v.name for v in model.graph.inputs] == ["x", "unused"]


def test_custom_domain_node_with_unused_output_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2,3] x) => (float[2,3] y) {
            side = com.example.Log(x)
            y = Add(x, x)
        }
    """)
    assert EliminateDeadPass()(model).modified is True
    assert _op_types(model.graph) == ["Add"]


def test_dead_node_inside_if_branch_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) {
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) {
                    dead = Neg(x)
                    a = Relu(x)
                },
                else_branch = else_g () => (float[2,3] b) { b = Sigmoid(x) }
            >
        }
    """)
    feeds = [{**X, "c": np.array(True)}, {**X, "c": np.array(False)}]
    assert _eliminate_and_compare(model, feeds).modified is True
    assert _op_types(model.graph.node(0).attributes["then_branch"].as_graph()) == ["Relu"]


def test_dead_node_inside_loop_body_is_removed_and_body_inputs_stay() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) <int64 trips = {3}, bool cond = {1}> {
            y = Loop(trips, cond, x) <
                body = body (int64 i, bool c_in, float[2,3] acc) => (bool c_out, float[2,3] acc_out) {
                    dead = Cast<to = 1>(i)
                    c_out = Identity(c_in)
                    acc_out = Add(acc, acc)
                }
            >
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    body = model.graph.node(0).attributes["body"].as_graph()
    assert _op_types(body) == ["Identity", "Add"]
    assert [v.name for v in body.inputs] == ["i", "c_in", "acc"]


def test_unused_subgraph_initializer_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) {
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) <float[3] k = {1.0, 2.0, 3.0}, float[3] unused = {0, 0, 0}> {
                    a = Add(x, k)
                },
                else_branch = else_g () => (float[2,3] b) { b = Sigmoid(x) }
            >
        }
    """)
    feeds = [{**X, "c": np.array(True)}, {**X, "c": np.array(False)}]
    assert _eliminate_and_compare(model, feeds).modified is True
    assert list(model.graph.node(0).attributes["then_branch"].as_graph().initializers) == ["k"]


def test_dead_if_node_takes_the_outer_values_only_its_branches_used() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) <float[3] k = {1.0, 2.0, 3.0}> {
            e = Exp(x)
            dead = If(c) <
                then_branch = then_g () => (float[2,3] a) { a = Add(e, k) },
                else_branch = else_g () => (float[2,3] b) { b = Sub(e, k) }
            >
            y = Relu(x)
        }
    """)
    feeds = [{**X, "c": np.array(True)}, {**X, "c": np.array(False)}]
    assert _eliminate_and_compare(model, feeds).modified is True
    assert _op_types(model.graph) == ["Relu"]
    assert list(model.graph.initializers) == []


def test_unused_optional_output_is_dropped_and_reported_as_modified() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            y, mask = Dropout(x)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    assert len(model.graph.node(0).outputs) == 1


def test_function_used_only_by_a_dead_node_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,3] x) => (float[2,3] y) {
            dead = local.add_one(x)
            y = Relu(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        add_one (a) => (b) {
            one = Constant<value_float = 1.0>()
            b = Add(a, one)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    assert len(model.functions) == 0


def test_dead_node_inside_a_function_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,3] x) => (float[2,3] y) {
            y = local.add_one(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        add_one (a) => (b) {
            one = Constant<value_float = 1.0>()
            dead = Neg(a)
            b = Add(a, one)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    (function,) = model.functions.values()
    assert [n.op_type for n in function] == ["Constant", "Add"]


def test_graph_without_dead_code_is_unchanged() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) <float[3] k = {1.0, 2.0, 3.0}> {
            r = Relu(x)
            y = Add(r, k)
        }
    """)
    before = ir.to_proto(model).SerializeToString()
    assert EliminateDeadPass()(model).modified is False
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize("dead_in_subgraph", [False, True])
def test_eliminate_dead_is_idempotent(dead_in_subgraph: bool) -> None:
    branch_body = "dead = Neg(x)\n a = Relu(x)" if dead_in_subgraph else "a = Relu(x)"
    model = _parse(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) {{
            unused = Exp(x)
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) {{ {branch_body} }},
                else_branch = else_g () => (float[2,3] b) {{ b = Sigmoid(x) }}
            >
        }}
    """)
    assert EliminateDeadPass()(model).modified is True
    assert EliminateDeadPass()(model).modified is False


def test_eliminate_dead_passes_the_managers_numerical_check() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) <float[3] unused = {1.0, 2.0, 3.0}> {
            e = Exp(x)
            s = Sigmoid(e)
            y = Relu(x)
        }
    """)
    manager = PassManager([EliminateDeadPass()], progress=False)
    assert manager(model).modified is True
    (record,) = manager.records
    assert record.numerical_check.startswith("passed"), record.numerical_check
