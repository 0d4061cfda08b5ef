from __future__ import annotations

import csv
import hashlib
import itertools
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_fixtures import (
    BTAD_EXTENSIONS,
    make_btad_tree,
    make_folder_tree,
    make_mvtec_tree,
    make_visa_tree,
    normal_image,
    save,
)
from realnet.data.io import read_image, read_mask
from realnet.data.layouts import (
    find_orphan_masks,
    list_categories,
    load_dataset,
    load_folder,
)
from realnet.data.records import ANOMALOUS, NORMAL
from realnet.data.validate import check_dataset
from realnet.errors import BadFileError, RealnetError


def _tally(records) -> Counter:
    return Counter((r.split, r.defect, r.label) for r in records)


# --- MVTec / MPDD / Magnetic Tile ----------------------------------------------------------


def test_mvtec_records_labels_masks_and_order(tmp_path):
    root = make_mvtec_tree(tmp_path, "widget", n_train=3, n_test_good=2,
                           defects={"scratch": 2, "hole": 1})
    records = load_dataset(root, "widget")
    assert _tally(records) == {
        ("train", "good", NORMAL): 3,
        ("test", "good", NORMAL): 2,
        ("test", "hole", ANOMALOUS): 1,
        ("test", "scratch", ANOMALOUS): 2,
    }
    assert [(r.split, r.defect, r.image.name) for r in records] == [
        ("train", "good", "000.png"), ("train", "good", "001.png"), ("train", "good", "002.png"),
        ("test", "good", "000.png"), ("test", "good", "001.png"),
        ("test", "hole", "000.png"),
        ("test", "scratch", "000.png"), ("test", "scratch", "001.png"),
    ]
    for record in records:
        assert record.category == "widget"
        if record.label == NORMAL:
            assert record.mask is None
        else:
            assert record.mask == root / "widget" / "ground_truth" / record.defect / (
                f"{record.image.stem}_mask.png"
            )
    assert find_orphan_masks(root, "widget") == []
    assert load_dataset(root, "widget", "mpdd") == records


def test_fixture_defects_are_visible_where_the_mask_is(tmp_path):
    root = make_mvtec_tree(tmp_path, defects={"scratch": 3}, size=(32, 40))
    for record in load_dataset(root, "widget"):
        image = read_image(record.image)
        assert image.shape == (32, 40, 3)
        if record.label == ANOMALOUS:
            mask = read_mask(record.mask)
            assert mask.sum() >= 9
            assert (image[mask] == 255).all() and image[~mask].max() < 200
        else:
            assert image.max() < 200


def test_fixtures_are_deterministic(tmp_path):
    first = make_mvtec_tree(tmp_path / "a")
    second = make_mvtec_tree(tmp_path / "b")
    for a, b in zip(load_dataset(first, "widget"), load_dataset(second, "widget")):
        assert a.image.read_bytes() == b.image.read_bytes()


def test_magnetic_tile_flavour_gray_jpg_with_png_masks_and_any_case(tmp_path):
    root = make_mvtec_tree(tmp_path, "magnetic_tile", gray=True, image_ext=".jpg")
    upper = root / "magnetic_tile" / "train" / "good" / "000.jpg"
    upper.rename(upper.with_name("000.JPG"))
    (root / "magnetic_tile" / "train" / "good" / "._000.JPG").write_bytes(b"apple double")
    (root / "magnetic_tile" / "train" / "good" / "notes.txt").write_text("ignored")
    records = load_dataset(root, "magnetic_tile")
    assert [r.image.name for r in records if r.split == "train"] == [
        "000.JPG", "001.jpg", "002.jpg", "003.jpg"
    ]
    anomalous = [r for r in records if r.label == ANOMALOUS]
    assert len(anomalous) == 2 and all(r.mask.suffix == ".png" for r in anomalous)
    assert read_image(records[0].image).shape == (32, 40, 3)


