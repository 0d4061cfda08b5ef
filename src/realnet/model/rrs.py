"""Reconstruction Residuals Selection (paper Sec. 3.3, Fig. 5)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realnet.model.reconstruction import aligned_targets

RRS_MODES = ("max", "avg", "max_avg", "all")


def reconstruction_residuals(features: list[Tensor], reconstructions: list[Tensor]) -> Tensor:
    """E(A) of Sec. 3.3: per-layer E_k = [phi_k - G_k(phi_k)]^2 at the reconstruction's size (a
    layer's own in architecture A, its group's finer one in B and C), upsampled (bilinear) to the
    finest resolution and concatenated channel-wise into (B, sum m_k, h', w')."""
    size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
    residuals = []
    for feature, reconstruction in zip(aligned_targets(features, reconstructions), reconstructions):
        residual = (feature - reconstruction).square()
        if residual.shape[-2:] != size:
            residual = F.interpolate(residual, size=size, mode="bilinear", align_corners=False)
        residuals.append(residual)
    return torch.cat(residuals, dim=1)


def retained_count(total_channels: int, ratio: float, mode: str) -> int:
    """r = P * sum(m_k), rounded so Max&Avg splits it into two equal halves."""
    if mode == "all":
        return total_channels
    r = max(1, round(ratio * total_channels))
    if mode == "max_avg":
        r = max(2, 2 * math.ceil(r / 2))
    return min(r, total_channels * (2 if mode == "max_avg" else 1))


def select_residuals(residuals: Tensor, ranking: Tensor, r: int, mode: str) -> Tensor:
    """E_RRS(A, r): per image, the residual channels with the r largest spatial maxima (GMP),
    the r largest spatial means (GAP), or r/2 of each concatenated (Max&Avg).

    `ranking` is the tensor the channels are ranked on (the batch-normalised residuals); the
    values are gathered from the un-normalised `residuals`. Max&Avg may pick a channel twice,
    once per criterion, as in the paper's concatenation.
    """
    if mode == "all":
        return residuals
    if mode == "max":
        picks = [ranking.amax(dim=(2, 3)).topk(r, dim=1).indices]
    elif mode == "avg":
        picks = [ranking.mean(dim=(2, 3)).topk(r, dim=1).indices]
    elif mode == "max_avg":
        half = r // 2
        picks = [
            ranking.amax(dim=(2, 3)).topk(half, dim=1).indices,
            ranking.mean(dim=(2, 3)).topk(half, dim=1).indices,
        ]
    else:
        raise ValueError(f"unknown RRS mode {mode!r}")
    index = torch.cat(picks, dim=1)
    b, _, h, w = residuals.shape
    return residuals.gather(1, index[:, :, None, None].expand(b, index.shape[1], h, w))


class ResidualSelection(nn.Module):
    """Ranks residual channels after a BatchNorm without affine parameters (momentum 0.9, so
    nearly batch statistics in training; its running statistics are used at inference, and with
    that momentum they are almost those of the last training batch unless `recalibrate`d)."""

    def __init__(self, total_channels: int, ratio: float = 1 / 3, mode: str = "max_avg"):
        super().__init__()
        if mode not in RRS_MODES:
            raise ValueError(f"unknown RRS mode {mode!r}")
        self.mode = mode
        self.retained = retained_count(total_channels, ratio, mode)
        self.norm = nn.BatchNorm2d(total_channels, affine=False, momentum=0.9)

    @torch.no_grad()
    def recalibrate(self, residual_batches: Iterable[Tensor]) -> int:
        """Ours: replaces the running statistics by the mean over many batches of the per-batch
        statistics BatchNorm computes in training (its cumulative average, momentum None), so
        inference ranks channels against the training distribution rather than one batch of it.
        Returns the number of batches seen; with none the statistics are left as they were."""
        average = nn.BatchNorm2d(self.norm.num_features, affine=False, momentum=None).to(
            self.norm.running_mean.device)
        count = 0
        for residuals in residual_batches:
            average(residuals)
            count += 1
        if count:
            self.norm.running_mean.copy_(average.running_mean)
            self.norm.running_var.copy_(average.running_var)
        return count

    def forward(self, residuals: Tensor) -> Tensor:
        if self.mode == "all":
            return residuals
        return select_residuals(residuals, self.norm(residuals), self.retained, self.mode)
