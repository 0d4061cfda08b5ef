from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from realnet.model.reconstruction import (
    ReconstructionNetworks,
    ReconstructionUNet,
    SelfAttention,
    count_parameters,
    largest_divisor_at_most,
    aligned_targets,
    reconstruction_groups,
    resize_features,
)
from realnet.model.realnet import reconstruction_loss
from realnet.model.rrs import reconstruction_residuals

# Tiny multi-layer pyramids: (channels, strides), maps for a 64 px image.
FOUR_LAYERS = ([6, 10, 12, 8], [2, 4, 8, 16])
THREE_LAYERS = ([6, 10, 12], [2, 4, 8])
IMAGE = 64
TINY = dict(channel_mults=(1, 2, 4), num_res_blocks=1, attention_head_channels=4, norm_groups=4)

# WRN50 paper preset, appendix Tab. S4 and the notes.
PAPER_M = [256, 512, 512, 256]
PAPER_STRIDES = [4, 8, 16, 32]
NOTES_PARAMS = [52e6, 207e6, 207e6, 52e6]
WRN50_FEATURES_PARAMS = 66_834_240  # timm wide_resnet50_2, features_only (no classifier)
TAB_S4_GB = {"A": 2.20, "B": 7.22, "C": 3.75}


def make_features(channels, strides, batch=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, IMAGE // s, IMAGE // s, generator=g, requires_grad=requires_grad)
            for c, s in zip(channels, strides)]


def randomise_output_convs(nets: nn.Module, seed: int = 1) -> None:
    """Undo the zero init so that inputs reach the output (for dependency and gradient tests)."""
    g = torch.Generator().manual_seed(seed)
    for net in nets.modules():
        if isinstance(net, ReconstructionUNet):
            conv = net.output[-1]
            with torch.no_grad():
                conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))


@pytest.mark.parametrize("arch", ["A", "B", "C"])
@pytest.mark.parametrize("layout", [FOUR_LAYERS, THREE_LAYERS], ids=["4layers", "3layers"])
def test_shapes_and_zero_output_at_init(arch, layout):
    torch.manual_seed(0)
    channels, strides = layout
    nets = ReconstructionNetworks(arch, channels, strides, width_factor=0.5, **TINY)
    features = make_features(channels, strides)
    out = nets(features)
    assert [o.shape for o in out] == expected_shapes(arch, features)
    for o in out:
        assert torch.equal(o, torch.zeros_like(o))


def expected_shapes(arch, features):
    """Each layer is reconstructed at the size of its group's finest (first) member."""
    shapes = [None] * len(features)
    for group in reconstruction_groups(arch, len(features)):
        for k in group:
            shapes[k] = (*features[k].shape[:2], *features[group[0]].shape[-2:])
    return [torch.Size(s) for s in shapes]


def test_architecture_c_reconstructs_the_coarser_layer_of_a_pair_at_the_finer_stride():
    """App. C.4 / Limitations: C raises PRO by "increasing the resolution of anomaly detection".
    A one-pixel change of the finer-stride target must stay one fine pixel in the coarser layer's
    residual; pooled back to the coarse grid (the old code) it would smear over a 2x2 block."""
    channels, strides = [4, 6], [4, 8]
    nets = ReconstructionNetworks("C", channels, strides, **TINY).eval()
    features = make_features(channels, strides, batch=1)
    with torch.no_grad():
        out = nets(features)
    assert out[1].shape[-2:] == features[0].shape[-2:]
    targets = aligned_targets(features, out)
    assert torch.allclose(targets[1], F.interpolate(features[1], size=features[0].shape[-2:], mode="bilinear",
                                                    align_corners=False))
    bumped = [o.clone() for o in out]
    bumped[1][0, :, 5, 7] += 1.0
    change = reconstruction_residuals(features, bumped) - reconstruction_residuals(features, out)
    moved = change[0, channels[0]:].abs().sum(0) > 1e-6
    assert moved.nonzero().tolist() == [[5, 7]]
    expected = sum(F.mse_loss(o, t) for o, t in zip(out, targets))
    assert torch.allclose(reconstruction_loss(out, features), expected)


def test_groups_follow_fig_s2():
    assert reconstruction_groups("A", 4) == ((0,), (1,), (2,), (3,))
    assert reconstruction_groups("B", 4) == ((0, 1, 2, 3),)
    assert reconstruction_groups("C", 4) == ((0, 1), (2, 3))
    assert reconstruction_groups("C", 3) == ((0, 1), (2,))
    with pytest.raises(ValueError, match="architecture 'D'"):
        reconstruction_groups("D", 4)


