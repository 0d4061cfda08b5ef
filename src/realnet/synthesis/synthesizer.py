"""Training-time anomaly synthesis: normal image -> (image, mask, label) (paper Sec. 3.1, Eq. 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from realnet.config import AUTHORS_DELTA_RANGES, SOURCE_NAMES, is_opacity_range
from realnet.errors import RealnetError
from realnet.synthesis.blend import blend_anomaly
from realnet.synthesis.feature_noise import FeatureNoiseSource
from realnet.synthesis.foreground import ForegroundRule
from realnet.synthesis.foreground import foreground_mask as compute_foreground
from realnet.synthesis.perlin import perlin_mask
from realnet.synthesis.sources import (
    CrackSource,
    CutPasteSource,
    DTDSource,
    NSASource,
    PatchSource,
    ShadeSource,
    SIASource,
    TextureSource,
)

NORMAL_SOURCE = "normal"


@dataclass
class SynthesisConfig:
    """How training samples are synthesised (defaults: the paper / the authors' code).

    normal_probability: chance that a sample is left normal.
    source_weights: relative chance of each anomaly source, by name (e.g. {"sia": 1, "dtd": 1}).
    delta_ranges: opacity delta ~ U(low, high) per texture source (Eq. 3).
    min_exponent, max_exponent, threshold, rotation: the Perlin mask (see `perlin_mask`).
    match_gray: on a grayscale normal image (R = G = B), blend texture sources as grayscale too
        (ours). The paper blends colour DTD textures into every category, which on grayscale data
        lets the detector flag "any colour" instead of learning defects it will meet at test
        time. False reproduces the paper.
    max_retries: extra draws when a mask comes out empty (see `AnomalySynthesizer`).
    retry_empty_masks: redraw an empty Perlin mask (ours). False reproduces the authors' code: one
        draw of M = Perlin x foreground, and an empty one leaves the sample normal.
    """

    normal_probability: float = 0.5
    source_weights: dict[str, float] = field(default_factory=lambda: {"dtd": 1.0})
    delta_ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(AUTHORS_DELTA_RANGES))
    min_exponent: int = 0
    max_exponent: int = 6
    threshold: float = 0.5
    rotation: float = 90.0
    match_gray: bool = True
    max_retries: int = 10
    retry_empty_masks: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.normal_probability <= 1.0:
            raise RealnetError(f"synthesis.normal_probability must be in [0, 1], got {self.normal_probability}")
        self.source_weights = {str(k): float(v) for k, v in self.source_weights.items()}
        weights = self.source_weights.values()
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise RealnetError(
                f"synthesis.source_weights must be finite, >= 0 and with a positive sum, got {self.source_weights}"
            )
        ranges = {}
        for name, bounds in self.delta_ranges.items():
            low, high = (float(b) for b in bounds)
            if not is_opacity_range(low, high):
                raise RealnetError(f"synthesis.delta_ranges.{name} must satisfy 0 <= low <= high <= 1 and high > 0, "
                                   f"got {bounds}")
            ranges[str(name)] = (low, high)
        self.delta_ranges = ranges
        if not 0 <= self.min_exponent < self.max_exponent:
            raise RealnetError(
                f"synthesis needs 0 <= min_exponent < max_exponent, got {self.min_exponent}, {self.max_exponent}"
            )
        if self.max_retries < 0:
            raise RealnetError(f"synthesis.max_retries must be >= 0, got {self.max_retries}")


@dataclass
class SynthesizedSample:
    """image: RGB uint8 (S, S, 3); mask: bool (S, S), the anomaly M (all False when normal);
    label: 0 normal / 1 anomalous; source: the source's name or "normal"; delta: the Eq. 3 opacity
    (1.0 for patch sources, 0.0 for normal samples, the noise strength sigma for feature noise).
    noise_seed: the seed of a feature-noise sample's eps (None for every other sample, whose
    anomaly is in the image)."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    source: str
    delta: float
    noise_seed: int | None = None


