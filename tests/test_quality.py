"""FID (Fréchet distance) and cluster-LPIPS against closed forms and hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group

from dataset_fixtures import normal_image, save
from realnet.cli.main import main
from realnet.metrics.fid import fid_from_features, frechet_distance, gaussian_statistics, pooled_features
from realnet.metrics.lpips import (
    cluster_lpips,
    lpips_embedding,
    lpips_weights_from_state,
    normalize_channels,
    squared_distances,
)


def closed_form(mu1, a, mu2, b) -> float:
    """Fréchet distance of N(mu1, Q diag(a) Q^T) and N(mu2, Q diag(b) Q^T), any rotation Q."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_frechet_distance_of_diagonal_gaussians(rng):
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed_form(mu1, a, mu2, b), rel=1e-9)


def test_frechet_distance_of_rotated_gaussians(rng):
    q = special_ortho_group.rvs(5, random_state=1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    value = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert value == pytest.approx(closed_form(mu1, a, mu2, b), rel=1e-7)
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu1, q @ np.diag(a) @ q.T) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_with_singular_covariances_is_finite(rng):
    few = rng.normal(size=(3, 8))  # 3 samples in 8 dimensions: rank-2 covariance
    value = fid_from_features(few, few + 1.0)
    assert np.isfinite(value) and value == pytest.approx(8.0, abs=1e-3)


def test_fid_of_samples_approaches_the_closed_form(rng):
    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 2.0])
    real = rng.normal(size=(40000, 3)) * np.sqrt(a)
    fake = rng.normal(size=(40000, 3)) * np.sqrt(b) + 1.0
    assert fid_from_features(real, fake) == pytest.approx(closed_form(np.zeros(3), a, np.ones(3), b), abs=0.05)
    with pytest.raises(ValueError):
        gaussian_statistics(np.zeros((1, 3)))


def direct_lpips(maps_a, maps_b, weights=None) -> torch.Tensor:
    total = 0.0
    for layer, (fa, fb) in enumerate(zip(maps_a, maps_b)):
        diff = (normalize_channels(fa) - normalize_channels(fb)).square()
        if weights is not None:
            diff = diff * weights[layer].reshape(1, -1, 1, 1)
        total = total + diff.sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("weighted", [False, True])
def test_lpips_embedding_distance_is_lpips(weighted):
    torch.manual_seed(0)
    maps = [torch.randn(4, 5, 6, 6), torch.randn(4, 7, 3, 3)]
    weights = [torch.rand(5), torch.rand(7)] if weighted else None
    embedded = lpips_embedding(maps, weights)
    expected = direct_lpips([m[:2] for m in maps], [m[2:] for m in maps], weights)
    torch.testing.assert_close(squared_distances(embedded[:2], embedded[2:]).diagonal().float(), expected, rtol=1e-5, atol=1e-6)


def test_official_lpips_weights_are_validated():
    state = {"lin0.model.1.weight": torch.rand(1, 5, 1, 1), "lin1.model.1.weight": torch.rand(1, 7, 1, 1)}
    assert [w.shape[0] for w in lpips_weights_from_state(state, [5, 7])] == [5, 7]
    with pytest.raises(ValueError, match="channels"):
        lpips_weights_from_state(state, [5, 8])
    with pytest.raises(ValueError, match="lin2"):
        lpips_weights_from_state(state, [5, 7, 9])
    with pytest.raises(ValueError, match="more linear layers"):
        lpips_weights_from_state(state, [5])
    with pytest.raises(ValueError, match="negative"):
        lpips_weights_from_state({**state, "lin1.model.1.weight": -torch.rand(1, 7, 1, 1)}, [5, 7])


def test_cluster_lpips_by_hand():
    """Centres 0, 10, 20. Fakes {0.1, -0.1, 0.3} -> mean pair distance (0.04 + 0.04 + 0.16) / 3;
    {9.5, 10.5} -> 1.0; {20.2} has no pair and is left out."""
    real = torch.tensor([[0.0], [10.0], [20.0]])
    fake = torch.tensor([[0.1], [9.5], [-0.1], [20.2], [10.5], [0.3]])
    result = cluster_lpips(real, fake)
    assert result["cluster_lpips"] == pytest.approx((0.08 + 1.0) / 2)
    assert result["clusters_used"] == 2 and result["clusters"] == 3
    with pytest.raises(ValueError, match="no cluster"):
        cluster_lpips(real, torch.tensor([[0.0], [10.0]]))


