"""The --schedule cosine option reaches the diffusion, and the cosine betas are IDDPM's (clipped at 0.999)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from realnet.diffusion.gaussian import cosine_betas, linear_betas, make_betas
from realnet.diffusion.train import diffusion_for


def iddpm_cosine_alpha_bar(T: int) -> np.ndarray:
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2(((t/T + 0.008) / 1.008) * pi/2), t = 1..T (IDDPM Eq. 17)."""
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([f(t) / f(0) for t in range(1, T + 1)])


@pytest.mark.parametrize("T", [1000, 50])
def test_make_betas_cosine_is_the_cosine_schedule(T):
    betas = make_betas("cosine", T)
    assert len(betas) == T
    np.testing.assert_allclose(np.cumprod(1 - betas)[:-1], iddpm_cosine_alpha_bar(T)[:-1], rtol=1e-9)
    np.testing.assert_allclose(make_betas("linear", T), np.linspace(1e-4, 0.02, T), rtol=1e-12)


def test_cosine_last_beta_is_clipped_to_0_999():
    """f(T) = cos^2(pi/2) = 0 makes beta_T = 1; IDDPM clips every beta to at most 0.999."""
    for T in (1000, 20):
        betas = cosine_betas(T)
        assert betas[-1] == pytest.approx(0.999, abs=1e-12)
        assert betas.max() <= 0.999


def test_model_meta_schedule_selects_the_diffusion_betas():
    """`sdas train --schedule` is stored in model.json; training and generate build their process from it."""
    cosine = diffusion_for({"diffusion": {"schedule": "cosine", "timesteps": 1000, "sample_steps": 20}})
    linear = diffusion_for({"diffusion": {"schedule": "linear", "timesteps": 1000, "sample_steps": 20}})
    np.testing.assert_allclose(cosine.alphas_cumprod[:-1], iddpm_cosine_alpha_bar(1000)[:-1], rtol=1e-9)
    np.testing.assert_allclose(linear.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)
    assert not np.allclose(cosine.betas, linear_betas())
