import pytest
import torch
import torch.nn.functional as F

from realnet.model.afs import FeatureSelector, afs_loss, init_random_projection, random_subset, rank_channels


def planted_features(generator, channels=12, planted=(3, 7)):
    """Normal features, and anomalous ones where only the planted channels change inside M."""
    normal = torch.randn(8, channels, 16, 16, generator=generator)
    mask = torch.zeros(8, 64, 64)
    mask[:, 16:40, 8:30] = 1
    small = torch.nn.functional.interpolate(mask[:, None], size=(16, 16), mode="nearest")[:, 0]
    anomalous = normal + 0.05 * torch.randn(normal.shape, generator=generator)
    for c in planted:
        anomalous[:, c] += 3.0 * small
    return normal, anomalous, mask


def test_afs_ranks_planted_channels_first():
    generator = torch.Generator().manual_seed(0)
    normal, anomalous, mask = planted_features(generator)
    losses = afs_loss(anomalous, normal, mask)
    assert losses.shape == (12,)
    assert set(rank_channels(losses)[:2].tolist()) == {3, 7}


def test_afs_loss_matches_eq4_by_hand():
    normal = torch.zeros(1, 1, 2, 2)
    anomalous = torch.tensor([[[[2.0, 0.0], [1.0, 0.0]]]])
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # d = [[4, 0], [1, 0]] -> min-max with eps: [[4/(4+1e-4), 0], [1/(4+1e-4), 0]]
    f = torch.tensor([[4.0, 0.0], [1.0, 0.0]]) / (4 + 1e-4)
    expected = ((f - mask[0]) ** 2).mean()
    assert torch.allclose(afs_loss(anomalous, normal, mask), expected[None], atol=1e-7)


def test_nan_losses_rank_last():
    order = rank_channels(torch.tensor([0.3, float("nan"), 0.1, 0.2]))
    assert order.tolist() == [2, 3, 0, 1]


def test_selector_keeps_indexed_channels():
    features = [torch.arange(2 * 6 * 4 * 4, dtype=torch.float32).reshape(2, 6, 4, 4)]
    selector = FeatureSelector("afs", [6], [2])
    selector.set_indices(0, torch.tensor([4, 1]))
    (out,) = selector(features)
    assert torch.equal(out, features[0][:, [4, 1]])


def test_rdr_subsets_are_sorted_distinct_in_range_and_drawn_from_the_generator():
    """RDR: each subset is sorted, distinct and in range, and other seeds draw other subsets."""
    subsets = [random_subset(64, 8, torch.Generator().manual_seed(seed)).tolist() for seed in range(3)]
    assert all(s == sorted(set(s)) and len(s) == 8 and 0 <= s[0] and s[-1] < 64 for s in subsets)
    assert len({tuple(s) for s in subsets}) == 3


def test_rlpr_projects_with_frozen_gaussian_weights_scaled_by_the_channel_count():
    """RLPR: weights are the generator's N(0, 1) draws / sqrt(c), applied as a 1x1 convolution."""
    projector = FeatureSelector("rlpr", [6], [3])
    init_random_projection(projector, torch.Generator().manual_seed(0))
    weight = torch.randn(3, 6, 1, 1, generator=torch.Generator().manual_seed(0)) / 6**0.5
    assert torch.equal(projector.projections[0].weight, weight)
    features = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(projector([features])[0], F.conv2d(features, weight))
    assert not any(p.requires_grad for p in projector.parameters())


def test_selector_rejects_bad_counts():
    with pytest.raises(ValueError):
        FeatureSelector("afs", [4], [5])


def test_afs_normalisation_spans_the_whole_batch_not_each_image():
    """Notes (AFS, Eq. 4): F is a per-channel min-max over all B*H*W positions of the batch, so an
    image with a weaker difference stays below 1 after normalisation."""
    normal = torch.zeros(2, 1, 2, 2)
    anomalous = torch.zeros(2, 1, 2, 2)
    anomalous[0, 0, 0, 0] = 2.0  # d = 4
    anomalous[1, 0, 0, 0] = 1.0  # d = 1
    mask = torch.zeros(2, 2, 2)
    mask[:, 0, 0] = 1.0
    # batch max 4: normalised 4/(4+eps) and 1/(4+eps) at the masked pixel, 0 elsewhere; mean over 8
    expected = ((4 / (4 + 1e-4) - 1) ** 2 + (1 / (4 + 1e-4) - 1) ** 2) / 8
    assert expected == pytest.approx(0.0703137, abs=1e-6)
    assert afs_loss(anomalous, normal, mask).item() == pytest.approx(expected, rel=1e-5)


def test_afs_mask_is_resized_with_nearest_neighbour():
    """M is resized (nearest) to the feature size: a 4x4 mask with only [0, 0] set becomes a 2x2
    mask with [0, 0] = 1 exactly, not a blurred 0.25."""
    normal = torch.zeros(1, 1, 2, 2)
    anomalous = torch.zeros(1, 1, 2, 2)
    anomalous[0, 0, 0, 0] = 1.0
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    expected = (1 / (1 + 1e-4) - 1) ** 2 / 4  # about 2.5e-9
    assert afs_loss(anomalous, normal, mask).item() == pytest.approx(expected, abs=1e-9)


AFS_EPS = 1e-4  # notes: min-max with eps 1e-4


def test_afs_min_max_subtracts_the_batch_minimum():
    normal = torch.zeros(2, 1, 2, 2)
    anomalous = torch.tensor([[[[2.0, 1.0], [1.0, 1.0]]],   # d = [[4, 1], [1, 1]]: image minimum 1
                              [[[1.5, 1.5], [1.5, 1.5]]]])  # d = 2.25 everywhere: image minimum 2.25
    mask = torch.zeros(2, 2, 2)
    mask[0, 0, 0] = 1.0
    # batch min 1, max 4: F(d) = (d - 1) / (3 + eps)
    f0 = torch.tensor([[3.0, 0.0], [0.0, 0.0]]) / (3 + AFS_EPS)
    f1 = torch.full((2, 2), 1.25 / (3 + AFS_EPS))
    expected = (((f0 - mask[0]) ** 2).sum() + ((f1 - mask[1]) ** 2).sum()) / 8
    assert afs_loss(anomalous, normal, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_tied_losses_keep_channel_index_order():
    losses = torch.zeros(4096)
    losses[::3] = 1.0
    losses[5] = float("nan")
    ties_low = [i for i in range(4096) if i % 3 != 0 and i != 5]
    ties_high = list(range(0, 4096, 3))
    assert rank_channels(losses).tolist() == ties_low + ties_high + [5]


def test_rdr_subset_depends_only_on_the_generator():
    torch.manual_seed(1)
    first = random_subset(64, 8, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    torch.rand(100)
    second = random_subset(64, 8, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    expected = torch.sort(torch.randperm(64, generator=torch.Generator().manual_seed(5))[:8]).values
    assert torch.equal(first, expected)
