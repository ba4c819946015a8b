"""prune-nm: N:M structured sparsity along the reduction axis, checked group by group and in onnxruntime.

Every graph is built here (``onnx.parser`` text, seeded N(0, 1) weights).
The pattern is verified on every group of M along the axis TensorRT checks
(Conv: input channels at each (o, kh, kw); MatMul / Gemm: K), the kept
weights are compared with a plain-Python reference of the rule, and the
pruned model's outputs in onnxruntime with a numpy forward pass.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from onnxpq.analysis.macs import model_cost
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.passes.prune.n_m import PruneNMPass, satisfies_pattern
from onnxpq.targets.profile import Target, load_target

OPSET = 17
IR_VERSION = 8

# --------------------------------------------------------------------------- building graphs


def _proto(graph_text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A checked model from ``onnx.parser`` graph text; every node is named after its first output."""
    proto = onnx.parser.parse_model(f'<ir_version: {IR_VERSION}, opset_import: ["" : {OPSET}]>\n{graph_text}')
    for node in proto.graph.node:
        node.name = node.output[0]
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _normal(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _conv(c_in: int, c_out: int, group: int, seed: int = 0) -> ir.Model:
    """y = Conv(x, W) with W [c_out, c_in/group, 3, 3]."""
    return ir.from_proto(
        _proto(
            f"""g (float[N,{c_in},6,6] x) => (float[N,{c_out},6,6] y) {{
                y = Conv<pads=[1,1,1,1], group={group}>(x, W)
            }}""",
            {"W": _normal(seed, c_out, c_in // group, 3, 3)},
        )
    )


def _matmul(k: int, n: int, seed: int = 0) -> ir.Model:
    return ir.from_proto(_proto(f"g (float[N,{k}] x) => (float[N,{n}] y) {{ y = MatMul(x, W) }}", {"W": _normal(seed, k, n)}))


def _gemm(k: int, n: int, trans_b: int, seed: int = 0) -> ir.Model:
    shape = (n, k) if trans_b else (k, n)
    return ir.from_proto(
        _proto(f"g (float[N,{k}] x) => (float[N,{n}] y) {{ y = Gemm<transB={trans_b}>(x, W, B) }}", {"W": _normal(seed, *shape), "B": _normal(seed + 1, n)})
    )


def _cnn(seed: int = 0) -> ir.Model:
    """conv1 (Conv + bias) -> Relu -> Flatten -> fc1 (Gemm transB=1 + bias) -> Relu -> fc2 (MatMul); every K divisible by 4."""
    return ir.from_proto(
        _proto(
            """g (float[N,8,4,4] x) => (float[N,12] fc2) {
                conv1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
                relu1 = Relu(conv1)
                flat = Flatten(relu1)
                fc1 = Gemm<transB=1>(flat, W2, B2)
                relu2 = Relu(fc1)
                fc2 = MatMul(relu2, W3)
            }""",
            {"W1": _normal(seed, 8, 8, 3, 3), "B1": _normal(seed + 1, 8), "W2": _normal(seed + 2, 16, 128),
             "B2": _normal(seed + 3, 16), "W3": _normal(seed + 4, 16, 12)},
        )
    )


def _array(model: ir.Model, name: str = "W") -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def _run(model: ir.Model, target: str | Target | None = None, **options: object) -> tuple[ir.passes.PassResult, dict]:
    with PassContext(target=load_target(target) if isinstance(target, str) else target) as ctx:
        result = PruneNMPass(**options)(model)  # type: ignore[arg-type]
        return result, dict(ctx.details)


def _reference(original: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """The rule, written plainly: along ``axis``, in each group of m (the last one may be shorter), keep the n largest |w|, lower index on ties."""
    moved = np.moveaxis(original, axis, -1).copy()
    rows = moved.reshape(-1, moved.shape[-1])
    for row in rows:
        for start in range(0, row.size, m):
            indices = range(start, min(start + m, row.size))
            ranked = sorted(indices, key=lambda i: (-abs(float(row[i])), i))
            for i in ranked[n:]:
                row[i] = 0
    return np.moveaxis(rows.reshape(moved.shape), -1, axis)


def _max_nonzeros_per_group(array: np.ndarray, axis: int, m: int) -> int:
    """The most non-zeros in any group of m consecutive elements along ``axis`` (length must divide)."""
    moved = np.moveaxis(array != 0, axis, -1)
    return int(moved.reshape(*moved.shape[:-1], -1, m).sum(axis=-1).max())


# --------------------------------------------------------------------------- the pattern on every layout


@pytest.mark.parametrize(("c_in", "group"), [(8, 1), (16, 2)], ids=["groups=1", "grouped"])
def test_conv_keeps_n_of_every_m_input_channels_at_each_output_and_kernel_position(c_in: int, group: int) -> None:
    model = _conv(c_in, 8, group)
    original = _array(model).copy()
    result, notes = _run(model)
    pruned = _array(model)
    assert result.modified
    # TensorRT's check, literally: weights[k, 4c:4c+4, r, s] has at most 2 non-zeros
    k, c, r, s = pruned.shape
    for o in range(k):
        for y in range(r):
            for x in range(s):
                for start in range(0, c, 4):
                    assert np.count_nonzero(pruned[o, start : start + 4, y, x]) <= 2
    np.testing.assert_array_equal(pruned, _reference(original, 1, 2, 4))
    assert notes["layers"]["y"]["axis"] == 1 and notes["layers"]["y"]["reduction_length"] == c_in // group


def test_matmul_groups_run_along_k_for_each_column() -> None:
    model = _matmul(8, 6)
    original = _array(model).copy()
    _run(model)
    np.testing.assert_array_equal(_array(model), _reference(original, 0, 2, 4))
    assert _max_nonzeros_per_group(_array(model), 0, 4) == 2


@pytest.mark.parametrize(("trans_b", "axis"), [(0, 0), (1, 1)], ids=["transB=0", "transB=1"])
def test_gemm_groups_run_along_k_whichever_way_b_is_stored(trans_b: int, axis: int) -> None:
    model = _gemm(12, 5, trans_b)
    original = _array(model).copy()
    bias = model.graph.initializers["B"].const_value
    _, notes = _run(model)
    np.testing.assert_array_equal(_array(model), _reference(original, axis, 2, 4))
    assert _max_nonzeros_per_group(_array(model), axis, 4) == 2
    assert notes["layers"]["y"]["axis"] == axis
    assert model.graph.initializers["B"].const_value is bias  # the bias is never pruned


def test_ties_keep_the_lower_index() -> None:
    model = _matmul(8, 3)
    model.graph.initializers["W"].const_value = ir.tensor(np.ones((8, 3), np.float32), name="W")
    _run(model)
    kept = (_array(model) != 0)[:, 0]
    np.testing.assert_array_equal(kept, [True, True, False, False] * 2)


@pytest.mark.parametrize("skip_indivisible", [True, False])
def test_depthwise_conv_has_no_pattern_along_its_single_input_channel(skip_indivisible: bool) -> None:
    model = _conv(8, 8, group=8)  # W [8, 1, 3, 3]
    before = model.graph.initializers["W"].const_value
    result, notes = _run(model, skip_indivisible=skip_indivisible)
    assert not result.modified
    assert model.graph.initializers["W"].const_value is before
    if skip_indivisible:
        assert "depthwise" in notes["skipped"]["y"]
    else:  # padded logically to 4: the one real weight of each group is among the 2 kept
        assert notes["layers"]["y"]["padded"] and notes["layers"]["y"]["zeros"] == 0


def test_single_channel_first_conv_is_indivisible_not_depthwise() -> None:
    model = _conv(1, 8, group=1)  # W [8, 1, 3, 3]: a first layer on a grey image
    result, notes = _run(model)
    assert not result.modified
    assert notes["skipped"]["y"] == "input channels per group 1 (axis 1) is not a multiple of 4"


def test_indivisible_reduction_length_is_skipped_by_default() -> None:
    model = _matmul(6, 4)
    before = model.graph.initializers["W"].const_value
    result, notes = _run(model)
    assert not result.modified and model.graph.initializers["W"].const_value is before
    assert "not a multiple of 4" in notes["skipped"]["y"]


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
def test_indivisible_reduction_length_is_padded_logically_when_asked(n: int, m: int) -> None:
    model = _matmul(6, 4)  # K = 6: one full group of 4, then a group of 2
    original = _array(model).copy()
    result, notes = _run(model, n=n, m=m, skip_indivisible=False)
    assert result.modified and notes["layers"]["y"]["padded"]
    pruned = _array(model)
    np.testing.assert_array_equal(pruned, _reference(original, 0, n, m))
    assert (np.count_nonzero(pruned[:4], axis=0) == n).all()
    assert (np.count_nonzero(pruned[4:], axis=0) == min(n, 2)).all()


# --------------------------------------------------------------------------- where n and m come from


def test_gpu_target_supplies_the_2_4_default() -> None:
    model = _cnn()
    _, notes = _run(model, target="gpu")
    assert notes["pattern"] == "2:4" and notes["pattern_source"] == "target gpu"


def test_a_target_pattern_other_than_2_4_is_used_when_options_are_unset() -> None:
    gpu = load_target("gpu")
    target = dataclasses.replace(gpu, sparsity=dataclasses.replace(gpu.sparsity, n_m=((1, 4),)))
    model = _matmul(8, 6)
    _, notes = _run(model, target=target)
    assert notes["pattern"] == "1:4"
    assert _max_nonzeros_per_group(_array(model), 0, 4) == 1


def test_explicit_options_win_over_the_target() -> None:
    model = _matmul(8, 6)
    _, notes = _run(model, target="gpu", n=1, m=4)
    assert notes["pattern"] == "1:4" and notes["pattern_source"] == "options"


def test_without_a_target_the_pattern_is_2_4() -> None:
    _, notes = _run(_matmul(8, 6))
    assert notes["pattern"] == "2:4" and notes["pattern_source"] == "default"


def test_an_option_that_contradicts_the_target_pattern_raises() -> None:
    with pytest.raises(PipelineError, match="4:4"):
        _run(_matmul(8, 6), target="gpu", n=4)


@pytest.mark.parametrize(
    "options",
    [{"n": 0}, {"m": 1}, {"n": 4, "m": 4}, {"n": 3, "m": 2}, {"min_params": -1}],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_invalid_options_raise_a_pipeline_error(options: dict) -> None:
    with pytest.raises(PipelineError, match="prune-nm"):
        PruneNMPass(**options)


@pytest.mark.parametrize("text", ["prune-nm", "prune-nm{n=1,m=4}", "prune-nm{m=8,exclude_nodes=[fc1],skip_indivisible=false}"])
def test_pipeline_text_round_trips(text: str) -> None:
    passes = parse_pipeline(text)
    assert format_pipeline(passes) == text


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [((2, 4), (2, 4), True), ((1, 4), (2, 4), True), ((2, 8), (2, 4), True), ((1, 2), (2, 4), True),
     ((4, 8), (2, 4), False), ((3, 6), (2, 4), False)],
)
def test_which_patterns_satisfy_the_hardware_pattern(pattern: tuple[int, int], target: tuple[int, int], expected: bool) -> None:
    assert satisfies_pattern(*pattern, *target) is expected


# --------------------------------------------------------------------------- options, invariants, numerics


def test_excluded_and_small_layers_are_left_unchanged() -> None:
    model = _cnn()
    before = {name: model.graph.initializers[name].const_value for name in ("W1", "W3")}
    _, notes = _run(model, exclude_nodes=("conv1",), min_params=200)  # fc2 has 192 weights
    for name, tensor in before.items():
        assert model.graph.initializers[name].const_value is tensor
    assert notes["skipped"]["conv1"] == "excluded by name" and "min_params" in notes["skipped"]["fc2"]
    assert notes["pruned_nodes"] == ["fc1"]


def test_second_run_is_not_modified() -> None:
    model = _cnn()
    assert _run(model)[0].modified
    before = ir.to_proto(model).SerializeToString()
    result, notes = _run(model)
    assert not result.modified and notes["pruned_nodes"] == []
    assert ir.to_proto(model).SerializeToString() == before


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # [N, C, H, W, kh, kw]
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def test_pruned_model_in_onnxruntime_equals_numpy_with_the_pruned_weights() -> None:
    model = _cnn(3)
    _run(model, target="gpu")
    w = {name: _array(model, name).astype(np.float64) for name in ("W1", "B1", "W2", "B2", "W3")}
    x = np.random.default_rng(9).normal(size=(3, 8, 4, 4)).astype(np.float32)
    h = np.maximum(_conv2d(x.astype(np.float64), w["W1"], w["B1"], pad=1), 0.0).reshape(3, -1)
    expected = np.maximum(h @ w["W2"].T + w["B2"], 0.0) @ w["W3"]
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


def test_notes_report_layers_the_pattern_check_and_an_estimated_gain() -> None:
    _, notes = _run(_cnn(), target="gpu")
    assert notes["pruned_nodes"] == ["conv1", "fc1", "fc2"]
    assert notes["pattern_check"] == {
        "pattern": "2:4", "layers": 3, "groups": (8 * 9 * 2) + (16 * 32) + (12 * 4), "violations": 0, "passed": True,
    }
    assert notes["sparsity_per_node"] == {"conv1": 0.5, "fc1": 0.5, "fc2": 0.5}
    assert notes["estimated_gain"].startswith("estimated, not measured")
    assert "estimated up to ~2x" in notes["target_effect"]
    # 2 float32 values + 2 two-bit indices per group of 4
    groups = notes["pattern_check"]["groups"]
    assert notes["n_m_storage"]["compressed_bytes"] == groups * 2 * 4 + groups * 4 // 8


@pytest.mark.parametrize(
    ("target", "phrase", "level"),
    [
        ("cpu", "no speed-up", logging.WARNING),
        ("vbit", "bit-operations scale with density (0.500", logging.INFO),
        ("gpu", "runs 2:4 on sparse tensor cores", logging.INFO),
    ],
)
def test_target_effect_is_noted_and_logged(target: str, phrase: str, level: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="onnxpq.passes.prune.n_m"):
        _, notes = _run(_cnn(), target=target)
    assert phrase in notes["target_effect"]
    assert any(phrase in r.getMessage() and r.levelno == level for r in caplog.records)


def test_pass_manager_structure_check_passes() -> None:
    manager = PassManager([PruneNMPass(), PruneNMPass()], progress=False)
    with PassContext(target=load_target("gpu")):
        result = manager(_cnn())
    assert [record.modified for record in manager.records] == [True, False]
    assert _max_nonzeros_per_group(_array(result.model, "W1"), 1, 4) == 2


def test_model_cost_shows_half_density() -> None:
    model = _cnn()
    dense = model_cost(model, {"x": [1, 8, 4, 4]}, count_zeros=True)
    _run(model)
    cost = model_cost(model, {"x": [1, 8, 4, 4]}, count_zeros=True)
    assert [node.density for node in cost.nodes] == [0.5, 0.5, 0.5]
    assert cost.macs == dense.macs and cost.bops == pytest.approx(dense.bops / 2, abs=2)
