"""Ridge reconstruction: the closed form, honest folds, and refits that do not generalise are refused."""

from __future__ import annotations

import numpy as np
import pytest

from onnxpq.passes.prune.reconstruction import (
    DAMPING_GRID, LayerStatistics, _ridge_path, cross_fits, refit, sample_folds,
)


def _stats(x: np.ndarray, y: np.ndarray, folds: np.ndarray, intercept: bool = True) -> LayerStatistics:
    stats = LayerStatistics(x.shape[1], y.shape[1], intercept, int(folds.max()) + 1)
    for fold in np.unique(folds):
        stats.add(x[folds == fold], y[folds == fold], fold=int(fold))
    return stats


@pytest.mark.parametrize("intercept", [True, False])
def test_ridge_path_equals_the_direct_solution_towards_the_current_weights(intercept: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) + 3.0
    y = x @ rng.normal(size=(6, 3)) + 1.5 + 0.1 * rng.normal(size=(200, 3))
    stats = _stats(x, y, np.zeros(200, dtype=np.int64), intercept)
    current = rng.normal(size=(7 if intercept else 6, 3))
    sums = stats.total()
    penalty = np.ones(sums.gram.shape[0])
    if intercept:
        penalty[-1] = 0.0
    for rho, got in zip(DAMPING_GRID, _ridge_path(sums, current, DAMPING_GRID, intercept, 6), strict=True):
        lam = rho * np.mean(np.diag(sums.gram)[:6])
        want = np.linalg.solve(sums.gram + lam * np.diag(penalty), sums.cross + lam * penalty[:, None] * current)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_refit_is_refused_when_it_does_not_lower_the_held_out_error() -> None:
    # Each fold excites its own features only: what the other folds teach says nothing about a held-out
    # fold (the ridge keeps its features at the current weights), though the fit on all rows is better.
    rng = np.random.default_rng(1)
    folds = np.repeat(np.arange(4), 25)
    x = np.zeros((100, 12))
    for fold in range(4):
        x[folds == fold, 3 * fold : 3 * fold + 3] = rng.normal(size=(25, 3))
    y = x @ rng.normal(size=(12, 2)) + 0.1 * rng.normal(size=(100, 2))
    result = refit(_stats(x, y, folds, intercept=False), np.zeros((12, 2)))
    assert not result.improved
    assert result.heldout_after == pytest.approx(result.heldout_before, rel=1e-6)
    assert result.error_after < 0.1 * result.error_before


def test_refit_is_applied_when_the_held_out_error_falls() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 5))
    true = rng.normal(size=(5, 2))
    y = x @ true + 0.01 * rng.normal(size=(400, 2))
    result = refit(_stats(x, y, np.arange(400) % 4, intercept=False), np.zeros((5, 2)))
    assert result.improved and result.heldout_after < 0.01 * result.heldout_before


@pytest.mark.parametrize("intercept", [True, False])
def test_cross_fit_of_a_fold_is_the_fit_on_the_other_folds_alone(intercept: bool) -> None:
    rng = np.random.default_rng(5)
    folds = np.arange(120) % 4
    x = rng.normal(size=(120, 5)) + 1.0
    y = x @ rng.normal(size=(5, 2)) + 0.5 + 0.3 * rng.normal(size=(120, 2))
    current = rng.normal(size=(6 if intercept else 5, 2))
    fits = cross_fits(_stats(x, y, folds, intercept), current, 0.1)
    assert len(fits) == 4
    for fold, got in enumerate(fits):
        rest = folds != fold
        alone = refit(_stats(x[rest], y[rest], np.zeros(int(rest.sum()), dtype=np.int64), intercept), current, 0.1)
        np.testing.assert_allclose(got, alone.weights, rtol=1e-8, atol=1e-10)


def test_search_returns_the_cross_fits_of_the_chosen_damping() -> None:
    rng = np.random.default_rng(6)
    folds = np.arange(80) % 4
    x = rng.normal(size=(80, 6))
    y = x @ rng.normal(size=(6, 3)) + 0.5 * rng.normal(size=(80, 3))
    stats = _stats(x, y, folds)
    current = np.zeros((7, 3))
    result = refit(stats, current, cross_fit=True)
    assert result.without is not None and refit(stats, current).without is None
    for got, want in zip(result.without, cross_fits(stats, current, result.damping), strict=True):
        np.testing.assert_array_equal(got, want)


def test_near_duplicate_views_share_a_fold() -> None:
    # 8 "photos" x 4 "views" (flip, shift, brightness noise): views share their photo's colour statistics.
    rng = np.random.default_rng(3)
    views, labels = [], []
    for photo in range(8):
        image = rng.normal(size=(3, 16, 16)) * rng.uniform(0.5, 2.0, size=(3, 1, 1)) + rng.normal(size=(3, 1, 1)) * 3
        for view in (image, image[:, :, ::-1], np.roll(image, 3, axis=2), image + 0.01 * rng.normal(size=image.shape)):
            views.append(view)
            labels.append(photo)
    order = rng.permutation(len(views))  # stored shuffled: contiguity alone would not group them
    data = {"x": np.stack([views[i] for i in order]).astype(np.float32)}
    folds = sample_folds(data, folds=4)
    photos = np.asarray(labels)[order]
    for photo in range(8):
        assert len(set(folds[photos == photo].tolist())) == 1, photo
    assert len(set(folds.tolist())) == 4


def test_distinct_samples_are_spread_over_the_folds() -> None:
    data = {"x": np.random.default_rng(4).normal(size=(40, 1, 8, 8)).astype(np.float32)}
    folds = sample_folds(data, folds=4)
    assert np.bincount(folds).tolist() == [10, 10, 10, 10]
