"""`realnet test`: score the test split with a finished run and write metrics, scores, panels."""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realnet.config import RealNetConfig
from realnet.data.layouts import load_dataset
from realnet.data.records import Record
from realnet.engine import checkpoint
from realnet.engine.build import build_backbone, build_model
from realnet.engine.distributed import launched_rank
from realnet.engine.runtime import load_samples, resolve_device, training_image_digests
from realnet.errors import BadFileError, RealnetError
from realnet.files import contents_sha256, remove_stale_staging, staging_dir
from realnet.model.realnet import RealNet


@dataclass
class TestSplit:
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) bool
    records: list[Record]
    skipped: list[str] = field(default_factory=list)  # images left out (--skip-bad): theirs or their mask unreadable
    normal_with_marked_mask: int = 0  # normal images whose mask marked pixels, cleared (a normal image has no defect)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def anomalous_without_mask(self) -> int:
        """Anomalous images with no mask: the pixel metrics count all their pixels as normal."""
        return sum(r.label == 1 and r.mask is None for r in self.records)

    @property
    def anomalous_with_empty_mask(self) -> int:
        """Anomalous images whose mask marks no pixel at the test size (empty files, or defects
        thinner than a pixel after resizing): the pixel metrics see no defect in them either."""
        return int(sum(r.label == 1 and r.mask is not None and not m.any() for r, m in zip(self.records, self.masks)))


def load_test_split(data_root, category: str, dataset: str, size: int, folder_options: dict | None = None,
                    *, skip_bad: bool = False, progress: bool = True) -> TestSplit:
    records = load_dataset(data_root, category, dataset, test_only=True, **(folder_options or {}))
    if not records:
        raise RealnetError(f"{data_root}: category '{category}' has no test images (for the MVTec layout: "
                           f"{category}/test/good and {category}/test/<defect type> folders)")
    images, masks, kept, skipped = load_samples(records, size, skip_bad=skip_bad, desc="loading test images",
                                                progress=progress)
    kept_images = {record.image for record in kept}
    left_out = [record.image for record in records if record.image not in kept_images]  # in `skipped`'s order
    for image, error in zip(left_out, skipped) if launched_rank() == 0 else ():  # under torchrun every rank reads
        sys.stderr.write(f"realnet: skipped {error}\n" if error.path == image else
                         f"realnet: skipped {BadFileError(image, f'its mask {error}')}\n")
    normal = np.array([record.label != 1 for record in kept], dtype=bool)
    marked = normal & masks.any(axis=(1, 2))
    masks[normal] = False
    split = TestSplit(images, masks, kept, [str(image) for image in left_out], int(marked.sum()))
    if not kept:
        raise RealnetError(f"{data_root}: none of the {len(records)} test images of category '{category}' "
                           "could be read (each is named above)")
    if len(set(split.labels.tolist())) < 2:
        present = "normal" if split.labels[0] == 0 else "anomalous"
        lost = f", after {len(skipped)} unreadable ones were skipped" if skipped else ""
        raise RealnetError(f"{data_root}: category '{category}' has only {present} test images{lost}; the metrics "
                           "need normal and anomalous ones (a folder dataset: --abnormal-dir and --normal-test-dir "
                           "or --test-ratio)")
    return split


def load_run(run_dir: Path, device: torch.device) -> tuple[RealNet, dict[str, Any]]:
    """Re-create a finished run's detector; the backbone must hash to the recorded sha256."""
    meta = checkpoint.read_meta(run_dir)
    config = RealNetConfig.from_dict(meta["config"], saved=True)
    recorded = meta["backbone"]
    backbone = build_backbone(config)
    if backbone.identity["sha256"] != recorded["sha256"]:
        raise RealnetError(
            f"{run_dir}: backbone weights differ from the ones this run was trained with "
            f"(expected sha256 {recorded['sha256'][:12]}, got {backbone.identity['sha256'][:12]})"
        )
    model = build_model(config, backbone)
    checkpoint.load_detector_state(run_dir, model)
    return model.to(device).eval(), meta


