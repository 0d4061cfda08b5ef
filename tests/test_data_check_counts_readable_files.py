"""`realnet data check` counts what it could read: masks of anomalous images, and readable
training images against fit's minimum."""

from __future__ import annotations

from pathlib import Path

from dataset_fixtures import make_mvtec_tree
from realnet.data.layouts import load_dataset
from realnet.data.validate import MIN_TRAINING_IMAGES, check_dataset


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_anomalous_with_mask_counts_only_images_that_have_a_mask(tmp_path):
    root = make_mvtec_tree(tmp_path, defects={"scratch": 3})
    (root / "widget" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    report = check_dataset(load_dataset(root, "widget"))
    assert sum(report.anomalous_counts.values()) == 3
    assert report.anomalous_with_mask == 2
    assert report.to_dict()["anomalous_with_mask"] == 2
    assert "3 over 1 defect type(s), 2 with a mask" in report.format()


def test_unreadable_training_images_do_not_count_towards_fits_minimum(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=MIN_TRAINING_IMAGES, defects={"scratch": 1})
    _truncate(root / "widget" / "train" / "good" / "000.png")
    report = check_dataset(load_dataset(root, "widget"), skip_bad=True)
    assert len(report.skipped) == 1
    assert report.too_few_training_images == {"widget": MIN_TRAINING_IMAGES - 1}
    assert any("readable training image(s)" in line for line in report.problems)


def test_a_category_whose_every_file_is_unreadable_is_still_reported(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1, defects={})
    for path in (root / "widget").rglob("*.png"):
        _truncate(path)
    report = check_dataset(load_dataset(root, "widget"), skip_bad=True)
    assert report.categories == ["widget"]
    assert report.too_few_training_images == {"widget": 0}


def test_a_normal_image_with_an_all_black_mask_is_not_noted_as_an_empty_anomalous_mask(tmp_path):
    """Datasets such as KSDD2 ship an all-black mask for every normal image: that is no note."""
    import dataclasses

    from PIL import Image

    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1, defects={"scratch": 1}, size=(32, 40))  # 32 high, 40 wide
    records = load_dataset(root, "widget")
    good = next(r for r in records if r.split == "test" and r.defect == "good")
    black = tmp_path / "good_mask.png"
    Image.new("L", (40, 32), 0).save(black)  # PIL: (width, height)
    records = [dataclasses.replace(r, mask=black) if r is good else r for r in records]
    report = check_dataset(records)
    assert report.empty_masks == []
    assert report.problems == [] and "empty mask" not in report.format()


def test_the_same_file_under_another_name_in_both_splits_is_a_leak(tmp_path):
    """A test image that is a symbolic link to a training image is the same image in both splits."""
    import dataclasses

    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1, defects={"scratch": 1})
    records = load_dataset(root, "widget")
    train = next(r for r in records if r.split == "train")
    link = tmp_path / "linked.png"
    link.symlink_to(train.image)
    records = records + [dataclasses.replace(train, image=link, split="test")]
    report = check_dataset(records)
    assert report.in_both_splits == [Path(train.image).resolve()]
    assert any("both the train and the test split" in line for line in report.problems)