def test_mvtec_missing_masks_and_orphans(tmp_path):
    root = make_mvtec_tree(tmp_path, defects={"scratch": 3})
    truth = root / "widget" / "ground_truth"
    (truth / "scratch" / "001_mask.png").unlink()
    shutil.copy(truth / "scratch" / "000_mask.png", truth / "scratch" / "999_mask.png")
    (truth / "stain").mkdir()
    shutil.copy(truth / "scratch" / "000_mask.png", truth / "stain" / "000_mask.png")
    records = load_dataset(root, "widget")
    missing = [r.image.name for r in records if r.label == ANOMALOUS and r.mask is None]
    assert missing == ["001.png"]
    assert find_orphan_masks(root, "widget") == [
        truth / "scratch" / "999_mask.png", truth / "stain" / "000_mask.png"
    ]


def test_mvtec_masks_of_good_test_images_belong_to_them(tmp_path):
    """Custom MVTec-style trees often hold an all-black ground_truth/good/<stem>_mask.png per good
    test image. Regression: each was reported as a "mask without image" (data check exited 1)."""
    root = make_mvtec_tree(tmp_path, n_test_good=2)
    good_truth = root / "widget" / "ground_truth" / "good"
    save(good_truth / "000_mask.png", np.zeros((32, 40), np.uint8))
    save(good_truth / "001_mask.png", np.zeros((32, 40), np.uint8))
    save(good_truth / "007_mask.png", np.zeros((32, 40), np.uint8))  # no test/good/007.png
    records = load_dataset(root, "widget")
    good = [r for r in records if r.split == "test" and r.defect == "good"]
    assert [(r.label, r.mask) for r in good] == [
        (NORMAL, good_truth / "000_mask.png"), (NORMAL, good_truth / "001_mask.png")
    ]
    assert find_orphan_masks(root, "widget") == [good_truth / "007_mask.png"]
    assert check_dataset(records).problems == []


def test_mvtec_missing_folders_are_named(tmp_path):
    with pytest.raises(RealnetError, match=f"data root {tmp_path / 'nope'} not found"):
        load_dataset(tmp_path / "nope", "widget")
    root = make_mvtec_tree(tmp_path, "widget")
    with pytest.raises(RealnetError, match=r"category folder .*magnetic_tile not found "
                                           r"\(categories there: widget\)"):
        load_dataset(root, "magnetic_tile")
    shutil.rmtree(root / "widget" / "train")
    with pytest.raises(RealnetError, match=f"training folder {root / 'widget' / 'train' / 'good'} not found"):
        load_dataset(root, "widget")


def test_mvtec_category_without_a_test_folder_has_training_records_only(tmp_path):
    """fit never reads the test split, so it must not need one; test then names what is missing."""
    from realnet.engine.evaluate import load_test_split

    root = make_mvtec_tree(tmp_path, "widget", n_train=3)
    shutil.rmtree(root / "widget" / "test")
    records = load_dataset(root, "widget")
    assert len(records) == 3 and all(r.split == "train" for r in records)
    with pytest.raises(RealnetError, match="category 'widget' has no test images"):
        load_test_split(root, "widget", "mvtec", 32, progress=False)


def test_list_categories_mvtec(tmp_path):
    make_mvtec_tree(tmp_path, "zipper")
    make_mvtec_tree(tmp_path, "bottle")
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    assert list_categories(tmp_path, "mvtec") == ["bottle", "zipper"]


def test_pbm_files_are_masks_and_images(tmp_path):
    """Regression: .pbm (1-bit Netpbm) was not an image extension, so such masks and images were
    ignored without a word while .pgm, .ppm and .pnm were read."""
    root = make_mvtec_tree(tmp_path, n_train=2, n_test_good=1)
    truth = root / "widget" / "ground_truth" / "scratch"
    stored = read_mask(truth / "000_mask.png")
    Image.fromarray(stored).save(truth / "000_mask.pbm")
    (truth / "000_mask.png").unlink()
    bilevel = np.tile([True, False], (32, 20))
    Image.fromarray(bilevel).save(root / "widget" / "train" / "good" / "bilevel.pbm")
    records = load_dataset(root, "widget")
    masks = {r.image.name: r.mask for r in records if r.defect == "scratch"}
    assert masks["000.png"] == truth / "000_mask.pbm"
    np.testing.assert_array_equal(read_mask(masks["000.png"]), stored)
    train = {r.image.name: r.image for r in records if r.split == "train"}
    assert Image.open(train["bilevel.pbm"]).mode == "1"
    np.testing.assert_array_equal(read_image(train["bilevel.pbm"])[:, :, 0], bilevel * 255)


