"""quantize-static: int8 QDQ that onnxruntime fuses into integer kernels, checked in onnxruntime.

Every graph is built here (``onnx.parser`` text, seeded random weights),
calibrated on seeded N(0, 1) data through ``PassContext(calibration=...,
target=load_target(...))``, quantized, written with :func:`onnxpq.io.save_model`
and judged on the written file: onnxruntime loads it, its outputs stay close to
float, and :func:`onnxpq.validation.kernels.kernel_census` (onnxruntime's own
optimized graph) shows which kernels run.

The accuracy floor. One 8-bit quantizer over a range R adds noise of power
s²/12 with s = R / 255; for activations spanning about ±4σ that is a per-tensor
SQNR of about 10·log10(12·255²/8²) ≈ 41 dB, and a chain of a few such
quantizers plus per-channel int8 weights (≈ 40 dB each) loses a few more dB:
these small nets measure 29–52 dB. 25 dB leaves a margin for the worst of
them (attention, whose softmax sits between two quantized MatMuls) while
still failing for any wrong scale, axis or zero point (those give < 10 dB).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.io import save_model
from onnxpq.passes.quantize.affine import sqnr_db
from onnxpq.passes.quantize.static import QuantizeStaticPass
from onnxpq.targets.profile import load_target
from onnxpq.validation.kernels import kernel_census

OPSET = 17
IR_VERSION = 8
SQNR_FLOOR_DB = 25.0
CALIBRATION_SAMPLES = 64
TARGETS = ("cpu", "gpu")

# --------------------------------------------------------------------------- building graphs


def _proto(graph_text: str, weights: dict[str, np.ndarray], *, opset: int = OPSET) -> onnx.ModelProto:
    """A checked model from ``onnx.parser`` graph text; every node is named after its first output."""
    proto = onnx.parser.parse_model(f'<ir_version: {IR_VERSION}, opset_import: ["" : {opset}]>\n{graph_text}')
    for node in proto.graph.node:
        node.name = node.output[0]
    for name, array in weights.items():
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


class _Weights:
    """Seeded random weights, scaled by 1/sqrt(fan-in) so that activations stay O(1)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def conv(self, c_out: int, c_in: int, k: int = 3) -> np.ndarray:
        return self._rng.normal(size=(c_out, c_in, k, k)) / np.sqrt(c_in * k * k)

    def matrix(self, rows: int, cols: int, fan_in: int) -> np.ndarray:
        return self._rng.normal(size=(rows, cols)) / np.sqrt(fan_in)

    def bias(self, n: int) -> np.ndarray:
        return self._rng.normal(size=n) * 0.1


def _conv_bias(bias: bool) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        w = _Weights(1)
        weights = {"W": w.conv(8, 3)}
        inputs = "x, W"
        if bias:
            weights["B"] = w.bias(8)
            inputs += ", B"
        return _proto(
            f"""g (float[N,3,8,8] x) => (float[N,8,8,8] y) {{
                c = Conv<pads=[1,1,1,1]>({inputs})
                y = Relu(c)
            }}""",
            weights,
        )

    return build


def _conv_bn_relu() -> onnx.ModelProto:
    w = _Weights(2)
    rng = np.random.default_rng(20)
    return _proto(
        """g (float[N,3,8,8] x) => (float[N,8,8,8] y) {
            c1 = Conv<pads=[1,1,1,1]>(x, W1)
            b = BatchNormalization<epsilon=0.001>(c1, gamma, beta, mean, var)
            r = Relu(b)
            c2 = Conv<pads=[1,1,1,1]>(r, W2, B2)
            y = Relu(c2)
        }""",
        {
            "W1": w.conv(8, 3),
            "gamma": rng.uniform(0.5, 1.5, 8),
            "beta": rng.normal(size=8) * 0.1,
            "mean": rng.normal(size=8) * 0.1,
            "var": rng.uniform(0.5, 2.0, 8),
            "W2": w.conv(8, 8),
            "B2": w.bias(8),
        },
    )


def _conv_relu_maxpool_conv() -> onnx.ModelProto:
    w = _Weights(3)
    return _proto(
        """g (float[N,3,8,8] x) => (float[N,8,4,4] y) {
            c1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
            r1 = Relu(c1)
            p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r1)
            c2 = Conv<pads=[1,1,1,1]>(p, W2, B2)
            y = Relu(c2)
        }""",
        {"W1": w.conv(8, 3), "B1": w.bias(8), "W2": w.conv(8, 8), "B2": w.bias(8)},
    )


def _residual() -> onnx.ModelProto:
    w = _Weights(4)
    return _proto(
        """g (float[N,4,8,8] x) => (float[N,8,8,8] y) {
            c1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
            r1 = Relu(c1)
            c2 = Conv<pads=[1,1,1,1]>(r1, W2, B2)
            c3 = Conv(x, W3, B3)
            s = Add(c2, c3)
            y = Relu(s)
        }""",
        {
            "W1": w.conv(8, 4), "B1": w.bias(8),
            "W2": w.conv(8, 8), "B2": w.bias(8),
            "W3": w.conv(8, 4, 1), "B3": w.bias(8),
        },
    )


