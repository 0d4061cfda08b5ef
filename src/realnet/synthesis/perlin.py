"""Perlin noise and the binary anomaly-shape mask M of paper Eq. 3 (after DRAEM, ref. [48])."""

from __future__ import annotations

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at 0, 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise of `shape` (H, W) with `scale` = (cells along y, cells along x).

    A random unit gradient sits on each lattice corner; each pixel interpolates the dot products of
    its four surrounding corners' gradients with its offsets from them. The result is scaled by
    sqrt(2) so it lies in [-1, 1] (the convention of DRAEM's generator, which the 0.5 threshold of
    the paper's masks assumes); it is 0 on lattice points. H and W need not be multiples of the
    scale. Returns float64 (H, W).
    """
    height, width = shape
    cells_y, cells_x = int(scale[0]), int(scale[1])
    if cells_y < 1 or cells_x < 1:
        raise ValueError(f"perlin scale must be >= 1 per axis, got {scale}")
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cells_y + 1, cells_x + 1))
    grad_y, grad_x = np.sin(angles), np.cos(angles)

    pos_y = np.arange(height) * (cells_y / height)
    pos_x = np.arange(width) * (cells_x / width)
    cell_y, cell_x = pos_y.astype(np.int64), pos_x.astype(np.int64)
    frac_y, frac_x = (pos_y - cell_y)[:, None], (pos_x - cell_x)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        rows, cols = cell_y + dy, cell_x + dx  # row then column gathers: cheaper than one 2-D fancy index
        return grad_y[rows][:, cols] * (frac_y - dy) + grad_x[rows][:, cols] * (frac_x - dx)

    u, v = _fade(frac_x), _fade(frac_y)
    top = corner(0, 0) * (1.0 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1.0 - u) + corner(1, 1) * u
    return np.sqrt(2.0) * (top * (1.0 - v) + bottom * v)


def perlin_mask(
    size: int,
    rng: np.random.Generator,
    *,
    min_exponent: int = 0,
    max_exponent: int = 6,
    threshold: float = 0.5,
    rotation: float = 90.0,
) -> np.ndarray:
    """Anomaly shape M for Eq. 3: Perlin noise with 2^k cells per axis (k an integer drawn per
    axis from [min_exponent, max_exponent)), rotated by U(-rotation, rotation) degrees about the
    centre (outside is 0), thresholded at > threshold. Returns bool (size, size); it may be empty.
    """
    if not 0 <= min_exponent < max_exponent:
        raise ValueError(f"need 0 <= min_exponent < max_exponent, got {min_exponent}, {max_exponent}")
    exponent_y, exponent_x = rng.integers(min_exponent, max_exponent, size=2)
    noise = perlin_noise((size, size), (2**exponent_y, 2**exponent_x), rng).astype(np.float32)
    angle = rng.uniform(-rotation, rotation)
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, 1.0)
    rotated = cv2.warpAffine(
        noise, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    return rotated > threshold
