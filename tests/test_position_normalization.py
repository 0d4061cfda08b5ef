"""Position normalisation of the anomaly map (ours): the math and its calibration during fit
(test_predict_cli checks that such a run predicts, draws and exports its maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realnet.config import load_config
from realnet.engine.evaluate import load_run
from realnet.errors import RealnetError
from realnet.model.discriminator import PositionNormalization, position_statistics


def test_identity_until_calibrated_then_standardises_per_position():
    torch.manual_seed(0)
    maps = torch.rand(3, 4, 5)
    norm = PositionNormalization((4, 5))
    assert torch.equal(norm(maps), maps)
    mean, std = torch.rand(4, 5), torch.rand(4, 5)
    norm.calibrate(mean, std)
    torch.testing.assert_close(norm(maps), (maps - mean) / (std + PositionNormalization.MIN_STD))
    with pytest.raises(ValueError, match="do not match the map size"):
        norm.calibrate(torch.zeros(5, 4), torch.ones(5, 4))


def test_position_statistics_over_uneven_batches_equal_numpy():
    rng = np.random.default_rng(0)
    maps = rng.random((7, 6, 5)).astype(np.float32)
    mean, std = position_statistics(torch.from_numpy(maps[i:i + 3]) for i in range(0, 7, 3))
    np.testing.assert_allclose(mean.numpy(), maps.mean(0), atol=1e-6)
    np.testing.assert_allclose(std.numpy(), maps.std(0), atol=1e-6)
    with pytest.raises(ValueError, match="at least one map"):
        position_statistics([])


def test_unknown_map_normalization_is_one_clear_error():
    with pytest.raises(RealnetError, match="train.map_normalization must be none or position"):
        load_config("tiny", overrides=["train.map_normalization=pixel"])


def test_fit_calibrates_on_the_fit_images_and_the_checkpoint_keeps_it(position_run):
    from realnet.engine.runtime import to_tensor

    _, run_dir, fit_images, _ = position_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    assert meta["config"]["train"]["map_normalization"] == "position"
    assert isinstance(model.map_normalization, PositionNormalization)
    probabilities = model.probability_maps(model.select_features(to_tensor(fit_images, torch.device("cpu"))))
    mean, std = position_statistics([probabilities])
    torch.testing.assert_close(model.map_normalization.offset, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.map_normalization.scale, 1 / (std + PositionNormalization.MIN_STD),
                               atol=1e-3, rtol=1e-4)
    maps, _ = model.predict(to_tensor(fit_images, torch.device("cpu")))
    # standardised against exactly these images: zero mean at every position
    assert maps.mean(0).abs().max() < 1e-3


def test_a_run_without_it_has_no_normalisation_state(tiny_run):
    model, meta = load_run(tiny_run[1], torch.device("cpu"))
    assert meta["config"]["train"]["map_normalization"] == "none"
    assert not any(k.startswith("map_normalization") for k in model.state_dict())