class AnomalySynthesizer:
    """Draws one training sample from a normal image.

    The sample is normal with probability `normal_probability` (unless `force_anomalous`).
    Otherwise a source is drawn by `source_weights`:
    - a texture source: M = Perlin mask x foreground mask, redrawn while empty up to `max_retries`
      times (ours; unless `retry_empty_masks` is False, as in the authors' code, where an empty M
      leaves the sample normal), then the first non-empty Perlin mask alone;
      the image is blended with P by Eq. 3 at delta ~ U(delta_ranges[name]);
    - a patch source: its own paste centred on the foreground, retried likewise, then anywhere;
    - feature noise: the mask as for a texture source, the image left unchanged, and the noise
      strength and seed recorded for the training step to add the noise to the features.
    If every draw is empty the sample is returned as normal (label 0): an "anomalous" sample never
    has an empty mask.
    """

    def __init__(self, config: SynthesisConfig, sources: Mapping[str, TextureSource | PatchSource],
                 foreground: ForegroundRule):
        self.config, self.foreground = config, foreground
        # the draw indexes the sources in one fixed order, whatever order the weights were given in:
        # {cutpaste, nsa} and {nsa, cutpaste} are one setting (and a resume compares them as one)
        self.names = sorted((name for name, weight in config.source_weights.items() if weight > 0),
                            key=_source_order)
        missing = [name for name in self.names if name not in sources]
        if missing:
            raise RealnetError(f"synthesis source(s) {', '.join(missing)} weighted but not configured")
        for name in self.names:
            source = sources[name]
            if not isinstance(source, (TextureSource, PatchSource, FeatureNoiseSource)):
                raise TypeError(f"source {name!r} has neither texture() nor paste()")
            if isinstance(source, TextureSource) and name not in config.delta_ranges:
                raise RealnetError(f"synthesis.delta_ranges has no range for texture source {name!r}")
            if not isinstance(source, TextureSource) and name in config.delta_ranges:
                # it would be accepted and change nothing: only blended textures have an opacity
                raise RealnetError(f"synthesis.delta_ranges.{name}: the {name} source is not blended with an "
                                   "opacity (only texture sources such as dtd and sia are)")
        self.sources = {name: sources[name] for name in self.names}
        weights = np.array([config.source_weights[name] for name in self.names])
        self.probabilities = weights / weights.sum()

    def __call__(self, image: np.ndarray, rng: np.random.Generator, *, foreground_mask: np.ndarray | None = None,
                 force_anomalous: bool = False) -> SynthesizedSample:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
            raise ValueError(f"synthesis needs an RGB uint8 (S, S, 3) image, got {image.dtype} {image.shape}")
        if not force_anomalous and rng.random() < self.config.normal_probability:
            return self._normal(image)
        name = self.names[int(rng.choice(len(self.names), p=self.probabilities))]
        if foreground_mask is None:
            foreground_mask = compute_foreground(image, self.foreground)
        elif foreground_mask.shape != image.shape[:2]:
            raise ValueError(f"foreground mask {foreground_mask.shape} does not match image {image.shape[:2]}")
        source = self.sources[name]
        if isinstance(source, TextureSource):
            return self._blend(image, rng, name, source, foreground_mask.astype(bool))
        if isinstance(source, FeatureNoiseSource):
            return self._feature_noise(image, rng, name, source, foreground_mask.astype(bool))
        return self._paste(image, rng, name, source, foreground_mask.astype(bool))

    @staticmethod
    def _normal(image: np.ndarray) -> SynthesizedSample:
        return SynthesizedSample(image.copy(), np.zeros(image.shape[:2], bool), 0, NORMAL_SOURCE, 0.0)

    def _anomaly_mask(self, size: int, rng: np.random.Generator, foreground: np.ndarray) -> np.ndarray | None:
        """M = Perlin x foreground, retried while empty; else the first non-empty Perlin mask; else None.
        Without retries (the authors' code): one draw of M, or None when it is empty."""
        config = self.config
        fallback = None
        for _ in range(config.max_retries + 1 if config.retry_empty_masks else 1):
            shape = perlin_mask(size, rng, min_exponent=config.min_exponent, max_exponent=config.max_exponent,
                                threshold=config.threshold, rotation=config.rotation)
            mask = shape & foreground
            if mask.any():
                return mask
            if fallback is None and shape.any() and config.retry_empty_masks:
                fallback = shape
        return fallback

    def _blend(self, image: np.ndarray, rng: np.random.Generator, name: str, source: TextureSource,
               foreground: np.ndarray) -> SynthesizedSample:
        mask = self._anomaly_mask(image.shape[0], rng, foreground)
        if mask is None:
            return self._normal(image)
        texture = source.texture(rng)
        if texture.shape != image.shape:
            raise ValueError(f"source {name!r} gave {texture.shape} for an image of {image.shape}")
        if self.config.match_gray and is_grayscale(image):
            texture = to_grayscale(texture)
        delta = float(rng.uniform(*self.config.delta_ranges[name]))
        blended = blend_anomaly(image, texture, mask, delta)
        out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        return SynthesizedSample(out, mask, 1, name, delta)

    def _feature_noise(self, image: np.ndarray, rng: np.random.Generator, name: str, source: FeatureNoiseSource,
                       foreground: np.ndarray) -> SynthesizedSample:
        mask = self._anomaly_mask(image.shape[0], rng, foreground)
        if mask is None:
            return self._normal(image)
        return SynthesizedSample(image.copy(), mask, 1, name, source.strength(rng), source.seed(rng))

    def _paste(self, image: np.ndarray, rng: np.random.Generator, name: str, source: PatchSource,
               foreground: np.ndarray) -> SynthesizedSample:
        for where in (foreground, None):
            for _ in range(self.config.max_retries + 1):
                out, mask = source.paste(image, rng, where)
                if mask.any():
                    return SynthesizedSample(out, mask, 1, name, 1.0)
        return self._normal(image)


