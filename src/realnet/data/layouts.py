"""Dataset layouts on disk -> sorted lists of `Record`s (no pixels are read here).

Supported layouts, exactly as the datasets are distributed:

- ``mvtec`` (also ``mpdd`` and the Magnetic Tile set): ``<root>/<cat>/train/good/*``,
  ``<cat>/test/<defect|good>/*``, ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
- ``btad``: ``<root>/BTech_Dataset_transformed/<01|02|03>/{train/ok, test/ok, test/ko,
  ground_truth/ko}``, a mask having its image's stem; root may also be the
  ``BTech_Dataset_transformed`` folder itself.
- ``visa``: the one-class split file ``<root>/split_csv/1cls.csv`` (header
  ``object,split,label,image,mask``, paths relative to root, mask empty for normal rows).
  Header names and fields are stripped of surrounding whitespace, and a backslash in a path is a folder
  separator, as in a split file written on Windows.
  VisA's split file has no defect types, so every anomalous image has defect ``anomaly``; its
  training rows are all normal, and an anomalous one is refused.
- ``folder`` (custom data): see `load_folder`.

Image files are recognised by extension (`IMAGE_EXTENSIONS`, any letter case); hidden files
(names starting with ".", such as macOS ``._x.png`` companions) are ignored. A mask is matched
to its image by stem, trying ``<stem>_mask`` first and then ``<stem>``, with any image extension.
An anomalous image without a mask gets ``mask=None``. A normal test image gets the mask of its stem
in ``ground_truth/good`` (``ok`` for BTAD) where there is one, which `realnet data check` checks
marks no defect pixel, else ``None``. Masks without an image are "orphans", returned by
`find_orphan_masks` so `realnet data check` can report both.

Each layout reads the images directly in its folders; images in a subfolder of one (a folder per
production line or camera) are refused by name rather than left out.

Records are sorted: train before test, ``good`` before defect types, defect types and file
names in code-point order.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from realnet.data.records import ANOMALOUS, NORMAL, Record
from realnet.errors import RealnetError
from realnet.files import not_utf8

DATASETS = ("mvtec", "mpdd", "btad", "visa", "folder")
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pgm", ".ppm", ".pnm"}
)
FOLDER_OPTIONS = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir", "test_ratio", "seed")
GOOD = "good"
FOLDER_ANOMALY = "anomaly"
VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
BTAD_FOLDER = "BTech_Dataset_transformed"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_SPLITS = ("train", "test")

MASK_SUFFIX = "_mask"  # a mask named after its image: <stem>_mask.<ext>


@dataclass(frozen=True)
class _Scan:
    records: list[Record]
    orphan_masks: list[Path]


def load_dataset(
    root: str | Path, category: str, dataset: str = "mvtec", *, test_only: bool = False, **folder_options
) -> list[Record]:
    """All records of one category, sorted; `folder_options` (see `load_folder`) only for 'folder'.

    For ``dataset="folder"`` relative folder options are resolved against `root`. With `test_only`
    the test records alone, and an MVTec-style tree needs no training folder (a new batch of parts
    to test is often laid out as test/ and ground_truth/ alone).
    """
    records = _scan(root, category, dataset, folder_options, test_only).records
    return [r for r in records if r.split == "test"] if test_only else records


def find_orphan_masks(
    root: str | Path, category: str, dataset: str = "mvtec", *, test_only: bool = False, **folder_options
) -> list[Path]:
    """Mask files in the category's mask folders that belong to no image, sorted (`test_only` as
    in `load_dataset`)."""
    return _scan(root, category, dataset, folder_options, test_only).orphan_masks


def lacks_training_folder(root: str | Path, category: str, dataset: str) -> bool:
    """An MVTec-style (MVTec, MPDD, BTAD) category folder without its training folder: a test split alone."""
    if dataset not in ("mvtec", "mpdd", "btad"):
        return False
    base, normal = _mvtec_like_base(Path(root), dataset)
    return (base / category).is_dir() and not (base / category / "train" / normal).is_dir()


def list_categories(root: str | Path, dataset: str = "mvtec") -> list[str]:
    """Category names found under `root` for `dataset`, sorted."""
    root = Path(root)
    _check_dataset_name(dataset)
    if dataset == "folder":
        raise RealnetError("dataset 'folder' has no categories; pass its folders instead")
    if dataset == "visa":
        return sorted({row["object"] for row in _read_visa_rows(root)})
    base = _btad_base(root) if dataset == "btad" else _require_dir(root, "data root")
    return sorted(
        entry.name
        for entry in base.iterdir()
        if not entry.name.startswith(".") and (entry / "train").is_dir()
    )


def load_folder(
    normal_dir: str | Path | None = None,
    *,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    normal_test_dir: str | Path | None = None,
    test_ratio: float = 0.2,
    seed: int = 0,
    category: str = "custom",
) -> list[Record]:
    """Records of a custom dataset made of plain folders of images (not searched recursively: a
    folder whose subfolders hold images is refused, so that none is left out in silence).

    - `normal_dir`: normal images. With `normal_test_dir` they are all training images and the
      images of `normal_test_dir` are the normal test images; it may then be left out when only
      the test split is wanted (`test` on new images). Without it, a fraction `test_ratio`
      of them goes to test: each file gets the key sha256 of f"{seed}:" and its name's bytes, and the
      round(test_ratio * n) files with the smallest keys (at least 1 when test_ratio > 0, at most
      n - 1) are test images. The split depends only on the names and the seed, so it is the same
      on every run and machine, and adding a file moves no other file from train to test except
      at the cut-off.
    - `abnormal_dir`: anomalous test images, defect type ``anomaly``.
    - `mask_dir`: their masks, matched by file stem (``<stem>`` or ``<stem>_mask``). It may be
      `abnormal_dir` itself; there the ``<stem>_mask`` files are the masks and the others the images.
    """
    if normal_dir is None and normal_test_dir is None:
        raise RealnetError("dataset 'folder' needs normal_dir (--normal-dir), or normal_test_dir "
                           "(--normal-test-dir) for a test split alone")
    _refuse_unread_subfolders([("--normal-dir", normal_dir), ("--abnormal-dir", abnormal_dir), ("--mask-dir", mask_dir),
                               ("--normal-test-dir", normal_test_dir)])
    normal_images = [] if normal_dir is None else _images_in(_require_dir(Path(normal_dir), "normal folder"),
                                                             required=True)
    if normal_test_dir is not None:
        train, test = normal_images, _images_in(_require_dir(Path(normal_test_dir), "normal test folder"))
    else:
        train, test = _split_by_hash(normal_images, test_ratio, seed)
    records = [_normal(path, category, "train") for path in train]
    records += [_normal(path, category, "test") for path in test]
    if abnormal_dir is not None:
        pairs, _ = _abnormal_pairs(abnormal_dir, mask_dir)
        records += [
            Record(path, mask, ANOMALOUS, FOLDER_ANOMALY, category, "test") for path, mask in pairs
        ]
    return sort_records(records)


def _scan(root: str | Path, category: str, dataset: str, folder_options: dict, test_only: bool = False) -> _Scan:
    root = Path(root)
    _check_dataset_name(dataset)
    unknown = sorted(set(folder_options) - set(FOLDER_OPTIONS))
    if unknown:
        raise RealnetError(f"unknown folder option(s): {', '.join(unknown)}")
    if dataset == "folder":
        given = {
            name: root / value if name.endswith("_dir") else value
            for name, value in folder_options.items()
            if value is not None
        }
        records = load_folder(category=category, **given)
        # normal images may have (all-black) masks too, as custom trees often do
        normal_stems = {r.image.stem for r in records if r.label != ANOMALOUS}
        orphans = [mask for mask in _folder_orphan_masks(given.get("abnormal_dir"), given.get("mask_dir"))
                   if mask.stem not in normal_stems and mask.stem.removesuffix(MASK_SUFFIX) not in normal_stems]
        return _Scan(records, orphans)
    given = sorted(name for name, value in folder_options.items() if value is not None)
    if given:
        raise RealnetError(f"{', '.join(given)} only apply to dataset 'folder', not '{dataset}'")
    if dataset == "visa":
        return _scan_visa(root, category)
    base, normal = _mvtec_like_base(root, dataset)
    return _scan_mvtec_like(base, category, normal=normal, test_only=test_only)


def _mvtec_like_base(root: Path, dataset: str) -> tuple[Path, str]:
    """The folder holding an MVTec-style layout's categories, and its normal folders' name."""
    if dataset == "btad":
        return _btad_base(root), "ok"
    return _require_dir(root, "data root"), GOOD


def _scan_mvtec_like(base: Path, category: str, *, normal: str, test_only: bool = False) -> _Scan:
    """MVTec/MPDD (normal folder ``good``) and BTAD (``ok``; anomalous folder ``ko``). A category
    without a test folder has training records only: `fit` needs no more, and `test` says so.
    With `test_only`, no training folder is needed and none is read."""
    category_dir = _require_category(base, category)
    test_dir = category_dir / "test"
    truth_dir = category_dir / "ground_truth"
    train_dir = None if test_only else _require_dir(category_dir / "train" / normal, "training folder")
    defect_dirs = {entry.name: entry for entry in _subdirs(test_dir)} if test_dir.is_dir() else {}
    truth_dirs = _subdirs(truth_dir) if truth_dir.is_dir() else []
    _refuse_unread_subfolders([("training folder", train_dir)] + [("test folder", d) for d in defect_dirs.values()]
                              + [("mask folder", d) for d in truth_dirs],
                              reader="this layout", remedy="move them up into it")
    records = [] if train_dir is None else [_normal(path, category, "train") for path in _images_in(train_dir)]
    orphans: list[Path] = []
    for defect, folder in sorted(defect_dirs.items()):
        # normal test images may have (all-black) masks too, as custom trees often do
        masks, unmatched = _match_masks(_images_in(folder), truth_dir / defect)
        orphans += unmatched
        if defect == normal:
            records += [Record(path, mask, NORMAL, GOOD, category, "test") for path, mask in masks]
        else:
            records += [Record(path, mask, ANOMALOUS, defect, category, "test") for path, mask in masks]
    for folder in truth_dirs:
        if folder.name not in defect_dirs:
            orphans += _images_in(folder)
    return _Scan(sort_records(records), sorted(orphans))


def _scan_visa(root: Path, category: str) -> _Scan:
    rows = [row for row in _read_visa_rows(root) if row["object"] == category]
    split_file = root / VISA_SPLIT_FILE
    if not rows:
        raise RealnetError(f"{split_file}: no rows for category '{category}'")
    records = []
    first_line: dict[Path, int] = {}
    for row in rows:
        split, label, mask = row["split"], row["label"], row["mask"]
        if split not in _SPLITS or label not in ("normal", "anomaly"):
            raise RealnetError(
                f"{split_file}: bad split/label '{split}/{label}' for {row['image']}"
            )
        if split == "train" and label == "anomaly":  # fit would drop it, `data check` count it as a test image
            raise RealnetError(f"{split_file}: line {row['line']} lists anomalous image {row['image']} for training; "
                               "the one-class split trains on normal images only")
        image = _visa_path(root, row["image"], row["line"])
        if image in first_line:  # counted twice in the metrics, or both normal and anomalous
            raise RealnetError(f"{split_file}: {image.relative_to(root).as_posix()} is listed on lines "
                               f"{first_line[image]} and {row['line']}; list each image once")
        first_line[image] = row["line"]
        records.append(
            Record(
                image=image,
                mask=_visa_path(root, mask, row["line"]) if mask else None,
                label=NORMAL if label == "normal" else ANOMALOUS,
                defect=GOOD if label == "normal" else FOLDER_ANOMALY,
                category=category,
                split=split,
            )
        )
    listed = {record.mask for record in records if record.mask is not None}
    mask_dir = root / category / "Data" / "Masks" / "Anomaly"  # where VisA keeps them; a custom tree may not
    orphans = [path for path in _images_in(mask_dir) if path not in listed] if mask_dir.is_dir() else []
    return _Scan(sort_records(records), orphans)


def _folder_orphan_masks(abnormal_dir: str | Path | None, mask_dir: str | Path | None) -> list:
    if mask_dir is None:
        return []
    if abnormal_dir is None:
        return _images_in(_require_dir(Path(mask_dir), "mask folder"))
    return _abnormal_pairs(abnormal_dir, mask_dir)[1]


def _abnormal_pairs(abnormal_dir: str | Path, mask_dir: str | Path | None
                    ) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """The anomalous images with their masks, and the unmatched masks. Masks may share the images'
    folder; there only ``<stem>_mask`` files are masks, so that no mask is taken for an image."""
    images = _images_in(_require_dir(Path(abnormal_dir), "abnormal folder"))
    if mask_dir is None:
        return _match_masks(images, None)
    masks = _require_dir(Path(mask_dir), "mask folder")
    if masks.resolve() != Path(abnormal_dir).resolve():
        return _match_masks(images, masks)
    suffixed = [path for path in images if path.stem.endswith(MASK_SUFFIX)]
    return _match_masks([path for path in images if path not in suffixed], None, candidates=suffixed)


def _split_by_hash(images: list[Path], test_ratio: float, seed: int) -> tuple[list, list]:
    if not 0.0 <= test_ratio < 1.0:
        raise RealnetError(f"test_ratio must be in [0, 1), got {test_ratio}")
    n_test = 0
    if test_ratio > 0 and len(images) > 1:
        n_test = min(len(images) - 1, max(1, math.floor(test_ratio * len(images) + 0.5)))

    def key(path: Path) -> str:
        return hashlib.sha256(f"{seed}:".encode() + os.fsencode(path.name)).hexdigest()  # any name's bytes

    ranked = sorted(images, key=key)
    test = set(ranked[:n_test])
    return [path for path in images if path not in test], [path for path in images if path in test]


def _match_masks(
    images: list[Path], mask_dir: Path | None, candidates: list[Path] | None = None
) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """Pair each image with ``<stem>_mask.*`` or ``<stem>.*`` in mask_dir (or among `candidates`);
    also the unmatched."""
    if candidates is None:
        candidates = _images_in(mask_dir) if mask_dir is not None and mask_dir.is_dir() else []
    by_stem = {path.stem: path for path in candidates}
    pairs = []
    used = set()
    for image in images:
        mask = by_stem.get(f"{image.stem}{MASK_SUFFIX}") or by_stem.get(image.stem)
        if mask is not None:
            used.add(mask)
        pairs.append((image, mask))
    return pairs, [path for path in candidates if path not in used]


def _read_visa_rows(root: Path) -> list[dict[str, str | int]]:
    """The split file's rows, header names and fields stripped (spreadsheets pad them), each with
    the number of the line it ends on."""
    split_file = root / VISA_SPLIT_FILE
    if not split_file.is_file():
        _require_dir(root, "data root")
        raise RealnetError(f"VisA split file {split_file} not found")
    try:
        with split_file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or ()]
            missing = [name for name in _VISA_COLUMNS if name not in reader.fieldnames]
            if missing:
                raise RealnetError(f"{split_file}: missing column(s) {', '.join(missing)}")
            return [{**{name: (row[name] or "").strip() for name in _VISA_COLUMNS}, "line": reader.line_num}
                    for row in reader]
    except UnicodeDecodeError as error:  # e.g. saved by a spreadsheet in a legacy code page
        raise not_utf8(split_file, error) from None
    except csv.Error as error:
        raise RealnetError(f"{split_file}: not a readable CSV file ({error})") from None


def _visa_path(root: Path, listed: str, line: int) -> Path:
    """A split file's path under root. Windows backslashes become "/", which pathlib takes as the
    separator on every platform (on POSIX a backslash would stay part of a file name)."""
    relative = PurePosixPath(listed.replace("\\", "/"))
    if relative.is_absolute() or PureWindowsPath(listed).drive:
        raise RealnetError(f"{root / VISA_SPLIT_FILE}: line {line} lists {listed}, an absolute path; list paths "
                           "relative to the data root, as VisA's split files do")
    return root / relative


def _btad_base(root: Path) -> Path:
    nested = root / BTAD_FOLDER
    return nested if nested.is_dir() else _require_dir(root, "data root")


def _require_category(base: Path, category: str) -> Path:
    category_dir = base / category
    if not category_dir.is_dir():
        found = sorted(e.name for e in _subdirs(base) if (e / "train").is_dir())
        hint = f" (categories there: {', '.join(found)})" if found else ""
        raise RealnetError(f"category folder {category_dir} not found{hint}")
    return category_dir


def _refuse_unread_subfolders(folders: Sequence[tuple[str, str | Path | None]], reader: str = "the folder dataset",
                              remedy: str = "move them up into it, or give the subfolder itself") -> None:
    """Every layout reads the images directly in each of its folders; images in their subfolders (a
    folder per production line or camera) would be left out of training or testing without a word.
    A subfolder that is itself one of the given folders (masks inside the abnormal folder) is read."""
    given = {Path(folder).resolve() for _, folder in folders if folder is not None}
    for label, folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue  # a missing folder is named where it is read
        unread = [sub for sub in _subdirs(Path(folder)) if sub.resolve() not in given and _holds_images(sub)]
        if unread:
            names = ", ".join(f"{sub.name}/" for sub in unread[:3]) + (" ..." if len(unread) > 3 else "")
            raise RealnetError(f"{label} {folder}: its subfolder(s) {names} hold images, which {reader} "
                               f"does not read (only the images directly in the folder); {remedy}")


def _holds_images(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in
                                                                 path.relative_to(folder).parts)
               for path in folder.rglob("*"))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise RealnetError(f"{what} {path} not found")
    return path


def _subdirs(folder: Path) -> list[Path]:
    return sorted(e for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path, *, required: bool = False) -> list[Path]:
    images = sorted(
        entry
        for entry in folder.iterdir()
        if entry.suffix.lower() in IMAGE_EXTENSIONS
        and not entry.name.startswith(".")
        and (entry.is_file() or (entry.is_symlink() and not entry.exists()))  # a broken link: named when read
    )
    if required and not images:
        raise RealnetError(f"no image files in {folder}")
    return images


def _normal(path: Path, category: str, split: str) -> Record:
    return Record(path, None, NORMAL, GOOD, category, split)


def sort_records(records: Iterable[Record]) -> list[Record]:
    """The loaders' order: train before test, good before defect types, then names."""
    def key(r: Record) -> tuple:
        return (r.split != "train", r.split, r.defect != GOOD, r.defect, r.image.name, str(r.image))

    return sorted(records, key=key)


def _check_dataset_name(dataset: str) -> None:
    if dataset not in DATASETS:
        raise RealnetError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
