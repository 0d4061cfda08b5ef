"""Gaussian diffusion math (realnet.diffusion.gaussian) against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from realnet.diffusion.gaussian import (
    GaussianDiffusion,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    linear_betas,
    make_betas,
    normal_kl,
    respaced_timesteps,
)
from realnet.diffusion.network import create_unet, unet_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two torch threads fighting other processes for 2 cores make tiny networks 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(linear_betas())


def test_linear_schedule_endpoints():
    betas = linear_betas()
    assert len(betas) == 1000 and betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


def test_cosine_schedule_matches_alpha_bar_formula():
    betas = cosine_betas(1000)
    t = np.arange(1, 1001) / 1000
    f = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(np.cumprod(1 - betas)[:-1], f[:-1], rtol=1e-9)
    with pytest.raises(ValueError, match="schedule"):
        make_betas("quadratic")


def test_respaced_timesteps_are_every_fiftieth_step():
    np.testing.assert_array_equal(respaced_timesteps(1000, 20), np.arange(0, 1000, 50))


def test_respacing_recomputes_betas_from_alpha_bar(diffusion):
    spaced = diffusion.respace(20)
    kept = np.arange(0, 1000, 50)
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    alpha_bar = np.cumprod(1 - linear_betas())[kept]
    expected_betas = 1 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])
    np.testing.assert_allclose(spaced.betas, expected_betas, rtol=1e-12)
    np.testing.assert_allclose(spaced.alphas_cumprod, alpha_bar, rtol=1e-12)
    assert spaced.betas[0] == pytest.approx(1e-4)
    t = torch.tensor([0, 7, 19])
    assert spaced.model_timesteps(t).tolist() == [0, 350, 950]


def test_respacing_to_all_steps_is_the_identity(diffusion):
    np.testing.assert_allclose(diffusion.respace(1000).betas, diffusion.betas, rtol=1e-12)


def test_q_sample_moments(diffusion):
    x0 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    noise = torch.tensor([[[[0.0, 1.0], [-2.0, 3.0]]]], dtype=torch.float64)
    t = torch.tensor([600])
    abar = np.prod(1 - linear_betas()[:601])
    expected = math.sqrt(abar) * 0.5 + math.sqrt(1 - abar) * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected)


def test_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1}|x_t,x_0) from the product of q(x_{t-1}|x_0) and q(x_t|x_{t-1})."""
    x0 = torch.tensor([0.3, -0.7], dtype=torch.float64).reshape(2, 1)
    x_t = torch.tensor([1.1, 0.2], dtype=torch.float64).reshape(2, 1)
    t = torch.tensor([250, 1])
    mean, variance, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        beta = linear_betas()[step]
        abar_prev = np.prod(1 - linear_betas()[:step])
        precision = 1 / (1 - abar_prev) + (1 - beta) / beta
        expected_mean = (math.sqrt(abar_prev) * x0[i, 0].item() / (1 - abar_prev)
                         + math.sqrt(1 - beta) * x_t[i, 0].item() / beta) / precision
        assert variance[i, 0].item() == pytest.approx(1 / precision, rel=1e-9)
        assert mean[i, 0].item() == pytest.approx(expected_mean, rel=1e-9)


def test_eps_and_x0_predictions_invert_each_other(diffusion):
    x_t = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x_t)
    t = torch.tensor([0, 500, 999])
    x0 = diffusion.predict_x0_from_eps(x_t, t, eps)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(x_t, t, x0), eps)


def test_learned_range_variance_interpolates_in_log_space(diffusion):
    """Eq. S1: v = 1 gives beta_t, v = -1 gives beta_tilde_t, v = 0 their geometric mean."""
    t = torch.tensor([10, 10, 10])
    v = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64).reshape(3, 1)
    variance = torch.exp(diffusion.learned_range_log_variance(v, t))[:, 0]
    beta, beta_tilde = linear_betas()[10], diffusion.posterior_variance[10]
    np.testing.assert_allclose(variance.numpy(), [beta, beta_tilde, math.sqrt(beta * beta_tilde)], rtol=1e-9)


def test_p_mean_variance_clips_x0(diffusion):
    x_t = torch.full((1, 1, 2, 2), 3.0)
    output = torch.cat([torch.full_like(x_t, -3.0), torch.zeros_like(x_t)], dim=1)
    t = torch.tensor([900])
    assert diffusion.p_mean_variance(output, x_t, t, clip_x0=True).pred_x0.max() == 1.0
    assert diffusion.p_mean_variance(output, x_t, t, clip_x0=False).pred_x0.max() > 1.0


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 2.0])
    lv1, lv2 = torch.tensor([-1.0, 0.5]), torch.tensor([0.2, -0.3])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2)))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1.0).reshape(1, 256)
    for mean, log_scale in [(0.0, -2.0), (0.9, -4.0), (-0.3, 0.5)]:
        log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_vlb_uses_decoder_nll_at_t0_and_kl_elsewhere(diffusion):
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    x_t = diffusion.q_sample(x0, torch.tensor([0, 5]), torch.randn_like(x0))
    output = torch.randn(2, 2, 4, 4)
    terms = diffusion.vlb_terms(output, x0, x_t, torch.tensor([0, 5]))
    p = diffusion.p_mean_variance(output, x_t, torch.tensor([0, 5]), clip_x0=False)
    nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance).mean(dim=(1, 2, 3)) / math.log(2)
    true_mean, _, true_lv = diffusion.q_posterior_mean_variance(x0, x_t, torch.tensor([0, 5]))
    kl = normal_kl(true_mean, true_lv, p.mean, p.log_variance).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(terms, torch.stack([nll[0], kl[1]]))


