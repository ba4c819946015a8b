"""Tests for onnxpq.core.session: session construction and running samples in batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpq.core.session import has_external_data, make_session, run_in_batches

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'


def _proto(signature: str) -> onnx.ModelProto:
    """y = x @ w + 1 (two outputs: y and its row sums, to check every output is gathered)."""
    proto = onnx.parser.parse_model(
        f"{_HEADER}g {signature} {{ m = MatMul(x, w)\n y = Add(m, one)\n s = ReduceSum <keepdims=0> (y, axes) }}"
    )
    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    proto.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(weight, "w"),
            onnx.numpy_helper.from_array(np.ones(3, np.float32), "one"),
            onnx.numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        ]
    )
    return proto


def _session(signature: str) -> ort.InferenceSession:
    return make_session(ir.from_proto(_proto(signature)))


BATCHED = "(float[batch,4] x) => (float[batch,3] y, float[batch] s)"
FIXED_BATCH_1 = "(float[1,4] x) => (float[1,3] y, float[1] s)"
NO_BATCH = "(float[4] x) => (float[3] y, float s)"


def _samples(count: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, 4)).astype(np.float32)


@pytest.mark.parametrize("batch_size", [1, 3, 10, 64])
def test_batched_inputs_give_the_same_outputs_as_one_big_run(batch_size: int) -> None:
    session = _session(BATCHED)
    x = _samples(10)
    expected = session.run(None, {"x": x})
    outputs = run_in_batches(session, {"x": x}, batch_size=batch_size)
    assert len(outputs) == 2
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_per_sample_inputs_with_one_more_axis_are_run_one_by_one_and_stacked() -> None:
    session = _session(NO_BATCH)
    x = _samples(5)
    outputs = run_in_batches(session, {"x": x})
    assert outputs[0].shape == (5, 3)
    assert outputs[1].shape == (5,)
    for index in range(5):
        y, s = session.run(None, {"x": x[index]})
        np.testing.assert_allclose(outputs[0][index], y, rtol=1e-6)
        np.testing.assert_allclose(outputs[1][index], s, rtol=1e-6)


def test_fixed_batch_of_one_runs_sample_by_sample_and_concatenates() -> None:
    session = _session(FIXED_BATCH_1)
    x = _samples(5)
    outputs = run_in_batches(session, {"x": x}, batch_size=64)
    assert outputs[0].shape == (5, 3)
    assert outputs[1].shape == (5,)
    reference = _session(BATCHED).run(None, {"x": x})
    np.testing.assert_allclose(outputs[0], reference[0], rtol=1e-6, atol=1e-6)


def test_fixed_batch_of_one_accepts_per_sample_arrays() -> None:
    session = _session(FIXED_BATCH_1)
    x = _samples(5)[:, np.newaxis, :]  # [samples, 1, 4]
    outputs = run_in_batches(session, {"x": x})
    assert outputs[0].shape == (5, 1, 3)


def test_make_session_drops_providers_that_are_not_available() -> None:
    missing = "NoSuchExecutionProvider"
    session = make_session(ir.from_proto(_proto(BATCHED)), providers=(missing,))
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_make_session_sets_the_thread_count() -> None:
    session = make_session(ir.from_proto(_proto(BATCHED)), threads=2)
    assert session.get_session_options().intra_op_num_threads == 2
    assert session.get_session_options().inter_op_num_threads == 1


def test_make_session_from_a_path_matches_the_in_memory_model(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_proto(BATCHED), str(path))
    x = _samples(4)
    from_path = make_session(path).run(None, {"x": x})
    in_memory = make_session(ir.from_proto(_proto(BATCHED))).run(None, {"x": x})
    for a, b in zip(from_path, in_memory, strict=True):
        np.testing.assert_array_equal(a, b)


def test_has_external_data_is_false_for_an_in_memory_model() -> None:
    assert has_external_data(ir.from_proto(_proto(BATCHED))) is False


def test_has_external_data_is_true_for_a_model_saved_with_external_data(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_proto(BATCHED), str(path), save_as_external_data=True, location="model.data", size_threshold=0)
    model = ir.load(str(path))
    assert has_external_data(model) is True
