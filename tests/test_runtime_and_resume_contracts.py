"""Contracts of the runtime and resume helpers that the end-to-end resume tests do not pin down:
seeding every library, 'auto' device choice, which (seed, stream, step, slot) a training sample
draws from, which settings a --resume refuses to change, and the checkpoint cadence."""

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from realnet.config import load_config
from realnet.engine import runtime


def test_seed_everything_seeds_python_numpy_and_torch():
    runtime.seed_everything(123)
    drawn = (random.random(), float(np.random.random_sample()), float(torch.rand(1)))
    expected = (random.Random(123).random(), float(np.random.RandomState(123).random_sample()),
                float(torch.rand(1, generator=torch.Generator().manual_seed(123))))
    assert drawn == expected


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_each_training_sample_draws_from_its_own_step_and_slot():
    """Sample `slot` of step `step` gets the generator of SeedSequence(seed, spawn_key=(1, step, slot))
    (Stream.TRAINING_SAMPLE = 1): a fresh anomaly every step, and a resumed run draws what an
    uninterrupted one would."""
    from realnet.engine.fit import SyntheticBatches

    seed, batch_size, n_images, size = 5, 4, 8, 4
    drawn = {}

    def synthesizer(image, rng, foreground_mask=None, force_anomalous=False):
        return SimpleNamespace(image=image, mask=np.zeros(image.shape[:2], bool), label=0, delta=0.0,
                               noise_seed=None, first=int(rng.integers(2**62)))

    def recording(image, rng, **kwargs):
        sample = synthesizer(image, rng, **kwargs)
        drawn.setdefault("values", []).append(sample.first)
        return sample

    images = SimpleNamespace(fit=np.zeros((n_images, size, size, 3), np.uint8),
                             foreground=np.ones((n_images, size, size), bool))
    batches = SyntheticBatches(recording, images, batch_size, seed)
    steps = [0, 1, n_images // batch_size, 7]  # step n_images // batch_size: same position, next epoch
    for step in steps:
        batches.for_step(step)
    expected = [int(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, step, slot))).integers(2**62))
                for step in steps for slot in range(batch_size)]
    assert drawn["values"] == expected


@pytest.mark.parametrize("changed", [["train.lr_schedule=cosine"], ["train.ema_decay=0.9"],
                                     ["train.learning_rate=0.01"], ["train.seed=3"], ["train.batch_size=2"]])
def test_a_resume_refuses_a_changed_training_setting(changed):
    from realnet.config import setting_changes

    common = ["rrs.recalibration_batches=2"]  # train.ema_decay needs it
    before = load_config("tiny", overrides=common).to_dict()
    after = load_config("tiny", overrides=[*common, *changed]).to_dict()
    assert [name for name, _, _ in setting_changes(before, after)] == [changed[0].split("=")[0]]


def test_a_setting_a_run_recorded_before_it_existed_counts_as_its_default():
    """density.neighbourhood (default 1) was added after runs were saved without it: every such
    run's --resume and bench cell was refused as "density.neighbourhood=None (now 1)"."""
    from realnet.config import setting_changes

    now = load_config("cpu").to_dict()
    recorded = load_config("cpu").to_dict()
    del recorded["density"]["neighbourhood"]
    assert setting_changes(recorded, now) == []
    assert setting_changes(now, recorded) == []
    aggregated = load_config("cpu", overrides=["density.neighbourhood=3"]).to_dict()
    # the refusal names the value the run had, its default, not None
    assert setting_changes(recorded, aggregated) == [("density.neighbourhood", 1, 3)]


class _TrainingDone(BaseException):
    pass


@pytest.mark.slow  # one short tiny fit, stopped when training ends
def test_checkpoints_are_written_every_checkpoint_every_steps(tmp_path, monkeypatch):
    from dataset_fixtures import make_mvtec_tree
    from realnet.engine import checkpoint
    from realnet.engine import fit as fit_module

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4, n_test_good=2, size=(32, 32))
    steps = []
    monkeypatch.setattr(checkpoint, "save_resume_state", lambda out, state: steps.append(state["step"]))

    def stop(*args, **kwargs):
        raise _TrainingDone  # training is over; the calibration after it is not needed here

    monkeypatch.setattr(fit_module, "recalibrate_batch_statistics", stop)
    config = load_config("tiny", overrides=["train.steps=7", "train.checkpoint_every=3"])
    with pytest.raises(_TrainingDone):
        fit_module.fit(fit_module.FitRequest(config=config, data_root=data, category="widget", out=tmp_path / "run",
                                             device="cpu", progress=False))
    assert steps == [3, 6]  # after steps 3 and 6, none after the last (7)


@pytest.mark.parametrize("key, before, now", [("world_size", 2, 1), ("n_training_images", 10, 9),
                                              ("training_images_sha256", "a" * 64, "b" * 64),
                                              ("backbone_sha256", "a" * 64, "b" * 64)])
def test_a_resume_refuses_other_processes_images_or_backbone(tmp_path, key, before, now):
    """resume.pt's inputs: another number of processes splits each batch (and rounds) otherwise, other
    images or backbone weights train another model; each must be refused, naming the field."""
    from realnet.engine.fit import FitRequest, check_same_inputs
    from realnet.errors import RealnetError

    request = FitRequest(config=load_config("tiny"), data_root=tmp_path, category="widget", out=tmp_path / "run")
    recorded = {"root": str(tmp_path.resolve()), "category": "widget", key: before}
    check_same_inputs(request, recorded, {**recorded}, "the killed run was started on")  # the same: accepted
    with pytest.raises(RealnetError, match=key):
        check_same_inputs(request, recorded, {**recorded, key: now}, "the killed run was started on")


@pytest.mark.slow  # one short tiny fit, stopped when training ends
def test_only_rank_0_writes_the_resume_state(tmp_path, monkeypatch):
    """Under torchrun rank 1 trains its shard but never writes resume.pt (rank 0 owns the folder)."""
    from dataset_fixtures import make_mvtec_tree
    from realnet.engine import checkpoint, distributed
    from realnet.engine import fit as fit_module

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4, n_test_good=2, size=(32, 32))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "init_for_device", lambda name: distributed.DistributedContext(1, 2))
    for name in ("broadcast_state", "broadcast_buffers", "average_gradients", "barrier", "cleanup"):
        monkeypatch.setattr(distributed, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed, "all_ranks_agree", lambda value, context: True)
    monkeypatch.setattr(distributed, "average_scalars", lambda values, context: values)
    written = []
    monkeypatch.setattr(checkpoint, "save_resume_state", lambda out, state: written.append(state["step"]))

    def stop(*args, **kwargs):
        raise _TrainingDone  # every step (and checkpoint opportunity) is behind us

    monkeypatch.setattr(fit_module, "recalibrate_batch_statistics", stop)
    config = load_config("tiny", overrides=["train.steps=3", "train.checkpoint_every=1"])
    with pytest.raises(_TrainingDone):
        fit_module.fit(fit_module.FitRequest(config=config, data_root=data, category="widget", out=tmp_path / "run",
                                             device="cpu", progress=False))
    assert written == []



def test_fewer_images_than_the_batch_still_fill_every_batch():
    for step in range(3):
        batch = runtime.batch_indices(step, 3, 4, seed=0)
        assert len(batch) == 4 and set(batch.tolist()) == {0, 1, 2}
