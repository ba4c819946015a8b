"""Activation-range calibration: every method against numpy on the same activations, streaming, errors, external data."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq.core.session import has_external_data
from onnxpq.errors import DataError, PipelineError
from onnxpq.passes.quantize.calibration import TensorRange, calibrate

OPSET = 21
METHODS = ("minmax", "percentile", "entropy", "mse")
K, M = 32, 64  # the MLP's weight is [32, 64] float32: 8 KiB, large enough to be handed to onnxruntime as an OrtValue


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[TensorProto] = ()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _mlp(*, per_sample: bool = False, batch: int | str = "N") -> ir.Model:
    """``h = x @ W`` (both signs), ``r = Relu(h)``, ``y = r + b``; ``x: [batch, K]``, or ``[K]`` per sample."""
    rng = np.random.default_rng(7)
    shape = [K] if per_sample else [batch, K]
    out_shape = [M] if per_sample else [batch, M]
    return _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Add", ["r", "b"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [
            numpy_helper.from_array(rng.normal(size=(K, M)).astype(np.float32), "W"),
            numpy_helper.from_array(np.full(M, 0.25, np.float32), "b"),
        ],
    )


def _passthrough(features: int, factor: float = 1.0) -> ir.Model:
    """``h = x * factor`` (exactly x when factor is 1): the calibrated tensor's values are the data's."""
    return _model(
        [helper.make_node("Mul", ["x", "f"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        [numpy_helper.from_array(np.array(factor, np.float32), "f")],
    )


def _activations(model: ir.Model, name: str, x: np.ndarray, *, per_sample: bool = False) -> np.ndarray:
    """``name`` over all samples, from a plain onnxruntime run whose only output is that tensor."""
    proto = ir.to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    if per_sample:
        return np.stack([session.run(None, {"x": sample})[0] for sample in x])
    return session.run(None, {"x": x})[0]


def _data(count: int, *, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, K)).astype(np.float32) * 2.0


def _heavy_tailed(count: int = 2000, features: int = 1024) -> np.ndarray:
    """N(0, 1) with two outliers at ±100 among two million values."""
    x = np.random.default_rng(11).normal(size=(count, features)).astype(np.float32)
    x[5, 7], x[count - 3, 3] = 100.0, -100.0
    return x


# --------------------------------------------------------------------------- minmax against numpy


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("per_sample", [False, True], ids=["batched", "per-sample"])
def test_minmax_equals_numpy_min_max_of_the_intermediate_tensor(per_sample: bool, batch_size: int) -> None:
    model = _mlp(per_sample=per_sample)
    x = _data(10)
    ranges = calibrate(model, ["h", "r", "y"], {"x": x}, batch_size=batch_size)
    for name in ("h", "r", "y"):
        values = _activations(model, name, x, per_sample=per_sample)
        assert ranges[name] == TensorRange(float(values.min()), float(values.max()))


def test_minmax_is_the_same_for_batch_size_1_and_64() -> None:
    model, x = _mlp(), _data(200)
    assert calibrate(model, ["h", "r", "y"], {"x": x}, batch_size=1) == calibrate(model, ["h", "r", "y"], {"x": x}, batch_size=64)


def test_fixed_batch_model_skips_the_samples_that_do_not_fill_a_batch(caplog: pytest.LogCaptureFixture) -> None:
    model, x = _mlp(batch=4), _data(10)
    with caplog.at_level(logging.WARNING):
        ranges = calibrate(model, ["h"], {"x": x}, batch_size=3)
    values = _activations(_mlp(), "h", x[:8])
    assert ranges["h"] == TensorRange(float(values.min()), float(values.max()))
    assert "skipped" in caplog.text


def test_graph_inputs_outputs_and_initializers_can_be_calibrated() -> None:
    model, x = _mlp(), _data(20)
    ranges = calibrate(model, ["x", "y", "W"], {"x": x})
    weight = ir.to_proto(model).graph.initializer[0]
    w = numpy_helper.to_array(weight)
    y = _activations(model, "y", x)
    assert ranges["x"] == TensorRange(float(x.min()), float(x.max()))
    assert ranges["y"] == TensorRange(float(y.min()), float(y.max()))
    assert ranges["W"] == TensorRange(float(w.min()), float(w.max()))


def test_nodes_the_tensors_do_not_depend_on_are_not_run() -> None:
    """A branch that fails at run time (a Reshape to an impossible shape) does not matter to ``h``."""
    proto = ir.to_proto(_mlp())
    proto.graph.initializer.append(numpy_helper.from_array(np.array([7, 5], np.int64), "bad_shape"))
    proto.graph.node.append(helper.make_node("Reshape", ["x", "bad_shape"], ["bad"]))
    proto.graph.output.append(helper.make_tensor_value_info("bad", TensorProto.FLOAT, [7, 5]))
    model, x = ir.from_proto(proto), _data(10)
    values = _activations(_mlp(), "h", x)
    assert calibrate(model, ["h"], {"x": x}) == {"h": TensorRange(float(values.min()), float(values.max()))}
    with pytest.raises(DataError, match="rejected batch 0"):
        calibrate(model, ["bad"], {"x": x})


def test_duplicate_names_are_calibrated_once_in_the_order_given() -> None:
    ranges = calibrate(_mlp(), ["r", "h", "r"], {"x": _data(5)})
    assert list(ranges) == ["r", "h"]


def test_no_tensors_gives_an_empty_result() -> None:
    assert calibrate(_mlp(), [], {"x": _data(5)}) == {}


# --------------------------------------------------------------------------- histogram methods


@pytest.mark.parametrize("percentile", [99.0, 99.99])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
def test_percentile_matches_numpy_within_a_bin_width(symmetric: bool, percentile: float) -> None:
    x = np.random.default_rng(5).standard_t(df=4, size=(2000, 256)).astype(np.float32)
    ranges = calibrate(_passthrough(256), ["h"], {"x": x}, method="percentile", percentile=percentile, symmetric=symmetric)
    got = ranges["h"]
    values = x.astype(np.float64)
    if symmetric:
        a = np.percentile(np.abs(values), percentile)
        width = np.abs(values).max() / 2048
        assert got.lo == -got.hi
        assert abs(got.hi - a) <= width
    else:
        cut = (100.0 - percentile) / 2
        lo, hi = np.percentile(values, [cut, 100.0 - cut])
        width = (values.max() - values.min()) / 2048
        assert abs(got.lo - lo) <= width
        assert abs(got.hi - hi) <= width


def test_percentile_100_is_the_full_range() -> None:
    x = _data(50)
    ranges = calibrate(_passthrough(K), ["h"], {"x": x}, method="percentile", percentile=100.0)
    assert ranges["h"].lo == pytest.approx(float(x.min()))
    assert ranges["h"].hi == pytest.approx(float(x.max()))


@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_entropy_and_mse_clip_a_heavy_tailed_tensor_well_below_its_max(method: str, symmetric: bool) -> None:
    x = _heavy_tailed()
    got = calibrate(_passthrough(x.shape[1]), ["h"], {"x": x}, method=method, symmetric=symmetric)["h"]
    assert -100.0 <= got.lo <= got.hi <= 100.0
    assert 2.0 <= got.hi <= 25.0  # keeps the N(0, 1) bulk, clips the two outliers at ±100
    assert -25.0 <= got.lo <= -2.0


@pytest.mark.parametrize("low", [-1.0, 0.0], ids=["both-signs", "non-negative"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_entropy_and_mse_stay_close_to_the_max_of_a_uniform_tensor(method: str, symmetric: bool, low: float) -> None:
    x = np.random.default_rng(9).uniform(low, 1.0, size=(1000, 256)).astype(np.float32)
    got = calibrate(_passthrough(256), ["h"], {"x": x}, method=method, symmetric=symmetric)["h"]
    top = float(np.abs(x).max() if symmetric else x.max())
    assert 0.9 * top <= got.hi <= top
    if not symmetric:
        assert float(x.min()) <= got.lo <= (0.9 * float(x.min()) if low < 0 else float(x.min()) + 0.1)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_asymmetric_histogram_ranges_lie_within_min_and_max(method: str) -> None:
    model, x = _mlp(), _data(300)
    ranges = calibrate(model, ["h", "r", "y"], {"x": x}, method=method, percentile=99.9)
    for name in ("h", "r", "y"):
        values = _activations(model, name, x)
        assert float(values.min()) <= ranges[name].lo <= ranges[name].hi <= float(values.max())


@pytest.mark.parametrize("method", METHODS)
def test_symmetric_ranges_are_symmetric_and_within_the_absolute_max(method: str) -> None:
    model, x = _mlp(), _data(300)
    ranges = calibrate(model, ["h", "r", "y"], {"x": x}, method=method, symmetric=True)
    for name in ("h", "r", "y"):
        absmax = float(np.abs(_activations(model, name, x)).max())
        assert ranges[name].lo == -ranges[name].hi
        assert 0.0 < ranges[name].hi <= absmax * (1 + 1e-9)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("method", METHODS)
def test_constant_zero_tensor_gets_a_zero_range(method: str, symmetric: bool) -> None:
    ranges = calibrate(_passthrough(K, factor=0.0), ["h"], {"x": _data(20)}, method=method, symmetric=symmetric)
    assert ranges["h"] == TensorRange(0.0, 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_one_tensor_per_run_gives_the_same_ranges_as_the_default(method: str) -> None:
    model, x = _mlp(), _data(100)
    names = ["h", "r", "y", "x"]
    assert calibrate(model, names, {"x": x}, method=method, max_tensors_per_run=1) == calibrate(model, names, {"x": x}, method=method)


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_progress_is_called_once_per_run_up_to_the_total(method: str) -> None:
    calls: list[tuple[int, int]] = []
    calibrate(_mlp(), ["h", "r", "y"], {"x": _data(10)}, method=method, batch_size=4, max_tensors_per_run=2,
              progress=lambda done, total: calls.append((done, total)))
    runs = 2 * (1 if method == "minmax" else 2) * 3  # groups x passes x batches
    assert calls == [(i, runs) for i in range(1, runs + 1)]


# --------------------------------------------------------------------------- the model is left alone


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_not_modified(method: str) -> None:
    model = _mlp()
    before = ir.to_proto(model).SerializeToString()
    calibrate(model, ["h", "r", "y"], {"x": _data(30)}, method=method)
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_a_model_with_external_data_is_calibrated_without_writing_beside_it(tmp_path: Path, method: str) -> None:
    model, x = _mlp(), _data(50)
    folder = tmp_path / "model"
    folder.mkdir()
    ir.save(model, folder / "m.onnx", external_data="w.data")
    files = sorted(p.name for p in folder.iterdir())
    loaded = ir.load(folder / "m.onnx")
    assert has_external_data(loaded)
    before = ir.to_proto(loaded).SerializeToString()
    got = calibrate(loaded, ["h", "r", "y"], {"x": x}, method=method)
    assert got == calibrate(model, ["h", "r", "y"], {"x": x}, method=method)
    assert ir.to_proto(loaded).SerializeToString() == before
    assert sorted(p.name for p in folder.iterdir()) == files


def test_external_data_inside_an_if_subgraph_is_resolved_from_the_model_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(K, M)).astype(np.float32)
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "V"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", M])], [numpy_helper.from_array(v, "V")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", M])]
    )
    base = ir.to_proto(_mlp())
    base.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    base.graph.node.append(helper.make_node("If", ["c"], ["z"], then_branch=then_branch, else_branch=else_branch))
    base.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", M]))
    folder = tmp_path / "model"
    folder.mkdir()
    ir.save(ir.from_proto(base), folder / "m.onnx", external_data="w.data")
    loaded = ir.load(folder / "m.onnx")
    x = _data(12).reshape(3, 4, K)  # per sample: 3 samples of a [4, K] batch, and a scalar condition each
    got = calibrate(loaded, ["z"], {"x": x, "c": np.array([True, True, True])})["z"]
    expected = x @ v
    assert got.lo == pytest.approx(float(expected.min()), rel=1e-5)
    assert got.hi == pytest.approx(float(expected.max()), rel=1e-5)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_non_finite_activations_raise_data_error_naming_the_tensor(method: str, bad: float) -> None:
    x = _data(10)
    x[4, 0] = bad
    with pytest.raises(DataError, match="'h'"):
        calibrate(_mlp(), ["h"], {"x": x}, method=method)


def test_unknown_tensor_raises_pipeline_error_naming_it() -> None:
    with pytest.raises(PipelineError, match="'ghost'.*'phantom'"):
        calibrate(_mlp(), ["h", "ghost", "phantom"], {"x": _data(5)})


def test_missing_input_raises_data_error() -> None:
    with pytest.raises(DataError, match="'x'"):
        calibrate(_mlp(), ["h"], {"labels": np.zeros(5)})


def test_inputs_with_different_sample_counts_raise_data_error() -> None:
    model = _model(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 2])],
    )
    with pytest.raises(DataError, match="number of samples"):
        calibrate(model, ["s"], {"a": np.zeros((4, 2), np.float32), "b": np.zeros((5, 2), np.float32)})


@pytest.mark.parametrize(
    "options",
    [{"method": "kl"}, {"percentile": 0.0}, {"percentile": 101.0}, {"bins": 1}, {"bits": 1}, {"bits": 17},
     {"batch_size": 0}, {"max_tensors_per_run": 0}],
    ids=lambda o: next(iter(o.items())).__repr__(),
)
def test_invalid_options_raise_pipeline_error(options: dict[str, object]) -> None:
    with pytest.raises(PipelineError):
        calibrate(_mlp(), ["h"], {"x": _data(5)}, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- memory


def _rss_high_water_reset() -> int | None:
    """Reset this process's peak RSS (Linux ``clear_refs``) and return the current RSS in bytes; None where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        return None


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


