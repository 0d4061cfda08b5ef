"""SDAS samplers (Algorithm 1 and S1) against independent references and their statistics."""

from __future__ import annotations

import pytest
import torch

from realnet.diffusion.gaussian import GaussianDiffusion, linear_betas
from realnet.diffusion.network import create_unet, make_denoiser, unet_config
from realnet.diffusion.sampler import (
    DDIM_VARIANCES,
    ddim_sdas_step,
    per_image_normal,
    sdas_sample,
    sdas_step,
    strength_tensor,
)
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(linear_betas()).respace(20)


@pytest.fixture(scope="module")
def denoise():
    torch.manual_seed(0)
    unet = create_unet(unet_config("tiny", in_channels=3)).eval()
    return make_denoiser(unet)


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def reference_ancestral(denoise, diffusion, seeds):
    """Plain ancestral sampling written out: x_{t-1} = mu + sigma z, and x_0 = mu."""
    gens = generators(seeds)
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    timestep_map = torch.as_tensor(diffusion.timestep_map)
    for i in range(diffusion.num_timesteps - 1, -1, -1):
        t = torch.full((len(seeds),), i)
        p = diffusion.p_mean_variance(denoise(x, timestep_map[t]), x, t)
        if i == 0:
            x = p.mean
        else:
            z = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
            x = p.mean + torch.exp(0.5 * p.log_variance) * z
    return x


@torch.no_grad()
def test_s0_is_plain_ancestral_sampling_bit_for_bit(denoise, diffusion):
    seeds = [11, 12, 13]
    ours = sdas_sample(denoise, diffusion, generators(seeds), SHAPE, 0.0)
    reference = reference_ancestral(denoise, diffusion, seeds)
    assert torch.equal(ours, reference)
    strong = sdas_sample(denoise, diffusion, generators(seeds), SHAPE, 0.2)
    assert not torch.equal(strong, reference)


@torch.no_grad()
def test_s0_matches_diffusers_ddpm_scheduler(denoise, diffusion):
    """An independent implementation of learned-range ancestral sampling on the same steps."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              variance_type="learned_range", clip_sample=True, prediction_type="epsilon")
    scheduler.set_timesteps(timesteps=list(diffusion.timestep_map[::-1]))
    gens = generators([5, 6])
    x = per_image_normal(gens, SHAPE)
    for t in scheduler.timesteps:
        x = scheduler.step(denoise(x, t.repeat(2)), t, x, generator=gens).prev_sample
    ours = sdas_sample(denoise, diffusion, generators([5, 6]), SHAPE, 0.0)
    torch.testing.assert_close(ours, x, atol=2e-4, rtol=0)


@torch.no_grad()
def test_an_image_noise_does_not_depend_on_its_batch(denoise, diffusion):
    """Only float rounding of batched matrix products may differ, never the noise drawn."""
    strengths = [0.0, 0.15, 0.1]
    batch = sdas_sample(denoise, diffusion, generators([1, 2, 3]), SHAPE, strengths)
    alone = sdas_sample(denoise, diffusion, generators([2]), SHAPE, [0.15])
    torch.testing.assert_close(batch[1:2], alone, atol=1e-4, rtol=0)


def fixed_step_inputs(batch: int, t_index: int):
    torch.manual_seed(3)
    x_t = torch.randn(batch, 1, 200, 250, dtype=torch.float64)
    output = torch.cat([torch.randn_like(x_t), torch.rand_like(x_t) * 2 - 1], dim=1)
    return x_t, output, torch.full((batch,), t_index)


def test_ancestral_injected_variance_scales_with_one_plus_s(diffusion):
    """Eq. 2: Var(x_{t-1} - mu_theta) = (1 + s) Sigma_theta, per image, at a middle step."""
    strengths = [0.0, 0.1, 0.2, 1.0]
    x_t, output, t = fixed_step_inputs(len(strengths), 10)
    p = diffusion.p_mean_variance(output, x_t, t)
    noise = torch.randn_like(x_t)
    x_prev = sdas_step(diffusion, output, x_t, t, strength_tensor(strengths, x_t), noise)
    standardised = (x_prev - p.mean) / torch.exp(0.5 * p.log_variance)
    ratios = standardised.var(dim=(1, 2, 3))
    for ratio, s in zip(ratios.tolist(), strengths):
        assert ratio == pytest.approx(1 + s, abs=0.025)


def test_no_noise_is_added_at_the_last_step(diffusion):
    x_t, output, t = fixed_step_inputs(2, 0)
    x_prev = sdas_step(diffusion, output, x_t, t, strength_tensor(0.2, x_t), torch.randn_like(x_t))
    assert torch.equal(x_prev, diffusion.p_mean_variance(output, x_t, t).mean)


@pytest.mark.parametrize("variance", DDIM_VARIANCES)
def test_ddim_injected_variance_is_s_sigma(diffusion, variance):
    s = 0.3
    x_t, output, t = fixed_step_inputs(1, 12)
    p = diffusion.p_mean_variance(output, x_t, t)
    deterministic = ddim_sdas_step(diffusion, output, x_t, t, strength_tensor(0.0, x_t), torch.randn_like(x_t), variance)
    other_noise = ddim_sdas_step(diffusion, output, x_t, t, strength_tensor(0.0, x_t), torch.randn_like(x_t), variance)
    assert torch.equal(deterministic, other_noise)
    perturbed = ddim_sdas_step(diffusion, output, x_t, t, strength_tensor(s, x_t), torch.randn_like(x_t), variance)
    sigma = {"beta": torch.full_like(x_t, diffusion.betas[12]),
             "beta_tilde": torch.full_like(x_t, diffusion.posterior_variance[12]),
             "learned": p.variance}[variance]
    ratio = ((perturbed - deterministic) / torch.sqrt(sigma)).var().item()
    assert ratio == pytest.approx(s, rel=0.03)


@torch.no_grad()
@pytest.mark.parametrize("variance", DDIM_VARIANCES)
def test_ddim_s0_is_deterministic_ddim(denoise, diffusion, variance):
    seeds = [7, 8]
    x = per_image_normal(generators(seeds), SHAPE)
    timestep_map = torch.as_tensor(diffusion.timestep_map)
    for i in range(diffusion.num_timesteps - 1, -1, -1):
        t = torch.full((2,), i)
        p = diffusion.p_mean_variance(denoise(x, timestep_map[t]), x, t)
        x = diffusion.ddim_mean(p.pred_x0, diffusion.predict_eps_from_x0(x, t, p.pred_x0), t)
    ours = sdas_sample(denoise, diffusion, generators(seeds), SHAPE, 0.0, sampler="ddim", ddim_variance=variance)
    assert torch.equal(ours, x)
    perturbed = sdas_sample(denoise, diffusion, generators(seeds), SHAPE, 0.02, sampler="ddim", ddim_variance=variance)
    assert perturbed.isfinite().all() and not torch.equal(perturbed, x)


def test_bad_sampler_options_raise(denoise, diffusion):
    with pytest.raises(ValueError, match="sampler"):
        sdas_sample(denoise, diffusion, generators([0]), SHAPE, 0.0, sampler="euler")
    with pytest.raises(ValueError, match="DDIM variance"):
        sdas_sample(denoise, diffusion, generators([0]), SHAPE, 0.1, sampler="ddim", ddim_variance="huge")
    with pytest.raises(ValueError, match=">= 0"):
        sdas_sample(denoise, diffusion, generators([0]), SHAPE, -0.1)