def compute_metrics(maps: np.ndarray, scores: np.ndarray, split: TestSplit, *, detailed: bool = True) -> dict[str, Any]:
    from realnet.metrics import aupro, f1_max, image_auroc, pixel_auroc

    not_a_number = np.isnan(scores) | np.isnan(maps).any(axis=(1, 2))
    if not_a_number.any():
        # the metrics' own ValueError would be a traceback naming neither the run nor an image
        raise BadFileError(split.records[int(np.argmax(not_a_number))].image,
                           f"the detector's anomaly map for it contains NaN ({int(not_a_number.sum())} of "
                           f"{len(scores)} test images have NaN in theirs): its weights are broken, e.g. by a "
                           "diverged fit")
    labels = split.labels
    metrics: dict[str, Any] = {"image_auroc": image_auroc(scores, labels)}
    has_masks = split.masks.any()
    metrics["pixel_auroc"] = pixel_auroc(maps, split.masks) if has_masks else None
    if detailed:
        metrics["aupro"] = aupro(maps, split.masks) if has_masks else None
        metrics["image_f1_max"] = f1_max(scores, labels)
        defects = np.array([r.defect for r in split.records])
        normal = labels == 0
        metrics["image_auroc_per_defect"] = {
            defect: image_auroc(scores[normal | (defects == defect)], labels[normal | (defects == defect)])
            for defect in sorted(set(defects[~normal]))
        }
    return metrics


def flag_anomalous(scores: np.ndarray, threshold: float) -> np.ndarray:
    """score > threshold in float64, as `realnet predict` decides: numpy would compare float32
    scores with the float64 threshold rounded to float32."""
    return np.asarray(scores, dtype=np.float64) > threshold


PANELS_DIR = "panels"
SCORES_CSV = "scores.csv"
METRICS_JSON = "metrics.json"
_PANELS_STAGING = f".{PANELS_DIR}."


def scores_csv_bytes(split: TestSplit, scores: np.ndarray, threshold: float) -> bytes:
    """scores.csv's contents, UTF-8; a file name that is not UTF-8 is written as the bytes that name
    the file (surrogateescape)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "defect", "label", "score", "is_anomalous"])
    for record, score, anomalous in zip(split.records, scores, flag_anomalous(scores, threshold)):
        # repr: the shortest text that reads back as the same float, so the file re-ranks and
        # re-thresholds exactly as metrics.json did
        writer.writerow([str(record.image), record.defect, record.label, repr(float(score)), int(anomalous)])
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def remove_killed_test_outputs(run_dir: Path) -> None:
    """Delete the staging folder and temporary files a `realnet test` killed mid-write left behind."""
    remove_stale_staging(run_dir, _PANELS_STAGING)
    for stale in run_dir.glob(".*.tmp"):
        if checkpoint.is_temporary_of(stale.name, (SCORES_CSV, METRICS_JSON)):
            stale.unlink(missing_ok=True)


def write_test_outputs(run_dir: Path, metrics: dict, split: TestSplit, maps: np.ndarray, scores: np.ndarray,
                       threshold: float, write_panels) -> None:
    """panels/, scores.csv and metrics.json replaced together: all three are written in full beside
    their places first and moved in only then, so a failure while writing (a full disk) leaves the
    last test's outputs as they were instead of mixing two tests'. metrics["panels"] names the
    panels relative to the run folder, so they are found from anywhere and after the run moves."""
    staging: Path | None = None
    pending: list[tuple[Path, Path]] = []
    try:
        staging = staging_dir(run_dir, _PANELS_STAGING)
        metrics["panels"] = [f"{PANELS_DIR}/{path.name}" for path in write_panels(staging)]
        csv_bytes = scores_csv_bytes(split, scores, threshold)
        pending.append((checkpoint.write_beside(run_dir / SCORES_CSV, lambda tmp: tmp.write_bytes(csv_bytes)),
                        run_dir / SCORES_CSV))
        json_text = checkpoint.json_text(metrics)
        pending.append((checkpoint.write_beside(run_dir / METRICS_JSON, lambda tmp: tmp.write_text(json_text)),
                        run_dir / METRICS_JSON))
        if (run_dir / PANELS_DIR).exists():
            shutil.rmtree(run_dir / PANELS_DIR)
        staging.rename(run_dir / PANELS_DIR)
        for tmp, target in pending:
            os.replace(tmp, target)
    except OSError as error:
        raise RealnetError(f"{run_dir}: cannot write the test's outputs there ({error.strerror or error})") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for tmp, _target in pending:
            tmp.unlink(missing_ok=True)


_NORMAL_SPLIT_OPTIONS = frozenset({"normal_dir", "test_ratio", "seed"})  # normal tests as a share of the training folder


def merged_folder_options(recorded: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The folder options `test` uses: those given, and the run's recorded ones that still fit them.
    A given --abnormal-dir drops the recorded --mask-dir (its masks are another folder's, matched by
    stem); a given --normal-test-dir drops the recorded split of the training folder, which then adds
    no test image (and need not be there any more); a given split of it drops the recorded
    --normal-test-dir."""
    dropped = set()
    if "abnormal_dir" in given:
        dropped.add("mask_dir")
    if "normal_test_dir" in given:
        dropped.update(_NORMAL_SPLIT_OPTIONS)
    elif given.keys() & _NORMAL_SPLIT_OPTIONS:
        dropped.add("normal_test_dir")
    return {**{name: value for name, value in recorded.items() if name not in dropped}, **given}


