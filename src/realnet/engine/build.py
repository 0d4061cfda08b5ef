"""Builds a RealNet's backbone from a config, and the RealNet around an already-created one."""

from __future__ import annotations

import math

import torch

from realnet.config import RealNetConfig
from realnet.model.afs import FeatureSelector
from realnet.model.density import FeatureDensity
from realnet.model.discriminator import Discriminator, PositionNormalization
from realnet.model.fusion import MapFusion
from realnet.model.memory import FeatureMemory
from realnet.model.realnet import RealNet
from realnet.model.reconstruction import ReconstructionNetworks, reconstruction_groups
from realnet.model.rrs import ResidualSelection
from realnet.errors import RealnetError


def build_backbone(config: RealNetConfig):
    """The frozen backbone `config.backbone` describes (timm is imported only here, on use)."""
    from realnet.model.backbone import create_backbone

    return create_backbone(config.backbone.name, weights=config.backbone.weights, layers=config.backbone.layers,
                           frozen_graph=config.backbone.frozen_graph)


def selected_channels(config: RealNetConfig, backbone_channels: list[int]) -> list[int]:
    """m_k per layer: the configured counts, or every channel when none are configured."""
    channels = config.selection.channels
    if channels is None:
        return list(backbone_channels)
    if len(channels) != len(backbone_channels):
        raise RealnetError(
            f"selection.channels has {len(channels)} entries but the backbone gives "
            f"{len(backbone_channels)} layers ({backbone_channels})"
        )
    for m, c in zip(channels, backbone_channels):
        if not 0 < m <= c:
            raise RealnetError(f"selection.channels: m_k={m} must be in [1, {c}] for that layer")
    return list(channels)


def check_image_size(size: int, strides: list[int], arch: str, channel_mults: list[int]) -> None:
    """Every feature map must be whole, and the map each reconstruction U-Net takes (its group's
    finest stride) must halve len(channel_mults) - 1 times exactly."""
    halvings = 2 ** (len(channel_mults) - 1)
    finest = [min(strides[k] for k in group) for group in reconstruction_groups(arch, len(strides))]
    needed = math.lcm(*strides, *(stride * halvings for stride in finest))
    if size % needed:
        raise RealnetError(f"train.image_size={size} does not fit this backbone's strides "
                           f"({', '.join(map(str, strides))}) and the {len(channel_mults)}-level reconstruction "
                           f"U-Nets of architecture {arch}; it must be a multiple of {needed}")


def check_bottom_maps(size: int, strides: list[int], layers: list[int], reconstruction: ReconstructionNetworks) -> None:
    """A U-Net whose smallest map is 1x1 must not normalise one channel per GroupNorm group there:
    each value would be normalised to zero, and a batch of one image (predict) is refused by torch."""
    for group, reference, network in zip(reconstruction.groups, reconstruction.references, reconstruction.networks):
        bottom = size // (strides[reference] * network.size_multiple)
        if bottom == 1 and network.smallest_bottom_group == 1:
            raise RealnetError(f"train.image_size={size} leaves the reconstruction U-Net of backbone.layers "
                               f"{', '.join(str(layers[k]) for k in group)} a 1x1 map at its bottom, where its GroupNorm "
                               "groups hold one channel each and would zero every value; use a larger image size, "
                               "fewer reconstruction.channel_mults or a larger width_factor")


DENSITY_MEMORY_LIMIT_GB = 8.0  # the float64 covariances that calibration accumulates


def density_channel_subset(total: int, channels: int | None, seed: int) -> torch.Tensor | None:
    """The sorted seeded random subset of `channels` of the `total` backbone channels that the
    density branch keeps (PaDiM's random dimensionality reduction); None keeps them all."""
    if channels is None or channels >= total:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(total, generator=generator)[:channels]).values


def density_feature_indices(density_layers: list[int] | None, backbone_layers: list[int]) -> tuple[int, ...] | None:
    """Where `density.layers` stand in the backbone's feature list; None when they are all of them."""
    if density_layers is None:
        return None
    missing = [layer for layer in density_layers if layer not in backbone_layers]
    if missing:
        raise RealnetError(f"density.layers={density_layers} names layers the backbone does not return "
                           f"({missing}; backbone.layers: {backbone_layers})")
    indices = tuple(sorted(backbone_layers.index(layer) for layer in density_layers))
    return None if indices == tuple(range(len(backbone_layers))) else indices


def build_fusion(config: RealNetConfig, backbone) -> MapFusion | None:
    """The fused maps (density.weight > 0 and/or memory.weight > 0), uncalibrated: the density
    on a seeded random subset of `density.channels` backbone channels (all when unset) on the
    finest grid of the layers it reads (`density.layers`), aggregated over `density.neighbourhood`;
    the memory on all channels, aggregated over `memory.neighbourhood`."""
    dc, mc = config.density, config.memory
    if dc.weight == 0 and mc.weight == 0:
        return None
    total = sum(backbone.channels)
    density = None
    if dc.weight > 0:
        feature_indices = density_feature_indices(dc.layers, list(backbone.layers))
        read = feature_indices or range(len(backbone.layers))  # never empty: validate_config refuses []
        density_total = sum(backbone.channels[i] for i in read)
        if dc.channels is not None and dc.channels > density_total:
            raise RealnetError(f"density.channels={dc.channels} exceeds the backbone's {density_total} channels"
                               + ("" if feature_indices is None else f" in density.layers={dc.layers}"))
        indices = density_channel_subset(density_total, dc.channels, config.train.seed)
        kept = density_total if indices is None else dc.channels
        side = config.train.image_size // min(backbone.strides[i] for i in read)
        needed_gb = side * side * kept * kept * 8 / 2**30
        if needed_gb > DENSITY_MEMORY_LIMIT_GB:
            raise RealnetError(
                f"density: {side}x{side} positions x {kept}^2 covariances need {needed_gb:.0f} GB; set "
                f"density.channels lower (PaDiM keeps 100-550 of them) or read fewer density.layers")
        density = FeatureDensity(density_total, (side, side), indices, dc.neighbourhood, feature_indices)
    memory = FeatureMemory(total, mc.neighbourhood) if mc.weight > 0 else None
    return MapFusion(density, dc.weight, memory, mc.weight, image_density_weight=dc.image_weight)


def build_model(config: RealNetConfig, backbone) -> RealNet:
    check_image_size(config.train.image_size, backbone.strides, config.reconstruction.arch,
                     config.reconstruction.channel_mults)
    channels = selected_channels(config, backbone.channels)
    selector = FeatureSelector(config.selection.method, backbone.channels, channels)
    rc = config.reconstruction
    reconstruction = ReconstructionNetworks(
        rc.arch,
        channels,
        backbone.strides,
        width_factor=rc.width_factor,
        channel_mults=tuple(rc.channel_mults),
        num_res_blocks=rc.num_res_blocks,
        attention=rc.attention,
    )
    check_bottom_maps(config.train.image_size, backbone.strides, backbone.layers, reconstruction)
    residual_selection = ResidualSelection(sum(channels), config.rrs.ratio, config.rrs.mode)
    discriminator = Discriminator(
        residual_selection.retained,
        hidden=tuple(config.discriminator.hidden),
        num_residual_units=config.discriminator.residual_units,
        output_size=config.train.image_size,
    )
    return RealNet(
        backbone,
        selector,
        reconstruction,
        residual_selection,
        discriminator,
        score_kernel=config.train.score_kernel,
        map_normalization=(PositionNormalization(config.train.image_size)
                           if config.train.map_normalization == "position" else None),
        fusion=build_fusion(config, backbone),
    )
