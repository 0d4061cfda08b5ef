"""Demo defect images come from the test half of the photo, and each written mask is exactly the
set of pixels the painting changed (no more, no less)."""

from __future__ import annotations

import cv2
import numpy as np

import realnet.data.demo as demo
from realnet.data.demo import DEFECT_TYPES, make_demo_dataset

SMALL = {"size": 32, "n_train": 2, "n_test_good": 1, "n_test_defect": 3}


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_defect_images_are_crops_of_the_half_training_never_saw(tmp_path, monkeypatch):
    """Outside its mask a defect image is the untouched test crop, so it must show the photo's
    right (test) half only; a crop of the training half would leak training texture into test."""
    marked = np.zeros((512, 512), np.uint8)
    marked[:, 256:] = 200  # left half (train) black, right half (test) grey
    monkeypatch.setattr(demo, "texture_photo", lambda category: marked)
    root = make_demo_dataset(tmp_path / "demo", categories=("brick",), **SMALL)
    for defect in DEFECT_TYPES:
        for image_path in sorted((root / "brick" / "test" / defect).iterdir()):
            image = _read(image_path)
            mask = _read(root / "brick" / "ground_truth" / defect / f"{image_path.stem}_mask.png") > 0
            assert mask.any()
            assert (image[~mask] == 200).all()


def test_written_masks_are_exactly_the_painted_pixels(tmp_path, monkeypatch):
    """On a flat mid-grey photo every normal crop is flat 128, so the painted pixels are exactly
    those that differ from 128; the written mask must mark those and nothing else."""
    flat = np.full((512, 512), 128, np.uint8)
    monkeypatch.setattr(demo, "texture_photo", lambda category: flat)
    root = make_demo_dataset(tmp_path / "demo", categories=("gravel",), **SMALL)
    for defect in DEFECT_TYPES:
        for image_path in sorted((root / "gravel" / "test" / defect).iterdir()):
            image = _read(image_path)
            mask = _read(root / "gravel" / "ground_truth" / defect / f"{image_path.stem}_mask.png")
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask == 255, image != 128), f"{defect} {image_path.name}"