def test_network_widths_follow_width_factor():
    channels, strides = FOUR_LAYERS
    nets = {arch: ReconstructionNetworks(arch, channels, strides, width_factor=0.5, **TINY)
            for arch in "ABC"}
    assert [n.input_conv.out_channels for n in nets["A"].networks] == [3, 5, 6, 4]
    assert [n.input_conv.out_channels for n in nets["B"].networks] == [18]
    assert [n.input_conv.in_channels for n in nets["C"].networks] == [16, 20]
    assert [n.input_conv.out_channels for n in nets["C"].networks] == [8, 10]


@pytest.mark.parametrize("arch, mixes", [("A", False), ("B", True), ("C", True)])
def test_layers_sharing_a_network_influence_each_other(arch, mixes):
    """B and C reconstruct aligned layers jointly; A keeps every layer on its own."""
    torch.manual_seed(0)
    channels, strides = FOUR_LAYERS
    nets = ReconstructionNetworks(arch, channels, strides, **TINY).eval()
    randomise_output_convs(nets)
    features = make_features(channels, strides)
    changed = [f.clone() for f in features]
    changed[1] = changed[1] + 1.0
    with torch.no_grad():
        before, after = nets(features), nets(changed)
    assert torch.allclose(before[0], after[0]) != mixes
    # layer 3 never shares a network with layer 1 (C pairs (0, 1) and (2, 3))
    assert torch.allclose(before[3], after[3]) == (arch != "B")


@pytest.mark.parametrize("arch", ["A", "B", "C"])
def test_gradients_reach_every_parameter_and_input(arch):
    torch.manual_seed(0)
    channels, strides = FOUR_LAYERS
    nets = ReconstructionNetworks(arch, channels, strides, **TINY)
    features = make_features(channels, strides, requires_grad=True)
    targets = make_features(channels, strides, seed=1)

    # At init G = 0: only the output convs can learn on the first step.
    reconstruction_loss(nets(features), targets).backward()
    for net in nets.networks:
        assert net.output[-1].weight.grad.abs().sum() > 0

    randomise_output_convs(nets)
    nets.zero_grad()
    reconstruction_loss(nets(features), targets).backward()
    for name, p in nets.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for f in features:
        assert f.grad.abs().sum() > 0


def test_unet_rejects_sizes_not_divisible_by_four():
    net = ReconstructionUNet(4, 4, **TINY)
    assert net(torch.randn(1, 4, 12, 8)).shape == (1, 4, 12, 8)
    with pytest.raises(ValueError, match="divisible by 4, got 10x8"):
        net(torch.randn(1, 4, 10, 8))
    with pytest.raises(ValueError, match="expects 4 channels, got 3"):
        net(torch.randn(1, 3, 8, 8))


def test_networks_reject_mismatched_inputs():
    channels, strides = THREE_LAYERS
    nets = ReconstructionNetworks("A", channels, strides, **TINY)
    features = make_features(channels, strides)
    with pytest.raises(ValueError, match="expects 3 feature maps, got 2"):
        nets(features[:2])
    features[2] = features[2][:, :5]
    with pytest.raises(ValueError, match="feature map 2 has 5 channels, expected 12"):
        nets(features)
    with pytest.raises(ValueError, match="one stride per layer"):
        ReconstructionNetworks("A", channels, strides[:2])


def test_resize_features_is_bilinear_up_and_average_pool_down():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(resize_features(x, (4, 4)), F.avg_pool2d(x, 2))
    up = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(resize_features(x, (32, 32)), up)
    assert resize_features(x, (8, 8)) is x


def test_group_norm_and_heads_divide_any_width():
    assert largest_divisor_at_most(256, 32) == 32
    assert largest_divisor_at_most(48, 32) == 24
    assert largest_divisor_at_most(20, 32) == 20
    assert largest_divisor_at_most(7, 32) == 7
    assert largest_divisor_at_most(5, 0) == 1
    assert SelfAttention(512, 64, 32).num_heads == 8
    assert SelfAttention(80, 64, 32).num_heads == 1
    assert SelfAttention(192, 64, 32).num_heads == 3
    net = ReconstructionUNet(6, 10, norm_groups=32, attention_head_channels=64)
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
    assert net(torch.randn(1, 6, 8, 8)).shape == (1, 6, 8, 8)


def test_paper_preset_parameter_count_matches_notes():
    with torch.device("meta"):
        nets = ReconstructionNetworks("A", PAPER_M, PAPER_STRIDES, width_factor=0.5)
    counts = [count_parameters(n) for n in nets.networks]
    for count, expected in zip(counts, NOTES_PARAMS):
        assert count == pytest.approx(expected, rel=0.05)
    assert sum(counts) == pytest.approx(518e6, rel=0.05)
    assert counts == [53_468_544, 213_760_768, 213_760_768, 53_468_544]


