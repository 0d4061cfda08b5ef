"""Anomaly sources for training-time synthesis.

Two kinds, told apart by the method they have:
- texture sources (`DTDSource`, `SIASource`) give the image P of paper Eq. 3; the synthesizer
  blends it into the normal image under a Perlin x foreground mask with opacity delta;
- patch sources (`CutPasteSource`, `NSASource`, `ShadeSource`, `CrackSource`) produce the
  anomalous image and its mask themselves.

This module is the one place in `synthesis/` that reads files: texture and NSA sources load their
images through `realnet.data.io` on first use, resized to the training size, and keep them decoded
in memory (`cache=True`, about 200 KB per image at 256 px), so later draws touch no disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from realnet.data.io import read_image, resize_image
from realnet.data.layouts import IMAGE_EXTENSIONS
from realnet.data.records import Record
from realnet.errors import RealnetError
from realnet.synthesis.perlin import perlin_mask


@runtime_checkable
class TextureSource(Protocol):
    """Gives the anomaly image P of Eq. 3."""

    def texture(self, rng: np.random.Generator) -> np.ndarray:
        """An RGB uint8 (size, size, 3) image."""
        ...


@runtime_checkable
class PatchSource(Protocol):
    """Makes an anomalous image and its mask from a normal image."""

    def paste(
        self, image: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(anomalous RGB uint8 image, bool mask); the patch lands on `foreground` when given.
        The mask may be empty when the paste changed nothing; callers retry."""
        ...


ImageItem = Path | np.ndarray


def collect_images(root_or_items: str | Path | Sequence[str | Path | np.ndarray] | np.ndarray,
                   what: str) -> list[ImageItem]:
    """Image files under a folder (recursively, sorted, hidden files skipped), or the given files
    and/or in-memory RGB uint8 images (a list, or an (N, H, W, 3) array); `what` names the source
    in errors."""
    if isinstance(root_or_items, (str, Path)):
        root = Path(root_or_items)
        if not root.is_dir():
            raise RealnetError(f"{what} folder not found: {root}")
        files = sorted(_image_files_below(root, what))
        if not files:
            raise RealnetError(f"{what} folder has no image files: {root}")
        return list(files)
    items = [item if isinstance(item, np.ndarray) else Path(item) for item in root_or_items]
    if not items:
        raise RealnetError(f"no images given for the {what} source")
    return items


def _image_files_below(root: Path, what: str) -> Iterator[Path]:
    """Image files below `root`, linked folders entered (a class folder linked in from elsewhere),
    each real folder once (a link to a folder above would loop); a folder that cannot be listed is
    an error naming it, not a silent gap in the source."""
    def unlistable(error: OSError) -> None:
        raise RealnetError(f"{what} folder {error.filename}: cannot list it ({error.strerror or error})")

    visited: set[str] = set()
    for folder, dirs, names in os.walk(root, onerror=unlistable, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".") and path.is_file():
                yield path


def changed_pixels(out: np.ndarray, image: np.ndarray, tolerance: int) -> np.ndarray:
    """Where an RGB uint8 paste `out` differs from `image` by more than `tolerance` in some channel
    (cv2.absdiff stays in uint8, where a signed difference would need int16 copies)."""
    difference = cv2.absdiff(out, image)
    return np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2]) > tolerance


def find_dtd_root(given: str | Path | None, data_root: Path) -> Path:
    """DTD is looked up in `given` (--dtd, synthesis.dtd_root), then $REALNET_DTD, then <data root>/dtd.
    Every image below the folder is a texture, so one that holds the data root is refused: its
    training and test images would be blended in as anomalies."""
    for folder, origin in ((given, "--dtd or synthesis.dtd_root"), (os.environ.get("REALNET_DTD") or None,
                                                                     "$REALNET_DTD")):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise RealnetError(f"DTD folder {folder} not found ({origin})")
        if Path(data_root).resolve().is_relative_to(Path(folder).resolve()):
            raise RealnetError(f"DTD folder {folder} ({origin}) holds the data root {data_root}: every image below it, "
                               "test images included, would become a texture; give the DTD folder itself (e.g. "
                               f"{Path(data_root) / 'dtd'})")
        return Path(folder)
    if (Path(data_root) / "dtd").is_dir():
        return Path(data_root) / "dtd"
    raise RealnetError(
        "the dtd synthesis source needs the Describable Textures Dataset: pass --dtd DIR, set "
        f"REALNET_DTD, or place it at {Path(data_root) / 'dtd'}"
    )


