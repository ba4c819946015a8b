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
no refit at all. The sums are kept per fold (``k`` folds, up to
:data:`FOLDS`); for every ρ of a grid the fit on the other folds
(``G − G_f``, ``C − C_f``) is scored on fold f, summed over f, and the ρ with
the smallest held-out error wins — or no refit, unless it beats the pruned
weights W̃₀ held out by at least 0.1 % of their error (so float rounding never
counts as a gain): a refit that makes held-out error worse is never applied.
The final fit uses every fold. A fixed ρ skips the search (the refit is then
judged on all calibration rows). ``refit(..., cross_fit=True)`` also returns,
at the chosen ρ, the fit without each fold (the search computes them anyway;
:func:`cross_fits` for a fixed ρ): the weights the pass's end-to-end check
runs that fold's samples with.

Honest folds. Calibration sets are often several views of few sources (crops
and flips of one photo): a view of the same photo in the training folds makes
the held-out error look better than it is. :func:`sample_folds` therefore
assigns *groups* of near-duplicate samples to folds, never single samples:
two samples are near-duplicates when the cosine of their signatures (per
input, centred over the samples: the per-channel mean and standard deviation
of an image-like float input with three or more channels — views of one
photo share its colour statistics — or the flattened values otherwise) is at least :data:`DUPLICATE_COSINE` for
every input; groups are the connected components, taken in order of their
first sample and cut into ``k`` contiguous blocks of about equal size (so a
set stored source by source is also split by source). Every spatial position
of a Conv output is one row, so a sample gives ``H_out · W_out`` rows.

Errors are reported relative to ``e`` (``E / e``), both on all calibration
rows and held out. The intercept absorbs the mean shift that removing
channels with a non-zero mean causes (as bias correction does for
quantization).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DAMPING_GRID", "DUPLICATE_COSINE", "FOLDS", "LayerStatistics", "Refit", "conv_patches", "cross_fits", "refit",
    "sample_folds",
]

logger = logging.getLogger(__name__)

#: Rows processed at once when accumulating (bounds the float64 temporaries).
_ROW_CHUNK = 4096

#: The ridge strengths ρ (relative to the mean diagonal of XᵀX) searched by cross-validation.
DAMPING_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)

#: Folds of the cross-validation (fewer when there are fewer groups of near-duplicate samples).
FOLDS = 4

#: Signature cosine at or above which two calibration samples count as views of one source.
DUPLICATE_COSINE = 0.95


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

    def __init__(self, features: int, outputs: int, intercept: bool, folds: int = 2) -> None:
        self.features = features
        self.intercept = intercept
        width = features + (1 if intercept else 0)
        self.folds = tuple(_Sums(width, outputs) for _ in range(max(1, folds)))

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.folds)

    def total(self) -> _Sums:
        """Every fold together."""
        first = self.folds[0]
        sums = _Sums(first.gram.shape[0], first.cross.shape[1])
        for fold in self.folds:
            sums.gram += fold.gram
            sums.cross += fold.cross
            sums.energy += fold.energy
            sums.rows += fold.rows
        return sums

    def add(self, x: np.ndarray, y: np.ndarray, fold: int = 0) -> None:
        """Add rows ``x [R, features]`` and their outputs ``y [R, outputs]`` to fold ``fold``."""
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


def _minus(total: _Sums, part: _Sums) -> _Sums:
    rest = _Sums(total.gram.shape[0], total.cross.shape[1])
    rest.gram, rest.cross = total.gram - part.gram, total.cross - part.cross
    rest.energy, rest.rows = total.energy - part.energy, total.rows - part.rows
    return rest


