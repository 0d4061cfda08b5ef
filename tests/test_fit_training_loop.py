"""fit sets each step's learning rate from learning_rate_at(step): with the cosine schedule (ours)
step 0 trains at the base rate, and the rate would reach 0 only at step total_steps, one after the
last (so the last step still trains). After training, rrs.recalibration_batches recomputes the RRS
statistics on fresh batches drawn after the last training step (steps total_steps, ...), not on
batches it trained on."""

import math

import pytest

from realnet.config import load_config
from realnet.engine import fit as fit_module


class _TrainingDone(Exception):
    pass


def test_fit_trains_each_step_at_its_cosine_rate_then_recalibrates_on_unseen_batches(tmp_path, monkeypatch):
    from dataset_fixtures import make_mvtec_tree

    rates = []
    original = fit_module.train_step

    def recording_step(model, optimizer, *args, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return original(model, optimizer, *args, **kwargs)

    recalibration = []

    def stop(model, batches, training_features, first_step, n_batches, **kwargs):
        recalibration.append((first_step, n_batches))  # what follows (calibration, validation) is not under test
        raise _TrainingDone

    monkeypatch.setattr(fit_module, "train_step", recording_step)
    monkeypatch.setattr(fit_module, "recalibrate_batch_statistics", stop)
    data_root = tmp_path / "data"
    make_mvtec_tree(data_root, "widget", n_train=10, n_test_good=2, defects={"scratch": 2}, size=(64, 64))
    config = load_config("tiny", overrides=["train.steps=4", "train.lr_schedule=cosine", "rrs.recalibration_batches=2"])
    with pytest.raises(_TrainingDone):
        fit_module.fit(fit_module.FitRequest(config=config, data_root=data_root, category="widget",
                                             out=tmp_path / "run", device="cpu", progress=False))
    base = config.train.learning_rate
    assert rates == pytest.approx([base * 0.5 * (1 + math.cos(math.pi * step / 4)) for step in range(4)])
    assert rates[0] == pytest.approx(base) and rates[-1] > 0
    assert recalibration == [(4, 2)]
