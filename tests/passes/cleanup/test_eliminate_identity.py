"""eliminate-identity: Identity nodes go, graph output names stay, outputs do not change."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from onnxpq.core.manager import PassManager
from onnxpq.passes.cleanup.eliminate_identity import EliminateIdentityPass

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
    result = EliminateIdentityPass()(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    for feeds, expected in zip(feeds_list, before, strict=True):
        for b, a in zip(expected, _run(model, feeds), strict=True):
            np.testing.assert_array_equal(a, b)
    return result


def _identities(model: ir.Model) -> list[ir.Node]:
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Identity"]


def test_identity_between_nodes_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            i = Identity(r)
            j = Identity(i)
            y = Neg(j)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    assert [n.op_type for n in model.graph] == ["Relu", "Neg"]


def test_identity_producing_a_graph_output_keeps_the_output_name() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            y = Identity(r)
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    assert [n.op_type for n in model.graph] == ["Relu"]
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_identity_from_graph_input_to_graph_output_stays() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            y = Identity(x)
        }
    """)
    before = ir.to_proto(model).SerializeToString()
    assert EliminateIdentityPass()(model).modified is False
    assert ir.to_proto(model).SerializeToString() == before


def test_identity_inside_loop_body_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) <int64 trips = {3}, bool cond = {1}> {
            y = Loop(trips, cond, x) <
                body = body (int64 i, bool c_in, float[2,3] acc) => (bool c_out, float[2,3] acc_out) {
                    c_out = Identity(c_in)
                    t = Identity(acc)
                    acc_out = Add(t, t)
                }
            >
        }
    """)
    assert _eliminate_and_compare(model, [X]).modified is True
    body = model.graph.node(0).attributes["body"].as_graph()
    # c_out = Identity(c_in) maps a body input to a body output: it has to stay.
    assert [n.op_type for n in body] == ["Identity", "Add"]


def test_identity_inside_if_branch_is_removed() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, bool c) => (float[2,3] y) {
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) { r = Relu(x)  a = Identity(r) },
                else_branch = else_g () => (float[2,3] b) { s = Identity(x)  b = Neg(s) }
            >
        }
    """)
    feeds = [{**X, "c": np.array(True)}, {**X, "c": np.array(False)}]
    assert _eliminate_and_compare(model, feeds).modified is True
    assert _identities(model) == []


def test_eliminate_identity_is_idempotent() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            y = Identity(r)
        }
    """)
    assert EliminateIdentityPass()(model).modified is True
    assert EliminateIdentityPass()(model).modified is False


def test_eliminate_identity_passes_the_managers_numerical_check() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) {
            r = Relu(x)
            i = Identity(r)
            y = Neg(i)
        }
    """)
    manager = PassManager([EliminateIdentityPass()], progress=False)
    assert manager(model).modified is True
    (record,) = manager.records
    assert record.numerical_check.startswith("passed"), record.numerical_check
