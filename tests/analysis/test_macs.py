"""Tests for onnxpq.analysis.macs: MAC / BOP counts of tiny graphs against hand computations."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from onnxpq.analysis.macs import ModelCost, NodeCost, model_cost

_HEADER = '<ir_version: 10, opset_import: ["" : 21, "com.microsoft" : 1]>\n'


def _model(graph_text: str, **initializers: np.ndarray) -> ir.Model:
    """Parse an onnx text graph and attach numpy arrays as its initializers."""
    proto = onnx.parser.parse_model(_HEADER + graph_text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.from_proto(proto)


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _only(cost: ModelCost) -> NodeCost:
    assert len(cost.nodes) == 1, cost.nodes
    return cost.nodes[0]


def _node(cost: ModelCost, name: str) -> NodeCost:
    return next(node for node in cost.nodes if node.node == name)


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_conv_macs_and_params_with_and_without_bias(with_bias: bool) -> None:
    inputs = "x, w, b" if with_bias else "x, w"
    weights = {"w": _rand(4, 3, 3, 3)} | ({"b": _rand(4)} if with_bias else {})
    model = _model(
        f"g (float[1,3,8,8] x) => (float[] y) {{ y = Conv <pads=[1,1,1,1]> ({inputs}) }}",
        **weights,
    )
    node = _only(model_cost(model))
    assert node.macs == 1 * 4 * (8 * 8) * 3 * (3 * 3)
    assert node.weight_params == 4 * 3 * 3 * 3 + (4 if with_bias else 0)


@pytest.mark.parametrize(
    ("c_in", "c_out", "group", "expected"),
    [
        # N * C_out * prod(out) * (C_in/group) * prod(kernel), out = 6x6 (8x8, 3x3 kernel, no pad)
        (4, 6, 2, 1 * 6 * 36 * 2 * 9),
        (4, 4, 4, 1 * 4 * 36 * 1 * 9),
    ],
    ids=["grouped", "depthwise"],
)
def test_grouped_and_depthwise_conv_macs_divide_input_channels_by_group(
    c_in: int, c_out: int, group: int, expected: int
) -> None:
    model = _model(
        f"g (float[1,{c_in},8,8] x) => (float[] y) {{ y = Conv <group={group}> (x, w) }}",
        w=_rand(c_out, c_in // group, 3, 3),
    )
    assert _only(model_cost(model)).macs == expected


def test_strided_padded_conv_macs_match_hand_computation() -> None:
    # out = floor((11 + 1 + 1 - 3) / 2) + 1 = 6 per spatial axis
    # MACs = N * C_out * 6 * 6 * C_in * 3 * 3 = 2 * 8 * 36 * 3 * 9 = 15552
    model = _model(
        "g (float[2,3,11,11] x) => (float[] y)"
        " { y = Conv <strides=[2,2], pads=[1,1,1,1]> (x, w) }",
        w=_rand(8, 3, 3, 3),
    )
    assert _only(model_cost(model)).macs == 15552


def test_conv_transpose_macs_count_input_positions() -> None:
    # N * C_in * prod(in_spatial) * (C_out/group) * prod(kernel) = 1 * 4 * 25 * 2 * 9
    model = _model(
        "g (float[1,4,5,5] x) => (float[] y) { y = ConvTranspose <strides=[2,2]> (x, w) }",
        w=_rand(4, 2, 3, 3),
    )
    assert _only(model_cost(model)).macs == 1800


def test_gemm_with_trans_b_counts_m_n_k_and_bias_params() -> None:
    model = _model(
        "g (float[3,5] a) => (float[3,7] y) { y = Gemm <transB=1> (a, w, c) }",
        w=_rand(7, 5),
        c=_rand(7),
    )
    node = _only(model_cost(model))
    assert node.macs == 3 * 7 * 5
    assert node.weight_params == 7 * 5 + 7


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "expected"),
    [
        ("3,5", "5,7", 3 * 7 * 5),
        ("2,3,5", "2,5,7", 2 * 3 * 7 * 5),
        ("4,1,3,5", "2,5,7", 4 * 2 * 3 * 7 * 5),
        ("5", "5,7", 7 * 5),
        ("3,5", "5", 3 * 5),
        ("5", "5", 5),
    ],
    ids=["2d", "batched-3d", "broadcast-batch", "1d-left", "1d-right", "1d-both"],
)
def test_matmul_macs_follow_numpy_matmul_rules(a_shape: str, b_shape: str, expected: int) -> None:
    model = _model(
        f"g (float[{a_shape}] a, float[{b_shape}] b) => (float[] y) {{ y = MatMul (a, b) }}"
    )
    assert _only(model_cost(model)).macs == expected


def test_shape_inference_error_in_one_node_keeps_the_shapes_of_the_others() -> None:
    # Add's operands do not broadcast: strict onnx inference would drop every shape,
    # leaving the MatMul (whose input comes from Relu) unresolved.
    model = _model(
        """
        g (float[3] a, float[4] b, float[3,5] x) => (float[] z, float[] y) {
            z = Add (a, b)
            r = Relu (x)
            y = MatMul (r, w)
        }
        """,
        w=_rand(5, 7),
    )
    cost = model_cost(model)
    assert (cost.macs, cost.unresolved) == (3 * 7 * 5, ())


def test_matmul_with_initializer_weight_counts_its_params() -> None:
    model = _model("g (float[3,5] a) => (float[3,7] y) { y = MatMul (a, w) }", w=_rand(5, 7))
    node = _only(model_cost(model))
    assert (node.macs, node.weight_params) == (105, 35)


_ATTENTION = """
g (float[N,16,32] x) => (float[N,16,32] y) {
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    v = MatMul (x, wv)
    kt = Transpose <perm=[0,2,1]> (k)
    scores = MatMul (q, kt)
    p = Softmax <axis=-1> (scores)
    y = MatMul (p, v)
}
"""


def _attention_model() -> ir.Model:
    model = _model(_ATTENTION, wq=_rand(32, 32), wk=_rand(32, 32), wv=_rand(32, 32))
    for index, node in enumerate(model.graph):
        node.name = f"n{index}"
    return model


def test_attention_activation_matmuls_count_with_batch_bound_by_input_shapes() -> None:
    cost = model_cost(_attention_model(), {"x": [2, 16, 32]})
    scores, context = _node(cost, "n4"), _node(cost, "n6")
    assert scores.macs == 2 * 16 * 16 * 32  # [2,16,32] @ [2,32,16]
    assert context.macs == 2 * 16 * 32 * 16  # [2,16,16] @ [2,16,32]
    assert (scores.weight_params, context.weight_params) == (0, 0)
    assert cost.unresolved == ()
    assert cost.macs == 3 * (2 * 16 * 32 * 32) + scores.macs + context.macs


def test_binding_a_symbolic_dim_in_one_input_binds_it_in_the_others() -> None:
    model = _model(
        """
        g (float[N,16,8] q, float[N,16,8] k) => (float[] y) {
            kt = Transpose <perm=[0,2,1]> (k)
            y = MatMul (q, kt)
        }
        """
    )
    cost = model_cost(model, {"q": [2, 16, 8]})
    assert (cost.macs, cost.unresolved) == (2 * 16 * 16 * 8, ())


def test_unbound_dynamic_batch_lists_nodes_as_unresolved_with_zero_macs() -> None:
    cost = model_cost(_attention_model())
    assert set(cost.unresolved) == {"n0", "n1", "n2", "n4", "n6"}
    assert cost.macs == 0


def test_unnamed_unresolved_node_gets_a_positional_name() -> None:
    model = _model("g (float[N,5] a) => (float[N,7] y) { y = MatMul (a, w) }", w=_rand(5, 7))
    assert model_cost(model).unresolved == ("MatMul#0",)


@pytest.mark.parametrize(
    ("input_shapes", "message"),
    [
        ({"b": [1, 5]}, "not a graph input"),
        ({"a": [1, 6]}, "contradicts"),
        ({"a": [1, 5, 1]}, "rank"),
        ({"a": [-1, 5]}, "non-negative integers"),
    ],
    ids=["unknown-name", "contradicts-static-dim", "wrong-rank", "negative-dim"],
)
def test_invalid_input_shapes_raise_value_error(
    input_shapes: dict[str, list[int]], message: str
) -> None:
    model = _model("g (float[N,5] a) => (float[N,7] y) { y = MatMul (a, w) }", w=_rand(5, 7))
    with pytest.raises(ValueError, match=message):
        model_cost(model, input_shapes)


def test_string_initializer_is_left_out_of_weight_bits_total() -> None:
    model = _model(
        "g (float[3,5] a) => (float[] y) { y = MatMul (a, w) }",
        w=_rand(5, 7),
        labels=np.array(["cat", "dog"], dtype=object),
    )
    assert model_cost(model).weight_bits_total == 35 * 32


_DQ_CONV = """
g (float[1,3,8,8] x) => (float[] y) {
    w = DequantizeLinear (wq, scale, zp)
    y = Conv <pads=[1,1,1,1]> (x, w)
}
"""


def _dq_conv_model(wq: np.ndarray | None = None, zero_point: int = 0) -> ir.Model:
    wq = np.ones((4, 3, 3, 3), np.int8) if wq is None else wq
    return _model(_DQ_CONV, wq=wq, scale=np.float32(0.1), zp=np.int8(zero_point))


def _conv_of(model: ir.Model) -> NodeCost:
    return next(node for node in model_cost(model).nodes if node.op_type == "Conv")


def test_dequantize_fed_int8_weights_have_8_bits_and_bops_macs_8_32() -> None:
    node = _conv_of(_dq_conv_model())
    assert (node.weight_bits, node.activation_bits, node.weight_params) == (8, 32, 108)
    assert node.bops == node.macs * 8 * 32


def test_onnxpq_bits_metadata_on_dequantize_sets_weight_bits() -> None:
    model = _dq_conv_model()
    next(node for node in model.graph if node.op_type == "DequantizeLinear").metadata_props[
        "onnxpq.bits"
    ] = "4"
    node = _conv_of(model)
    assert node.weight_bits == 4
    assert node.bops == node.macs * 4 * 32


def test_weight_bits_total_counts_dequantize_fed_weights_at_quantized_bits() -> None:
    model = _dq_conv_model()
    next(node for node in model.graph if node.op_type == "DequantizeLinear").metadata_props[
        "onnxpq.bits"
    ] = "4"
    # wq: 108 elements at 4 bits; scale: 1 float32; zero point: 1 int8
    assert model_cost(model).weight_bits_total == 108 * 4 + 32 + 8


def test_weight_bits_total_counts_float_weights_at_32_bits() -> None:
    model = _model(
        "g (float[3,5] a) => (float[3,7] y) { y = Gemm (a, w, c) }", w=_rand(5, 7), c=_rand(7)
    )
    assert model_cost(model).weight_bits_total == (35 + 7) * 32


def test_dequantize_fed_uint8_activation_has_8_activation_bits() -> None:
    model = _model(
        """
        g (uint8[1,3,8,8] xq) => (float[] y) {
            x = DequantizeLinear (xq, scale, zp)
            y = Conv (x, w)
        }
        """,
        w=_rand(4, 3, 3, 3),
        scale=np.float32(0.1),
        zp=np.uint8(128),
    )
    node = _conv_of(model)
    assert (node.weight_bits, node.activation_bits) == (32, 8)


def test_onnxpq_bits_metadata_on_activation_dequantize_sets_activation_bits() -> None:
    """quantize-activations' n-bit grid in a uint8 container (Clip → Q → DQ) counts n bits, with weight bits from the weight's DQ."""
    model = _model(
        """
        g (float[1,3,8,8] x) => (float[] y) {
            c = Clip (x, lo, hi)
            xq = QuantizeLinear (c, scale, zp)
            xd = DequantizeLinear (xq, scale, zp)
            w = DequantizeLinear (wq, wscale, wzp)
            y = Conv (xd, w)
        }
        """,
        lo=np.float32(0.0), hi=np.float32(1.5), scale=np.float32(0.1), zp=np.uint8(0),
        wq=np.ones((4, 3, 3, 3), np.int8), wscale=np.float32(0.1), wzp=np.int8(0),
    )
    activation_dq, weight_dq = (node for node in model.graph if node.op_type == "DequantizeLinear")
    activation_dq.metadata_props["onnxpq.bits"] = "4"
    weight_dq.metadata_props["onnxpq.bits"] = "3"
    node = _conv_of(model)
    assert (node.weight_bits, node.activation_bits, node.weight_params) == (3, 4, 108)
    assert node.bops == node.macs * 3 * 4
    assert model_cost(model).weight_bits_total == 108 * 3 + 32 + 8 + 3 * 32 + 8  # wq at 3 bits; lo, hi, scales, zero points


def test_count_zeros_density_of_half_zero_float_weight() -> None:
    weight = _rand(4, 3, 3, 3)
    weight[:2] = 0.0
    model = _model(
        "g (float[1,3,8,8] x) => (float[] y) { y = Conv <pads=[1,1,1,1]> (x, w) }", w=weight
    )
    node = _only(model_cost(model, count_zeros=True))
    assert node.density == 0.5
    assert node.bops == node.macs * 32 * 32 // 2


def test_count_zeros_density_of_dequantized_weight_counts_zero_point_as_zero() -> None:
    wq = np.full((4, 3, 3, 3), 7, np.int8)
    wq[2:] = 3  # equal to the zero point: dequantizes to 0.0
    node = next(
        n for n in model_cost(_dq_conv_model(wq, zero_point=3), count_zeros=True).nodes
    )
    assert node.density == 0.5


def test_density_is_one_without_count_zeros() -> None:
    weight = np.zeros((5, 7), np.float32)
    model = _model("g (float[3,5] a) => (float[3,7] y) { y = MatMul (a, w) }", w=weight)
    assert _only(model_cost(model)).density == 1.0


def test_matmul_inside_if_branch_is_counted() -> None:
    model = _model(
        """
        g (bool cond, float[3,5] a) => (float[3,7] y) {
            y = If (cond) <
                then_branch = then_g () => (float[3,7] t) { t = MatMul (a, w) },
                else_branch = else_g () => (float[3,7] e) { e = Identity (z) }
            >
        }
        """,
        w=_rand(5, 7),
        z=_rand(3, 7),
    )
    cost = model_cost(model)
    assert [node.op_type for node in cost.nodes] == ["MatMul"]
    assert cost.macs == 3 * 7 * 5


def test_function_call_is_listed_unresolved_not_expanded() -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 21, "local" : 1]>\n'
        "g (float[3,5] a, float[5,7] b) => (float[3,7] y) { y = local.MyMatMul (a, b) }\n"
        '<domain: "local", opset_import: ["" : 21]>\n'
        "MyMatMul (p, q) => (r) { r = MatMul (p, q) }\n"
    )
    proto.graph.node[0].name = "call"
    cost = model_cost(ir.from_proto(proto))
    assert cost.unresolved == ("call",)
    assert cost.macs == 0


@pytest.mark.parametrize(
    ("graph", "initializers", "expected"),
    [
        (
            "g (uint8[3,5] a) => (int32[3,7] y) { y = MatMulInteger (a, w) }",
            {"w": np.ones((5, 7), np.int8)},
            3 * 7 * 5,
        ),
        (
            "g (uint8[1,3,8,8] x) => (int32[] y) { y = ConvInteger (x, w) }",
            {"w": np.ones((4, 3, 3, 3), np.uint8)},
            1 * 4 * 36 * 3 * 9,
        ),
        (
            "g (uint8[1,3,8,8] x) => (uint8[] y)"
            " { y = QLinearConv (x, s, z, w, s, z, s, z) }",
            {"w": np.ones((4, 3, 3, 3), np.uint8), "s": np.float32(0.1), "z": np.uint8(0)},
            1 * 4 * 36 * 3 * 9,
        ),
        (
            "g (uint8[2,3,5] a) => (uint8[2,3,7] y) { y = QLinearMatMul (a, s, z, w, s, z, s, z) }",
            {"w": np.ones((5, 7), np.uint8), "s": np.float32(0.1), "z": np.uint8(0)},
            2 * 3 * 7 * 5,
        ),
    ],
    ids=["MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"],
)
def test_integer_ops_count_like_their_float_ops_at_8_bits(
    graph: str, initializers: dict[str, np.ndarray], expected: int
) -> None:
    node = _only(model_cost(_model(graph, **initializers)))
    assert node.macs == expected
    assert (node.weight_bits, node.activation_bits) == (8, 8)


def test_matmul_nbits_counts_k_n_attributes_and_bits() -> None:
    k, n, block = 64, 32, 32
    model = _model(
        f"g (float[2,{k}] a) => (float[2,{n}] y)"
        " { y = com.microsoft.MatMulNBits"
        f" <K={k}, N={n}, bits=4, block_size={block}> (a, b, s) }}",
        b=np.zeros((n, k // block, block * 4 // 8), np.uint8),
        s=np.ones(n * k // block, np.float32),
    )
    node = _only(model_cost(model))
    assert (node.macs, node.weight_params, node.weight_bits) == (2 * k * n, k * n, 4)


def test_input_model_is_not_modified() -> None:
    model = _attention_model()
    before = ir.to_proto(model).SerializeToString()
    model_cost(model, {"x": [2, 16, 32]}, count_zeros=True)
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize(
    ("k", "n"),
    [(64, 128), (10, 16)],
    # onnx-ir's ShapeInferencePass drops initializers over 1 KB from the proto it infers
    # on and keeps smaller ones, external ones as references: both paths must not read.
    ids=["over-1KB", "under-1KB"],
)
def test_external_data_weights_are_counted_without_reading_the_data(
    tmp_path, k: int, n: int
) -> None:
    # Load, then delete the data file: any read of the weight after that fails, so
    # model_cost succeeding proves it never read it. The final assertion shows the
    # data really was not loaded (and cached) by ir.load before the file went away.
    source = _model(
        f"g (float[N,{k}] a) => (float[N,{n}] y) {{ y = MatMul (a, w) }}", w=_rand(k, n)
    )
    ir.save(source, tmp_path / "m.onnx", external_data="w.bin")
    model = ir.load(tmp_path / "m.onnx")
    weight = model.graph.initializers["w"].const_value
    assert isinstance(weight, ir.ExternalTensor)
    (tmp_path / "w.bin").unlink()

    cost = model_cost(model, {"a": [4, k]})

    assert cost.macs == 4 * n * k
    assert _only(cost).weight_params == k * n
    assert cost.weight_bits_total == k * n * 32
    with pytest.raises(OSError):
        weight.numpy()
