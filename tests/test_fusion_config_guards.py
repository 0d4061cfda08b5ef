"""The config and MapFusion refuse what the fusion cannot honour, and accept the bounds they
document. Mutation audit: each of these guards could be dropped or tightened with every test
still passing (density.image_weight beside a memory branch, image_weight outside [0, 1],
memory fusion on position-standardised maps, a coreset ratio of 1, MapFusion's own check of an
image weight beside a memory)."""

from __future__ import annotations

import pytest
import torch

from realnet.config import load_config
from realnet.errors import RealnetError
from realnet.model.density import FeatureDensity
from realnet.model.fusion import MapFusion
from realnet.model.memory import FeatureMemory


def test_an_image_density_weight_beside_a_memory_is_refused_by_the_config():
    with pytest.raises(RealnetError, match=r"density.image_weight=0.5 needs density.weight > 0 and memory.weight = 0"):
        load_config("tiny", overrides=["density.weight=0.25", "memory.weight=0.25", "density.image_weight=0.5"])


def test_an_image_density_weight_beside_a_memory_is_refused_by_the_fusion():
    memory = FeatureMemory(3, neighbourhood=1)
    memory.calibrate(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), 0.5, None, 0)
    with pytest.raises(ValueError, match="image density weight needs a density alone"):
        MapFusion(FeatureDensity(3, (2, 2)), 0.25, memory, 0.25, image_density_weight=0.5)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_image_density_weights_at_the_bounds_load(weight):
    config = load_config("tiny", overrides=["density.weight=0.5", f"density.image_weight={weight}"])
    assert config.density.image_weight == weight


@pytest.mark.parametrize("weight", [-0.25, 1.5])
def test_image_density_weights_outside_zero_one_are_one_clear_error(weight):
    with pytest.raises(RealnetError, match=r"density.image_weight must be in \[0, 1\] or null"):
        load_config("tiny", overrides=["density.weight=0.5", f"density.image_weight={weight}"])


def test_a_memory_fusion_needs_unstandardised_maps():
    with pytest.raises(RealnetError, match="needs train.map_normalization: none"):
        load_config("tiny", overrides=["memory.weight=0.5", "train.map_normalization=position"])


def test_a_coreset_ratio_of_one_keeps_every_patch_and_loads():
    assert load_config("tiny", overrides=["memory.weight=0.5", "memory.coreset_ratio=1"]).memory.coreset_ratio == 1