def _concat() -> onnx.ModelProto:
    w = _Weights(5)
    return _proto(
        """g (float[N,4,8,8] x) => (float[N,8,8,8] y) {
            c1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
            c2 = Conv<pads=[1,1,1,1]>(x, W2, B2)
            k = Concat<axis=1>(c1, c2)
            c3 = Conv<pads=[1,1,1,1]>(k, W3, B3)
            y = Relu(c3)
        }""",
        {
            "W1": w.conv(4, 4), "B1": w.bias(4),
            "W2": w.conv(4, 4), "B2": w.bias(4),
            "W3": w.conv(8, 8), "B3": w.bias(8),
        },
    )


def _gemm(trans_b: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        w = _Weights(6)

        def weight(k: int, n: int) -> np.ndarray:
            return w.matrix(n, k, k) if trans_b else w.matrix(k, n, k)

        return _proto(
            f"""g (float[N,16] x) => (float[N,8] y) {{
                g1 = Gemm<transB={trans_b}>(x, W1, B1)
                r = Relu(g1)
                y = Gemm<transB={trans_b}>(r, W2, B2)
            }}""",
            {"W1": weight(16, 32), "B1": w.bias(32), "W2": weight(32, 8), "B2": w.bias(8)},
        )

    return build


def _ffn() -> onnx.ModelProto:
    """Transformer feed-forward block: MatMul + Add bias, Relu, MatMul + Add bias; batch and sequence dims dynamic."""
    w = _Weights(7)
    return _proto(
        """g (float[N,T,16] x) => (float[N,T,16] y) {
            h = MatMul(x, W1)
            hb = Add(h, B1)
            r = Relu(hb)
            o = MatMul(r, W2)
            y = Add(o, B2)
        }""",
        {"W1": w.matrix(16, 32, 16), "B1": w.bias(32), "W2": w.matrix(32, 16, 32), "B2": w.bias(16)},
    )


def _attention() -> onnx.ModelProto:
    """Single-head attention: softmax(Q·Kᵀ·d^-½)·V, then the output projection."""
    w = _Weights(8)
    return _proto(
        """g (float[N,6,16] x) => (float[N,6,16] y) {
            q = MatMul(x, Wq)
            k = MatMul(x, Wk)
            v = MatMul(x, Wv)
            kt = Transpose<perm=[0,2,1]>(k)
            s = MatMul(q, kt)
            ss = Mul(s, d)
            p = Softmax<axis=-1>(ss)
            c = MatMul(p, v)
            y = MatMul(c, Wo)
        }""",
        {
            "Wq": w.matrix(16, 16, 16), "Wk": w.matrix(16, 16, 16), "Wv": w.matrix(16, 16, 16),
            "Wo": w.matrix(16, 16, 16), "d": np.array(0.25),
        },
    )


def _gap_head() -> onnx.ModelProto:
    w = _Weights(9)
    return _proto(
        """g (float[N,3,8,8] x) => (float[N,10] y) {
            c = Conv<pads=[1,1,1,1]>(x, W, B)
            r = Relu(c)
            g = GlobalAveragePool(r)
            f = Flatten(g)
            y = Gemm<transB=1>(f, Wf, Bf)
        }""",
        {"W": w.conv(16, 3), "B": w.bias(16), "Wf": w.matrix(10, 16, 16) * 4.0, "Bf": w.bias(10)},
    )


def _conv_reshape_gemm() -> onnx.ModelProto:
    w = _Weights(10)
    return _proto(
        """g (float[N,3,4,4] x) => (float[N,10] y) {
            c = Conv<pads=[1,1,1,1]>(x, W, B)
            r = Relu(c)
            f = Reshape(r, shape)
            y = Gemm<transB=1>(f, Wf, Bf)
        }""",
        {"W": w.conv(4, 3), "B": w.bias(4), "shape": np.array([0, -1], np.int64), "Wf": w.matrix(10, 64, 64), "Bf": w.bias(10)},
    )


@dataclass(frozen=True)
class Case:
    """A graph and what quantize-static must make of it."""

    name: str
    build: Callable[[], onnx.ModelProto]
    sample_shape: tuple[int, ...]
    integer: dict[str, int]  # integer kernels the cpu census must count, exactly
    weights: dict[str, int]  # node name -> channel axis of its int8 weight
    biases: tuple[str, ...] = ()  # nodes whose bias becomes int32 with scale s_x·s_w
    ties: tuple[str, ...] = ()  # nodes whose output shares its input's scale and zero point
    folded_relus: int = 0  # on cpu
    pipeline: str = "quantize-static"  # anything else runs through PassManager


CASES = (
    Case("conv-bias", _conv_bias(True), (3, 8, 8), {"QLinearConv": 1}, {"c": 0}, biases=("c",)),
    Case("conv-no-bias", _conv_bias(False), (3, 8, 8), {"QLinearConv": 1}, {"c": 0}),
    Case(
        "conv-bn-relu", _conv_bn_relu, (3, 8, 8), {"QLinearConv": 2}, {"c1": 0, "c2": 0},
        biases=("c1", "c2"), folded_relus=1, pipeline="fold-batchnorm,quantize-static",
    ),
    Case(
        "conv-relu-maxpool-conv", _conv_relu_maxpool_conv, (3, 8, 8), {"QLinearConv": 2}, {"c1": 0, "c2": 0},
        biases=("c1", "c2"), ties=("p",), folded_relus=1,
    ),
    Case(
        "residual-add", _residual, (4, 8, 8), {"QLinearConv": 3, "QLinearAdd": 1}, {"c1": 0, "c2": 0, "c3": 0},
        biases=("c1", "c2", "c3"), folded_relus=1,
    ),
    Case(
        "concat", _concat, (4, 8, 8), {"QLinearConv": 3, "QLinearConcat": 1}, {"c1": 0, "c2": 0, "c3": 0},
        biases=("c1", "c2", "c3"),
    ),
    Case("gemm-transB0", _gemm(0), (16,), {"QGemm": 2}, {"g1": 1, "y": 1}, biases=("g1", "y"), folded_relus=1),
    Case("gemm-transB1", _gemm(1), (16,), {"QGemm": 2}, {"g1": 0, "y": 0}, biases=("g1", "y"), folded_relus=1),
    Case("ffn", _ffn, (5, 16), {"QLinearMatMul": 2, "QLinearAdd": 2}, {"h": 1, "o": 1}, folded_relus=1),
    Case(
        "attention", _attention, (6, 16),
        {"QLinearMatMul": 5, "QLinearMul": 1, "QLinearSoftmax": 1, "MatMulIntegerToFloat": 1},
        {"q": 1, "k": 1, "v": 1, "y": 1}, ties=("kt",),
    ),
    Case(
        "gap-flatten-gemm", _gap_head, (3, 8, 8), {"QLinearConv": 1, "QLinearGlobalAveragePool": 1, "QGemm": 1},
        {"c": 0, "y": 0}, biases=("c", "y"), ties=("f",), folded_relus=1,
    ),
    Case(
        "conv-reshape-gemm", _conv_reshape_gemm, (3, 4, 4), {"QLinearConv": 1, "QGemm": 1},
        {"c": 0, "y": 0}, biases=("c", "y"), ties=("f",), folded_relus=1,
    ),
)
CASE_IDS = [case.name for case in CASES]
BIAS_CASES = [case for case in CASES if case.biases]
TIE_CASES = [case for case in CASES if case.ties]

# --------------------------------------------------------------------------- running


def _samples(shape: tuple[int, ...], count: int = CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


def _run(model: onnx.ModelProto | str | Path, x: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _quantize(
    proto: onnx.ModelProto,
    x: np.ndarray | None,
    target: str = "cpu",
    pass_: QuantizeStaticPass | None = None,
) -> tuple[ir.Model, ir.passes.PassResult]:
    """Run the pass directly on an onnx-ir copy of ``proto``."""
    model = ir.from_proto(proto)
    calibration = {"x": x} if x is not None else None
    with PassContext(calibration=calibration, target=load_target(target)):
        result = (pass_ or QuantizeStaticPass())(model)
    return result.model, result


class Quantized(NamedTuple):
    case: Case
    target: str
    float_proto: onnx.ModelProto
    path: Path
    proto: onnx.ModelProto
    x: np.ndarray
    details: dict[str, Any]


def _quantize_case(case: Case, target: str, folder: Path) -> Quantized:
    proto = case.build()
    x = _samples(case.sample_shape)
    if case.pipeline == "quantize-static":
        model, _ = _quantize(proto, x, target)
        details: dict[str, Any] = {}
    else:
        manager = PassManager(parse_pipeline(case.pipeline), progress=False)
        with PassContext(calibration={"x": x}, target=load_target(target)):
            model = manager(ir.from_proto(proto)).model
        details = manager.records[-1].details
    path = save_model(model, folder / "model.onnx")
    return Quantized(case, target, proto, path, onnx.load(path), x, details)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case, str], Quantized]:
    """``quantized(case, target)``: the case quantized once per module and written to disk."""
    cache: dict[tuple[str, str], Quantized] = {}

    def get(case: Case, target: str) -> Quantized:
        key = (case.name, target)
        if key not in cache:
            cache[key] = _quantize_case(case, target, tmp_path_factory.mktemp(f"{case.name}-{target}"))
        return cache[key]

    return get


# --------------------------------------------------------------------------- reading the written graph


class _DQ(NamedTuple):
    values: np.ndarray | None  # the integer initializer, None for an activation
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None


class _Graph:
    """Lookups on a written (quantized) model."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.nodes = {node.name: node for node in proto.graph.node}
        self.producer = {out: node for node in proto.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in proto.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}

    def ops(self, op_type: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes.values() if node.op_type == op_type]

    def dequantized(self, value: str) -> _DQ:
        """Parameters of the DequantizeLinear that produces ``value``."""
        node = self.producer[value]
        assert node.op_type == "DequantizeLinear", f"{value} is produced by {node.op_type}, not DequantizeLinear"
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        return _DQ(self.initializers.get(node.input[0]), self.initializers[node.input[1]], self.initializers[node.input[2]], axis)

    def quantized(self, value: str) -> _DQ:
        """Parameters of the QuantizeLinear that reads ``value``."""
        (node,) = [n for n in self.consumers[value] if n.op_type == "QuantizeLinear"]
        return _DQ(None, self.initializers[node.input[1]], self.initializers[node.input[2]], None)


# --------------------------------------------------------------------------- every graph shape


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_output_stays_close_to_float(case: Case, target: str, quantized: Callable[[Case, str], Quantized]) -> None:
    q = quantized(case, target)
    expected = _run(q.float_proto, q.x)
    actual = _run(q.path, q.x)
    assert actual.shape == expected.shape
    assert sqnr_db(expected, actual) > SQNR_FLOOR_DB


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_runs_integer_kernels_and_no_float_compute(case: Case, quantized: Callable[[Case, str], Quantized]) -> None:
    census = kernel_census(quantized(case, "cpu").path)
    assert census.integer == case.integer
    assert census.float_compute == {}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_weights_are_int8_per_channel_on_the_output_channel_axis(
    case: Case, target: str, quantized: Callable[[Case, str], Quantized]
) -> None:
    q = quantized(case, target)
    graph = _Graph(q.proto)
    for name, axis in case.weights.items():
        dq = graph.dequantized(graph.nodes[name].input[1])
        assert dq.values is not None and dq.values.dtype == np.int8, name
        assert dq.axis == axis, name
        assert dq.scale.shape == (dq.values.shape[axis],), name
        assert dq.zero_point.dtype == np.int8 and not dq.zero_point.any(), name
        assert dq.values.min() >= -127, name  # narrow grid: -128 is never used


DIRECT_CASES = [case for case in CASES if case.pipeline == "quantize-static"]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=[c.name for c in DIRECT_CASES])
def test_dequantized_weights_match_the_float_weights(case: Case, quantized: Callable[[Case, str], Quantized]) -> None:
    """s_w[c]·W_q along the declared axis gives back W (8-bit per channel: well above 35 dB): the axis is the real one."""
    q = quantized(case, "cpu")
    graph = _Graph(q.proto)
    float_weights = {t.name: numpy_helper.to_array(t) for t in q.float_proto.graph.initializer}
    float_nodes = {node.name: node for node in q.float_proto.graph.node}
    for name in case.weights:
        original = float_weights[float_nodes[name].input[1]]
        dq = graph.dequantized(graph.nodes[name].input[1])
        shape = [1] * original.ndim
        shape[dq.axis] = -1
        assert sqnr_db(original, dq.values * dq.scale.reshape(shape)) > 35.0, name


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", BIAS_CASES, ids=[c.name for c in BIAS_CASES])
def test_biases_are_int32_with_scale_input_scale_times_weight_scale(
    case: Case, target: str, quantized: Callable[[Case, str], Quantized]
) -> None:
    graph = _Graph(quantized(case, target).proto)
    for name in case.biases:
        node = graph.nodes[name]
        bias = graph.dequantized(node.input[2])
        s_x = graph.dequantized(node.input[0]).scale
        s_w = graph.dequantized(node.input[1]).scale
        assert bias.values is not None and bias.values.dtype == np.int32, name
        assert not bias.zero_point.any(), name
        np.testing.assert_allclose(bias.scale, s_x * s_w, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", TIE_CASES, ids=[c.name for c in TIE_CASES])
def test_data_movement_outputs_share_their_input_scale_and_zero_point(
    case: Case, target: str, quantized: Callable[[Case, str], Quantized]
) -> None:
    graph = _Graph(quantized(case, target).proto)
    for name in case.ties:
        node = graph.nodes[name]
        before = graph.dequantized(node.input[0])
        after = graph.quantized(node.output[0])
        assert before.scale.tobytes() == after.scale.tobytes(), name
        assert before.zero_point.tobytes() == after.zero_point.tobytes(), name
        assert before.zero_point.dtype == after.zero_point.dtype, name


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float_weights_are_removed(case: Case, target: str, quantized: Callable[[Case, str], Quantized]) -> None:
    """The only float initializers left are Q/DQ scales: every weight and bias is stored as integers."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    left = [t.name for t in quantized(case, target).proto.graph.initializer if t.data_type in float_types]
    assert [name for name in left if not re.search(r"_scale(_\d+)?$", name)] == []


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_activations_are_uint8(case: Case, quantized: Callable[[Case, str], Quantized]) -> None:
    graph = _Graph(quantized(case, "cpu").proto)
    quantizers = graph.ops("QuantizeLinear")
    assert quantizers
    assert {graph.initializers[q.input[2]].dtype for q in quantizers} == {np.dtype(np.uint8)}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gpu_activations_are_symmetric_int8(case: Case, quantized: Callable[[Case, str], Quantized]) -> None:
    graph = _Graph(quantized(case, "gpu").proto)
    quantizers = graph.ops("QuantizeLinear")
    assert quantizers
    zero_points = [graph.initializers[q.input[2]] for q in quantizers]
    assert {z.dtype for z in zero_points} == {np.dtype(np.int8)}
    assert not any(z.any() for z in zero_points)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_folds_relus_that_follow_a_quantized_node(case: Case, quantized: Callable[[Case, str], Quantized]) -> None:
    q = quantized(case, "cpu")
    relus_before = sum(node.op_type == "Relu" for node in q.float_proto.graph.node)
    relus_after = len(_Graph(q.proto).ops("Relu"))
    assert relus_before - relus_after == case.folded_relus


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gpu_keeps_every_relu(case: Case, quantized: Callable[[Case, str], Quantized]) -> None:
    q = quantized(case, "gpu")
    relus_before = sum(node.op_type == "Relu" for node in q.float_proto.graph.node)
    assert len(_Graph(q.proto).ops("Relu")) == relus_before


# --------------------------------------------------------------------------- Relu folding, dynamic dims, graph outputs


def _conv_relu_maxpool() -> onnx.ModelProto:
    w = _Weights(11)
    return _proto(
        """g (float[N,3,8,8] x) => (float[N,8,4,4] y) {
            c = Conv<pads=[1,1,1,1]>(x, W, B)
            r = Relu(c)
            y = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)
        }""",
        {"W": w.conv(8, 3), "B": w.bias(8)},
    )


def test_cpu_folded_relu_leaves_no_relu_and_outputs_stay_non_negative(tmp_path: Path) -> None:
    proto = _conv_relu_maxpool()
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, "cpu")
    path = save_model(model, tmp_path / "q.onnx")
    assert _Graph(onnx.load(path)).ops("Relu") == []
    expected, actual = _run(proto, x), _run(path, x)
    assert (expected >= 0).all()
    assert (actual >= 0).all()
    assert sqnr_db(expected, actual) > SQNR_FLOOR_DB