_OWN_FOLDER = {"dtd": "--dtd the DTD folder itself", "sia": "--sia the SDAS image bank `realnet sdas generate` wrote"}


def texture_folders(names: Iterable[str], category: str, dtd_root: Path | None,
                    sia_root: str | Path | None) -> dict[str, Path]:
    """The folders whose images the named sources blend in: DTD's, and the SIA bank's category folder."""
    folders = {"dtd": dtd_root, "sia": None if sia_root is None else Path(sia_root) / category}
    return {name: folders[name] for name in names if folders.get(name) is not None}


def refuse_texture_folders_holding_the_data(folders: dict[str, Path], records: Iterable[Record]) -> None:
    """Every image below a texture folder is blended in as an anomaly, so one that holds the
    dataset's images or masks (--dtd DATA/CATEGORY, --sia DATA) would train on its test images."""
    roots = {name: Path(os.path.realpath(folder)) for name, folder in folders.items() if Path(folder).is_dir()}
    if not roots:
        return
    for path in (path for record in records for path in (record.image, record.mask) if path is not None):
        real = Path(os.path.realpath(path))
        holder = next((name for name, root in roots.items() if real.is_relative_to(root)), None)
        if holder is not None:
            raise RealnetError(f"the {holder} folder {folders[holder]} holds the dataset's {path}: every image below "
                               f"it becomes a texture, test images and masks included; give {_OWN_FOLDER[holder]}")


def resize_texture(image: np.ndarray, size: int) -> np.ndarray:
    """Straight resize of an (H, W, 3) uint8 texture to (size, size, 3) with OpenCV's bilinear,
    which does not low-pass before downscaling: the authors' code resizes the DTD and SDAS images
    this way (`cv2.resize`), so a 640 px texture keeps its fine grain at 256 px. The images being
    inspected are resized with `realnet.data.io.resize_image` (antialiased), as theirs are."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


class ImageBank:
    """Images (files or arrays) as (size, size, 3) uint8, read and resized with `resize` on first
    use and then kept in memory when `cache` is set."""

    def __init__(self, items: list[ImageItem], size: int, cache: bool = True,
                 resize: Callable[[np.ndarray, int], np.ndarray] = resize_image):
        self.items, self.size, self.cache, self.resize = items, size, cache, resize
        self._decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> np.ndarray:
        image = self._decoded.get(index)
        if image is None:
            item = self.items[index]
            image = item if isinstance(item, np.ndarray) else read_image(item)
            if image.shape[:2] != (self.size, self.size):
                image = self.resize(image, self.size)
            if self.cache:
                self._decoded[index] = image
        return image

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return self[int(rng.integers(len(self.items)))]


# --- DTD augmentations: 3 distinct ones out of these 10 per texture, applied in the drawn order. ---
# They reproduce the authors' imgaug list (RealNet `rand_augment`, from DRAEM) with imgaug 0.4.0's
# defaults: each op's probability, parameter ranges and rounding; the Pillow ops are Pillow's own.


def _lookup(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[image] if table.ndim == 1 else np.stack([table[c][image[..., c]] for c in range(3)], axis=-1)


def _pillow(image: np.ndarray, operation: Callable) -> np.ndarray:
    from PIL import Image

    return np.asarray(operation(Image.fromarray(image)))


def gamma_contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.GammaContrast((0.5, 2), per_channel=True): 255 * (x / 255) ** gamma rounded down,
    gamma ~ U(0.5, 2) per channel."""
    gammas = rng.uniform(0.5, 2.0, size=3)
    levels = np.arange(256) / 255.0
    tables = np.stack([255.0 * levels**g for g in gammas]).astype(np.uint8)
    return _lookup(image, tables)


