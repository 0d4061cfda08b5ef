"""Foreground masks: where synthetic anomalies may be placed (paper Sec. 3.1, after Eq. 3).

A rule thresholds one channel with Otsu or the triangle method, optionally inverted (dark objects
on a bright background), then applies a morphological closing and opening with square kernels.
The per-category rules of the four public benchmarks are in `FOREGROUND_RULES`; every other
category gets the image-driven `auto` rule instead of an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage import morphology

from realnet.errors import RealnetError

METHODS = ("none", "otsu", "triangle", "auto")
CHANNELS = ("gray", "r", "g", "b")

# The auto rule keeps Otsu's foreground only when it looks like one object: it covers between these
# fractions of the image and touches at most AUTO_MAX_BORDER of the border pixels. Otherwise the
# image is treated as a texture (whole image).
AUTO_MIN_FRACTION = 0.05
AUTO_MAX_FRACTION = 0.90
AUTO_MAX_BORDER = 0.25
# Closing/opening kernel of the auto rule, as a fraction of the shorter image side (6 px at 256).
AUTO_KERNEL_FRACTION = 6 / 256


@dataclass(frozen=True)
class ForegroundRule:
    """How to find the foreground of a category's images.

    method: "none" (whole image), "otsu", "triangle", or "auto" (decided per image, see
    `auto_foreground`); channel: which channel is thresholded; invert: the object is darker than
    the background; closing/opening: square kernel sizes in pixels at 256 px, the authors' only
    resolution (0 = skip), scaled to the image's shorter side and applied in that order.
    """

    method: str = "none"
    channel: str = "gray"
    invert: bool = False
    closing: int = 0
    opening: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RealnetError(f"foreground method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.channel not in CHANNELS:
            raise RealnetError(f"foreground channel must be one of {', '.join(CHANNELS)}, got {self.channel!r}")
        if self.closing < 0 or self.opening < 0:
            raise RealnetError(f"foreground closing/opening must be >= 0, got {self.closing}/{self.opening}")


NO_FOREGROUND = ForegroundRule("none")
AUTO_RULE = ForegroundRule("auto")


def _table() -> dict[tuple[str, str], ForegroundRule]:
    mvtec_otsu = ForegroundRule("otsu", closing=6, opening=6)
    mvtec_triangle = ForegroundRule("triangle", closing=6, opening=6)
    mvtec_dark = ForegroundRule("otsu", invert=True, closing=6, opening=6)
    visa_pcb = ForegroundRule("triangle", channel="b", closing=8, opening=3)
    visa_otsu = ForegroundRule("otsu", closing=3, opening=3)
    btad_otsu = ForegroundRule("otsu", closing=15, opening=6)
    groups: dict[str, dict[ForegroundRule, tuple[str, ...]]] = {
        "mvtec": {
            NO_FOREGROUND: ("carpet", "leather", "tile", "wood", "cable", "transistor"),
            mvtec_otsu: ("pill",),
            mvtec_triangle: ("hazelnut", "metal_nut", "toothbrush"),
            mvtec_dark: ("bottle", "capsule", "grid", "screw", "zipper"),
        },
        "visa": {
            NO_FOREGROUND: ("capsules",),
            visa_pcb: ("pcb1", "pcb2", "pcb3", "pcb4"),
            visa_otsu: ("candle", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pipe_fryum"),
        },
        "mpdd": {
            ForegroundRule("otsu", channel="g", invert=True, closing=6): ("bracket_black", "bracket_brown", "connector"),
            ForegroundRule("otsu", channel="b", closing=6): ("bracket_white", "tubes"),
            ForegroundRule("otsu", invert=True, closing=6): ("metal_plate",),
        },
        "btad": {
            NO_FOREGROUND: ("02",),
            btad_otsu: ("01", "03"),
        },
    }
    return {
        (dataset, category): rule
        for dataset, rules in groups.items()
        for rule, categories in rules.items()
        for category in categories
    }


FOREGROUND_RULES: dict[tuple[str, str], ForegroundRule] = _table()


def foreground_rule(dataset: str, category: str) -> ForegroundRule:
    """The rule for (dataset, category) from the notes' table; `AUTO_RULE` for any other category.
    The `mvtec` layout also reads MPDD (the same folders), so an MPDD category read through it
    gets MPDD's rule (no category name is in both datasets)."""
    key = dataset.lower()
    rule = FOREGROUND_RULES.get((key, category))
    if rule is None and key == "mvtec":
        rule = FOREGROUND_RULES.get(("mpdd", category))
    return rule or AUTO_RULE


