"""Anomaly-aware Features Selection (paper Sec. 3.2) and its ablation alternatives (Tab. 5a).

AFS scores every backbone channel by how well its squared anomalous-minus-normal difference
matches the synthetic anomaly mask (Eq. 4) and keeps the m_k best channels of each layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMALISATION_EPS = 1e-4


def afs_loss(anomalous: Tensor, normal: Tensor, mask: Tensor) -> Tensor:
    """Eq. 4 for one layer and one batch: per-channel ||F([phi(A) - phi(I)]^2) - M||^2.

    F is a per-channel min-max normalisation over all B*H*W positions of the batch, and M is
    the anomaly mask resized (nearest) to the feature resolution. Returns a (C,) tensor of
    mean squared errors; the caller sums it over batches.
    """
    difference = (anomalous.float() - normal.float()).square()
    low = difference.amin(dim=(0, 2, 3), keepdim=True)
    high = difference.amax(dim=(0, 2, 3), keepdim=True)
    normalised = (difference - low) / (high - low + NORMALISATION_EPS)
    target = F.interpolate(mask[:, None].float(), size=difference.shape[-2:], mode="nearest")
    return (normalised - target).square().mean(dim=(0, 2, 3))


def rank_channels(losses: Tensor) -> Tensor:
    """Channel indices from best (lowest AFS loss) to worst; NaN counts as the worst score."""
    scores = torch.nan_to_num(losses.double(), nan=float("inf"))
    return torch.argsort(scores, stable=True)


class FeatureSelector(nn.Module):
    """Maps each layer's backbone features to the m_k features that are reconstructed.

    "afs" and "rdr" keep a subset of channels (stored as index buffers, so they travel with the
    checkpoint); "rlpr" applies a fixed, untrained random 1x1 projection to m_k channels.
    """

    def __init__(self, method: str, in_channels: list[int], out_channels: list[int]):
        super().__init__()
        if method not in ("afs", "rdr", "rlpr"):
            raise ValueError(f"unknown feature selection method {method!r}")
        if len(in_channels) != len(out_channels):
            raise ValueError("one m_k is needed per backbone layer")
        for c, m in zip(in_channels, out_channels):
            if not 0 < m <= c:
                raise ValueError(f"m_k={m} must be in [1, {c}] for a layer with {c} channels")
        self.method = method
        self.in_channels = list(in_channels)
        self.out_channels = list(out_channels)
        for k, m in enumerate(out_channels):
            self.register_buffer(f"indices_{k}", torch.arange(m))
        self.projections = nn.ModuleList(
            nn.Conv2d(c, m, 1, bias=False) if method == "rlpr" else nn.Identity()
            for c, m in zip(in_channels, out_channels)
        )
        self.projections.requires_grad_(False)

    def indices(self, layer: int) -> Tensor:
        return getattr(self, f"indices_{layer}")

    def set_indices(self, layer: int, indices: Tensor) -> None:
        if indices.numel() != self.out_channels[layer]:
            raise ValueError(f"layer {layer}: expected {self.out_channels[layer]} indices")
        self.indices(layer).copy_(indices.to(self.indices(layer)))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if self.method == "rlpr":
            return [projection(f) for projection, f in zip(self.projections, features)]
        return [f.index_select(1, self.indices(k)) for k, f in enumerate(features)]


def random_subset(channels: int, keep: int, generator: torch.Generator) -> Tensor:
    """RDR ablation: a uniformly random subset of `keep` channels (sorted)."""
    return torch.sort(torch.randperm(channels, generator=generator)[:keep]).values


def init_random_projection(selector: FeatureSelector, generator: torch.Generator) -> None:
    """RLPR ablation: Gaussian projection weights scaled to preserve feature variance."""
    for projection, c in zip(selector.projections, selector.in_channels):
        weight = torch.randn(projection.weight.shape, generator=generator) / c**0.5
        projection.weight.data.copy_(weight)