# --- BTAD ----------------------------------------------------------------------------------


@pytest.mark.parametrize("category", sorted(BTAD_EXTENSIONS))
def test_btad_each_category_with_its_extensions(tmp_path, category):
    root = make_btad_tree(tmp_path, categories=(category,), n_train=3, n_test_good=2, n_test_bad=2)
    records = load_dataset(root, category, "btad")
    assert _tally(records) == {
        ("train", "good", NORMAL): 3,
        ("test", "good", NORMAL): 2,
        ("test", "ko", ANOMALOUS): 2,
    }
    image_ext, mask_ext = BTAD_EXTENSIONS[category]
    for record in records:
        assert record.image.suffix == image_ext
        if record.label == ANOMALOUS:
            assert record.mask.suffix == mask_ext and record.mask.stem == record.image.stem
            assert record.mask.parent.parts[-2:] == ("ground_truth", "ko")
            assert read_mask(record.mask).any()
    assert find_orphan_masks(root, category, "btad") == []


def test_btad_root_may_be_the_transformed_folder_itself(tmp_path):
    root = make_btad_tree(tmp_path)
    inner = root / "BTech_Dataset_transformed"
    assert load_dataset(inner, "02", "btad") == load_dataset(root, "02", "btad")
    assert list_categories(root, "btad") == list_categories(inner, "btad") == ["01", "02", "03"]


def test_btad_orphan_mask(tmp_path):
    root = make_btad_tree(tmp_path, categories=("01",))
    ko = root / "BTech_Dataset_transformed" / "01" / "test" / "ko"
    (ko / "0001.bmp").unlink()
    orphans = find_orphan_masks(root, "01", "btad")
    assert [p.relative_to(root).as_posix() for p in orphans] == [
        "BTech_Dataset_transformed/01/ground_truth/ko/0001.png"
    ]


# --- VisA ----------------------------------------------------------------------------------


def test_visa_reads_the_one_class_split_file(tmp_path):
    root = make_visa_tree(tmp_path, categories=("candle", "pcb1"), n_train=4, n_test_good=2,
                          n_test_bad=3)
    records = load_dataset(root, "candle", "visa")
    assert _tally(records) == {
        ("train", "good", NORMAL): 4,
        ("test", "good", NORMAL): 2,
        ("test", "anomaly", ANOMALOUS): 3,
    }
    assert {r.category for r in records} == {"candle"}
    anomalous = [r for r in records if r.label == ANOMALOUS]
    assert [r.image.relative_to(root).as_posix() for r in anomalous] == [
        "candle/Data/Images/Anomaly/000.JPG",
        "candle/Data/Images/Anomaly/001.JPG",
        "candle/Data/Images/Anomaly/002.JPG",
    ]
    assert [r.mask.name for r in anomalous] == ["000.png", "001.png", "002.png"]
    values = [set(np.unique(np.asarray(Image.open(r.mask)))) for r in anomalous]
    assert values == [{0, 1}, {0, 2}, {0, 3}]  # not 255, still defects
    assert all(read_mask(r.mask).sum() >= 9 for r in anomalous)
    assert list_categories(root, "visa") == ["candle", "pcb1"]
    assert find_orphan_masks(root, "candle", "visa") == []


def test_visa_orphan_mask_and_errors(tmp_path):
    root = make_visa_tree(tmp_path)
    masks = root / "candle" / "Data" / "Masks" / "Anomaly"
    shutil.copy(masks / "000.png", masks / "050.png")
    assert find_orphan_masks(root, "candle", "visa") == [masks / "050.png"]
    with pytest.raises(RealnetError, match="no rows for category 'fryum'"):
        load_dataset(root, "fryum", "visa")
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(RealnetError, match=r"VisA split file .*1cls.csv not found"):
        load_dataset(root, "candle", "visa")