FOREGROUND_MODES = ("rule", "auto", "none")


def resolve_foreground(mode: str, dataset: str, category: str) -> ForegroundRule:
    """The rule for a configured mode: "rule" (the table, `AUTO_RULE` for unknown categories),
    "auto" or "none"."""
    if mode == "rule":
        return foreground_rule(dataset, category)
    if mode == "auto":
        return AUTO_RULE
    if mode == "none":
        return NO_FOREGROUND
    raise RealnetError(f"synthesis.foreground must be one of {', '.join(FOREGROUND_MODES)}, got {mode!r}")


def _channel(image: np.ndarray, channel: str) -> np.ndarray:
    if channel == "gray":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image[:, :, "rgb".index(channel)])


def _morphology(mask: np.ndarray, closing: int, opening: int) -> np.ndarray:
    """Closing then opening with square footprints, by skimage as in the authors' code: OpenCV's
    morphologyEx anchors an even kernel at the same offset for both of its halves, which moved
    the mask by a pixel diagonally per operation (a closing that removed object pixels)."""
    binary = mask.astype(bool)
    if closing > 0:
        binary = morphology.closing(binary, np.ones((closing, closing), bool))
    if opening > 0:
        binary = morphology.opening(binary, np.ones((opening, opening), bool))
    return binary


def _threshold(channel: np.ndarray, method: str) -> np.ndarray:
    """Pixels above the Otsu or triangle threshold of `channel` (uint8 H x W)."""
    flag = cv2.THRESH_OTSU if method == "otsu" else cv2.THRESH_TRIANGLE
    _, binary = cv2.threshold(channel, 0, 1, cv2.THRESH_BINARY | flag)
    return binary.astype(bool)


def _border_fraction(mask: np.ndarray) -> float:
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(border.mean())


def auto_foreground(image: np.ndarray) -> np.ndarray:
    """The `auto` rule, for categories without a tabled rule (custom data).

    Otsu on gray gives two candidate regions, the bright and the dark one. The object is taken to be
    the candidate touching the image border less (backgrounds surround objects), after a closing
    and opening with a kernel of ~6 px per 256 px. The candidate is used only if it covers
    AUTO_MIN_FRACTION..AUTO_MAX_FRACTION of the image and touches at most AUTO_MAX_BORDER of the
    border; otherwise (textures, flat images, objects filling the frame) the whole image is
    foreground, so synthesis is never starved of area.
    """
    kernel = max(1, round(min(image.shape[:2]) * AUTO_KERNEL_FRACTION))
    bright = _threshold(_channel(image, "gray"), "otsu")
    candidates = [_morphology(region, kernel, kernel) for region in (bright, ~bright)]
    region = min(candidates, key=_border_fraction)
    fraction = float(region.mean())
    if AUTO_MIN_FRACTION <= fraction <= AUTO_MAX_FRACTION and _border_fraction(region) <= AUTO_MAX_BORDER:
        return region
    return np.ones(image.shape[:2], dtype=bool)


def foreground_mask(image: np.ndarray, rule: ForegroundRule) -> np.ndarray:
    """Foreground of an RGB uint8 (H, W, 3) image under `rule`, as bool (H, W)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"foreground_mask needs an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if rule.method == "none":
        return np.ones(image.shape[:2], dtype=bool)
    if rule.method == "auto":
        return auto_foreground(image)
    region = _threshold(_channel(image, rule.channel), rule.method)
    if rule.invert:
        region = ~region
    return _morphology(region, _scaled_kernel(rule.closing, image), _scaled_kernel(rule.opening, image))


def _scaled_kernel(size_at_256: int, image: np.ndarray) -> int:
    """A tabled kernel at the image's scale: a fixed 6 px opening erases thin objects at 128 px
    and barely smooths at 512 (the auto rule scales its kernel the same way)."""
    if size_at_256 == 0:
        return 0
    return max(1, round(size_at_256 * min(image.shape[:2]) / 256))
