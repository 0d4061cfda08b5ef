"""density.layers: the feature density reads a subset of the backbone's layers, so that the
detector can add a layer whose per-position covariances the density could not afford."""

from __future__ import annotations

import pytest
import torch

from realnet.config import load_config
from realnet.engine.build import build_backbone, build_fusion, density_feature_indices
from realnet.errors import RealnetError
from realnet.model.density import FeatureDensity, feature_embedding


def _three_layer_config(*overrides: str):
    return load_config("tiny", overrides=["backbone.weights=random", "backbone.layers=[1,2,3]",
                                          "selection.channels=[8,8,8]", "density.weight=0.5", *overrides])


def test_the_density_embeds_only_the_layers_it_is_given():
    torch.manual_seed(0)
    features = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 5, 2, 2)]
    density = FeatureDensity(7, (8, 8), feature_indices=(0, 1))
    assert torch.equal(density.embed(features), feature_embedding(features[:2]))
    finest_two = FeatureDensity(9, (4, 4), feature_indices=(1, 2))
    assert torch.equal(finest_two.embed(features), feature_embedding(features[1:]))
    assert finest_two(features).shape == (2, 4, 4)


def test_build_sizes_the_density_by_its_own_layers():
    config = _three_layer_config("density.layers=[1,2]")
    backbone = build_backbone(config)
    fusion = build_fusion(config, backbone)
    channels = backbone.channels[0] + backbone.channels[1]
    side = config.train.image_size // backbone.strides[0]
    assert fusion.density.feature_indices == (0, 1)
    assert fusion.density.precision.shape == (side, side, channels, channels)
    coarse = build_fusion(_three_layer_config("density.layers=[3,2]"), backbone).density
    side = config.train.image_size // backbone.strides[1]
    channels = backbone.channels[1] + backbone.channels[2]
    assert coarse.feature_indices == (1, 2)  # backbone order, whatever the order given
    assert coarse.precision.shape == (side, side, channels, channels)


def test_all_layers_build_the_density_every_earlier_run_has():
    """density.layers naming every layer is the default (None): the same module, so runs fitted
    before the setting existed load and score unchanged."""
    assert density_feature_indices([3, 1, 2], [1, 2, 3]) is None
    assert density_feature_indices(None, [1, 2, 3]) is None
    backbone = build_backbone(_three_layer_config())
    default = build_fusion(_three_layer_config(), backbone).density
    named = build_fusion(_three_layer_config("density.layers=[1,2,3]"), backbone).density
    assert default.feature_indices is None and named.feature_indices is None
    assert default.precision.shape == named.precision.shape


def test_layers_the_backbone_does_not_return_are_one_clear_error():
    config = _three_layer_config("density.layers=[2,4]")
    with pytest.raises(RealnetError, match=r"density.layers=\[2, 4\] names layers the backbone does not return"):
        build_fusion(config, build_backbone(config))
    config = _three_layer_config("density.layers=[2]", "density.channels=1000")
    with pytest.raises(RealnetError, match=r"exceeds the backbone's \d+ channels in density.layers=\[2\]"):
        build_fusion(config, build_backbone(config))


@pytest.mark.parametrize("value", ["[]", "[2,2]"])
def test_an_empty_or_repeated_layer_list_is_refused(value):
    with pytest.raises(RealnetError, match="density.layers must name each layer once"):
        _three_layer_config(f"density.layers={value}")