def test_visa_anomalous_training_row_is_refused_naming_its_line(tmp_path):
    """Regression: a train/anomaly row was accepted, counted by `data check` as an anomalous test
    image and dropped by fit and test without a word."""
    root = make_visa_tree(tmp_path)
    split_file = root / "split_csv" / "1cls.csv"
    split_file.write_text(split_file.read_text().replace("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG",
                                                         "candle,train,anomaly,candle/Data/Images/Anomaly/000.JPG"))
    with pytest.raises(RealnetError, match=r"1cls.csv: line 8 lists anomalous image "
                                           r"candle/Data/Images/Anomaly/000.JPG for training"):
        load_dataset(root, "candle", "visa")

def test_visa_bad_header_is_named(tmp_path):
    root = make_visa_tree(tmp_path)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(RealnetError, match=r"1cls.csv: missing column\(s\) label, mask"):
        load_dataset(root, "candle", "visa")


def test_visa_split_file_not_utf8_or_not_csv_is_one_error_naming_it(tmp_path):
    root = make_visa_tree(tmp_path)
    # what a spreadsheet saving in a legacy code page (cp1252 here) writes for a non-ASCII name
    (root / "split_csv" / "1cls.csv").write_bytes(
        b"object,split,label,image,mask\ncandle,train,normal,candle/caf\xe9.JPG,\n"
    )
    with pytest.raises(RealnetError, match=r"1cls.csv: not UTF-8 text"):
        load_dataset(root, "candle", "visa")
    with pytest.raises(RealnetError, match=r"1cls.csv: not UTF-8 text"):
        list_categories(root, "visa")
    # an unclosed quote swallows the rest of a large file into one field, past csv's field limit
    (root / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n\"candle" + "x" * 200_000)
    with pytest.raises(RealnetError, match=r"1cls.csv: not a readable CSV file \(field larger than"):
        load_dataset(root, "candle", "visa")


def _rewrite_visa_split_file(root: Path, change, header=None) -> None:
    """Rewrite ``split_csv/1cls.csv`` with each field replaced by change(column, value)."""
    split_file = root / "split_csv" / "1cls.csv"
    with split_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with split_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or list(rows[0]))
        writer.writerows([change(name, value) for name, value in row.items()] for row in rows)


def _visa_view(root: Path) -> tuple:
    """What the loaders make of a VisA tree, to compare two spellings of one split file."""
    records = load_dataset(root, "candle", "visa")
    return records, list_categories(root, "visa"), find_orphan_masks(root, "candle", "visa")


def test_visa_split_file_fields_are_stripped(tmp_path):
    """Regression: " candle" or "candle " in the object column (as a spreadsheet may write it)
    matched no category, list_categories listed it with its spaces, and a padded header name was
    a missing column."""
    root = make_visa_tree(tmp_path, categories=("candle", "pcb1"), n_train=2, n_test_good=1, n_test_bad=2)
    clean = _visa_view(root)
    spaces = itertools.cycle([" {} ", " {}", "{} ", "\t{}"])
    _rewrite_visa_split_file(root, lambda name, value: next(spaces).format(value) if value else value)
    assert _visa_view(root) == clean
    padded_header = [" object", "split ", " label ", "image", " mask"]
    _rewrite_visa_split_file(root, lambda name, value: value, header=padded_header)
    assert _visa_view(root) == clean
    records, categories, _ = clean
    assert categories == ["candle", "pcb1"] and len(records) == 5


def test_visa_split_file_windows_backslash_paths(tmp_path):
    """Regression: paths written with backslashes (candle\\Data\\Images\\Normal\\0000.JPG, as a
    split file made on Windows has them) were not split into folders."""
    root = make_visa_tree(tmp_path, n_train=2, n_test_good=1, n_test_bad=2)
    clean = _visa_view(root)

    def backslashed(name: str, value: str) -> str:
        return value.replace("/", "\\") if name in ("image", "mask") else value

    _rewrite_visa_split_file(root, backslashed)
    assert "candle\\Data\\Images\\Normal\\0000.JPG" in (root / "split_csv" / "1cls.csv").read_text()
    view = _visa_view(root)
    assert view == clean
    assert all(r.image.is_file() and (r.mask is None or r.mask.is_file()) for r in view[0])