def test_cpu_folded_relu_quantizes_its_input_on_zero_to_max(tmp_path: Path) -> None:
    """The Conv output takes the Relu output's range [0, hi]: zero point 0, so Q's saturation at 0 is the Relu."""
    proto = _conv_relu_maxpool()
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, "cpu")
    graph = _Graph(onnx.load(save_model(model, tmp_path / "q.onnx")))
    params = graph.quantized("c")
    assert params.zero_point.dtype == np.uint8 and int(params.zero_point) == 0
    hi = float(np.maximum(_run(proto, x), 0).max())
    assert float(params.scale) * 255 == pytest.approx(hi, rel=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name in ("conv-relu-maxpool-conv", "ffn", "gap-flatten-gemm")], ids=lambda c: c.name
)
def test_dynamic_batch_runs_any_batch_size(case: Case, batch: int, quantized: Callable[[Case, str], Quantized]) -> None:
    q = quantized(case, "cpu")
    x = _samples(case.sample_shape, count=batch, seed=5)
    assert sqnr_db(_run(q.float_proto, x), _run(q.path, x)) > SQNR_FLOOR_DB


def test_dynamic_sequence_length_runs_other_lengths(quantized: Callable[[Case, str], Quantized]) -> None:
    q = quantized(next(c for c in CASES if c.name == "ffn"), "cpu")
    x = _samples((11, 16), count=3, seed=6)
    assert sqnr_db(_run(q.float_proto, x), _run(q.path, x)) > SQNR_FLOOR_DB


