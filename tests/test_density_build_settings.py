"""build_fusion's density follows train.seed for its channel subset, accepts density.channels equal
to the backbone's channel count (it keeps them all), and its memory guard counts float64
covariances (8 bytes an entry). Mutation audit: a fixed seed 0 for the subset, refusing
density.channels == the total, and sizing the covariances at 4 bytes an entry passed every test."""

from __future__ import annotations

import pytest
import torch

from realnet.config import load_config
from realnet.errors import RealnetError


def test_the_density_channel_subset_follows_the_training_seed(random_lite0):
    from realnet.engine.build import build_fusion

    subsets = {}
    for seed in (0, 1, 2):
        config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=0.5", "density.channels=10",
                                                f"train.seed={seed}"])
        subsets[seed] = build_fusion(config, random_lite0).density.channel_indices
        again = build_fusion(config, random_lite0).density.channel_indices
        assert torch.equal(subsets[seed], again)  # seeded: the same seed draws the same subset
    assert len({tuple(s.tolist()) for s in subsets.values()}) == 3  # 10 of 64 channels: three seeds, three subsets


def test_density_channels_equal_to_the_backbones_keep_every_channel(random_lite0):
    from realnet.engine.build import build_fusion

    total = sum(random_lite0.channels)
    config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=0.5", f"density.channels={total}"])
    density = build_fusion(config, random_lite0).density
    assert torch.equal(density.channel_indices, torch.arange(total))
    assert density.precision.shape[-1] == total
    config.density.channels = total + 1
    with pytest.raises(RealnetError, match="exceeds the backbone"):
        build_fusion(config, random_lite0)


def test_the_memory_guard_counts_float64_covariances(random_lite0, monkeypatch):
    from realnet.engine import build

    config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=0.5", "density.channels=10"])
    side = config.train.image_size // min(random_lite0.strides)  # the finest feature grid: 64 // 4 = 16
    gigabytes = side * side * 10 * 10 * 8 / 2**30  # one float64 10 x 10 covariance per position
    monkeypatch.setattr(build, "DENSITY_MEMORY_LIMIT_GB", 1.01 * gigabytes)
    assert build.build_fusion(config, random_lite0).density is not None
    monkeypatch.setattr(build, "DENSITY_MEMORY_LIMIT_GB", 0.99 * gigabytes)
    with pytest.raises(RealnetError, match="set density.channels lower"):
        build.build_fusion(config, random_lite0)


def test_build_fusion_scores_images_at_the_configured_image_density_weight(random_lite0):
    """The cpu preset's density.image_weight reaches the detector (before, only the slow export
    and benchmark tests noticed a build that dropped it and scored images on the pixel map)."""
    from realnet.engine.build import build_fusion

    config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=0.5",
                                            "density.image_weight=0.75"])
    fusion = build_fusion(config, random_lite0)
    assert fusion.weights == [0.5, 0.5] and fusion.image_weights == [0.25, 0.75]
    config.density.image_weight = None
    assert build_fusion(config, random_lite0).image_weights is None


def test_the_density_neighbourhood_reaches_the_density_and_averages_each_layer_before_the_gaussian(random_lite0):
    """density.neighbourhood: each layer's features are averaged over n x n positions (count
    excluding the padding) before they are concatenated, so the Gaussian sees aggregated features;
    1 (the default) is the plain PaDiM embedding."""
    import torch.nn.functional as F

    from realnet.engine.build import build_fusion
    from realnet.model.density import feature_embedding

    config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=0.5", "density.neighbourhood=3"])
    density = build_fusion(config, random_lite0).density
    assert density.neighbourhood == 3
    torch.manual_seed(0)
    first, *rest = random_lite0.channels
    features = [torch.randn(2, first, 8, 8)] + [torch.randn(2, c, 4, 4) for c in rest]
    ones = torch.ones(1, 1, 8, 8)
    counts = F.conv2d(F.pad(ones, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3))  # in-image neighbours of each position
    by_hand = F.conv2d(F.pad(features[0], (1, 1, 1, 1)), torch.ones(first, 1, 3, 3), groups=first) / counts
    embedding = density.embed(features)
    torch.testing.assert_close(embedding[:, :first], by_hand)
    assert not torch.allclose(embedding, feature_embedding(features))

    config.density.neighbourhood = 1
    plain = build_fusion(config, random_lite0).density
    assert torch.equal(plain.embed(features), feature_embedding(features))


@pytest.mark.parametrize("value", ["0", "2", "-1"])
def test_a_density_neighbourhood_that_is_not_odd_and_positive_is_one_clear_error(value):
    with pytest.raises(RealnetError, match="density.neighbourhood must be an odd number >= 1"):
        load_config("tiny", overrides=["density.weight=0.5", f"density.neighbourhood={value}"])