def refuse_training_images_as_tests(meta: dict[str, Any], tested: dict[str, Any], own: dict[str, Any]) -> None:
    """The test split may hold images the run was fitted or calibrated on (another split seed or
    ratio of the same folder, the training folder given as a test folder, files renamed or added
    since fit, which reshuffle a folder dataset's split): its scores on them say nothing about new
    parts. Found by content where the run recorded its training images' sha256 (model.json), else
    by path while the run's data is still there (runs of earlier versions, not their own split).
    A copy of a training image in the run's own dataset is the dataset's, so that is a warning: in a
    fixed layout's own split (MVTec, VisA, BTAD), and in the run's category and layout wherever their
    root is now, when its training split holds what the run was fitted on (a moved dataset;
    duplicate files a folder dataset's split put on both sides)."""
    own_split = tested == own
    tests = [record.image for record in load_dataset(tested["root"], tested["category"], tested["dataset"],
                                                     test_only=True, **tested["folder_options"])]
    contents = meta["fit"].get("training_image_sha256")
    if contents is not None:
        known = set(contents)
        seen = sorted(path for path, digest in zip(tests, contents_sha256(tests)) if digest in known)
    elif own_split:
        return
    else:
        recorded = meta["data"]
        try:
            trained = {record.image.resolve() for record in load_dataset(
                recorded["root"], recorded["category"], recorded["dataset"], **(recorded.get("folder_options") or {}))
                if record.split == "train"}
        except (RealnetError, OSError):
            return
        seen = sorted(path for path in tests if path.resolve() in trained)
    if not seen:
        return
    if (own_split and tested["dataset"] != "folder") or _is_the_runs_dataset(tested, own, contents):
        sys.stderr.write(f"realnet: warning: {len(seen)} of the dataset's test images are copies of its training "
                         f"images (first: {seen[0]}); their scores say little about new parts\n")
        return
    raise RealnetError(f"{len(seen)} of the test images are normal training images of this run (first: {seen[0]}"
                       f"{', the folder changed since fit' if own_split else ''}): its scores on them say nothing "
                       "about new parts; test on images it was not fitted on")


def _is_the_runs_dataset(tested: dict[str, Any], own: dict[str, Any], contents: list[str] | None) -> bool:
    """Whether the tested data is the run's own category and layout, wherever its root is now, with a
    training split that is, file for file, the images the run was fitted and calibrated on
    (`contents`: their sha256, as fit records them)."""
    if contents is None or any(tested[key] != own[key] for key in ("category", "dataset", "folder_options")):
        return False
    try:
        records = load_dataset(tested["root"], tested["category"], tested["dataset"], **tested["folder_options"])
    except (RealnetError, OSError):
        return False
    return training_image_digests(records) == sorted(contents)