def _single_op(op: str) -> onnx.ModelProto:
    w = _Weights(12)
    if op == "Conv":
        return _proto(
            "g (float[N,3,8,8] x) => (float[N,8,8,8] y) { y = Conv<pads=[1,1,1,1]>(x, W, B) }",
            {"W": w.conv(8, 3), "B": w.bias(8)},
        )
    if op == "Gemm":
        return _proto("g (float[N,16] x) => (float[N,8] y) { y = Gemm<transB=1>(x, W, B) }", {"W": w.matrix(8, 16, 16), "B": w.bias(8)})
    return _proto("g (float[N,16] x) => (float[N,8] y) { y = MatMul(x, W) }", {"W": w.matrix(16, 8, 16)})


_LAST_OP_SHAPES = {"Conv": (3, 8, 8), "Gemm": (16,), "MatMul": (16,)}


@pytest.mark.parametrize(
    "op",
    [
        "Conv",
        "Gemm",
        "MatMul",
    ],
)
def test_last_node_writing_the_graph_output_runs_an_integer_kernel(op: str, tmp_path: Path) -> None:
    proto = _single_op(op)
    x = _samples(_LAST_OP_SHAPES[op])
    model, _ = _quantize(proto, x, "cpu")
    path = save_model(model, tmp_path / "q.onnx")
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB
    census = kernel_census(path)
    assert census.float_compute == {}
    assert census.integer_total == 1


