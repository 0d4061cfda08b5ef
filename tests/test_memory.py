"""Nearest-neighbour memory branch (ours, after PatchCore): the coreset, the distances, the local
aggregation, the three-map fusion, and what a fit with it calibrates (test_predict_cli and the
ONNX tests check that such a run predicts and exports)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realnet.config import load_config, map_kind
from realnet.engine.evaluate import load_run
from realnet.errors import RealnetError
from realnet.model.density import FeatureDensity
from realnet.model.fusion import MapFusion
from realnet.model.density import local_embedding
from realnet.model.memory import FeatureMemory, greedy_coreset, squared_distances


def brute_force_greedy(points: np.ndarray, size: int, first: int) -> list[int]:
    chosen, nearest = [first], np.full(len(points), np.inf)
    for _ in range(size - 1):
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(nearest.argmax()))
    return chosen


def test_greedy_coreset_without_projection_is_the_k_centre_greedy_selection():
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    chosen = greedy_coreset(points, 12, projection_dim=None, seed=3)
    assert chosen.tolist() == brute_force_greedy(points.double().numpy(), 12, int(chosen[0]))
    assert torch.equal(chosen, greedy_coreset(points, 12, projection_dim=None, seed=3))


def test_greedy_coreset_takes_one_point_from_each_separated_cluster_also_when_projected():
    generator = torch.Generator().manual_seed(1)
    centres = 50 * torch.randn(6, 64, generator=generator)
    points = (centres.repeat_interleave(40, 0) + torch.randn(240, 64, generator=generator))
    chosen = greedy_coreset(points, 6, projection_dim=16, seed=0)
    assert sorted((chosen // 40).tolist()) == list(range(6))
    assert torch.equal(greedy_coreset(points, 300, projection_dim=16, seed=0), torch.arange(240))


def test_squared_distances_equal_cdist():
    generator = torch.Generator().manual_seed(2)
    points, centres = torch.randn(30, 7, generator=generator, dtype=torch.float64), torch.randn(
        11, 7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(squared_distances(points, centres), torch.cdist(points, centres) ** 2)


def test_local_embedding_averages_each_layer_over_its_neighbours_before_upsampling():
    fine, coarse = torch.randn(1, 2, 4, 4), torch.randn(1, 3, 2, 2)
    embedding = local_embedding([fine, coarse], neighbourhood=3)
    assert embedding.shape == (1, 5, 4, 4)
    torch.testing.assert_close(embedding[0, :2, 1, 2], fine[0, :, 0:3, 1:4].mean((-2, -1)))
    torch.testing.assert_close(embedding[0, :2, 0, 0], fine[0, :, 0:2, 0:2].mean((-2, -1)))  # border: no padding
    pooled_coarse = torch.full((3, 2, 2), 0.0) + coarse[0].mean((-2, -1), keepdim=True)  # 3x3 covers all of 2x2
    torch.testing.assert_close(embedding[0, 2:], F.interpolate(pooled_coarse[None], size=(4, 4), mode="bilinear")[0])
    torch.testing.assert_close(local_embedding([fine], neighbourhood=1), fine)


def test_memory_distance_is_to_the_nearest_bank_entry_and_zero_on_a_stored_patch():
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 4, 3, 3, generator=generator)]
    memory = FeatureMemory(4, neighbourhood=1)
    with pytest.raises(RuntimeError, match="bank is empty"):
        memory(features)
    patches = torch.randn(50, 4, generator=generator)
    memory.calibrate(patches, ratio=0.2, projection_dim=None, seed=0)
    assert memory.bank.shape == (10, 4)
    expected = torch.cdist(features[0].permute(0, 2, 3, 1).reshape(-1, 4), memory.bank).amin(1).reshape(2, 3, 3)
    torch.testing.assert_close(memory(features), expected, atol=1e-4, rtol=1e-4)
    stored = memory.bank[3].reshape(1, 4, 1, 1)
    assert float(memory([stored])) < 1e-3
    with pytest.raises(ValueError, match="do not have 4 channels"):
        memory.calibrate(torch.randn(5, 3), 0.5, None, 0)


def test_squared_distances_stay_exact_for_features_far_from_the_origin():
    """Regression: |x|^2 - 2x.c + |c|^2 in float32 cancelled catastrophically for features of large
    norm (a distance of 0.39 read 0 or 0.8 at norm 620); centring on the bank keeps it exact."""
    generator = torch.Generator().manual_seed(0)
    offset = 50 * torch.ones(152)  # norm about 620, as far as some backbone features lie
    centres = offset + torch.randn(64, 152, generator=generator)
    points = centres[:8] + 0.05 * torch.randn(8, 152, generator=generator)  # near a bank entry
    exact = torch.cdist(points.double(), centres.double()).square()
    torch.testing.assert_close(squared_distances(points, centres).double(), exact, atol=2e-3, rtol=1e-4)


def test_row_blocks_give_the_same_distances_as_one_product(monkeypatch):
    from realnet.model import memory as memory_module

    memory = FeatureMemory(4, neighbourhood=3)
    memory.calibrate(torch.randn(60, 4, generator=torch.Generator().manual_seed(4)), 0.5, None, 0)
    features = [torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(5))]
    whole = memory(features)
    monkeypatch.setattr(memory_module, "DISTANCE_BLOCK_ELEMENTS", 7 * len(memory.bank))  # blocks of 7 of 75 rows
    torch.testing.assert_close(memory(features), whole)


def test_a_bank_of_any_size_loads_into_a_fresh_memory_but_not_one_of_other_channels():
    memory = FeatureMemory(4)
    memory.calibrate(torch.randn(40, 4), ratio=0.25, projection_dim=None, seed=0)
    fresh = FeatureMemory(4)
    fresh.load_state_dict(memory.state_dict())
    assert torch.equal(fresh.bank, memory.bank)
    with pytest.raises(RuntimeError, match="size mismatch for bank"):
        FeatureMemory(3).load_state_dict(memory.state_dict())


def test_three_map_fusion_is_the_weighted_sum_of_the_scaled_maps():
    torch.manual_seed(0)
    memory = FeatureMemory(3, neighbourhood=1)
    memory.calibrate(torch.randn(20, 3), ratio=0.5, projection_dim=None, seed=0)
    fusion = MapFusion(FeatureDensity(3, (2, 2)), 0.25, memory, 0.5)
    fusion.calibrate_scales(0.1, 4.0, 2.0)
    probabilities, features = torch.rand(2, 8, 8), [torch.randn(2, 3, 2, 2)]
    density, distances = fusion.branch_maps(features, (8, 8))
    expected = 0.25 * probabilities / 0.1 + 0.25 * density / 4.0 + 0.5 * distances / 2.0
    torch.testing.assert_close(fusion(probabilities, features)[0], expected)
    fusion.set_weights(0.0, 1.0)
    torch.testing.assert_close(fusion(probabilities, features)[0], distances / 2.0)
    with pytest.raises(ValueError, match=r"needs 3 mean normal image scores \(discriminator, density, memory\)"):
        fusion.calibrate_scales(0.1, 4.0)
    with pytest.raises(ValueError, match="the memory map's mean normal image score is 0.0"):
        fusion.calibrate_scales(0.1, 4.0, 0.0)
    with pytest.raises(ValueError, match="sum at most 1"):
        fusion.set_weights(0.75, 0.5)
    with pytest.raises(ValueError, match="nothing to fuse"):
        MapFusion()


def test_a_memory_only_fusion_scales_the_discriminator_then_the_memory_and_refuses_a_density_weight():
    memory = FeatureMemory(3, neighbourhood=1)
    memory.calibrate(torch.randn(20, 3), ratio=0.5, projection_dim=None, seed=0)
    fusion = MapFusion(memory=memory, memory_weight=0.5)
    fusion.calibrate_scales(0.2, 3.0)
    probabilities, features = torch.rand(2, 4, 4), [torch.randn(2, 3, 2, 2)]
    (distances,) = fusion.branch_maps(features, (4, 4))
    torch.testing.assert_close(fusion(probabilities, features)[0], 0.5 * probabilities / 0.2 + 0.5 * distances / 3.0)
    with pytest.raises(ValueError, match="a density weight of 0.25 but no density map"):
        fusion.set_weights(0.25, 0.5)


@pytest.mark.parametrize("override, message", [
    ("memory.weight=1.5", "memory.weight must be in"),
    ("memory.coreset_ratio=0", "memory.coreset_ratio must be"),
    ("memory.projection_dim=0", "memory.projection_dim must be"),
    ("memory.neighbourhood=2", "memory.neighbourhood must be an odd"),
])
def test_bad_memory_settings_are_one_clear_error(override, message):
    with pytest.raises(RealnetError, match=message):
        load_config("tiny", overrides=[override])


def test_fused_weights_may_not_exceed_one_and_the_memory_needs_held_out_images():
    with pytest.raises(RealnetError, match="density.weight \\+ memory.weight must be at most 1"):
        load_config("tiny", overrides=["density.weight=0.6", "memory.weight=0.6"])
    with pytest.raises(RealnetError, match="memory.weight > 0 needs train.holdout_fraction > 0"):
        load_config("tiny", overrides=["memory.weight=0.5", "train.holdout_fraction=0"])


def test_a_memory_fit_that_would_hold_out_no_image_is_refused_before_training(tmp_path):
    """Regression: the guard read only the fraction, so 0.1 of 4 images held out none and the
    memory scale came from the fit images, where the memory map reads about 0."""
    from dataset_fixtures import make_mvtec_tree
    from realnet.engine.fit import FitRequest, fit

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4, size=(64, 64))
    config = load_config("tiny", overrides=["memory.weight=0.5", "train.holdout_fraction=0.1", "train.steps=2"])
    request = FitRequest(config=config, data_root=data, category="widget", out=tmp_path / "run", device="cpu",
                         progress=False)
    with pytest.raises(RealnetError, match=r"memory.weight > 0 needs held-out images: train.holdout_fraction 0.1 "
                                           r"holds out none of the 4 normal training images"):
        fit(request)
    assert not (tmp_path / "run").exists()


def test_fit_builds_the_bank_from_the_fit_images_and_the_scales_from_the_held_out_ones(memory_run):
    from realnet.engine.runtime import to_tensor
    from realnet.model.discriminator import image_score

    _, run_dir, fit_images, holdout_images = memory_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    config = meta["config"]
    assert map_kind(config) == "fused"
    fusion = model.fusion
    patches = fusion.memory.embed(model.backbone(to_tensor(fit_images, torch.device("cpu"))))
    patches = patches.permute(0, 2, 3, 1).flatten(0, 2)
    assert len(fusion.memory.bank) == round(config["memory"]["coreset_ratio"] * len(patches))
    # every bank entry is one of the fit images' patches (features of norm ~30, batched differently)
    exact = torch.cdist(fusion.memory.bank, patches, compute_mode="donot_use_mm_for_euclid_dist")
    assert float(exact.amin(1).max()) < 1e-3
    features = model.backbone(to_tensor(holdout_images, torch.device("cpu")))
    probabilities = model.probability_maps(model.selector(features))
    density, distances = fusion.branch_maps(features, tuple(probabilities.shape[-2:]))
    expected_scales = torch.stack([image_score(m, model.score_kernel).mean() for m in (probabilities, density, distances)])
    torch.testing.assert_close(fusion.scales, expected_scales, atol=1e-5, rtol=1e-4)
    maps, _ = model.predict(to_tensor(holdout_images, torch.device("cpu")))
    expected = sum(w * m / b for w, m, b in zip((0.5, 0.25, 0.25), (probabilities, density, distances), expected_scales))
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=1e-4)


def test_the_calibrated_bank_is_the_greedy_coreset_of_the_patches():
    """PatchCore: the bank is the greedy k-centre coreset of the normal patches, not any subset."""
    patches = torch.randn(80, 6, generator=torch.Generator().manual_seed(6))
    memory = FeatureMemory(6, neighbourhood=1)
    memory.calibrate(patches, ratio=0.1, projection_dim=4, seed=2)
    chosen = greedy_coreset(patches, 8, projection_dim=4, seed=2)
    assert torch.equal(memory.bank, patches[chosen])


def test_greedy_coreset_separates_clusters_far_from_the_origin():
    """Regression: the coreset's float32 distances cancelled for features of large norm, so the
    farthest-point choice among nearby clusters was noise."""
    generator = torch.Generator().manual_seed(3)
    corners = 2.0 * torch.eye(8, 152)[:4]  # four clusters 2.8 apart
    points = 1000 + torch.cat([corner + 0.01 * torch.randn(20, 152, generator=generator) for corner in corners])
    chosen = greedy_coreset(points, 4, projection_dim=None, seed=0)
    assert sorted((chosen // 20).tolist()) == [0, 1, 2, 3]
