"""prune-magnitude: unstructured magnitude pruning, checked weight by weight and in onnxruntime.

Every graph is built here (``onnx.parser`` text, seeded N(0, 1) weights).
The pruned weights are compared with a numpy reference of the rule (stable
sort by ``|w|``, then index), and the pruned model's outputs in onnxruntime
with a numpy forward pass that uses the pruned weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from onnxpq.analysis.macs import model_cost
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.io import load_model, save_model
from onnxpq.passes.prune.magnitude import PruneMagnitudePass, smallest_indices, sparse_storage_bytes
from onnxpq.targets.profile import load_target

OPSET = 17
IR_VERSION = 8
LAYERS = {"conv1": "W1", "fc1": "W2", "fc2": "W3"}  # node -> weight of the CNN below

# --------------------------------------------------------------------------- building graphs


def _proto(graph_text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A checked model from ``onnx.parser`` graph text; every node is named after its first output."""
    proto = onnx.parser.parse_model(f'<ir_version: {IR_VERSION}, opset_import: ["" : {OPSET}]>\n{graph_text}')
    for node in proto.graph.node:
        node.name = node.output[0]
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _weights(seed: int, scales: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return {
        "W1": normal(8, 4, 3, 3) * np.float32(scales[0]),
        "B1": normal(8),
        "W2": normal(16, 288) * np.float32(scales[1]),
        "B2": normal(16),
        "W3": normal(16, 10) * np.float32(scales[2]),
    }


def _cnn(seed: int = 0, scales: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> ir.Model:
    """conv1 (Conv + bias) -> Relu -> Flatten -> fc1 (Gemm transB=1 + bias) -> Relu -> fc2 (MatMul)."""
    return ir.from_proto(
        _proto(
            """g (float[N,4,6,6] x) => (float[N,10] fc2) {
                conv1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
                relu1 = Relu(conv1)
                flat = Flatten(relu1)
                fc1 = Gemm<transB=1>(flat, W2, B2)
                relu2 = Relu(fc1)
                fc2 = MatMul(relu2, W3)
            }""",
            _weights(seed, scales),
        )
    )


def _single(op: str, dtype: str = "float") -> ir.Model:
    """One weight op: y = op(x, W); shapes chosen so every op has 48-96 weights."""
    rng = np.random.default_rng(7)
    np_type = np.float16 if dtype == "float16" else np.float32
    graphs = {
        "Conv": ("float[N,4,5,5] x", "float[N,6,3,3] y", "y = Conv(x, W)", (6, 4, 3, 3)),
        "ConvTranspose": ("float[N,4,5,5] x", "float[N,6,7,7] y", "y = ConvTranspose(x, W)", (4, 6, 3, 3)),
        "Gemm-transB0": ("float[N,8] x", "float[N,12] y", "y = Gemm(x, W)", (8, 12)),
        "Gemm-transB1": ("float[N,8] x", "float[N,12] y", "y = Gemm<transB=1>(x, W)", (12, 8)),
        "MatMul": (f"{dtype}[N,8] x", f"{dtype}[N,12] y", "y = MatMul(x, W)", (8, 12)),
    }
    x, y, body, shape = graphs[op]
    return ir.from_proto(_proto(f"g ({x}) => ({y}) {{ {body} }}", {"W": rng.normal(size=shape).astype(np_type)}))


def _array(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def _zeros(array: np.ndarray) -> int:
    return int(np.count_nonzero(array == 0))


def _count(fraction: float, n: int) -> int:
    return int(np.floor(fraction * n + 0.5))


def _run(model: ir.Model, **pass_options: object) -> tuple[ir.passes.PassResult, dict]:
    """Run prune-magnitude on ``model`` (in place) and return the result and its notes."""
    target = pass_options.pop("target", None)
    with PassContext(target=load_target(target) if isinstance(target, str) else target) as ctx:
        result = PruneMagnitudePass(**pass_options)(model)  # type: ignore[arg-type]
        return result, dict(ctx.details)


def _pruned_like_reference(original: np.ndarray, count: int) -> np.ndarray:
    """The rule, written plainly: zero the ``count`` smallest |w|, ties by flat index."""
    flat = original.reshape(-1).copy()
    order = sorted(range(flat.size), key=lambda i: (abs(float(flat[i])), i))
    flat[order[:count]] = 0
    return flat.reshape(original.shape)


# --------------------------------------------------------------------------- numpy forward pass


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # [N, C, H, W, kh, kw]
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def _cnn_numpy(model: ir.Model, x: np.ndarray) -> np.ndarray:
    w = {name: _array(model, name).astype(np.float64) for name in ("W1", "B1", "W2", "B2", "W3")}
    h = np.maximum(_conv2d(x.astype(np.float64), w["W1"], w["B1"], pad=1), 0.0).reshape(x.shape[0], -1)
    h = np.maximum(h @ w["W2"].T + w["B2"], 0.0)
    return h @ w["W3"]


def _ort(model: ir.Model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# --------------------------------------------------------------------------- layer scope


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_layer_scope_gives_each_layer_exactly_its_sparsity(sparsity: float) -> None:
    model = _cnn()
    result, notes = _run(model, sparsity=sparsity)
    assert result.modified
    for node, weight in LAYERS.items():
        array = _array(model, weight)
        assert _zeros(array) == _count(sparsity, array.size)
        assert notes["sparsity_per_node"][node] == pytest.approx(_count(sparsity, array.size) / array.size, abs=1e-6)


def test_layer_scope_zeros_exactly_the_smallest_magnitudes() -> None:
    original = _weights(0)
    model = _cnn()
    _run(model, sparsity=0.6)
    for weight in LAYERS.values():
        expected = _pruned_like_reference(original[weight], _count(0.6, original[weight].size))
        np.testing.assert_array_equal(_array(model, weight), expected)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "Gemm-transB0", "Gemm-transB1", "MatMul"])
def test_every_weight_op_type_is_pruned_and_still_runs(op: str) -> None:
    model = _single(op)
    original = _array(model, "W").copy()
    result, notes = _run(model, sparsity=0.5)
    assert result.modified
    np.testing.assert_array_equal(_array(model, "W"), _pruned_like_reference(original, _count(0.5, original.size)))
    shape = (2, 4, 5, 5) if op.startswith("Conv") else (2, 8)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    assert np.isfinite(_ort(model, x)).all()


def test_ties_at_the_threshold_prune_the_lower_indices_first() -> None:
    model = _single("MatMul")
    signs = np.where(np.arange(96) % 2 == 0, 1.0, -1.0).astype(np.float32).reshape(8, 12)
    model.graph.initializers["W"].const_value = ir.tensor(signs, name="W")
    _run(model, sparsity=0.25)
    flat = _array(model, "W").reshape(-1)
    assert (flat[:24] == 0).all() and (flat[24:] != 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_selection_equals_a_stable_sort_even_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, size=200).astype(np.float32)  # four distinct values: ties everywhere
    for count in (0, 1, 37, 50, 199, 200):
        expected = np.sort(np.argsort(values, kind="stable")[:count])
        np.testing.assert_array_equal(np.sort(smallest_indices(values, count)), expected)


# --------------------------------------------------------------------------- global scope


def test_global_scope_keeps_the_largest_magnitudes_across_layers() -> None:
    scales = (1.0, 0.4, 2.5)
    original = _weights(3, scales)
    model = _cnn(3, scales)
    result, notes = _run(model, sparsity=0.5, scope="global")
    assert result.modified
    everything = np.concatenate([np.abs(original[w]).reshape(-1) for w in LAYERS.values()])
    order = np.argsort(everything, kind="stable")
    expected = np.ones(everything.size, dtype=bool)
    expected[order[: _count(0.5, everything.size)]] = False
    kept = np.concatenate([_array(model, w).reshape(-1) != 0 for w in LAYERS.values()])
    np.testing.assert_array_equal(kept, expected)
    # layers with smaller weights lose more: one threshold, not one sparsity
    per_node = notes["sparsity_per_node"]
    assert per_node["fc1"] > 0.5 > per_node["fc2"]
    assert notes["global_threshold"] == pytest.approx(float(everything[~expected].max()))


def test_global_scope_guard_holds_a_layer_at_max_layer_sparsity() -> None:
    scales = (1.0, 1.0, 1e-3)  # fc2's weights are all below everyone else's
    original = _weights(4, scales)
    model = _cnn(4, scales)
    _, notes = _run(model, sparsity=0.3, scope="global", max_layer_sparsity=0.9)
    names = list(LAYERS.values())
    sizes = [original[w].size for w in names]
    caps = [int(np.floor(0.9 * n + 1e-9)) for n in sizes]
    # reference greedy: walk (|w|, layer, index) ascending, skip layers at their cap
    flat = [(abs(float(v)), layer, i) for layer, w in enumerate(names) for i, v in enumerate(original[w].reshape(-1))]
    taken = [0, 0, 0]
    expected = [np.ones(n, dtype=bool) for n in sizes]
    need = _count(0.3, sum(sizes))
    for _, layer, i in sorted(flat):
        if need == 0:
            break
        if taken[layer] < caps[layer]:
            expected[layer][i] = False
            taken[layer] += 1
            need -= 1
    for w, keep in zip(names, expected):
        np.testing.assert_array_equal(_array(model, w).reshape(-1) != 0, keep)
    assert _zeros(_array(model, "W3")) == caps[2]
    assert notes["layers"]["fc2"]["capped"] and not notes["layers"]["fc1"]["capped"]


def test_global_ties_are_broken_by_layer_order_then_index() -> None:
    ones = np.ones((8, 8), dtype=np.float32)
    model = ir.from_proto(
        _proto(
            "g (float[N,8] x) => (float[N,8] b) { a = MatMul(x, Wa)\n b = MatMul(a, Wb) }",
            {"Wa": ones, "Wb": ones.copy()},
        )
    )
    _run(model, sparsity=0.25, scope="global")  # 32 of 128 go; all |w| equal
    assert (_array(model, "Wa").reshape(-1)[:32] == 0).all()
    assert _zeros(_array(model, "Wa")) == 32 and _zeros(_array(model, "Wb")) == 0


# --------------------------------------------------------------------------- options


def test_per_node_overrides_set_their_layers_sparsity() -> None:
    model = _cnn()
    fc2_before = model.graph.initializers["W3"].const_value
    _, notes = _run(model, sparsity=0.5, per_node=("conv1:0.2", "fc2:0.0"))
    assert _zeros(_array(model, "W1")) == _count(0.2, 288)
    assert _zeros(_array(model, "W2")) == _count(0.5, 4608)
    assert model.graph.initializers["W3"].const_value is fc2_before
    assert notes["sparsity_per_node"]["fc2"] == 0.0


def test_per_node_override_keeps_layer_semantics_in_global_scope() -> None:
    model = _cnn(5, (1.0, 0.5, 2.0))
    _run(model, sparsity=0.6, scope="global", per_node=("conv1:0.2",))
    assert _zeros(_array(model, "W1")) == _count(0.2, 288)
    assert _zeros(_array(model, "W2")) + _zeros(_array(model, "W3")) == _count(0.6, 4608 + 160)


def test_per_node_name_that_matches_no_node_is_noted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxpq.passes.prune.magnitude"):
        _, notes = _run(_cnn(), sparsity=0.5, per_node=("nope:0.1",))
    assert notes["per_node_unmatched"] == ["nope"]
    assert "nope" in caplog.text


@pytest.mark.parametrize(
    "options",
    [
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"max_layer_sparsity": 0.0},
        {"max_layer_sparsity": 1.5},
        {"min_params": -1},
        {"scope": "model"},
        {"per_node": ("conv1",)},
        {"per_node": ("conv1:x",)},
        {"per_node": ("conv1:1.0",)},
        {"per_node": ("conv1:0.1", "conv1:0.2")},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_invalid_options_raise_a_pipeline_error(options: dict) -> None:
    with pytest.raises(PipelineError, match="prune-magnitude"):
        PruneMagnitudePass(**options)


def test_excluded_nodes_are_left_unchanged() -> None:
    model = _cnn()
    before = model.graph.initializers["W1"].const_value
    _, notes = _run(model, sparsity=0.5, exclude_nodes=("conv1",))
    assert model.graph.initializers["W1"].const_value is before
    assert notes["skipped"]["conv1"] == "excluded by name"
    assert _zeros(_array(model, "W2")) == _count(0.5, 4608)


def test_min_params_skips_smaller_layers() -> None:
    model = _cnn()
    _, notes = _run(model, sparsity=0.5, min_params=200)
    assert _zeros(_array(model, "W3")) == 0  # 160 weights
    assert "min_params" in notes["skipped"]["fc2"]
    assert _zeros(_array(model, "W1")) == _count(0.5, 288)


@pytest.mark.parametrize("include_bias", [False, True], ids=["bias-untouched", "include-bias"])
def test_bias_is_pruned_only_with_include_bias(include_bias: bool) -> None:
    model = _cnn()
    biases = {name: model.graph.initializers[name].const_value for name in ("B1", "B2")}
    _run(model, sparsity=0.5, include_bias=include_bias)
    for name, tensor in biases.items():
        if include_bias:
            assert _zeros(_array(model, name)) == _count(0.5, tensor.size)
        else:
            assert model.graph.initializers[name].const_value is tensor


def test_pipeline_text_round_trips() -> None:
    text = "prune-magnitude{sparsity=0.7,scope=global,per_node=[conv1:0.2,fc2:0.0],exclude_nodes=[fc1]}"
    (pass_,) = parse_pipeline(text)
    assert isinstance(pass_, PruneMagnitudePass)
    assert pass_.per_node == ("conv1:0.2", "fc2:0.0")
    assert format_pipeline([pass_]) == text


# --------------------------------------------------------------------------- numerics and invariants


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_model_in_onnxruntime_equals_numpy_with_the_pruned_weights(scope: str) -> None:
    model = _cnn(6)
    _run(model, sparsity=0.7, scope=scope, include_bias=True)
    x = np.random.default_rng(2).normal(size=(3, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_ort(model, x), _cnn_numpy(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_zero_leaves_the_model_unmodified(scope: str) -> None:
    model = _cnn()
    before = {name: v.const_value for name, v in model.graph.initializers.items()}
    result, _ = _run(model, sparsity=0.0, scope=scope, include_bias=True)
    assert not result.modified
    assert {name: v.const_value for name, v in model.graph.initializers.items()} == before


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_second_run_at_the_same_sparsity_is_not_modified(scope: str) -> None:
    model = _cnn()
    assert _run(model, sparsity=0.5, scope=scope, include_bias=True)[0].modified
    before = ir.to_proto(model).SerializeToString()
    result, notes = _run(model, sparsity=0.5, scope=scope, include_bias=True)
    assert not result.modified
    assert notes["pruned_nodes"] == []
    assert ir.to_proto(model).SerializeToString() == before


def test_zeros_already_there_count_toward_the_sparsity() -> None:
    model = _single("MatMul")
    array = _array(model, "W").copy()
    array.reshape(-1)[::2] = 0  # 50 % zeros already
    model.graph.initializers["W"].const_value = ir.tensor(array, name="W")
    result, notes = _run(model, sparsity=0.5)
    assert not result.modified
    assert notes["layers"]["y"]["zeros_before"] == 48


def test_pruning_makes_a_new_initializer_and_leaves_the_old_tensor_intact() -> None:
    model = _cnn()
    old_value = model.graph.initializers["W2"]
    old_tensor = old_value.const_value
    copy = old_tensor.numpy().copy()
    _run(model, sparsity=0.5)
    new_value = model.graph.initializers["W2"]
    assert new_value is not old_value and new_value.const_value is not old_tensor
    assert new_value.name == "W2" and new_value.const_value.dtype == ir.DataType.FLOAT
    np.testing.assert_array_equal(old_tensor.numpy(), copy)
    assert not old_value.uses()


def test_external_data_weights_are_pruned_and_the_input_data_file_is_untouched(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    save_model(_cnn(), source / "m.onnx", external_data=True)
    digest = lambda folder: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}  # noqa: E731
    before = digest(source)
    model = load_model(source / "m.onnx")
    assert any(v.const_value.__class__.__name__ == "ExternalTensor" for v in model.graph.initializers.values())
    _run(model, sparsity=0.5)
    save_model(model, out / "m.onnx", external_data=True)
    assert digest(source) == before
    written = load_model(out / "m.onnx")
    assert _zeros(_array(written, "W2")) == _count(0.5, 4608)
    x = np.random.default_rng(4).normal(size=(2, 4, 6, 6)).astype(np.float32)
    session = ort.InferenceSession(str(out / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], _cnn_numpy(written, x), rtol=1e-4, atol=1e-4)


def test_float16_weights_keep_their_dtype_and_run() -> None:
    model = _single("MatMul", dtype="float16")
    _run(model, sparsity=0.5)
    weight = model.graph.initializers["W"].const_value
    assert weight.dtype == ir.DataType.FLOAT16 and _zeros(weight.numpy()) == 48
    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float16)
    np.testing.assert_allclose(_ort(model, x), x.astype(np.float32) @ weight.numpy().astype(np.float32), rtol=1e-2, atol=1e-2)


def test_shared_weight_is_pruned_once_for_every_reader() -> None:
    w = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    model = ir.from_proto(_proto("g (float[N,8] x) => (float[N,8] b) { a = MatMul(x, W)\n b = MatMul(a, W) }", {"W": w}))
    result, notes = _run(model, sparsity=0.5)
    assert result.modified and _zeros(_array(model, "W")) == 32
    assert [n.inputs[1] for n in model.graph] == [model.graph.initializers["W"]] * 2
    assert notes["pruned_nodes"] == ["a", "b"]


def test_shared_weight_with_an_excluded_reader_is_left_alone() -> None:
    w = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    model = ir.from_proto(_proto("g (float[N,8] x) => (float[N,8] b) { a = MatMul(x, W)\n b = MatMul(a, W) }", {"W": w}))
    result, notes = _run(model, sparsity=0.5, exclude_nodes=("b",))
    assert not result.modified
    assert "also read by b" in notes["skipped"]["a"]


def test_weight_that_is_a_graph_input_is_left_alone() -> None:
    proto = _proto("g (float[N,8] x, float[8,12] W) => (float[N,12] y) { y = MatMul(x, W) }", {})
    proto.graph.initializer.append(numpy_helper.from_array(np.ones((8, 12), np.float32), "W"))
    result, notes = _run(ir.from_proto(proto), sparsity=0.5)
    assert not result.modified and "graph input" in notes["skipped"]["y"]


def test_nodes_inside_subgraphs_are_left_untouched_and_counted() -> None:
    rng = np.random.default_rng(0)
    inner = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wi"], ["t"], name="inner")], "then", [],
        [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "Wi")],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, ["N", 4])]
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"], name="outer"),
            helper.make_node("If", ["c"], ["z"], name="if", then_branch=inner, else_branch=other),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    model = ir.from_proto(proto)
    inner_tensor = next(n for n in model.graph.all_nodes() if n.name == "inner").inputs[1].const_value
    result, notes = _run(model, sparsity=0.5)
    assert result.modified and notes["untouched_nested_nodes"] == 1
    assert next(n for n in model.graph.all_nodes() if n.name == "inner").inputs[1].const_value is inner_tensor


# --------------------------------------------------------------------------- notes, storage, pass manager, cost


@pytest.mark.parametrize(
    ("target", "phrase", "level"),
    [
        ("cpu", "the file compresses, latency does not change", logging.INFO),
        ("vbit", "zeros are skipped, bit-operations scale with density", logging.INFO),
        ("gpu", "no benefit from scattered zeros", logging.WARNING),
        (None, "dense kernels run at the same speed", logging.INFO),
    ],
)
def test_notes_and_log_say_what_the_target_does_with_zeros(
    target: str | None, phrase: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="onnxpq.passes.prune.magnitude"):
        _, notes = _run(_cnn(), sparsity=0.5, target=target)
    assert phrase in notes["target_effect"]
    assert any(phrase in r.getMessage() and r.levelno == level for r in caplog.records)


def test_notes_carry_per_node_and_total_sparsity() -> None:
    _, notes = _run(_cnn(), sparsity=0.5, per_node=("fc2:0.25",))
    assert set(notes["sparsity_per_node"]) == set(LAYERS)
    assert notes["pruned_nodes"] == list(LAYERS)
    zeros = _count(0.5, 288) + _count(0.5, 4608) + _count(0.25, 160)
    assert notes["total_sparsity"] == pytest.approx(zeros / (288 + 4608 + 160), abs=1e-6)
    assert "sparse_initializer" in notes["storage_format"]


def test_sparse_storage_estimate_follows_the_formulas() -> None:
    model = ir.from_proto(_proto("g (float[N,16] x) => (float[N,10] y) { y = MatMul(x, W) }", {"W": _weights(0)["W3"]}))
    _, notes = _run(model, sparsity=0.5)
    nnz = 80  # of 160 float32
    storage = notes["sparse_storage"]
    assert storage["dense_bytes"] == 640
    assert storage["bitmap_bytes"] == 20 + nnz * 4
    assert storage["csr_bytes"] == nnz * (4 + 1) + 17 * 1  # 1-byte column indices (10 columns), 1-byte row pointers
    assert storage["onnx_coo_bytes"] == nnz * (4 + 8)  # larger than dense at 50 %
    assert storage["best_bytes"] == storage["bitmap_bytes"]
    assert storage["ratio"] == pytest.approx(340 / 640, abs=1e-4)
    assert sparse_storage_bytes((300, 300), 9000, 2)["csr"] == 9000 * (2 + 2) + 301 * 2


def test_pass_manager_structure_check_passes_and_second_run_is_recorded_unmodified() -> None:
    manager = PassManager([PruneMagnitudePass(0.5), PruneMagnitudePass(0.5)], progress=False)
    with PassContext(target=load_target("cpu")):
        result = manager(_cnn())
    assert [record.modified for record in manager.records] == [True, False]
    assert manager.records[0].details["sparsity_per_node"]["fc1"] == 0.5
    assert _zeros(_array(result.model, "W2")) == 2304


def test_model_cost_counts_the_density_of_the_pruned_weights() -> None:
    model = _cnn()
    _run(model, sparsity=0.75)
    cost = model_cost(model, {"x": [1, 4, 6, 6]}, count_zeros=True)
    sizes = {"conv1": 288, "fc1": 4608, "fc2": 160}
    for node in cost.nodes:
        n = sizes[node.node]
        assert node.density == pytest.approx(1 - _count(0.75, n) / n)
        assert node.bops == round(node.macs * 32 * 32 * node.density)
    dense = model_cost(_cnn(), {"x": [1, 4, 6, 6]}, count_zeros=True)
    assert cost.macs == dense.macs and cost.bops == pytest.approx(0.25 * dense.bops, rel=1e-3)


def test_compute_target_note_gives_the_remaining_density() -> None:
    gpu = load_target("gpu")
    target = dataclasses.replace(gpu, sparsity=dataclasses.replace(gpu.sparsity, unstructured="compute"))
    _, notes = _run(_cnn(), sparsity=0.5, target=target)
    assert "bit-operations scale with density (0.500" in notes["target_effect"]