def test_last_node_output_keeps_its_graph_output_name(tmp_path: Path) -> None:
    proto = _single_op("Gemm")
    model, _ = _quantize(proto, _samples((16,)), "cpu")
    written = onnx.load(save_model(model, tmp_path / "q.onnx"))
    assert [o.name for o in written.graph.output] == ["y"]
    assert [i.name for i in written.graph.input] == ["x"]


# --------------------------------------------------------------------------- size


def test_weight_dominated_model_shrinks_about_four_times(tmp_path: Path) -> None:
    w = _Weights(13)
    proto = _proto(
        """g (float[N,32,6,6] x) => (float[N,64,6,6] y) {
            c1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
            r = Relu(c1)
            c2 = Conv<pads=[1,1,1,1]>(r, W2, B2)
            y = Relu(c2)
        }""",
        {"W1": w.conv(64, 32), "B1": w.bias(64), "W2": w.conv(64, 64), "B2": w.bias(64)},
    )
    model, _ = _quantize(proto, _samples((32, 6, 6), count=16), "cpu")
    float_size = save_model(ir.from_proto(proto), tmp_path / "float.onnx").stat().st_size
    int8_size = save_model(model, tmp_path / "int8.onnx").stat().st_size
    assert 3.5 < float_size / int8_size <= 4.0


