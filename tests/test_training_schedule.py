"""The optimiser: the learning-rate schedule is a pure function of the step (so --resume needs no
state), and Adam is fused yet steps like the per-parameter loop."""

import math

import pytest

from realnet.engine.fit import learning_rate_at


def test_constant_schedule_is_the_papers_fixed_rate():
    assert {learning_rate_at(step, 100, 1e-4, "constant") for step in range(100)} == {1e-4}


def test_cosine_schedule_decays_from_base_to_zero():
    rates = [learning_rate_at(step, 100, 1e-3, "cosine") for step in range(101)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[50] == pytest.approx(5e-4)
    assert rates[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[25] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="linear"):
        learning_rate_at(0, 10, 1e-3, "linear")


def test_fit_optimizer_is_fused_adam_on_cpu_and_steps_like_the_loop_version():
    import torch

    from realnet.engine.runtime import adam

    weights = [torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4)) for _ in range(2)]
    reference = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    fused = adam(weights, 1e-2, torch.device("cpu"))
    loop = torch.optim.Adam(reference, lr=1e-2, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        for params, optimizer in ((weights, fused), (reference, loop)):
            optimizer.zero_grad()
            sum((p.square() * (i + 1)).sum() for i, p in enumerate(params)).backward()
            optimizer.step()
    for got, want in zip(weights, reference):
        torch.testing.assert_close(got, want)


def test_random_streams_of_one_seed_never_coincide():
    """Regression: the draws were seeded by entropy lists, where a trailing 0 does not count and
    the streams' keys overlapped: the held-out split was step 7's first sample, epoch 3's order was
    step 11's slot 3, and AFS batch b's image choice was its slot-0 sample."""
    from realnet.engine.runtime import Stream, stream_rng

    def first(rng):
        return tuple(rng.integers(0, 2**62, 4))

    draws = {
        "split": first(stream_rng(100, Stream.HOLDOUT_SPLIT)),
        "step 7 slot 0": first(stream_rng(100, Stream.TRAINING_SAMPLE, 7, 0)),
        "step 7 slot 1": first(stream_rng(100, Stream.TRAINING_SAMPLE, 7, 1)),
        "step 11 slot 3": first(stream_rng(100, Stream.TRAINING_SAMPLE, 11, 3)),
        "epoch 3": first(stream_rng(100, Stream.EPOCH_ORDER, 3)),
        "epoch 0": first(stream_rng(100, Stream.EPOCH_ORDER, 0)),
        "AFS images 2": first(stream_rng(100, Stream.AFS_IMAGES, 2)),
        "AFS batch 2 slot 0": first(stream_rng(100, Stream.AFS_SAMPLE, 2, 0)),
        "painted 0": first(stream_rng(100, Stream.PAINTED_DEFECT, 0)),
        "painted 0, seed 101": first(stream_rng(101, Stream.PAINTED_DEFECT, 0)),
    }
    assert len(set(draws.values())) == len(draws)
    assert first(stream_rng(100, Stream.TRAINING_SAMPLE, 7, 0)) == draws["step 7 slot 0"]


def test_each_epoch_visits_every_image_once_in_a_new_order():
    import numpy as np

    from realnet.engine.runtime import batch_indices

    epochs = [np.concatenate([batch_indices(step, 12, 4, seed=100) for step in range(3 * e, 3 * e + 3)])
              for e in range(3)]
    assert all(sorted(order.tolist()) == list(range(12)) for order in epochs)
    assert len({tuple(order.tolist()) for order in epochs}) == 3


def test_test_set_selection_keeps_the_step_with_the_best_test_scores(monkeypatch):
    """The authors' protocol (--select-on-test) keeps the best image AUROC (pixel AUROC breaks
    ties, an exact tie keeps the earlier step) and restores exactly that step's weights."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from realnet.engine import evaluate
    from realnet.engine import fit as fit_module

    test_auroc = {2: (0.6, 0.9), 4: (0.9, 0.5), 6: (0.9, 0.4), 8: (0.7, 0.99), 10: (0.9, 0.5)}  # 10 ties 4
    current = {}
    monkeypatch.setattr(fit_module, "score_images", lambda *args: (np.zeros(1), np.zeros(1)))
    monkeypatch.setattr(evaluate, "compute_metrics", lambda *args, **kwargs: dict(
        zip(("image_auroc", "pixel_auroc"), test_auroc[current["step"]])))
    selector = object.__new__(fit_module.TestSetSelector)
    selector.split, selector.device, selector.batch_size = SimpleNamespace(images=None), torch.device("cpu"), 1
    selector.best_key, selector.best_step, selector.best_metrics, selector.best_state = None, 0, {}, None
    model = torch.nn.Linear(1, 1, bias=False)
    for step in test_auroc:
        current["step"] = step
        model.weight.data.fill_(step)
        selector.consider(model, step)
    assert selector.best_step == 4 and selector.best_metrics == {"image_auroc": 0.9, "pixel_auroc": 0.5}
    selector.restore_best(model)
    assert model.weight.item() == 4
