"""ChannelGroups: which (value, axis) pairs are coupled, in which units, and which groups are refused.

Every graph is built here from ``onnx.parser`` text with seeded weights; the
analysis reads shapes only, so the weight values do not matter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from onnxpq.analysis.channel_groups import ChannelGroup, ChannelGroups, node_labels
from onnxpq.core.context import PassContext


def _model(graph_text: str, weights: dict[str, tuple[int, ...]], opset: int = 17, check: bool = True) -> ir.Model:
    ir_version = 10 if opset >= 21 else 8 if opset < 19 else 9
    proto = onnx.parser.parse_model(f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{graph_text}')
    for node in proto.graph.node:
        node.name = node.output[0]
    rng = np.random.default_rng(0)
    for name, shape in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    if check:
        onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _group(groups: ChannelGroups, value: str, axis: int) -> ChannelGroup:
    group = groups.group_of(value, axis)
    assert group is not None, f"({value}, {axis}) is in no group"
    return group


def _members(group: ChannelGroup) -> dict[tuple[str, int], str]:
    return {(m.value, m.axis): m.role for m in group.members}


# --------------------------------------------------------------------------- couplings


def test_conv_chain_couples_producer_bias_activations_and_consumer_input_channels() -> None:
    model = _model(
        """
        chain (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
            r1 = Relu (c1)
            y = Conv (r1, W2)
        }""",
        {"W1": (8, 3, 3, 3), "B1": (8,), "W2": (4, 8, 1, 1)},
    )
    groups = ChannelGroups.compute(model)
    group = _group(groups, "W1", 0)
    assert _members(group) == {
        ("W1", 0): "producer", ("c1", 1): "activation", ("B1", 0): "param", ("r1", 1): "activation", ("W2", 1): "consumer",
    }
    assert group.prunable and group.units == 8 and group.block == 1 and group.channels == 8
    assert group.producers == ("c1",) and group.consumers == ("y",)
    for member in group.members:
        np.testing.assert_array_equal(member.units, np.arange(8))


def test_batchnorm_parameters_follow_the_channel() -> None:
    model = _model(
        """
        bn (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
            b1 = BatchNormalization (c1, g, b, m, v)
            y = Conv (b1, W2)
        }""",
        {"W1": (8, 3, 3, 3), "g": (8,), "b": (8,), "m": (8,), "v": (8,), "W2": (4, 8, 1, 1)},
    )
    roles = _members(_group(ChannelGroups.compute(model), "W1", 0))
    assert roles[("g", 0)] == "bn-scale"
    assert roles[("b", 0)] == roles[("m", 0)] == roles[("v", 0)] == "param"


def test_residual_add_puts_both_branches_in_one_group_and_one_section() -> None:
    model = _model(
        """
        residual (float[N, 4, 6, 6] x) => (float[N, 3, 6, 6] y) {
            b = Conv <pads = [1, 1, 1, 1]> (x, Wb)
            s = Conv (x, Ws)
            sum = Add (b, s)
            y = Conv (sum, Wo)
        }""",
        {"Wb": (8, 4, 3, 3), "Ws": (8, 4, 1, 1), "Wo": (3, 8, 1, 1)},
    )
    group = _group(ChannelGroups.compute(model), "Wb", 0)
    assert group.member("Ws", 0) is not None and group.member("sum", 1) is not None
    assert group.prunable and group.units == 8
    assert len(group.sections) == 1 and set(group.sections[0].producers) == {"Wb", "Ws"}


def test_concat_maps_each_input_to_its_offset_and_keeps_producers_in_separate_sections() -> None:
    model = _model(
        """
        concat (float[N, 3, 5, 5] x) => (float[N, 2, 5, 5] y) {
            p = Conv (x, Wp)
            q = Conv (x, Wq)
            cat = Concat <axis = 1> (p, q)
            y = Conv (cat, Wc)
        }""",
        {"Wp": (4, 3, 1, 1), "Wq": (6, 3, 1, 1), "Wc": (2, 10, 1, 1)},
    )
    group = _group(ChannelGroups.compute(model), "Wc", 1)
    assert group.units == 10 and group.channels == 10
    np.testing.assert_array_equal(group.member("Wp", 0).units, np.arange(4))  # type: ignore[union-attr]
    np.testing.assert_array_equal(group.member("Wq", 0).units, np.arange(4, 10))  # type: ignore[union-attr]
    assert sorted(s.producers for s in group.sections) == [("Wp",), ("Wq",)]


def test_depthwise_conv_ties_its_input_and_output_channels_and_rewrites_group() -> None:
    model = _model(
        """
        mobilenet (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y) {
            e = Conv (x, We)
            d = Conv <group = 8, pads = [1, 1, 1, 1]> (e, Wd)
            y = Conv (d, Wp)
        }""",
        {"We": (8, 4, 1, 1), "Wd": (16, 1, 3, 3), "Wp": (6, 16, 1, 1)},  # channel multiplier 2
    )
    group = _group(ChannelGroups.compute(model), "We", 0)
    assert group.prunable and group.units == 8
    np.testing.assert_array_equal(group.member("d", 1).units, np.repeat(np.arange(8), 2))  # type: ignore[union-attr]
    assert [(u.node, u.kind, u.data["per_group"]) for u in group.updates] == [("d", "group", 1)]
    assert set(group.producers) == {"e", "d"}


def test_grouped_conv_prunes_whole_groups() -> None:
    model = _model(
        """
        grouped (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {
            a = Conv (x, Wa)
            g = Conv <group = 2, pads = [1, 1, 1, 1]> (a, Wg)
            y = Conv (g, Wo)
        }""",
        {"Wa": (8, 4, 1, 1), "Wg": (8, 4, 3, 3), "Wo": (2, 8, 1, 1)},
    )
    group = _group(ChannelGroups.compute(model), "Wa", 0)
    assert group.prunable and group.units == 2 and group.block == 4
    np.testing.assert_array_equal(group.member("a", 1).units, [0, 0, 0, 0, 1, 1, 1, 1])  # type: ignore[union-attr]


def test_conv_transpose_couples_weight_axis_zero_to_its_input_and_axis_one_to_its_output() -> None:
    model = _model(
        """
        deconv (float[N, 3, 4, 4] x) => (float[N, 2, 8, 8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, W1)
            t = ConvTranspose <strides = [2, 2]> (c, Wt, Bt)
            y = Conv (t, W3)
        }""",
        {"W1": (6, 3, 3, 3), "Wt": (6, 4, 2, 2), "Bt": (4,), "W3": (2, 4, 1, 1)},
    )
    groups = ChannelGroups.compute(model)
    assert _members(_group(groups, "W1", 0))[("Wt", 0)] == "consumer"
    out = _members(_group(groups, "Wt", 1))
    assert out[("Wt", 1)] == "producer" and out[("Bt", 0)] == "param" and out[("W3", 1)] == "consumer"


def test_flatten_into_gemm_maps_a_channel_to_its_spatial_block_of_rows() -> None:
    model = _model(
        """
        flatten_gemm (float[N, 3, 4, 4] x) => (float[N, 5] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, Wc)
            f = Flatten (c)
            y = Gemm (f, Wf)
        }""",
        {"Wc": (4, 3, 3, 3), "Wf": (64, 5)},
    )
    group = _group(ChannelGroups.compute(model), "Wc", 0)
    assert group.prunable and group.units == 4
    np.testing.assert_array_equal(group.member("Wf", 0).units, np.repeat(np.arange(4), 16))  # type: ignore[union-attr]


def test_gemm_with_trans_b_couples_weight_rows_and_bias() -> None:
    model = _model(
        """
        mlp (float[N, 6] x) => (float[N, 3] y) {
            h = Gemm <transB = 1> (x, W1, B1)
            r = Relu (h)
            y = Gemm <transB = 1> (r, W2, B2)
        }""",
        {"W1": (10, 6), "B1": (10,), "W2": (3, 10), "B2": (3,)},
    )
    roles = _members(_group(ChannelGroups.compute(model), "W1", 0))
    assert roles == {
        ("W1", 0): "producer", ("h", 1): "activation", ("B1", 0): "param", ("r", 1): "activation", ("W2", 1): "consumer",
    }


def _attention_text(shapes: str, computed: str = "") -> str:
    return f"""
    attention (float[N, 3, 8] x) => (float[N, 3, 8] y) <{shapes}, float scale = {{1.41421356}}> {{
        q = MatMul (x, Wq)
        k = MatMul (x, Wk)
        v = MatMul (x, Wv){computed}
        q4 = Reshape (q, s4)
        k4 = Reshape (k, s4)
        v4 = Reshape (v, s4)
        qt = Transpose <perm = [0, 2, 1, 3]> (q4)
        kt = Transpose <perm = [0, 2, 3, 1]> (k4)
        vt = Transpose <perm = [0, 2, 1, 3]> (v4)
        scores = MatMul (qt, kt)
        scaled = Div (scores, scale)
        p = Softmax <axis = -1> (scaled)
        ctx = MatMul (p, vt)
        ct = Transpose <perm = [0, 2, 1, 3]> (ctx)
        c3 = Reshape (ct, s3)
        y = MatMul (c3, Wo)
    }}"""


@pytest.mark.parametrize("style", ["constant", "computed"])
def test_attention_projections_are_grouped_per_whole_head(style: str) -> None:
    if style == "constant":
        text = _attention_text("int64[4] s4 = {0, 0, 4, 2}, int64[3] s3 = {0, 0, 8}")
    else:
        text = _attention_text(
            "int64[2] hd = {4, 2}, int64[1] d = {8}, int64[2] ns_index = {0, 1}",
            """
        shape = Shape (x)
        ns = Gather (shape, ns_index)
        s4 = Concat <axis = 0> (ns, hd)
        s3 = Concat <axis = 0> (ns, d)""",
        )
    model = _model(text, {"Wq": (8, 8), "Wk": (8, 8), "Wv": (8, 8), "Wo": (8, 8)})
    group = _group(ChannelGroups.compute(model), "Wq", 1)
    assert group.prunable, group.reason
    assert group.units == 4 and group.block == 2 and group.channels == 8
    assert set(group.producers) == {"q", "k", "v"} and group.consumers == ("y",)
    heads = np.repeat(np.arange(4), 2)
    for weight in ("Wq", "Wk", "Wv"):
        np.testing.assert_array_equal(group.member(weight, 1).units, heads)  # type: ignore[union-attr]
    np.testing.assert_array_equal(group.member("Wo", 0).units, heads)  # type: ignore[union-attr]
    np.testing.assert_array_equal(group.member("scores", 1).units, np.arange(4))  # type: ignore[union-attr]
    assert {u.node for u in group.updates if u.kind == "reshape"} == {"q4", "k4", "v4", "c3"}


def test_ffn_hidden_units_are_one_group_through_bias_and_gelu() -> None:
    model = _model(
        """
        ffn (float[N, S, 8] x) => (float[N, S, 8] y) {
            h = MatMul (x, W1)
            hb = Add (h, B1)
            g = Gelu (hb)
            y = MatMul (g, W2)
        }""",
        {"W1": (8, 16), "B1": (16,), "W2": (16, 8)},
        opset=20,
    )
    group = _group(ChannelGroups.compute(model), "W1", 1)
    assert group.prunable and group.units == 16
    assert _members(group)[("B1", 0)] == "param" and _members(group)[("W2", 0)] == "consumer"


def test_split_maps_outputs_to_input_ranges_and_records_the_sizes_update() -> None:
    model = _model(
        """
        split (float[N, 3, 6, 6] x) => (float[N, 2, 6, 6] y) <int64[2] sz = {3, 5}> {
            c = Conv (x, W1)
            a, b = Split <axis = 1> (c, sz)
            pa = Conv (a, Wa)
            pb = Conv (b, Wb)
            y = Add (pa, pb)
        }""",
        {"W1": (8, 3, 1, 1), "Wa": (2, 3, 1, 1), "Wb": (2, 5, 1, 1)},
    )
    group = _group(ChannelGroups.compute(model), "W1", 0)
    assert group.prunable
    np.testing.assert_array_equal(group.member("Wb", 1).units, np.arange(3, 8))  # type: ignore[union-attr]
    assert [u.kind for u in group.updates] == ["split"]


def test_slice_with_step_one_on_the_channel_axis_maps_its_range() -> None:
    model = _model(
        """
        slice (float[N, 3, 6, 6] x) => (float[N, 2, 6, 6] y) <int64[1] st = {2}, int64[1] en = {8}, int64[1] ax = {1}> {
            c = Conv (x, W1)
            s = Slice (c, st, en, ax)
            y = Conv (s, W2)
        }""",
        {"W1": (8, 3, 1, 1), "W2": (2, 6, 1, 1)},
    )
    group = _group(ChannelGroups.compute(model), "W1", 0)
    assert group.prunable
    np.testing.assert_array_equal(group.member("W2", 1).units, np.arange(2, 8))  # type: ignore[union-attr]
    assert [(u.kind, u.data["start"], u.data["end"]) for u in group.updates] == [("slice", 2, 8)]


def test_a_weight_shared_by_two_convs_joins_their_groups() -> None:
    model = _model(
        """
        tied (float[N, 3, 4, 4] x, float[N, 3, 4, 4] z) => (float[N, 2, 4, 4] y) {
            a = Conv (x, W)
            b = Conv (z, W)
            ra = Relu (a)
            rb = Relu (b)
            pa = Conv (ra, Wa)
            pb = Conv (rb, Wb)
            y = Add (pa, pb)
        }""",
        {"W": (8, 3, 1, 1), "Wa": (2, 8, 1, 1), "Wb": (2, 8, 1, 1)},
    )
    group = _group(ChannelGroups.compute(model), "W", 0)
    assert group.prunable and group.member("Wa", 1) is not None and group.member("Wb", 1) is not None


# --------------------------------------------------------------------------- refusals


def _refusal(model: ir.Model, value: str, axis: int) -> str:
    group = _group(ChannelGroups.compute(model), value, axis)
    assert not group.prunable
    assert group.reason
    return group.reason


def test_graph_output_on_the_axis_is_refused() -> None:
    model = _model(
        """
        out (float[N, 3, 4, 4] x) => (float[N, 8, 4, 4] r, float[N, 2, 4, 4] y) {
            c = Conv (x, W1)
            r = Relu (c)
            y = Conv (r, W2)
        }""",
        {"W1": (8, 3, 1, 1), "W2": (2, 8, 1, 1)},
    )
    assert "'r' is a graph output" in _refusal(model, "W1", 0)


def test_residual_with_the_graph_input_is_refused() -> None:
    model = _model(
        """
        identity_shortcut (float[N, 8, 4, 4] x) => (float[N, 2, 4, 4] y) {
            c = Conv (x, W1)
            s = Add (c, x)
            y = Conv (s, W2)
        }""",
        {"W1": (8, 8, 1, 1), "W2": (2, 8, 1, 1)},
    )
    assert "'x' is a graph input" in _refusal(model, "W1", 0)


def test_op_without_a_rule_is_refused() -> None:
    model = _model(
        """
        d2s (float[N, 3, 4, 4] x) => (float[N, 3, 8, 8] y) {
            c = Conv (x, W1)
            d = DepthToSpace <blocksize = 2> (c)
            y = Conv (d, W2)
        }""",
        {"W1": (8, 3, 1, 1), "W2": (3, 2, 1, 1)},
    )
    assert "DepthToSpace has no coupling rule" in _refusal(model, "W1", 0)


def test_custom_domain_op_is_refused() -> None:
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        custom (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) {
            c = Conv (x, W1)
            f = com.example.Frob (c)
            y = Conv (f, W2)
        }"""
    )
    for name, shape in {"W1": (8, 3, 1, 1), "W2": (2, 8, 1, 1)}.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), name))
    assert "custom ops have no rule" in _refusal(ir.from_proto(proto), "W1", 0)


