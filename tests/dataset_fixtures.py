"""Tiny dataset trees that copy the real layouts exactly (folder names, extensions, mask names).

Images are deterministic for a given seed. Normal images share one smooth pattern plus a little
noise; every anomalous image carries a visible defect, a bright disc (value 255), exactly where
its mask is nonzero. Sizes are (height, width). Every `make_*` function returns the dataset root
to pass as ``--data`` / ``load_dataset(root, ...)``.
"""

from __future__ import annotations

import csv
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

BTAD_EXTENSIONS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def normal_image(rng: np.random.Generator, size: tuple[int, int], gray: bool = False) -> np.ndarray:
    """(H, W) uint8 if gray else (H, W, 3): a fixed smooth pattern plus noise of a few levels."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    pattern = 90 + 30 * np.sin(x / 3.0) * np.cos(y / 4.0)
    channels = 1 if gray else 3
    tint = np.array([1.0, 0.9, 0.8][:channels])
    noise = rng.normal(0.0, 3.0, size=(height, width, channels))
    image = np.clip(pattern[:, :, None] * tint + noise, 0, 255).astype(np.uint8)
    return image[:, :, 0] if gray else image


def add_blob(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A copy of `image` with a bright disc (255) and its (H, W) bool mask."""
    height, width = image.shape[:2]
    radius = max(2, min(height, width) // 6)
    cy = rng.integers(radius, height - radius)
    cx = rng.integers(radius, width - radius)
    y, x = np.mgrid[0:height, 0:width]
    mask = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    defective = image.copy()
    defective[mask] = 255
    return defective, mask


def save(path: Path, array: np.ndarray) -> Path:
    """Write an array with Pillow (format from the extension), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec_tree(
    root: str | Path,
    category: str = "widget",
    n_train: int = 4,
    n_test_good: int = 2,
    defects: Mapping[str, int] | None = None,
    size: tuple[int, int] = (32, 40),
    gray: bool = False,
    image_ext: str = ".png",
    seed: int = 0,
) -> Path:
    """MVTec-AD / MPDD layout; ``gray=True, image_ext=".jpg"`` gives the Magnetic Tile flavour.

    `defects` maps defect type -> image count (default ``{"scratch": 2}``). Names as in MVTec:
    ``000.png``; masks ``ground_truth/<defect>/000_mask.png`` with values 0/255.
    """
    root = Path(root)
    base = root / category
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        save(base / "train" / "good" / f"{i:03d}{image_ext}", normal_image(rng, size, gray))
    for i in range(n_test_good):
        save(base / "test" / "good" / f"{i:03d}{image_ext}", normal_image(rng, size, gray))
    for defect, count in ({"scratch": 2} if defects is None else defects).items():
        for i in range(count):
            image, mask = add_blob(normal_image(rng, size, gray), rng)
            save(base / "test" / defect / f"{i:03d}{image_ext}", image)
            save(base / "ground_truth" / defect / f"{i:03d}_mask.png", _mask_255(mask))
    return root


def make_btad_tree(
    root: str | Path,
    categories: tuple[str, ...] = ("01", "02", "03"),
    n_train: int = 3,
    n_test_good: int = 2,
    n_test_bad: int = 2,
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
) -> Path:
    """BTAD: ``BTech_Dataset_transformed/<cat>/{train/ok, test/ok, test/ko, ground_truth/ko}``.

    Extensions per category as distributed (`BTAD_EXTENSIONS`); a mask has its image's stem.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for category in categories:
        image_ext, mask_ext = BTAD_EXTENSIONS[category]
        base = root / "BTech_Dataset_transformed" / category
        for i in range(n_train):
            save(base / "train" / "ok" / f"{i:04d}{image_ext}", normal_image(rng, size))
        for i in range(n_test_good):
            save(base / "test" / "ok" / f"{i:04d}{image_ext}", normal_image(rng, size))
        for i in range(n_test_bad):
            image, mask = add_blob(normal_image(rng, size), rng)
            save(base / "test" / "ko" / f"{i:04d}{image_ext}", image)
            save(base / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", _mask_255(mask))
    return root


def make_visa_tree(
    root: str | Path,
    categories: tuple[str, ...] = ("candle",),
    n_train: int = 4,
    n_test_good: int = 2,
    n_test_bad: int = 2,
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
) -> Path:
    """VisA: ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, ``<cat>/Data/Masks/Anomaly/*.png``
    and ``split_csv/1cls.csv``. Mask k of a category marks its defect with the value k + 1
    (not 255), as VisA masks may.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for category in categories:
        data = Path(category) / "Data"
        for i in range(n_train + n_test_good):
            image = data / "Images" / "Normal" / f"{i:04d}.JPG"
            save(root / image, normal_image(rng, size))
            split = "train" if i < n_train else "test"
            rows.append([category, split, "normal", image.as_posix(), ""])
        for i in range(n_test_bad):
            image_array, mask = add_blob(normal_image(rng, size), rng)
            image = data / "Images" / "Anomaly" / f"{i:03d}.JPG"
            mask_path = data / "Masks" / "Anomaly" / f"{i:03d}.png"
            save(root / image, image_array)
            save(root / mask_path, (mask * (i + 1)).astype(np.uint8))
            rows.append([category, "test", "anomaly", image.as_posix(), mask_path.as_posix()])
    split_file = root / "split_csv" / "1cls.csv"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    with split_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def make_folder_tree(
    root: str | Path,
    n_normal: int = 10,
    n_abnormal: int = 3,
    n_normal_test: int = 0,
    size: tuple[int, int] = (32, 32),
    mask_suffix: str = "",
    seed: int = 0,
) -> Path:
    """Custom data: ``normal/``, ``abnormal/``, ``masks/<stem><mask_suffix>.png`` and, when
    n_normal_test > 0, ``normal_test/``. Images are ``img_000.png``, ...
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        save(root / "normal" / f"img_{i:03d}.png", normal_image(rng, size))
    for i in range(n_normal_test):
        save(root / "normal_test" / f"test_{i:03d}.png", normal_image(rng, size))
    for i in range(n_abnormal):
        image, mask = add_blob(normal_image(rng, size), rng)
        save(root / "abnormal" / f"bad_{i:03d}.png", image)
        save(root / "masks" / f"bad_{i:03d}{mask_suffix}.png", _mask_255(mask))
    return root


def _mask_255(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def fit_tiny_widget_run(base: Path, overrides: list[str] = ()) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """(data_root, run_dir, fit_images, holdout_images): the "widget" fixture tree (80x96 images,
    12 normal training, 4 normal and 4 "scratch" test images) fitted on the CPU with the tiny
    preset plus `overrides`, and the run's fit and held-out normal training images."""
    from realnet.config import load_config
    from realnet.data.layouts import load_dataset
    from realnet.engine.fit import FitRequest, fit, split_holdout
    from realnet.engine.runtime import load_samples

    data_root = make_mvtec_tree(base / "data", "widget", n_train=12, n_test_good=4, defects={"scratch": 4},
                                size=(80, 96))
    config = load_config("tiny", overrides=list(overrides))
    run_dir = base / "run"
    fit(FitRequest(config=config, data_root=data_root, category="widget", out=run_dir, device="cpu",
                   progress=False))
    records = [r for r in load_dataset(data_root, "widget") if r.split == "train" and r.label == 0]
    images = load_samples(records, config.train.image_size, skip_bad=False, desc="", progress=False)[0]
    fit_rows, holdout_rows = split_holdout(len(images), config.train.holdout_fraction, config.train.seed)
    return data_root, run_dir, images[fit_rows], images[holdout_rows]


def refuse_listing(monkeypatch, folder: Path) -> None:
    """Listing `folder` fails as it does for a folder without read permission (root, who runs the
    tests in CI, could list a chmod 000 one)."""
    import os

    scandir = os.scandir

    def refusing(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)


def legacy_encoded(folder: Path, name: bytes) -> Path:
    """`folder` / `name`, a name in a legacy encoding (not UTF-8) as os.fsdecode gives it to Python;
    skips the test where the file system refuses such names (macOS, Windows)."""
    import os

    import pytest

    path = folder / os.fsdecode(name)
    try:
        path.touch()
        path.unlink()
    except OSError as error:
        pytest.skip(f"the file system refuses a name that is not UTF-8 ({error.strerror})")
    return path


def handmade_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, scanlines: bytes = b"") -> bytes:
    """A PNG made by hand (8-bit grey by default), for what Pillow cannot write (16-bit grey + alpha,
    broken headers); without `scanlines` its header only. Each scanline starts with its filter byte."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    pixels = zlib.compress(scanlines)
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
