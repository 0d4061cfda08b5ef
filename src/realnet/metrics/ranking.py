"""Exact ranking metrics: AUROC (image and pixel), average precision, F1-max.

Scores are used as given: never normalised, clamped or passed through a sigmoid, and an AUROC
below 0.5 is returned as is. Ties are counted exactly (no binning). Degenerate input is a
programming error and raises ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LEVEL_NOUNS = {"image": ("anomalous image", "normal image"), "pixel": ("defect pixel", "normal pixel")}


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array or a torch tensor (moved to the CPU; bfloat16 widened exactly)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def validate_scores_labels(
    scores: Any, labels: Any, *, metric: str, level: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert the inputs of a binary metric; return (scores, labels as bool).

    ``level`` is ``"image"`` (1-D scores and labels) or ``"pixel"`` ((N, H, W) maps and masks).
    Raises ``ValueError`` on a shape mismatch, NaN or non-numeric scores, labels other than 0/1,
    or a missing class.
    """
    positive, negative = _LEVEL_NOUNS[level]
    score_name, label_name, ndim = ("scores", "labels", 1) if level == "image" else ("maps", "masks", 3)
    scores, labels = _to_numpy(scores), _to_numpy(labels)
    if scores.ndim != ndim:
        raise ValueError(f"{metric}: {score_name} must have {ndim} dimension(s), got shape {scores.shape}")
    if scores.shape != labels.shape:
        raise ValueError(f"{metric}: {score_name} shape {scores.shape} != {label_name} shape {labels.shape}")
    if scores.dtype == np.bool_ or not np.issubdtype(scores.dtype, np.number) or np.iscomplexobj(scores):
        raise ValueError(f"{metric}: {score_name} must be real numbers, got dtype {scores.dtype}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError(f"{metric}: {score_name} contain NaN")
    if labels.dtype != np.bool_:
        if not np.issubdtype(labels.dtype, np.number) or ((labels != 0) & (labels != 1)).any():
            raise ValueError(f"{metric}: {label_name} must be bool or 0/1")
        labels = labels.astype(bool)
    n_positive = int(np.count_nonzero(labels))
    if n_positive == 0:
        raise ValueError(f"{metric}: {label_name} contain no {positive}")
    if n_positive == labels.size:
        raise ValueError(f"{metric}: {label_name} contain no {negative}")
    return scores, labels


def _mann_whitney_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic U / (P * N), a tie between classes counting 1/2.

    For each positive, ``searchsorted`` left/right give the negatives strictly below and the
    negatives at or below its score, so their sum is 2 * (below + ties / 2): 2U is an exact
    integer, and only the final division rounds. Memory: one sorted copy of each class.
    """
    negatives = np.sort(scores[~labels], axis=None)
    positives = np.sort(scores[labels], axis=None)
    twice_u = int(np.searchsorted(negatives, positives, side="left").sum(dtype=np.int64))
    twice_u += int(np.searchsorted(negatives, positives, side="right").sum(dtype=np.int64))
    return twice_u / (2 * positives.size * negatives.size)


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC of 1-D anomaly scores against labels (1 = anomalous); exact, ties = 1/2."""
    scores, labels = validate_scores_labels(scores, labels, metric="image_auroc", level="image")
    return _mann_whitney_auroc(scores, labels)


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC of (N, H, W) anomaly maps against (N, H, W) masks over all pixels."""
    maps, masks = validate_scores_labels(maps, masks, metric="pixel_auroc", level="pixel")
    return _mann_whitney_auroc(maps, masks)


def _counts_at_thresholds(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, true positives, false positives) of the rule ``score >= t``.

    One entry per distinct score, thresholds descending; counts are exact integers.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    group_last = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), scores.size - 1)
    true_positives = np.cumsum(labels[order], dtype=np.int64)[group_last]
    false_positives = group_last + 1 - true_positives
    return sorted_scores[group_last], true_positives, false_positives


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision sum_k (R_k - R_{k-1}) P_k over the distinct thresholds (as scikit-learn)."""
    scores, labels = validate_scores_labels(scores, labels, metric="average_precision", level="image")
    _, true_positives, false_positives = _counts_at_thresholds(scores, labels)
    precision = true_positives / (true_positives + false_positives)
    recall_steps = np.diff(true_positives, prepend=0) / true_positives[-1]
    return float(np.sum(recall_steps * precision))


def f1_max_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold reaching it (predict anomalous if score >= it).

    F1 = 2 TP / (2 TP + FP + FN); among equal F1 values the highest threshold is returned.
    """
    scores, labels = validate_scores_labels(scores, labels, metric="f1_max", level="image")
    thresholds, true_positives, false_positives = _counts_at_thresholds(scores, labels)
    n_positive = true_positives[-1]
    f1 = 2 * true_positives / (true_positives + false_positives + n_positive)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def f1_max(scores: Any, labels: Any) -> float:
    """Best F1 over all thresholds of 1-D scores (see ``f1_max_threshold``)."""
    return f1_max_threshold(scores, labels)[0]