def test_value_read_inside_a_subgraph_is_refused() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["c"], ["t"])], "then", [], [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["c"], ["e"])], "else", [], [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)]
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W1"], ["c"], name="c"),
            helper.make_node("If", ["cond"], ["i"], name="i", then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Conv", ["i", "W2"], ["y"], name="y"),
        ],
        "subgraph",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4]),
         helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "W1"),
            numpy_helper.from_array(np.ones((2, 8, 1, 1), np.float32), "W2"),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert "read inside a subgraph" in _refusal(model, "W1", 0)


def test_reshape_mixing_the_channel_with_other_dims_is_refused() -> None:
    model = _model(
        """
        mix (float[N, 3, 4, 4] x) => (float[N, 5] y) <int64[3] s = {0, 2, 64}> {
            c = Conv <pads = [1, 1, 1, 1]> (x, Wc)
            m = Reshape (c, s)
            f = ReduceMean <axes = [1], keepdims = 0> (m)
            y = Gemm (f, Wf)
        }""",
        {"Wc": (8, 3, 3, 3), "Wf": (64, 5)},
    )
    assert "mixes the channel axis" in _refusal(model, "Wc", 0)


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ("Softmax <axis = 1>", "normalises over axis 1"),
        ("LpNormalization <axis = 1>", "no coupling rule"),
        ("ReduceSum <keepdims = 1> (c, axes)", "reduces over axis 1"),
    ],
)
def test_ops_that_mix_channels_are_refused(op: str, reason: str) -> None:
    call = op if "(" in op else f"{op} (c)"
    model = _model(
        f"""
        mixing (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) <int64[1] axes = {{1}}> {{
            c = Conv (x, W1)
            m = {call}
            y = Conv (m, W2)
        }}""",
        {"W1": (8, 3, 1, 1), "W2": (2, 8 if "Reduce" not in op else 1, 1, 1)},
    )
    assert reason in _refusal(model, "W1", 0)


