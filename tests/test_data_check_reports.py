"""`realnet data check`: counts cover only readable images, a list one item longer than the shown
part says how many are left out, and a mask shared through a symbolic link is a problem."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dataset_fixtures import make_folder_tree, make_mvtec_tree

from realnet.data.layouts import load_dataset
from realnet.data.validate import _SHOWN_PER_LIST, check_dataset


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_skipped_anomalous_images_are_not_counted_as_anomalous(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1, defects={"scratch": 3})
    records = load_dataset(root, "widget")
    bad = next(r for r in records if r.defect == "scratch")
    _truncate(bad.image)
    report = check_dataset(records, skip_bad=True)
    assert [s.path for s in report.skipped] == [bad.image]
    assert report.counts["test"]["scratch"] == 2  # the unreadable image is not counted ...
    assert report.anomalous_counts == {"scratch": 2}  # ... nor among the anomalous images
    assert report.anomalous_with_mask == 2
    assert report.to_dict()["anomalous_images"] == 2
    assert "anomalous test images: 2 over 1 defect type(s), 2 with a mask" in report.format()


def test_a_list_one_longer_than_shown_says_one_more(tmp_path):
    n = _SHOWN_PER_LIST + 1
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=n, size=(8, 8))
    records = load_dataset(root, "custom", "folder", normal_dir="normal", abnormal_dir="abnormal")
    report = check_dataset(records)
    assert len(report.missing_masks) == n
    text = report.format()
    assert "... and 1 more" in text
    assert all(str(path) in text for path in report.missing_masks[:_SHOWN_PER_LIST])


def test_count_table_columns_line_up_for_long_defect_names(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1, defects={"a_long_defect_name": 1, "cut": 1})
    text = check_dataset(load_dataset(root, "widget")).format()
    rows = [line for line in text.splitlines()[1:] if line.startswith("  ") and line.split()[0] in
            ("split", "train", "test")]
    assert len(rows) == 5  # header, train good, test good and the two defects
    assert len({len(row) for row in rows}) == 1  # right-aligned counts end in the same column
    assert len({row.index(row.split()[1]) for row in rows}) == 1  # the defect column starts in one place


def test_a_mask_shared_through_a_symbolic_link_is_a_problem(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1, defects={"scratch": 2})
    records = load_dataset(root, "widget")
    first, second = [r for r in records if r.defect == "scratch"]
    assert first.mask is not None and second.mask is not None
    link = tmp_path / "linked_mask.png"
    link.symlink_to(first.mask)
    records = [dataclasses.replace(r, mask=link) if r == second else r for r in records]
    report = check_dataset(records)
    assert report.shared_masks == {Path(first.mask).resolve(): [first.image, second.image]}
    assert any(line.startswith(f"mask {Path(first.mask).resolve()} is shared by 2 images") for line in report.problems)
