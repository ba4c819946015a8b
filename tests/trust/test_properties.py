"""Property tests (hypothesis): exact passes keep outputs, pipeline text round-trips, the verifier accepts pass output.

Random small valid graphs: a chain over one float input with a dynamic batch
dimension, of Conv (bias or not, 1x1 or 3x3, groups), BatchNormalization,
Relu, Identity, Add of a constant, Concat (with itself), Reshape (flatten),
Gemm (transB or not, bias or not), MatMul; weights are initializers or
Constant nodes, the opset is 13, 17 or 21. Outputs are compared in
onnxruntime at batch 3. Runs are derandomized (a fixed example sequence) with
a fixed ``max_examples`` so CI is reproducible and bounded.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxpq.core import PassContext, PassManager, format_pipeline, option_specs, parse_pipeline, registered_passes
from onnxpq.core.verify import verify_structure
from onnxpq.errors import PipelineError

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EXACT_PASSES = sorted(name for name, cls in registered_passes().items() if cls.exact)


# --------------------------------------------------------------------------- random graphs


@dataclass
class _Builder:
    """Accumulates nodes and weights of a chain; ``shape`` is the current value's shape with None for the batch."""

    draw: Any
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    current: str = "x"
    shape: list[int | None] = field(default_factory=list)
    count: int = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, array: np.ndarray, base: str) -> str:
        """An initializer, or a Constant node (so that constants-to-initializers has work)."""
        name = self.name(base)
        tensor = numpy_helper.from_array(array.astype(array.dtype), name)
        if self.draw(st.booleans()):
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor, name=f"const_{name}"))
        else:
            self.initializers.append(tensor)
        return name

    def add(self, op: str, inputs: list[str], **attrs: Any) -> None:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, [self.current, *inputs], [out], name=f"{op}_{out}", **attrs))
        self.current = out

    def floats(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)