def test_flatten_with_dynamic_spatial_dims_is_refused() -> None:
    model = _model(
        """
        dynamic (float[N, 3, H, W] x) => (float[N, 5] y) {
            c = Conv (x, Wc)
            f = Flatten (c)
            y = MatMul (f, Wf)
        }""",
        {"Wc": (4, 3, 1, 1), "Wf": (64, 5)},
    )
    assert "dynamic dims" in _refusal(model, "Wc", 0)


def test_shape_read_at_the_channel_index_is_refused() -> None:
    model = _model(
        """
        shape_read (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y, int64[1] n) <int64[1] one = {1}> {
            c = Conv (x, W1)
            shape = Shape (c)
            n = Gather (shape, one)
            y = Conv (c, W2)
        }""",
        {"W1": (8, 3, 1, 1), "W2": (2, 8, 1, 1)},
    )
    assert "size of the channel axis is read" in _refusal(model, "W1", 0)


def test_shape_read_at_other_indices_is_allowed() -> None:
    model = _model(
        """
        shape_read (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y, int64[1] n) <int64[1] zero = {0}> {
            c = Conv (x, W1)
            shape = Shape (c)
            n = Gather (shape, zero)
            y = Conv (c, W2)
        }""",
        {"W1": (8, 3, 1, 1), "W2": (2, 8, 1, 1)},
    )
    assert _group(ChannelGroups.compute(model), "W1", 0).prunable


