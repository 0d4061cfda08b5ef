"""`check_dataset`: decode every image and mask of a dataset once and report what is wrong.

Problems (make `realnet data check` exit 1): anomalous images without a mask, masks without an
image, masks whose size differs from their image's, one mask file shared by several images,
normal images whose mask marks defect pixels, an image in both the training and the test split
(the same file, or a test image whose bytes equal a training image's: a copy), and a category with fewer than `MIN_TRAINING_IMAGES` readable training images (fit's minimum;
not for records that are a test split alone, ``needs_training=False``).
Files that cannot be decoded stop the check with a `BadFileError` naming the first one (in record
order), or with ``skip_bad=True`` are skipped and listed. Anomalous images whose mask marks no
pixel are listed as a note only: some real datasets (Magnetic Tile) have them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from realnet.data.io import read_image, read_mask
from realnet.data.layouts import sort_records
from realnet.data.records import ANOMALOUS, Record
from realnet.errors import BadFileError
from realnet.files import file_sha256

_SHOWN_PER_LIST = 20
MIN_TRAINING_IMAGES = 2  # fit holds some out and needs normal images on both sides


@dataclass(frozen=True)
class SizeMismatch:
    image: Path
    mask: Path
    image_size: tuple[int, int]  # (width, height)
    mask_size: tuple[int, int]


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class DatasetReport:
    """What `check_dataset` found. Counts cover every record whose files decoded."""

    categories: list[str]
    counts: dict[str, dict[str, int]]  # split -> defect -> images
    mask_counts: dict[str, dict[str, int]]  # split -> defect -> images that have a mask file
    anomalous_counts: dict[str, int]  # defect type -> anomalous images
    anomalous_with_mask: int
    missing_masks: list[Path] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)
    size_mismatches: list[SizeMismatch] = field(default_factory=list)
    empty_masks: list[Path] = field(default_factory=list)
    shared_masks: dict[Path, list[Path]] = field(default_factory=dict)  # mask -> the images naming it
    normal_with_defect_mask: list[Path] = field(default_factory=list)
    in_both_splits: list[Path] = field(default_factory=list)
    copies_across_splits: list[tuple[Path, Path]] = field(default_factory=list)  # (test image, training image)
    too_few_training_images: dict[str, int] = field(default_factory=dict)  # category -> count
    skipped: list[SkippedFile] = field(default_factory=list)
    kept: list[Record] = field(default_factory=list, repr=False)  # decoded, sizes agree

    @property
    def n_images(self) -> int:
        return sum(sum(by_defect.values()) for by_defect in self.counts.values())

    @property
    def problems(self) -> list[str]:
        """One line per problem; skipped files are listed in `skipped`, not here."""
        lines = [f"anomalous image without mask: {path}" for path in self.missing_masks]
        lines += [f"mask without image: {path}" for path in self.orphan_masks]
        lines += [
            f"size mismatch: mask {m.mask} is {_wxh(m.mask_size)}, "
            f"image {m.image} is {_wxh(m.image_size)}"
            for m in self.size_mismatches
        ]
        lines += [f"mask {mask} is shared by {len(images)} images: {', '.join(map(str, images))}"
                  for mask, images in self.shared_masks.items()]
        lines += [f"normal image with defect pixels in its mask: {path}" for path in self.normal_with_defect_mask]
        lines += [f"image in both the train and the test split: {path}" for path in self.in_both_splits]
        lines += [f"test image {test} is a copy of training image {train}" for test, train in self.copies_across_splits]
        lines += [f"category {category}: {count} readable training image(s); fit needs at least {MIN_TRAINING_IMAGES}"
                  for category, count in self.too_few_training_images.items()]
        return lines

    def to_dict(self) -> dict:
        """JSON-ready summary (paths as strings)."""
        return {
            "categories": self.categories,
            "images": self.n_images,
            "counts": self.counts,
            "mask_counts": self.mask_counts,
            "anomalous_images": sum(self.anomalous_counts.values()),
            "anomalous_with_mask": self.anomalous_with_mask,
            "defect_types": self.anomalous_counts,
            "missing_masks": [str(path) for path in self.missing_masks],
            "orphan_masks": [str(path) for path in self.orphan_masks],
            "size_mismatches": [
                {
                    "image": str(m.image),
                    "mask": str(m.mask),
                    "image_size": list(m.image_size),
                    "mask_size": list(m.mask_size),
                }
                for m in self.size_mismatches
            ],
            "empty_masks": [str(path) for path in self.empty_masks],
            "shared_masks": {str(mask): [str(p) for p in images] for mask, images in self.shared_masks.items()},
            "normal_with_defect_mask": [str(path) for path in self.normal_with_defect_mask],
            "in_both_splits": [str(path) for path in self.in_both_splits],
            "copies_across_splits": [{"test": str(test), "train": str(train)} for test, train in self.copies_across_splits],
            "too_few_training_images": self.too_few_training_images,
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
            "problems": self.problems,
        }

    def format(self) -> str:
        """Human-readable summary, ending with the problems (or "no problems")."""
        anomalous = self.anomalous_counts
        lines = [f"{', '.join(self.categories) or '(no records)'}: {self.n_images} images"]
        rows = [("split", "defect", "images", "masks")]
        for split, by_defect in self.counts.items():
            for defect, count in by_defect.items():
                masks = self.mask_counts[split][defect]
                rows.append((split, defect, str(count), str(masks)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            left = f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}"
            lines.append(f"  {left}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
        lines.append(
            f"anomalous test images: {sum(anomalous.values())} over {len(anomalous)} defect "
            f"type(s), {self.anomalous_with_mask} with a mask"
        )
        if self.empty_masks:
            lines.append(f"note: {len(self.empty_masks)} anomalous image(s) have an empty mask:")
            lines += _indented(str(path) for path in self.empty_masks)
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += _indented(f"{s.path}: {s.reason}" for s in self.skipped)
        problems = self.problems
        if problems:
            lines.append(f"{len(problems)} problem(s):")
            lines += _indented(problems)
        elif not self.skipped:
            lines.append("no problems")
        return "\n".join(lines)


def check_dataset(
    records: Sequence[Record],
    *,
    skip_bad: bool = False,
    orphan_masks: Iterable[Path] = (),
    workers: int | None = None,
    needs_training: bool = True,
) -> DatasetReport:
    """Decode every image and mask of `records` (in a thread pool) and report problems.

    Without `skip_bad` the first undecodable file, in record order, raises its BadFileError.
    `needs_training=False`: the records are a test split alone (a folder dataset without
    normal_dir), so having no training images is no problem.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    counted: list[Record] = []
    kept: list[Record] = []
    missing_masks: list[Path] = []
    size_mismatches: list[SizeMismatch] = []
    empty_masks: list[Path] = []
    normal_with_defect_mask: list[Path] = []
    skipped: list[SkippedFile] = []
    digests: dict[Path, str] = {}
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        for record, outcome in zip(records, executor.map(_inspect, records)):
            if isinstance(outcome, BadFileError):
                if not skip_bad:
                    raise outcome
                skipped.append(SkippedFile(outcome.path, outcome.reason))
                continue
            counted.append(record)
            image_size, mask_size, mask_empty, digests[record.image] = outcome
            if record.mask is None:
                if record.label == ANOMALOUS:
                    missing_masks.append(record.image)
            elif mask_size != image_size:
                mismatch = SizeMismatch(record.image, record.mask, image_size, mask_size)
                size_mismatches.append(mismatch)
                continue
            elif mask_empty and record.label == ANOMALOUS:
                empty_masks.append(record.image)
            elif not mask_empty and record.label != ANOMALOUS:
                normal_with_defect_mask.append(record.image)
            kept.append(record)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    counts, mask_counts = _tally(counted)
    anomalous = [r for r in counted if r.label == ANOMALOUS]
    categories = sorted({r.category for r in records})
    by_mask: dict[Path, list[Path]] = {}
    splits_of: dict[Path, set[str]] = {}
    for record in records:
        splits_of.setdefault(Path(os.path.realpath(record.image)), set()).add(record.split)
        if record.mask is not None:
            by_mask.setdefault(Path(os.path.realpath(record.mask)), []).append(record.image)
    training = Counter(r.category for r in counted if r.split == "train")
    in_both_splits = sorted(path for path, splits in splits_of.items() if {"train", "test"} <= splits)
    trained = {digests[r.image]: r.image for r in counted if r.split == "train"}
    same_file = set(in_both_splits)
    copies = [(r.image, trained[digests[r.image]]) for r in counted if r.split == "test"
              and digests[r.image] in trained and Path(os.path.realpath(r.image)) not in same_file]
    return DatasetReport(
        categories=categories,
        counts=counts,
        mask_counts=mask_counts,
        anomalous_counts=dict(sorted(Counter(r.defect for r in anomalous).items())),
        anomalous_with_mask=sum(r.mask is not None for r in anomalous),
        missing_masks=missing_masks,
        orphan_masks=sorted(Path(p) for p in orphan_masks),
        size_mismatches=size_mismatches,
        empty_masks=empty_masks,
        shared_masks={mask: images for mask, images in by_mask.items() if len(images) > 1},
        normal_with_defect_mask=normal_with_defect_mask,
        in_both_splits=in_both_splits,
        copies_across_splits=copies,
        too_few_training_images={c: training[c] for c in categories
                                 if needs_training and training[c] < MIN_TRAINING_IMAGES},
        skipped=skipped,
        kept=kept,
    )


