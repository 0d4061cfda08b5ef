"""Feature-space anomalies (ours, not in the paper; after SimpleNet, Liu et al. CVPR 2023).

The image-space sources show the detector only the kinds of defect they can draw. This source
draws none: the sample's image stays normal, and Gaussian noise is added to its selected features
varphi_k(I) under a Perlin mask, so the reconstruction networks learn to pull any off-manifold
feature back to the normal one and the discriminator learns to flag the residual that is left,
whatever its direction.

The noise added to channel c of layer k at a feature cell is sigma * s_kc * m * eps, with
eps ~ N(0, 1), s_kc the channel's standard deviation over the normal fit features (so sigma is a
strength relative to the normal variation, the same for every layer), m the fraction of the cell
covered by the mask, and sigma ~ U(`strength`) per sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from realnet.errors import RealnetError


class FeatureNoiseSource:
    """Marks a sample for feature-space noise: `strength(rng)` draws sigma, `seed(rng)` the seed
    of its eps, so the noise depends on the sample's own randomness only (resumable, and equal on
    every rank of a distributed run)."""

    def __init__(self, strength: tuple[float, float] = (0.1, 1.0)):
        if not 0 < strength[0] <= strength[1]:
            raise RealnetError(f"feature noise strength must satisfy 0 < low <= high, got {strength}")
        self.strength_range = strength

    def strength(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(*self.strength_range))

    @staticmethod
    def seed(rng: np.random.Generator) -> int:
        return int(rng.integers(2**62))


def channel_std(features: list[Tensor]) -> list[Tensor]:
    """s_kc: each channel's standard deviation over the images and positions of `features`."""
    return [f.float().transpose(0, 1).flatten(1).std(dim=1) for f in features]


def add_feature_noise(features: list[Tensor], stds: list[Tensor], masks: Tensor, strengths: Tensor,
                      seeds: list[int]) -> list[Tensor]:
    """features_k + sigma * s_k * m_k * eps for a batch of rows (see the module docstring).

    features: per layer (B, C_k, H_k, W_k); masks: (B, S, S) bool at image resolution;
    strengths: (B,) sigma per row; seeds: one int per row for its eps.
    """
    if not (len(seeds) == len(strengths) == len(masks) == len(features[0])):
        raise ValueError("add_feature_noise needs one mask, strength and seed per row")
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]  # CPU draws: the same on any device
    masks, strengths = masks.to(features[0].device)[:, None].float(), strengths.to(features[0].device).float()
    noisy = []
    for f, s in zip(features, stds):
        eps = torch.stack([torch.randn(f.shape[1:], generator=g) for g in generators]).to(f.device)
        coverage = F.interpolate(masks, size=f.shape[-2:], mode="area")
        scale = strengths.view(-1, 1, 1, 1) * s.to(f.device).view(1, -1, 1, 1)
        noisy.append((f.float() + scale * coverage * eps).to(f.dtype))
    return noisy