# --------------------------------------------------------------------------- the analysis object


def test_compute_does_not_modify_the_model() -> None:
    model = _model(_attention_text("int64[4] s4 = {0, 0, 4, 2}, int64[3] s3 = {0, 0, 8}"),
                   {"Wq": (8, 8), "Wk": (8, 8), "Wv": (8, 8), "Wo": (8, 8)})
    before = ir.to_proto(model).SerializeToString()
    ChannelGroups.compute(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_groups_are_cached_in_the_pass_context() -> None:
    model = _model(
        """
        chain (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
            y = Conv (c1, W2)
        }""",
        {"W1": (8, 3, 3, 3), "W2": (4, 8, 1, 1)},
    )
    with PassContext() as ctx:
        first = ctx.analyses.get(ChannelGroups, model)
        assert ctx.analyses.get(ChannelGroups, model) is first
    assert [g.prunable for g in first.groups] == [True, False]
    assert first.graph.number_of_nodes() == sum(len(g.members) for g in first.groups)


def test_unnamed_and_duplicate_nodes_get_unique_labels() -> None:
    model = _model(
        """
        labels (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
            y = Conv (c1, W2)
        }""",
        {"W1": (8, 3, 3, 3), "W2": (4, 8, 1, 1)},
    )
    for node in model.graph:
        node.name = ""
    labels = node_labels(model.graph)
    assert sorted(labels.values()) == ["Conv#0", "Conv#1"]
    assert ChannelGroups.compute(model).groups[0].producers == ("Conv#0",)


def test_shape_sliced_before_the_channel_index_is_allowed() -> None:
    model = _model(
        """
        shape_slice (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y, int64[1] n) <int64[1] zero = {0}, int64[1] one = {1}> {
            c = Conv (x, W1)
            shape = Shape (c)
            n = Slice (shape, zero, one)
            y = Conv (c, W2)
        }""",
        {"W1": (8, 3, 1, 1), "W2": (2, 8, 1, 1)},
    )
    assert _group(ChannelGroups.compute(model), "W1", 0).prunable


def test_a_bias_deduplicated_through_identity_is_sliced_per_use() -> None:
    """Exporters share equal tensors (zero biases) via Identity; that must not couple unrelated layers."""
    model = _model(
        """
        dedup (float[N, 8] x) => (float[N, 8] y) {
            b1 = Identity (zeros)
            b2 = Identity (zeros)
            h = MatMul (x, W1)
            hb = Add (h, b1)
            r = Relu (hb)
            o = MatMul (r, W2)
            ob = Add (o, b2)
            y = LayerNormalization (ob, gamma, zeros)
        }""",
        {"W1": (8, 8), "W2": (8, 8), "gamma": (8,), "zeros": (8,)},
    )
    groups = ChannelGroups.compute(model)
    hidden = _group(groups, "W1", 1)
    assert hidden.prunable, hidden.reason
    (bias,) = [m for m in hidden.members if m.value == "b1"]
    assert bias.constant and bias.role == "param" and bias.use is None
    assert not _group(groups, "W2", 1).prunable  # the LayerNorm output is a graph output
