"""Foreground rules (notes: "Training-time anomaly synthesis") on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from realnet.errors import RealnetError
from realnet.synthesis.foreground import (
    AUTO_RULE,
    FOREGROUND_RULES,
    NO_FOREGROUND,
    ForegroundRule,
    foreground_mask,
    foreground_rule,
    resolve_foreground,
)

SIZE = 48


def disc(radius: float = 12, centre: tuple[float, float] = (24, 24), size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def render(region: np.ndarray, inside: float, outside: float, rng: np.random.Generator, noise: float = 4.0):
    """RGB uint8 image: gray level `inside` on `region`, `outside` elsewhere, plus Gaussian noise."""
    gray = np.where(region, inside, outside) + rng.normal(0.0, noise, region.shape)
    return np.repeat(np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_otsu_finds_bright_object_on_dark_background(rng):
    obj = disc()
    mask = foreground_mask(render(obj, 200, 40, rng), ForegroundRule("otsu"))
    assert mask.dtype == np.bool_ and mask.shape == obj.shape
    assert iou(mask, obj) > 0.95


def test_inverted_otsu_finds_dark_object_on_bright_background(rng):
    obj = disc()
    image = render(obj, 30, 210, rng)
    assert iou(foreground_mask(image, ForegroundRule("otsu", invert=True)), obj) > 0.95
    assert iou(foreground_mask(image, ForegroundRule("otsu")), ~obj) > 0.95


def test_triangle_keeps_the_dim_part_that_otsu_drops(rng):
    # Dark background peak plus an object whose left half is dim and right half bright: the
    # triangle threshold sits at the foot of the background peak, Otsu between the object's halves.
    obj = disc(radius=14)
    _, x = np.mgrid[0:SIZE, 0:SIZE]
    dim = obj & (x < 24)
    gray = np.where(obj, np.where(dim, 90.0, 240.0), 20.0) + rng.normal(0.0, 3.0, obj.shape)
    image = np.repeat(np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    triangle = foreground_mask(image, ForegroundRule("triangle"))
    otsu = foreground_mask(image, ForegroundRule("otsu"))
    assert iou(triangle, obj) > 0.95
    assert otsu[dim].mean() < 0.05


def test_channel_rule_reads_the_named_channel(rng):
    obj = disc()
    image = render(np.zeros_like(obj), 0, 100, rng)
    image[..., 2] = np.where(obj, 220, 30).astype(np.uint8)  # the object shows only in blue
    assert iou(foreground_mask(image, ForegroundRule("otsu", channel="b")), obj) > 0.95
    assert iou(foreground_mask(image, ForegroundRule("otsu", channel="r")), obj) < 0.5


def test_closing_fills_holes_and_opening_removes_specks(rng):
    obj = disc(radius=14)
    region = obj.copy()
    region[22:25, 22:25] = False  # a hole inside the object
    region[5, 5] = region[42, 6] = True  # specks in the background
    image = render(region, 200, 40, rng, noise=0.0)
    raw = foreground_mask(image, ForegroundRule("otsu"))
    cleaned = foreground_mask(image, ForegroundRule("otsu", closing=27, opening=16))  # 5 and 3 px at 48 px
    assert not raw[23, 23] and raw[5, 5]
    assert cleaned[23, 23] and not cleaned[5, 5] and not cleaned[42, 6]



@pytest.mark.parametrize("dataset, category", [("mvtec", "pill"), ("visa", "pcb1"), ("btad", "01"),
                                               ("mpdd", "bracket_white"), (None, "unknown")])
def test_the_rules_morphology_keeps_a_clean_object_in_place(dataset, category):
    """Regression: OpenCV's closing and opening with the notes' even kernels (6, 8) shifted the
    mask by a pixel down-right per operation, so a clean square came back moved by one or two."""
    image = np.zeros((256, 256, 3), np.uint8)
    image[64:192, 80:176] = 255
    mask = foreground_mask(image, foreground_rule(dataset, category) if dataset else AUTO_RULE)
    assert (mask == image[..., 0].astype(bool)).all()


@pytest.mark.parametrize("kernel", [3, 6, 8, 15])
def test_closing_only_adds_and_opening_only_removes(rng, kernel):
    from scipy.ndimage import gaussian_filter

    blob = gaussian_filter(rng.random((96, 96)), 3) > 0.5
    image = np.repeat(np.where(blob, 220, 30).astype(np.uint8)[..., None], 3, axis=2)
    closed = foreground_mask(image, ForegroundRule("otsu", closing=kernel))
    opened = foreground_mask(image, ForegroundRule("otsu", opening=kernel))
    assert (closed >= blob).all() and (opened <= blob).all()

def test_none_rule_is_the_whole_image(rng):
    image = render(disc(), 200, 40, rng)
    assert foreground_mask(image, NO_FOREGROUND).all()


def test_table_holds_the_notes_rules():
    assert len(FOREGROUND_RULES) == 15 + 12 + 6 + 3  # MVTec-AD, VisA, MPDD, BTAD: the 36 SIA categories
    for category in ("carpet", "leather", "tile", "wood", "cable", "transistor"):
        assert foreground_rule("mvtec", category) == NO_FOREGROUND
    assert foreground_rule("visa", "capsules") == NO_FOREGROUND
    assert foreground_rule("btad", "02") == NO_FOREGROUND
    assert foreground_rule("mvtec", "pill") == ForegroundRule("otsu", closing=6, opening=6)
    for category in ("hazelnut", "metal_nut", "toothbrush"):
        assert foreground_rule("mvtec", category) == ForegroundRule("triangle", closing=6, opening=6)
    for category in ("bottle", "capsule", "grid", "screw", "zipper"):
        assert foreground_rule("mvtec", category) == ForegroundRule("otsu", invert=True, closing=6, opening=6)
    for category in ("pcb1", "pcb2", "pcb3", "pcb4"):
        assert foreground_rule("visa", category) == ForegroundRule("triangle", channel="b", closing=8, opening=3)
    for category in ("candle", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pipe_fryum"):
        assert foreground_rule("visa", category) == ForegroundRule("otsu", closing=3, opening=3)
    for category in ("bracket_black", "bracket_brown", "connector"):
        assert foreground_rule("mpdd", category) == ForegroundRule("otsu", channel="g", invert=True, closing=6)
    for category in ("bracket_white", "tubes"):
        assert foreground_rule("mpdd", category) == ForegroundRule("otsu", channel="b", closing=6)
    assert foreground_rule("mpdd", "metal_plate") == ForegroundRule("otsu", invert=True, closing=6)
    for category in ("01", "03"):
        assert foreground_rule("btad", category) == ForegroundRule("otsu", closing=15, opening=6)


def test_mpdd_read_through_the_mvtec_layout_keeps_its_rules():
    """The docs say the mvtec layout also reads MPDD; its categories silently got the auto rule."""
    for category in ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"):
        assert foreground_rule("mvtec", category) == foreground_rule("mpdd", category) != AUTO_RULE
    assert foreground_rule("visa", "tubes") == AUTO_RULE  # only the mvtec layout stands in for MPDD


def test_unknown_categories_get_the_auto_rule():
    assert foreground_rule("mvtec", "my_widget") == AUTO_RULE
    assert foreground_rule("folder", "custom") == AUTO_RULE
    assert foreground_rule("visa", "carpet") == AUTO_RULE  # a category of another dataset


@pytest.mark.parametrize("inside, outside", [(200, 40), (30, 210)])
def test_auto_rule_finds_the_object_of_either_polarity(rng, inside, outside):
    obj = disc()
    assert iou(foreground_mask(render(obj, inside, outside, rng), AUTO_RULE), obj) > 0.9


def test_auto_rule_falls_back_to_whole_image(rng):
    texture = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    assert foreground_mask(texture, AUTO_RULE).all()
    tiny = render(disc(radius=3), 200, 40, rng)  # under 5 % of the image
    assert foreground_mask(tiny, AUTO_RULE).all()
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    assert foreground_mask(flat, AUTO_RULE).all()


def test_auto_rule_counts_the_left_and_right_border_too(rng):
    """A band across the full width touches over AUTO_MAX_BORDER of the border (on its sides): whole image."""
    band = np.zeros((SIZE, SIZE), bool)
    band[8:40] = True  # 2 x 32 of the 188 border pixels, all in the left and right columns
    assert foreground_mask(render(band, 200, 40, rng), AUTO_RULE).all()


def test_auto_rule_opens_with_a_kernel_of_6_px_per_256(rng):
    """At 128 px the auto rule's 3 px opening erases one-pixel specks around the object."""
    obj = disc(radius=30, centre=(64, 64), size=128)
    specks = np.zeros_like(obj)
    specks[8::20, 8::20] = True
    specks &= ~disc(radius=36, centre=(64, 64), size=128)
    mask = foreground_mask(render(obj | specks, 200, 40, rng), AUTO_RULE)
    assert specks.sum() > 20 and not mask[specks].any() and iou(mask, obj) > 0.95


