"""Exact AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit.

Each 8-connected component of the ground truth is a region. At a threshold t (anomalous if
score >= t), PRO(t) is the overlap |{score >= t} & r| / |r| averaged over all regions r of the
test set, and FPR(t) is the fraction of all normal pixels of the test set with score >= t. The
curve is integrated by trapezoids from FPR 0 to the limit, interpolated linearly at the limit,
and divided by the limit. Every distinct score is a threshold: nothing is binned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from realnet.metrics.ranking import validate_scores_labels

# 8-connectivity inside each image, nothing across the image axis of the (N, H, W) stack.
_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_IMAGE[1] = True


def _pro_curve(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) points from (0, 0), one per distinct score, until FPR passes the limit.

    Sorting all pixels by score descending, a normal pixel adds 1/N_normal to FPR and a pixel of
    region r adds 1/(|r| * n_regions) to PRO; cumulative sums read at the last pixel of each
    group of tied scores give the curve. Only pixels scoring at least the normal score at which
    FPR first exceeds the limit can shape the integral, so only those are sorted.
    """
    region_ids, n_regions = ndimage.label(masks, structure=_EIGHT_CONNECTED_PER_IMAGE)
    region_ids = region_ids.ravel()
    region_sizes = np.bincount(region_ids)
    n_normal = int(region_sizes[0])
    flat_scores = maps.ravel()

    # The k-th highest normal score, with k one past the limit so that the curve crosses it.
    k = min(n_normal, int(np.floor(fpr_limit * n_normal)) + 1)
    normal_scores = flat_scores[region_ids == 0]
    cutoff = np.partition(normal_scores, n_normal - k)[n_normal - k]
    del normal_scores
    kept = np.flatnonzero(flat_scores >= cutoff)

    kept_scores = flat_scores[kept]
    order = np.argsort(kept_scores)[::-1]
    kept_scores = kept_scores[order]
    kept_regions = region_ids[kept[order]]
    del kept, order

    group_last = np.append(np.flatnonzero(kept_scores[1:] != kept_scores[:-1]), kept_scores.size - 1)
    pixel_overlap = 1.0 / region_sizes.astype(np.float64)
    pixel_overlap[0] = 0.0
    false_positives = np.cumsum(kept_regions == 0, dtype=np.int64)[group_last]
    overlap_sum = np.cumsum(pixel_overlap[kept_regions])[group_last]
    fpr = np.concatenate(([0.0], false_positives / n_normal))
    pro = np.concatenate(([0.0], overlap_sum / n_regions))
    return fpr, pro


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area of the curve on [0, limit], interpolated linearly at the limit, / limit."""
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        x = np.append(x, fpr_limit)
        y = np.append(y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    area = np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0
    return float(min(area / fpr_limit, 1.0))  # a perfect map sums to 1 + a few ulps


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` for (N, H, W) maps and masks.

    Exact: every connected defect region weighs the same, FPR runs over all normal pixels, and
    the result is in [0, 1]. Raises ``ValueError`` on degenerate input or a limit outside (0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    maps, masks = validate_scores_labels(maps, masks, metric="aupro", level="pixel")
    fpr, pro = _pro_curve(maps, masks, fpr_limit)
    return _area_to_limit(fpr, pro, fpr_limit)