def test_hybrid_loss_stops_the_mean_gradient_inside_vlb(diffusion):
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 3, 400, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    output = torch.randn(4, 2, 4, 4, requires_grad=True)
    terms = diffusion.hybrid_loss(output, x0, x_t, t, noise)
    (terms["loss"] - terms["mse"]).sum().backward()
    eps_grad, v_grad = output.grad.chunk(2, dim=1)
    assert eps_grad.abs().max() == 0
    assert v_grad.abs().max() > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vlb"])  # gamma * T = 1


def test_hybrid_loss_decreases_on_a_toy_set(diffusion):
    torch.manual_seed(0)
    net = create_unet(unet_config("tiny", in_channels=1, image_size=8))
    ramp = torch.linspace(-1, 1, 8).reshape(1, 1, 1, 8).expand(4, 1, 8, 8)
    images = ramp * torch.tensor([1.0, -1, 0.5, -0.5]).reshape(4, 1, 1, 1)
    generator = torch.Generator().manual_seed(1)
    eval_t = torch.randint(0, 1000, (64,), generator=generator)
    eval_noise = torch.randn(64, 1, 8, 8, generator=generator)
    eval_x0 = images.repeat(16, 1, 1, 1)

    def eval_loss() -> float:
        with torch.no_grad():
            x_t = diffusion.q_sample(eval_x0, eval_t, eval_noise)
            return diffusion.hybrid_loss(net(x_t, eval_t).sample, eval_x0, x_t, eval_t, eval_noise)["loss"].mean().item()

    before = eval_loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(40):
        t = torch.randint(0, 1000, (16,), generator=generator)
        noise = torch.randn(16, 1, 8, 8, generator=generator)
        x0 = images.repeat(4, 1, 1, 1)
        x_t = diffusion.q_sample(x0, t, noise)
        loss = diffusion.hybrid_loss(net(x_t, t).sample, x0, x_t, t, noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def test_schedule_lookups_never_put_float64_on_the_device(diffusion):
    """Regression: gather moved the float64 schedule to the device before indexing it, which MPS
    (no float64) refuses. The meta device stands in for such a device here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class DeviceFloat64(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu" and tensor.dtype == torch.float64:
                    self.seen.append(str(func))
            return out

    like = torch.empty(2, 3, 4, 4, device="meta")
    with DeviceFloat64() as mode:
        out = diffusion.gather(diffusion.alphas_cumprod, torch.tensor([0, 999]), like)
    assert mode.seen == []
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (2, 1, 1, 1)
    reference = diffusion.gather(diffusion.alphas_cumprod, torch.tensor([0, 999]), torch.empty(2, 3, 4, 4))
    torch.testing.assert_close(reference.flatten(), torch.tensor(diffusion.alphas_cumprod[[0, 999]], dtype=torch.float32))


@pytest.mark.parametrize("preset", ["paper", "cpu", "tiny"])
def test_every_attention_layer_is_group_normalised_as_in_adm(preset):
    """Regression: under scale-shift conditioning diffusers built the middle block's attention
    without a GroupNorm, while ADM (and our down and up blocks) normalise every one."""
    from diffusers.models.attention_processor import Attention

    unet = create_unet(unet_config(preset, in_channels=3), "meta")
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    assert attentions and any(a in list(unet.mid_block.modules()) for a in attentions)
    assert all(isinstance(a.group_norm, torch.nn.GroupNorm) for a in attentions)


@pytest.mark.parametrize("count", [None, 20])
def test_posterior_log_variance_at_t0_is_clipped_to_the_t1_posterior_variance(diffusion, count):
    """IDDPM: the posterior variance is 0 at t=0, so its log there is that of beta_tilde at t=1
    (not beta_1, which it nearly equals after respacing); elsewhere it is log(beta_tilde_t)."""
    process = diffusion if count is None else diffusion.respace(count)
    clipped = process.posterior_log_variance_clipped
    assert clipped[0] == pytest.approx(math.log(process.posterior_variance[1]), rel=1e-12)
    np.testing.assert_allclose(clipped[1:], np.log(process.posterior_variance[1:]), rtol=1e-12)
