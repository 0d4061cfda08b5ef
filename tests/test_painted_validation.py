"""The held-out validation (ours): normal held-out images, painted copies, and faint copies that keep
35 % of each painted change; normal images are the negatives, painted (val_) or faint (val_faint_)
copies the positives."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

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


def test_validation_metrics_score_painted_and_faint_parts_against_the_normal_images():
    n, size = 3, 8
    masks = np.zeros((n, size, size), bool)
    masks[:, 2:5, 2:5] = True
    masks[1, 6, 6] = True
    rng = np.random.default_rng(0)
    normal_maps = 0.5 * rng.random((n, size, size))
    strong_maps = np.where(masks, 0.9, 0.1) + 0.01 * rng.random((n, size, size))
    faint_maps = rng.random((n, size, size))  # uninformative
    maps = np.concatenate([normal_maps, strong_maps, faint_maps]).astype(np.float32)
    scores = np.array([0.2, 0.3, 0.6, 0.9, 0.8, 0.7, 0.1, 0.65, 0.25], np.float32)
    metrics = fit_module.painted_validation_metrics(maps, scores, masks)

    labels = np.r_[np.zeros(n), np.ones(n)]
    pixel_labels = np.concatenate([np.zeros_like(masks), masks]).ravel()
    assert metrics["val_image_auroc"] == pytest.approx(roc_auc_score(labels, scores[:2 * n]))
    assert metrics["val_image_auroc"] == pytest.approx(1.0)
    assert metrics["val_faint_image_auroc"] == pytest.approx(roc_auc_score(labels, np.r_[scores[:n], scores[2 * n:]]))
    assert metrics["val_pixel_auroc"] == pytest.approx(
        roc_auc_score(pixel_labels, np.concatenate([normal_maps, strong_maps]).ravel()), abs=1e-6)
    assert metrics["val_faint_pixel_auroc"] == pytest.approx(
        roc_auc_score(pixel_labels, np.concatenate([normal_maps, faint_maps]).ravel()), abs=1e-6)