def _inspect(record: Record):
    """(image (w, h), mask (w, h) or None, mask has no defect pixel, the image file's sha256), or
    the BadFileError."""
    try:
        height, width = read_image(record.image).shape[:2]
        digest = file_sha256(record.image)  # it decoded, so it can be read
        if record.mask is None:
            return (width, height), None, False, digest
        mask = read_mask(record.mask)
        return (width, height), (mask.shape[1], mask.shape[0]), not mask.any(), digest
    except BadFileError as error:
        return error


def _tally(records: list[Record]) -> tuple[dict, dict]:
    images = Counter((r.split, r.defect) for r in records)
    masks = Counter((r.split, r.defect) for r in records if r.mask is not None)
    counts: dict[str, dict[str, int]] = {}
    mask_counts: dict[str, dict[str, int]] = {}
    for split, defect in dict.fromkeys((r.split, r.defect) for r in sort_records(records)):
        counts.setdefault(split, {})[defect] = images[split, defect]
        mask_counts.setdefault(split, {})[defect] = masks[split, defect]
    return counts, mask_counts


def _indented(lines: Iterable[str]) -> list[str]:
    lines = list(lines)
    shown = [f"  {line}" for line in lines[:_SHOWN_PER_LIST]]
    if len(lines) > _SHOWN_PER_LIST:
        shown.append(f"  ... and {len(lines) - _SHOWN_PER_LIST} more")
    return shown


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
