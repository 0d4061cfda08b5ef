"""The embedded demo dataset: MVTec layout, exact masks, visible defects, determinism, safe writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from realnet.data.demo import DEFECT_TYPES, DEFECTS, MARKER, make_demo_dataset, normal_crop, texture_photo
from realnet.errors import RealnetError

SMALL = {"size": 32, "n_train": 3, "n_test_good": 2, "n_test_defect": 2}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_loadable_by_the_mvtec_rules(tmp_path):
    from realnet.data.layouts import load_dataset

    import stat

    from realnet.files import USER_UMASK

    root = make_demo_dataset(tmp_path / "demo", categories=("brick", "grass"), **SMALL)
    assert root == tmp_path / "demo"
    assert stat.S_IMODE(root.stat().st_mode) == 0o777 & ~USER_UMASK  # not the staging folder's private 0700
    for category in ("brick", "grass"):
        records = load_dataset(root, category, "mvtec")
        train = [r for r in records if r.split == "train"]
        test = [r for r in records if r.split == "test"]
        assert len(train) == 3 and all(r.label == 0 and r.defect == "good" for r in train)
        assert sorted({r.defect for r in test}) == sorted(("good", *DEFECT_TYPES))
        anomalous = [r for r in test if r.label == 1]
        assert len(anomalous) == 2 * len(DEFECT_TYPES) and all(r.mask is not None for r in anomalous)
        for record in anomalous:
            mask = cv2.imread(str(record.mask), cv2.IMREAD_UNCHANGED)
            image = cv2.imread(str(record.image), cv2.IMREAD_UNCHANGED)
            assert mask.shape == image.shape == (32, 32)
            assert set(np.unique(mask)) == {0, 255}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    a = tree(make_demo_dataset(tmp_path / "a", categories=("gravel",), **SMALL))
    b = tree(make_demo_dataset(tmp_path / "b", categories=("gravel",), **SMALL))
    c = tree(make_demo_dataset(tmp_path / "c", categories=("gravel",), seed=1, **SMALL))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_a_root_whose_name_is_not_utf8_is_written(tmp_path):
    """Regression: cv2.imwrite crashed the process (segmentation fault) on a path in a legacy encoding."""
    from dataset_fixtures import legacy_encoded

    root = make_demo_dataset(legacy_encoded(tmp_path, b"d\xe9mo"), categories=("gravel",), **SMALL)
    assert tree(root) == tree(make_demo_dataset(tmp_path / "demo", categories=("gravel",), **SMALL))

def test_a_category_does_not_depend_on_the_others(tmp_path):
    alone = tree(make_demo_dataset(tmp_path / "alone", categories=("grass",), **SMALL) / "grass")
    together = tree(make_demo_dataset(tmp_path / "together", **SMALL) / "grass")
    assert alone == together


def test_normal_crops_vary_and_keep_the_photo_statistics():
    photo = texture_photo("brick")
    rng = np.random.default_rng(0)
    crops = [normal_crop(photo, 64, rng) for _ in range(6)]
    assert all(c.shape == (64, 64) and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 6
    assert abs(np.mean(crops) - photo.mean()) < 15


@pytest.mark.parametrize("defect", DEFECT_TYPES)
@pytest.mark.parametrize("category", ["brick", "gravel", "grass"])
def test_defects_are_visible_exact_and_not_saturated(defect, category):
    rng = np.random.default_rng(3)
    for _ in range(3):
        normal = normal_crop(texture_photo(category), 64, rng)
        image, mask = DEFECTS[defect](normal, rng)
        assert image.shape == normal.shape and image.dtype == np.uint8 and mask.dtype == np.bool_
        assert 4 <= mask.sum() < 0.2 * mask.size
        assert np.array_equal(image[~mask], normal[~mask])  # nothing changes outside the mask
        change = np.abs(image.astype(int) - normal)[mask]
        assert change.mean() > 12  # visible
        assert np.isin(image[mask], (0, 255)).mean() < 0.5  # not painted flat black or white


def test_existing_folders_are_reused_replaced_or_refused(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", categories=("brick",), **SMALL)
    first = (root / "brick" / "train" / "good" / "000.png").stat().st_mtime_ns
    make_demo_dataset(root, categories=("brick",), **SMALL)  # same settings: untouched
    assert (root / "brick" / "train" / "good" / "000.png").stat().st_mtime_ns == first

    make_demo_dataset(root, categories=("gravel",), **SMALL)  # other settings: replaced
    assert sorted(p.name for p in root.iterdir()) == sorted(["gravel", MARKER])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

    user_data = tmp_path / "mine"
    (user_data / "bottle").mkdir(parents=True)
    with pytest.raises(RealnetError, match="not a realnet demo dataset"):
        make_demo_dataset(user_data, **SMALL)
    assert sorted(p.name for p in user_data.iterdir()) == ["bottle"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(RealnetError, match="unknown demo category 'marble'"):
        make_demo_dataset(tmp_path / "x", categories=("marble",))
    with pytest.raises(RealnetError, match="size >= 32"):
        make_demo_dataset(tmp_path / "x", size=16)
    assert not (tmp_path / "x").exists()


def test_test_images_come_from_the_half_of_the_photo_training_never_saw(tmp_path, monkeypatch):
    """Regression: training and test crops were drawn from the whole photo, so most test images
    were near re-crops of training images, which inflated the demo's metrics."""
    import realnet.data.demo as demo

    marked = np.zeros((512, 512), np.uint8)
    marked[:, 256:] = 255  # the right half white, the left half black
    monkeypatch.setattr(demo, "texture_photo", lambda category: marked)
    root = make_demo_dataset(tmp_path / "demo", categories=("brick",), **SMALL)
    for path in (root / "brick" / "train" / "good").iterdir():
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).max() == 0
    for path in (root / "brick" / "test" / "good").iterdir():
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).min() == 255


@pytest.mark.parametrize("level", [0, 255])
def test_painted_defects_mark_only_pixels_they_changed(level):
    """Regression: darkening black pixels or brightening saturated ones left them unchanged, yet
    the mask marked them (painted validation of images with black or white areas)."""
    from realnet.data.demo import draw_defect_rgb

    image = np.full((64, 64, 3), level, np.uint8)
    image[:, 32:] = 128  # half flat at the extreme, half mid-grey
    rng = np.random.default_rng(0)
    for _ in range(40):
        out, mask = draw_defect_rgb(image, rng)
        assert mask.any() and (out != image).any(axis=2)[mask].all()


def test_a_killed_generation_leaves_no_staging_folder_behind_the_next_one(tmp_path):
    """Regression: a generation killed mid-way (SIGHUP, SIGKILL) left its hidden staging folder
    (megabytes of half a dataset) beside the root, and later runs never removed it."""
    for stale in (".demo.tmp-k1ll3d", ".demo.old-k1ll3d"):
        (tmp_path / stale / "brick").mkdir(parents=True)
        (tmp_path / stale / "brick" / "000.png").write_bytes(b"half")
    (tmp_path / ".other.tmp-k1ll3d").mkdir()  # another folder's: not ours to remove
    make_demo_dataset(tmp_path / "demo", categories=("brick",), **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-k1ll3d", "demo"]