# --------------------------------------------------------------------------- options


def test_excluded_node_stays_float(tmp_path: Path) -> None:
    proto = _conv_relu_maxpool_conv()
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, "cpu", QuantizeStaticPass(exclude_nodes=("c1",)))
    path = save_model(model, tmp_path / "q.onnx")
    census = kernel_census(path)
    assert census.float_compute == {"Conv": 1}
    assert census.integer == {"QLinearConv": 1}
    graph = _Graph(onnx.load(path))
    assert graph.nodes["c1"].input[1] == "W1"  # float weight, read directly
    assert graph.producer[graph.nodes["c2"].input[1]].op_type == "DequantizeLinear"
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


def test_excluded_op_type_stays_float(tmp_path: Path) -> None:
    proto = _gap_head()
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, "cpu", QuantizeStaticPass(exclude_op_types=("Gemm",)))
    path = save_model(model, tmp_path / "q.onnx")
    census = kernel_census(path)
    assert census.float_compute == {"Gemm": 1}
    assert census.integer.get("QLinearConv") == 1
    assert "QGemm" not in census.integer
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


def test_op_types_restricts_what_is_quantized(tmp_path: Path) -> None:
    proto = _gap_head()
    x = _samples((3, 8, 8))
    (pass_,) = parse_pipeline("quantize-static{op_types=[Conv]}")
    model, _ = _quantize(proto, x, "cpu", pass_)
    path = save_model(model, tmp_path / "q.onnx")
    census = kernel_census(path)
    assert census.integer == {"QLinearConv": 1}
    assert census.float_compute == {"Gemm": 1}
    written = _Graph(onnx.load(path))
    assert written.nodes["y"].input[1] == "Wf"
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


@pytest.mark.parametrize("target", TARGETS)
def test_per_channel_false_gives_scalar_weight_scales(target: str, tmp_path: Path) -> None:
    proto = _gap_head()
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, target, QuantizeStaticPass(per_channel=False))
    path = save_model(model, tmp_path / "q.onnx")
    graph = _Graph(onnx.load(path))
    for name in ("c", "y"):
        dq = graph.dequantized(graph.nodes[name].input[1])
        assert dq.scale.shape == () and dq.axis is None, name
        assert dq.values is not None and dq.values.dtype == np.int8
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_calibration_method_gives_a_valid_accurate_model(method: str, target: str, tmp_path: Path) -> None:
    proto = _conv_relu_maxpool_conv()
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, target, QuantizeStaticPass(method))
    path = save_model(model, tmp_path / "q.onnx")
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB
    if target == "cpu":
        assert kernel_census(path).integer == {"QLinearConv": 2}


def _wide_matmul(features: int = 1024) -> onnx.ModelProto:
    w = _Weights(14)
    return _proto(
        f"g (float[N,{features}] x) => (float[N,16] y) {{ y = MatMul(x, W) }}", {"W": w.matrix(features, 16, features)}
    )


def _with_outliers(magnitude: float, count: int = 256, features: int = 1024) -> np.ndarray:
    """N(0, 1) with one value at +magnitude and one at -magnitude among count x features."""
    x = _samples((features,), count=count, seed=15)
    x[3, 10] = magnitude
    x[200, 500] = -magnitude
    return x


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("method", "magnitude"),
    [
        ("percentile", 1000.0),
        ("percentile", 50.0),
        # MSE weighs the outliers' clipping error too: it clips a 50σ pair among 262 144 values, but keeps a
        # 1000σ pair (clipping it would cost 2·1000² > the whole bulk's rounding error), so it is tested at 50σ.
        ("mse", 50.0),
    ],
)
def test_robust_calibration_beats_minmax_on_rare_huge_outliers(method: str, magnitude: float, target: str) -> None:
    """Calibrated on data with two rare outliers, judged on fresh data from the bulk of the distribution."""
    proto = _wide_matmul()
    calibration = _with_outliers(magnitude)
    fresh = _samples((1024,), count=64, seed=16)
    expected = _run(proto, fresh)

    def sqnr(pass_: QuantizeStaticPass) -> float:
        model, _ = _quantize(proto, calibration, target, pass_)
        return sqnr_db(expected, _run(ir.to_proto(model), fresh))

    assert sqnr(QuantizeStaticPass(method)) > sqnr(QuantizeStaticPass("minmax")) + 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quantize-static{samples=0}", "samples must be >= 1"),
        ("quantize-static{samples=-5}", "samples must be >= 1"),
        ("quantize-static{percentile=0}", "percentile must be in"),
        ("quantize-static{percentile=100.5}", "percentile must be in"),
        ("quantize-static{op_types=[Conv,Softmax]}", "cannot quantize op types Softmax"),
        ("quantize-static{calibration=kl}", "calibration"),
        ("quantize-static{activation_type=int4}", "activation_type"),
        ("quantize-static{weight_clip=max}", "weight_clip"),
        ("quantize-static{per_channel=maybe}", "per_channel"),
        ("quantize-static{bits=4}", "unknown option 'bits'"),
    ],
)
def test_invalid_options_raise_pipeline_error(text: str, message: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(message)):
        parse_pipeline(text)


