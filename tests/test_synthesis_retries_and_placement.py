"""Synthesizer retries, fallbacks and patch placement that the main synthesis tests leave open
(found by mutation testing: each test below fails when the behaviour it names is broken)."""

from __future__ import annotations

import numpy as np
import pytest

from realnet.errors import RealnetError
from realnet.synthesis import synthesizer as synthesizer_module
from realnet.synthesis.foreground import NO_FOREGROUND
from realnet.synthesis.preview import preview_grid
from realnet.synthesis.sources import CutPasteSource, NSASource
from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, SynthesizedSample

SIZE = 48


def noise_image(seed: int = 1, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class Flat:
    """A texture source whose P is white."""

    def texture(self, rng):
        return np.full((SIZE, SIZE, 3), 255, np.uint8)


def flat_synthesizer(**config) -> AnomalySynthesizer:
    settings = {"source_weights": {"flat": 1.0}, "delta_ranges": {"flat": (0.5, 1.0)}, **config}
    return AnomalySynthesizer(SynthesisConfig(**settings), {"flat": Flat()}, NO_FOREGROUND)


def test_a_source_weighted_zero_is_never_drawn_and_needs_no_configuration():
    """A weight of 0 switches a source off: it need not be built (no --sia for sia: 0)."""
    config = SynthesisConfig(normal_probability=0.0, source_weights={"flat": 1.0, "sia": 0.0},
                             delta_ranges={"flat": (0.5, 1.0)})
    synth = AnomalySynthesizer(config, {"flat": Flat()}, NO_FOREGROUND)
    assert synth.names == ["flat"]
    rng = np.random.default_rng(0)
    assert {synth(noise_image(), rng).source for _ in range(10)} == {"flat"}


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_an_empty_perlin_mask_is_drawn_max_retries_plus_one_times(monkeypatch, max_retries):
    """max_retries counts the extra draws: 1 + max_retries Perlin masks in all, one without retries."""
    calls = []

    def empty(size, rng, **kwargs):
        calls.append(size)
        return np.zeros((size, size), bool)

    monkeypatch.setattr(synthesizer_module, "perlin_mask", empty)
    sample = flat_synthesizer(max_retries=max_retries)(noise_image(), np.random.default_rng(0), force_anomalous=True)
    assert sample.label == 0 and len(calls) == max_retries + 1
    calls.clear()
    flat_synthesizer(max_retries=max_retries, retry_empty_masks=False)(
        noise_image(), np.random.default_rng(0), force_anomalous=True)
    assert len(calls) == 1


def test_no_retries_still_draws_one_mask():
    """max_retries=0 means one draw, not none: most samples still come out anomalous."""
    synth = flat_synthesizer(max_retries=0)
    rng = np.random.default_rng(0)
    labels = [synth(noise_image(), rng, force_anomalous=True).label for _ in range(20)]
    assert sum(labels) >= 10


def test_the_fallback_is_the_first_non_empty_perlin_mask(monkeypatch):
    """Every draw misses the foreground: the sample falls back to the first non-empty Perlin mask."""
    first, second = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
    first[:4, :4] = True
    second[:4, 10:20] = True
    draws = iter([np.zeros((SIZE, SIZE), bool), first, second] + [second.copy() for _ in range(20)])
    monkeypatch.setattr(synthesizer_module, "perlin_mask", lambda size, rng, **kwargs: next(draws))
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[40:, 40:] = True  # no draw reaches it
    sample = flat_synthesizer(max_retries=3)(noise_image(), np.random.default_rng(0), foreground_mask=foreground,
                                             force_anomalous=True)
    assert sample.label == 1 and np.array_equal(sample.mask, first)


class FlakyPatch:
    """Gives an empty mask for its first `failures` calls, then a 2 x 2 paste; records what
    foreground each call was given."""

    def __init__(self, failures: int):
        self.failures, self.given = failures, []

    def paste(self, image, rng, foreground=None):
        self.given.append(foreground is not None)
        mask = np.zeros(image.shape[:2], bool)
        if len(self.given) > self.failures:
            mask[:2, :2] = True
        return image, mask


@pytest.mark.parametrize("failures, expected", [(3, [True] * 4), (4, [True] * 4 + [False])])
def test_a_patch_source_is_retried_on_the_foreground_before_pasting_anywhere(failures, expected):
    """max_retries=3: up to 4 tries on the foreground, only then anywhere."""
    source = FlakyPatch(failures)
    config = SynthesisConfig(normal_probability=0.0, source_weights={"flaky": 1.0}, max_retries=3, delta_ranges={})
    foreground = np.ones((SIZE, SIZE), bool)
    sample = AnomalySynthesizer(config, {"flaky": source}, NO_FOREGROUND)(
        noise_image(), np.random.default_rng(0), foreground_mask=foreground)
    assert sample.label == 1 and source.given == expected


def test_patch_sources_paste_anywhere_on_an_empty_foreground():
    """An empty foreground (e.g. a threshold that found no object) places the patch anywhere."""
    empty = np.zeros((SIZE, SIZE), bool)
    rng = np.random.default_rng(0)
    _, mask = CutPasteSource().paste(noise_image(), rng, empty)
    assert mask.any()
    out, _ = NSASource(None, SIZE).paste(noise_image(2), rng, empty)
    assert out.shape == (SIZE, SIZE, 3)
    config = SynthesisConfig(normal_probability=0.0, source_weights={"cutpaste": 1.0}, delta_ranges={})
    synth = AnomalySynthesizer(config, {"cutpaste": CutPasteSource()}, NO_FOREGROUND)
    assert synth(noise_image(), rng, foreground_mask=empty).label == 1


def _source_corner(image: np.ndarray, out: np.ndarray, mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """(top, left, h, w, src_top, src_left) of a jitter-free cut-paste on a noise image."""
    ys, xs = np.nonzero(mask)
    top, left, h, w = ys.min(), xs.min(), np.ptp(ys) + 1, np.ptp(xs) + 1
    windows = np.lib.stride_tricks.sliding_window_view(image, (h, w, 3))[..., 0, :, :, :]
    (src_top, src_left), = np.argwhere((windows == out[top:top + h, left:left + w]).all(axis=(2, 3, 4)))
    return top, left, h, w, src_top, src_left


def test_cutpaste_accepts_a_move_along_one_axis_only():
    """The destination is redrawn only while it overlaps the origin by more than half the patch in
    BOTH axes: a paste moved far along x but not along y (or the reverse) is kept."""
    image = noise_image(4, 64)
    source = CutPasteSource(area=(0.01, 0.02), jitter=0.0)
    rng = np.random.default_rng(0)
    one_axis = 0
    for _ in range(150):
        out, mask = source.paste(image, rng)
        top, left, h, w, src_top, src_left = _source_corner(image, out, mask)
        far_y, far_x = abs(top - src_top) > h // 2, abs(left - src_left) > w // 2
        assert far_y or far_x
        one_axis += far_y != far_x
    assert one_axis >= 10  # about a quarter of independent placements overlap along one axis


def test_nsa_mixed_clone_keeps_the_images_own_gradients():
    """clone='mixed' keeps, per pixel, the stronger of the image's and the patch's gradients: a flat
    donor barely changes a textured image, where 'normal' cloning flattens the rectangle."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    image = np.repeat((40 + 160 * (((y // 3) + (x // 3)) % 2)).astype(np.uint8)[..., None], 3, axis=2)
    donor = np.full((SIZE, SIZE, 3), 120, np.uint8)
    changed = {}
    for clone in ("normal", "mixed"):
        source = NSASource([donor], SIZE, clone=clone, side=(0.3, 0.4))
        changed[clone] = sum(source.paste(image, np.random.default_rng(seed))[1].sum() for seed in range(5))
    assert changed["normal"] > 100 and changed["mixed"] < 0.5 * changed["normal"]


def test_the_preview_caption_shows_each_samples_opacity():
    """Two samples alike but for delta get different captions (the grid shows d=...)."""
    image, mask = noise_image(), np.zeros((SIZE, SIZE), bool)
    mask[10:20, 10:20] = True
    low, high = (SynthesizedSample(image, mask, 1, "dtd", delta) for delta in (0.25, 0.75))
    grid_low, grid_high = preview_grid([low], columns=1), preview_grid([high], columns=1)
    assert not np.array_equal(grid_low[:SIZE], grid_high[:SIZE])
    assert np.array_equal(grid_low[SIZE:], grid_high[SIZE:])  # the overlay row does not show delta
