"""Gaussian diffusion process math for SDAS (paper Sec. 3.1 and Appendix B).

Pure functions over tensors: the forward process q, the learned-variance reverse process p_theta,
the hybrid loss and timestep respacing. Timesteps are 0-based indices: index t here is the
paper's step t+1, so t = 0 is the last reverse step (x_1 -> x_0). Images live in [-1, 1].
Schedule arrays are float64 numpy and are cast to the input's dtype when gathered.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

DEFAULT_TIMESTEPS = 1000
VLB_WEIGHT = 1e-3  # gamma of Eq. S2


def linear_betas(num_timesteps: int = DEFAULT_TIMESTEPS, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    """The DDPM linear schedule beta_1..beta_T, from 1e-4 to 0.02 for T = 1000."""
    return np.linspace(start, end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int = DEFAULT_TIMESTEPS, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """The IDDPM cosine schedule: alpha_bar(t) = cos^2(((t/T + o) / (1 + o)) * pi/2)."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


SCHEDULES = ("linear", "cosine")


def make_betas(schedule: str, num_timesteps: int = DEFAULT_TIMESTEPS) -> np.ndarray:
    """The betas of a named schedule: "linear" (the paper's) or "cosine"."""
    if schedule == "linear":
        return linear_betas(num_timesteps)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule {schedule!r} (use linear or cosine)")


def respaced_timesteps(num_timesteps: int, count: int) -> np.ndarray:
    """The `count` kept steps floor(i*T/K), i = 0..K-1: t = 0, 50, ..., 950 for T = 1000, K = 20."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot respace {num_timesteps} timesteps to {count}")
    return np.arange(count, dtype=np.int64) * num_timesteps // count


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2).square() * torch.exp(-logvar2))


def standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) of 8-bit data x in [-1, 1] under N(mean, exp(log_scale)^2) integrated over each
    pixel's bin of width 2/255; the end bins extend to +-infinity (the L_0 term of Eq. S3)."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_minus = standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_bin))


class PMeanVariance(NamedTuple):
    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    eps: Tensor


class GaussianDiffusion:
    """A diffusion process fixed by its betas (Sec. 3.1).

    `timestep_map[t]` is the timestep of the original process that index t stands for; it is
    what the network is conditioned on. It is the identity unless the process was respaced.
    """

    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(len(betas), dtype=np.int64) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (Appendix B); it is 0
        # at t = 0, so its log is clipped to the next value there.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        posterior_floor = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(posterior_floor, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    def respace(self, count: int) -> GaussianDiffusion:
        """The process restricted to `count` timesteps, with beta_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}
        recomputed from the kept alpha_bar (IDDPM Sec. 4)."""
        kept = respaced_timesteps(self.num_timesteps, count)
        alpha_bar = self.alphas_cumprod[kept]
        betas = 1.0 - alpha_bar / np.append(1.0, alpha_bar[:-1])
        return GaussianDiffusion(betas, self.timestep_map[kept])

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The original-process timesteps the network sees for indices t."""
        return torch.as_tensor(self.timestep_map, device=t.device)[t]

    @staticmethod
    def gather(values: np.ndarray, t: Tensor, like: Tensor) -> Tensor:
        """values[t] as a (B, 1, ..., 1) tensor on like's device and dtype, for broadcasting. The
        float64 schedule is indexed on the CPU: MPS has no float64."""
        out = torch.as_tensor(values)[t.cpu()].to(like.device, like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)."""
        return (self.gather(np.sqrt(self.alphas_cumprod), t, x0) * x0
                + self.gather(np.sqrt(1.0 - self.alphas_cumprod), t, x0) * noise)

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance beta_tilde_t and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.gather(self.posterior_mean_coef1, t, x_t) * x0 + self.gather(self.posterior_mean_coef2, t, x_t) * x_t
        return (mean, self.gather(self.posterior_variance, t, x_t),
                self.gather(self.posterior_log_variance_clipped, t, x_t))

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (self.gather(np.sqrt(1.0 / self.alphas_cumprod), t, x_t) * x_t
                - self.gather(np.sqrt(1.0 / self.alphas_cumprod - 1.0), t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The inverse of predict_x0_from_eps."""
        return ((self.gather(np.sqrt(1.0 / self.alphas_cumprod), t, x_t) * x_t - x0)
                / self.gather(np.sqrt(1.0 / self.alphas_cumprod - 1.0), t, x_t))

    def ddim_mean(self, pred_x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The deterministic (eta = 0) DDIM update of Algorithm S1:
        sqrt(alpha_bar_{t-1}) x_0 + sqrt(1 - alpha_bar_{t-1}) eps."""
        return (self.gather(np.sqrt(self.alphas_cumprod_prev), t, pred_x0) * pred_x0
                + self.gather(np.sqrt(1.0 - self.alphas_cumprod_prev), t, pred_x0) * eps)

    def learned_range_log_variance(self, v: Tensor, t: Tensor) -> Tensor:
        """log Sigma_theta = v' log beta_t + (1 - v') log beta_tilde_t (Eq. S1), with the
        network's raw output v in [-1, 1] mapped to v' = (v + 1) / 2."""
        weight = (v + 1.0) / 2.0
        return (weight * self.gather(np.log(self.betas), t, v)
                + (1.0 - weight) * self.gather(self.posterior_log_variance_clipped, t, v))

    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_x0: bool = True) -> PMeanVariance:
        """mu_theta and Sigma_theta of p_theta(x_{t-1} | x_t) from the network's output
        [eps, v] (2C channels): Sec. 3.1 with Eq. S1. x_0 is clipped to [-1, 1] when asked."""
        eps, v = model_output.chunk(2, dim=1)
        log_variance = self.learned_range_log_variance(v, t)
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_x0:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return PMeanVariance(mean, torch.exp(log_variance), log_variance, pred_x0, eps)

    def vlb_terms(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """L_{t-1} of Eq. S3 per sample in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p_theta)
        for t > 0 and the discretized decoder NLL -log p_theta(x_0|x_1) for t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t, clip_x0=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def hybrid_loss(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor,
                    vlb_weight: float = VLB_WEIGHT) -> dict[str, Tensor]:
        """L_hybrid = L_simple + gamma L_vlb per sample (Eq. 1, S2, S3).

        L_vlb is estimated from the one uniformly drawn t as T * L_t, so gamma * T = 1 for the
        paper's gamma = 0.001, T = 1000. The mean's gradient is stopped inside L_vlb: only the
        variance output v learns from it. L_T has no parameters and is left out.
        """
        eps, v = model_output.chunk(2, dim=1)
        mse = mean_flat((noise - eps).square())
        vlb = self.vlb_terms(torch.cat([eps.detach(), v], dim=1), x0, x_t, t)
        return {"loss": mse + vlb_weight * self.num_timesteps * vlb, "mse": mse, "vlb": vlb}
