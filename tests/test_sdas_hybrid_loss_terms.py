"""The two terms of L_hybrid (Eq. 1, S2, S3) against closed forms written out here: L_simple is the
per-sample mean squared eps error, and L_{t-1} is the KL to p_theta with the *unclipped* x0 prediction
(IDDPM trains with clip_denoised=False)."""

from __future__ import annotations

import math

import numpy as np
import torch

from realnet.diffusion.gaussian import GaussianDiffusion, linear_betas


def test_l_simple_is_the_mean_squared_eps_error_per_sample():
    diffusion = GaussianDiffusion(linear_betas())
    torch.manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 300, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    eps = noise + torch.randn_like(x0) * torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    output = torch.cat([eps, torch.rand_like(x0) * 2 - 1], dim=1)
    terms = diffusion.hybrid_loss(output, x0, x_t, t, noise)
    expected = np.array([((noise[i] - eps[i]).numpy() ** 2).mean() for i in range(3)])
    np.testing.assert_allclose(terms["mse"].numpy(), expected, rtol=1e-12)


def test_vlb_kl_uses_the_unclipped_x0_prediction():
    """At t = 900 an eps far from the true one puts x0_hat well outside [-1, 1]; the KL must use it as is."""
    diffusion = GaussianDiffusion(linear_betas())
    betas = np.linspace(1e-4, 0.02, 1000)
    step = 900
    abar = np.prod(1 - betas[: step + 1])
    abar_prev = np.prod(1 - betas[:step])
    beta = betas[step]
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    torch.manual_seed(1)
    x0 = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
    eps = noise + 3.0 * torch.sign(torch.randn_like(x0))  # |x0_hat - x0| = 3 sqrt(1-abar)/sqrt(abar) > 2
    v = torch.rand_like(x0) * 2 - 1
    t = torch.tensor([step])
    vlb = diffusion.vlb_terms(torch.cat([eps, v], dim=1), x0, x_t, t)

    x0_hat = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    assert (x0_hat.abs() > 1).any()

    def posterior_mean(start):
        return (math.sqrt(abar_prev) * beta / (1 - abar)) * start + ((1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)) * x_t

    mean_q, var_q = posterior_mean(x0), beta_tilde
    mean_p = posterior_mean(x0_hat)
    frac = (v + 1) / 2
    var_p = torch.exp(frac * math.log(beta) + (1 - frac) * math.log(beta_tilde))
    kl = 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)
    torch.testing.assert_close(vlb, kl.mean().reshape(1) / math.log(2), rtol=1e-9, atol=0)
