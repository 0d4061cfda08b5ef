"""`realnet test` on the shared tiny run with the detector's scores replaced by known ones, so that
metrics.json, scores.csv and the panels can be checked against numbers worked out by hand (the
other tests of `test` only range-check the metrics of a 6-step detector)."""

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import realnet.engine.fit as fit_module
from realnet.cli.main import main
from realnet.engine.evaluate import load_test_split


def _run_test_with_known_scores(tiny_run, tmp_path, monkeypatch):
    """Normal images get threshold + (-0.3, -0.2, -0.1, +0.05) (one false alarm), anomalous ones
    threshold + (+0.3, +0.2, +0.1, -0.05) (one miss); the maps are noise unrelated to the scores."""
    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    threshold = meta["threshold"]
    split = load_test_split(data, "widget", meta["data"]["dataset"], meta["config"]["train"]["image_size"],
                            progress=False)
    labels = split.labels
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    offsets = {0: iter([-0.3, -0.2, -0.1, 0.05]), 1: iter([0.3, 0.2, 0.1, -0.05])}
    scores = np.array([threshold + next(offsets[int(label)]) for label in labels], np.float32)
    maps = np.random.default_rng(0).random((len(labels), *split.images.shape[1:3])).astype(np.float32)

    def known_scores(model, images, device, batch_size, progress=False, desc=""):
        assert len(images) == len(labels)
        return maps, scores

    monkeypatch.setattr(fit_module, "score_images", known_scores)
    assert main(["test", "--run", str(copy), "--data", str(data), "--category", "widget"]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    with open(copy / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    return copy, split, scores, metrics, rows


def test_test_metrics_come_from_the_image_scores_and_the_runs_threshold(tiny_run, tmp_path, monkeypatch):
    _, _, scores, metrics, _ = _run_test_with_known_scores(tiny_run, tmp_path, monkeypatch)
    # 6 of 8 right at the threshold: the false alarm and the miss are wrong
    assert metrics["test_accuracy_at_threshold"] == pytest.approx(6 / 8)
    # F1 = 2TP / (2TP + FP + FN): flagging score >= threshold - 0.05 gives TP 4, FP 1 -> 8/9,
    # the best of all cuts (>= threshold + 0.1: TP 3, FP 0 -> 6/7)
    assert metrics["image_f1_max"] == pytest.approx(8 / 9)
    # 15 of the 16 (anomalous, normal) pairs are ranked right: only the miss is below the false alarm
    assert metrics["image_auroc"] == pytest.approx(15 / 16)
    assert metrics["image_auroc_per_defect"] == {"scratch": pytest.approx(15 / 16)}
    assert (metrics["n_images"], metrics["n_anomalous"]) == (8, 4)


def test_scores_csv_rows_name_the_image_each_score_and_label_belongs_to(tiny_run, tmp_path, monkeypatch):
    _, split, scores, metrics, rows = _run_test_with_known_scores(tiny_run, tmp_path, monkeypatch)
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows) == len(split.records)
    for record, score in zip(split.records, scores):
        row = by_path[str(record.image)]
        assert (row["defect"], int(row["label"]), float(row["score"])) == (record.defect, record.label, float(score))
        assert int(row["is_anomalous"]) == int(float(score) > metrics["threshold"])
    assert roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows]) == pytest.approx(15 / 16)


def test_panels_show_the_missed_anomaly_and_the_false_alarm_first(tiny_run, tmp_path, monkeypatch):
    copy, split, scores, _, _ = _run_test_with_known_scores(tiny_run, tmp_path, monkeypatch)
    labels = split.labels
    missed = min(np.flatnonzero(labels == 1), key=lambda i: scores[i])  # the anomaly at threshold - 0.05
    alarm = max(np.flatnonzero(labels == 0), key=lambda i: scores[i])  # the normal image at threshold + 0.05
    clearest = max(np.flatnonzero(labels == 1), key=lambda i: scores[i])
    names = {p.name for p in (copy / "panels").glob("*.png")}
    for kind, index in (("worst_anomalous", missed), ("worst_normal", alarm), ("best_anomalous", clearest)):
        record = split.records[index]
        assert f"{kind}_00_{record.defect}_{record.image.stem}_{scores[index]:.3f}.png" in names
