"""Pruning versus quantization of one weight tensor, at equal compression.

The comparison of Kuzmin et al., "Pruning vs Quantization: Which is Better?"
(NeurIPS 2023): a tensor W is either quantized to b bits or magnitude-pruned
to the sparsity that compresses it as much, and the two are compared by the
signal-to-quantization-noise ratio of the weights themselves::

    SQNR(Ŵ) = 10 · log10( Σ w² / Σ (w − ŵ)² )   [dB]   (+inf when Ŵ = W)

Quantization (symmetric, MSE-optimal clipping): for a clip value c and the
signed grid of :func:`onnxpq.passes.quantize.affine.symmetric_grid`,
``s = c / q_max``, ``ŵ = s · clip(round(w / s), q_min, q_max)``; c minimises
Σ (w − ŵ)² over a grid of fractions of max|w| reaching down to
``MIN_CLIP_FRACTION`` (1 %: heavy-tailed tensors clip far below their
maximum at 2 bits), per tensor or per output channel. The search is
:func:`onnxpq.passes.quantize.affine.mse_optimal_absmax`, reused.

Magnitude pruning to sparsity p (per tensor, as in the paper): the
k = round(p · n) smallest |w| become 0, so Σ (w − ŵ)² is the sum of the k
smallest w². All sparsities come from one sort of w² and its cumulative sum.

Equal compression: b-bit integers against a float reference of F bits keep
the size of a tensor pruned to sparsity ``1 − b/F`` (storing only the kept
values, index overhead ignored, as in the paper). The paper's reference is
FP16 (F = 16: INT4 ↔ 75 %); the model's own float width is reported too
(F = 32 for float32: INT4 ↔ 87.5 %, which favours quantization further).

For w ~ N(0, 1), per tensor, the paper's analysis gives INT4 ≈ 19.3 dB
against ≈ 5.6 dB for 75 % pruning (analytically
−10·log10(2Φ(t) − 1 − 2tφ(t)) with t = Φ⁻¹(0.875), i.e. 5.59 dB). Heavy tails
favour pruning: the few large weights that pruning keeps exactly force a
coarse quantization grid or clipping. Excess kurtosis ``E[(w−μ)⁴]/σ⁴ − 3``
(0 for a Gaussian, 3 for Laplace, +inf for Student-t with ν ≤ 4) is reported
as the usual predictor.

Own code: the statistics are a few numpy lines; the clipping search is the
project's own (affine.py). One tensor is held at a time, in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxpq.passes.quantize.affine import (
    dequantize,
    mse_optimal_absmax,
    quantize,
    sqnr_db,
    symmetric_grid,
    symmetric_scale,
)

__all__ = [
    "DEFAULT_BITS",
    "MIN_CLIP_FRACTION",
    "Comparison",
    "TensorCompression",
    "excess_kurtosis",
    "quantization_sqnr_db",
    "pruning_sqnr_db",
    "equal_compression_sparsity",
    "compare_tensor",
]

#: Bit widths compared by default.
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)

#: Smallest clip value tried, as a fraction of max|w|.
MIN_CLIP_FRACTION = 0.01

#: Points of the clip search (coarse-to-fine, see ``mse_optimal_absmax``).
CLIP_GRID = 200


def excess_kurtosis(w: np.ndarray) -> float:
    """E[(w − μ)⁴] / σ⁴ − 3 over all elements; 0 for a constant tensor."""
    x = np.asarray(w, dtype=np.float64).ravel()
    if x.size == 0:
        return 0.0
    centred = x - x.mean()
    var = float(np.mean(centred**2))
    if var == 0.0:
        return 0.0
    return float(np.mean(centred**4)) / var**2 - 3.0


def equal_compression_sparsity(bits: int, float_bits: int) -> float:
    """Sparsity 1 − b/F that stores as many bits as b-bit quantization of an F-bit float tensor."""
    if not 0 < bits <= float_bits:
        raise ValueError(f"bits must be in 1..{float_bits}, got {bits}")
    return 1.0 - bits / float_bits


def _quantized(w: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """ŵ of symmetric b-bit quantization with MSE-optimal clip, per tensor (axis None) or per channel."""
    absmax = mse_optimal_absmax(w, bits, axis, grid=CLIP_GRID, min_fraction=MIN_CLIP_FRACTION)
    q_min, q_max = symmetric_grid(bits)
    scale = symmetric_scale(absmax, bits)
    if axis is None:
        scale = scale.reshape(())
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    return dequantize(quantize(w, scale, 0, q_min, q_max), scale, 0)


def quantization_sqnr_db(w: np.ndarray, bits: int, axis: int | None = None) -> float:
    """SQNR (dB) of symmetric b-bit quantization of ``w`` with MSE-optimal clipping.

    ``axis`` None: one clip value for the tensor; else one per slice along ``axis``.
    """
    x = np.asarray(w, dtype=np.float64)
    return sqnr_db(x, _quantized(x, bits, axis))


def pruning_sqnr_db(w: np.ndarray, sparsities: Sequence[float]) -> list[float]:
    """SQNR (dB) of magnitude pruning of ``w`` at each sparsity (fraction of weights zeroed).

    Error at sparsity p = sum of the round(p · n) smallest w² (one sort for all p).
    """
    squares = np.sort(np.square(np.asarray(w, dtype=np.float64).ravel()))
    cumulative = np.concatenate([[0.0], np.cumsum(squares)])
    signal = float(cumulative[-1])
    results = []
    for sparsity in sparsities:
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        noise = float(cumulative[int(round(sparsity * squares.size))])
        results.append(math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise))
    return results


@dataclass(frozen=True)
class Comparison:
    """Quantization to ``bits`` against pruning at the equal-compression sparsities.

    ``winner_fp16`` / ``winner_own``: ``"quantize"``, ``"prune"`` or ``"tie"``
    (equal SQNR, e.g. both exact) against the FP16 and the model's own float reference.
    """

    bits: int
    quantize_sqnr_db: float
    prune_sparsity_fp16: float
    prune_sqnr_db_fp16: float
    prune_sparsity_own: float
    prune_sqnr_db_own: float

    @staticmethod
    def _winner(quantize: float, prune: float) -> str:
        if quantize == prune:
            return "tie"
        return "quantize" if quantize > prune else "prune"

    @property
    def winner_fp16(self) -> str:
        return self._winner(self.quantize_sqnr_db, self.prune_sqnr_db_fp16)

    @property
    def winner_own(self) -> str:
        return self._winner(self.quantize_sqnr_db, self.prune_sqnr_db_own)


@dataclass(frozen=True)
class TensorCompression:
    """Statistics and the per-bit-width comparisons of one tensor."""

    size: int
    excess_kurtosis: float
    float_bits: int
    comparisons: tuple[Comparison, ...]

    def pruning_wins(self, reference: str = "fp16") -> tuple[int, ...]:
        """Bit widths at which pruning beats quantization (``reference`` "fp16" or "own")."""
        return tuple(c.bits for c in self.comparisons if getattr(c, f"winner_{reference}") == "prune")


def compare_tensor(
    w: np.ndarray,
    bits: Sequence[int] = DEFAULT_BITS,
    *,
    axis: int | None = None,
    float_bits: int = 32,
) -> TensorCompression:
    """Compare b-bit quantization of ``w`` (per tensor, or per channel along ``axis``) with pruning at equal compression.

    Raises:
        ValueError: empty or all-zero tensor (no signal), or a bit width outside 2..min(16, float_bits).
    """
    x = np.asarray(w, dtype=np.float64)
    if x.size == 0 or not np.any(x):
        raise ValueError("the tensor is empty or all zeros: SQNR is undefined")
    if not np.all(np.isfinite(x)):
        raise ValueError("the tensor holds NaN or infinite values")
    for b in bits:
        if not 2 <= b <= min(16, float_bits):
            raise ValueError(f"bits must be in 2..{min(16, float_bits)}, got {b}")
    fp16 = [equal_compression_sparsity(b, 16) for b in bits]
    own = [equal_compression_sparsity(b, float_bits) for b in bits]
    pruned = pruning_sqnr_db(x, [*fp16, *own])
    comparisons = tuple(
        Comparison(b, quantization_sqnr_db(x, b, axis), fp16[i], pruned[i], own[i], pruned[len(bits) + i])
        for i, b in enumerate(bits)
    )
    return TensorCompression(int(x.size), excess_kurtosis(x), float_bits, comparisons)
