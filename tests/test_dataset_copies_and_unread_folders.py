"""Regressions from an audit of the dataset layer: copies of training images across splits,
moved datasets, images in subfolders of an MVTec-style tree, absolute paths in a VisA split
file, and `data check` on a test split alone."""

from __future__ import annotations

import json
import shutil

import pytest
from dataset_fixtures import make_folder_tree, make_mvtec_tree, make_visa_tree

from realnet.cli.main import main
from realnet.data.layouts import load_dataset
from realnet.data.validate import check_dataset
from realnet.errors import RealnetError


@pytest.mark.parametrize("folder", ["train/good", "test/scratch", "ground_truth/scratch"])
def test_images_in_a_subfolder_of_an_mvtec_tree_are_refused_not_dropped(tmp_path, folder):
    """Regression: train/good/line2/*.png and test/<defect>/cam2/* were left out without a word."""
    root = make_mvtec_tree(tmp_path / "data", n_train=3, n_test_good=1, defects={"scratch": 1})
    parent = root / "widget" / folder
    (parent / "line2").mkdir()
    shutil.copy(sorted(parent.iterdir())[0], parent / "line2" / "extra.png")
    with pytest.raises(RealnetError, match=rf"{parent}: its subfolder\(s\) line2/ hold images, which this layout "
                                           r"does not read \(only the images directly in the folder\)"):
        load_dataset(root, "widget")


def test_an_empty_or_hidden_subfolder_of_an_mvtec_tree_is_no_error(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", n_train=3, n_test_good=1, defects={"scratch": 1})
    before = load_dataset(root, "widget")
    (root / "widget" / "train" / "good" / "notes").mkdir()
    (root / "widget" / "test" / "scratch" / ".thumbs").mkdir()
    shutil.copy(before[0].image, root / "widget" / "test" / "scratch" / ".thumbs" / "t.png")
    assert load_dataset(root, "widget") == before


@pytest.mark.parametrize("column", ["image", "mask"])
def test_an_absolute_path_in_a_visa_split_file_is_one_line_naming_it(tmp_path, column):
    """Regression: absolute paths were joined as given, so a duplicate row raised a ValueError
    traceback and every listed mask was reported as an orphan."""
    root = make_visa_tree(tmp_path)
    split_file = root / "split_csv" / "1cls.csv"
    listed = "candle/Data/Images/Anomaly/000.JPG" if column == "image" else "candle/Data/Masks/Anomaly/000.png"
    split_file.write_text(split_file.read_text().replace(listed, str(root / listed)))
    with pytest.raises(RealnetError, match=rf"1cls.csv: line \d+ lists {root / listed}, an absolute path; list "
                                           "paths relative to the data root"):
        load_dataset(root, "candle", "visa")


def test_data_check_takes_an_mvtec_tree_without_train_as_a_test_split(tmp_path, capsys):
    """Regression: `data check` refused the test/ + ground_truth/ tree that `test --data` reads."""
    root = make_mvtec_tree(tmp_path / "data", n_train=3, n_test_good=2, defects={"scratch": 2})
    shutil.rmtree(root / "widget" / "train")
    assert main(["data", "check", "--data", str(root), "--category", "widget", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["counts"] == {"test": {"good": 2, "scratch": 2}} and report["problems"] == []
    assert captured.err == "realnet: note: widget has no training folder; checking its test split alone\n"
    (root / "widget" / "test").rename(root / "widget" / "tests")  # no test split either: still refused by name
    assert main(["data", "check", "--data", str(root), "--category", "widget"]) == 1
    assert "no problems" not in capsys.readouterr().out


def test_data_check_finds_a_test_image_that_is_a_byte_copy_of_a_training_image(tmp_path):
    """Regression: only the same file (by real path) counted as in both splits."""
    root = make_mvtec_tree(tmp_path / "data", n_train=3, n_test_good=1, defects={"scratch": 1})
    training = root / "widget" / "train" / "good" / "001.png"
    copy = root / "widget" / "test" / "good" / "copy.png"
    shutil.copy(training, copy)
    report = check_dataset(load_dataset(root, "widget"))
    assert report.copies_across_splits == [(copy, training)]
    assert report.problems == [f"test image {copy} is a copy of training image {training}"]
    assert report.to_dict()["copies_across_splits"] == [{"test": str(copy), "train": str(training)}]
    copy.unlink()
    assert check_dataset(load_dataset(root, "widget")).problems == []


def _fit(data_args: list[str], out) -> None:
    assert main(["fit", *data_args, "--preset", "tiny", "--out", str(out), "--steps", "2"]) == 0


def test_duplicate_files_split_across_a_folder_datasets_sides_are_a_warning(tmp_path, capsys):
    """Regression: two identical files that the name hash put on both sides made `test` refuse the
    run's own, unchanged split as "the folder changed since fit"."""
    root = make_folder_tree(tmp_path / "data", n_normal=10, n_abnormal=2, size=(64, 64))
    for image in sorted((root / "normal").iterdir()):
        shutil.copy(image, image.with_name(f"copy_{image.name}"))
    records = load_dataset(root, "custom", "folder", normal_dir="normal")
    sides = {r.image.name.removeprefix("copy_"): set() for r in records}
    for record in records:
        sides[record.image.name.removeprefix("copy_")].add(record.split)
    assert any(split == {"train", "test"} for split in sides.values())  # the precondition
    folder = ["--dataset", "folder", "--data", str(root), "--normal-dir", "normal", "--abnormal-dir", "abnormal",
              "--mask-dir", "masks"]
    _fit(folder, tmp_path / "run")
    capsys.readouterr()
    assert main(["test", "--run", str(tmp_path / "run"), "--panels", "0"]) == 0
    assert "test images are copies of its training images (first: " in capsys.readouterr().err


def test_a_moved_dataset_with_a_copy_in_its_test_split_is_still_a_warning(tiny_run, tmp_path, capsys):
    """Regression: following the hint to pass --data where the data is now turned the dataset's own
    copy of a training image from a warning into a refusal."""
    data_root, run_dir = tiny_run
    moved = shutil.copytree(data_root, tmp_path / "moved")
    copy = moved / "widget" / "test" / "good" / "copy.png"
    shutil.copy(sorted((moved / "widget" / "train" / "good").iterdir())[0], copy)
    run = shutil.copytree(run_dir, tmp_path / "run")
    capsys.readouterr()
    assert main(["test", "--run", str(run), "--data", str(moved), "--category", "widget", "--panels", "0"]) == 0
    assert f"copies of its training images (first: {copy})" in capsys.readouterr().err
    # a new batch without the run's training split holding that copy is refused, as before
    shutil.rmtree(moved / "widget" / "train")
    assert main(["test", "--run", str(run), "--data", str(moved), "--category", "widget", "--panels", "0"]) == 2
    assert "of the test images are normal training images of this run" in capsys.readouterr().err
