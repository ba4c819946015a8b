"""Tests for onnxpq.validation.fidelity: SQNR, cosine, max error and top-1 agreement of output sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxpq.validation.fidelity import Fidelity, compare_outputs, is_classifier_output


def _logits() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)


def test_identical_outputs_have_infinite_sqnr_unit_cosine_and_zero_error() -> None:
    y = _logits()
    fidelity = compare_outputs([y], [y.copy()])
    assert fidelity.sqnr_db == math.inf
    assert fidelity.cosine == pytest.approx(1.0, abs=1e-12)
    assert fidelity.max_abs_error == 0.0
    assert fidelity.top1_agreement == 1.0
    assert fidelity.samples == 6


def test_identical_outputs_to_dict_gives_none_sqnr_and_identical_true() -> None:
    y = _logits()
    data = compare_outputs([y], [y.copy()]).to_dict()
    assert data["sqnr_db"] is None
    assert data["identical"] is True


def test_identical_all_zero_outputs_have_unit_cosine() -> None:
    y = np.zeros((3, 4), np.float32)
    fidelity = compare_outputs([y], [y.copy()])
    assert fidelity.sqnr_db == math.inf
    assert fidelity.cosine == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_with_a_hundredth_of_the_signal_power_gives_20_db(dtype: type) -> None:
    # Σy² = 6² + 8² = 100 and Σn² = 4 · 0.5² = 1, all exact in binary: SQNR = 10·log10(100) = 20 dB.
    y = np.array([[6.0, 8.0], [0.0, 0.0]], dtype)
    noise = np.array([[0.5, -0.5], [0.5, -0.5]], dtype)
    fidelity = compare_outputs([y], [y + noise])
    assert fidelity.sqnr_db == pytest.approx(20.0, abs=1e-9)
    assert fidelity.max_abs_error == 0.5


def test_sqnr_pools_all_outputs() -> None:
    # Output 1 carries all of the signal, output 2 all of the noise: Σy² = 100 + 0, Σn² = 0 + 1.
    signal = np.array([10.0, 0.0])
    clean, noisy = np.array([0.0, 0.0]), np.array([0.0, 1.0])
    fidelity = compare_outputs([signal, clean], [signal.copy(), noisy])
    assert fidelity.sqnr_db == pytest.approx(20.0, abs=1e-9)


def test_cosine_of_a_scaled_output_is_one() -> None:
    y = _logits()
    assert compare_outputs([y], [2.0 * y]).cosine == pytest.approx(1.0, abs=1e-9)


def test_cosine_of_a_negated_output_is_minus_one() -> None:
    y = _logits()
    assert compare_outputs([y], [-y]).cosine == pytest.approx(-1.0, abs=1e-9)


def test_top1_agreement_counts_flipped_samples() -> None:
    reference = np.eye(4, dtype=np.float32)  # sample i predicts class i
    candidate = reference.copy()
    candidate[1] = [0.0, 0.0, 0.0, 1.0]  # flips sample 1 to class 3
    candidate[2] = [0.0, 0.0, 0.4, 0.3]  # keeps class 2, smaller margin
    fidelity = compare_outputs([reference], [candidate])
    assert fidelity.top1_agreement == 0.75


def test_top1_agreement_uses_the_last_axis_of_a_3d_classifier_output() -> None:
    reference = np.eye(3, dtype=np.float32).reshape(3, 1, 3)
    candidate = reference[::-1].copy()  # [2, 1, 0] against [0, 1, 2]: only the middle sample agrees
    assert compare_outputs([reference], [candidate]).top1_agreement == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(np.arange(6, dtype=np.float32), id="1d"),
        pytest.param(np.arange(6, dtype=np.float32).reshape(6, 1), id="one-class"),
        pytest.param(np.arange(6, dtype=np.int64).reshape(2, 3), id="integer"),
    ],
)
def test_non_classifier_output_has_no_top1_agreement(output: np.ndarray) -> None:
    assert not is_classifier_output(output)
    assert compare_outputs([output], [output.copy()]).top1_agreement is None


def test_boolean_outputs_count_mismatches_as_noise() -> None:
    reference = np.array([True, True, False, False])
    candidate = np.array([True, False, False, False])
    fidelity = compare_outputs([reference], [candidate])
    assert fidelity.sqnr_db == pytest.approx(10.0 * math.log10(4 / 1), abs=1e-9)


def test_shape_mismatch_raises_value_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        compare_outputs([np.zeros((2, 3))], [np.zeros((3, 2))])


def test_output_count_mismatch_raises_value_error() -> None:
    with pytest.raises(ValueError, match="2 reference outputs but 1 candidate"):
        compare_outputs([np.zeros(2), np.zeros(2)], [np.zeros(2)])


def test_to_dict_keeps_a_finite_sqnr_and_identical_false() -> None:
    y = np.array([10.0, 0.0])
    data = compare_outputs([y], [np.array([10.0, 1.0])]).to_dict()
    assert data["sqnr_db"] == pytest.approx(20.0)
    assert data["identical"] is False
    assert set(data) == {"sqnr_db", "cosine", "max_abs_error", "top1_agreement", "samples", "identical"}


def test_nan_candidate_outputs_are_not_reported_identical() -> None:
    reference = _logits()
    candidate = np.full_like(reference, np.nan)
    fidelity: Fidelity = compare_outputs([reference], [candidate])
    assert fidelity.to_dict()["identical"] is False
    assert not fidelity.max_abs_error <= 0.0
