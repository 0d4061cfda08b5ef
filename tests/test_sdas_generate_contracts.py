"""`sdas generate` and SDAS sampling contracts: each image of a batch is sampled at its own strength,
a rerun into a bank with other fixed settings (strength, sampler, DDIM variance, steps) is refused,
the manifest's s is the strength actually sampled, the default is the model's sample_steps, and
--steps 0 is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dataset_fixtures import make_mvtec_tree
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)

from realnet.diffusion import generate as generate_module
from realnet.diffusion.gaussian import GaussianDiffusion, linear_betas
from realnet.diffusion.generate import MANIFEST, SETTINGS, GenerateRequest, generate
from realnet.diffusion.network import create_unet, make_denoiser, unet_config
from realnet.diffusion.sampler import sdas_sample
from realnet.diffusion.train import TrainRequest, train
from realnet.errors import RealnetError


SHAPE = (3, 16, 16)


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
@torch.no_grad()
def test_every_image_of_a_batch_is_sampled_at_its_own_strength(sampler):
    torch.manual_seed(0)
    denoise = make_denoiser(create_unet(unet_config("tiny", in_channels=3)).eval())
    diffusion = GaussianDiffusion(linear_betas()).respace(10)
    seeds, strengths = [21, 22, 23, 24], [0.0, 0.3, 1.0, 3.0]  # distinct, not symmetric about the middle
    batch = sdas_sample(denoise, diffusion, generators(seeds), SHAPE, strengths, sampler=sampler)
    for i, (seed, s) in enumerate(zip(seeds, strengths)):
        alone = sdas_sample(denoise, diffusion, generators([seed]), SHAPE, [s], sampler=sampler)
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-4, rtol=0)
        other = sdas_sample(denoise, diffusion, generators([seed]), SHAPE, [strengths[-1 - i]], sampler=sampler)
        assert (batch[i:i + 1] - other).abs().max() > 1e-3  # the strength matters at this size


FIRST = dict(strength=(0.1, 0.2), sampler="ddim", ddim_variance="beta", steps=2, batch_size=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdas_bank")
    data = make_mvtec_tree(root / "data", category="tile", n_train=2, gray=True)
    train(TrainRequest(data=data, categories=["tile"], out=root / "model", preset="tiny", steps=1, batch_size=2,
                       sample_every=10, sample_steps=3, progress=False))
    return root / "model"


def bank(model: Path, out: Path, **settings) -> dict:
    return generate(GenerateRequest(model=model, category="tile", count=1, out=out, progress=False, **settings))


def test_generation_json_records_the_sampling_settings(model, tmp_path):
    bank(model, tmp_path, **FIRST)
    recorded = json.loads((tmp_path / "tile" / SETTINGS).read_text())
    assert recorded["strength"] == [0.1, 0.2] and recorded["sampler"] == "ddim"
    assert recorded["ddim_variance"] == "beta" and recorded["steps"] == 2 and recorded["batch_size"] == 1


@pytest.mark.parametrize("key, value", [("strength", (0.3, 0.4)), ("sampler", "ancestral"),
                                        ("ddim_variance", "learned"), ("steps", 3), ("batch_size", 2)])
def test_a_rerun_with_another_sampling_setting_is_refused(model, tmp_path, key, value):
    bank(model, tmp_path, **FIRST)
    with pytest.raises(RealnetError, match=key):
        bank(model, tmp_path, **{**FIRST, key: value})


@pytest.fixture
def recorded(monkeypatch):
    """Replaces the sampler: records each call's step count and per-image strengths, returns grey images."""
    calls = []

    def fake_sample(denoise, diffusion, generators, shape, strength, **options):
        calls.append({"steps": diffusion.num_timesteps, "strengths": list(strength)})
        return torch.zeros(len(generators), *shape)

    monkeypatch.setattr(generate_module, "sdas_sample", fake_sample)
    return calls


def test_default_steps_are_the_models_sample_steps(model, tmp_path, recorded):
    generate(GenerateRequest(model=model, category="tile", count=2, out=tmp_path, batch_size=2, progress=False))
    assert [call["steps"] for call in recorded] == [3]
    assert json.loads((tmp_path / "tile" / SETTINGS).read_text())["steps"] == 3


@pytest.mark.parametrize("seed", [0, 5])
def test_manifest_strengths_are_the_sampled_strengths(model, tmp_path, recorded, seed):
    generate(GenerateRequest(model=model, category="tile", count=5, out=tmp_path, batch_size=2, steps=1, seed=seed,
                             strength=(0.1, 0.9), progress=False))
    sampled = [s for call in recorded for s in call["strengths"]][:5]  # the last block is sampled whole
    rows = [json.loads(line) for line in (tmp_path / "tile" / MANIFEST).read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(5))
    assert [row["s"] for row in rows] == pytest.approx(sampled, abs=0, rel=0)
    assert all(0.1 <= s <= 0.9 for s in sampled) and len(set(sampled)) == 5


@pytest.mark.parametrize("steps", [0, -1, 1001])
def test_out_of_range_steps_are_refused_before_anything_is_loaded(tmp_path, steps):
    request = GenerateRequest(model=tmp_path / "no_model", category="tile", count=1, out=tmp_path / "out",
                              steps=steps, progress=False)
    with pytest.raises(RealnetError, match="--steps"):
        generate(request)
    assert not (tmp_path / "out").exists()
