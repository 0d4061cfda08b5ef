"""Eq. 5 inside fit: each training step reconstructs the synthetic samples' features towards the
features of their ORIGINAL normal images varphi(I) (never the other way round), and Eq. 6's
segmentation target is the batch's synthetic mask."""

import numpy as np
import pytest
import torch

from realnet.config import load_config
from realnet.engine import fit as fit_module
from realnet.engine.runtime import to_tensor


class _TrainingDone(Exception):
    pass


def test_each_step_targets_the_normal_images_features_and_the_synthetic_masks(tmp_path, monkeypatch):
    from dataset_fixtures import make_mvtec_tree

    made, seen = [], []
    for_step = fit_module.SyntheticBatches.for_step
    train_step = fit_module.train_step

    def recording_for_step(self, step, rank=0, world_size=1):
        batch = for_step(self, step, rank, world_size)
        made.append((self.images.fit, batch))
        return batch

    def recording_train_step(model, optimizer, normal_features, features, masks, *args):
        fit_images, batch = made[-1]
        expected = model.select_features(to_tensor(fit_images[batch.indices]))
        seen.append(([f.clone() for f in normal_features], [f.clone() for f in features], expected, batch,
                     masks.clone()))
        return train_step(model, optimizer, normal_features, features, masks, *args)

    def stop(*args, **kwargs):
        raise _TrainingDone

    monkeypatch.setattr(fit_module.SyntheticBatches, "for_step", recording_for_step)
    monkeypatch.setattr(fit_module, "train_step", recording_train_step)
    monkeypatch.setattr(fit_module, "recalibrate_batch_statistics", stop)
    data_root = tmp_path / "data"
    make_mvtec_tree(data_root, "widget", n_train=10, n_test_good=2, defects={"scratch": 2}, size=(64, 64))
    config = load_config("tiny", overrides=["train.steps=4"])
    with pytest.raises(_TrainingDone):
        fit_module.fit(fit_module.FitRequest(config=config, data_root=data_root, category="widget",
                                             out=tmp_path / "run", device="cpu", progress=False))
    assert len(seen) == 4
    anomalous_rows = 0
    for normal, features, expected, batch, masks in seen:
        for n, e in zip(normal, expected):
            torch.testing.assert_close(n, e, atol=1e-5, rtol=1e-5)
        assert torch.equal(masks.cpu(), torch.from_numpy(batch.masks))
        rows = np.flatnonzero(batch.labels == 1)
        anomalous_rows += rows.size
        for row in rows:  # the sample's own features differ from its normal image's
            assert any(not torch.allclose(f[row], n[row]) for f, n in zip(features, normal))
    assert anomalous_rows > 0