def sample_folds(data: Mapping[str, np.ndarray], folds: int = FOLDS, threshold: float = DUPLICATE_COSINE) -> np.ndarray:
    """Fold index (0 .. k−1) of every calibration sample; near-duplicates share a fold (module docstring).

    ``k = min(folds, number of near-duplicate groups)``; every sample is in fold 0 when there is
    one group only (no cross-validation is then possible).
    """
    arrays = [np.asarray(a) for a in data.values() if np.ndim(a) >= 1]
    count = len(arrays[0]) if arrays else 0
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    linked = np.ones((count, count), dtype=bool)
    for array in arrays:
        if array.dtype.kind == "f" and array.ndim >= 3 and array.shape[1] >= 3:
            flat = array.reshape(count, array.shape[1], -1).astype(np.float64)
            signature = np.concatenate([flat.mean(axis=2), flat.std(axis=2)], axis=1)
        else:
            signature = array.reshape(count, -1).astype(np.float64)
        signature = signature - signature.mean(axis=0)
        norms = np.linalg.norm(signature, axis=1)
        unit = signature / np.where(norms > 0, norms, 1.0)[:, None]
        cosine = unit @ unit.T
        cosine[norms == 0, :] = 1.0  # a sample equal to the mean is like every other one on this input
        cosine[:, norms == 0] = 1.0
        linked &= cosine >= threshold
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1)), strict=True):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(count)]
    groups = list(dict.fromkeys(roots))  # in order of first sample
    if len(groups) < 2 <= count:
        logger.info("calibration folds: all %d samples look alike; folds of single samples", count)
        roots, groups = list(range(count)), list(range(count))
    k = max(1, min(folds, len(groups)))
    sizes = {g: roots.count(g) for g in groups}
    fold_of_group: dict[int, int] = {}
    done, fold = 0, 0
    for g in groups:
        fold_of_group[g] = fold
        done += sizes[g]
        if fold < k - 1 and done >= (fold + 1) * count / k:
            fold += 1
    result = np.asarray([fold_of_group[r] for r in roots], dtype=np.int64)
    logger.debug("calibration folds: %d samples, %d near-duplicate groups, %d folds", count, len(groups), k)
    return result


@dataclass(frozen=True)
class Refit:
    """The refitted ``W̃ [features(+1), outputs]`` and the relative output errors.

    ``error_*`` are on all calibration rows; ``heldout_*`` are the k-fold
    cross-validation estimates (None when ρ was fixed or fewer than two folds hold rows).
    ``improved`` says whether to use the refit. ``without`` (when asked for): per fold of the
    statistics, the fit at the chosen ρ that never saw that fold (see :func:`cross_fits`).
    """

    weights: np.ndarray
    damping: float
    error_before: float
    error_after: float
    heldout_before: float | None
    heldout_after: float | None
    improved: bool
    without: tuple[np.ndarray | None, ...] | None = None


def _ridge_path(sums: _Sums, current: np.ndarray, dampings: Sequence[float], intercept: bool, features: int) -> list[np.ndarray]:
    """``(G + λD)⁻¹ (C + λ D W̃₀)`` for every ρ of ``dampings`` (``λ = ρ · mean(diag(XᵀX))``).

    With an unpenalised intercept the problem is the centred one: with ``n`` rows, ``s = Σx``,
    ``t = Σy``, ``G_c = XᵀX − s sᵀ/n`` and ``C_c = XᵀY − s tᵀ/n``, ``W' = (G_c + λI)⁻¹(C_c + λW₀)``
    and ``b' = (t − W'ᵀ s)/n`` (one symmetric solve of size ``features`` per ρ; an
    eigendecomposition shared by all ρ costs more than the few solves of a short grid).
    """
    f = features
    gram, cross = sums.gram, sums.cross
    if intercept and gram[f, f] > 0:
        n = gram[f, f]
        s, t = gram[:f, f], cross[f]
        centred_gram = gram[:f, :f] - np.outer(s, s) / n
        centred_cross = cross[:f] - np.outer(s, t) / n
    else:
        n, s, t = 0.0, None, None
        centred_gram, centred_cross = gram[:f, :f], cross[:f]
    scale = float(np.mean(np.diag(gram)[:f])) if f else 0.0
    result = []
    identity = np.eye(f)
    for damping in dampings:
        lam = damping * scale
        if not lam > 0.0:
            lam = 1e-12
        system, target = centred_gram + lam * identity, centred_cross + lam * current[:f]
        try:
            weights = np.linalg.solve(system, target)
        except np.linalg.LinAlgError:
            weights = np.linalg.lstsq(system, target, rcond=None)[0]
        if intercept:
            bias = (t - weights.T @ s) / n if n > 0 else current[f]  # type: ignore[operator]
            weights = np.concatenate([weights, bias[None, :]], axis=0)
        result.append(weights)
    return result


