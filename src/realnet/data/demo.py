"""The embedded demo dataset: real texture photographs with drawn defects, in the MVTec-AD layout.

Normal images are random crops (any of the 8 flips/rotations by 90 degrees) of the grayscale
texture photographs shipped with scikit-image (`skimage.data.brick`, `gravel`, `grass`, 512 x 512),
resized to `size`: training images from the photo's left half, test images from its right half,
so no test image shows texture the model was trained on. Each defect image is a fresh test crop
with one drawn defect and its exact mask (the pixels the drawing changed):

- scratch: a thin, gently curving polyline pulled towards a bright or dark tone;
- hole: a filled ellipse darkened to 25-45 % of its brightness (the texture stays visible);
- stain: an irregular blob of overlapping ellipses, brightened or darkened by 35-60 grey
  levels with softened (but nonzero) edges;
- crack: a jagged random walk with a side branch, darkened to 30-50 %.

The defects are drawn with OpenCV polylines and ellipses, deliberately unrelated to the Perlin /
Eq. 3 synthesis used in training, so the demo measures generalisation rather than recall of the
training-time anomalies. Everything is seeded: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from realnet.errors import RealnetError
from realnet.files import remove_stale_staging, staging_dir

DEMO_CATEGORIES = ("brick", "gravel", "grass")
DEFECT_TYPES = ("scratch", "hole", "stain", "crack")
MARKER = "realnet_demo.json"
DEMO_VERSION = 2  # bump when the generator's output changes, so old trees are rebuilt
CROP_SIDE = (0.6, 0.95)  # a crop's side, as a fraction of the shorter side of the photo part
MAX_DRAWS = 10  # attempts at a defect that changes at least one pixel

Defect = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def texture_photo(category: str) -> np.ndarray:
    """The scikit-image photograph behind a demo category, grayscale uint8 (512, 512)."""
    if category not in DEMO_CATEGORIES:
        raise RealnetError(f"unknown demo category {category!r}; choose from {', '.join(DEMO_CATEGORIES)}")
    from skimage import data

    return getattr(data, category)()


def normal_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of `CROP_SIDE` of the photo's shorter side, randomly flipped/rotated,
    resized to size."""
    side = int(rng.integers(int(CROP_SIDE[0] * min(photo.shape)), int(CROP_SIDE[1] * min(photo.shape)) + 1))
    top = int(rng.integers(photo.shape[0] - side + 1))
    left = int(rng.integers(photo.shape[1] - side + 1))
    crop = photo[top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(4)))
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


def _point(size: int, rng: np.random.Generator, margin: float = 0.15) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, size=2)


def _path(start: np.ndarray, heading: float, steps: int, step: float, wobble: float,
          rng: np.random.Generator) -> np.ndarray:
    """Polyline points of a walk whose heading changes by N(0, wobble) radians per step."""
    headings = heading + np.cumsum(rng.normal(0.0, wobble, size=steps))
    moves = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _draw_lines(shape: tuple[int, int], paths: Sequence[np.ndarray], thickness: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.polylines(mask, [np.round(p).astype(np.int32) for p in paths], False, 1, thickness, cv2.LINE_8)
    return mask.astype(bool)


def draw_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    steps = 12
    length = rng.uniform(0.25, 0.5) * size
    path = _path(_point(size, rng), rng.uniform(0, 2 * np.pi), steps, length / steps, 0.06, rng)
    mask = _draw_lines(image.shape, [path], max(1, round(size * rng.uniform(0.006, 0.012))))
    tone = 225.0 if rng.random() < 0.5 else 30.0
    strength = rng.uniform(0.55, 0.8)
    out = image.astype(np.float32)
    out[mask] = (1 - strength) * out[mask] + strength * tone
    return np.round(out).astype(np.uint8), mask


def draw_hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    centre = tuple(int(v) for v in np.round(_point(size, rng)))
    axes = tuple(max(2, round(size * rng.uniform(0.025, 0.06))) for _ in range(2))
    mask = np.zeros(image.shape, np.uint8)
    cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1, cv2.LINE_8)
    mask = mask.astype(bool)
    out = image.astype(np.float32)
    out[mask] *= rng.uniform(0.25, 0.45)
    return np.round(out).astype(np.uint8), mask