@pytest.mark.parametrize("arch", ["A", "B", "C"])
def test_paper_preset_sizes_match_tab_s4_and_shapes_hold_at_256px(arch):
    """fp32 size of networks + WRN50 backbone against Tab. S4 (their 'GB' is GiB); the forward
    pass runs on the meta device, so it checks shapes without allocating the weights."""
    with torch.device("meta"):
        nets = ReconstructionNetworks(arch, PAPER_M, PAPER_STRIDES, width_factor=0.5)
        features = [torch.empty(2, m, 256 // s, 256 // s) for m, s in zip(PAPER_M, PAPER_STRIDES)]
        out = nets(features)
    gib = (count_parameters(nets) + WRN50_FEATURES_PARAMS) * 4 / 2**30
    assert gib == pytest.approx(TAB_S4_GB[arch], rel=0.04)
    assert [o.shape for o in out] == expected_shapes(arch, features)


def test_self_attention_is_residual():
    """Self-attention adds its projection to its input: with the projection zeroed it is the identity."""
    attention = SelfAttention(8, 4, 4)
    nn.init.zeros_(attention.proj.weight)
    nn.init.zeros_(attention.proj.bias)
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attention(x), x)


def test_self_attention_matches_a_per_head_softmax_reference():
    """Each head attends with softmax(q k^T / sqrt(d)) over its own channels and mixes its values."""
    torch.manual_seed(0)
    attention = SelfAttention(8, 4, 4)  # 2 heads of 4 channels
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        q, k, v = attention.qkv(attention.norm(x)).flatten(2).split(8, dim=1)  # each (b, c, hw)
        heads = []
        for h in range(attention.num_heads):
            s = slice(4 * h, 4 * h + 4)
            weights = torch.softmax(q[:, s].transpose(1, 2) @ k[:, s] / 4 ** 0.5, dim=-1)  # (b, hw query, hw key)
            heads.append((weights @ v[:, s].transpose(1, 2)).transpose(1, 2))
        expected = x + attention.proj(torch.cat(heads, 1).reshape(x.shape))
        torch.testing.assert_close(attention(x), expected)


def test_unet_downsamples_by_average_pooling_and_upsamples_by_transposed_convs():
    """Notes: down is 2x2 average pooling; up is a transposed conv (k4, s2)."""
    net = ReconstructionUNet(4, 4, **TINY)
    pools = [m for m in net.encoder if type(m).__name__ != "_Stage"]
    assert len(pools) == 2 and all(type(m) is nn.AvgPool2d and m.kernel_size == 2 for m in pools)
    ups = [m for m in net.decoder if type(m).__name__ != "_Stage"]
    assert len(ups) == 2 and all(isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (4, 4)
                                 and m.stride == (2, 2) and m.padding == (1, 1) for m in ups)


def test_decoder_blocks_receive_the_mirrored_encoder_skips():
    """U-Net: each decoder block takes the running map concatenated with the output of the encoder
    block it mirrors (last encoder block <-> first decoder block)."""
    torch.manual_seed(0)
    net = ReconstructionUNet(4, 4, channel_mults=(1, 2), num_res_blocks=2, attention_head_channels=4,
                             norm_groups=2).eval()
    encoded, decoded = [], []
    for stage in (m for m in net.encoder if type(m).__name__ == "_Stage"):
        stage.register_forward_hook(lambda module, args, out: encoded.append(out))
    for stage in (m for m in net.decoder if type(m).__name__ == "_Stage"):
        stage.register_forward_pre_hook(lambda module, args: decoded.append(args[0]))
    with torch.no_grad():
        net(torch.randn(1, 4, 8, 8))
    assert len(encoded) == len(decoded) == 4
    for skip, fed in zip(reversed(encoded), decoded):
        torch.testing.assert_close(fed[:, -skip.shape[1]:], skip)


def test_width_factor_sets_each_networks_base_width():
    channels, strides = [8, 12, 16, 4], [2, 4, 8, 16]
    nets = ReconstructionNetworks("A", channels, strides, width_factor=0.75, **TINY)
    assert [n.input_conv.out_channels for n in nets.networks] == [6, 9, 12, 3]
    paired = ReconstructionNetworks("C", channels, strides, width_factor=0.25, **TINY)
    assert [n.input_conv.out_channels for n in paired.networks] == [5, 5]
