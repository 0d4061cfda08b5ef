"""DTD augmentation order, the saturation op, gray detection and the feature-noise strength
(found by mutation testing: each test fails when the behaviour it names is broken)."""

from __future__ import annotations

import cv2
import numpy as np

from realnet.synthesis import sources
from realnet.synthesis.feature_noise import FeatureNoiseSource
from realnet.synthesis.sources import augment_texture
from realnet.synthesis.synthesizer import is_grayscale


def test_dtd_augmentations_run_in_the_order_drawn(monkeypatch):
    """The 3 ops are applied in the random order they were drawn (and returned), not in a fixed one."""
    applied: list[str] = []

    def recorder(name):
        def op(image, rng):
            applied.append(name)
            return image
        return op

    monkeypatch.setattr(sources, "DTD_AUGMENTATIONS", {name: recorder(name) for name in "abcdefghij"})
    image = np.zeros((4, 4, 3), np.uint8)
    unsorted = 0
    for seed in range(30):
        applied.clear()
        _, names = augment_texture(image, np.random.default_rng(seed))
        assert applied == list(names)
        unsorted += list(names) != sorted(names)
    assert unsorted >= 15  # 5 of 6 orders of three distinct ops are not alphabetical


def test_hue_saturation_shifts_saturation_and_leaves_brightness_alone():
    """imgaug's AddToHueAndSaturation adds its second value to S of HSV; V is untouched."""
    hsv = np.zeros((8, 8, 3), np.uint8)
    hsv[...] = (60, 128, 200)  # OpenCV hue 60 (green), mid saturation, bright
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    saturations = set()
    for seed in range(20):
        shift = int(np.random.default_rng(seed).integers(-50, 51, size=2)[1])
        out = cv2.cvtColor(sources.hue_saturation(image, np.random.default_rng(seed)), cv2.COLOR_RGB2HSV).astype(int)
        assert np.abs(out[..., 2] - 200).max() <= 2, seed
        assert np.abs(out[..., 1] - (128 + shift)).max() <= 3, seed
        saturations.add(int(out[0, 0, 1]))
    assert len(saturations) > 5


def test_an_image_is_gray_only_when_all_three_channels_agree():
    gray = np.repeat(np.arange(48, dtype=np.uint8).reshape(6, 8, 1), 3, axis=2)
    assert is_grayscale(gray)
    for channel in range(3):
        tinted = gray.copy()
        tinted[2, 3, channel] += 40
        assert not is_grayscale(tinted), channel


def test_feature_noise_strength_is_spread_over_its_range():
    """sigma ~ U(strength) per sample, not one fixed value."""
    source = FeatureNoiseSource((0.1, 1.0))
    rng = np.random.default_rng(0)
    strengths = np.array([source.strength(rng) for _ in range(200)])
    assert ((0.1 <= strengths) & (strengths <= 1.0)).all()
    assert strengths.min() < 0.2 and strengths.max() > 0.9 and abs(strengths.mean() - 0.55) < 0.06


def test_gamma_contrast_exponents_are_uniform_on_half_to_two():
    """imgaug's GammaContrast((0.5, 2)): out = 255 * (x / 255) ** g with g ~ U(0.5, 2), so a third
    of the channels are brightened (g < 1) and two thirds darkened, not the reverse."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    levels = np.arange(64, 255)
    exponents = []
    for seed in range(60):
        out = sources.gamma_contrast(ramp, np.random.default_rng(seed)).reshape(256, 3).astype(float)
        for c in range(3):
            exponents.append(np.median(np.log((out[levels, c] + 0.5) / 255) / np.log(levels / 255)))
    exponents = np.array(exponents)
    assert ((0.45 <= exponents) & (exponents <= 2.05)).all()
    assert 0.23 < (exponents < 1).mean() < 0.43
    assert abs(np.mean(exponents) - 1.25) < 0.1
