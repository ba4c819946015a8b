"""fold-batchnorm: BN folded into Conv/ConvTranspose/Gemm/MatMul keeps the outputs; other cases stay as they are."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.core.manager import PassManager
from onnxpq.passes.cleanup.fold_batchnorm import FoldBatchNormPass

_NP_TO_ONNX = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}


def _tensor(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _bn_initializers(channels: int, dtype: type = np.float32, prefix: str = "bn", seed: int = 1) -> list[TensorProto]:
    rng = np.random.default_rng(seed)
    return [
        _tensor(f"{prefix}_scale", rng.uniform(0.5, 1.5, channels).astype(dtype)),
        _tensor(f"{prefix}_bias", rng.normal(size=channels).astype(dtype)),
        _tensor(f"{prefix}_mean", rng.normal(size=channels).astype(dtype)),
        _tensor(f"{prefix}_var", rng.uniform(0.5, 2.0, channels).astype(dtype)),
    ]


def _bn_node(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    inputs = [x, f"{prefix}_scale", f"{prefix}_bias", f"{prefix}_mean", f"{prefix}_var"]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, epsilon=1e-3, **attrs)


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto],
    opset: int = 17,
) -> ir.Model:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _conv_bn(
    *,
    bias: bool = False,
    group: int = 1,
    c_in: int = 4,
    c_out: int = 8,
    batch: int | str = "N",
    dtype: type = np.float32,
) -> ir.Model:
    rng = np.random.default_rng(0)
    inits = [_tensor("W", rng.normal(size=(c_out, c_in // group, 3, 3)).astype(dtype))]
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(_tensor("B", rng.normal(size=c_out).astype(dtype)))
        conv_inputs.append("B")
    elem = _NP_TO_ONNX[dtype]
    return _model(
        [
            helper.make_node("Conv", conv_inputs, ["conv_out"], name="conv", group=group, pads=[1, 1, 1, 1]),
            _bn_node("conv_out", "y"),
        ],
        [helper.make_tensor_value_info("x", elem, [batch, c_in, 5, 5])],
        [helper.make_tensor_value_info("y", elem, [batch, c_out, 5, 5])],
        inits + _bn_initializers(c_out, dtype),
    )


def _conv_transpose_bn(*, group: int = 1, c_in: int = 4, c_out: int = 6, bias: bool = False) -> ir.Model:
    rng = np.random.default_rng(0)
    inits = [_tensor("W", rng.normal(size=(c_in, c_out // group, 3, 3)).astype(np.float32))]
    inputs = ["x", "W"]
    if bias:
        inits.append(_tensor("B", rng.normal(size=c_out).astype(np.float32)))
        inputs.append("B")
    return _model(
        [
            helper.make_node("ConvTranspose", inputs, ["conv_out"], name="deconv", group=group, strides=[2, 2]),
            _bn_node("conv_out", "y"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, 9, 9])],
        inits + _bn_initializers(c_out),
    )


def _gemm_bn(
    *,
    trans_b: int = 0,
    alpha: float = 1.0,
    beta: float = 1.0,
    bias_shape: tuple[int, ...] | None = (6,),
    k: int = 5,
    n: int = 6,
    dtype: type = np.float32,
) -> ir.Model:
    rng = np.random.default_rng(0)
    weight_shape = (n, k) if trans_b else (k, n)
    inits = [_tensor("W", rng.normal(size=weight_shape).astype(dtype))]
    inputs = ["x", "W"]
    if bias_shape is not None:
        inits.append(_tensor("C", rng.normal(size=bias_shape).astype(dtype)))
        inputs.append("C")
    return _model(
        [
            helper.make_node("Gemm", inputs, ["gemm_out"], name="gemm", transB=trans_b, alpha=alpha, beta=beta),
            _bn_node("gemm_out", "y"),
        ],
        [helper.make_tensor_value_info("x", _NP_TO_ONNX[dtype], ["N", k])],
        [helper.make_tensor_value_info("y", _NP_TO_ONNX[dtype], ["N", n])],
        inits + _bn_initializers(n, dtype),
    )


def _matmul_bn(*, rank: int = 2, k: int = 5, n: int = 6) -> ir.Model:
    rng = np.random.default_rng(0)
    x_shape = ["N", k] if rank == 2 else ["N", n, k]
    y_shape = ["N", n] if rank == 2 else ["N", n, n]
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["mm_out"], name="mm"), _bn_node("mm_out", "y")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [_tensor("W", rng.normal(size=(k, n)).astype(np.float32)), *_bn_initializers(n)],
    )


def _feeds(model: ir.Model, batch: int = 3, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = [d if isinstance(d, int) else batch for d in value.shape]
        if value.dtype == ir.DataType.BOOL:
            feeds[value.name] = np.array(True)
        else:
            feeds[value.name] = rng.normal(size=shape).astype(value.dtype.numpy())
    return feeds


def _run(model: ir.Model | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, str) else ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _assert_close(before: list[np.ndarray], after: list[np.ndarray], rtol: float = 1e-5) -> None:
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = float(np.max(np.abs(b.astype(np.float64)), initial=1.0))
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=0, atol=rtol * scale)


def _op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)]


def _fold_and_compare(model: ir.Model, rtol: float = 1e-5) -> ir.passes.PassResult:
    feeds = _feeds(model)
    before = _run(model, feeds)
    result = FoldBatchNormPass()(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    _assert_close(before, _run(model, feeds), rtol)
    return result


FOLDABLE = {
    "conv-no-bias": lambda: _conv_bn(),
    "conv-bias": lambda: _conv_bn(bias=True),
    "conv-group2": lambda: _conv_bn(group=2, bias=True),
    "conv-depthwise": lambda: _conv_bn(group=4, c_in=4, c_out=8),
    "convtranspose": lambda: _conv_transpose_bn(),
    "convtranspose-bias": lambda: _conv_transpose_bn(bias=True),
    "convtranspose-group2": lambda: _conv_transpose_bn(group=2, c_in=4, c_out=6),
    "gemm-transB0": lambda: _gemm_bn(trans_b=0),
    "gemm-transB1": lambda: _gemm_bn(trans_b=1),
    "gemm-alpha-beta": lambda: _gemm_bn(trans_b=1, alpha=0.5, beta=2.0),
    "gemm-no-bias": lambda: _gemm_bn(bias_shape=None, alpha=3.0),
    "gemm-scalar-bias": lambda: _gemm_bn(bias_shape=(), beta=0.5),
    "gemm-bias-1": lambda: _gemm_bn(bias_shape=(1,)),
    "gemm-double": lambda: _gemm_bn(trans_b=1, alpha=2.0, dtype=np.float64),
    "matmul-2d": lambda: _matmul_bn(),
}


@pytest.mark.parametrize("case", list(FOLDABLE))
def test_fold_removes_batchnorm_and_keeps_outputs(case: str) -> None:
    model = FOLDABLE[case]()
    result = _fold_and_compare(model)
    assert result.modified is True
    assert "BatchNormalization" not in _op_types(model)
    assert len(model.graph) == 1


@pytest.mark.parametrize("batch", ["N", 1, 3])
def test_fold_conv_with_static_or_dynamic_batch(batch: int | str) -> None:
    model = _conv_bn(batch=batch)
    feeds = _feeds(model, batch=3 if batch == "N" else int(batch))
    before = _run(model, feeds)
    assert FoldBatchNormPass()(model).modified is True
    _assert_close(before, _run(model, feeds))


def test_fold_matmul_becomes_gemm() -> None:
    model = _matmul_bn()
    FoldBatchNormPass()(model)
    assert _op_types(model) == ["Gemm"]


def test_fold_keeps_graph_output_name() -> None:
    model = _conv_bn()
    FoldBatchNormPass()(model)
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0].producer() is model.graph.node(0)


def test_fold_rewires_batchnorm_consumers() -> None:
    rng = np.random.default_rng(0)
    model = _model(
        [
            helper.make_node("Conv", ["x", "W"], ["conv_out"], name="conv"),
            _bn_node("conv_out", "bn_out"),
            helper.make_node("Relu", ["bn_out"], ["y"]),
            helper.make_node("Sigmoid", ["bn_out"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 2, 2]),
        ],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )
    assert _fold_and_compare(model).modified is True
    assert _op_types(model) == ["Conv", "Relu", "Sigmoid"]
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


def test_fold_creates_new_initializers_and_removes_unused_old_ones() -> None:
    model = _conv_bn()
    FoldBatchNormPass()(model)
    assert set(model.graph.initializers) == {"W_bnfold", "W_bnfold_bias"}
    assert list(model.graph.node(0).inputs[1:]) == [
        model.graph.initializers["W_bnfold"],
        model.graph.initializers["W_bnfold_bias"],
    ]


def test_fold_never_writes_into_the_original_weight_tensor() -> None:
    model = _conv_bn(bias=True)
    weight = model.graph.initializers["W"].const_value
    bias = model.graph.initializers["B"].const_value
    weight_copy, bias_copy = weight.numpy().copy(), bias.numpy().copy()
    FoldBatchNormPass()(model)
    np.testing.assert_array_equal(weight.numpy(), weight_copy)
    np.testing.assert_array_equal(bias.numpy(), bias_copy)


def test_fold_with_weight_shared_by_an_unfolded_conv_keeps_the_old_weight() -> None:
    rng = np.random.default_rng(0)
    model = _model(
        [
            helper.make_node("Conv", ["x", "W"], ["a"], name="conv_a"),
            _bn_node("a", "y"),
            helper.make_node("Conv", ["x", "W"], ["z"], name="conv_b"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 2, 2]),
        ],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )
    assert _fold_and_compare(model).modified is True
    assert "W" in model.graph.initializers
    assert model.graph.node("conv_b").inputs[1] is model.graph.initializers["W"]
    assert model.graph.node("conv_a").inputs[1].name == "W_bnfold"


def test_fold_two_convs_sharing_weight_and_batchnorm_params() -> None:
    rng = np.random.default_rng(0)
    model = _model(
        [
            helper.make_node("Conv", ["x", "W"], ["a"], name="conv_a"),
            _bn_node("a", "y"),
            helper.make_node("Conv", ["x", "W"], ["b"], name="conv_b"),
            helper.make_node(
                "BatchNormalization", ["b", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"], name="bn_b"
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 2, 2]),
        ],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )
    assert _fold_and_compare(model).modified is True
    assert _op_types(model) == ["Conv", "Conv"]
    assert set(model.graph.initializers) == {"W_bnfold", "W_bnfold_bias", "W_bnfold_1", "W_bnfold_bias_1"}


def test_fold_two_batchnorms_in_a_row() -> None:
    rng = np.random.default_rng(0)
    model = _model(
        [
            helper.make_node("Conv", ["x", "W"], ["a"], name="conv"),
            _bn_node("a", "b"),
            _bn_node("b", "y", prefix="bn2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        [
            _tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)),
            *_bn_initializers(5),
            *_bn_initializers(5, prefix="bn2", seed=2),
        ],
    )
    assert _fold_and_compare(model).modified is True
    assert _op_types(model) == ["Conv"]


def test_fold_float16_conv_keeps_dtype() -> None:
    model = _conv_bn(bias=True, dtype=np.float16)
    result = _fold_and_compare(model, rtol=5e-3)
    assert result.modified is True
    assert {v.dtype for v in model.graph.initializers.values()} == {ir.DataType.FLOAT16}


def test_fold_is_idempotent() -> None:
    model = _conv_bn()
    assert FoldBatchNormPass()(model).modified is True
    assert FoldBatchNormPass()(model).modified is False


def _conv_bn_training_mode_0() -> ir.Model:
    rng = np.random.default_rng(0)
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["a"], name="conv"), _bn_node("a", "y", training_mode=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )


def test_fold_batchnorm_with_explicit_training_mode_0() -> None:
    model = _conv_bn_training_mode_0()
    assert _fold_and_compare(model).modified is True
    assert _op_types(model) == ["Conv"]


def _relu_bn() -> ir.Model:
    return _model(
        [helper.make_node("Relu", ["x"], ["r"]), _bn_node("r", "y")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])],
        _bn_initializers(4),
    )


def _conv_output_with_two_consumers() -> ir.Model:
    rng = np.random.default_rng(0)
    return _model(
        [
            helper.make_node("Conv", ["x", "W"], ["a"], name="conv"),
            _bn_node("a", "y"),
            helper.make_node("Relu", ["a"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 2, 2]),
        ],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )


def _conv_output_is_graph_output() -> ir.Model:
    rng = np.random.default_rng(0)
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["a"], name="conv"), _bn_node("a", "y")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 5, 2, 2]),
        ],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )


def _training_mode_bn() -> ir.Model:
    rng = np.random.default_rng(0)
    return _model(
        [
            helper.make_node("Conv", ["x", "W"], ["a"], name="conv"),
            helper.make_node(
                "BatchNormalization",
                ["a", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                ["y", "running_mean", "running_var"],
                name="bn",
                training_mode=1,
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )


def _weight_is_graph_input() -> ir.Model:
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["a"], name="conv"), _bn_node("a", "y")],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [5, 3, 3, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        _bn_initializers(5),
    )


def _weight_computed() -> ir.Model:
    rng = np.random.default_rng(0)
    return _model(
        [
            helper.make_node("Abs", ["W0"], ["W"]),
            helper.make_node("Conv", ["x", "W"], ["a"], name="conv"),
            _bn_node("a", "y"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        [_tensor("W0", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )


def _bn_mean_is_graph_input() -> ir.Model:
    rng = np.random.default_rng(0)
    inits = [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)]
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["a"], name="conv"), _bn_node("a", "y")],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
            helper.make_tensor_value_info("bn_mean", TensorProto.FLOAT, [5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        inits,
    )


def _custom_domain_producer() -> ir.Model:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["a"], name="conv", domain="com.example"), _bn_node("a", "y")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        [_tensor("W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)), *_bn_initializers(5)],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)], ir_version=8
    )
    return ir.from_proto(proto)


NOT_FOLDABLE = {
    "bn-after-relu": _relu_bn,
    "producer-output-has-two-consumers": _conv_output_with_two_consumers,
    "producer-output-is-graph-output": _conv_output_is_graph_output,
    "bn-training-mode": _training_mode_bn,
    "weight-is-graph-input": _weight_is_graph_input,
    "weight-is-computed": _weight_computed,
    "bn-mean-is-graph-input": _bn_mean_is_graph_input,
    "custom-domain-producer": _custom_domain_producer,
    "matmul-3d-output": lambda: _matmul_bn(rank=3),
    "gemm-2d-bias": lambda: _gemm_bn(bias_shape=(1, 6)),
}


@pytest.mark.parametrize("case", list(NOT_FOLDABLE))
def test_fold_leaves_unfoldable_graph_unchanged(case: str) -> None:
    model = NOT_FOLDABLE[case]()
    before = ir.to_proto(model).SerializeToString()
    result = FoldBatchNormPass()(model)
    assert result.modified is False
    assert ir.to_proto(model).SerializeToString() == before


def test_fold_logs_why_it_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="onnxpq.passes.cleanup.fold_batchnorm")
    FoldBatchNormPass()(_conv_output_with_two_consumers())
    assert "has 2 consumers" in caplog.text


def test_fold_inside_if_branch() -> None:
    rng = np.random.default_rng(0)

    def branch(name: str, seed: int) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("Conv", ["x", f"{name}_W"], [f"{name}_a"], name=f"{name}_conv"),
                _bn_node(f"{name}_a", f"{name}_y", prefix=f"{name}_bn"),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 5, 2, 2])],
            [
                _tensor(f"{name}_W", rng.normal(size=(5, 3, 3, 3)).astype(np.float32)),
                *_bn_initializers(5, prefix=f"{name}_bn", seed=seed),
            ],
        )

    model = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch("then", 1), else_branch=branch("else", 2))],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 2, 2])],
        [],
    )
    feeds = _feeds(model)
    results = {}
    for cond in (True, False):
        feeds["c"] = np.array(cond)
        results[cond] = _run(model, feeds)
    assert FoldBatchNormPass()(model).modified is True
    assert "BatchNormalization" not in _op_types(model)
    for cond in (True, False):
        feeds["c"] = np.array(cond)
        _assert_close(results[cond], _run(model, feeds))


def test_fold_with_external_data(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    source = tmp_path / "model.onnx"
    ir.save(_conv_bn(bias=True), source, external_data="model.data", size_threshold_bytes=0)
    data_digest = hashlib.sha256((tmp_path / "model.data").read_bytes()).hexdigest()
    model = ir.load(source)
    assert isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor)
    feeds = _feeds(model)
    before = _run(str(source), feeds)

    assert FoldBatchNormPass()(model).modified is True
    folded = tmp_path / "folded.onnx"
    ir.save(model, folded, external_data="folded.data", size_threshold_bytes=0)
    _assert_close(before, _run(str(folded), feeds))
    assert hashlib.sha256((tmp_path / "model.data").read_bytes()).hexdigest() == data_digest


@pytest.mark.parametrize("case", ["conv-bias", "convtranspose-group2", "gemm-alpha-beta", "matmul-2d"])
def test_fold_passes_the_managers_numerical_check(case: str) -> None:
    manager = PassManager([FoldBatchNormPass()], progress=False)
    result = manager(FOLDABLE[case]())
    assert result.modified is True
    (record,) = manager.records
    assert record.numerical_check.startswith("passed"), record.numerical_check