@pytest.mark.parametrize(("method", "samples"), [("minmax", 2000), ("mse", 400)])
def test_peak_memory_stays_bounded_on_a_tensor_of_one_mib_per_sample(method: str, samples: int) -> None:
    """2,000 samples x 1 MiB would be 2 GiB held at once (400 MiB for mse); streaming stays far below.

    tracemalloc sees numpy's allocations (histogram temporaries, copies) but not
    the buffers onnxruntime returns outputs in, so the process's peak RSS is
    checked too where Linux lets us reset it.
    """
    model = _model(
        [
            helper.make_node("Tile", ["x", "repeats"], ["t"]),  # [N, 64] -> [N, 262144] float32 = 1 MiB per sample
            helper.make_node("ReduceMax", ["t", "axes"], ["y"], keepdims=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.array([1, 4096], np.int64), "repeats"), numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    x = np.random.default_rng(4).normal(size=(samples, 64)).astype(np.float32)
    rss_before = _rss_high_water_reset()
    tracemalloc.start()
    try:
        ranges = calibrate(model, ["t"], {"x": x}, method=method, batch_size=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20
    if rss_before is not None:
        assert _proc_status_bytes("VmHWM") - rss_before < 400 * 2**20  # measured ~130 MB: one 32 MiB batch plus onnxruntime's own buffers
    assert x.min() <= ranges["t"].lo <= ranges["t"].hi <= x.max()
    if method == "minmax":
        assert ranges["t"] == TensorRange(float(x.min()), float(x.max()))


def test_an_external_bfloat16_initializer_is_read_by_onnxruntime_from_the_model_folder(tmp_path: Path) -> None:
    """numpy has no bfloat16: such a tensor keeps its external reference, resolved against the model's folder."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = np.random.default_rng(8).normal(size=(K, M)).astype(ml_dtypes.bfloat16)
    x_value = ir.val("x", ir.DataType.FLOAT, ["N", K])
    w_value = ir.Value(name="Wb", const_value=ir.tensor(w, name="Wb"), type=ir.TensorType(ir.DataType.BFLOAT16), shape=ir.Shape([K, M]))
    cast = ir.node("Cast", [w_value], attributes={"to": ir.DataType.FLOAT})
    matmul = ir.node("MatMul", [x_value, cast.outputs[0]])
    matmul.outputs[0].name = "h"
    graph = ir.Graph([x_value], matmul.outputs, nodes=[cast, matmul], initializers=[w_value], opset_imports={"": OPSET})
    folder = tmp_path / "model"
    folder.mkdir()
    ir.save(ir.Model(graph, ir_version=10), folder / "m.onnx", external_data="w.data")
    loaded = ir.load(folder / "m.onnx")
    assert isinstance(loaded.graph.initializers["Wb"].const_value, ir.ExternalTensor)
    x = _data(20)
    expected = x @ w.astype(np.float32)
    got = calibrate(loaded, ["h"], {"x": x})["h"]
    assert got.lo == pytest.approx(float(expected.min()), rel=1e-5)
    assert got.hi == pytest.approx(float(expected.max()), rel=1e-5)
