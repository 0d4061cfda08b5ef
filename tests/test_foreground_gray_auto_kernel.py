"""Foreground: gray uses RGB luminance weights; the auto rule's size and kernel limits."""

from __future__ import annotations

import numpy as np

from realnet.synthesis.foreground import AUTO_RULE, ForegroundRule, foreground_mask, foreground_rule


def test_gray_rules_weight_red_and_blue_as_rgb_luminance():
    """Images are RGB: gray = 0.299 R + 0.587 G + 0.114 B. Pure red (gray 76) on pure blue (gray 29)
    is the bright object; reading the image as BGR would swap the two (29 vs 76)."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 2] = 255  # blue background
    obj = np.zeros((64, 64), bool)
    obj[16:48, 16:48] = True
    image[obj] = (255, 0, 0)  # red object
    assert (foreground_mask(image, ForegroundRule("otsu")) == obj).all()
    assert (foreground_mask(image, foreground_rule("mvtec", "pill")) == obj).all()  # a gray-channel rule


def test_auto_rule_takes_the_whole_image_when_the_object_fills_the_frame():
    """An object covering over AUTO_MAX_FRACTION (90 %) of the image: whole image, not the object."""
    image = np.full((256, 256, 3), 20, np.uint8)
    image[5:-5, 5:-5] = 230  # bright object of 246 x 246 = 92 % inside a dark frame 5 px wide
    assert foreground_mask(image, AUTO_RULE).all()


def test_auto_rule_opening_is_6_px_at_256():
    """4 x 4 specks survive an opening of 3 px but not the auto rule's 6 px at 256 px."""
    y, x = np.mgrid[0:256, 0:256]
    obj = (y - 128) ** 2 + (x - 128) ** 2 <= 60**2
    specks = np.zeros_like(obj)
    for top in range(10, 240, 40):
        for left in range(10, 240, 40):
            specks[top:top + 4, left:left + 4] = True
    specks &= (y - 128) ** 2 + (x - 128) ** 2 > 70**2
    image = np.repeat(np.where(obj | specks, 220, 30).astype(np.uint8)[..., None], 3, axis=2)
    mask = foreground_mask(image, AUTO_RULE)
    assert specks.sum() > 100 and not mask[specks].any()
    assert (mask == obj).mean() > 0.99
