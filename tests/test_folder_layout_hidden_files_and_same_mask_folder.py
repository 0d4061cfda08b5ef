"""The folder layout: hidden files inside a subfolder are no reason to refuse the folder, and the
mask folder is recognised as the abnormal folder however its path is spelled."""

from __future__ import annotations

from dataset_fixtures import make_folder_tree
from realnet.data.layouts import load_dataset, load_folder
from realnet.data.records import ANOMALOUS


def test_a_subfolder_holding_only_hidden_images_is_not_refused(tmp_path):
    """macOS `._x.png` companions (and files in hidden folders) are not images of the dataset."""
    root = make_folder_tree(tmp_path, n_normal=2, n_abnormal=1)
    extra = root / "normal" / "notes"
    extra.mkdir()
    (extra / "._img_000.png").write_bytes(b"\x00\x05\x16\x07")  # an AppleDouble companion
    (extra / ".cache").mkdir()
    (extra / ".cache" / "thumb.png").write_bytes(b"")
    records = load_dataset(root, "parts", "folder", normal_dir="normal")
    assert sorted(r.image.name for r in records) == ["img_000.png", "img_001.png"]


def test_the_abnormal_folder_given_again_by_another_path_is_the_same_mask_folder(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=2, mask_suffix="_mask")
    abnormal = root / "abnormal"
    for mask in (root / "masks").iterdir():
        mask.rename(abnormal / mask.name)
    respelled = root / "masks" / ".." / "abnormal"  # the same folder, spelled otherwise
    assert respelled != abnormal and respelled.resolve() == abnormal.resolve()
    records = load_folder(root / "normal", abnormal_dir=abnormal, mask_dir=respelled)
    anomalous = [(r.image.name, r.mask.name) for r in records if r.label == ANOMALOUS]
    assert anomalous == [("bad_000.png", "bad_000_mask.png"), ("bad_001.png", "bad_001_mask.png")]


def test_a_missing_normal_test_folder_is_named(tmp_path):
    import pytest

    from realnet.errors import RealnetError

    root = make_folder_tree(tmp_path, n_normal=2, n_abnormal=0)
    with pytest.raises(RealnetError, match=r"normal test folder .*normal_test not found"):
        load_folder(root / "normal", normal_test_dir=root / "normal_test")


def test_masks_without_an_abnormal_folder_are_all_orphans_except_normal_images_own(tmp_path):
    from realnet.data.layouts import find_orphan_masks

    root = make_folder_tree(tmp_path, n_normal=3, n_abnormal=2)
    (root / "masks" / "img_000.png").write_bytes((root / "masks" / "bad_000.png").read_bytes())  # a normal image's
    orphans = find_orphan_masks(root, "parts", "folder", normal_dir="normal", mask_dir="masks")
    assert orphans == [root / "masks" / "bad_000.png", root / "masks" / "bad_001.png"]
