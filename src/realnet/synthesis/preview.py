"""A picture of what the model trains on: synthetic samples over their masks."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import cv2
import numpy as np

from realnet.config import AUTHORS_DELTA_RANGES
from realnet.synthesis.synthesizer import SynthesizedSample

MASK_TINT = np.array([255, 0, 0], np.float32)  # red, RGB
OUTLINE = (255, 255, 0)  # yellow, RGB
BACKGROUND = 255


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """`image` with the mask tinted red at `alpha` and outlined in yellow (RGB uint8)."""
    tinted = image.astype(np.float32)
    tinted[mask] = (1.0 - alpha) * tinted[mask] + alpha * MASK_TINT
    out = np.round(tinted).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, OUTLINE, 1)
    return out


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    scale = max(0.3, image.shape[0] / 600.0)
    origin = (3, int(4 + 22 * scale))
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grid_shape(count: int, size: int, *, columns: int = 8, gap: int = 4) -> tuple[int, int]:
    """(height, width) of `preview_grid`'s grid of `count` samples of `size` px."""
    columns = min(columns, count)
    groups = -(-count // columns)
    return groups * 2 * size + (groups * 2 - 1) * gap, columns * size + (columns - 1) * gap


def sample_caption(sample: SynthesizedSample, opacity_sources: Collection[str]) -> str:
    """The source's name, with the Eq. 3 opacity d for a source blended with one, and the noise
    strength for feature noise; patch and own-pixel sources (cutpaste, nsa, shade, crack) have no
    opacity, so they show no d."""
    if sample.label and sample.source in opacity_sources:
        return f"{sample.source} d={sample.delta:.2f}"
    if sample.label and sample.noise_seed is not None:
        return f"{sample.source} sigma={sample.delta:.2f}"
    return sample.source


def preview_grid(samples: Sequence[SynthesizedSample], *, opacity_sources: Collection[str] = AUTHORS_DELTA_RANGES,
                 columns: int = 8, gap: int = 4) -> np.ndarray:
    """RGB uint8 grid: per group of up to `columns` samples, a row of the synthetic images (captioned
    by `sample_caption`) above a row of the same images with their masks overlaid.
    Cells are separated by `gap` white pixels. All samples must have the same size."""
    if not samples:
        raise ValueError("preview_grid needs at least one sample")
    size = samples[0].image.shape[0]
    columns = min(columns, len(samples))
    grid = np.full((*grid_shape(len(samples), size, columns=columns, gap=gap), 3), BACKGROUND, np.uint8)
    for index, sample in enumerate(samples):
        if sample.image.shape != (size, size, 3):
            raise ValueError(f"sample {index} is {sample.image.shape}, expected {(size, size, 3)}")
        group, column = divmod(index, columns)
        top, left = group * 2 * (size + gap), column * (size + gap)
        grid[top:top + size, left:left + size] = _caption(sample.image, sample_caption(sample, opacity_sources))
        lower = top + size + gap
        grid[lower:lower + size, left:left + size] = mask_overlay(sample.image, sample.mask)
    return grid
