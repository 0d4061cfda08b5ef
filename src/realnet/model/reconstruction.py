"""Reconstruction networks G_k (paper Sec. 3.2, Eq. 5; appendix C.4, Fig. S2, Tab. S4).

Each network maps AFS-selected anomalous features phi_k(A) back to the normal features phi_k(I).
They are trained with L_recon = sum_k ||G_k(phi_k(A)) - phi_k(I)||^2 (Eq. 5); the loss itself lives
with the training objective, this module only holds the networks.

Three multi-scale arrangements (Fig. S2):

- ``A`` (paper default): one U-Net per layer, no alignment, no weight sharing.
- ``B``: every layer is upsampled (bilinear) to the finest stride, the channels are concatenated
  and one U-Net reconstructs them all; the output is split back per layer and stays at that
  stride. The paper evaluates B "only with up-sampling alignment" (App. C.4).
- ``C``: neighbouring layers are paired, (1, 2), (3, 4), ...; inside a pair the coarser layer is
  upsampled to the finer one's stride, one U-Net per pair, then split as in B.
  With an odd number of layers the last one gets a network of its own (as in A).

In B and C a coarser layer is therefore reconstructed, compared with its (upsampled) target and
turned into a residual at its group's finer stride: the Limitations section credits C's higher
PRO to exactly that "increasing the resolution of anomaly detection". `aligned_targets` brings
phi_k to the size of G_k's output for Eq. 5 and the residuals.

Every network gets ``base_width = round(width_factor * (sum of its input channels))``. With the
WRN50 preset (m = 256/512/512/256, width 0.5) this gives 534M (A), 1.92G (B) and 0.96G (C)
parameters; in fp32 plus the 66.8M-parameter backbone that is 2.24 / 7.41 / 3.83 GiB against the
paper's 2.20 / 7.22 / 3.75 "GB" in Tab. S4, so the B and C readings above match the paper's sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("A", "B", "C")


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (works on the meta device too)."""
    return sum(p.numel() for p in module.parameters())


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest divisor of ``n`` that is <= ``limit`` (at least 1).

    Used for GroupNorm group counts and attention head counts, which must divide the width.
    """
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def resize_features(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Align a feature map to ``size``: bilinear to enlarge, area averaging to shrink.

    Shrinking by an integer factor (the stride ratio) is exactly average pooling with that kernel.
    """
    current = tuple(x.shape[-2:])
    if current == tuple(size):
        return x
    if current[0] <= size[0] and current[1] <= size[1]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(x, size)


