"""The feature-noise source (ours, after SimpleNet): the synthesizer leaves the image normal and
records a strength and seed; the training step adds sigma * s_c * m * eps to varphi(I) under the
mask, repeatably, and leaves every other row as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from realnet.config import load_config
from realnet.engine import fit as fit_module
from realnet.errors import RealnetError
from realnet.synthesis.feature_noise import FeatureNoiseSource, add_feature_noise, channel_std
from realnet.synthesis.foreground import NO_FOREGROUND
from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, build_sources


def noise_synthesizer(strength=(0.1, 1.0)) -> AnomalySynthesizer:
    return AnomalySynthesizer(SynthesisConfig(source_weights={"feature_noise": 1.0}),
                              {"feature_noise": FeatureNoiseSource(strength)}, NO_FOREGROUND)


def test_a_feature_noise_sample_keeps_the_image_and_records_strength_and_seed():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    sample = noise_synthesizer((0.2, 0.4))(image, np.random.default_rng(5), force_anomalous=True)
    assert sample.label == 1 and sample.source == "feature_noise"
    assert np.array_equal(sample.image, image) and sample.mask.any()
    assert 0.2 <= sample.delta <= 0.4 and isinstance(sample.noise_seed, int)
    again = noise_synthesizer((0.2, 0.4))(image, np.random.default_rng(5), force_anomalous=True)
    assert (again.delta, again.noise_seed) == (sample.delta, sample.noise_seed)
    assert np.array_equal(again.mask, sample.mask)
    assert build_sources(["feature_noise"], size=64, category="x")["feature_noise"].strength_range == (0.1, 1.0)


def test_image_space_samples_carry_no_noise_seed():
    image = np.zeros((32, 32, 3), np.uint8)
    synthesizer = AnomalySynthesizer(SynthesisConfig(source_weights={"cutpaste": 1.0}),
                                     build_sources(["cutpaste"], size=32, category="x"), NO_FOREGROUND)
    assert synthesizer(image, np.random.default_rng(0)).noise_seed is None


def test_feature_noise_strength_range_is_checked():
    with pytest.raises(RealnetError, match="feature noise strength"):
        FeatureNoiseSource((0.0, 1.0))


def test_channel_std_is_the_spread_over_images_and_positions():
    features = [torch.randn(5, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)]
    expected = features[0].permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    torch.testing.assert_close(channel_std(features)[0], expected)


def test_noise_is_sigma_times_channel_spread_inside_the_mask_and_zero_outside():
    size, cells = 64, 32
    features = [torch.zeros(2, 3, cells, cells), torch.zeros(2, 5, cells // 2, cells // 2)]
    stds = [torch.tensor([1.0, 2.0, 4.0]), torch.full((5,), 0.5)]
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, :, : size // 2] = True  # row 0: left half
    masks[1] = True  # row 1: everywhere
    strengths = torch.tensor([0.5, 2.0])
    noisy = add_feature_noise(features, stds, masks, strengths, [11, 12])
    left, right = noisy[0][0, :, :, : cells // 2], noisy[0][0, :, :, cells // 2:]
    assert torch.count_nonzero(right) == 0
    spread = left.flatten(1).std(dim=1)
    torch.testing.assert_close(spread, 0.5 * stds[0], rtol=0.1, atol=0)
    torch.testing.assert_close(noisy[1][1].flatten(1).std(dim=1), 2.0 * stds[1], rtol=0.15, atol=0)
    repeated = add_feature_noise(features, stds, masks, strengths, [11, 12])
    assert all(torch.equal(a, b) for a, b in zip(noisy, repeated))
    other = add_feature_noise(features, stds, masks, strengths, [13, 12])
    assert not torch.equal(other[0][0], noisy[0][0]) and torch.equal(other[0][1], noisy[0][1])


def test_partly_covered_cells_get_noise_in_proportion_to_their_coverage():
    features = [torch.zeros(1, 1, 1, 1)]
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :1] = True  # a quarter of the one cell
    eps = torch.randn(1, 1, 1, generator=torch.Generator().manual_seed(3))
    noisy = add_feature_noise(features, [torch.tensor([2.0])], masks, torch.tensor([1.0]), [3])
    torch.testing.assert_close(noisy[0][0], 0.25 * 2.0 * eps)


class StubSelection(torch.nn.Module):
    """select_features as a fixed function of the image, so rows can be traced."""

    def select_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images[:, :2, ::8, ::8] + 100.0]


def test_training_features_treat_normal_image_and_noise_rows_each_their_own_way():
    rng = np.random.default_rng(0)
    fit_images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    model = StubSelection()
    normal = fit_module.NormalFeatures(model, fit_images, torch.device("cpu"), budget_gb=1.0, batch_size=2,
                                       progress=False)
    training = fit_module.TrainingFeatures(model, normal, torch.device("cpu"), feature_noise=True)
    torch.testing.assert_close(training.noise_stds[0], channel_std(normal(np.arange(6)))[0])
    anomalous_image = np.full((32, 32, 3), 255, np.uint8)
    masks = np.zeros((3, 32, 32), bool)
    masks[1:, :, :16] = True  # the left half
    batch = fit_module.SyntheticBatch(
        indices=np.array([0, 1, 2]), images=np.stack([fit_images[0], anomalous_image, fit_images[2]]), masks=masks,
        labels=np.array([0, 1, 1]), noise_strengths=np.array([0, 0, 0.5], np.float32),
        noise_seeds=np.array([0, 0, 7]))
    clean, features = training(batch)
    assert torch.equal(features[0][0], clean[0][0])
    torch.testing.assert_close(features[0][1], model.select_features(fit_module.to_tensor(anomalous_image[None],
                                                                                          torch.device("cpu")))[0][0])
    difference = features[0][2] - clean[0][2]
    assert torch.count_nonzero(difference[..., 2:]) == 0 and torch.count_nonzero(difference[..., :2]) > 0
    without = fit_module.TrainingFeatures(model, normal, torch.device("cpu"), feature_noise=False)
    with pytest.raises(RealnetError, match="feature-noise sample"):
        without(batch)


def test_a_fit_with_feature_noise_trains_and_repeats(tmp_path):
    from dataset_fixtures import make_mvtec_tree
    from safetensors.torch import load_file

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))
    overrides = ["train.steps=4", "synthesis.sources={cutpaste: 1, feature_noise: 1}", "rrs.recalibration_batches=2"]
    for name in ("a", "b"):
        fit_module.fit(fit_module.FitRequest(config=load_config("tiny", overrides=overrides), data_root=data,
                                             category="widget", out=tmp_path / name, device="cpu", progress=False))
    assert json.loads((tmp_path / "a" / "model.json").read_text())["config"]["synthesis"]["sources"]["feature_noise"] == 1
    first, second = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("a", "b"))
    assert all(torch.equal(first[key], second[key]) for key in first)


class RecordingSelection(StubSelection):
    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def select_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.inputs.append(images)
        return super().select_features(images)


def test_anomalous_rows_reach_the_backbone_as_a_contiguous_batch():
    """The convolutions round differently on a channels-last input, which changed a preset fit's
    weights when the training step first took only the anomalous rows (a regression)."""
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = RecordingSelection()
    normal = fit_module.NormalFeatures(model, images, torch.device("cpu"), budget_gb=1.0, batch_size=4,
                                       progress=False)
    batch = fit_module.SyntheticBatch(
        indices=np.arange(4), images=images[::-1].copy(), masks=np.ones((4, 32, 32), bool),
        labels=np.array([0, 1, 0, 1]), noise_strengths=np.zeros(4, np.float32), noise_seeds=np.zeros(4, np.int64))
    model.inputs.clear()
    fit_module.TrainingFeatures(model, normal, torch.device("cpu"), feature_noise=False)(batch)
    (seen,) = model.inputs
    assert seen.is_contiguous()
    assert torch.equal(seen, fit_module.to_tensor(batch.images).index_select(0, torch.tensor([1, 3])))


def test_each_feature_noise_sample_draws_its_own_noise_seed():
    """The seed comes from the sample's randomness, so two samples do not share one eps."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    synthesizer, rng = noise_synthesizer(), np.random.default_rng(1)
    seeds = [synthesizer(image, rng, force_anomalous=True).noise_seed for _ in range(8)]
    assert len(set(seeds)) == 8 and all(0 <= seed < 2**62 for seed in seeds)
