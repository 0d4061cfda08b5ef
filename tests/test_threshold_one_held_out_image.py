"""With a single held-out normal training image the threshold still comes from it (the quantile of
one score is that score), not from the fit images the maps were trained on, which read low."""

import numpy as np
import pytest
import torch

from realnet.model.backbone import create_backbone
from realnet.config import load_config
from realnet.engine.build import build_model
from realnet.engine.fit import calibrate_fusion_and_threshold
from realnet.engine.runtime import to_tensor


@pytest.mark.parametrize("n_holdout", [1, 2])
def test_the_held_out_images_set_the_threshold_however_few(n_holdout):
    config = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(config, create_backbone("tf_efficientnet_lite0", weights="random", layers=[1, 2])).eval()
    rng = np.random.default_rng(0)
    fit_images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    holdout = rng.integers(0, 256, (n_holdout, 64, 64, 3), dtype=np.uint8)
    threshold, source = calibrate_fusion_and_threshold(model, fit_images, holdout, config, torch.device("cpu"))
    assert source.startswith("held-out normal training images")
    with torch.no_grad():
        _, scores = model.predict(to_tensor(holdout, torch.device("cpu")))
    expected = float(np.quantile(scores.numpy().astype(np.float64), config.train.threshold_quantile))
    assert threshold == pytest.approx(expected, abs=1e-6)