def _source_order(name: str) -> tuple[int, str]:
    """Sort key of a source name: SOURCE_NAMES' order, then other (test) sources by name."""
    return (SOURCE_NAMES.index(name), "") if name in SOURCE_NAMES else (len(SOURCE_NAMES), name)


def is_grayscale(image: np.ndarray) -> bool:
    """Whether an RGB image has equal channels everywhere (a grayscale photograph)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> its luminance (ITU-R BT.601, as OpenCV) repeated in three channels."""
    luminance = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(luminance[..., None], 3, axis=2)


def build_sources(names: Sequence[str], *, size: int, category: str, dtd_root: str | Path | None = None,
                  sia_root: str | Path | None = None,
                  normal_images: Sequence[np.ndarray] | np.ndarray | None = None) -> dict[str, Any]:
    """The named sources: dtd from `dtd_root` (searched recursively), sia from
    `sia_root/<category>`, cutpaste, nsa with `normal_images` as donors (the image itself when
    None), shade, crack and feature_noise. Raises RealnetError for an unknown name or a missing folder."""
    sources: dict[str, Any] = {}
    for name in names:
        if name == "dtd":
            if dtd_root is None:
                raise RealnetError("synthesis source dtd needs the DTD folder: pass --dtd ROOT")
            sources[name] = DTDSource(dtd_root, size)
        elif name == "sia":
            if sia_root is None:
                raise RealnetError("synthesis source sia needs the SDAS image bank: pass --sia DIR (holding <category>/)")
            sources[name] = SIASource(Path(sia_root) / category, size)
        elif name == "cutpaste":
            sources[name] = CutPasteSource()
        elif name == "nsa":
            sources[name] = NSASource(normal_images, size)
        elif name == "shade":
            sources[name] = ShadeSource()
        elif name == "crack":
            sources[name] = CrackSource()
        elif name == "feature_noise":
            sources[name] = FeatureNoiseSource()
        else:
            raise RealnetError(f"unknown synthesis source {name!r}; choose from {', '.join(SOURCE_NAMES)}")
    return sources