def test_visa_image_listed_twice_is_refused_naming_both_lines(tmp_path):
    """Regression: a row repeated in the split file counted its image twice in the metrics, and an
    image listed both as normal and as an anomaly was reported only as missing its mask."""
    root = make_visa_tree(tmp_path, n_train=2, n_test_good=2, n_test_bad=1)
    split_file = root / "split_csv" / "1cls.csv"
    lines = split_file.read_text().splitlines()
    test_good = next(i for i, line in enumerate(lines) if ",test,normal," in line)
    split_file.write_text("\n".join(lines + [lines[test_good]]) + "\n")
    with pytest.raises(RealnetError, match=rf"1cls.csv: candle/Data/Images/Normal/0002.JPG is listed on lines "
                                           rf"{test_good + 1} and {len(lines) + 1}"):
        load_dataset(root, "candle", "visa")
    as_anomaly = lines[test_good].replace(",normal,", ",anomaly,")
    split_file.write_text("\n".join(lines + [as_anomaly.replace("/", "\\")]) + "\n")  # the same file, spelt otherwise
    with pytest.raises(RealnetError, match=r"0002.JPG is listed on lines"):
        load_dataset(root, "candle", "visa")


# --- folder --------------------------------------------------------------------------------


def test_folder_split_is_deterministic_and_seeded(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=10, n_abnormal=3)
    records = load_folder(root / "normal", abnormal_dir=root / "abnormal", mask_dir=root / "masks")
    assert _tally(records) == {
        ("train", "good", NORMAL): 8,
        ("test", "good", NORMAL): 2,
        ("test", "anomaly", ANOMALOUS): 3,
    }
    assert all(r.category == "custom" for r in records)
    again = load_folder(root / "normal", abnormal_dir=root / "abnormal", mask_dir=root / "masks")
    assert again == records
    test_names = {r.image.name for r in records if r.split == "test" and r.label == NORMAL}
    other_seeds = [
        {r.image.name for r in load_folder(root / "normal", seed=s) if r.split == "test"}
        for s in range(1, 6)
    ]
    assert any(names != test_names for names in other_seeds)
    for record in records:
        if record.label == ANOMALOUS:
            assert record.mask == root / "masks" / f"{record.image.stem}.png"


def test_folder_split_of_a_file_does_not_depend_on_other_files(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=20, n_abnormal=0)
    before = {r.image.name: r.split for r in load_folder(root / "normal", test_ratio=0.5)}
    save(root / "normal" / "img_999.png", normal_image(np.random.default_rng(1), (32, 32)))
    after = {r.image.name: r.split for r in load_folder(root / "normal", test_ratio=0.5)}
    moved = [name for name in before if before[name] != after[name]]
    assert len(moved) <= 1


def test_folder_split_hashes_the_names_alone_wherever_the_folder_is(tmp_path):
    """Test images are the round(0.2 n) smallest sha256(f"{seed}:" + name) keys, the same in a copied tree."""
    root = make_folder_tree(tmp_path / "here", n_normal=10, n_abnormal=0)
    shutil.copytree(root, tmp_path / "elsewhere" / "deeper")

    def test_names(folder):
        return {r.image.name for r in load_folder(folder, seed=0) if r.split == "test"}

    names = [path.name for path in (root / "normal").iterdir()]
    by_key = sorted(names, key=lambda name: hashlib.sha256(b"0:" + name.encode()).hexdigest())
    assert test_names(root / "normal") == set(by_key[:2])
    assert test_names(tmp_path / "elsewhere" / "deeper" / "normal") == set(by_key[:2])


