from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from realnet.metrics import (
    aupro,
    average_precision,
    f1_max,
    f1_max_threshold,
    image_auroc,
    pixel_auroc,
)


def _tied_scores(rng: np.random.Generator, size, levels: int = 7) -> np.ndarray:
    """Raw scores far outside [0, 1] (a clamp or sigmoid would change them) with many ties."""
    return rng.integers(0, levels, size=size).astype(np.float64) * 37.5 - 80.0


def _blob_maps(rng: np.random.Generator, n: int = 6, size: int = 32, quantum: float | None = None):
    """Maps and blob masks (smoothed noise thresholded), two images fully normal."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, 3, 3))
    masks = noise > 0.25
    masks[:2] = False
    maps = 0.8 * masks + 0.5 * rng.standard_normal(masks.shape) + 0.3 * noise
    if quantum is not None:
        maps = np.round(maps / quantum) * quantum
    return maps, masks


# ---------------------------------------------------------------- ranking metrics vs scikit-learn


def test_image_auroc_matches_sklearn_with_ties(rng):
    for _ in range(5):
        labels = rng.random(300) < 0.3
        scores = _tied_scores(rng, 300) + 20.0 * labels * rng.random(300)
        assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_matches_sklearn_with_ties(rng):
    maps, masks = _blob_maps(rng, quantum=0.25)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(maps.astype(np.float32), masks.astype(np.uint8)) == pytest.approx(expected, abs=1e-12)


def test_average_precision_matches_sklearn_with_ties(rng):
    for _ in range(5):
        labels = rng.random(200) < 0.4
        scores = _tied_scores(rng, 200, levels=5) + 40.0 * labels * (rng.random(200) < 0.5)
        assert average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )


def test_f1_max_matches_brute_force_over_thresholds(rng):
    labels = rng.random(150) < 0.35
    scores = _tied_scores(rng, 150) + 30.0 * labels * rng.random(150)
    brute = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = np.sum(predicted & labels)
        fp = np.sum(predicted & ~labels)
        fn = np.sum(~predicted & labels)
        brute = max(brute, 2 * tp / (2 * tp + fp + fn))
    best, threshold = f1_max_threshold(scores, labels)
    assert best == pytest.approx(brute, abs=1e-12)
    assert f1_max(scores, labels) == best
    predicted = scores >= threshold
    tp = np.sum(predicted & labels)
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(best, abs=1e-12)


def test_torch_tensors_give_the_same_values(rng):
    labels = rng.random(100) < 0.5
    scores = _tied_scores(rng, 100) + 10.0 * labels
    maps, masks = _blob_maps(rng)
    assert image_auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == image_auroc(scores, labels)
    assert pixel_auroc(torch.from_numpy(maps), torch.from_numpy(masks)) == pixel_auroc(maps, masks)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks)) == aupro(maps, masks)


def test_auroc_below_half_is_not_flipped():
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.2, 0.7])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # Of the 9 (anomalous, normal) pairs only 0.7 > 0.3 is ranked right: AUROC 1/9.
    assert image_auroc(scores, labels) == pytest.approx(1 / 9)
    maps = scores.reshape(1, 2, 3)
    assert pixel_auroc(maps, labels.reshape(1, 2, 3)) == pytest.approx(1 / 9)


# ---------------------------------------------------------------- AUPRO


def _brute_force_aupro(maps, masks, fpr_limit: float, thresholds: np.ndarray) -> float:
    """Sweep thresholds (anomalous if score >= t), integrate PRO over FPR on [0, limit], / limit."""
    regions = np.stack([ndimage.label(mask, structure=np.ones((3, 3)))[0] for mask in masks])
    offsets = np.cumsum([0] + [int(r.max()) for r in regions[:-1]])
    regions = np.where(regions > 0, regions + offsets[:, None, None], 0)
    n_regions = int(regions.max())
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    n_normal = sizes[0]
    fpr, pro = [], []
    for threshold in np.concatenate(([np.inf], np.sort(thresholds)[::-1])):
        hit = np.bincount(regions[maps >= threshold], minlength=n_regions + 1)
        fpr.append(hit[0] / n_normal)
        pro.append(np.mean(hit[1:] / sizes[1:]))
    fpr, pro = np.array(fpr), np.array(pro)
    beyond = int(np.argmax(fpr > fpr_limit))
    x = np.append(fpr[:beyond], fpr_limit)
    slope = (pro[beyond] - pro[beyond - 1]) / (fpr[beyond] - fpr[beyond - 1])
    y = np.append(pro[:beyond], pro[beyond - 1] + slope * (fpr_limit - fpr[beyond - 1]))
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only np.trapz
    return float(trapezoid(y, x) / fpr_limit)


@pytest.mark.parametrize(
    ("quantum", "fpr_limit", "tolerance"),
    [(None, 0.3, 1e-3), (None, 0.05, 1e-3), (0.05, 0.3, 1e-9)],
    ids=["continuous", "continuous-low-limit", "tied-grid-is-exact"],
)
def test_aupro_matches_a_sweep_of_10001_thresholds(rng, quantum, fpr_limit, tolerance):
    maps, masks = _blob_maps(rng, quantum=quantum)
    assert sum(ndimage.label(mask, structure=np.ones((3, 3)))[1] for mask in masks) >= 3
    thresholds = np.linspace(maps.min(), maps.max(), 10_001)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(
        _brute_force_aupro(maps, masks, fpr_limit, thresholds), abs=tolerance
    )


def test_aupro_matches_a_sweep_of_every_distinct_score(rng):
    maps, masks = _blob_maps(rng, n=3, size=24)
    expected = _brute_force_aupro(maps, masks, 0.3, thresholds=np.unique(maps))
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_aupro_hand_computed_regions_weigh_equally_and_are_8_connected():
    # One 4x4 image, 10 normal pixels. Region A: (3,0) (3,1) at 0.9 0.9. Region B: the diagonal
    # chain (0,0) (1,1) (0,2) (1,3), one region only with 8-connectivity, at 0.8 0.8 0.1 0.1.
    # Normal pixels: (3,3) at 0.7, nine at 0.0.
    #   t=0.9: FPR 0,   PRO (1 + 0)/2   = 1/2
    #   t=0.8: FPR 0,   PRO (1 + 2/4)/2 = 3/4
    #   t=0.7: FPR 0.1, PRO 3/4
    #   t=0.1: FPR 0.1, PRO 1
    #   t=0.0: FPR 1,   PRO 1
    # Area on [0, 0.3] = 0.1 * 3/4 + 0.2 * 1 = 0.275; / 0.3 = 11/12.
    # (Pixel-weighted overlap would give 8/9; 4-connectivity would give 8/9 as well.)
    maps = np.zeros((1, 4, 4))
    masks = np.zeros((1, 4, 4), dtype=bool)
    for (row, col), score in zip(
        [(3, 0), (3, 1), (0, 0), (1, 1), (0, 2), (1, 3)], [0.9, 0.9, 0.8, 0.8, 0.1, 0.1]
    ):
        masks[0, row, col] = True
        maps[0, row, col] = score
    assert ndimage.label(masks[0], structure=np.ones((3, 3)))[1] == 2
    maps[0, 3, 3] = 0.7
    assert aupro(maps, masks) == pytest.approx(11 / 12, abs=1e-12)


def test_aupro_hand_computed_interpolation_at_the_limit_and_regions_per_image():
    # Two 3x4 images, 20 normal pixels; fpr_limit 0.25. Image 0: region R1 = pixel (0,0) at 0.9.
    # Image 1: region R2 = pixels (0,0) (0,1) (1,0) at 0.9 0.2 0.1; R1 and R2 touch across the
    # image axis, but regions never span images. Normal pixels: one at 0.5, nineteen at 0.1.
    #   t=0.9: FPR 0,    PRO (1 + 1/3)/2 = 2/3
    #   t=0.5: FPR 1/20, PRO 2/3
    #   t=0.2: FPR 1/20, PRO (1 + 2/3)/2 = 5/6
    #   t=0.1: FPR 1,    PRO 1
    # At FPR 0.25: PRO = 5/6 + (1/6) * (0.2 / 0.95) = 33/38.
    # Area = 0.05 * 2/3 + 0.2 * (5/6 + 33/38) / 2 = 19/570 + 97/570 = 58/285; / 0.25 = 232/285.
    maps = np.full((2, 3, 4), 0.1)
    masks = np.zeros((2, 3, 4), dtype=bool)
    masks[0, 0, 0] = True
    maps[0, 0, 0] = 0.9
    masks[1, 0, 0] = masks[1, 0, 1] = masks[1, 1, 0] = True
    maps[1, 0, 0], maps[1, 0, 1], maps[1, 1, 0] = 0.9, 0.2, 0.1
    maps[0, 2, 3] = 0.5
    assert aupro(maps, masks, fpr_limit=0.25) == pytest.approx(232 / 285, abs=1e-12)


def test_aupro_of_a_perfect_and_an_inverted_map(rng):
    _, masks = _blob_maps(rng)
    assert aupro(masks.astype(np.float32) * 5.0 - 2.0, masks) == pytest.approx(1.0)
    assert aupro(-masks.astype(np.float32), masks) == pytest.approx(0.0)


# ---------------------------------------------------------------- degenerate input


_SCORES = np.array([0.1, 0.4, 0.35, 0.8])
_LABELS = np.array([0, 0, 1, 1])
_MAPS = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
_MASKS = (_MAPS > 5).astype(np.uint8)


@pytest.mark.parametrize("metric", [image_auroc, average_precision, f1_max])
@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (_SCORES, np.zeros(4), "no anomalous image"),
        (_SCORES, np.ones(4), "no normal image"),
        (np.array([0.1, np.nan, 0.3, 0.8]), _LABELS, "NaN"),
        (_SCORES, _LABELS[:3], "shape"),
        (_SCORES, np.array([0, 2, 1, 1]), "0/1"),
        (_SCORES.reshape(2, 2), _LABELS.reshape(2, 2), "dimension"),
    ],
)
def test_image_metrics_refuse_degenerate_input(metric, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metric(scores, labels)


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
@pytest.mark.parametrize(
    ("maps", "masks", "message"),
    [
        (_MAPS, np.zeros_like(_MASKS), "no defect pixel"),
        (_MAPS, np.ones_like(_MASKS), "no normal pixel"),
        (np.where(_MAPS == 3, np.nan, _MAPS), _MASKS, "NaN"),
        (_MAPS, _MASKS[:1], "shape"),
        (_MAPS[0], _MASKS[0], "dimension"),
    ],
)
def test_pixel_metrics_refuse_degenerate_input(metric, maps, masks, message):
    with pytest.raises(ValueError, match=message):
        metric(maps, masks)


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5])
def test_aupro_refuses_a_limit_outside_the_unit_interval(fpr_limit):
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(_MAPS, _MASKS, fpr_limit=fpr_limit)


def test_aupro_of_a_perfect_map_is_at_most_one():
    """Floating-point accumulation gave 1.0000000000000002 and more for a perfect map."""
    rng = np.random.default_rng(3)
    masks = rng.random((6, 40, 40)) > 0.8  # 1.000000000000008 before the clip
    assert aupro(masks.astype(np.float64), masks) <= 1.0
    assert aupro(masks.astype(np.float64), masks) == pytest.approx(1.0)


def test_f1_max_threshold_returns_the_highest_threshold_among_ties():
    """At t=4 (TP 1, FP 0) and t=1 (TP 2, FP 2) F1 is 2/3; the higher threshold is returned."""
    f1, threshold = f1_max_threshold([4.0, 3.0, 2.0, 1.0], [1, 0, 0, 1])
    assert f1 == pytest.approx(2 / 3)
    assert threshold == 4.0


# ---------------------------------------------------------------- test outputs: metrics, scores.csv, panels


def _split(defects: list[str], size: int = 8):
    from pathlib import Path

    from realnet.data.records import Record
    from realnet.engine.evaluate import TestSplit

    records = [Record(Path(f"/data/{i:02d}_{d}.png"), None, int(d != "good"), d, "widget", "test")
               for i, d in enumerate(defects)]
    n = len(records)
    return TestSplit(np.zeros((n, size, size, 3), np.uint8), np.zeros((n, size, size), bool), records)


def test_per_defect_image_auroc_ranks_each_defect_type_against_every_normal_image():
    from realnet.engine.evaluate import compute_metrics

    split = _split(["good", "good", "good", "crack", "crack", "hole", "hole"])
    scores = np.array([0.1, 0.2, 0.3, 0.25, 0.9, 0.05, 0.15])
    metrics = compute_metrics(np.zeros((7, 8, 8)), scores, split)
    assert set(metrics["image_auroc_per_defect"]) == {"crack", "hole"}
    assert metrics["image_auroc_per_defect"]["crack"] == pytest.approx(5 / 6)  # 0.25 beats 2 of 3 normals, 0.9 all
    assert metrics["image_auroc_per_defect"]["hole"] == pytest.approx(1 / 6)  # only 0.15 > 0.1
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None  # no defect pixels at all


def test_scores_csv_flags_only_scores_strictly_above_the_threshold():
    """The exported contract: anomalous when score > threshold."""
    import csv

    from realnet.engine.evaluate import scores_csv_bytes

    split = _split(["good", "crack", "good"])
    text = scores_csv_bytes(split, np.array([0.5, 0.75, 0.25]), threshold=0.5).decode()
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["path"], r["defect"], r["label"], r["score"], r["is_anomalous"]) for r in rows] == [
        ("/data/00_good.png", "good", "0", "0.5", "0"), ("/data/01_crack.png", "crack", "1", "0.75", "1"),
        ("/data/02_good.png", "good", "0", "0.25", "0")]


def test_scores_csv_keeps_every_score_exactly_and_flags_it_as_predict_does():
    """Regression: scores were written with 6 significant digits, so a score just above the threshold
    read back as equal to it (and distinct scores as ties); the float32 scores were compared with the
    float64 threshold in float32, so a score above it by less than a float32 step was not flagged."""
    import csv

    from realnet.engine.evaluate import scores_csv_bytes

    split = _split(["good", "crack", "crack"])
    threshold = 0.5 - 1e-9  # a quantile of held-out scores: rarely a float32 value
    scores = np.array([0.5, np.nextafter(np.float32(0.5), np.float32(1)), 0.25], np.float32)
    rows = list(csv.DictReader(scores_csv_bytes(split, scores, threshold).decode().splitlines()))
    assert [float(r["score"]) for r in rows] == [float(score) for score in scores]
    assert [int(r["is_anomalous"]) for r in rows] == [int(float(score) > threshold) for score in scores] == [1, 1, 0]


def test_scores_csv_names_a_file_whose_name_is_not_utf8_byte_for_byte():
    """Regression: an image name in another encoding (a Latin-1 'défaut.png' from a Windows archive)
    is a str with a surrogate escape, and writing scores.csv failed with a UnicodeEncodeError
    traceback after the whole split was scored."""
    import os
    from pathlib import Path

    from realnet.data.records import Record
    from realnet.engine.evaluate import scores_csv_bytes

    latin1 = Path(os.fsdecode(b"/data/d\xe9faut.png"))
    split = _split(["good", "crack"])
    split.records[1] = Record(latin1, None, 1, "crack", "widget", "test")
    lines = scores_csv_bytes(split, np.array([0.25, 0.75]), threshold=0.5).splitlines()
    assert lines[2].startswith(b"/data/d\xe9faut.png,crack,1,")
    assert lines[1].startswith(b"/data/00_good.png,good,0,")


def test_panel_cases_are_missed_anomalies_false_alarms_and_clearest_detections():
    from realnet.report.panels import pick_cases

    labels = np.array([1, 0, 1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.05, 0.3])
    cases = pick_cases(labels, scores, 2)
    assert cases["worst_anomalous"].tolist() == [2, 6]  # the lowest-scored anomalies
    assert cases["worst_normal"].tolist() == [1, 3]  # the highest-scored normal images
    assert cases["best_anomalous"].tolist() == [0, 4]


def test_heatmap_is_rgb_jet_on_the_runs_fixed_scale():
    from realnet.report.panels import heatmap_overlay, map_to_uint8

    black = np.zeros((2, 2, 3), np.uint8)
    hot = heatmap_overlay(black, np.ones((2, 2)), alpha=1.0)
    cold = heatmap_overlay(black, np.zeros((2, 2)), alpha=1.0)
    assert hot[0, 0, 0] > 100 and hot[0, 0, 2] == 0  # JET's top is red
    assert cold[0, 0, 2] > 100 and cold[0, 0, 0] == 0  # and its bottom blue
    assert map_to_uint8(np.array([0.0, 1.0, 2.0, 5.0]), display_max=2.0).tolist() == [0, 128, 255, 255]
    assert map_to_uint8(np.array([-1.0, 0.5])).tolist() == [0, 128]


def test_infinite_map_values_keep_their_place_and_colour_when_stretched_to_the_input():
    """Regression: stretching a map with +inf or -inf onto the input's size (panels, predict's maps
    and overlays) spread NaN (inf * 0) and the infinities over their neighbours, which were then
    drawn in the wrong colour (NaN as the bottom one)."""
    from realnet.report.panels import heatmap_overlay, map_at_input_size, map_to_uint8

    anomaly_map = np.full((16, 16), 0.5, np.float32)
    anomaly_map[2:4, 2:4] = np.inf
    anomaly_map[10:12, 10:12] = -np.inf
    stretched = map_at_input_size(anomaly_map, (30, 50))
    assert not np.isnan(stretched).any()
    top, bottom = stretched == np.inf, stretched == -np.inf
    # source pixels 2..3 and 10..11 cover rows 3.75..7.5 and 18.75..22.5 of 30, columns 6.25..12.5
    # and 31.25..37.5 of 50: the infinities fill that, give or take the nearest pixel, and no more
    for infinite, rows, columns in ((top, (4, 7), (7, 12)), (bottom, (19, 22), (32, 37))):
        near = np.zeros_like(infinite)
        near[rows[0] - 1:rows[1] + 1, columns[0] - 1:columns[1] + 1] = True
        assert infinite[rows[0]:rows[1], columns[0]:columns[1]].all() and not (infinite & ~near).any()
    assert (stretched[~(top | bottom)] == 0.5).all()  # interpolated within the finite range alone
    assert map_to_uint8(np.array([np.inf, -np.inf, 0.5])).tolist() == [255, 0, 128]
    black = np.zeros((30, 50, 3), np.uint8)
    colours = heatmap_overlay(black, stretched, alpha=1.0)
    assert (colours[top] == heatmap_overlay(black[:1, :1], np.ones((1, 1)), alpha=1.0)[0, 0]).all()
    assert (colours[bottom] == heatmap_overlay(black[:1, :1], np.zeros((1, 1)), alpha=1.0)[0, 0]).all()