@pytest.mark.parametrize("option", [{"calibration": "kl"}, {"activation_type": "uint16"}, {"weight_clip": "max"}], ids=str)
def test_invalid_literal_options_raise_pipeline_error_from_python(option: dict[str, str]) -> None:
    with pytest.raises(PipelineError):
        QuantizeStaticPass(**option)  # type: ignore[arg-type]


def test_pipeline_text_round_trips_the_options() -> None:
    text = "quantize-static{calibration=mse,per_channel=false,exclude_nodes=[a,b],exclude_op_types=[Gemm]}"
    (pass_,) = parse_pipeline(text)
    assert isinstance(pass_, QuantizeStaticPass)
    assert (pass_.calibration, pass_.per_channel, pass_.exclude_nodes, pass_.exclude_op_types) == (
        "mse", False, ("a", "b"), ("Gemm",),
    )


# --------------------------------------------------------------------------- models it leaves alone


def test_second_run_on_a_quantized_model_changes_nothing_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    proto = _conv_relu_maxpool_conv()
    x = _samples((3, 8, 8))
    model, first = _quantize(proto, x, "cpu")
    assert first.modified
    before = ir.to_proto(model).SerializeToString()
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.static"):
        with PassContext(calibration={"x": x}, target=load_target("cpu")):
            second = QuantizeStaticPass()(model)
    assert not second.modified
    assert ir.to_proto(model).SerializeToString() == before
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert re.search(r"already contains (QuantizeLinear|DequantizeLinear) nodes; left unchanged", warnings[0].getMessage())


def _conv_head(opset: int, *, bias: bool) -> onnx.ModelProto:
    """Conv, Relu, GlobalAveragePool, Flatten, then Gemm (with biases) or MatMul (without: Gemm needs C before opset 11)."""
    w = _Weights(17)
    if bias:
        weights = {"W": w.conv(8, 3), "B": w.bias(8), "Wf": w.matrix(10, 8, 8), "Bf": w.bias(10)}
        conv, head = "Conv<pads=[1,1,1,1]>(x, W, B)", "Gemm<transB=1>(f, Wf, Bf)"
    else:
        weights = {"W": w.conv(8, 3), "Wf": w.matrix(8, 10, 8)}
        conv, head = "Conv<pads=[1,1,1,1]>(x, W)", "MatMul(f, Wf)"
    return _proto(
        f"""g (float[N,3,8,8] x) => (float[N,10] y) {{
            c = {conv}
            r = Relu(c)
            g = GlobalAveragePool(r)
            f = Flatten(g)
            y = {head}
        }}""",
        weights,
        opset=opset,
    )


@pytest.mark.parametrize("opset", [10, 11, 12])
def test_opset_below_13_gets_per_tensor_weights_without_axis(opset: int, tmp_path: Path) -> None:
    proto = _conv_head(opset, bias=False)
    x = _samples((3, 8, 8))
    model, result = _quantize(proto, x, "cpu")
    assert result.modified
    path = save_model(model, tmp_path / "q.onnx")
    graph = _Graph(onnx.load(path))
    for name in ("c", "y"):
        dq = graph.dequantized(graph.nodes[name].input[1])
        assert dq.axis is None and dq.scale.shape == (), name
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


@pytest.mark.parametrize("opset", [10, 11, 12])
def test_opset_below_13_with_biases_gives_a_valid_model(opset: int, tmp_path: Path) -> None:
    proto = _conv_head(opset, bias=True)
    x = _samples((3, 8, 8))
    model, _ = _quantize(proto, x, "cpu")
    path = save_model(model, tmp_path / "q.onnx")
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


@pytest.mark.parametrize("opset", [10, 11, 12])
def test_opset_below_13_biases_are_per_tensor_int32(opset: int, tmp_path: Path) -> None:
    """DequantizeLinear has no axis before opset 13: the bias scale is the scalar s_x·s_w."""
    proto = _conv_head(opset, bias=True)
    model, _ = _quantize(proto, _samples((3, 8, 8)), "cpu")
    graph = _Graph(onnx.load(save_model(model, tmp_path / "q.onnx")))
    for name in ("c", "y"):
        node = graph.nodes[name]
        bias = graph.dequantized(node.input[2])
        assert bias.axis is None and bias.scale.shape == (), name
        assert bias.values is not None and bias.values.dtype == np.int32, name
        expected = graph.dequantized(node.input[0]).scale * graph.dequantized(node.input[1]).scale
        np.testing.assert_allclose(bias.scale, expected, rtol=1e-6, err_msg=name)


