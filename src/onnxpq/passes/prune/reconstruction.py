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
With X the rows of the *original* model's layer input restricted to the kept
input features, x̃ = [x, 1] when the layer has (or can be given) a bias, Y the
original layer's outputs restricted to the kept output channels, and W̃₀ the
pruned layer's weights as they are (the kept rows and columns, bias last)::

    W̃' = argmin_W̃ ||Y − X̃ W̃||² + λ ||D (W̃ − W̃₀)||²
       = (X̃ᵀX̃ + λ D)⁻¹ (X̃ᵀY + λ D W̃₀),   D = diag(1, …, 1, 0),   λ = ρ · mean(diag(XᵀX))

The ridge term pulls towards the pruned weights rather than towards zero
(the bias row is not penalised): directions the calibration data does not
excite keep their trained values, and a layer whose removed channels carried
nothing keeps its weights. With ``λ → 0`` it is the plain least-squares fit
of He et al. / ThiNet.

Only ``G = X̃ᵀX̃``, ``C = X̃ᵀY`` and ``e = Σ ||y||²`` are accumulated, batch by
batch, in float64 — X is never held whole. The squared output error of any
weights W̃ follows from the same sums::

    E(W̃) = ||Y − X̃W̃||² = e − 2 ⟨W̃, C⟩ + ⟨W̃, G W̃⟩

Choosing ρ. Calibration sets are small next to the number of features (a
transformer FFN refits ~1,000 inputs from a few thousand token rows), and a
fit that is too loose matches the calibration rows and generalises worse than
no refit at all. The sums are kept for two folds (samples alternate between
them); for every ρ of a grid the fit on one fold is scored on the other, both
ways, and the ρ with the smallest held-out error wins — or no refit, unless it
beats the pruned weights W̃₀ held out by at least 0.1 % of their error (so float
rounding never counts as a gain). The final fit uses both folds. A fixed ρ
skips the search (the refit is then judged on all calibration rows). Errors are reported relative to ``e`` (``E / e``), both on
all calibration rows and held out. The intercept absorbs the mean shift that
removing channels with a non-zero mean causes (as bias correction does for
quantization).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DAMPING_GRID", "LayerStatistics", "Refit", "conv_patches", "refit"]

logger = logging.getLogger(__name__)

#: Rows processed at once when accumulating (bounds the float64 temporaries).
_ROW_CHUNK = 4096

#: The ridge strengths ρ (relative to the mean diagonal of XᵀX) searched by cross-validation.
DAMPING_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


class _Sums:
    def __init__(self, width: int, outputs: int) -> None:
        self.gram = np.zeros((width, width))
        self.cross = np.zeros((width, outputs))
        self.energy = 0.0
        self.rows = 0

    def error(self, weights: np.ndarray) -> float:
        """``||Y − X̃W̃||²`` from the sums (clamped at 0 against rounding)."""
        value = self.energy - 2.0 * float(np.sum(weights * self.cross)) + float(np.sum(weights * (self.gram @ weights)))
        return max(value, 0.0)


