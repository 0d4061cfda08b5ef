"""Synthesis details the other tests leave open: Perlin gradients over the full circle, the mask's
positive lobe, min_exponent and non-square noise; an unrotated mask is the thresholded noise; the
synthesizer applies its own foreground rule (also to feature noise); SIA draws from its category's
folder only; the preview overlay's tint, outline and captions."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from realnet.synthesis.feature_noise import FeatureNoiseSource
from realnet.synthesis.foreground import NO_FOREGROUND, ForegroundRule
from realnet.synthesis.perlin import perlin_mask, perlin_noise
from realnet.synthesis.preview import mask_overlay, preview_grid
from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, SynthesizedSample, build_sources


def test_lattice_gradients_point_in_every_direction():
    """Next to a lattice corner the noise is ~sqrt(2) g . offset, so its sign there is the sign of the
    corner gradient's component: with angles uniform on the full circle each sign has chance 1/2."""
    below, right = [], []
    for seed in range(400):
        noise = perlin_noise((64, 64), (1, 1), np.random.default_rng(seed))
        below.append(noise[1, 0] > 0)
        right.append(noise[0, 1] > 0)
    assert 0.4 < np.mean(below) < 0.6 and 0.4 < np.mean(right) < 0.6


def test_mask_at_threshold_zero_covers_about_half_the_image():
    """The noise is symmetric (negating every gradient negates it), so noise > 0 holds on about half
    of the image; |noise| > 0 would cover nearly all of it."""
    fractions = [perlin_mask(64, np.random.default_rng(seed), threshold=0.0, rotation=0.0).mean()
                 for seed in range(60)]
    assert 0.4 < np.mean(fractions) < 0.6


def test_min_exponent_gives_only_fine_blobs():
    """min_exponent 5, max 6: 32 cells per axis on 64 px, so every blob fits in about one 2 x 2 px cell."""
    for seed in range(10):
        mask = perlin_mask(64, np.random.default_rng(seed), min_exponent=5, max_exponent=6, rotation=0.0)
        labels, count = ndimage.label(mask)
        assert count == 0 or np.bincount(labels.ravel())[1:].max() <= 16


def test_non_square_noise_puts_its_lattice_on_each_axis_own_spacing():
    """(32, 64) px with (2, 4) cells: lattice points every 16 px on both axes, where the noise is 0."""
    noise = perlin_noise((32, 64), (2, 4), np.random.default_rng(0))
    assert noise.shape == (32, 64) and np.abs(noise).max() <= 1.0
    assert np.allclose(noise[::16, ::16], 0.0)
    assert np.abs(noise[8::16, 8::16]).max() > 0.0


class _White:
    def texture(self, rng):
        return np.full((48, 48, 3), 255, np.uint8)


def test_the_synthesizer_applies_its_rule_when_no_mask_is_given():
    image = np.full((48, 48, 3), 20, np.uint8)
    image[8:40, 8:40] = 220  # bright object: Otsu's foreground
    synth = AnomalySynthesizer(SynthesisConfig(source_weights={"flat": 1.0}, delta_ranges={"flat": (0.2, 1.0)}),
                               {"flat": _White()}, ForegroundRule("otsu"))
    rng = np.random.default_rng(0)
    outside = np.ones((48, 48), bool)
    outside[8:40, 8:40] = False
    hits = 0
    for _ in range(30):
        sample = synth(image, rng, force_anomalous=True)
        assert sample.label == 1
        hits += int(sample.mask[outside].any())
    assert hits == 0


def test_sia_draws_only_from_its_categorys_folder(tmp_path):
    for category, value in (("widget", 255), ("other", 0)):
        folder = tmp_path / category
        folder.mkdir()
        for index in range(3):
            assert cv2.imwrite(str(folder / f"{index}.png"), np.full((20, 20, 3), value, np.uint8))
    source = build_sources(["sia"], size=16, category="widget", sia_root=tmp_path)["sia"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert (source.texture(rng) == 255).all()


def test_unrotated_mask_is_the_thresholded_noise():
    """rotation 0: the mask is noise > threshold for the noise of the drawn scales (2^k per axis)."""
    for seed in range(5):
        mask = perlin_mask(64, np.random.default_rng(seed), rotation=0.0)
        rng = np.random.default_rng(seed)
        exponent_y, exponent_x = rng.integers(0, 6, size=2)
        noise = perlin_noise((64, 64), (2**exponent_y, 2**exponent_x), rng)
        assert (mask == (noise > 0.5)).mean() > 0.995  # float32 rounding may flip a pixel at 0.5


def test_feature_noise_masks_stay_in_the_foreground():
    synth = AnomalySynthesizer(SynthesisConfig(source_weights={"feature_noise": 1.0}, delta_ranges={}),
                               {"feature_noise": FeatureNoiseSource()}, NO_FOREGROUND)
    image = np.zeros((48, 48, 3), np.uint8)
    foreground = np.zeros((48, 48), bool)
    foreground[:, :24] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = synth(image, rng, foreground_mask=foreground, force_anomalous=True)
        assert sample.label == 1 and sample.mask.any() and not sample.mask[:, 24:].any()


def test_overlay_tints_red_at_alpha_and_outlines_in_yellow():
    image = np.full((32, 32, 3), 100, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    out = mask_overlay(image, mask, alpha=0.45)
    inner = np.zeros_like(mask)
    inner[10:22, 10:22] = True
    expected = np.round(0.55 * 100 + 0.45 * np.array([255, 0, 0])).astype(np.uint8)  # (170, 55, 55)
    assert (out[inner] == expected).all()
    assert (out[~mask] == 100).all()  # RETR_EXTERNAL contour runs on the mask's own edge pixels
    edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (out[edge] == (255, 255, 0)).all()


def test_normal_samples_have_no_opacity_caption():
    """A normal sample's caption is its source alone: two normal samples differing only in their
    (meaningless) delta give the same picture."""
    image = np.full((256, 256, 3), 128, np.uint8)  # wide enough for the whole caption
    empty = np.zeros((256, 256), bool)
    a, b = (SynthesizedSample(image, empty, 0, "normal", delta) for delta in (0.0, 0.5))
    assert np.array_equal(preview_grid([a], columns=1), preview_grid([b], columns=1))