def test_quality_command(tmp_path, rng, capsys):
    for i in range(4):
        save(tmp_path / "real" / f"{i}.png", normal_image(rng, (40, 40)))
        save(tmp_path / "fake" / f"{i}.png", 255 - normal_image(rng, (40, 40), gray=True))
    code = main(["sdas", "quality", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                 "--weights", "random", "--size", "64", "--threads", "1"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0 and report["fid"] > 0 and report["cluster_lpips"] >= 0
    assert report["features"]["name"] == "tf_efficientnet_lite0" and report["lpips_weights"].startswith("uniform")
    assert (report["n_real"], report["n_fake"]) == (4, 4)
    # progress on stderr, as every long command shows it (10,000 synthetic images take minutes)
    assert "real images: 100%" in captured.err and "synthetic images: 100%" in captured.err


def test_quality_command_errors_are_one_line(tmp_path, rng, capsys):
    """Regressions: no cluster with two synthetic images (more real images than synthetic ones) and
    an --lpips-weights file that is not weights each ended in a traceback."""
    for i in range(4):
        save(tmp_path / "real" / f"{i}.png", normal_image(rng, (40, 40)))
    for i in range(2):  # copies of two real images: each is nearest its own, so no cluster gets two
        (tmp_path / "fake").mkdir(exist_ok=True)
        (tmp_path / "fake" / f"{i}.png").write_bytes((tmp_path / "real" / f"{i}.png").read_bytes())
    arguments = ["sdas", "quality", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                 "--weights", "random", "--size", "64", "--threads", "1"]
    assert main(arguments) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("realnet: error: cluster LPIPS: no cluster holds two synthetic images"), err
    (tmp_path / "page.pth").write_text("<html>not weights</html>")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    for bad in ("page.pth", "cut.safetensors"):
        assert main([*arguments, "--lpips-weights", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith(f"realnet: error: {tmp_path / bad}: not usable as LPIPS linear weights"), err
        assert "weights_only" not in err[-1]  # regression: PyTorch's advice to load a foreign file unsafely


def test_gaussian_statistics_use_the_unbiased_covariance():
    features = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mean, covariance = gaussian_statistics(features)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    centred = features - [2.0, 2.0]
    np.testing.assert_allclose(covariance, centred.T @ centred / (3 - 1))  # N - 1, as the published FID


def test_fid_of_two_tiny_one_dimensional_samples_by_hand():
    # real {0, 2}: mean 1, unbiased variance 2; fake {0, 4}: mean 2, unbiased variance 8.
    # d^2 = (1 - 2)^2 + (sqrt 2 - sqrt 8)^2 = 1 + 2 = 3 (a biased covariance would give 2).
    assert fid_from_features(np.array([[0.0], [2.0]]), np.array([[0.0], [4.0]])) == pytest.approx(3.0, rel=1e-9)


def test_pooled_features_average_the_deepest_map_over_its_positions():
    shallow = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    deep = torch.zeros(2, 2, 2, 2)
    deep[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean 3, max 6
    deep[1, 1] = torch.tensor([[-4.0, 0.0], [0.0, 0.0]])  # mean -1
    pooled = pooled_features([shallow, deep])
    torch.testing.assert_close(pooled, torch.tensor([[3.0, 0.0], [0.0, -1.0]]))


def test_channels_are_normalised_to_unit_length_at_every_position():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 3, 4) * 7.0
    norms = normalize_channels(features).square().sum(dim=1).sqrt()
    torch.testing.assert_close(norms, torch.ones(2, 3, 4))


def test_lpips_of_a_one_layer_example_by_hand():
    # Two positions, two channels. Position 0: (3, 4) vs (4, 3) -> unit (0.6, 0.8) vs (0.8, 0.6),
    # squared difference 0.08. Position 1: (5, 0) vs (0, 2) -> (1, 0) vs (0, 1), 2.
    # LPIPS = mean over positions = (0.08 + 2) / 2 = 1.04.
    x = torch.tensor([[3.0, 5.0], [4.0, 0.0]]).reshape(1, 2, 1, 2)
    y = torch.tensor([[4.0, 0.0], [3.0, 2.0]]).reshape(1, 2, 1, 2)
    embedded = lpips_embedding([torch.cat([x, y])])
    assert float(squared_distances(embedded[:1], embedded[1:])[0, 0]) == pytest.approx(1.04, rel=1e-5)


def test_squared_distances_are_complete_across_chunks():
    rng = np.random.default_rng(0)
    a, b = torch.from_numpy(rng.normal(size=(5, 3))), torch.from_numpy(rng.normal(size=(4, 3)))
    expected = ((a[:, None, :] - b[None, :, :]) ** 2).sum(dim=2)
    for chunk in (1, 2, 3, 256):
        torch.testing.assert_close(squared_distances(a, b, chunk=chunk), expected)
