"""Algorithm S1, checked against alpha_bar computed here from the linear betas. Its deterministic
part: x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) eps_theta (also after respacing to 20
steps). Its perturbation, exactly: x_{t-1} - x_{t-1}(s = 0) = sqrt(s Sigma) z, with Sigma = beta_t,
beta_tilde_t or Sigma_theta of the respaced process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from realnet.diffusion.gaussian import GaussianDiffusion, linear_betas
from realnet.diffusion.sampler import ddim_sdas_step, strength_tensor


def alpha_bar(timestep: int) -> float:
    """abar of original timestep `timestep` (0-based), from beta = linspace(1e-4, 0.02, 1000)."""
    return float(np.prod(1.0 - np.linspace(1e-4, 0.02, 1000)[: timestep + 1]))


@pytest.mark.parametrize("respaced", [False, True])
@pytest.mark.parametrize("index", [0, 1, 12])
def test_ddim_step_moves_along_the_noise_it_predicts(respaced, index):
    """With the true eps of x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, an s = 0 DDIM step lands exactly on
    sqrt(abar_prev) x0 + sqrt(1-abar_prev) eps (abar_prev = 1 at the last step, which returns x0)."""
    diffusion = GaussianDiffusion(linear_betas())
    timesteps = np.arange(1000)
    if respaced:
        diffusion, timesteps = diffusion.respace(20), np.arange(0, 1000, 50)
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 1.8 - 0.9  # inside [-1, 1]: clipping changes nothing
    eps = torch.randn_like(x0)
    abar_t = alpha_bar(int(timesteps[index]))
    abar_prev = alpha_bar(int(timesteps[index - 1])) if index > 0 else 1.0
    x_t = abar_t ** 0.5 * x0 + (1 - abar_t) ** 0.5 * eps
    output = torch.cat([eps, torch.rand_like(x0) * 2 - 1], dim=1)
    t = torch.full((2,), index)
    for variance in ("beta", "beta_tilde", "learned"):
        x_prev = ddim_sdas_step(diffusion, output, x_t, t, strength_tensor(0.0, x_t), torch.randn_like(x0), variance)
        expected = abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps
        torch.testing.assert_close(x_prev, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("index", [1, 12])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "learned"])
def test_ddim_perturbation_is_sqrt_s_sigma_z(index, variance):
    diffusion = GaussianDiffusion(linear_betas()).respace(20)
    abar, abar_prev = alpha_bar(50 * index), alpha_bar(50 * (index - 1))
    beta = 1 - abar / abar_prev  # beta of the respaced process
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    torch.manual_seed(2)
    x_t = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    v = torch.rand_like(x_t) * 2 - 1
    output = torch.cat([torch.randn_like(x_t), v], dim=1)
    z = torch.randn_like(x_t)
    t = torch.full((2,), index)
    s = [0.05, 0.3]
    base = ddim_sdas_step(diffusion, output, x_t, t, strength_tensor(0.0, x_t), z, variance)
    perturbed = ddim_sdas_step(diffusion, output, x_t, t, strength_tensor(s, x_t), z, variance)
    frac = (v + 1) / 2
    sigma = {"beta": torch.full_like(x_t, beta), "beta_tilde": torch.full_like(x_t, beta_tilde),
             "learned": torch.exp(frac * math.log(beta) + (1 - frac) * math.log(beta_tilde))}[variance]
    expected = torch.sqrt(torch.tensor(s, dtype=torch.float64).reshape(2, 1, 1, 1) * sigma) * z
    torch.testing.assert_close(perturbed - base, expected, rtol=1e-7, atol=1e-12)