def test_opset_9_is_left_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    proto = _conv_head(9, bias=True)
    model = ir.from_proto(proto)
    before = ir.to_proto(model).SerializeToString()
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.static"):
        with PassContext(calibration={"x": _samples((3, 8, 8))}, target=load_target("cpu")):
            result = QuantizeStaticPass()(model)
    assert not result.modified
    assert ir.to_proto(model).SerializeToString() == before
    assert any("opset 9" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _nothing_to_quantize() -> ir.Model:
    """Unnamed nodes, no value_info, and no op quantize-static quantizes on its own."""
    proto = onnx.parser.parse_model(
        f'<ir_version: {IR_VERSION}, opset_import: ["" : {OPSET}]>\n'
        "g (float[N,8] x) => (float[N,8] y) { r = Relu(x)\n y = Softmax<axis=-1>(r) }"
    )
    return ir.from_proto(proto)


def _run_and_compare(model: ir.Model) -> tuple[bool, bool]:
    """(modified as reported, changed as serialised)."""
    before = ir.to_proto(model).SerializeToString()
    with PassContext(calibration={"x": _samples((8,))}, target=load_target("cpu")):
        result = QuantizeStaticPass()(model)
    return bool(result.modified), ir.to_proto(model).SerializeToString() != before


def test_modified_is_exact_on_a_model_with_nothing_to_quantize() -> None:
    reported, changed = _run_and_compare(_nothing_to_quantize())
    assert reported == changed


def test_second_run_on_a_model_with_nothing_to_quantize_changes_nothing() -> None:
    model = _nothing_to_quantize()
    _run_and_compare(model)
    assert _run_and_compare(model) == (False, False)
    assert not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph)


# --------------------------------------------------------------------------- context and records


def test_without_calibration_data_warns_and_still_gives_a_valid_model(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    proto = _conv_relu_maxpool_conv()
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.quantize.static"):
        model, result = _quantize(proto, None, "cpu")
    assert result.modified
    assert any("no calibration data" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    path = save_model(model, tmp_path / "q.onnx")
    assert kernel_census(path).integer == {"QLinearConv": 2}
    x = _samples((3, 8, 8), seed=9)  # the synthetic calibration data is N(0, 1), as this is
    assert sqnr_db(_run(proto, x), _run(path, x)) > SQNR_FLOOR_DB


@pytest.mark.parametrize(
    ("target", "activation_type", "nodes", "folded"),
    [
        ("cpu", "uint8", 3, 1),  # c1, c2 and the output Relu (which quantizes c2's output); the inner Relu is folded
        ("gpu", "int8", 4, 0),  # c1, c2 and both Relus
    ],
)
def test_pass_manager_record_carries_the_notes(
    quantized: Callable[[Case, str], Quantized], target: str, activation_type: str, nodes: int, folded: int
) -> None:
    q = quantized(next(c for c in CASES if c.name == "conv-bn-relu"), target)
    assert q.details["quantized_nodes"] == nodes
    assert q.details["folded_relus"] == folded
    assert q.details["activation_type"] == activation_type
    assert q.details["quantized_node_names"] == ["c1", "c2"]


def test_pass_manager_leaves_the_input_model_untouched() -> None:
    proto = _conv_bn_relu()
    model = ir.from_proto(proto)
    before = ir.to_proto(model).SerializeToString()
    manager = PassManager(parse_pipeline("fold-batchnorm,quantize-static"), progress=False)
    with PassContext(calibration={"x": _samples((3, 8, 8))}, target=load_target("cpu")):
        result = manager(model)
    assert result.modified and result.model is not model
    assert ir.to_proto(model).SerializeToString() == before
    assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization", "Relu", "Conv", "Relu"]


def test_pass_manager_records_the_pass_as_modified_and_lossy() -> None:
    manager = PassManager([QuantizeStaticPass()], progress=False)
    with PassContext(calibration={"x": _samples((3, 8, 8))}, target=load_target("cpu")):
        manager(ir.from_proto(_conv_relu_maxpool_conv()))
    (record,) = manager.records
    assert record.name == "quantize-static"
    assert record.modified and not record.exact
    assert record.bytes_after < record.bytes_before


def test_a_model_importing_only_ai_onnx_ml_is_left_unchanged_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["ai.onnx.ml": 1]>\n'
        "g (float[N, 3] x) => (float[N, 3] y) { y = ai.onnx.ml.Binarizer<threshold=0.5>(x) }"
    )
    model = ir.from_proto(proto)
    with caplog.at_level(logging.INFO), PassContext(calibration={"x": np.ones((4, 3), np.float32)}) as ctx:
        assert QuantizeStaticPass()(model).modified is False
    assert ctx.details["skipped"] == "no default-domain opset"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("onnxpq")]