def test_folder_ratio_rules(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=3, n_abnormal=0)
    assert Counter(r.split for r in load_folder(root / "normal", test_ratio=0.01)) == {
        "train": 2, "test": 1
    }
    assert Counter(r.split for r in load_folder(root / "normal", test_ratio=0.0)) == {"train": 3}
    with pytest.raises(RealnetError, match=r"test_ratio must be in \[0, 1\), got 1.0"):
        load_folder(root / "normal", test_ratio=1.0)


def test_folder_with_normal_test_dir_and_mask_suffix(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=2, n_normal_test=3,
                            mask_suffix="_mask")
    records = load_dataset(root, "parts", "folder", normal_dir="normal", abnormal_dir="abnormal",
                           mask_dir="masks", normal_test_dir="normal_test")
    assert _tally(records) == {
        ("train", "good", NORMAL): 4,
        ("test", "good", NORMAL): 3,
        ("test", "anomaly", ANOMALOUS): 2,
    }
    assert {r.category for r in records} == {"parts"}
    assert [r.mask.name for r in records if r.label == ANOMALOUS] == [
        "bad_000_mask.png", "bad_001_mask.png"
    ]
    assert find_orphan_masks(root, "parts", "folder", normal_dir="normal",
                             abnormal_dir="abnormal", mask_dir="masks") == []


def test_folder_orphans_and_missing_masks(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=3)
    (root / "abnormal" / "bad_001.png").unlink()
    (root / "masks" / "bad_002.png").unlink()
    options = {
        "normal_dir": root / "normal", "abnormal_dir": root / "abnormal", "mask_dir": root / "masks"
    }
    records = load_dataset(tmp_path / "elsewhere", "custom", "folder", **options)
    assert [(r.image.name, r.mask) for r in records if r.label == ANOMALOUS] == [
        ("bad_000.png", root / "masks" / "bad_000.png"), ("bad_002.png", None)
    ]
    assert find_orphan_masks(tmp_path, "custom", "folder", **options) == [
        root / "masks" / "bad_001.png"
    ]


def test_folder_masks_of_normal_images_are_not_orphans(tmp_path):
    """Regression: `data check` called the (all-black) masks of normal images in --mask-dir
    "mask without image"; a mask naming no image at all still is one."""
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=2, n_normal_test=2, mask_suffix="_mask")
    black = np.zeros((32, 32), np.uint8)
    for image in [*(root / "normal_test").iterdir(), *(root / "normal").iterdir()][:3]:
        save(root / "masks" / f"{image.stem}_mask.png", black)
    save(root / "masks" / "nothing_mask.png", black)
    options = {"normal_dir": "normal", "abnormal_dir": "abnormal", "mask_dir": "masks",
               "normal_test_dir": "normal_test"}
    assert find_orphan_masks(root, "parts", "folder", **options) == [root / "masks" / "nothing_mask.png"]


def test_folder_masks_may_share_the_abnormal_folder_with_the_mask_suffix(tmp_path):
    """Regression: with --mask-dir the same as --abnormal-dir, each `<stem>_mask.png` became an
    anomalous test image whose mask was itself."""
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=2, mask_suffix="_mask")
    for mask in (root / "masks").iterdir():
        mask.rename(root / "abnormal" / mask.name)
    records = load_dataset(root, "parts", "folder", normal_dir="normal", abnormal_dir="abnormal",
                           mask_dir="abnormal")
    assert [(r.image.name, r.mask.name) for r in records if r.label == ANOMALOUS] == [
        ("bad_000.png", "bad_000_mask.png"), ("bad_001.png", "bad_001_mask.png")]
    (root / "abnormal" / "bad_001.png").unlink()
    assert find_orphan_masks(root, "parts", "folder", normal_dir="normal", abnormal_dir="abnormal",
                             mask_dir="abnormal") == [root / "abnormal" / "bad_001_mask.png"]


def test_folder_split_takes_file_names_that_are_not_utf8(tmp_path):
    """Regression: a name in a legacy encoding (a zip made on Windows, unpacked on Linux) failed
    the train/test split's hash with a UnicodeEncodeError."""
    import os

    root = make_folder_tree(tmp_path, n_normal=3, n_abnormal=0)
    legacy = root / "normal" / os.fsdecode(b"\xb2\xe2\xca\xd4.png")
    (root / "normal" / "img_000.png").rename(legacy)
    records = load_folder(root / "normal", test_ratio=0.5)
    assert legacy in [r.image for r in records]
    assert [r.split for r in records] == [r.split for r in load_folder(root / "normal", test_ratio=0.5)]


