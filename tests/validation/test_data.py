"""Tests for onnxpq.validation.data: .npz datasets checked against a model's inputs, and synthesised data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

from onnxpq.errors import DataError
from onnxpq.validation.data import Dataset, load_dataset, synthesized_dataset

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'


def _model(signature: str, body: str = "y = Identity(x)") -> ir.Model:
    """A one-node model from onnx text: ``signature`` is the graph's ``(inputs) => (outputs)``."""
    return ir.from_proto(onnx.parser.parse_model(f"{_HEADER}g {signature} {{ {body} }}"))


BATCHED = "(float[batch,4] x) => (float[batch,4] y)"  # dynamic batch: data [N, 4] is N samples
FIXED = "(float[4] x) => (float[4] y)"  # no batch axis: data [N, 4] is N samples of [4]
TWO_INPUTS = "(float[batch,4] x, float[batch,4] z) => (float[batch,4] y)"


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _floats(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# --- accepted data --------------------------------------------------------------------------------


def test_load_dataset_accepts_batched_samples_for_a_dynamic_batch_input(tmp_path: Path) -> None:
    x, labels = _floats(5, 4), np.arange(5, dtype=np.int64) % 3
    dataset = load_dataset(_npz(tmp_path, x=x, labels=labels), _model(BATCHED))
    assert isinstance(dataset, Dataset)
    assert dataset.samples == 5
    np.testing.assert_array_equal(dataset.inputs["x"], x)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.source == str(tmp_path / "data.npz")


def test_load_dataset_accepts_per_sample_arrays_for_a_fixed_input(tmp_path: Path) -> None:
    x = _floats(5, 4)
    dataset = load_dataset(_npz(tmp_path, x=x), _model(FIXED))
    assert dataset.samples == 5
    assert dataset.labels is None
    np.testing.assert_array_equal(dataset.inputs["x"], x)


def test_load_dataset_casts_float64_to_the_float32_input_type(tmp_path: Path) -> None:
    x = _floats(5, 4).astype(np.float64)
    dataset = load_dataset(_npz(tmp_path, x=x), _model(BATCHED))
    assert dataset.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(dataset.inputs["x"], x.astype(np.float32))


def test_load_dataset_ignores_arrays_that_are_not_inputs(tmp_path: Path) -> None:
    dataset = load_dataset(_npz(tmp_path, x=_floats(5, 4), unrelated=np.zeros(3)), _model(BATCHED))
    assert set(dataset.inputs) == {"x"}


def test_dataset_head_keeps_the_first_samples_and_labels(tmp_path: Path) -> None:
    x, labels = _floats(5, 4), np.arange(5, dtype=np.int64)
    head = load_dataset(_npz(tmp_path, x=x, labels=labels), _model(BATCHED)).head(2)
    assert head.samples == 2
    np.testing.assert_array_equal(head.inputs["x"], x[:2])
    np.testing.assert_array_equal(head.labels, labels[:2])


# --- refused data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        pytest.param({"z": _floats(5, 4)}, "no array for model input(s) x", id="missing-input-array"),
        pytest.param({"x": np.ones((5, 4), np.int64)}, "has type int64", id="int-array-for-float-input"),
        pytest.param({"x": _floats(5)}, "has shape [5]", id="rank-too-low"),
        pytest.param({"x": _floats(5, 2, 3, 4)}, "has shape [5, 2, 3, 4]", id="rank-too-high"),
        pytest.param({"x": _floats(5, 5)}, "does not fit", id="wrong-fixed-dim"),
        pytest.param({"x": np.float32(1.0)}, "scalar", id="scalar"),
        pytest.param(
            {"x": _floats(5, 4), "labels": np.zeros(5, np.float32)}, "'labels' must be", id="labels-not-integer"
        ),
        pytest.param(
            {"x": _floats(5, 4), "labels": np.zeros((5, 1), np.int64)}, "'labels' must be", id="labels-not-1d"
        ),
        pytest.param({"x": _floats(5, 4), "labels": np.zeros(4, np.int64)}, "4 labels for 5 samples", id="labels-count"),
        pytest.param({"x": _floats(0, 4)}, "no samples", id="zero-samples"),
    ],
)
def test_load_dataset_refuses_data_that_does_not_fit(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset(_npz(tmp_path, **arrays), _model(BATCHED))
    assert message in str(caught.value)


def test_load_dataset_refuses_a_wrong_dim_for_a_fixed_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not fit"):
        load_dataset(_npz(tmp_path, x=_floats(5, 3)), _model(FIXED))


def test_load_dataset_refuses_inputs_with_different_sample_counts(tmp_path: Path) -> None:
    model = _model(TWO_INPUTS, "y = Add(x, z)")
    with pytest.raises(DataError, match=r"different sample counts \[4, 5\]"):
        load_dataset(_npz(tmp_path, x=_floats(5, 4), z=_floats(4, 4)), model)


def test_load_dataset_refuses_a_file_that_is_not_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not an .npz"):
        load_dataset(path, _model(BATCHED))


def test_load_dataset_refuses_a_truncated_npz(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=_floats(50, 4))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError):
        load_dataset(path, _model(BATCHED))


