"""An infinite loss is a divergence too, not only a NaN one."""

from __future__ import annotations

import pytest

from dataset_fixtures import make_mvtec_tree
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from test_sdas_train import request
from realnet.diffusion import gaussian
from realnet.diffusion.train import TRAIN_LOG, train
from realnet.errors import RealnetError


def test_an_infinite_loss_stops_the_training_like_a_nan_one(tmp_path, monkeypatch):
    data = make_mvtec_tree(tmp_path / "data", category="tile", n_train=6, gray=True, image_ext=".jpg")
    classes = [c for c in vars(gaussian).values() if isinstance(c, type) and "hybrid_loss" in vars(c)]
    assert classes
    for cls in classes:
        original = cls.hybrid_loss

        def infinite(self, *args, _original=original, **kwargs):
            terms = _original(self, *args, **kwargs)
            terms["loss"] = terms["loss"] + float("inf")  # finite gradients, an infinite loss
            return terms

        monkeypatch.setattr(cls, "hybrid_loss", infinite)
    out = tmp_path / "model"
    with pytest.raises(RealnetError, match=r"training diverged: the loss is inf at step 1;"):
        train(request(data, out, steps=4, save_every=2, log_every=1))
    assert not (out / TRAIN_LOG).exists() or "Infinity" not in (out / TRAIN_LOG).read_text()


def test_a_model_with_infinite_weights_is_refused_by_name(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from realnet.diffusion.train import EMA_WEIGHTS, load_sdas_model
    from realnet.errors import BadFileError

    data = make_mvtec_tree(tmp_path / "data", category="tile", n_train=6, gray=True, image_ext=".jpg")
    out = tmp_path / "model"
    train(request(data, out, steps=1))
    weights = load_file(out / EMA_WEIGHTS)
    first = sorted(name for name, t in weights.items() if t.is_floating_point())[0]
    weights[first] = weights[first].clone()
    weights[first].view(-1)[0] = float("inf")  # one overflowed value, no NaN
    save_file(weights, out / EMA_WEIGHTS)
    with pytest.raises(BadFileError, match=rf"1 tensors hold NaN or infinite values \('{first}' first\)"):
        load_sdas_model(out)
