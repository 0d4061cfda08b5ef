"""SDAS details: the learned variance at t = 0 interpolates between beta_0 and the clipped
beta-tilde, the last DDIM step adds no noise, and the paper U-Net's attention has ADM's 64
channels per head with a GroupNorm on the middle attention."""

from __future__ import annotations

import math

import pytest
import torch

from realnet.diffusion.gaussian import GaussianDiffusion, cosine_betas, linear_betas
from realnet.diffusion.network import create_unet, unet_config
from realnet.diffusion.sampler import DDIM_VARIANCES, ddim_sdas_step, strength_tensor


@pytest.mark.parametrize("betas", [linear_betas(), cosine_betas()])
@pytest.mark.parametrize("count", [None, 20])
def test_learned_log_variance_at_t0_uses_the_clipped_posterior_variance(betas, count):
    process = GaussianDiffusion(betas)
    if count is not None:
        process = process.respace(count)
    beta0 = float(process.betas[0])
    # beta_tilde_1 from its definition, independently of the class's tables
    abar = process.alphas_cumprod
    beta_tilde_1 = (1.0 - abar[0]) / (1.0 - abar[1]) * float(process.betas[1])
    v = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    t = torch.zeros(3, dtype=torch.long)
    got = process.learned_range_log_variance(v, t).flatten().tolist()
    expected = [math.log(beta_tilde_1), 0.5 * (math.log(beta0) + math.log(beta_tilde_1)), math.log(beta0)]
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("variance", DDIM_VARIANCES)
def test_ddim_step_at_t0_ignores_the_noise(variance):
    diffusion = GaussianDiffusion(linear_betas()).respace(10)
    torch.manual_seed(0)
    x_t = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    output = torch.cat([torch.randn_like(x_t), torch.rand_like(x_t) * 2 - 1], dim=1)
    t = torch.zeros(2, dtype=torch.long)
    s = strength_tensor(1.0, x_t)
    noisy = ddim_sdas_step(diffusion, output, x_t, t, s, torch.randn_like(x_t), variance)
    quiet = ddim_sdas_step(diffusion, output, x_t, t, s, torch.zeros_like(x_t), variance)
    assert torch.equal(noisy, quiet)


@pytest.mark.parametrize("image_size", [256, 128])
def test_every_attention_layer_has_64_channel_heads_and_a_group_norm(image_size):
    from diffusers.models.attention_processor import Attention

    unet = create_unet(unet_config("paper", in_channels=3, image_size=image_size), "meta")
    layers = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    assert any(name.startswith("mid_block") for name in layers)
    for name, attention in layers.items():
        channels = attention.to_q.in_features
        assert attention.inner_dim == channels, name
        assert attention.heads == channels // 64, name  # ADM num_head_channels=64
        assert attention.group_norm is not None and attention.group_norm.num_groups == 32, name
