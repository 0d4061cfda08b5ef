"""`realnet test` and the masks it reads: a normal image's marked mask is no defect, and an image
left out for its unreadable mask is named as the image."""

from __future__ import annotations

import json
import shutil

import numpy as np
from dataset_fixtures import make_mvtec_tree
from PIL import Image

from realnet.cli.main import main
from realnet.engine.evaluate import load_test_split


def test_a_normal_images_marked_mask_is_cleared_counted_and_warned(tiny_run, tmp_path, capsys):
    """Regression: a ground_truth/good mask that marked pixels turned them into defect pixels for
    pixel AUROC and AUPRO (and regions for AUPRO), silently."""
    data, run = tiny_run
    marked = shutil.copytree(data, tmp_path / "marked")
    good = sorted((marked / "widget" / "test" / "good").iterdir())
    (marked / "widget" / "ground_truth" / "good").mkdir()
    width, height = Image.open(good[0]).size
    for image in good:
        Image.fromarray(np.full((height, width), 255, np.uint8)).save(
            marked / "widget" / "ground_truth" / "good" / f"{image.stem}_mask.png")
    results = {}
    for name, root in (("plain", data), ("marked", marked)):
        copy = shutil.copytree(run, tmp_path / f"run_{name}")
        assert main(["test", "--run", str(copy), "--data", str(root), "--category", "widget", "--panels", "0"]) == 0
        results[name] = (json.loads((copy / "metrics.json").read_text()), capsys.readouterr().err)
    plain, (metrics, err) = results["plain"][0], results["marked"]
    assert (metrics["pixel_auroc"], metrics["aupro"]) == (plain["pixel_auroc"], plain["aupro"])
    assert metrics["normal_with_marked_mask"] == len(good) and "normal_with_marked_mask" not in plain
    assert (f"realnet: warning: {len(good)} normal test image(s) have a mask that marks pixels; a normal image has "
            "no defect") in err


def test_an_image_left_out_for_its_unreadable_mask_is_named(tmp_path, capsys):
    """Regression: skipped_images and the 'skipped' line named the mask, never the image that the
    metrics and scores.csv left out."""
    root = make_mvtec_tree(tmp_path / "data", n_test_good=2, defects={"scratch": 3})
    mask = root / "widget" / "ground_truth" / "scratch" / "001_mask.png"
    mask.write_bytes(b"junk")
    split = load_test_split(root, "widget", "mvtec", 32, skip_bad=True, progress=False)
    image = root / "widget" / "test" / "scratch" / "001.png"
    assert split.skipped == [str(image)] and image not in [r.image for r in split.records]
    assert capsys.readouterr().err.startswith(f"realnet: skipped {image}: its mask {mask}: ")
