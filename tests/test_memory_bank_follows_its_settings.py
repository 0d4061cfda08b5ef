"""The memory bank `fit` calibrates follows memory.projection_dim and train.seed, and keeps the
nearest whole number of memory.coreset_ratio x patches. Mutation audit: calibrate_fusion passing
a fixed seed 0 or no projection to the coreset, and FeatureMemory.calibrate truncating
ratio x N instead of rounding it, passed every test before (the tiny preset's seed is 0 and its
64 channels lie below the default 128-dimensional projection)."""

from __future__ import annotations

import numpy as np
import torch

from realnet.config import load_config
from realnet.engine.build import build_model
from realnet.engine.fit import calibrate_fusion
from realnet.engine.runtime import to_tensor
from realnet.model.memory import FeatureMemory, greedy_coreset


def test_the_fitted_bank_is_the_coreset_drawn_with_the_configured_seed_and_projection(random_lite0):
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    fit_images, scale_images = images[:3], images[3:]
    banks = {}
    for seed, projection in ((7, 8), (0, 8), (7, None)):
        config = load_config("tiny", overrides=["backbone.weights=random", "memory.weight=0.5",
                                                "memory.coreset_ratio=0.05", f"memory.projection_dim={projection or 'null'}",
                                                f"train.seed={seed}"])
        torch.manual_seed(0)
        model = build_model(config, random_lite0).eval()
        calibrate_fusion(model, fit_images, scale_images, config, torch.device("cpu"))
        memory = model.fusion.memory
        with torch.no_grad():
            patches = memory.embed(random_lite0(to_tensor(fit_images))).permute(0, 2, 3, 1).flatten(0, 2)
        size = round(0.05 * len(patches))
        expected = patches[greedy_coreset(patches, size, projection, seed)]
        torch.testing.assert_close(memory.bank, expected, atol=1e-5, rtol=1e-5)
        banks[seed, projection] = memory.bank
    # the settings matter: another seed or no projection picks another coreset
    assert not torch.equal(banks[7, 8], banks[0, 8])
    assert not torch.equal(banks[7, 8], banks[7, None])


def test_the_bank_keeps_the_nearest_whole_number_of_patches():
    patches = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    for ratio, size in ((0.39, 4), (0.31, 3), (0.01, 1), (1.0, 10)):  # 3.9 -> 4, 3.1 -> 3, 0.1 -> at least 1
        memory = FeatureMemory(3, neighbourhood=1)
        memory.calibrate(patches, ratio=ratio, projection_dim=None, seed=0)
        assert len(memory.bank) == size, ratio