# imgaug's WithBrightnessChannels: a colour space drawn per image and its brightness channel.
BRIGHTNESS_SPACES = (
    (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0),
    (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
    (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1),
    (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0),
    (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0),
    (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0),
)


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): in one of six colour spaces
    (Y of YCrCb / YUV, V of HSV, L of HLS / Lab / Luv), the brightness channel times U(0.8, 1.2)
    (rounded down) and plus round(U(-30, 30)), in random order, each step clipped to 0..255."""
    to_space, from_space, channel = BRIGHTNESS_SPACES[int(rng.integers(len(BRIGHTNESS_SPACES)))]
    gain, shift, add_first = rng.uniform(0.8, 1.2), int(np.round(rng.uniform(-30.0, 30.0))), rng.random() < 0.5
    levels = np.arange(256)
    multiply = np.clip(levels * gain, 0, 255).astype(np.uint8)
    add = np.clip(levels + shift, 0, 255).astype(np.uint8)
    converted = cv2.cvtColor(image, to_space)
    steps = (add, multiply) if add_first else (multiply, add)
    converted[..., channel] = steps[1][steps[0][converted[..., channel]]]
    return cv2.cvtColor(converted, from_space)


def sharpen(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.pillike.EnhanceSharpness(): Pillow's Sharpness with factor ~ U(0, 2), i.e. the SMOOTH
    filtered image at 0 (a blur), the image at 1, twice as sharp at 2."""
    from PIL import ImageEnhance

    factor = rng.uniform(0.0, 2.0)
    return _pillow(image, lambda pil: ImageEnhance.Sharpness(pil).enhance(factor))


def hue_saturation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.AddToHueAndSaturation((-50, 50), per_channel=True): independent U{-50..50} for hue and
    saturation; the hue's is scaled to OpenCV's 180 steps (truncated) and wraps, the saturation is
    clipped."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hue_value, saturation_shift = rng.integers(-50, 51, size=2)
    hsv[..., 0] = (hsv[..., 0] + int(hue_value / 255.0 * 180)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + saturation_shift, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def solarize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.Solarize(0.5, threshold=(32, 128)): with probability 0.5, inverts the pixels at or
    above int(U(32, 128)); otherwise the image is unchanged."""
    if rng.random() >= 0.5:
        return image
    threshold = int(rng.uniform(32.0, 128.0))
    return np.where(image >= threshold, 255 - image, image).astype(np.uint8)


def posterize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.Posterize(): keeps the top U{1..8} bits of every value (8 bits: unchanged)."""
    bits = int(rng.integers(1, 9))
    return (image & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8)


def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.Invert(): 255 - x."""
    return (255 - image).astype(np.uint8)


def autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.pillike.Autocontrast(): Pillow's autocontrast per channel, ignoring U{0..20} % of the
    pixels at each end of the histogram."""
    from PIL import ImageOps

    cutoff = int(rng.integers(0, 21))
    return _pillow(image, lambda pil: ImageOps.autocontrast(pil, cutoff=cutoff))


def equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.pillike.Equalize(): Pillow's histogram equalisation per channel."""
    from PIL import ImageOps

    return _pillow(image, ImageOps.equalize)


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iaa.Affine(rotate=(-45, 45)): rotation by U(-45, 45) degrees about the centre, bilinear;
    uncovered corners are black."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), rng.uniform(-45.0, 45.0), 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


DTD_AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gamma_contrast": gamma_contrast,
    "brightness": brightness,
    "sharpen": sharpen,
    "hue_saturation": hue_saturation,
    "solarize": solarize,
    "posterize": posterize,
    "invert": invert,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "rotate": rotate,
}