def _step(b: _Builder) -> None:
    rank = len(b.shape)
    ops = ["bn", "relu", "identity", "add", "concat"]
    ops += ["conv", "conv", "flatten"] if rank == 4 else ["gemm", "gemm", "matmul", "matmul"]
    op = b.draw(st.sampled_from(ops))
    channels = b.shape[1]
    if op == "conv":
        groups = b.draw(st.sampled_from([g for g in (1, 2, channels) if channels % g == 0]))
        out = groups * b.draw(st.integers(1, 3))
        kernel = b.draw(st.sampled_from([1, 3]))
        inputs = [b.weight(b.floats(out, channels // groups, kernel, kernel, scale=0.5), "w")]
        if b.draw(st.booleans()):
            inputs.append(b.weight(b.floats(out), "b"))
        b.add("Conv", inputs, group=groups, pads=[kernel // 2] * 4)
        b.shape = [None, out, *b.shape[2:]]
    elif op == "gemm":
        out = b.draw(st.integers(1, 6))
        trans_b = b.draw(st.booleans())
        weight = b.floats(out, channels, scale=0.5) if trans_b else b.floats(channels, out, scale=0.5)
        inputs = [b.weight(weight, "w")]
        if b.draw(st.booleans()):
            inputs.append(b.weight(b.floats(out), "b"))
        b.add("Gemm", inputs, transB=int(trans_b), alpha=b.draw(st.sampled_from([1.0, 0.5])))
        b.shape = [None, out]
    elif op == "matmul":
        out = b.draw(st.integers(1, 6))
        b.add("MatMul", [b.weight(b.floats(channels, out, scale=0.5), "w")])
        b.shape = [None, out]
    elif op == "bn":
        scale, bias, mean = b.floats(channels), b.floats(channels), b.floats(channels)
        var = (b.rng.random(channels) + 0.5).astype(np.float32)
        b.add("BatchNormalization", [b.weight(t, n) for t, n in ((scale, "g"), (bias, "beta"), (mean, "mean"), (var, "var"))])
    elif op == "relu":
        b.add("Relu", [])
    elif op == "identity":
        b.add("Identity", [])
    elif op == "add":
        const_shape = [channels, 1, 1] if rank == 4 else [channels]
        b.add("Add", [b.weight(b.floats(*const_shape), "c")])
    elif op == "concat":
        b.add("Concat", [b.current], axis=1)
        b.shape = [None, 2 * channels, *b.shape[2:]]
    elif op == "flatten":
        b.add("Reshape", [b.weight(np.array([0, -1], dtype=np.int64), "shape")])
        b.shape = [None, int(np.prod(b.shape[1:]))]


@st.composite
def random_models(draw: Any) -> onnx.ModelProto:
    """A random valid chain model with a dynamic batch dimension."""
    seed = draw(st.integers(0, 2**31 - 1))
    b = _Builder(draw, np.random.default_rng(seed))
    rank = draw(st.sampled_from([2, 4]))
    channels = draw(st.integers(1, 4))
    b.shape = [None, channels] + ([draw(st.integers(2, 5))] * 2 if rank == 4 else [])
    input_shape = ["N", *b.shape[1:]]
    for _ in range(draw(st.integers(1, 7))):
        _step(b)
    if b.draw(st.booleans()):
        b.add("Identity", [])  # an Identity straight onto the graph output
    graph = helper.make_graph(
        b.nodes,
        "random_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(b.current, TensorProto.FLOAT, ["N", *b.shape[1:]])],
        b.initializers,
    )
    opset = draw(st.sampled_from([13, 17, 21]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _input(model: onnx.ModelProto) -> np.ndarray:
    dims = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(7).standard_normal(dims).astype(np.float32)


def _apply(model: onnx.ModelProto, text: str) -> ir.Model:
    with PassContext():
        return PassManager(parse_pipeline(text), check_numerics=False, progress=False)(ir.from_proto(model)).model


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("pass_name", EXACT_PASSES)
@SETTINGS
@given(model=random_models())
def test_exact_pass_keeps_outputs_on_random_graphs(pass_name: str, model: onnx.ModelProto) -> None:
    x = _input(model)
    before = _run(model, x)
    after = _run(ir.to_proto(_apply(model, pass_name)), x)
    assert after.shape == before.shape and after.dtype == before.dtype
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 + 1e-4 * float(np.max(np.abs(before), initial=0.0)))


@SETTINGS
@given(model=random_models())
def test_cleanup_pipeline_removes_foldable_batchnorm_and_identity(model: onnx.ModelProto) -> None:
    result = _apply(model, "constants-to-initializers,eliminate-identity,fold-batchnorm,eliminate-dead")
    ops = [node.op_type for node in result.graph]
    assert "Constant" not in ops
    for node in result.graph:
        if node.op_type == "Identity":  # only one that renames a graph input straight to the output may stay
            assert node.outputs[0].is_graph_output() and node.inputs[0].is_graph_input()
        if node.op_type == "BatchNormalization":
            producer = node.inputs[0].producer()
            assert producer is None or producer.op_type not in ("Conv", "Gemm") or len(node.inputs[0].uses()) > 1


@pytest.mark.parametrize("pass_name", sorted(registered_passes()))
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(model=random_models())
def test_structural_verifier_accepts_every_pass_output(pass_name: str, model: onnx.ModelProto) -> None:
    x = _input(model)
    calibration = {"x": np.stack([x] * 2)}
    options = {"matmul-nbits": "{min_params=0,block_size=16}", "quantize-gather": "{min_params=0}"}.get(pass_name, "")
    from onnxpq.targets.profile import load_target

    with PassContext(target=load_target("cpu"), calibration=calibration):
        manager = PassManager(parse_pipeline(pass_name + options), verify_each=False, check_numerics=False, progress=False)
        result = manager(ir.from_proto(model)).model
    verify_structure(result)
    _run(ir.to_proto(result), x)  # and it still runs


# --------------------------------------------------------------------------- pipeline text


def _value_strategy(annotation: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, __import__("types").UnionType):
        inner = [a for a in args if a is not type(None)]
        return st.one_of(st.none(), *(_value_strategy(a) for a in inner))
    if origin in (tuple, list):
        item = [a for a in args if a is not Ellipsis][0] if args else str
        return st.lists(_value_strategy(item), max_size=3).map(tuple)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-3, 300)
    if annotation is float:
        return st.floats(-10, 300, allow_nan=False).filter(lambda f: f == 0 or abs(f) > 1e-300)
    return st.text("abcXYZ019_.:-", min_size=1, max_size=8)


@st.composite
def random_passes(draw: Any) -> list[Any]:
    """Registered passes with random option values (an option keeps its default when the pass refuses the value)."""
    passes = []
    for name in draw(st.lists(st.sampled_from(sorted(registered_passes())), min_size=1, max_size=5)):
        cls = registered_passes()[name]
        kwargs: dict[str, Any] = {}
        for spec in option_specs(cls):
            if draw(st.booleans()):
                candidate = {**kwargs, spec.name: draw(_value_strategy(spec.annotation))}
                try:
                    cls(**candidate)
                except (PipelineError, ValueError, TypeError):
                    continue
                kwargs = candidate
        passes.append(cls(**kwargs))
    return passes


@settings(max_examples=150, deadline=None, derandomize=True)
@given(passes=random_passes())
def test_pipeline_text_round_trips(passes: list[Any]) -> None:
    text = format_pipeline(passes)
    parsed = parse_pipeline(text)
    assert parsed == passes
    assert format_pipeline(parsed) == text


@settings(max_examples=150, deadline=None, derandomize=True)
@given(passes=random_passes())
def test_full_pipeline_text_round_trips(passes: list[Any]) -> None:
    text = format_pipeline(passes, full=True)
    assert parse_pipeline(text) == passes
    assert format_pipeline(parse_pipeline(text), full=True) == text
