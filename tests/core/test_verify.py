"""The structural verifier."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from onnxpq.core.verify import StructureError, verify_structure


def _model(body: str, inputs: str = "float[2] x", outputs: str = "float[2] y") -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["": 17]>\ng ({inputs}) => ({outputs}) {{\n{body}\n}}'))


def test_valid_graph_passes() -> None:
    verify_structure(_model("a = Relu(x)\ny = Neg(a)"))


def test_dangling_input_is_named() -> None:
    with pytest.raises(StructureError, match="uses 'ghost', which nothing defines"):
        verify_structure(_model("a = Relu(ghost)\ny = Neg(a)"))


def test_cycle_is_reported_as_out_of_order() -> None:
    with pytest.raises(StructureError, match="out of order or a cycle"):
        verify_structure(_model("a = Relu(b)\nb = Relu(a)\ny = Add(a, x)"))


def test_unproduced_graph_output_is_named() -> None:
    model = _model("y = Relu(x)")
    model.graph.outputs.append(ir.Value(name="orphan"))
    with pytest.raises(StructureError, match="graph output 'orphan' is not produced"):
        verify_structure(model)


def test_duplicate_value_names_are_reported() -> None:
    model = _model("a = Relu(x)\ny = Neg(a)")
    model.graph.node(1).outputs[0].name = "a"
    with pytest.raises(StructureError, match="'a' is defined twice"):
        verify_structure(model)


def test_subgraph_may_use_outer_scope_values() -> None:
    then = "then_g () => (float[2] t) { t = Relu(x) }"
    other = "else_g () => (float[2] e) { e = Neg(x) }"
    verify_structure(_model(f"c = ReduceSum(x)\nb = Cast<to=9>(c)\ny = If(b) <then_branch={then}, else_branch={other}>"))


def test_dangling_input_inside_a_subgraph_is_reported() -> None:
    then = "then_g () => (float[2] t) { t = Relu(ghost) }"
    other = "else_g () => (float[2] e) { e = Neg(x) }"
    with pytest.raises(StructureError, match="then_branch: .*'ghost'"):
        verify_structure(_model(f"c = ReduceSum(x)\nb = Cast<to=9>(c)\ny = If(b) <then_branch={then}, else_branch={other}>"))


def test_dequantize_zero_point_type_must_match_the_quantized_input() -> None:
    body = "s = Constant<value=float {0.1}>()\nz = Constant<value=int8 {0}>()\ny = DequantizeLinear(q, s, z)"
    verify_structure(_model(body, inputs="int8[2] q"))
    bad = body.replace("int8 {0}", "uint8 {0}")
    with pytest.raises(StructureError, match="zero point type"):
        verify_structure(_model(bad, inputs="int8[2] q"))