def test_resolve_foreground_modes():
    assert resolve_foreground("rule", "mvtec", "pill") == foreground_rule("mvtec", "pill")
    assert resolve_foreground("auto", "mvtec", "pill") == AUTO_RULE
    assert resolve_foreground("none", "mvtec", "pill") == NO_FOREGROUND
    with pytest.raises(RealnetError, match="synthesis.foreground"):
        resolve_foreground("otsu", "mvtec", "pill")


def test_bad_rules_and_images_are_refused():
    with pytest.raises(RealnetError, match="method"):
        ForegroundRule("kmeans")
    with pytest.raises(RealnetError, match="channel"):
        ForegroundRule("otsu", channel="alpha")
    with pytest.raises(ValueError, match="uint8"):
        foreground_mask(np.zeros((8, 8, 3), np.float32), NO_FOREGROUND)


def test_closing_runs_before_opening():
    """Notes: closing then opening. A grid of isolated dots is first closed into one solid square,
    which the opening keeps; opening first would erase the dots and leave nothing to close."""
    region = np.zeros((64, 64), bool)
    region[10:50:2, 10:50:2] = True
    image = np.repeat(np.where(region, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    mask = foreground_mask(image, ForegroundRule("otsu", closing=24, opening=24))  # 6 px at 64 px
    assert mask[12:46, 12:46].all()


@pytest.mark.parametrize("size", [64, 128, 256, 512])
def test_tabled_kernels_scale_with_the_image_like_the_auto_rule(size):
    """Regression: the table's kernels (the authors' pixels at 256 px) were applied unchanged at
    any train.image_size, so at 128 px MVTec's 6 px opening erased a thin screw and the anomalies
    fell back to the whole image, background included."""
    from skimage import morphology

    scale = size / 256
    image = np.full((size, size, 3), 220, np.uint8)
    bar = np.zeros((size, size), bool)
    bar[round(40 * scale):round(216 * scale), round(124 * scale):round(132 * scale)] = True  # 8 px wide at 256
    image[bar] = 30
    speck = round(20 * scale), round(20 * scale)
    image[speck[0]:speck[0] + round(4 * scale), speck[1]:speck[1] + round(4 * scale)] = 30  # 4 px at 256
    mask = foreground_mask(image, foreground_rule("mvtec", "screw"))  # dark object, closing/opening 6 at 256
    kernel = np.ones((max(1, round(6 * scale)),) * 2, bool)
    dark = image[..., 0] < 128
    assert np.array_equal(mask, morphology.opening(morphology.closing(dark, kernel), kernel))
    assert np.array_equal(mask, bar)  # the screw kept, the speck opened away