def evaluate(run_dir: Path, *, data_root=None, category: str | None = None, dataset: str | None = None,
             folder_options: dict | None = None, device: str = "auto", batch_size: int | None = None, panels: int = 6,
             skip_bad: bool = False, progress: bool = True) -> dict[str, Any]:
    from realnet.engine.fit import score_images
    from realnet.report.panels import map_display_max, write_panels

    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    model, meta = load_run(run_dir, torch_device)
    if (run_dir / PANELS_DIR).is_symlink():  # found before scoring, not when the outputs replace it
        raise RealnetError(f"{run_dir / PANELS_DIR} is a symbolic link; test replaces the panels folder whole, so "
                           "remove the link (and copy the panels where they are shared after each test)")
    remove_killed_test_outputs(run_dir)
    data = dict(meta["data"])
    size = meta["config"]["train"]["image_size"]
    if dataset == "folder" and data["dataset"] != "folder":  # no folder root to inherit: look where fit would
        data.update(root=".", category="custom")
    if data_root is None and not Path(data["root"]).is_dir():
        raise RealnetError(f"the run's data root {data['root']} is not there any more; pass --data (and --category) "
                           "to test where the data is now")
    tested_dataset = dataset or data["dataset"]
    if folder_options and tested_dataset != "folder":
        raise RealnetError(f"the folder dataset's options apply to --dataset folder only, and the run's data is "
                           f"{tested_dataset}: add --dataset folder to test on folders")
    recorded = (data.get("folder_options") or {}) if tested_dataset == data["dataset"] else {}  # options of that layout
    tested = {"root": str(Path(data_root or data["root"]).resolve()), "category": category or data["category"],
              "dataset": tested_dataset, "folder_options": merged_folder_options(recorded, folder_options or {})}
    own = {"root": str(Path(data["root"]).resolve()), "category": data["category"], "dataset": data["dataset"],
           "folder_options": data.get("folder_options") or {}}
    refuse_training_images_as_tests(meta, tested, own)
    split = load_test_split(tested["root"], tested["category"], tested["dataset"], size, tested["folder_options"],
                            skip_bad=skip_bad, progress=progress)
    started = time.time()
    maps, scores = score_images(model, split.images, torch_device, batch_size or meta["config"]["train"]["batch_size"],
                                progress=progress, desc="test")
    seconds = time.time() - started
    metrics = {
        **compute_metrics(maps, scores, split),
        "n_images": len(split.records),
        "n_anomalous": int(split.labels.sum()),
        "protocol": meta["protocol"],
        "preset": meta["preset"],
        "backbone": meta["backbone"]["name"],
        "backbone_weights_sha256": meta["backbone"]["sha256"],
        "threshold": meta["threshold"],
        "test_accuracy_at_threshold": float(np.mean(flag_anomalous(scores, meta["threshold"]) == (split.labels == 1))),
        "inference_images_per_s": round(len(split.records) / max(seconds, 1e-9), 2),
        "data": tested,  # absolute, with the folder dataset's folders: what was tested, from anywhere
    }
    if meta["protocol"] == "select-on-test":
        metrics["warning"] = "model selected on the test set (paper protocol); not an unbiased estimate"
    if split.skipped:
        metrics["skipped_images"] = split.skipped  # the metrics are over fewer images than the split has
    if split.normal_with_marked_mask:
        metrics["normal_with_marked_mask"] = split.normal_with_marked_mask
        sys.stderr.write(f"realnet: warning: {split.normal_with_marked_mask} normal test image(s) have a mask that "
                         "marks pixels; a normal image has no defect, so the pixel metrics count all their pixels as "
                         "normal (`realnet data check` lists them)\n")
    # with no defect pixel at all the pixel metrics are undefined (null), not computed over normal pixels
    consequence = ("the pixel metrics count all their pixels as normal" if metrics["pixel_auroc"] is not None
                   else "no test pixel is marked, so the pixel metrics are null")
    if split.anomalous_without_mask:
        metrics["anomalous_without_mask"] = split.anomalous_without_mask
        sys.stderr.write(f"realnet: warning: {split.anomalous_without_mask} anomalous test image(s) have no mask; "
                         f"{consequence} (`realnet data check` lists them)\n")
    if split.anomalous_with_empty_mask:
        metrics["anomalous_with_empty_mask"] = split.anomalous_with_empty_mask
        sys.stderr.write(f"realnet: warning: {split.anomalous_with_empty_mask} anomalous test image(s) have a mask that "
                         f"marks no pixel at {size} px; {consequence}\n")
    write_test_outputs(run_dir, metrics, split, maps, scores, meta["threshold"], lambda folder: write_panels(
        folder, split, maps, scores, count=panels, display_max=map_display_max(meta), threshold=meta["threshold"]))
    return metrics
