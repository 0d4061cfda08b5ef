"""The fused maps follow their settings: the memory's local aggregation window, the density's
channel subset, and both maps upsampled bilinearly to the image. Mutation audit: build_fusion
dropping memory.neighbourhood (always 3), the density embedding every channel instead of its
subset, and nearest-neighbour upsampling of the branch maps, passed every test before."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from realnet.config import load_config
from realnet.engine.build import build_backbone, build_fusion
from realnet.model.density import FeatureDensity
from realnet.model.fusion import MapFusion
from realnet.model.memory import FeatureMemory


def test_build_fusion_gives_the_memory_its_configured_neighbourhood():
    for neighbourhood in (1, 5):
        config = load_config("tiny", overrides=["backbone.weights=random", "memory.weight=0.5",
                                                f"memory.neighbourhood={neighbourhood}"])
        fusion = build_fusion(config, build_backbone(config))
        assert fusion.memory.neighbourhood == neighbourhood
        fine = torch.randn(1, fusion.memory.bank.shape[1], 6, 6, generator=torch.Generator().manual_seed(0))
        expected = fine if neighbourhood == 1 else F.avg_pool2d(fine, neighbourhood, 1, neighbourhood // 2,
                                                                count_include_pad=False)
        torch.testing.assert_close(fusion.memory.embed([fine]), expected)


def test_the_density_embeds_and_scores_only_its_channel_subset():
    generator = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 2, 2, 2, generator=generator)
    density = FeatureDensity(5, (4, 4), channel_indices=torch.tensor([1, 3]))
    up = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)
    kept = torch.cat([fine[:, 1:2], up[:, 0:1]], dim=1)  # concatenation index 3 is the coarse layer's first
    torch.testing.assert_close(density.embed([fine, coarse]), kept)
    torch.testing.assert_close(density([fine, coarse]), kept.norm(dim=1))  # identity statistics until calibrated


def test_branch_maps_are_upsampled_bilinearly_to_the_image():
    generator = torch.Generator().manual_seed(0)
    memory = FeatureMemory(3, neighbourhood=1)
    memory.calibrate(torch.randn(20, 3, generator=generator), ratio=0.5, projection_dim=None, seed=0)
    fusion = MapFusion(FeatureDensity(3, (4, 4)), 0.25, memory, 0.25)
    features = [torch.randn(2, 3, 4, 4, generator=generator)]
    density, distances = fusion.branch_maps(features, (16, 16))
    for got, low in ((density, features[0].norm(dim=1)), (distances, memory(features))):
        expected = F.interpolate(low[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(got, expected)