def test_a_broken_symbolic_link_is_listed_so_that_reading_it_names_it(tmp_path):
    """Regression: a dangling link among the training images was dropped without a word."""
    root = make_mvtec_tree(tmp_path, "widget", n_train=2, n_test_good=1)
    (root / "widget" / "train" / "good" / "gone.png").symlink_to(tmp_path / "absent.png")
    records = load_dataset(root, "widget")
    assert "gone.png" in [r.image.name for r in records if r.split == "train"]
    with pytest.raises(BadFileError, match=r"gone.png: broken symbolic link"):
        check_dataset(records)


def test_folder_errors(tmp_path):
    with pytest.raises(RealnetError, match=r"needs normal_dir \(--normal-dir\), or normal_test_dir"):
        load_dataset(tmp_path, "custom", "folder")
    with pytest.raises(RealnetError, match=f"normal folder {tmp_path / 'absent'} not found"):
        load_dataset(tmp_path, "custom", "folder", normal_dir="absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RealnetError, match=f"no image files in {tmp_path / 'empty'}"):
        load_folder(tmp_path / "empty")
    with pytest.raises(RealnetError, match="normal_dir only apply to dataset 'folder', not 'mv"):
        load_dataset(tmp_path, "custom", "mvtec", normal_dir="x")
    with pytest.raises(RealnetError, match="unknown folder option"):
        load_dataset(tmp_path, "custom", "folder", normal_dirs="x")
    with pytest.raises(RealnetError, match="unknown dataset 'coco'"):
        load_dataset(tmp_path, "custom", "coco")
    with pytest.raises(RealnetError, match="has no categories"):
        list_categories(tmp_path, "folder")


# --- real data -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_magnetic_tile_records(shared_data: Path):
    records = load_dataset(shared_data, "magnetic_tile")
    counts = Counter((r.split, r.defect) for r in records)
    assert counts == {
        ("train", "good"): 702, ("test", "good"): 250, ("test", "blowhole"): 115,
        ("test", "break"): 85, ("test", "crack"): 57, ("test", "fray"): 32, ("test", "uneven"): 103,
    }
    assert all((r.mask is not None) == (r.label == ANOMALOUS) for r in records)
    assert find_orphan_masks(shared_data, "magnetic_tile") == []
    assert "magnetic_tile" in list_categories(shared_data)


def test_visa_tree_without_the_standard_mask_folder_loads(tmp_path):
    """Orphan masks were looked for in <cat>/Data/Masks/Anomaly unconditionally: a VisA-format
    tree keeping its masks elsewhere crashed with FileNotFoundError."""
    root = make_visa_tree(tmp_path, categories=("candle",), n_train=2, n_test_good=1, n_test_bad=1)
    moved = root / "candle" / "masks_elsewhere"
    shutil.move(str(root / "candle" / "Data" / "Masks" / "Anomaly"), moved)

    def elsewhere(field: str, value: str) -> str:
        return "candle/masks_elsewhere/" + Path(value).name if field == "mask" and value else value

    _rewrite_visa_split_file(root, elsewhere)
    records = load_dataset(root, "candle", "visa")
    assert sum(r.mask is not None for r in records) == 1


def test_mvtec_mask_named_stem_mask_wins_over_a_same_stem_file(tmp_path):
    """MVTec names masks `<stem>_mask.png`; a stray `<stem>.png` beside it is not the mask."""
    root = make_mvtec_tree(tmp_path, defects={"scratch": 1})
    truth = root / "widget" / "ground_truth" / "scratch"
    shutil.copy(truth / "000_mask.png", truth / "000.png")
    [record] = [r for r in load_dataset(root, "widget") if r.label == ANOMALOUS]
    assert record.mask == truth / "000_mask.png"


def test_folder_subfolders_holding_images_are_refused_not_skipped(tmp_path):
    """Regression: a folder per production line under --normal-dir was left out without a word
    (fit trained on the 2 images at the top, `data check` said "no problems")."""
    root = make_folder_tree(tmp_path, n_normal=2, n_abnormal=2)
    (root / "normal" / "line_A").mkdir()
    (root / "normal" / "line_A" / "part_001.png").write_bytes((root / "normal" / "img_000.png").read_bytes())
    (root / "normal" / ".thumbnails").mkdir()  # hidden: not images of the dataset
    (root / "normal" / ".thumbnails" / "x.png").write_bytes(b"")
    with pytest.raises(RealnetError, match=r"--normal-dir .*normal: its subfolder\(s\) line_A/ hold images, which the "
                                           r"folder dataset does not read"):
        load_dataset(root, "parts", "folder", normal_dir="normal", abnormal_dir="abnormal", mask_dir="masks")
    (root / "normal" / "line_A" / "part_001.png").unlink()  # an empty subfolder leaves nothing out
    assert len(load_dataset(root, "parts", "folder", normal_dir="normal")) == 2
    (root / "masks").rename(root / "abnormal" / "masks")  # a given folder inside another is read, not refused
    records = load_dataset(root, "parts", "folder", normal_dir="normal", abnormal_dir="abnormal",
                           mask_dir="abnormal/masks")
    assert sum(r.mask is not None for r in records) == 2


def test_visa_category_takes_only_its_own_rows_not_those_whose_name_contains_it(tmp_path):
    """VisA has both fryum and pipe_fryum."""
    root = make_visa_tree(tmp_path, categories=("fryum", "pipe_fryum"), n_train=3, n_test_good=1,
                          n_test_bad=2)
    records = load_dataset(root, "fryum", "visa")
    assert len(records) == 3 + 1 + 2
    assert {r.image.relative_to(root).parts[0] for r in records} == {"fryum"}
    assert len(load_dataset(root, "pipe_fryum", "visa")) == 6


def test_good_test_images_come_before_a_defect_type_that_sorts_before_good(tmp_path):
    root = make_mvtec_tree(tmp_path, "widget", n_train=1, n_test_good=1, defects={"crack": 1, "scratch": 1})
    records = load_dataset(root, "widget")
    assert [(r.split, r.defect) for r in records] == [
        ("train", "good"), ("test", "good"), ("test", "crack"), ("test", "scratch")]


def test_folder_test_count_is_test_ratio_times_n_rounded_to_the_nearest(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=10, n_abnormal=0)
    for ratio, n_test in ((0.27, 3), (0.24, 2), (0.31, 3), (0.36, 4)):  # 2.7, 2.4, 3.1, 3.6
        assert Counter(r.split for r in load_folder(root / "normal", test_ratio=ratio)) == {
            "train": 10 - n_test, "test": n_test}, ratio


def test_masks_in_ground_truth_good_without_a_test_good_folder_are_orphans(tmp_path):
    root = make_mvtec_tree(tmp_path, "widget", n_test_good=0)
    assert not (root / "widget" / "test" / "good").exists()
    orphan = save(root / "widget" / "ground_truth" / "good" / "000_mask.png", np.zeros((32, 40), np.uint8))
    assert find_orphan_masks(root, "widget") == [orphan]


def test_an_image_with_mask_inside_its_name_is_an_image_when_masks_share_its_folder(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=2, mask_suffix="_mask")
    for mask in (root / "masks").iterdir():
        mask.rename(root / "abnormal" / mask.name)
    (root / "abnormal" / "bad_001.png").rename(root / "abnormal" / "bad_mask_area.png")
    (root / "abnormal" / "bad_001_mask.png").rename(root / "abnormal" / "bad_mask_area_mask.png")
    records = load_dataset(root, "parts", "folder", normal_dir="normal", abnormal_dir="abnormal",
                           mask_dir="abnormal")
    assert [(r.image.name, r.mask.name) for r in records if r.label == 1] == [
        ("bad_000.png", "bad_000_mask.png"), ("bad_mask_area.png", "bad_mask_area_mask.png")]