def augment_texture(
    image: np.ndarray, rng: np.random.Generator, count: int = 3
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Applies `count` distinct augmentations of `DTD_AUGMENTATIONS`, in random order; returns the
    image and the names applied."""
    names = tuple(rng.choice(list(DTD_AUGMENTATIONS), size=count, replace=False))
    for name in names:
        image = DTD_AUGMENTATIONS[name](image, rng)
    return image, names


class DTDSource:
    """DTD textures (Cimpoi et al. 2014) as P: a random texture resized to `size`, with 3
    distinct random augmentations. `root_or_files`: a folder searched recursively (e.g. `dtd/images`
    or a DTD root) or a list of image files."""

    def __init__(self, root_or_files: str | Path | Sequence[str | Path], size: int, cache: bool = True):
        self.bank = ImageBank(collect_images(root_or_files, "dtd"), size, cache, resize_texture)

    def texture(self, rng: np.random.Generator) -> np.ndarray:
        image, _ = augment_texture(self.bank.draw(rng), rng)
        return image


class SIASource:
    """SDAS images of the category (paper Sec. 3.1, the SIA bank) as P: a random one resized to
    `size`, not augmented. It is not pixel-aligned with the normal image, as in the paper."""

    def __init__(self, folder: str | Path, size: int, cache: bool = True):
        self.bank = ImageBank(collect_images(folder, "sia"), size, cache, resize_texture)

    def texture(self, rng: np.random.Generator) -> np.ndarray:
        return self.bank.draw(rng)


# --- patch sources ---


def _box_shape(rng: np.random.Generator, shape: tuple[int, int], area: tuple[float, float],
               aspect: tuple[float, float], minimum: int) -> tuple[int, int]:
    """(height, width) of a box covering U(area) of the image with log-uniform aspect h/w."""
    height, width = shape
    box_area = rng.uniform(*area) * height * width
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
    box_h = int(np.clip(round(np.sqrt(box_area * ratio)), minimum, height))
    box_w = int(np.clip(round(np.sqrt(box_area / ratio)), minimum, width))
    return box_h, box_w


def _destination(rng: np.random.Generator, shape: tuple[int, int], box: tuple[int, int],
                 foreground: np.ndarray | None) -> tuple[int, int]:
    """Top-left corner of a box of `box` size inside `shape`, centred on a random foreground pixel
    (any pixel when `foreground` is None or empty), shifted as needed to stay inside the image."""
    height, width = shape
    box_h, box_w = box
    if foreground is not None and foreground.any():
        ys, xs = np.nonzero(foreground)
        pick = int(rng.integers(len(ys)))
        centre_y, centre_x = int(ys[pick]), int(xs[pick])
    else:
        centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top = int(np.clip(centre_y - box_h // 2, 0, height - box_h))
    left = int(np.clip(centre_x - box_w // 2, 0, width - box_w))
    return top, left


def color_jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """ColorJitter on a uint8 RGB patch: brightness, contrast and saturation factors ~ U(1 - s, 1 + s),
    then a hue shift of U(-s, s) turns of the colour wheel (CutPaste uses s = 0.1)."""
    out = patch.astype(np.float32) * rng.uniform(1.0 - strength, 1.0 + strength)
    gray_mean = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).mean()
    out = (out - gray_mean) * rng.uniform(1.0 - strength, 1.0 + strength) + gray_mean
    gray = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    out = (out - gray[..., None]) * rng.uniform(1.0 - strength, 1.0 + strength) + gray[..., None]
    hsv = cv2.cvtColor(np.clip(np.round(out), 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
    hue_shift = int(round(rng.uniform(-strength, strength) * 256))
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + hue_shift) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


class CutPasteSource:
    """CutPaste (Li et al., CVPR 2021): a rectangle of the image itself covering U(area) of it, with
    aspect ratio log-uniform in `aspect`, optionally colour-jittered, pasted at another place.
    The mask is the pasted rectangle. The destination is redrawn (up to 10 times) while it would
    overlap the origin by more than half the patch in both axes, so the paste moves content."""

    def __init__(self, area: tuple[float, float] = (0.02, 0.15), aspect: tuple[float, float] = (0.3, 3.3),
                 jitter: float = 0.1):
        self.area, self.aspect, self.jitter = area, aspect, jitter

    def paste(
        self, image: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        box_h, box_w = _box_shape(rng, (height, width), self.area, self.aspect, minimum=2)
        src_top, src_left = int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1))
        for _ in range(10):
            top, left = _destination(rng, (height, width), (box_h, box_w), foreground)
            if abs(top - src_top) > box_h // 2 or abs(left - src_left) > box_w // 2:
                break
        patch = image[src_top:src_top + box_h, src_left:src_left + box_w]
        if self.jitter > 0:
            patch = color_jitter(patch, rng, self.jitter)
        out = image.copy()
        out[top:top + box_h, left:left + box_w] = patch
        mask = np.zeros((height, width), dtype=bool)
        mask[top:top + box_h, left:left + box_w] = True
        return out, mask


class NSASource:
    """Natural Synthetic Anomalies (Schlüter et al., ECCV 2022): a rectangle from another normal
    image of the category, side lengths U(side) of the image's, Poisson-blended into the image
    with `cv2.seamlessClone` (`clone` = "normal" or "mixed" gradients).

    `donors`: the normal images patches come from: a folder, files, or in-memory images (e.g. the
    training images the engine already holds). With None the patch comes from the image itself.

    The mask is where the result differs from the original by more than `tolerance` grey levels in
    any channel: Poisson blending matches the patch to its surroundings, so parts of the rectangle
    can end up unchanged and are not labelled anomalous. It may be empty (e.g. the same image
    drawn at the same place); the synthesizer then retries."""

    CLONE_FLAGS = {"normal": cv2.NORMAL_CLONE, "mixed": cv2.MIXED_CLONE}
    # seamlessClone leaves the image unchanged for rectangles of 8 px or less (measured, OpenCV 5.1)
    MIN_SIDE = 10

    def __init__(self, donors: str | Path | Sequence[str | Path | np.ndarray] | np.ndarray | None = None,
                 size: int = 256, cache: bool = True, side: tuple[float, float] = (0.1, 0.4),
                 clone: str = "normal", tolerance: int = 8):
        if clone not in self.CLONE_FLAGS:
            raise RealnetError(f"nsa clone mode must be 'normal' or 'mixed', got {clone!r}")
        self.bank = None if donors is None else ImageBank(collect_images(donors, "nsa"), size, cache)
        self.side, self.clone, self.tolerance = side, clone, tolerance

    def paste(
        self, image: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        if min(height, width) < self.MIN_SIDE + 2:
            raise RealnetError(f"the nsa source needs images of at least {self.MIN_SIDE + 2} px a side, "
                               f"got {height}x{width}")
        other = image if self.bank is None else self.bank.draw(rng)
        box_h = int(np.clip(round(rng.uniform(*self.side) * height), self.MIN_SIDE, height - 2))
        box_w = int(np.clip(round(rng.uniform(*self.side) * width), self.MIN_SIDE, width - 2))
        src_top = int(rng.integers(other.shape[0] - box_h + 1))
        src_left = int(rng.integers(other.shape[1] - box_w + 1))
        patch = np.ascontiguousarray(other[src_top:src_top + box_h, src_left:src_left + box_w])
        # seamlessClone needs the destination rectangle one pixel inside the image.
        top, left = _destination(rng, (height - 2, width - 2), (box_h, box_w), None if foreground is None
                                 else foreground[1:-1, 1:-1])
        top, left = top + 1, left + 1
        clone_mask = np.zeros((box_h, box_w), np.uint8)
        clone_mask[1:-1, 1:-1] = 255
        centre = (left + box_w // 2, top + box_h // 2)
        out = cv2.seamlessClone(patch, np.ascontiguousarray(image), clone_mask, centre, self.CLONE_FLAGS[self.clone])
        changed = changed_pixels(out, image, self.tolerance)
        return out, changed


class ShadeSource:
    """Shading (ours, not in the paper): the image itself, its brightness scaled by 1 +/- g with
    g ~ U(`gain`), over a Perlin-shaped region whose edge is feathered by a Gaussian of sigma ~
    U(`feather`) pixels. It stands for uneven illumination, discoloured areas and stains: large,
    smooth, texture-preserving changes that a blended texture does not look like.

    Perlin scales go up to 2^(`max_exponent` - 1) cells and the noise is thresholded at
    t ~ U(`threshold`), lower than the texture sources' 0.5, so regions range from blobs to large
    areas. The mask is every pixel the shading moved by more than `tolerance` grey levels, the
    feathered rim included (labelling the unfeathered region left a visibly shaded band outside
    the mask, marked normal); it is empty on a black region, and the synthesizer then retries."""

    def __init__(self, gain: tuple[float, float] = (0.05, 0.35), feather: tuple[float, float] = (1.0, 8.0),
                 threshold: tuple[float, float] = (0.1, 0.5), max_exponent: int = 4, tolerance: int = 2):
        if not 0 < gain[0] <= gain[1] < 1:
            raise RealnetError(f"shade gain must satisfy 0 < low <= high < 1, got {gain}")
        self.gain, self.feather, self.threshold = gain, feather, threshold
        self.max_exponent, self.tolerance = max_exponent, tolerance

    def paste(
        self, image: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        region = perlin_mask(image.shape[0], rng, max_exponent=self.max_exponent,
                             threshold=rng.uniform(*self.threshold))
        if foreground is not None:
            region &= foreground.astype(bool)
        sigma = rng.uniform(*self.feather)
        weight = region.astype(np.float32)
        if sigma > 0:
            weight = cv2.GaussianBlur(weight, (0, 0), sigma)
            if foreground is not None:
                weight *= foreground  # the feathered edge stays on the foreground too
        gain = rng.uniform(*self.gain) * rng.choice((-1.0, 1.0))
        shaded = image.astype(np.float32) * (1.0 + gain * weight[..., None])
        out = np.clip(np.round(shaded), 0, 255).astype(np.uint8)
        return out, changed_pixels(out, image, self.tolerance)


class CrackSource:
    """Thin cracks and scratches (ours, not in the paper): a smooth curve of `points` segments,
    each turning by N(0, `bend`) radians from the last, `length` x the image side long in all,
    drawn antialiased `width` pixels wide (at 256 px; scaled with the image), that scales the
    image's brightness by 1 - g (a dark crack, with probability `dark_probability`) or 1 + g,
    g ~ U(`gain`). Blended textures and shading are blobs; a defect one or two feature cells wide
    and many long is a shape neither teaches.

    The curve starts on the foreground when there is one. The mask is every pixel the curve moved
    by more than `tolerance` grey levels (the visible crack, antialiased rim included), so it is
    empty on a black region and the synthesizer retries."""

    def __init__(self, width: tuple[float, float] = (1.0, 3.0), gain: tuple[float, float] = (0.15, 0.6),
                 length: tuple[float, float] = (0.15, 0.7), bend: float = 0.35, points: int = 12,
                 dark_probability: float = 0.75, tolerance: int = 2):
        if not 0 < gain[0] <= gain[1] < 1:
            raise RealnetError(f"crack gain must satisfy 0 < low <= high < 1, got {gain}")
        if not 0 < width[0] <= width[1]:
            raise RealnetError(f"crack width must satisfy 0 < low <= high, got {width}")
        self.width, self.gain, self.length, self.bend = width, gain, length, bend
        self.points, self.dark_probability, self.tolerance = points, dark_probability, tolerance

    def curve(self, shape: tuple[int, int], rng: np.random.Generator,
              foreground: np.ndarray | None = None) -> np.ndarray:
        """The curve's vertices (points + 1, 2) as (x, y) pixel coordinates."""
        h, w = shape
        rows, cols = np.nonzero(foreground) if foreground is not None else ((), ())
        if len(rows):
            pick = rng.integers(len(rows))
            start = np.array([cols[pick], rows[pick]], dtype=np.float64)
        else:
            start = rng.uniform((0, 0), (w, h))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, self.bend, self.points))
        step = rng.uniform(*self.length) * max(h, w) / self.points
        moves = step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        return np.vstack([start, start + np.cumsum(moves, axis=0)])

    def paste(
        self, image: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        vertices = self.curve((h, w), rng, foreground)
        thickness = max(1, round(rng.uniform(*self.width) * h / 256))
        canvas = np.zeros((h, w), np.uint8)
        cv2.polylines(canvas, [np.round(vertices).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
        weight = canvas.astype(np.float32) / 255.0
        if foreground is not None:
            weight *= foreground
        gain = rng.uniform(*self.gain) * (-1.0 if rng.random() < self.dark_probability else 1.0)
        cracked = image.astype(np.float32) * (1.0 + gain * weight[..., None])
        out = np.clip(np.round(cracked), 0, 255).astype(np.uint8)
        moved = changed_pixels(out, image, self.tolerance)
        return out, moved
