"""Discriminator and score pooling (paper Sec. 3.3 and appendix B).

The discriminator maps the RRS-selected residuals E_RRS(A, r) (r channels at the finest feature
stride) to 2-class pixel logits at image resolution; it is trained with the cross-entropy
L_seg of Eq. 6. Channel 1 of the softmax is the anomaly map; the image score is the maximum of
its 16x16 mean-filtered version. Optionally (ours) the map is first standardised per pixel
position against normal images (`PositionNormalization`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from realnet.numerics import as_float64


class ResidualUnit(nn.Module):
    """x -> ReLU(x + BN(conv1x1(ReLU(BN(conv3x3(x)))))), width preserved.

    The notes only say "two residual units on 512 channels" in a discriminator of about 6M
    parameters. A 3x3 conv (spatial context) followed by a 1x1 conv (the per-pixel "MLP" the
    paper mentions) is our reading: it gives 5.88M parameters on 512 channels, where two 3x3
    convs per unit would give 10M and a single 3x3 conv 5.35M.
    """

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Discriminator(nn.Module):
    """Convolutional discriminator: E_RRS (B, in_channels, h, w) -> logits (B, 2, H, W).

    Layout (notes, "RRS and discriminator"), with ``hidden`` = (128, 32, 8, 4) in the paper:
    ``num_residual_units`` :class:`ResidualUnit` on ``in_channels``; 3x3 conv in -> hidden[0]
    with BatchNorm; 3x3 convs -> hidden[1] -> hidden[2]; bilinear x2; 3x3 convs -> hidden[3] -> 2;
    bilinear to the image size. The notes are silent on activations: we assume a ReLU after every
    conv except the last, which emits raw logits, and conv biases everywhere except before a
    BatchNorm.

    The image size is ``output_size`` (an int for square images) unless ``forward`` is given
    one; one of the two is required.
    """

    def __init__(self, in_channels: int, hidden: Sequence[int] = (128, 32, 8, 4),
                 num_residual_units: int = 2, output_size: int | None = None):
        super().__init__()
        if len(hidden) != 4 or min(hidden) < 1:
            raise ValueError(
                f"Discriminator needs four positive hidden widths, got {tuple(hidden)}")
        self.output_size = output_size
        h0, h1, h2, h3 = hidden
        self.residual_units = nn.Sequential(
            *(ResidualUnit(in_channels) for _ in range(num_residual_units)))
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, h0, 3, padding=1, bias=False),
            nn.BatchNorm2d(h0),
            nn.ReLU(inplace=True),
            nn.Conv2d(h0, h1, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(h1, h2, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.tail = nn.Sequential(
            nn.Conv2d(h2, h3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(h3, 2, 3, padding=1),
        )

    def forward(self, residuals: torch.Tensor,
                output_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        size = output_size if output_size is not None else self.output_size
        if size is None:
            raise ValueError("Discriminator needs an output_size (the input image size)")
        if isinstance(size, int):
            size = (size, size)
        x = self.head(self.residual_units(residuals))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.tail(x)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def anomaly_map(logits: torch.Tensor) -> torch.Tensor:
    """Pixel anomaly probability (B, H, W): softmax over the two classes, channel 1."""
    return torch.softmax(logits, dim=1)[:, 1]


class PositionNormalization(nn.Module):
    """Standardises an anomaly map per pixel position: (map - mean) / (std + MIN_STD), with the
    mean and std of the maps of normal fit images at that position (ours, not in the paper).

    A fixed camera sees some places (borders, glare, fixture edges) that always look a little
    unusual; their normal level is subtracted so a faint defect elsewhere can outrank them.
    MIN_STD (in probability units) keeps positions that are always ~0 from amplifying noise.
    It assumes a position is the same place on every image; on crops of varying framing it can
    hurt (Magnetic Tile: docs/results-history.md). Until `calibrate` is called it is the identity.
    """

    MIN_STD = 0.01

    def __init__(self, size: int | tuple[int, int]):
        super().__init__()
        shape = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("offset", torch.zeros(shape))
        self.register_buffer("scale", torch.ones(shape))

    @torch.no_grad()
    def calibrate(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.shape != self.offset.shape or std.shape != self.scale.shape:
            raise ValueError(f"PositionNormalization: statistics of shape {tuple(mean.shape)} do not "
                             f"match the map size {tuple(self.offset.shape)}")
        self.offset.copy_(mean)
        self.scale.copy_(1.0 / (std + self.MIN_STD))

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        return (anomaly_map - self.offset) * self.scale


def position_statistics(maps: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean and (population) std over batches of maps (B, H, W), accumulated in
    float64 so that hundreds of images need one map's memory."""
    total = squares = None
    count = 0
    for batch in maps:
        batch = as_float64(batch)
        total = batch.sum(0) if total is None else total + batch.sum(0)
        squares = batch.square().sum(0) if squares is None else squares + batch.square().sum(0)
        count += batch.shape[0]
    if count == 0:
        raise ValueError("position_statistics needs at least one map")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


def image_score(anomaly_map: torch.Tensor, kernel: int = 16) -> torch.Tensor:
    """Image anomaly score (B,): max of the ``kernel`` x ``kernel`` mean-filtered map.

    The mean filter has stride 1 and no padding, so only windows fully inside the map count.
    """
    if anomaly_map.dim() != 3:
        raise ValueError(
            f"image_score expects a (B, H, W) map, got shape {tuple(anomaly_map.shape)}")
    if min(anomaly_map.shape[-2:]) < kernel:
        raise ValueError(f"image_score: map {tuple(anomaly_map.shape[-2:])} is smaller than the "
                         f"{kernel}x{kernel} window")
    pooled = F.avg_pool2d(anomaly_map.unsqueeze(1), kernel, stride=1)
    return pooled.amax(dim=(1, 2, 3))
