"""The reconstruction settings reach the built U-Nets, and the base width is the nearest integer
to width_factor * (the group's input channels). Mutation audit: build_model dropping
reconstruction.num_res_blocks, .attention or .channel_mults (so the U-Nets silently took the
paper defaults 2 / True / (1, 2, 4), also for the cpu and tiny presets), and the base width
truncated instead of rounded, passed every test before."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from realnet.config import load_config
from realnet.engine.build import build_model
from realnet.model.reconstruction import ReconstructionNetworks, SelfAttention, _Stage


def _structure(network: nn.Module) -> dict[str, int]:
    return {
        "encoder_blocks": sum(isinstance(m, _Stage) for m in network.encoder),
        "decoder_blocks": sum(isinstance(m, _Stage) for m in network.decoder),
        "poolings": sum(isinstance(m, nn.AvgPool2d) for m in network.encoder),
        "upsamplings": sum(isinstance(m, nn.ConvTranspose2d) for m in network.decoder),
        "attentions": sum(isinstance(m, SelfAttention) for m in network.modules()),
    }


@pytest.mark.parametrize("overrides, expected", [
    # tiny: three levels, one block per level, no attention
    ([], dict(encoder_blocks=3, decoder_blocks=3, poolings=2, upsamplings=2, attentions=0)),
    # two levels, two blocks per level; attention after each block of level 1 (2 + 2) and in the middle
    (["reconstruction.num_res_blocks=2", "reconstruction.attention=true", "reconstruction.channel_mults=[1, 2]"],
     dict(encoder_blocks=4, decoder_blocks=4, poolings=1, upsamplings=1, attentions=5)),
])
def test_build_model_hands_the_reconstruction_settings_to_every_u_net(random_lite0, overrides, expected):
    config = load_config("tiny", overrides=["backbone.weights=random", *overrides])
    model = build_model(config, random_lite0)
    assert len(model.reconstruction.networks) == 2  # architecture A, two layers
    for network in model.reconstruction.networks:
        assert _structure(network) == expected
        mults = config.reconstruction.channel_mults
        base = network.input_conv.out_channels
        stage_widths = [m.block.body[-1].out_channels for m in network.encoder if isinstance(m, _Stage)]
        assert stage_widths == [base * m for m in mults for _ in range(config.reconstruction.num_res_blocks)]
    features = model.select_features(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert [r.shape for r in model(features).reconstructions] == [f.shape for f in features]


def test_build_model_hands_the_architecture_to_the_reconstruction(random_lite0):
    config = load_config("tiny", overrides=["backbone.weights=random", "reconstruction.arch=C"])
    model = build_model(config, random_lite0)
    assert model.reconstruction.groups == ((0, 1),)
    assert model.reconstruction.networks[0].input_conv.in_channels == sum(config.selection.channels)


def test_base_width_is_the_nearest_integer_to_width_factor_times_the_input_channels():
    tiny = dict(channel_mults=(1, 2), num_res_blocks=1, attention=False, norm_groups=1)
    channels, strides = [9, 11, 6, 10], [2, 4, 8, 16]
    # 0.3 * (9, 11, 6, 10) = 2.7, 3.3, 1.8, 3.0: truncation gives 2 and 1 for the first and third,
    # rounding up 4 for the second (and for the last, whose float product is 3.0000000000000004)
    nets = ReconstructionNetworks("A", channels, strides, width_factor=0.3, **tiny)
    assert [n.input_conv.out_channels for n in nets.networks] == [3, 3, 2, 3]
    paired = ReconstructionNetworks("C", channels, strides, width_factor=0.3, **tiny)
    assert [n.input_conv.out_channels for n in paired.networks] == [6, 5]  # 0.3 * 20 = 6, 0.3 * 16 = 4.8
    assert [n.input_conv.out_channels for n in
            ReconstructionNetworks("A", [3], [4], width_factor=0.1, **tiny).networks] == [1]  # never below 1
