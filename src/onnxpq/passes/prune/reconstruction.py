"""Least-squares reconstruction of a layer whose input channels were pruned.

He et al., "Channel Pruning for Accelerating Very Deep Neural Networks"
(ICCV 2017) and ThiNet (Luo et al., ICCV 2017): after input channels of a
layer are removed, refit the layer's remaining weights so that its outputs
match those of the unpruned model on calibration data.

The layer is read as a linear map of rows. For a Gemm or MatMul each row is
one input vector ``x ∈ R^K`` (all leading axes flattened); for a Conv each
row is one im2col patch, ``x ∈ R^{C_in · prod(kernel)}`` (the input window of
one output position, laid out ``[C_in, *kernel]`` like the weight), and the
weight matrix is ``W[C_out, C_in, *kernel]`` reshaped to ``[C_in·prod(k), C_out]``.
With X the rows restricted to the kept input features, x̃ = [x, 1] when the
layer has (or can be given) a bias, Y the *original* layer's outputs
restricted to the kept output channels, and W̃₀ the pruned layer's weights as
they are (the kept rows and columns, bias last)::

    W̃' = argmin_W̃ ||Y − X̃ W̃||² + λ ||D (W̃ − W̃₀)||²
       = (X̃ᵀX̃ + λ D)⁻¹ (X̃ᵀY + λ D W̃₀),   D = diag(1, …, 1, 0),   λ = damping · mean(diag(XᵀX))

The ridge term pulls towards the pruned weights rather than towards zero
(the bias row is not penalised): directions the calibration data does not
excite keep their trained values, a layer whose removed channels carried
nothing keeps its weights, and ``E(W̃') ≤ E(W̃₀)`` holds by construction
(W̃' minimises ``E + λ·penalty`` and the penalty is 0 at W̃₀). With ``λ → 0``
it is the least-squares fit of He et al. / ThiNet.

Only ``G = X̃ᵀX̃``, ``C = X̃ᵀY`` and ``e = Σ ||y||²`` are accumulated, batch by
batch, in float64 — X is never held whole. The squared output error of any
weights W̃ follows from the same sums:

    E(W̃) = ||Y − X̃W̃||² = e − 2 ⟨W̃, C⟩ + ⟨W̃, G W̃⟩

so the error before (the pruned weights as they are) and after the refit is
reported as ``E / e`` (relative squared error) without another pass over the
data, and the refit is kept only when it lowers E. The intercept absorbs the
mean shift that removing channels with a non-zero mean causes (as bias
correction does for quantization).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LayerStatistics", "Refit", "conv_patches", "refit"]

logger = logging.getLogger(__name__)

#: Rows processed at once when accumulating (bounds the float64 temporaries).
_ROW_CHUNK = 4096


class LayerStatistics:
    """Running ``G = X̃ᵀX̃``, ``C = X̃ᵀY`` and ``e = Σ y²`` of one layer (float64)."""

    def __init__(self, features: int, outputs: int, intercept: bool) -> None:
        width = features + (1 if intercept else 0)
        self.features = features
        self.intercept = intercept
        self.gram = np.zeros((width, width))
        self.cross = np.zeros((width, outputs))
        self.energy = 0.0
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows ``x [R, features]`` and their outputs ``y [R, outputs]``."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} input rows for {y.shape[0]} output rows")
        for start in range(0, x.shape[0], _ROW_CHUNK):
            xs = np.asarray(x[start : start + _ROW_CHUNK], dtype=np.float64)
            ys = np.asarray(y[start : start + _ROW_CHUNK], dtype=np.float64)
            if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
                raise ValueError("the layer's inputs or outputs take NaN or infinite values on the calibration data")
            if self.intercept:
                xs = np.concatenate([xs, np.ones((xs.shape[0], 1))], axis=1)
            self.gram += xs.T @ xs
            self.cross += xs.T @ ys
            self.energy += float(np.sum(ys * ys))
            self.rows += xs.shape[0]

    def error(self, weights: np.ndarray) -> float:
        """``||Y − X̃W̃||²`` from the sums (clamped at 0 against rounding)."""
        value = self.energy - 2.0 * float(np.sum(weights * self.cross)) + float(np.sum(weights * (self.gram @ weights)))
        return max(value, 0.0)


@dataclass(frozen=True)
class Refit:
    """The refitted ``W̃ [features(+1), outputs]`` and the relative output errors before and after."""

    weights: np.ndarray
    error_before: float
    error_after: float

    @property
    def improved(self) -> bool:
        return self.error_after < self.error_before


def refit(stats: LayerStatistics, current: np.ndarray, damping: float) -> Refit:
    """Ridge least squares (module docstring) starting from ``current`` W̃; errors are relative to ``Σ y²``."""
    if stats.rows == 0:
        raise ValueError("no calibration rows")
    f = stats.features
    diagonal = np.diag(stats.gram)[:f]
    lam = damping * float(np.mean(diagonal)) if f else 0.0
    if not lam > 0.0:
        lam = 1e-12
    penalty = np.ones(stats.gram.shape[0])
    if stats.intercept:
        penalty[-1] = 0.0
    system = stats.gram + lam * np.diag(penalty)
    target = stats.cross + lam * penalty[:, None] * current
    try:
        weights = np.linalg.solve(system, target)
    except np.linalg.LinAlgError:
        weights = np.linalg.lstsq(system, target, rcond=None)[0]
    scale = stats.energy if stats.energy > 0 else 1.0
    before = stats.error(current) / scale
    after = stats.error(weights) / scale
    if not math.isfinite(after):
        after = math.inf
    return Refit(weights, before, after)


def conv_patches(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    out_spatial: Sequence[int],
) -> np.ndarray:
    """im2col: ``x [N, C, *spatial]`` → rows ``[N · prod(out_spatial), C · prod(kernel)]``.

    Row order is (n, *out position) — the order of ``Y.transpose(0, 2, ..., 1)`` —
    and column order (c, *kernel offset) — the order of ``W[o].reshape(-1)``.
    ``pads`` is ``[begin_0, …, begin_{d−1}, end_0, …, end_{d−1}]`` as in ONNX.
    """
    spatial = len(kernel)
    width = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    padding = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)]
    padded = np.pad(x, padding)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=tuple(range(2, 2 + spatial)))
    index: list[slice] = [slice(None), slice(None)]
    index += [slice(None, (o - 1) * s + 1, s) for o, s in zip(out_spatial, strides)]
    index += [slice(None, None, d) for d in dilations]
    windows = windows[tuple(index)]
    order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
    n, c = x.shape[0], x.shape[1]
    return windows.transpose(order).reshape(n * math.prod(out_spatial), c * math.prod(kernel))