def draw_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    centre = _point(size, rng, margin=0.2)
    radius = rng.uniform(0.04, 0.09) * size
    blob = np.zeros(image.shape, np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        offset = rng.normal(0.0, radius * 0.6, size=2)
        axes = tuple(max(2, round(radius * rng.uniform(0.5, 1.0))) for _ in range(2))
        cv2.ellipse(blob, tuple(int(v) for v in np.round(centre + offset)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    mask = blob.astype(bool)
    softened = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), radius / 4)
    weight = np.where(mask, np.maximum(softened, 0.3), 0.0)
    shift = rng.uniform(35.0, 60.0) * (1 if rng.random() < 0.5 else -1)
    out = image.astype(np.float32) + weight * shift
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


def draw_crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    step = size / 64
    main = _path(_point(size, rng), rng.uniform(0, 2 * np.pi), int(rng.integers(15, 30)), step, 0.45, rng)
    fork = main[int(rng.integers(3, len(main) - 2))]
    branch = _path(fork, rng.uniform(0, 2 * np.pi), int(rng.integers(5, 12)), step, 0.45, rng)
    mask = _draw_lines(image.shape, [main, branch], max(1, round(size * rng.uniform(0.004, 0.008))))
    out = image.astype(np.float32)
    out[mask] *= rng.uniform(0.3, 0.5)
    return np.round(out).astype(np.uint8), mask


DEFECTS: dict[str, Defect] = {"scratch": draw_scratch, "hole": draw_hole, "stain": draw_stain, "crack": draw_crack}


def visible_mask(mask: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """A drawn mask restricted to the pixels the drawing changed: darkening a black pixel or
    brightening a saturated one leaves it as it was, and it is then no defect pixel."""
    changed = before != after
    return mask & (changed.any(axis=2) if changed.ndim == 3 else changed)


def draw_visible_defect(draw: Defect, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`draw` on `image` with its visible mask, drawn again (up to MAX_DRAWS times) while that is empty."""
    for _ in range(MAX_DRAWS):
        drawn, mask = draw(image, rng)
        mask = visible_mask(mask, image, drawn)
        if mask.any():
            break
    return drawn, mask


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # encoded here and written by Python: cv2.imwrite crashes the process on a file name that is not UTF-8
    encoded, png = cv2.imencode(".png", image)
    if not encoded:
        raise RealnetError(f"cannot encode {path}")
    path.write_bytes(png.tobytes())


def _write_category(folder: Path, category: str, seed: int, size: int, n_train: int, n_test_good: int,
                    n_test_defect: int) -> None:
    # Seeded per category by name, so a category's images do not depend on which others are made.
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    train_part, test_part = np.hsplit(texture_photo(category), 2)
    for split, part, count in (("train", train_part, n_train), ("test", test_part, n_test_good)):
        for index in range(count):
            _write_png(folder / split / "good" / f"{index:03d}.png", normal_crop(part, size, rng))
    for defect, draw in DEFECTS.items():
        for index in range(n_test_defect):
            image, mask = draw_visible_defect(draw, normal_crop(test_part, size, rng), rng)
            _write_png(folder / "test" / defect / f"{index:03d}.png", image)
            _write_png(folder / "ground_truth" / defect / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)


def make_demo_dataset(
    root: str | Path,
    *,
    seed: int = 0,
    size: int = 256,
    n_train: int = 60,
    n_test_good: int = 16,
    n_test_defect: int = 6,
    categories: Sequence[str] = DEMO_CATEGORIES,
) -> Path:
    """Writes the demo dataset under `root` (MVTec-AD layout, grayscale PNGs, 0/255 masks) and
    returns `root`. Per category: `n_train` and `n_test_good` normal images and `n_test_defect`
    images of each defect type in `DEFECT_TYPES`.

    The tree is built in a temporary folder beside `root` and renamed into place, with a marker
    file `realnet_demo.json` holding the arguments. If `root` already holds a demo dataset made
    with the same arguments it is returned untouched; one made with other arguments is replaced.
    Any other non-empty `root` is refused, so no user data is ever overwritten.
    """
    root = Path(root)
    for category in categories:
        texture_photo(category)
    if size < 32 or min(n_train, n_test_good, n_test_defect) < 1:
        raise RealnetError(f"demo dataset needs size >= 32 and at least one image per group, got size={size}, "
                           f"n_train={n_train}, n_test_good={n_test_good}, n_test_defect={n_test_defect}")
    settings = {"version": DEMO_VERSION, "seed": seed, "size": size, "n_train": n_train,
                "n_test_good": n_test_good, "n_test_defect": n_test_defect, "categories": list(categories)}
    marker = root / MARKER
    if marker.is_file():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, ValueError):
            existing = None
        if existing == settings:
            return root
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise RealnetError(f"{root} exists and is not a realnet demo dataset; choose a new or empty folder")

    root.parent.mkdir(parents=True, exist_ok=True)
    for stage in (".tmp-", ".old-"):  # of a generation killed mid-way
        remove_stale_staging(root.parent, f".{root.name}{stage}")
    staging = staging_dir(root.parent, f".{root.name}.tmp-")
    try:
        for category in categories:
            _write_category(staging / category, category, seed, size, n_train, n_test_good, n_test_defect)
        (staging / MARKER).write_text(json.dumps(settings, indent=1) + "\n")
        if root.exists() and marker.is_file():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, retired / root.name)
            os.replace(staging, root)
            shutil.rmtree(retired)
        else:
            os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def draw_defect_rgb(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random demo defect on an RGB uint8 image: drawn on its luminance, and the change is
    added to every channel. Used to make validation anomalies that share no code with the
    training-time synthesis."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)

    def on_every_channel(_, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        drawn, mask = DEFECTS[DEFECT_TYPES[int(generator.integers(len(DEFECT_TYPES)))]](gray, generator)
        change = drawn.astype(np.int16) - gray.astype(np.int16)
        return np.clip(image.astype(np.int16) + change[..., None], 0, 255).astype(np.uint8), mask

    return draw_visible_defect(on_every_channel, image, rng)