class LayerStatistics:
    """Running ``G = X̃ᵀX̃``, ``C = X̃ᵀY`` and ``e = Σ y²`` of one layer, per fold (float64)."""

    def __init__(self, features: int, outputs: int, intercept: bool) -> None:
        self.features = features
        self.intercept = intercept
        width = features + (1 if intercept else 0)
        self.folds = (_Sums(width, outputs), _Sums(width, outputs))

    @property
    def rows(self) -> int:
        return self.folds[0].rows + self.folds[1].rows

    def total(self) -> _Sums:
        """Both folds together."""
        a, b = self.folds
        sums = _Sums(a.gram.shape[0], a.cross.shape[1])
        sums.gram, sums.cross = a.gram + b.gram, a.cross + b.cross
        sums.energy, sums.rows = a.energy + b.energy, a.rows + b.rows
        return sums

    def add(self, x: np.ndarray, y: np.ndarray, fold: int = 0) -> None:
        """Add rows ``x [R, features]`` and their outputs ``y [R, outputs]`` to fold 0 or 1."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} input rows for {y.shape[0]} output rows")
        sums = self.folds[fold]
        for start in range(0, x.shape[0], _ROW_CHUNK):
            xs = np.asarray(x[start : start + _ROW_CHUNK], dtype=np.float64)
            ys = np.asarray(y[start : start + _ROW_CHUNK], dtype=np.float64)
            if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
                raise ValueError("the layer's inputs or outputs take NaN or infinite values on the calibration data")
            if self.intercept:
                xs = np.concatenate([xs, np.ones((xs.shape[0], 1))], axis=1)
            sums.gram += xs.T @ xs
            sums.cross += xs.T @ ys
            sums.energy += float(np.sum(ys * ys))
            sums.rows += xs.shape[0]


@dataclass(frozen=True)
class Refit:
    """The refitted ``W̃ [features(+1), outputs]`` and the relative output errors.

    ``error_*`` are on all calibration rows; ``heldout_*`` are the two-fold
    cross-validation estimates (None when ρ was fixed or a fold was empty).
    ``improved`` says whether to use the refit.
    """

    weights: np.ndarray
    damping: float
    error_before: float
    error_after: float
    heldout_before: float | None
    heldout_after: float | None
    improved: bool


def _solve(sums: _Sums, current: np.ndarray, damping: float, intercept: bool, features: int) -> np.ndarray:
    """``(G + λD)⁻¹ (C + λ D W̃₀)`` with ``λ = damping · mean(diag(XᵀX))`` (one LU solve)."""
    penalty = np.ones(sums.gram.shape[0])
    if intercept:
        penalty[-1] = 0.0
    lam = damping * float(np.mean(np.diag(sums.gram)[:features])) if features else 0.0
    if not lam > 0.0:
        lam = 1e-12
    system = sums.gram + lam * np.diag(penalty)
    target = sums.cross + lam * penalty[:, None] * current
    try:
        return np.linalg.solve(system, target)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(system, target, rcond=None)[0]


def _lowers(after: float, before: float) -> bool:
    """A real improvement of a relative error, not float rounding (≥ 0.1 % of it and ≥ 1e-9)."""
    return before - after > max(1e-3 * before, 1e-9)


def refit(stats: LayerStatistics, current: np.ndarray, damping: float | None = None) -> Refit:
    """Ridge least squares towards ``current`` W̃ (module docstring); ρ by two-fold CV when ``damping`` is None."""
    total = stats.total()
    if total.rows == 0:
        raise ValueError("no calibration rows")
    scale = total.energy if total.energy > 0 else 1.0
    heldout_before = heldout_after = None
    folds = stats.folds
    if damping is None and folds[0].rows and folds[1].rows:
        held_scale = (folds[0].energy + folds[1].energy) or 1.0
        baseline = (folds[0].error(current) + folds[1].error(current)) / held_scale
        pairs = ((folds[0], folds[1]), (folds[1], folds[0]))
        scores = [
            sum(test.error(_solve(train, current, rho, stats.intercept, stats.features)) for train, test in pairs)
            / held_scale
            for rho in DAMPING_GRID
        ]
        best = int(np.argmin(scores))
        chosen, heldout_before, heldout_after = DAMPING_GRID[best], baseline, scores[best]
        improved = _lowers(scores[best], baseline)
    else:
        chosen = damping if damping is not None else 1e-2
        improved = None
    weights = _solve(total, current, chosen, stats.intercept, stats.features)
    before = total.error(current) / scale
    after = total.error(weights) / scale
    if not math.isfinite(after):
        after, improved = math.inf, False
    if improved is None:
        improved = _lowers(after, before)
    return Refit(weights, chosen, before, after, heldout_before, heldout_after, bool(improved))


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
    A 1x1 kernel with unit strides and no padding is a plain transpose.
    """
    spatial = len(kernel)
    n, c = x.shape[0], x.shape[1]
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
        return np.moveaxis(x, 1, -1).reshape(-1, c)
    width = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    padding = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)]
    padded = np.pad(x, padding)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=tuple(range(2, 2 + spatial)))
    index: list[slice] = [slice(None), slice(None)]
    index += [slice(None, (o - 1) * s + 1, s) for o, s in zip(out_spatial, strides, strict=True)]
    index += [slice(None, None, d) for d in dilations]
    windows = windows[tuple(index)]
    order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
    return windows.transpose(order).reshape(n * math.prod(out_spatial), c * math.prod(kernel))