def _lowers(after: float, before: float) -> bool:
    """A real improvement of a relative error, not float rounding (≥ 0.1 % of it and ≥ 1e-9)."""
    return before - after > max(1e-3 * before, 1e-9)


def refit(
    stats: LayerStatistics, current: np.ndarray, damping: float | None = None, *, cross_fit: bool = False
) -> Refit:
    """Ridge least squares towards ``current`` W̃ (module docstring); ρ by k-fold CV when ``damping`` is None.

    ``cross_fit``: also return the fit without each fold at the chosen ρ (``Refit.without``); the
    search computes them anyway, so they cost no extra solve unless ρ is fixed.
    """
    total = stats.total()
    if total.rows == 0:
        raise ValueError("no calibration rows")
    scale = total.energy if total.energy > 0 else 1.0
    heldout_before = heldout_after = None
    without: tuple[np.ndarray | None, ...] | None = None
    folds = [f for f in stats.folds if f.rows]
    if damping is None and len(folds) >= 2:
        held_scale = sum(f.energy for f in folds) or 1.0
        baseline = sum(f.error(current) for f in folds) / held_scale
        best, best_score, best_fits = 0, math.inf, None
        for index, rho in enumerate(DAMPING_GRID):  # ρ outside: only the best ρ's fold fits are held
            fits = [
                _ridge_path(_minus(total, fold), current, [rho], stats.intercept, stats.features)[0] if fold.rows else None
                for fold in stats.folds
            ]
            score = 0.0
            for fold, weights in zip(stats.folds, fits, strict=True):
                if weights is not None:
                    score += fold.error(weights) / held_scale
            if score < best_score:
                best, best_score, best_fits = index, score, (tuple(fits) if cross_fit else None)
        chosen, heldout_before, heldout_after = DAMPING_GRID[best], baseline, best_score
        improved = _lowers(best_score, baseline)
        without = best_fits
    else:
        chosen = damping if damping is not None else 1e-2
        improved = None
        if cross_fit:
            without = cross_fits(stats, current, chosen)
    weights = _ridge_path(total, current, [chosen], stats.intercept, stats.features)[0]
    before = total.error(current) / scale
    after = total.error(weights) / scale
    if not math.isfinite(after):
        after, improved = math.inf, False
    if improved is None:
        improved = _lowers(after, before)
    return Refit(weights, chosen, before, after, heldout_before, heldout_after, bool(improved), without)


def cross_fits(stats: LayerStatistics, current: np.ndarray, damping: float) -> tuple[np.ndarray | None, ...]:
    """The fit without each fold at ridge strength ``damping``: entry f never saw fold f's rows.

    One per fold of ``stats`` (None for a fold without rows, or when no other fold has any): what
    :func:`refit` would give had fold f been left out of the calibration data — the weights an
    end-to-end check runs on fold f's samples.
    """
    total = stats.total()
    result: list[np.ndarray | None] = []
    for fold in stats.folds:
        if not fold.rows or total.rows == fold.rows:
            result.append(None)
            continue
        result.append(_ridge_path(_minus(total, fold), current, [damping], stats.intercept, stats.features)[0])
    return tuple(result)


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
