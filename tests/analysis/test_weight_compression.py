"""Tests for onnxpq.analysis.weight_compression and analysis.weights_report: the Kuzmin et al. comparison.

Reference figures (Kuzmin et al., NeurIPS 2023, w ~ N(0, 1), per tensor): INT4 with
MSE-optimal clipping ≈ 19.3 dB; magnitude pruning at 75 % ≈ 5.6 dB (analytically 5.59 dB).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from onnxpq.analysis.weight_compression import (
    compare_tensor,
    equal_compression_sparsity,
    excess_kurtosis,
    pruning_sqnr_db,
    quantization_sqnr_db,
)
from onnxpq.analysis.weights_report import analyze, bit_ranges

#: 512 x 512 = 262,144 draws: the INT4 figure varies by < 0.1 dB across seeds at this size.
GAUSSIAN_SHAPE = (512, 512)


def gemm_model(weight: np.ndarray) -> ir.Model:
    """y = x @ W^T (Gemm, transB=1) with the given [N, K] weight."""
    n, k = weight.shape
    graph = oh.make_graph(
        [oh.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, k])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])],
        [onnx.numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def test_analyze_reproduces_the_gaussian_figures_of_kuzmin_et_al() -> None:
    weight = np.random.default_rng(0).standard_normal(GAUSSIAN_SHAPE)
    analysis = analyze(gemm_model(weight))
    int4 = next(c for c in analysis.weights[0].result.comparisons if c.bits == 4)
    assert int4.quantize_sqnr_db == pytest.approx(19.3, abs=0.4)
    assert int4.prune_sparsity_fp16 == 0.75
    assert int4.prune_sqnr_db_fp16 == pytest.approx(5.6, abs=0.4)
    assert int4.winner_fp16 == "quantize"


def test_pruning_sqnr_of_a_gaussian_matches_the_closed_form() -> None:
    t = 1.1503493803760079  # Φ⁻¹(0.875): |w| < t is the smallest 75 %
    phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    pruned_energy = 0.75 - 2 * t * phi
    expected = -10 * math.log10(pruned_energy)
    weight = np.random.default_rng(1).standard_normal(1 << 20)
    assert pruning_sqnr_db(weight, [0.75])[0] == pytest.approx(expected, abs=0.05)


def test_heavy_tailed_student_t_tensor_prefers_pruning_at_two_bits() -> None:
    # Student-t, nu = 3 (infinite kurtosis): pruning wins at 2 bits for every seed 0-5 tried
    # (by 0.8-2.1 dB); quantization wins again from 4 bits for 5 of 6 seeds.
    weight = np.random.default_rng(0).standard_t(3, (256, 256))
    result = compare_tensor(weight)
    two, eight = result.comparisons[0], result.comparisons[-1]
    assert result.excess_kurtosis > 10
    assert two.bits == 2 and two.winner_fp16 == "prune"
    assert two.prune_sqnr_db_fp16 > two.quantize_sqnr_db + 0.5
    assert eight.winner_fp16 == "quantize"


def test_gaussian_tensor_prefers_quantization_at_every_width() -> None:
    result = compare_tensor(np.random.default_rng(2).standard_normal((128, 256)))
    assert result.pruning_wins("fp16") == () and result.pruning_wins("own") == ()
    assert abs(result.excess_kurtosis) < 0.1


def test_per_channel_quantization_is_at_least_as_good_as_per_tensor_on_unequal_channels() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((16, 512)) * np.geomspace(0.01, 1.0, 16)[:, None]
    assert quantization_sqnr_db(weight, 4, axis=0) > quantization_sqnr_db(weight, 4, axis=None) + 3.0


def test_equal_compression_pairs_bits_with_sparsity() -> None:
    assert equal_compression_sparsity(4, 16) == 0.75
    assert equal_compression_sparsity(4, 32) == 0.875
    with pytest.raises(ValueError):
        equal_compression_sparsity(33, 32)


def test_excess_kurtosis_of_laplace_is_three() -> None:
    assert excess_kurtosis(np.random.default_rng(4).laplace(size=1 << 20)) == pytest.approx(3.0, abs=0.2)


def test_exact_pruning_of_a_sparse_tensor_is_infinite_sqnr_and_wins() -> None:
    weight = np.zeros(1024)
    weight[:64] = np.random.default_rng(5).standard_normal(64)  # 93.75 % zeros already
    result = compare_tensor(weight, (2, 4))
    assert math.isinf(result.comparisons[0].prune_sqnr_db_fp16)
    assert result.comparisons[0].winner_fp16 == "prune"


def test_compare_tensor_refuses_an_all_zero_tensor() -> None:
    with pytest.raises(ValueError, match="all zeros"):
        compare_tensor(np.zeros((4, 4)))


def test_bit_ranges_compacts_runs() -> None:
    assert bit_ranges([2, 3, 4, 7]) == "2-4, 7"
    assert bit_ranges([8]) == "8"
