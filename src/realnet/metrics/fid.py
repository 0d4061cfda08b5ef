"""Fréchet distance between image feature distributions (FID, Heusel et al. 2017; paper Tab. S6).

The feature network is the caller's choice. Values are comparable only between runs that used
the same network, weights and image size: the published FID uses a TF-Inception port, which
`realnet sdas quality` reports by name whenever another network is used.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def pooled_features(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """One vector per image: the deepest feature map averaged over its spatial positions."""
    return feature_maps[-1].float().mean(dim=(2, 3))


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of (N, D) features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) between two Gaussians.

    When S1 S2 is singular (fewer images than feature dimensions) its square root is not finite;
    then eps is added to both diagonals, the usual fix. A tiny imaginary part from rounding is
    dropped; a large one means the covariances are not valid and raises ValueError.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError("means and covariances must describe Gaussians of the same dimension")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"covariance square root has an imaginary part of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two sets of (N, D) feature vectors."""
    return frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))
