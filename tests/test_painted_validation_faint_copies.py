"""The painted validation set: normal held-out images, painted copies, and faint copies that keep
35 % of each painted change; and the val_faint_ metrics are computed on the faint copies."""

from __future__ import annotations

import numpy as np

import realnet.engine.fit as fit_module


def _holdout(n: int = 3, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (n, size, size, 3), dtype=np.uint8)


def test_faint_copies_keep_35_percent_of_each_painted_change():
    assert fit_module.FAINT_DEFECT_CONTRAST == 0.35  # what the docs promise
    holdout = _holdout()
    images, masks = fit_module.painted_validation_set(holdout, seed=5)
    n = len(holdout)
    assert images.shape == (3 * n, *holdout.shape[1:]) and masks.shape == holdout.shape[:3]
    normal, strong, faint = images[:n].astype(float), images[n:2 * n].astype(float), images[2 * n:].astype(float)
    assert np.array_equal(normal, holdout)
    change = strong - normal
    assert np.abs(change).max() > 20  # something was painted
    expected = np.clip(np.round(normal + 0.35 * change), 0, 255)
    assert np.abs(faint - expected).max() <= 1  # rounding of float32 at .5 only
    assert (faint[change == 0] == normal[change == 0]).all()
    for i in range(n):
        assert masks[i].any() and (change[i] != 0).any(axis=2)[masks[i]].all()


def test_faint_metrics_are_computed_on_the_faint_copies():
    n, size = 4, 16
    masks = np.zeros((n, size, size), bool)
    masks[:, 4:8, 4:8] = True
    maps = np.zeros((3 * n, size, size), np.float32)
    maps[n:2 * n][masks] = 1.0  # the painted copies are found perfectly
    rng = np.random.default_rng(0)
    maps[2 * n:] = rng.random((n, size, size)) * 0.1  # the faint ones not at all, but not constant
    maps[:n] = rng.random((n, size, size)) * 0.1
    scores = maps.reshape(3 * n, -1).max(axis=1)
    metrics = fit_module.painted_validation_metrics(maps, scores, masks)
    assert metrics["val_image_auroc"] == 1.0 and metrics["val_pixel_auroc"] == 1.0
    assert metrics["val_faint_pixel_auroc"] < 0.8 and metrics["val_faint_image_auroc"] < 1.0
