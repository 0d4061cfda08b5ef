"""Training-time anomaly synthesis: Perlin masks, Eq. 3, sources, the synthesizer, `synth preview`."""

from __future__ import annotations

import re

from pathlib import Path

import cv2
import numpy as np
import pytest

from realnet.data.io import resize_image
from realnet.errors import RealnetError
from realnet.synthesis import perlin, sources
from realnet.synthesis.blend import blend_anomaly
from realnet.synthesis.foreground import NO_FOREGROUND
from realnet.synthesis.perlin import perlin_mask, perlin_noise
from realnet.synthesis.preview import preview_grid
from realnet.synthesis.sources import (
    DTD_AUGMENTATIONS,
    CrackSource,
    CutPasteSource,
    DTDSource,
    NSASource,
    ShadeSource,
    SIASource,
    augment_texture,
)
from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, build_sources

SIZE = 48


def noise_image(seed: int = 1, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class ConstantTexture:
    """A texture source whose P is one flat colour."""

    def __init__(self, value: int, size: int = SIZE):
        self.value, self.size = value, size

    def texture(self, rng):
        return np.full((self.size, self.size, 3), self.value, np.uint8)


def synthesizer(**config) -> AnomalySynthesizer:
    settings = {"source_weights": {"flat": 1.0}, "delta_ranges": {"flat": (0.2, 1.0)}, **config}
    return AnomalySynthesizer(SynthesisConfig(**settings), {"flat": ConstantTexture(255)}, NO_FOREGROUND)


# --- Perlin -------------------------------------------------------------------------------


def test_perlin_noise_is_gradient_noise_in_unit_range():
    noise = perlin_noise((SIZE, SIZE), (4, 8), np.random.default_rng(0))
    assert noise.shape == (SIZE, SIZE)
    assert -1.0 <= noise.min() < -0.2 and 0.2 < noise.max() <= 1.0
    # Gradient noise vanishes on the lattice: every 12th row and every 6th column here.
    assert np.allclose(noise[::12, ::6], 0.0)
    assert not np.allclose(noise[6::12, 3::6], 0.0)
    assert np.array_equal(noise, perlin_noise((SIZE, SIZE), (4, 8), np.random.default_rng(0)))


def test_perlin_noise_rejects_zero_scale():
    with pytest.raises(ValueError, match="scale"):
        perlin_noise((8, 8), (0, 2), np.random.default_rng(0))


def test_perlin_mask_is_binary_and_not_degenerate_across_seeds():
    masks = [perlin_mask(SIZE, np.random.default_rng(seed)) for seed in range(40)]
    assert all(m.dtype == np.bool_ and m.shape == (SIZE, SIZE) for m in masks)
    coverage = np.array([m.mean() for m in masks])
    assert (coverage > 0).mean() > 0.8
    assert coverage.max() < 0.5
    non_empty = [m.tobytes() for m in masks if m.any()]
    assert len(set(non_empty)) == len(non_empty)


def test_perlin_mask_scales_follow_the_exponent_range():
    # 2^0 = one cell per axis gives one smooth blob at most; 2^5 cells give many small blobs.
    def components(mask):
        return cv2.connectedComponents(mask.astype(np.uint8))[0] - 1

    coarse = [components(perlin_mask(64, np.random.default_rng(s), max_exponent=1)) for s in range(20)]
    fine = [components(perlin_mask(64, np.random.default_rng(s), min_exponent=5)) for s in range(20)]
    assert max(coarse) <= 2 and np.mean(fine) > 5


def _band(shape, scale, rng):
    """Stand-in noise: a horizontal band of ones, so the mask shows the rotation alone."""
    noise = np.zeros(shape)
    noise[shape[0] // 2 - 2:shape[0] // 2 + 2, :] = 1.0
    return noise


def _orientation(mask: np.ndarray) -> float:
    """Degrees of the principal axis of the True pixels, in (-90, 90], image y pointing up."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, -ys]).astype(float))
    values, vectors = np.linalg.eigh(cov)
    x, y = vectors[:, -1]
    angle = np.degrees(np.arctan2(y, x))
    return float((angle + 90) % 180 - 90)


def test_perlin_mask_rotates_the_noise(monkeypatch):
    monkeypatch.setattr(perlin, "perlin_noise", _band)
    unrotated = perlin_mask(SIZE, np.random.default_rng(0), rotation=0.0)
    assert np.array_equal(unrotated, _band((SIZE, SIZE), None, None) > 0.5)
    angles = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        mask = perlin_mask(SIZE, rng, max_exponent=1)
        replay = np.random.default_rng(seed)
        replay.integers(0, 1, size=2)
        expected = replay.uniform(-90.0, 90.0)
        angles.append(_orientation(mask))
        difference = (angles[-1] - expected + 90) % 180 - 90
        assert abs(difference) < 6.0
    assert max(angles) - min(angles) > 120


# --- Eq. 3 --------------------------------------------------------------------------------


def test_blend_equals_eq3_on_hand_values():
    image = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
    source = np.array([[[250, 0, 130], [0, 0, 0]]], np.uint8)
    mask = np.array([[1, 0]], bool)
    out = blend_anomaly(image, source, mask, 0.5)
    assert out.dtype == np.float32
    # inside M: 0.5 * P + 0.5 * I; outside: I
    assert np.array_equal(out, np.array([[[130, 10, 80], [200, 100, 0]]], np.float32))
    soft = blend_anomaly(image.astype(np.float64), source, np.array([[0.5, 0.0]]), 0.8)
    assert soft.dtype == np.float64
    # (1 - 0.5) * 10 + 0.5 * (0.8 * 250 + 0.2 * 10) = 5 + 101 = 106
    assert soft[0, 0, 0] == pytest.approx(106.0)
    assert np.array_equal(blend_anomaly(image, source, mask, 0.0), image.astype(np.float32))
    full = blend_anomaly(image, source, mask, 1.0)
    assert np.array_equal(full[0, 0], source[0, 0].astype(np.float32))


def test_blend_rejects_bad_opacity_and_shapes():
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="delta"):
        blend_anomaly(image, image, np.ones((2, 2)), 1.5)
    with pytest.raises(ValueError, match="shape"):
        blend_anomaly(image, np.zeros((3, 2, 3), np.uint8), np.ones((2, 2)), 0.5)


# --- the synthesizer ----------------------------------------------------------------------


def test_anomalous_sample_is_eq3_inside_its_mask():
    image = noise_image()
    sample = synthesizer()(image, np.random.default_rng(3), force_anomalous=True)
    assert sample.label == 1 and sample.source == "flat" and 0.2 <= sample.delta <= 1.0
    assert sample.image.dtype == np.uint8 and sample.mask.dtype == np.bool_ and sample.mask.any()
    expected = np.round(blend_anomaly(image, np.full_like(image, 255), sample.mask, sample.delta))
    assert np.array_equal(sample.image, expected.astype(np.uint8))
    assert np.array_equal(sample.image[~sample.mask], image[~sample.mask])


class ColourTexture:
    """A texture source whose P is one saturated colour."""

    def texture(self, rng):
        return np.broadcast_to(np.array([200, 30, 90], np.uint8), (SIZE, SIZE, 3)).copy()


@pytest.mark.parametrize("match_gray", [True, False])
def test_colour_textures_blend_as_gray_into_gray_images_unless_disabled(match_gray):
    gray = np.repeat(noise_image()[..., :1], 3, axis=2)
    settings = SynthesisConfig(source_weights={"colour": 1.0}, delta_ranges={"colour": (0.5, 1.0)}, match_gray=match_gray)
    sample = AnomalySynthesizer(settings, {"colour": ColourTexture()}, NO_FOREGROUND)(
        gray, np.random.default_rng(3), force_anomalous=True)
    texture = ColourTexture().texture(None)
    if match_gray:
        texture = np.repeat(cv2.cvtColor(texture, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    expected = np.round(blend_anomaly(gray, texture, sample.mask, sample.delta)).astype(np.uint8)
    assert sample.mask.any() and np.array_equal(sample.image, expected)
    channels_equal = (sample.image[..., 0] == sample.image[..., 1]).all() and (sample.image[..., 1] == sample.image[..., 2]).all()
    assert channels_equal == match_gray


def test_colour_images_keep_colour_textures():
    image = noise_image()
    settings = SynthesisConfig(source_weights={"colour": 1.0}, delta_ranges={"colour": (1.0, 1.0)})
    sample = AnomalySynthesizer(settings, {"colour": ColourTexture()}, NO_FOREGROUND)(
        image, np.random.default_rng(3), force_anomalous=True)
    assert np.array_equal(sample.image[sample.mask], np.broadcast_to([200, 30, 90], sample.image[sample.mask].shape))


def test_normal_probability_is_honoured():
    image = noise_image()
    rng = np.random.default_rng(0)
    labels = [synthesizer()(image, rng).label for _ in range(300)]
    assert 0.4 < 1 - np.mean(labels) < 0.6
    always_normal = synthesizer(normal_probability=1.0)
    samples = [always_normal(image, rng) for _ in range(20)]
    assert all(s.label == 0 and not s.mask.any() and np.array_equal(s.image, image) for s in samples)
    assert always_normal(image, rng, force_anomalous=True).label == 1


@pytest.mark.parametrize("weights", [{"a": float("nan")}, {"a": float("inf"), "b": 1.0}, {"a": -1.0, "b": 2.0}])
def test_source_weights_must_be_finite_and_non_negative(weights):
    """NaN and infinite weights were accepted and crashed the first sample."""
    with pytest.raises(RealnetError, match="must be finite, >= 0"):
        SynthesisConfig(source_weights=weights, delta_ranges={"a": (1, 1), "b": (1, 1)})


def test_source_weights_choose_the_source():
    config = SynthesisConfig(normal_probability=0.0, source_weights={"a": 1.0, "b": 3.0, "c": 0.0},
                             delta_ranges={"a": (1, 1), "b": (1, 1), "c": (1, 1)})
    sources_ = {"a": ConstantTexture(0), "b": ConstantTexture(255), "c": ConstantTexture(9)}
    synth = AnomalySynthesizer(config, sources_, NO_FOREGROUND)
    rng = np.random.default_rng(0)
    names = [synth(noise_image(), rng).source for _ in range(200)]
    assert "c" not in names
    assert 0.65 < names.count("b") / len(names) < 0.85


def test_each_source_draws_its_opacity_from_its_own_range():
    """delta ~ U(delta_ranges[source]) of the drawn source, spread over that range, not one fixed value."""
    ranges = {"a": (0.1, 0.3), "b": (0.6, 0.9)}
    config = SynthesisConfig(normal_probability=0.0, source_weights={"a": 1.0, "b": 1.0}, delta_ranges=ranges)
    synth = AnomalySynthesizer(config, {"a": ConstantTexture(0), "b": ConstantTexture(255)}, NO_FOREGROUND)
    rng = np.random.default_rng(0)
    samples = [synth(noise_image(), rng) for _ in range(200)]
    for name, (low, high) in ranges.items():
        deltas = np.array([s.delta for s in samples if s.source == name])
        assert len(deltas) > 50 and ((low <= deltas) & (deltas <= high)).all(), name
        assert np.ptp(deltas) > (high - low) / 2, name


def test_the_order_the_sources_are_given_in_does_not_change_the_samples():
    """Regression: {cutpaste, nsa} and {nsa, cutpaste} drew their sources by different indices, so
    two fits differing only in that order trained on different samples (and a resume took either)."""
    def samples(weights):
        synth = AnomalySynthesizer(SynthesisConfig(normal_probability=0.0, source_weights=weights, delta_ranges={}),
                                   {"cutpaste": CutPasteSource(), "shade": ShadeSource()}, NO_FOREGROUND)
        rng = np.random.default_rng(0)
        return [synth(noise_image(), rng) for _ in range(12)]

    given, reordered = samples({"cutpaste": 0.5, "shade": 0.5}), samples({"shade": 0.5, "cutpaste": 0.5})
    assert {s.source for s in given} == {"cutpaste", "shade"}
    assert [s.source for s in given] == [s.source for s in reordered]
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(given, reordered))


def test_tiny_foreground_never_gives_an_anomaly_with_an_empty_mask():
    image = noise_image()
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[30, 17] = True  # one pixel of support: most Perlin masks miss it
    synth = synthesizer(max_retries=3)
    rng = np.random.default_rng(0)
    samples = [synth(image, rng, foreground_mask=foreground, force_anomalous=True) for _ in range(40)]
    assert all(s.mask.any() for s in samples if s.label == 1)
    assert all(not s.mask.any() and s.source == "normal" for s in samples if s.label == 0)
    inside = [s for s in samples if s.label == 1 and s.mask.sum() == 1]
    outside = [s for s in samples if s.label == 1 and not s.mask[30, 17]]
    assert inside, "some retries should hit the one foreground pixel"
    assert outside, "failing all retries should fall back to the Perlin mask alone"


def test_the_authors_single_perlin_draw_leaves_a_sample_with_an_empty_mask_normal():
    """The notes: the authors' code never retries an empty mask (ours retries). With
    retry_empty_masks=False one draw of M = Perlin x foreground decides: empty -> a normal sample,
    and no fallback to the Perlin mask outside the foreground."""
    image = noise_image()
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[:, :3] = True  # a thin strip: many single draws miss it
    rng = np.random.default_rng(0)
    authors = synthesizer(retry_empty_masks=False)
    samples = [authors(image, rng, foreground_mask=foreground, force_anomalous=True) for _ in range(60)]
    anomalous = [s for s in samples if s.label == 1]
    assert 0 < len(anomalous) < len(samples)
    assert all(s.mask.any() and not s.mask[:, 3:].any() for s in anomalous)
    assert all(s.source == "normal" and np.array_equal(s.image, image) for s in samples if s.label == 0)
    ours = synthesizer()
    assert all(ours(image, rng, foreground_mask=foreground, force_anomalous=True).label == 1 for _ in range(60))


def test_foreground_confines_the_mask_and_empty_perlin_masks_give_normal_samples():
    image = noise_image()
    left = np.zeros((SIZE, SIZE), bool)
    left[:, : SIZE // 2] = True
    rng = np.random.default_rng(1)
    for _ in range(10):
        sample = synthesizer()(image, rng, foreground_mask=left, force_anomalous=True)
        assert sample.label == 1 and not sample.mask[:, SIZE // 2:].any()
    never = synthesizer(threshold=1.5)  # Perlin noise never exceeds 1: every mask is empty
    sample = never(image, rng, force_anomalous=True)
    assert (sample.label, sample.source, sample.delta, sample.mask.any()) == (0, "normal", 0.0, False)
    assert np.array_equal(sample.image, image)


def test_patch_sources_retry_then_paste_anywhere():
    class Picky:
        """Changes nothing when given a foreground, pastes a 2x2 square otherwise."""

        def paste(self, image, rng, foreground=None):
            mask = np.zeros(image.shape[:2], bool)
            if foreground is None:
                mask[:2, :2] = True
            return image, mask

    config = SynthesisConfig(normal_probability=0.0, source_weights={"picky": 1.0})
    sample = AnomalySynthesizer(config, {"picky": Picky()}, NO_FOREGROUND)(noise_image(), np.random.default_rng(0))
    assert sample.label == 1 and sample.source == "picky" and sample.delta == 1.0 and sample.mask.sum() == 4


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"normal_probability": 1.5}, "normal_probability"),
        ({"source_weights": {"dtd": -1.0}}, "source_weights"),
        ({"source_weights": {"dtd": 0.0}}, "source_weights"),
        ({"delta_ranges": {"dtd": (0.9, 0.1)}}, "delta_ranges.dtd"),
        ({"delta_ranges": {"dtd": (0.0, 0.0)}}, r"delta_ranges.dtd must satisfy .* high > 0"),  # regression
        ({"min_exponent": 4, "max_exponent": 4}, "min_exponent"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_config_errors_name_the_option(settings, message):
    with pytest.raises(RealnetError, match=message):
        SynthesisConfig(**settings)


def test_synthesizer_refuses_missing_sources_and_ranges():
    with pytest.raises(RealnetError, match="sia"):
        AnomalySynthesizer(SynthesisConfig(source_weights={"sia": 1.0}), {}, NO_FOREGROUND)
    with pytest.raises(RealnetError, match="delta_ranges"):
        AnomalySynthesizer(SynthesisConfig(source_weights={"flat": 1.0}), {"flat": ConstantTexture(0)}, NO_FOREGROUND)


def test_build_sources_names_missing_folders_and_unknown_sources():
    sources = build_sources(["cutpaste", "shade", "crack"], size=SIZE, category="widget")
    assert list(sources) == ["cutpaste", "shade", "crack"] and isinstance(sources["shade"], ShadeSource)
    assert isinstance(sources["crack"], CrackSource)
    with pytest.raises(RealnetError, match="--dtd"):
        build_sources(["dtd"], size=SIZE, category="x")
    with pytest.raises(RealnetError, match="unknown synthesis source"):
        build_sources(["perlin"], size=SIZE, category="x")


# --- texture sources ----------------------------------------------------------------------


def fake_files(folder: Path, count: int) -> list[Path]:
    """Empty files with image names: reading is stubbed, so only the listing matters."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:02d}.jpg" for i in range(count)]
    for path in files:
        path.touch()
    (folder / "notes.txt").touch()
    (folder / ".hidden.jpg").touch()
    return files


@pytest.fixture
def counted_reads(monkeypatch):
    """Stubs the source modules' image reader: file i decodes to a 20 x 30 image of value 10 * i."""
    reads: list[Path] = []

    def read_image(path):
        reads.append(Path(path))
        return np.full((20, 30, 3), 10 * int(Path(path).stem), np.uint8)

    monkeypatch.setattr(sources, "read_image", read_image)
    return reads


def test_dtd_augmentation_picks_three_distinct_ops():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        image, names = augment_texture(noise_image(), rng)
        assert len(names) == 3 and len(set(names)) == 3 and set(names) <= set(DTD_AUGMENTATIONS)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        seen.update(names)
    assert seen == set(DTD_AUGMENTATIONS) and len(DTD_AUGMENTATIONS) == 10


@pytest.mark.parametrize("name", sorted(DTD_AUGMENTATIONS))
def test_each_dtd_augmentation_changes_the_texture(name):
    # Colour ramps spanning about 40..200 with a checkerboard of edges: every op visibly changes it
    # on most draws (solarize skips half of them, posterize keeps all 8 bits on one in eight).
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    checks = 20 * (((y // 6) + (x // 6)) % 2)
    image = np.stack([40 + 3 * x + checks, 40 + 3 * y, 120 + checks], axis=-1).astype(np.uint8)
    changed = 0
    for seed in range(10):
        out = DTD_AUGMENTATIONS[name](image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        changed += np.abs(out.astype(int) - image).mean() > 0.3  # sharpen moves only the edges
    assert changed >= 3


def test_gamma_contrast_draws_one_gamma_per_channel():
    """Each channel of a grey ramp follows its own 255 * (x / 255) ** g, and the three g differ."""
    levels = np.arange(256.0)
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    for seed in range(5):
        out = DTD_AUGMENTATIONS["gamma_contrast"](ramp, np.random.default_rng(seed)).reshape(256, 3).astype(float)
        mid = slice(64, 255)  # where log(x / 255) is far from 0 and the rounding down is small
        gammas = [np.median(np.log((out[mid, c] + 0.5) / 255) / np.log(levels[mid] / 255)) for c in range(3)]
        for c, g in enumerate(gammas):
            assert 0.5 <= g <= 2.0 and np.abs(out[:, c] - 255 * (levels / 255) ** g).max() <= 1.5, (seed, c)
        assert np.ptp(gammas) > 0.01, seed


def test_dtd_source_lists_recursively_caches_and_augments(tmp_path, counted_reads):
    fake_files(tmp_path / "dtd" / "images" / "banded", 2)
    fake_files(tmp_path / "dtd" / "images" / "bumpy", 1)
    source = DTDSource(tmp_path, SIZE)
    assert len(source.bank) == 3
    rng = np.random.default_rng(0)
    textures = [source.texture(rng) for _ in range(12)]
    assert all(t.shape == (SIZE, SIZE, 3) and t.dtype == np.uint8 for t in textures)
    assert len(counted_reads) == len(set(counted_reads)) <= 3  # each file decoded once
    assert any(len(np.unique(t)) > 1 for t in textures)  # flat inputs came out augmented


def test_sia_source_returns_bank_images_unaugmented(tmp_path, counted_reads):
    fake_files(tmp_path, 3)
    source = SIASource(tmp_path, SIZE)
    rng = np.random.default_rng(0)
    for _ in range(10):
        texture = source.texture(rng)
        assert texture.shape == (SIZE, SIZE, 3) and len(np.unique(texture)) == 1
        assert int(texture[0, 0, 0]) in (0, 10, 20)


def test_texture_sources_resize_like_the_authors_and_nsa_donors_like_the_inspected_images(tmp_path):
    # The authors resize DTD and SDAS images with cv2.resize (bilinear, no low-pass); the normal
    # images, which NSA donors are, go through the antialiased resize of realnet.data.io.
    texture = np.random.default_rng(3).integers(0, 256, size=(5 * SIZE, 4 * SIZE, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grain.png"), texture[..., ::-1])
    authors = cv2.resize(texture, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    antialiased = resize_image(texture, SIZE)
    assert np.abs(authors.astype(int) - antialiased).mean() > 5  # the two resizes differ here
    assert np.array_equal(DTDSource(tmp_path, SIZE).bank[0], authors)
    assert np.array_equal(SIASource(tmp_path, SIZE).bank[0], authors)
    assert np.array_equal(NSASource(tmp_path, SIZE).bank[0], antialiased)


@pytest.mark.parametrize("make", [lambda p: DTDSource(p, SIZE), lambda p: SIASource(p, SIZE),
                                  lambda p: NSASource(p, SIZE)])
def test_sources_name_a_missing_or_empty_folder(tmp_path, make):
    with pytest.raises(RealnetError, match="not found.*nowhere"):
        make(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").touch()
    with pytest.raises(RealnetError, match="no image files.*empty"):
        make(tmp_path / "empty")


# --- patch sources ------------------------------------------------------------------------


def test_cutpaste_mask_is_the_changed_rectangle():
    image = noise_image()
    source = CutPasteSource()
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, mask = source.paste(image, rng)
        ys, xs = np.nonzero(mask)
        assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # a filled rectangle
        assert 0.015 < mask.mean() < 0.17
        assert np.array_equal(out[~mask], image[~mask])
        assert (out[mask] != image[mask]).any(axis=-1).mean() > 0.9


def test_cutpaste_lands_on_the_foreground():
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[36:, 36:] = True
    rng = np.random.default_rng(0)
    for _ in range(10):
        _, mask = CutPasteSource(jitter=0.0).paste(noise_image(), rng, foreground)
        assert (mask & foreground).any()


def test_nsa_mask_matches_the_changed_region():
    image = noise_image(1)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    donor = np.repeat((255 * (((y // 3) + (x // 3)) % 2)).astype(np.uint8)[..., None], 3, axis=2)
    source = NSASource([donor], SIZE)
    rng = np.random.default_rng(0)
    results = [source.paste(image, rng) for _ in range(10)]
    # Poisson blending can absorb a tiny patch into its noisy border; most pastes show.
    assert sum(mask.any() for _, mask in results) >= 7
    for out, mask in results:
        difference = np.abs(out.astype(int) - image).max(axis=-1)
        assert np.array_equal(mask, difference > source.tolerance)
        ys, xs = np.nonzero(difference)  # every change, labelled or not, stays inside one patch
        if len(ys):
            assert np.ptp(ys) < 0.4 * SIZE and np.ptp(xs) < 0.4 * SIZE


def test_nsa_without_donors_uses_the_image_itself():
    out, mask = NSASource(None, SIZE, clone="mixed").paste(noise_image(2), np.random.default_rng(0))
    assert out.shape == (SIZE, SIZE, 3) and mask.any()
    with pytest.raises(RealnetError, match="clone"):
        NSASource(None, SIZE, clone="blend")


@pytest.mark.parametrize("size", [12, 16, 24])
def test_nsa_pastes_show_on_small_images_and_too_small_ones_are_refused(size):
    """Regression: rectangles of 5-8 px, all that fits on images under about 28 px, left the
    image unchanged (empty masks every time), and images of 6 px or less crashed inside OpenCV."""
    source, rng = NSASource(None, size), np.random.default_rng(0)
    masks = [source.paste(noise_image(seed, size), rng)[1] for seed in range(10)]
    assert sum(mask.any() for mask in masks) >= 7
    with pytest.raises(RealnetError, match="nsa source needs images of at least 12 px a side, got 11x64"):
        source.paste(noise_image(1, 64)[:11], rng)


def test_shade_scales_brightness_inside_its_region_only():
    size = 96
    image = np.full((size, size, 3), 128, np.uint8)
    source = ShadeSource(feather=(0.0, 0.0))
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(20):
        out, mask = source.paste(image, rng)
        if not mask.any():
            continue
        assert np.array_equal(out[~mask], image[~mask])
        values = np.unique(out[mask])
        assert len(values) == 1  # one gain over the whole region, same in every channel
        gains.append(values[0] / 128.0 - 1.0)
    assert len(gains) >= 15
    assert all(0.05 - 1 / 128 <= abs(g) <= 0.35 + 1 / 128 for g in gains)
    assert min(gains) < 0 < max(gains)  # darker and brighter regions both occur


def test_shade_feathers_its_edge_and_keeps_gray_images_gray():
    size = 96
    y, x = np.mgrid[0:size, 0:size]
    image = np.repeat((60 + (x + y) % 120).astype(np.uint8)[..., None], 3, axis=2)
    out, mask = ShadeSource(feather=(3.0, 3.0)).paste(image, np.random.default_rng(3))
    assert mask.any()
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    change = np.abs(out.astype(int) - image).max(axis=-1)
    far = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5) > 12  # 4 sigma away
    assert not change[far].any()
    # regression: the unfeathered region was the mask, so the visibly shaded rim was labelled normal
    assert np.array_equal(mask, change > 2) and change[~mask].max() <= 2
    ratio = out[..., 0][mask] / image[..., 0][mask].astype(float)
    assert np.ptp(ratio) > 0.05  # feathered: the gain fades towards the mask's edge


@pytest.mark.parametrize("source", [ShadeSource(feather=(4.0, 8.0)), CrackSource()], ids=["shade", "crack"])
def test_brightness_sources_respect_the_foreground_and_give_no_mask_on_black(source):
    foreground = np.zeros((64, 64), bool)
    foreground[:, :20] = True
    rng = np.random.default_rng(1)
    image = noise_image(size=64)
    for _ in range(10):
        out, mask = source.paste(image, rng, foreground)
        assert not (mask & ~foreground).any()
        assert np.array_equal(out[~foreground], image[~foreground])  # shade's feathered edge too
    _, mask = source.paste(np.zeros((64, 64, 3), np.uint8), rng)
    assert not mask.any()


@pytest.mark.parametrize("make, message", [
    (lambda: ShadeSource(gain=(0.0, 0.2)), "shade gain"),
    (lambda: CrackSource(gain=(0.2, 1.0)), "crack gain"),
    (lambda: CrackSource(width=(0.0, 2.0)), "crack width"),
])
def test_brightness_sources_refuse_bad_ranges(make, message):
    with pytest.raises(RealnetError, match=message):
        make()


# --- preview ------------------------------------------------------------------------------


def test_preview_grid_stacks_images_over_mask_overlays():
    synth = synthesizer(normal_probability=0.0)
    rng = np.random.default_rng(0)
    samples = [synth(noise_image(i), rng) for i in range(5)]
    grid = preview_grid(samples, columns=3, gap=2)
    assert grid.shape == (2 * 2 * SIZE + 3 * 2, 3 * SIZE + 2 * 2, 3) and grid.dtype == np.uint8
    lower = grid[SIZE + 2:2 * SIZE + 2, :SIZE]  # overlay of sample 0
    mask = samples[0].mask
    assert (lower[mask][:, 0] >= samples[0].image[mask][:, 0]).all()  # tinted red
    assert np.array_equal(lower[~mask & ~_near(mask)], samples[0].image[~mask & ~_near(mask)])
    assert (grid[2 * SIZE + 2:2 * SIZE + 4] == 255).all()  # the gap between the two groups


def _near(mask: np.ndarray) -> np.ndarray:
    """Pixels within 1 px of the mask (where the outline may be drawn)."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


# --- CLI ----------------------------------------------------------------------------------


def test_synth_preview_cli_writes_the_grid(tmp_path, capsys, monkeypatch):
    from realnet.cli.main import main
    from realnet.data.demo import make_demo_dataset

    data = make_demo_dataset(tmp_path / "demo", size=32, n_train=3, n_test_good=1, n_test_defect=1,
                             categories=("brick",))
    dtd = tmp_path / "dtd" / "images" / "banded"
    dtd.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(dtd / f"{i}.jpg"), noise_image(i, 40))
    out = tmp_path / "out" / "grid.png"
    argv = ["synth", "preview", "--data", str(data), "--category", "brick", "--source", "dtd", "cutpaste",
            "nsa", "--dtd", str(tmp_path / "dtd"), "--size", "32", "--count", "5", "--out", str(out)]
    assert main(argv) == 0
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 32 + 4, 5 * 32 + 4 * 4, 3)
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temp file left
    assert main(argv[:-1] + [str(tmp_path / "colour.png"), "--colour-textures"]) == 0

    assert main(argv[:8] + ["--out", str(tmp_path / "g.png")]) == 2  # dtd without --dtd
    assert "--dtd" in capsys.readouterr().err
    # regression: preview looked only at --dtd, where fit also takes $REALNET_DTD and <data root>/dtd
    monkeypatch.setenv("REALNET_DTD", str(tmp_path / "dtd"))
    assert main(argv[:8] + ["--size", "32", "--out", str(tmp_path / "env.png")]) == 0
    monkeypatch.delenv("REALNET_DTD")
    missing = argv[:10] + ["--dtd", str(tmp_path / "nowhere")] + argv[12:]
    assert main(missing) == 2
    assert "nowhere" in capsys.readouterr().err

    faint = argv[:-1] + [str(tmp_path / "faint.png"), "--delta-range", "dtd=0.05,0.1", "--count", "12"]
    assert main(faint) == 0
    drawn = re.search(r"opacity d ([0-9.]+) to ([0-9.]+)", capsys.readouterr().out)
    assert drawn and 0.05 <= float(drawn[1]) <= float(drawn[2]) <= 0.1
    # regression: a misspelt source (DTD) was accepted and left dtd at its default range; dtd=0,0
    # labelled unchanged images anomalous
    for bad in ("dtd=0.9,0.1", "dtd=half", "=0.1,0.2", "DTD=0.9,1.0", "dtd=0,0"):
        assert main(argv[:-1] + [str(tmp_path / "bad.png"), "--delta-range", bad]) == 2
        assert "--delta-range" in capsys.readouterr().err


@pytest.mark.parametrize("preset, expected", [("cpu", True), ("paper", False)])
def test_fit_builds_its_synthesizer_with_the_configs_gray_matching(preset, expected, tmp_path):
    from realnet.config import load_config
    from realnet.engine.fit import build_synthesizer

    config = load_config(preset, None, ["synthesis.sources={cutpaste: 1.0}"])
    built = build_synthesizer(config, NO_FOREGROUND, tmp_path, "any", noise_image()[None])
    assert built.config.match_gray is expected
    flipped = load_config(preset, None, ["synthesis.sources={cutpaste: 1.0}", f"synthesis.match_gray={str(not expected).lower()}"])
    assert build_synthesizer(flipped, NO_FOREGROUND, tmp_path, "any", noise_image()[None]).config.match_gray is (not expected)


def test_crack_is_a_thin_line_that_darkens_or_brightens_only_along_itself():
    size = 128
    image = np.full((size, size, 3), 128, np.uint8)
    source = CrackSource()
    rng = np.random.default_rng(0)
    signs = []
    for _ in range(40):
        out, mask = source.paste(image, rng)
        if not mask.any():
            continue
        change = np.abs(out.astype(int) - image).max(axis=-1)
        assert np.array_equal(out[..., 0], out[..., 1])  # gray stays gray
        assert np.array_equal(mask, change > 2)  # the mask is the visible change
        assert mask.mean() < 0.05  # a line, not a blob
        # thin: eroding by the widest core (3 px) removes nearly all of it
        eroded = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert eroded.sum() <= 0.1 * mask.sum()
        signs.append(np.sign(out[mask].astype(int) - 128).mean())
    assert len(signs) >= 30
    assert sum(s < 0 for s in signs) > sum(s > 0 for s in signs) > 0  # mostly dark, some bright


def test_crack_curve_has_the_configured_length_and_starts_on_the_foreground():
    source = CrackSource(length=(0.5, 0.5), bend=0.0)
    foreground = np.zeros((100, 100), bool)
    foreground[40:42, 70:72] = True
    vertices = source.curve((100, 100), np.random.default_rng(2), foreground)
    assert vertices.shape == (source.points + 1, 2)
    assert 70 <= vertices[0, 0] < 72 and 40 <= vertices[0, 1] < 42  # (x, y)
    assert np.linalg.norm(vertices[-1] - vertices[0]) == pytest.approx(50.0)  # straight when bend = 0


def test_an_opacity_range_for_a_source_without_opacity_is_refused():
    """Regression: --delta-range shade=0.1,0.2 was accepted and changed nothing."""
    config = SynthesisConfig(source_weights={"shade": 1.0}, delta_ranges={"dtd": (0.2, 1.0), "shade": (0.1, 0.2)})
    with pytest.raises(RealnetError, match="delta_ranges.shade: the shade source is not blended"):
        AnomalySynthesizer(config, {"shade": ShadeSource()}, NO_FOREGROUND)


# --- hardening: DTD augmentations, patch placement, Perlin details -----------------------


def _ramp_image() -> np.ndarray:
    """Every grey level 0..255 once per row, in all three channels (16 x 256)."""
    return np.repeat(np.tile(np.arange(256, dtype=np.uint8), (16, 1))[..., None], 3, axis=2)


def test_solarize_inverts_at_or_above_its_threshold_on_half_of_the_draws():
    """imgaug's Solarize(0.5, threshold=(32, 128)): p = 0.5, threshold int(U(32, 128))."""
    image = _ramp_image()
    applied = 0
    for seed in range(200):
        replay = np.random.default_rng(seed)
        out = sources.solarize(image, np.random.default_rng(seed))
        if replay.random() >= 0.5:
            assert np.array_equal(out, image)
            continue
        applied += 1
        threshold = int(replay.uniform(32.0, 128.0))
        assert np.array_equal(out, np.where(image >= threshold, 255 - image, image))
        assert (out[:, :32] == image[:, :32]).all() and (out[:, 128:] == 255 - image[:, 128:]).all()
    assert 70 <= applied <= 130


def test_posterize_keeps_the_top_one_to_eight_bits_of_every_value():
    """imgaug's Posterize(): nb_bits U{1..8}, 8 bits leaving the image unchanged."""
    image = _ramp_image()
    kept_bits = set()
    for seed in range(40):
        out = sources.posterize(image, np.random.default_rng(seed))
        assert (out <= image).all()  # low bits cleared, never set
        assert (image.astype(int) - out < 128).all()  # the top bit is always kept
        kept_bits.add(8 - int(np.log2(np.ptp(np.unique(out)[:2]))) if len(np.unique(out)) < 256 else 8)
    assert kept_bits == set(range(1, 9))


def test_autocontrast_stretches_each_channel_after_cutting_up_to_a_fifth_of_each_tail():
    """imgaug's pillike.Autocontrast(): Pillow's autocontrast per channel, cutoff U{0..20} %."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    image = np.stack([rng.integers(50, 151, (20, 20)), rng.integers(10, 21, (20, 20)),
                      rng.integers(100, 201, (20, 20))], axis=-1).astype(np.uint8)
    cutoffs = set()
    for seed in range(40):
        out = sources.autocontrast(image, np.random.default_rng(seed))
        cutoff = int(np.random.default_rng(seed).integers(0, 21))
        cutoffs.add(cutoff)
        assert np.array_equal(out, np.asarray(ImageOps.autocontrast(Image.fromarray(image), cutoff=cutoff)))
        assert out.min(axis=(0, 1)).tolist() == [0, 0, 0] and out.max(axis=(0, 1)).min() >= 254  # Pillow truncates
        saturated = ((out == 0) | (out == 255)).mean()
        assert saturated >= 1.5 * cutoff / 100 - 0.02  # the cut tails pile up at 0 and 255
    assert min(cutoffs) <= 2 and max(cutoffs) >= 18
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert np.array_equal(sources.autocontrast(flat, rng), flat)  # nothing to stretch: unchanged


def test_equalize_counts_the_pixels_below_each_level_as_pillow_does():
    """Pillow's equalize maps three equal levels to 0, 170, 255; OpenCV's equalizeHist, which
    counts each level's own pixels too, gives 0, 128, 255."""
    levels = np.repeat(np.array([10, 100, 200], np.uint8), 340).reshape(34, 30)
    out = sources.equalize(np.stack([levels, levels, 255 - levels], axis=-1), np.random.default_rng(0))
    assert np.unique(out[..., 0]).tolist() == [0, 170, 255]
    assert np.unique(out[..., 2]).tolist() == [0, 170, 255]


def test_sharpen_blurs_or_sharpens_by_a_factor_from_zero_to_two():
    """imgaug's pillike.EnhanceSharpness(): Pillow's Sharpness, factor U(0, 2): below 1 it
    softens an edge, above 1 it overshoots it; Pillow's 1-pixel frame is never filtered."""
    image = np.full((16, 16, 3), 60, np.uint8)
    image[:, 8:] = 180
    softened = sharpened = 0
    for seed in range(40):
        factor = np.random.default_rng(seed).uniform(0.0, 2.0)
        out = sources.sharpen(image, np.random.default_rng(seed)).astype(int)
        assert np.array_equal(out[0], image[0]) and np.array_equal(out[:, 0], image[:, 0])
        edge = out[5, 7, 0]  # the dark pixel next to the step
        if factor < 0.9:
            softened += 1
            assert edge > 60
        elif factor > 1.1:
            sharpened += 1
            assert edge < 60
    assert softened >= 10 and sharpened >= 10


def test_brightness_scales_and_shifts_the_brightness_channel_of_one_of_six_colour_spaces():
    """imgaug's MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): a gray stays gray;
    for the spaces whose brightness channel of a gray is the gray itself (Y, V, L of HLS) the
    result is the multiply (rounded down) and the add (rounded), in either order."""
    gray = np.full((8, 8, 3), 128, np.uint8)
    spaces, orders, shifts = set(), set(), []
    for seed in range(60):
        replay = np.random.default_rng(seed)
        space = int(replay.integers(6))
        gain, shift, add_first = replay.uniform(0.8, 1.2), int(np.round(replay.uniform(-30.0, 30.0))), replay.random() < 0.5
        out = sources.brightness(gray, np.random.default_rng(seed)).astype(int)
        spaces.add(space)
        orders.add(add_first)
        assert np.ptp(out, axis=2).max() <= 2  # still gray
        if space in (0, 1, 2, 5):  # YCrCb, HSV, HLS, YUV
            expected = int(min(255, (128 + shift) * gain)) if add_first else min(255, int(128 * gain) + shift)
            assert np.abs(out - expected).max() <= 1
        shifts.append(abs(int(out[0, 0, 0]) - 128))
    assert spaces == set(range(6)) and orders == {True, False}
    assert max(shifts) > 0.2 * 128 + 5  # beyond what the gain alone can do


def test_hue_shift_wraps_around_the_colour_wheel():
    """Hue is an angle: a shift past the end of the scale comes round to the start. imgaug adds
    int(v / 255 * 180), v ~ U{-50..50}, to OpenCV's 0..179 hue."""
    image = np.zeros((4, 4, 3), np.uint8)
    image[...] = (255, 0, 40)  # a red whose hue is near the top of the 0..179 scale
    hue = int(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[0, 0, 0])
    wrapped = 0
    for seed in range(30):
        shift = int(int(np.random.default_rng(seed).integers(-50, 51, size=2)[0]) / 255 * 180)
        out = sources.hue_saturation(image, np.random.default_rng(seed))
        got = int(cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[0, 0, 0])
        distance = abs((got - (hue + shift)) % 180)
        assert min(distance, 180 - distance) <= 3
        wrapped += hue + shift > 179
    assert wrapped >= 3


def test_dtd_rotation_stays_within_45_degrees():
    """Notes: rotate +-45 degrees."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[30:34, 4:60] = 255  # a horizontal bar through the centre
    angles = []
    for seed in range(40):
        out = sources.rotate(image, np.random.default_rng(seed))
        angles.append(_orientation(out[..., 0] > 127))
    assert max(abs(a) for a in angles) <= 47 and max(abs(a) for a in angles) > 30


def test_cutpaste_centres_its_box_on_a_foreground_pixel():
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[24, 21] = True
    rng = np.random.default_rng(0)
    for _ in range(10):
        _, mask = CutPasteSource(jitter=0.0).paste(noise_image(), rng, foreground)
        ys, xs = np.nonzero(mask)
        assert abs((ys.min() + ys.max()) / 2 - 24) <= 1 and abs((xs.min() + xs.max()) / 2 - 21) <= 1


def test_cutpaste_moves_the_patch_away_from_where_it_was_cut():
    """CutPaste: the destination is redrawn while it overlaps the origin by more than half the
    patch in both axes, so the paste moves content."""
    image = noise_image(4)
    rng = np.random.default_rng(1)
    for _ in range(20):
        out, mask = CutPasteSource(jitter=0.0).paste(image, rng)
        ys, xs = np.nonzero(mask)
        top, left, h, w = ys.min(), xs.min(), np.ptp(ys) + 1, np.ptp(xs) + 1
        windows = np.lib.stride_tricks.sliding_window_view(image, (h, w, 3))[..., 0, :, :, :]
        matches = np.argwhere((windows == out[top:top + h, left:left + w]).all(axis=(2, 3, 4)))
        assert len(matches) == 1  # noise: the patch came from one place only
        src_top, src_left = matches[0]
        assert abs(top - src_top) > h // 2 or abs(left - src_left) > w // 2


def test_cutpaste_colour_jitters_its_patch():
    """CutPaste: the pasted patch is colour-jittered (a flat image shows only the jitter)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[...] = (150, 90, 40)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(20):
        out, mask = CutPasteSource().paste(image, rng)
        changed += bool((out[mask] != image[mask]).any())
    assert changed >= 15


def _checkerboard(size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.repeat((255 * (((y // 3) + (x // 3)) % 2)).astype(np.uint8)[..., None], 3, axis=2)


def test_nsa_patches_come_from_the_donor_images():
    """NSA: the rectangle is cut from another normal image; on a flat image only a donor's
    texture can show (a patch of the flat image itself changes nothing)."""
    flat = np.full((SIZE, SIZE, 3), 100, np.uint8)
    source = NSASource([_checkerboard()], SIZE)
    rng = np.random.default_rng(0)
    assert sum(source.paste(flat, rng)[1].any() for _ in range(10)) >= 8
    assert not NSASource(None, SIZE).paste(flat, rng)[1].any()


def test_nsa_lands_on_the_foreground():
    """The blended rectangle is centred on the foreground; off the diagonal, so swapped x/y would miss."""
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[6:16, 30:40] = True  # rows 6..15, cols 30..39: top right
    source = NSASource([_checkerboard()], SIZE, side=(0.2, 0.25))
    rng = np.random.default_rng(0)
    for _ in range(10):
        out, mask = source.paste(noise_image(), rng, foreground)
        ys, xs = np.nonzero(np.abs(out.astype(int) - noise_image()).max(axis=-1))
        assert len(ys) and 6 - 8 <= np.median(ys) < 16 + 8 and 30 - 8 <= np.median(xs) < 40 + 8


def test_the_synthesizer_hands_the_foreground_to_patch_sources():
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[38:, 38:] = True
    config = SynthesisConfig(normal_probability=0.0, source_weights={"cutpaste": 1.0})
    synth = AnomalySynthesizer(config, {"cutpaste": CutPasteSource()}, NO_FOREGROUND)
    rng = np.random.default_rng(0)
    for _ in range(10):
        sample = synth(noise_image(), rng, foreground_mask=foreground)
        assert sample.label == 1 and (sample.mask & foreground).any()


def test_perlin_fade_is_the_quintic_interpolant():
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(perlin._fade(t), [0.0, 0.103515625, 0.5, 0.896484375, 1.0])


def test_perlin_noise_is_smooth_across_lattice_lines():
    """The quintic fade makes the noise C1 where cells meet; a linear one leaves creases."""
    noise = perlin_noise((256, 256), (4, 4), np.random.default_rng(0))
    slopes = np.diff(noise, axis=1)
    kinks = np.abs(np.diff(slopes, axis=1))  # second difference, largest at creases
    assert kinks.max() < 1e-2


def test_perlin_mask_draws_the_scale_of_each_axis_independently(monkeypatch):
    """Notes: the scale on each axis is 2^k, k an integer in [0, 6)."""
    scales = []

    def recording(shape, scale, rng):
        scales.append(tuple(int(s) for s in scale))
        return np.zeros(shape)

    monkeypatch.setattr(perlin, "perlin_noise", recording)
    for seed in range(40):
        perlin_mask(SIZE, np.random.default_rng(seed))
    assert {s for pair in scales for s in pair} <= {1, 2, 4, 8, 16, 32}
    assert sum(a != b for a, b in scales) >= 20


def test_a_source_folder_that_cannot_be_listed_is_an_error_not_a_gap(tmp_path, monkeypatch):
    """Regression: DTD, SIA and `sdas quality --real` folders were listed with rglob, which skips a
    subfolder it may not read, so a source trained (or FID was computed) on fewer images in silence."""
    from PIL import Image

    from dataset_fixtures import refuse_listing
    from realnet.synthesis.sources import collect_images

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / sub / "x.png")
    assert [p.relative_to(tmp_path).as_posix() for p in collect_images(tmp_path, "dtd")] == ["a/x.png", "b/x.png"]
    refuse_listing(monkeypatch, tmp_path / "b")
    with pytest.raises(RealnetError, match=f"dtd folder {tmp_path / 'b'}: cannot list it \\(Permission denied\\)"):
        collect_images(tmp_path, "dtd")


@pytest.mark.parametrize("through_environment", [False, True])
def test_a_dtd_folder_that_holds_the_data_root_is_refused(tmp_path, monkeypatch, through_environment):
    """Regression: `fit --data DATA --dtd DATA` (the --help said "folder holding dtd/images") took
    every image below DATA as a texture, the category's test images and masks included, silently."""
    from realnet.errors import RealnetError
    from realnet.synthesis.sources import find_dtd_root

    data = tmp_path / "data"
    (data / "dtd" / "images").mkdir(parents=True)
    given = None
    if through_environment:
        monkeypatch.setenv("REALNET_DTD", str(tmp_path))
    else:
        given = data
    with pytest.raises(RealnetError, match=r"holds the data root .*give the DTD folder itself"):
        find_dtd_root(given, data)
    monkeypatch.delenv("REALNET_DTD", raising=False)
    assert find_dtd_root(data / "dtd", data) == data / "dtd"
    assert find_dtd_root(None, data) == data / "dtd"
