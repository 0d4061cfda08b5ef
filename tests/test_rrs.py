import pytest
import torch

from realnet.model.rrs import ResidualSelection, reconstruction_residuals, retained_count, select_residuals


def residual_batch():
    """Channel 0: one very high pixel (large max, small mean). Channel 2: uniformly raised (large
    mean, moderate max). Others: small noise."""
    generator = torch.Generator().manual_seed(0)
    residuals = 0.01 * torch.rand(2, 5, 8, 8, generator=generator)
    residuals[:, 0, 3, 3] = 5.0
    residuals[:, 2] += 1.0
    return residuals


def test_select_by_max_and_by_mean():
    residuals = residual_batch()
    by_max = select_residuals(residuals, residuals, 1, "max")
    by_avg = select_residuals(residuals, residuals, 1, "avg")
    assert torch.equal(by_max, residuals[:, [0]])
    assert torch.equal(by_avg, residuals[:, [2]])
    both = select_residuals(residuals, residuals, 2, "max_avg")
    assert torch.equal(both, residuals[:, [0, 2]])


def test_values_are_gathered_from_unnormalised_residuals_per_image():
    residuals = residual_batch()
    ranking = residuals.clone()
    ranking[1, 4] = 100.0  # image 1 ranks channel 4 first; image 0 does not
    picked = select_residuals(residuals, ranking, 1, "max")
    assert torch.equal(picked[0], residuals[0, [0]])
    assert torch.equal(picked[1], residuals[1, [4]])


def test_retained_count_follows_ratio():
    assert retained_count(1536, 1 / 3, "max_avg") == 512
    assert retained_count(1536, 1 / 3, "max") == 512
    assert retained_count(100, 1.0, "all") == 100
    assert retained_count(10, 0.05, "max_avg") == 2


def test_residuals_upsampled_and_concatenated():
    features = [torch.ones(1, 2, 8, 8), torch.ones(1, 3, 4, 4)]
    reconstructions = [torch.zeros(1, 2, 8, 8), 2 * torch.ones(1, 3, 4, 4)]
    residuals = reconstruction_residuals(features, reconstructions)
    assert residuals.shape == (1, 5, 8, 8)
    assert torch.allclose(residuals, torch.ones_like(residuals))


def test_module_uses_batchnorm_ranking_without_affine():
    module = ResidualSelection(5, ratio=0.4, mode="max_avg")
    assert module.retained == 2
    assert not list(module.parameters())
    out = module(residual_batch())
    assert out.shape == (2, 2, 8, 8)
    assert ResidualSelection(5, ratio=1.0, mode="all")(residual_batch()).shape == (2, 5, 8, 8)


def test_module_ranks_on_batch_standardised_residuals_and_returns_raw_values():
    """Train-mode RRS picks the channel with the largest standardised (not raw) max, and returns its raw values."""
    generator = torch.Generator().manual_seed(0)
    residuals = 0.01 * torch.rand(2, 2, 8, 8, generator=generator)
    residuals[:, 0] += 10.0  # the raw maximum, but barely above its own channel's mean
    residuals[:, 1, 3, 3] = 1.0  # a lone peak far above its channel's mean
    mean, std = residuals.mean(dim=(0, 2, 3), keepdim=True), residuals.std(dim=(0, 2, 3), keepdim=True)
    assert torch.equal(select_residuals(residuals, residuals, 1, "max"), residuals[:, [0]])
    assert torch.equal(select_residuals(residuals, (residuals - mean) / std, 1, "max"), residuals[:, [1]])
    assert torch.equal(ResidualSelection(2, ratio=0.5, mode="max")(residuals), residuals[:, [1]])


def test_running_statistics_are_almost_the_last_batch_without_recalibration():
    module = ResidualSelection(3, ratio=2 / 3, mode="max")
    generator = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 3, 6, 6, generator=generator) + shift for shift in (0.0, 5.0)]
    for batch in batches:
        module(batch)  # training mode, momentum 0.9
    last_mean = batches[-1].mean(dim=(0, 2, 3))
    assert torch.allclose(module.norm.running_mean, 0.1 * (0.9 * batches[0].mean(dim=(0, 2, 3))) + 0.9 * last_mean,
                          atol=1e-5)


