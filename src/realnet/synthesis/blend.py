"""Image blending of paper Eq. 3."""

from __future__ import annotations

import numpy as np


def blend_anomaly(image: np.ndarray, source: np.ndarray, mask: np.ndarray, delta: float) -> np.ndarray:
    """Paper Eq. 3: A = (1 - M) * I + M * (delta * P + (1 - delta) * I).

    image I and source P: (H, W, C) arrays on the same intensity scale (e.g. 0..255); mask M:
    (H, W) or (H, W, 1), binary or soft in [0, 1]; delta: opacity in [0, 1]. The arithmetic is done
    in floating point: float64 when I or P is float64, float32 otherwise (uint8 inputs included).
    Returns that float dtype, unrounded and unclipped; the result stays within the range of I and
    P because it is a convex combination of them.
    """
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"opacity delta must be in [0, 1], got {delta}")
    if image.shape != source.shape:
        raise ValueError(f"image {image.shape} and source {source.shape} must have the same shape")
    dtype = np.result_type(image.dtype, source.dtype, np.float32)
    image_f, source_f = image.astype(dtype, copy=False), source.astype(dtype, copy=False)
    m = mask.astype(dtype, copy=False).reshape(image.shape[0], image.shape[1], 1)
    return (1.0 - m) * image_f + m * (delta * source_f + (1.0 - delta) * image_f)