def _group_norm(width: int, norm_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(largest_divisor_at_most(width, norm_groups), width)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm -> SiLU -> 3x3 conv) twice, plus a skip.

    The skip is a 1x1 conv when the width changes, the identity otherwise. The notes name the unit
    once ("GroupNorm(32) -> SiLU -> 3x3 conv"); we read it as guided-diffusion's block, which the
    authors' U-Net comes from and which applies that unit twice.
    """

    def __init__(self, in_width: int, out_width: int, norm_groups: int):
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(in_width, norm_groups),
            nn.SiLU(),
            nn.Conv2d(in_width, out_width, 3, padding=1),
            _group_norm(out_width, norm_groups),
            nn.SiLU(),
            nn.Conv2d(out_width, out_width, 3, padding=1),
        )
        self.skip = nn.Identity() if in_width == out_width else nn.Conv2d(in_width, out_width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class SelfAttention(nn.Module):
    """Multi-head spatial self-attention with a residual connection.

    ``head_channels`` channels per head (64 in the paper). The head count is the largest divisor
    of the width not above ``width // head_channels`` (at least one head), so widths that are not
    a multiple of ``head_channels`` (small CPU presets) still work; for multiples it is exact.
    """

    def __init__(self, width: int, head_channels: int, norm_groups: int):
        super().__init__()
        self.num_heads = largest_divisor_at_most(width, width // head_channels)
        self.norm = _group_norm(width, norm_groups)
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # each (b, heads, hw, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Stage(nn.Module):
    """A residual block optionally followed by self-attention."""

    def __init__(self, in_width: int, out_width: int, attend: bool, head_channels: int,
                 norm_groups: int):
        super().__init__()
        self.block = ResidualBlock(in_width, out_width, norm_groups)
        self.attention = (SelfAttention(out_width, head_channels, norm_groups) if attend
                          else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.block(x))


class ReconstructionUNet(nn.Module):
    """One reconstruction network G_k (paper Sec. 3.2): a U-Net with in = out = ``channels``.

    Layout (``channel_mults`` = (1, 2, 4), ``num_res_blocks`` = 2 in the paper):

    - a 3x3 input conv to ``base_width``;
    - encoder: per level a 2x2 average pooling (not before the first level), then
      ``num_res_blocks`` residual blocks at ``base_width * mult``; each block's output is a skip;
    - middle: residual block, self-attention, residual block;
    - decoder, mirror image: per level ``num_res_blocks`` residual blocks, each fed the
      concatenation of the running map and its mirror skip, then a transposed conv (k4, s2, p1)
      up to the next level (not after the first level);
    - GroupNorm -> SiLU -> 3x3 output conv back to ``channels``.

    The notes do not say how many skips there are; with two-conv residual blocks, one skip per
    block (rather than guided-diffusion's extra skips from the input conv and the poolings, and its
    num_res_blocks + 1 decoder blocks per level) is the reading that comes closest to the notes'
    parameter counts: 53.5M for m = 256 and 214M for m = 512 at width 0.5 m (notes: 52M and 207M;
    guided-diffusion's layout of these blocks would give 63M and 252M). A one-conv block in
    guided-diffusion's layout would also come close (about 52M and 207M); nothing else in the
    notes or the paper decides between the two, and `num_res_blocks` / `channel_mults` are the
    knobs the presets change.

    Self-attention (``attention_head_channels`` per head) follows every residual block of the
    downsampled levels (level index >= 1) and sits in the middle; ``attention=False`` drops it all.
    GroupNorm uses the largest divisor of each width that is <= ``norm_groups`` (32 in the paper,
    where it always divides), so any width is accepted.

    The output conv is zero-initialised, so G(phi) = 0 at initialisation. That is the authors'
    choice; we follow it so training starts from the same point as theirs.

    Input height and width must be divisible by ``2 ** (len(channel_mults) - 1)`` (4 for the
    paper's three levels), because each pooling halves the map and the transposed convs must
    restore the skip sizes exactly; otherwise ``forward`` raises ``ValueError``.
    """

    def __init__(self, channels: int, base_width: int, channel_mults: Sequence[int] = (1, 2, 4),
                 num_res_blocks: int = 2, attention_head_channels: int = 64,
                 attention: bool = True, norm_groups: int = 32):
        super().__init__()
        if channels < 1 or base_width < 1 or num_res_blocks < 1 or not channel_mults:
            raise ValueError(
                f"ReconstructionUNet needs channels, base_width, num_res_blocks >= 1 and at least "
                f"one channel multiplier (got {channels}, {base_width}, {num_res_blocks}, "
                f"{tuple(channel_mults)})")
        self.channels = channels
        self.size_multiple = 2 ** (len(channel_mults) - 1)

        def stage(in_width: int, out_width: int, level: int) -> _Stage:
            return _Stage(in_width, out_width, attention and level > 0, attention_head_channels,
                          norm_groups)

        self.input_conv = nn.Conv2d(channels, base_width, 3, padding=1)
        self.encoder = nn.ModuleList()
        skip_widths = []
        width = base_width
        bottom, at_bottom = len(channel_mults) - 1, []  # the modules that run on the smallest map
        for level, mult in enumerate(channel_mults):
            if level != 0:
                self.encoder.append(nn.AvgPool2d(2))
            for _ in range(num_res_blocks):
                self.encoder.append(stage(width, base_width * mult, level))
                if level == bottom:
                    at_bottom.append(self.encoder[-1])
                width = base_width * mult
                skip_widths.append(width)

        self.middle = nn.Sequential(
            ResidualBlock(width, width, norm_groups),
            (SelfAttention(width, attention_head_channels, norm_groups) if attention
             else nn.Identity()),
            ResidualBlock(width, width, norm_groups),
        )

        self.decoder = nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            for _ in range(num_res_blocks):
                out_width = base_width * channel_mults[level]
                self.decoder.append(stage(width + skip_widths.pop(), out_width, level))
                if level == bottom:
                    at_bottom.append(self.decoder[-1])
                width = out_width
            if level != 0:
                self.decoder.append(nn.ConvTranspose2d(width, width, 4, stride=2, padding=1))

        self.output = nn.Sequential(
            _group_norm(width, norm_groups),
            nn.SiLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)
        at_bottom.append(self.middle)
        if len(channel_mults) == 1:
            at_bottom.append(self.output)
        # GroupNorm on one channel of a 1x1 map normalises every value to zero (and refuses a batch of one)
        self.smallest_bottom_group = min(norm.num_channels // norm.num_groups for part in at_bottom
                                         for norm in part.modules() if isinstance(norm, nn.GroupNorm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if x.shape[1] != self.channels:
            raise ValueError(f"ReconstructionUNet expects {self.channels} channels, "
                             f"got {x.shape[1]}")
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"ReconstructionUNet needs a feature map whose height and width are "
                             f"divisible by {self.size_multiple}, got {h}x{w}")
        x = self.input_conv(x)
        skips = []
        for layer in self.encoder:
            x = layer(x)
            if isinstance(layer, _Stage):
                skips.append(x)
        x = self.middle(x)
        for layer in self.decoder:
            if isinstance(layer, _Stage):
                x = layer(torch.cat([x, skips.pop()], dim=1))
            else:
                x = layer(x)
        return self.output(x)


def reconstruction_groups(arch: str, num_layers: int) -> tuple[tuple[int, ...], ...]:
    """Which layers share one network in architecture ``arch`` (Fig. S2), as index tuples."""
    if arch == "A":
        return tuple((k,) for k in range(num_layers))
    if arch == "B":
        return (tuple(range(num_layers)),)
    if arch == "C":
        return tuple(tuple(range(k, min(k + 2, num_layers))) for k in range(0, num_layers, 2))
    raise ValueError(f"unknown reconstruction architecture {arch!r}; "
                     f"choose one of {', '.join(ARCHITECTURES)}")


class ReconstructionNetworks(nn.Module):
    """The set {G_1, ..., G_K} of reconstruction networks (Sec. 3.2) in architecture A, B or C.

    ``channels[k]`` is m_k (AFS output width of layer k) and ``strides[k]`` its stride in pixels;
    layers are given from fine to coarse as the backbone emits them. ``forward`` takes the K
    selected feature maps and returns K reconstructions G_k(phi_k). Each group of layers that
    shares a network (see the module docstring) is aligned to the size of its finest-stride
    member, whose height and width must then be divisible by the U-Net's ``size_multiple``, and
    each layer's reconstruction has that size (its own size in A). Extra keyword arguments go to every :class:`ReconstructionUNet`.
    """

    def __init__(self, arch: str, channels: Sequence[int], strides: Sequence[int],
                 width_factor: float = 0.5, **unet_kwargs):
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"ReconstructionNetworks needs one stride per layer, got "
                             f"{len(channels)} channel counts and {len(strides)} strides")
        if width_factor <= 0:
            raise ValueError(f"width_factor must be positive, got {width_factor}")
        self.arch = arch
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(int(s) for s in strides)
        self.groups = reconstruction_groups(arch, len(channels))
        self.references = tuple(min(group, key=lambda k: self.strides[k]) for group in self.groups)
        self.networks = nn.ModuleList()
        for group in self.groups:
            group_channels = sum(self.channels[k] for k in group)
            base_width = max(1, round(width_factor * group_channels))
            self.networks.append(ReconstructionUNet(group_channels, base_width, **unet_kwargs))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.channels):
            raise ValueError(f"ReconstructionNetworks expects {len(self.channels)} feature maps, "
                             f"got {len(features)}")
        for k, feature in enumerate(features):
            if feature.shape[1] != self.channels[k]:
                raise ValueError(f"feature map {k} has {feature.shape[1]} channels, "
                                 f"expected {self.channels[k]}")
        reconstructions: list[torch.Tensor | None] = [None] * len(features)
        for group, reference, network in zip(self.groups, self.references, self.networks):
            size = tuple(features[reference].shape[-2:])
            aligned = torch.cat([resize_features(features[k], size) for k in group], dim=1)
            parts = torch.split(network(aligned), [self.channels[k] for k in group], dim=1)
            for k, part in zip(group, parts):
                reconstructions[k] = part
        return reconstructions


def aligned_targets(features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each phi_k resized to its reconstruction's size (bilinear up in B and C; unchanged in A),
    so that Eq. 5 and the residuals E_k compare maps of one size."""
    return [resize_features(f, tuple(g.shape[-2:])) for f, g in zip(features, reconstructions)]