def test_recalibration_averages_the_batch_statistics_and_restores_the_module():
    module = ResidualSelection(3, ratio=2 / 3, mode="max")
    module.eval()
    generator = torch.Generator().manual_seed(2)
    batches = [torch.rand(4, 3, 6, 6, generator=generator) * (i + 1) + i for i in range(5)]
    assert module.recalibrate(iter(batches)) == 5
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches])
    variances = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in batches])
    torch.testing.assert_close(module.norm.running_mean, means.mean(0))
    torch.testing.assert_close(module.norm.running_var, variances.mean(0))
    assert module.norm.momentum == 0.9 and not module.norm.training

    before = (module.norm.running_mean.clone(), module.norm.running_var.clone())
    assert module.recalibrate(iter([])) == 0  # nothing seen: statistics kept
    assert torch.equal(module.norm.running_mean, before[0]) and torch.equal(module.norm.running_var, before[1])


def test_residuals_are_squared_differences():
    """E_k = [phi_k - G_k(phi_k)]^2 (Sec. 3.3): a difference of 2 gives 4, not 2."""
    features = [torch.full((1, 2, 4, 4), 3.0)]
    reconstructions = [torch.ones(1, 2, 4, 4)]
    residuals = reconstruction_residuals(features, reconstructions)
    assert torch.equal(residuals, torch.full((1, 2, 4, 4), 4.0))


def test_coarse_residuals_are_upsampled_bilinearly():
    """A coarser layer's residual is resized to the finest resolution with bilinear interpolation."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    fine_f, fine_g = torch.rand(2, 1, 2, 8, 8, generator=generator)
    coarse_f, coarse_g = torch.rand(2, 1, 3, 4, 4, generator=generator)
    residuals = reconstruction_residuals([fine_f, coarse_f], [fine_g, coarse_g])
    expected = F.interpolate((coarse_f - coarse_g) ** 2, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(residuals[:, :2], (fine_f - fine_g) ** 2)
    assert torch.allclose(residuals[:, 2:], expected, atol=1e-6)


@pytest.mark.parametrize("total", [5, 7, 10, 24, 1536])
@pytest.mark.parametrize("ratio", [0.05, 0.3, 1 / 3, 0.5, 1.0])
def test_max_avg_count_is_even_and_at_least_p_times_the_channels(total, ratio):
    r = retained_count(total, ratio, "max_avg")
    assert r % 2 == 0 and r >= 2
    assert r >= round(ratio * total)  # rounded up to the next even count, never below P


@pytest.mark.parametrize("total", [5, 7])
def test_module_output_matches_the_retained_count_for_odd_totals(total):
    module = ResidualSelection(total, ratio=1.0, mode="max_avg")
    out = module(torch.rand(2, total, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert out.shape[1] == module.retained


def _residuals():
    generator = torch.Generator().manual_seed(0)
    residuals = 0.01 * torch.rand(2, 2, 8, 8, generator=generator)
    residuals[:, 0] += 10.0  # the raw maximum, barely above its own batch mean
    residuals[:, 1, 3, 3] = 1.0  # a lone peak far above its batch mean
    return residuals


def test_eval_mode_ranks_on_running_statistics():
    residuals = _residuals()
    module = ResidualSelection(2, ratio=0.5, mode="max").eval()
    module.norm.running_mean.copy_(torch.tensor([9.0, 0.0]))
    module.norm.running_var.copy_(torch.tensor([1.0, 1.0]))
    # standardised with the running statistics: channel 0 max ~1.01, channel 1 max 1.0 -> channel 0
    # (with the batch's own statistics channel 1 would win; see test_rrs)
    assert torch.equal(module(residuals), residuals[:, [0]])
    module.norm.running_mean.copy_(torch.tensor([10.0, 0.0]))
    assert torch.equal(module(residuals), residuals[:, [1]])


def test_eval_mode_selection_of_an_image_does_not_depend_on_its_batch():
    residuals = _residuals()
    other = torch.zeros(1, 2, 8, 8)
    other[:, 1] = 50.0  # an image that would shift channel 1's batch statistics
    module = ResidualSelection(2, ratio=0.5, mode="max").eval()
    alone = module(residuals[:1])
    together = module(torch.cat([residuals[:1], other]))[:1]
    assert torch.equal(alone, together)
