"""What one SDAS training step feeds the diffusion: images scaled to [-1, 1], timesteps uniform over
0..T-1 given to the U-Net as the integer timesteps the sampler also uses; and the EMA weights that
`sdas generate` samples from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dataset_fixtures import make_mvtec_tree
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from realnet.diffusion import train as train_module
from realnet.diffusion.gaussian import GaussianDiffusion
from realnet.diffusion.network import create_unet
from realnet.diffusion.train import (
    DEFAULT_EMA,
    EMA_WEIGHTS,
    TRAIN_STATE,
    TrainRequest,
    load_training_images,
    rank_batch,
    rank_noise,
    to_uint8,
    train,
)


@pytest.fixture(scope="module")
def gray_data(tmp_path_factory) -> Path:
    return make_mvtec_tree(tmp_path_factory.mktemp("gray"), category="tile", n_train=6, gray=True, image_ext=".jpg")


def request(data: Path, out: Path, **overrides) -> TrainRequest:
    settings = dict(data=data, categories=["tile"], out=out, preset="tiny", steps=1, batch_size=4, sample_every=100,
                    save_every=1, log_every=1, sample_count=2, sample_steps=2, progress=False)
    settings.update(overrides)
    return TrainRequest(**settings)


def test_training_timesteps_are_uniform_over_all_of_0_to_T_minus_1():
    t, noise = rank_noise(0, 0, (20000, 1, 1, 1), 1000, 0, 1)
    assert t.min().item() == 0 and t.max().item() == 999
    counts = torch.bincount(t, minlength=1000)
    assert counts.numel() == 1000 and abs(t.double().mean().item() - 499.5) < 10
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1) < 0.03


def test_a_step_diffuses_the_batch_images_in_minus_one_to_one_at_integer_timesteps(gray_data, tmp_path, monkeypatch):
    seen = {}
    q_sample = GaussianDiffusion.q_sample

    def spy_q_sample(self, x0, t, noise):
        seen["x0"], seen["t"] = x0.detach().clone(), t.clone()
        return q_sample(self, x0, t, noise)

    from diffusers import UNet2DModel
    forward = UNet2DModel.forward

    def spy_forward(self, sample, timestep, *args, **kwargs):
        if "unet_t" not in seen:
            seen["unet_t"] = torch.as_tensor(timestep).clone()
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "q_sample", spy_q_sample)
    monkeypatch.setattr(UNet2DModel, "forward", spy_forward)
    req = request(gray_data, tmp_path / "run")
    train(req)
    images, _, _ = load_training_images(req, 16)
    index = rank_batch(0, len(images), 4, 0, 0, 1)
    expected_t, _ = rank_noise(0, 0, (4, *images.shape[1:]), 1000, 0, 1)
    torch.testing.assert_close(seen["x0"], images[torch.from_numpy(index)].float() / 127.5 - 1.0)
    assert torch.equal(seen["t"], expected_t)
    assert torch.equal(seen["unet_t"].long(), expected_t) and torch.equal(seen["unet_t"].double(), expected_t.double())


def test_ema_file_holds_the_averaged_weights(gray_data, tmp_path):
    """After one step from the initial weights w0 to w1, ema = d w0 + (1 - d) w1 (d = 0.9 for tiny)."""
    out = tmp_path / "run"
    train(request(gray_data, out, ema_decay=0.9))
    state = load_file(out / TRAIN_STATE)
    ema = load_file(out / EMA_WEIGHTS)
    torch.manual_seed(0)
    initial = create_unet(create_meta_unet(out)).state_dict()
    moved = 0
    for name, w0 in initial.items():
        w1 = state[f"model.{name}"]
        torch.testing.assert_close(ema[name], 0.9 * w0 + 0.1 * w1, rtol=1e-5, atol=1e-7)
        moved += not torch.equal(w0, w1)
    assert moved > 0


def create_meta_unet(out: Path) -> dict:
    import json
    return json.loads((out / "model.json").read_text())["unet"]


def test_paper_preset_ema_is_0_9999():
    assert DEFAULT_EMA["paper"] == 0.9999


def test_to_uint8_inverts_the_training_scaling():
    """Training maps pixel k to k / 127.5 - 1; a sample at exactly that value must be written as k."""
    k = torch.arange(256, dtype=torch.float64)
    images = (k / 127.5 - 1.0).float().reshape(1, 1, 16, 16)
    np.testing.assert_array_equal(to_uint8(images)[0, ..., 0].reshape(-1), np.arange(256))
    assert to_uint8(torch.tensor([-3.0, 3.0]).reshape(1, 1, 1, 2)).reshape(-1).tolist() == [0, 255]
