"""Feature-density fusion (ours): the Gaussian statistics and Mahalanobis math, the fusion
formula, how build/config guard it, and what a fused fit calibrates on (test_predict_cli checks
that such a run predicts, draws and exports its maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from realnet.config import load_config, map_kind
from realnet.engine.evaluate import load_run
from realnet.errors import RealnetError
from realnet.model.density import FeatureDensity, feature_embedding, gaussian_statistics, mahalanobis_map
from realnet.model.fusion import MapFusion


def test_gaussian_statistics_over_uneven_batches_equal_numpy_per_position():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3, 2, 4)).astype(np.float32)  # (N, C, h, w)
    mean, covariance = gaussian_statistics(torch.from_numpy(x[i:i + 4]) for i in range(0, 9, 4))
    assert mean.shape == (2, 4, 3) and covariance.shape == (2, 4, 3, 3)
    for i in range(2):
        for j in range(4):
            np.testing.assert_allclose(mean[i, j].numpy(), x[:, :, i, j].mean(0), atol=1e-6)
            np.testing.assert_allclose(covariance[i, j].numpy(), np.cov(x[:, :, i, j], rowvar=False), atol=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        gaussian_statistics([torch.zeros(1, 3, 2, 4)])


def test_mahalanobis_map_equals_scipy_at_every_position():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 2, 2))
    mean = rng.normal(size=(2, 2, 3))
    a = rng.normal(size=(2, 2, 3, 3))
    precision = a @ np.swapaxes(a, -1, -2) + np.eye(3)
    distances = mahalanobis_map(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(precision))
    assert distances.shape == (2, 2, 2)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                expected = mahalanobis(x[b, :, i, j], mean[i, j], precision[i, j])
                assert distances[b, i, j].item() == pytest.approx(expected, rel=1e-9)


def test_embedding_upsamples_coarser_layers_and_keeps_chosen_channels():
    fine, coarse = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)
    embedding = feature_embedding([fine, coarse])
    assert embedding.shape == (2, 8, 4, 4)
    assert torch.equal(embedding[:, :3], fine)
    kept = feature_embedding([fine, coarse], torch.tensor([0, 6]))
    torch.testing.assert_close(kept, embedding[:, [0, 6]])


def test_density_is_euclidean_until_calibrated_then_uses_the_regularised_covariance():
    torch.manual_seed(0)
    density = FeatureDensity(3, (2, 2))
    features = [torch.randn(2, 3, 2, 2)]
    torch.testing.assert_close(density(features), features[0].norm(dim=1))
    mean, covariance = torch.randn(2, 2, 3).double(), 2 * torch.eye(3).double().expand(2, 2, 3, 3)
    density.calibrate(mean, covariance, regularization=0.5)
    expected = (features[0].permute(0, 2, 3, 1) - mean.float()).norm(dim=-1) / 2.5**0.5
    torch.testing.assert_close(density(features), expected)
    with pytest.raises(ValueError, match="do not match"):
        density.calibrate(torch.zeros(3, 3, 3), torch.zeros(3, 3, 3, 3), 0.01)


def test_calibration_inverts_preset_sized_covariances_with_an_explicit_thread_count():
    """Bug: torch.linalg.inv (MKL's batched LU) on the cpu preset's 32x32 grid of 152x152
    float64 covariances failed ("Pivots given to lu_solve...") once torch.set_num_threads(2)
    had been called, as benchmarks and user scripts do. The precision now comes from a Cholesky
    factorisation, which suits a symmetric positive definite matrix anyway."""
    generator = torch.Generator().manual_seed(0)
    channels, grid = 152, (32, 32)
    samples = torch.randn(*grid, 3 * channels, channels, generator=generator, dtype=torch.float64)
    covariance = samples.transpose(-1, -2) @ samples / (3 * channels)
    density = FeatureDensity(channels, grid)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        density.calibrate(torch.zeros(*grid, channels, dtype=torch.float64), covariance, regularization=0.01)
    finally:
        torch.set_num_threads(threads)
    eye = torch.eye(channels, dtype=torch.float64)
    corner = (covariance[0, 0] + 0.01 * eye) @ density.precision[0, 0].double()
    torch.testing.assert_close(corner, eye, atol=1e-4, rtol=0)
    assert torch.isfinite(density.precision).all()


def test_fusion_is_the_weighted_sum_of_the_scaled_maps():
    torch.manual_seed(0)
    fusion = MapFusion(FeatureDensity(3, (2, 2)), density_weight=0.25)
    fusion.calibrate_scales(0.1, 4.0)
    probabilities, features = torch.rand(2, 8, 8), [torch.randn(2, 3, 2, 2)]
    (distances,) = fusion.branch_maps(features, (8, 8))
    assert distances.shape == (2, 8, 8)
    pixel_map, score_map = fusion(probabilities, features)
    torch.testing.assert_close(pixel_map, 0.75 * probabilities / 0.1 + 0.25 * distances / 4.0)
    assert score_map is pixel_map
    with pytest.raises(ValueError, match="positive"):
        fusion.calibrate_scales(0.0, 1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        MapFusion(FeatureDensity(3, (2, 2)), density_weight=1.5)


def test_build_adds_the_branch_only_with_a_weight_and_draws_a_seeded_channel_subset():
    from realnet.engine.build import build_backbone, build_fusion, build_model

    config = load_config("tiny", overrides=["backbone.weights=random"])
    backbone = build_backbone(config)
    assert build_model(config, backbone).fusion is None
    config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=0.5", "density.channels=10"])
    first, second = build_fusion(config, backbone), build_fusion(config, backbone)
    indices = first.density.channel_indices
    assert indices.numel() == 10 and torch.equal(indices, indices.sort().values)
    assert torch.equal(indices, second.density.channel_indices)
    side = config.train.image_size // min(backbone.strides)
    assert first.density.precision.shape == (side, side, 10, 10)
    config.density.channels = sum(backbone.channels) + 1
    with pytest.raises(RealnetError, match="exceeds the backbone"):
        build_fusion(config, backbone)


def test_build_refuses_covariances_that_do_not_fit_in_memory(monkeypatch):
    from realnet.engine import build

    config = load_config("tiny", overrides=["backbone.weights=random", "density.weight=1"])
    monkeypatch.setattr(build, "DENSITY_MEMORY_LIMIT_GB", 1e-6)
    with pytest.raises(RealnetError, match="set density.channels lower"):
        build.build_fusion(config, build.build_backbone(config))


@pytest.mark.parametrize("override, message", [
    ("density.weight=1.5", "density.weight must be in"),
    ("density.channels=0", "density.channels must be"),
    ("density.regularization=0", "density.regularization must be"),
    # regression: 1e300 was accepted, and its float32 precision underflows to zero: a density map of
    # zeros, whose held-out scale the fusion divides by
    ("density.regularization=1e300", r"density.regularization must be in \(0, 1e\+06\]"),
])
def test_bad_density_settings_are_one_clear_error(override, message):
    with pytest.raises(RealnetError, match=message):
        load_config("tiny", overrides=[override])


def test_fusion_and_position_normalisation_are_exclusive():
    with pytest.raises(RealnetError, match="needs train.map_normalization: none"):
        load_config("tiny", overrides=["density.weight=0.5", "train.map_normalization=position"])


def test_fit_fits_the_gaussian_on_the_fit_images_and_the_scales_on_the_held_out_ones(fused_run):
    """Mean and precision (inverse regularised covariance) come from the fit images, the scales from the held-out."""
    from realnet.engine.runtime import to_tensor
    from realnet.model.discriminator import image_score

    _, run_dir, fit_images, holdout_images = fused_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    assert map_kind(meta["config"]) == "fused"
    embedding = model.fusion.density.embed(model.backbone(to_tensor(fit_images, torch.device("cpu"))))
    torch.testing.assert_close(model.fusion.density.mean, embedding.mean(0).permute(1, 2, 0), atol=1e-4, rtol=1e-4)
    centred = embedding.double().numpy() - embedding.double().numpy().mean(0)
    covariance = np.einsum("nchw,ndhw->hwcd", centred, centred) / (len(centred) - 1)
    eye = np.eye(centred.shape[1])
    regularised = covariance + meta["config"]["density"]["regularization"] * eye
    np.testing.assert_allclose(model.fusion.density.precision.double().numpy() @ regularised,
                               np.broadcast_to(eye, regularised.shape), atol=0.05)
    features = model.backbone(to_tensor(holdout_images, torch.device("cpu")))
    probabilities = model.probability_maps(model.selector(features))
    (distances,) = model.fusion.branch_maps(features, tuple(probabilities.shape[-2:]))
    expected_scales = torch.stack([image_score(probabilities, model.score_kernel).mean(),
                                   image_score(distances, model.score_kernel).mean()])
    torch.testing.assert_close(model.fusion.scales, expected_scales, atol=1e-5, rtol=1e-4)
    maps, scores = model.predict(to_tensor(holdout_images, torch.device("cpu")))
    torch.testing.assert_close(maps, 0.5 * probabilities / expected_scales[0] + 0.5 * distances / expected_scales[1],
                               atol=1e-4, rtol=1e-4)
    # each half reads 1 on average on the images it was scaled on, so their fused scores average <= 1
    assert 0.5 < float(scores.mean()) <= 1.0 + 1e-4


def test_a_run_without_it_has_no_fusion_state(tiny_run):
    model, meta = load_run(tiny_run[1], torch.device("cpu"))
    assert map_kind(meta["config"]) == "probability"
    assert model.fusion is None and not any(k.startswith("fusion") for k in model.state_dict())


def test_embedding_upsamples_coarser_layers_bilinearly():
    generator = torch.Generator().manual_seed(0)
    fine, coarse = torch.rand(1, 2, 8, 8, generator=generator), torch.rand(1, 3, 2, 2, generator=generator)
    embedding = feature_embedding([fine, coarse])
    expected = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(embedding[:, 2:], expected)


def test_a_regularization_too_small_for_few_fit_images_is_one_clear_error():
    """Regression: with fewer fit images than density channels the covariance is singular, and a
    regularization near float64's epsilon ended the fit in a Cholesky traceback after training."""
    from realnet.engine.build import build_backbone, build_model
    from realnet.engine.fit import calibrate_fusion

    config = load_config("tiny", overrides=["density.weight=0.5", "density.regularization=1e-20"])
    model = build_model(config, build_backbone(config))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(RealnetError, match=r"density.regularization=1e-20 is too small to make the feature covariance "
                                           r"of 3 fit images and \d+ channels invertible"):
        calibrate_fusion(model, images, images, config, torch.device("cpu"))


def test_the_image_score_pools_the_maps_fused_at_its_own_density_weight():
    """density.image_weight: the pixel map keeps w_d, the image score's map is fused at its own
    weight with the same scales, and `RealNet.predict` scores that map."""
    from realnet.config import load_config
    from realnet.errors import RealnetError
    from realnet.model.discriminator import image_score

    torch.manual_seed(0)
    fusion = MapFusion(FeatureDensity(3, (2, 2)), density_weight=0.5, image_density_weight=0.75)
    fusion.calibrate_scales(0.1, 4.0)
    probabilities, features = torch.rand(2, 8, 8), [torch.randn(2, 3, 2, 2)]
    (distances,) = fusion.branch_maps(features, (8, 8))
    pixel_map, score_map = fusion(probabilities, features)
    torch.testing.assert_close(pixel_map, 0.5 * probabilities / 0.1 + 0.5 * distances / 4.0)
    torch.testing.assert_close(score_map, 0.25 * probabilities / 0.1 + 0.75 * distances / 4.0)

    fused_maps = fusion

    class Detector(torch.nn.Module):  # RealNet.predict on fixed probabilities and features
        score_kernel, fusion, map_normalization = 4, fused_maps, torch.nn.Identity()

        def backbone(self, images):
            return features

        def selector(self, backbone_features):
            return backbone_features

        def probability_maps(self, selected):
            return probabilities

    from realnet.model.realnet import RealNet

    maps, scores = RealNet.predict(Detector(), torch.zeros(2, 3, 8, 8))
    torch.testing.assert_close(maps, pixel_map)
    torch.testing.assert_close(scores, image_score(score_map, 4))
    assert not torch.allclose(scores, image_score(pixel_map, 4))

    with pytest.raises(ValueError, match="image density weight"):
        MapFusion(FeatureDensity(3, (2, 2)), density_weight=0.5, image_density_weight=1.5)
    with pytest.raises(RealnetError, match="density.image_weight=0.75 needs density.weight > 0"):
        load_config("tiny", None, ["density.image_weight=0.75"])
    assert load_config("tiny", None, ["density.weight=0.5", "density.image_weight=0.75"]).density.image_weight == 0.75


def test_turning_the_cpu_presets_density_off_names_the_image_weight_to_clear():
    """The cpu preset sets density.image_weight, so `density.weight=0` alone (the paper's maps,
    or position normalisation) is refused with the override that completes it, which then loads."""
    with pytest.raises(RealnetError, match=r"add --set density.image_weight=null"):
        load_config("cpu", None, ["density.weight=0"])
    config = load_config("cpu", None, ["density.weight=0", "density.image_weight=null"])
    assert config.density.weight == 0 and config.density.image_weight is None
