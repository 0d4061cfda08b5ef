"""Strength-controllable sampling (SDAS): ancestral (Algorithm 1, Eq. 2) and DDIM (Algorithm S1).

Every image owns a `torch.Generator`; its starting noise and the noise of each step are drawn
from it alone (on the CPU), so an image depends only on its generator's seed and its strength.
Bit for bit it also depends on the batch it shares: batched matrix products round differently
for different batch sizes, by about 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from realnet.diffusion.gaussian import GaussianDiffusion

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""(x_t, original-process timesteps) -> the network's [eps, v] output with 2C channels."""

SAMPLERS = ("ancestral", "ddim")
DDIM_VARIANCES = ("beta", "beta_tilde", "learned")


def per_image_normal(generators: Sequence[torch.Generator], shape: Sequence[int]) -> Tensor:
    """One standard-normal draw of `shape` per image, each from that image's own generator."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def strength_tensor(strength: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """Anomaly strength s per image as a (B, 1, ..., 1) tensor; a scalar applies to all images."""
    s = torch.as_tensor(strength, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        s = s.expand(like.shape[0])
    if s.shape != (like.shape[0],):
        raise ValueError(f"need one strength per image ({like.shape[0]}), got shape {tuple(s.shape)}")
    if (s < 0).any():
        raise ValueError("anomaly strength s must be >= 0")
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def _noise_mask(t: Tensor, like: Tensor) -> Tensor:
    """1 where noise is added, 0 at the last reverse step (t = 0), which returns the mean."""
    return (t != 0).to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def sdas_step(diffusion: GaussianDiffusion, model_output: Tensor, x_t: Tensor, t: Tensor, strength: Tensor,
              noise: Tensor, clip_x0: bool = True) -> Tensor:
    """One reverse step of Algorithm 1: x_{t-1} ~ N(mu_theta, (1 + s) Sigma_theta) (Eq. 2).

    `strength` is s as returned by `strength_tensor`. s = 0 is plain ancestral sampling, to
    the bit: the standard deviation is only multiplied by sqrt(1 + 0) = 1.
    """
    p = diffusion.p_mean_variance(model_output, x_t, t, clip_x0)
    return p.mean + _noise_mask(t, x_t) * torch.exp(0.5 * p.log_variance) * torch.sqrt(1.0 + strength) * noise


def ddim_sdas_step(diffusion: GaussianDiffusion, model_output: Tensor, x_t: Tensor, t: Tensor, strength: Tensor,
                   noise: Tensor, variance: str = "learned", clip_x0: bool = True) -> Tensor:
    """One reverse step of Algorithm S1: the deterministic (eta = 0) DDIM update plus sqrt(s Sigma) z,
    with Sigma = beta_t ("beta"), beta_tilde_t ("beta_tilde") or Sigma_theta ("learned").

    eps is recomputed from the clipped x_0 so both terms of the update agree.
    """
    p = diffusion.p_mean_variance(model_output, x_t, t, clip_x0)
    eps = diffusion.predict_eps_from_x0(x_t, t, p.pred_x0)
    if variance == "beta":
        sigma = diffusion.gather(diffusion.betas, t, x_t)
    elif variance == "beta_tilde":
        sigma = diffusion.gather(diffusion.posterior_variance, t, x_t)
    elif variance == "learned":
        sigma = p.variance
    else:
        raise ValueError(f"unknown DDIM variance {variance!r} (use one of {', '.join(DDIM_VARIANCES)})")
    return diffusion.ddim_mean(p.pred_x0, eps, t) + _noise_mask(t, x_t) * torch.sqrt(strength * sigma) * noise


def sdas_sample(denoise: Denoiser, diffusion: GaussianDiffusion, generators: Sequence[torch.Generator],
                image_shape: Sequence[int], strength: float | Sequence[float] | Tensor, *,
                sampler: str = "ancestral", ddim_variance: str = "learned", clip_x0: bool = True,
                device: torch.device | str = "cpu") -> Tensor:
    """Images in [-1, 1], one per generator, from x_T ~ N(0, I) down to x_0 over all of the
    (respaced) process's steps with anomaly strength s (Algorithm 1 or S1)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (use one of {', '.join(SAMPLERS)})")
    x = per_image_normal(generators, image_shape).to(device)
    s = strength_tensor(strength, x)
    for index in reversed(range(diffusion.num_timesteps)):
        t = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
        model_output = denoise(x, diffusion.model_timesteps(t))
        noise = per_image_normal(generators, image_shape).to(device) if index > 0 else torch.zeros_like(x)
        if sampler == "ancestral":
            x = sdas_step(diffusion, model_output, x, t, s, noise, clip_x0)
        else:
            x = ddim_sdas_step(diffusion, model_output, x, t, s, noise, ddim_variance, clip_x0)
    return x
