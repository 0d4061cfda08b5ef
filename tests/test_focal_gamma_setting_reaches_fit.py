"""train.focal_gamma: its documented range [0, 10] (0 is the paper's cross-entropy) and a fit
trains with the configured gamma (train_step alone being told it is not enough: fit must pass it)."""

import pytest

from realnet.config import load_config
from realnet.errors import RealnetError


@pytest.mark.parametrize("gamma", [0.0, 10.0])
def test_focal_gammas_at_the_bounds_load(gamma):
    assert load_config("tiny", overrides=[f"train.focal_gamma={gamma}"]).train.focal_gamma == gamma


@pytest.mark.parametrize("gamma", [-0.5, 10.5])
def test_focal_gammas_outside_zero_ten_are_refused(gamma):
    with pytest.raises(RealnetError, match="train.focal_gamma must be in"):
        load_config("tiny", overrides=[f"train.focal_gamma={gamma}"])


class _FirstLoss(BaseException):
    pass


def test_fit_computes_its_loss_with_the_configured_focal_gamma(tmp_path, monkeypatch):
    from dataset_fixtures import make_mvtec_tree
    from realnet.engine import fit as fit_module

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4, n_test_good=2, size=(32, 32))
    seen = []

    def first_loss(output, normal_features, masks, focal_gamma=None):
        seen.append(focal_gamma)
        raise _FirstLoss  # the first training step's loss is all this test needs

    monkeypatch.setattr(fit_module, "realnet_loss", first_loss)
    config = load_config("tiny", overrides=["train.steps=2", "train.focal_gamma=2.0"])
    with pytest.raises(_FirstLoss):
        fit_module.fit(fit_module.FitRequest(config=config, data_root=data, category="widget", out=tmp_path / "run",
                                             device="cpu", progress=False))
    assert seen == [2.0]  # train_step defaults to None, the cross-entropy
