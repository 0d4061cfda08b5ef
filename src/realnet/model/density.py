"""Feature-density branch fused into RealNet's anomaly map (ours, not in the paper).

The discriminator only learns the kinds of anomaly the synthesis shows it. A training-free
density model of the normal features responds to any departure from normal: d is the
per-position Mahalanobis distance of the frozen backbone's features to a Gaussian fitted on the
normal fit images (as PaDiM does, Defard et al., ICPR 2021). `realnet.model.fusion` fuses it
with the discriminator's map.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realnet.numerics import as_float64


def feature_embedding(features: list[Tensor], channel_indices: Tensor | None = None) -> Tensor:
    """The layers' features concatenated at the finest layer's resolution (bilinear upsampling),
    optionally restricted to `channel_indices` of the concatenation: (B, C, h, w)."""
    size = features[0].shape[-2:]
    embedding = torch.cat([features[0].float()] + [
        F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False) for f in features[1:]], dim=1)
    return embedding if channel_indices is None else embedding.index_select(1, channel_indices)


def local_embedding(features: list[Tensor], neighbourhood: int, channel_indices: Tensor | None = None) -> Tensor:
    """Each layer's features averaged over a neighbourhood x neighbourhood window of positions
    (PatchCore's local aggregation, so that a position also sees its surroundings; 1: none), then
    `feature_embedding`: (B, C, h, w)."""
    if neighbourhood > 1:
        features = [F.avg_pool2d(f.float(), neighbourhood, 1, neighbourhood // 2, count_include_pad=False)
                    for f in features]
    return feature_embedding(features, channel_indices)


def gaussian_statistics(embeddings: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-position mean (h, w, C) and unbiased covariance (h, w, C, C) of batches of
    embeddings (B, C, h, w), accumulated in float64 so that any number of images needs one
    covariance's memory."""
    total = outer = None
    count = 0
    for batch in embeddings:
        x = as_float64(batch).permute(2, 3, 0, 1).contiguous()  # (h, w, B, C); contiguous: a faster matmul
        batch_total, batch_outer = x.sum(2), x.transpose(2, 3) @ x
        if total is None:
            total, outer = batch_total, batch_outer
        else:  # in place: no new (h, w, C, C) tensor per batch
            total += batch_total
            outer += batch_outer
        count += batch.shape[0]
    if count < 2:
        raise ValueError("gaussian_statistics needs at least two embeddings")
    mean = total / count
    covariance = (outer - count * mean.unsqueeze(-1) * mean.unsqueeze(-2)) / (count - 1)
    return mean, covariance


def mahalanobis_map(embedding: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """sqrt((x - mu)^T Sigma^-1 (x - mu)) at every position: embedding (B, C, h, w), mean
    (h, w, C), precision (h, w, C, C) -> (B, h, w)."""
    centred = embedding.permute(2, 3, 0, 1).contiguous() - mean.unsqueeze(2)  # (h, w, B, C)
    squared = ((centred @ precision) * centred).sum(-1)  # (h, w, B)
    return squared.clamp_min(0).sqrt().permute(2, 0, 1)


class FeatureDensity(nn.Module):
    """Per-position Gaussian of the normal backbone features (those of the layers at
    `feature_indices` of the backbone's list, all when None), each layer's optionally averaged over
    a `neighbourhood` of positions first; returns the Mahalanobis distance map (B, h, w).
    Identity statistics (zero mean, unit precision) until `calibrate`."""

    def __init__(self, channels: int, grid: tuple[int, int], channel_indices: Tensor | None = None,
                 neighbourhood: int = 1, feature_indices: tuple[int, ...] | None = None):
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"FeatureDensity: the neighbourhood must be an odd number >= 1, got {neighbourhood}")
        self.neighbourhood = neighbourhood
        self.feature_indices = None if feature_indices is None else tuple(feature_indices)
        kept = channels if channel_indices is None else int(channel_indices.numel())
        self.register_buffer("channel_indices", torch.arange(channels) if channel_indices is None
                             else channel_indices.long().clone())
        self.register_buffer("mean", torch.zeros(*grid, kept))
        self.register_buffer("precision", torch.eye(kept).expand(*grid, kept, kept).clone())

    def embed(self, features: list[Tensor]) -> Tensor:
        if self.feature_indices is not None:
            features = [features[i] for i in self.feature_indices]
        return local_embedding(features, self.neighbourhood, self.channel_indices)

    @torch.no_grad()
    def calibrate(self, mean: Tensor, covariance: Tensor, regularization: float) -> None:
        """Sigma^-1 of the covariance plus `regularization` on its diagonal (PaDiM's 0.01), through
        a Cholesky factorisation: the matrix is symmetric positive definite, and MKL's batched LU
        behind torch.linalg.inv fails on the cpu preset's 32x32 grid of 152x152 matrices once
        torch.set_num_threads has been called."""
        if mean.shape != self.mean.shape or covariance.shape != self.precision.shape:
            raise ValueError(f"FeatureDensity: statistics of shape {tuple(mean.shape)} do not match "
                             f"{tuple(self.mean.shape)}")
        eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
        self.mean.copy_(mean.float())
        self.precision.copy_(torch.cholesky_inverse(torch.linalg.cholesky(covariance + regularization * eye)).float())

    def forward(self, features: list[Tensor]) -> Tensor:
        return mahalanobis_map(self.embed(features), self.mean, self.precision)