def test_load_dataset_refuses_a_npy_file(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, _floats(5, 4))
    with pytest.raises(DataError):
        load_dataset(path, _model(BATCHED))


def test_load_dataset_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        load_dataset(tmp_path / "absent.npz", _model(BATCHED))


def test_load_dataset_refuses_pickled_object_arrays(tmp_path: Path) -> None:
    objects = np.empty(5, dtype=object)
    objects[:] = [{"payload": i} for i in range(5)]
    path = _npz(tmp_path, x=objects)
    with pytest.raises(DataError, match="allow_pickle=False"):
        load_dataset(path, _model(BATCHED))


def test_load_dataset_refuses_integers_outside_the_input_type_range(tmp_path: Path) -> None:
    model = _model("(uint8[batch,4] x) => (uint8[batch,4] y)")
    with pytest.raises(DataError):
        load_dataset(_npz(tmp_path, x=np.full((5, 4), 300, np.int64)), model)


# --- synthesised data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "shape"),
    [
        pytest.param(BATCHED, (32, 4), id="dynamic-batch"),
        pytest.param("(float[1,3] x) => (float[1,3] y)", (32, 1, 3), id="fixed-batch-1"),
        pytest.param(FIXED, (32, 4), id="fixed-no-batch"),
    ],
)
def test_synthesized_dataset_shapes_put_samples_on_the_first_axis(signature: str, shape: tuple[int, ...]) -> None:
    dataset = synthesized_dataset(_model(signature), 32)
    assert dataset.inputs["x"].shape == shape
    assert dataset.inputs["x"].dtype == np.float32
    assert dataset.labels is None
    assert dataset.source == "synthesized"


def test_synthesized_dataset_is_deterministic_for_a_seed() -> None:
    first = synthesized_dataset(_model(BATCHED), 8, seed=3)
    second = synthesized_dataset(_model(BATCHED), 8, seed=3)
    np.testing.assert_array_equal(first.inputs["x"], second.inputs["x"])


def test_synthesized_dataset_differs_between_seeds() -> None:
    first = synthesized_dataset(_model(BATCHED), 8, seed=0)
    second = synthesized_dataset(_model(BATCHED), 8, seed=1)
    assert not np.array_equal(first.inputs["x"], second.inputs["x"])


def test_synthesized_dataset_refuses_a_string_input() -> None:
    with pytest.raises(DataError, match="cannot synthesise"):
        synthesized_dataset(_model("(string[batch] x) => (string[batch] y)"))


def test_split_is_disjoint_seeded_and_capped() -> None:
    x = np.arange(40, dtype=np.float32).reshape(40, 1)
    data = Dataset({"x": x}, np.arange(40), "d.npz")
    calib, rest = data.split(fraction=0.25, cap=6)
    assert calib.samples == 6 and rest.samples == 34
    assert not set(calib.inputs["x"].ravel()) & set(rest.inputs["x"].ravel())
    np.testing.assert_array_equal(calib.labels, calib.inputs["x"].ravel().astype(int))  # labels follow their samples
    again, _ = data.split(fraction=0.25, cap=6)
    np.testing.assert_array_equal(again.inputs["x"], calib.inputs["x"])
