"""`realnet fit` refuses settings the run would not read (a texture folder of a source it does not
draw, epochs under a step budget, weights summing past a float), a finished run is returned by
--resume only for the training images and backbone it was trained on, and a resume that changes
the feature cache says the weights will round differently (regressions from an audit)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from dataset_fixtures import make_mvtec_tree, normal_image, save
from realnet.cli.main import main
from realnet.config import RealNetConfig


@pytest.fixture
def data(tmp_path):
    return make_mvtec_tree(tmp_path / "data", n_train=8, n_test_good=1, defects={"scratch": 1}, size=(64, 64))


def fit(data, out, *extra) -> int:
    return main(["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--out", str(out), *extra])


@pytest.mark.parametrize("extra, message", [
    (["--sia", "banks"], "--sia is read by the sia source only, which this run does not draw (sources: cutpaste)"),
    (["--dtd", "textures"], "--dtd is read by the dtd source only"),
    (["--set", "synthesis.sia_root=banks"], "synthesis.sia_root is read by the sia source only"),
    (["--set", "train.epochs=1"], "train.epochs=1 has no effect while train.steps=6 sets the budget; add --set "
                                  "train.steps=null"),
    (["--source", "cutpaste:1e308", "nsa:1e308"], "synthesis.sources: the weights sum to more than a float holds"),
])
def test_settings_the_run_would_not_read_are_refused(data, tmp_path, capsys, extra, message):
    """Regressions: --sia/--dtd without their source, and --set train.epochs under the preset's
    steps, were recorded in model.json but did nothing; weights summing to inf were a traceback."""
    (tmp_path / "banks").mkdir()
    (tmp_path / "textures").mkdir()
    assert fit(data, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("realnet: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_epochs_train_when_the_step_budget_is_cleared(data, tmp_path, capsys):
    assert fit(data, tmp_path / "run", "--set", "train.steps=null", "--set", "train.epochs=2") == 0
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["config"]["train"]["epochs"] == 2 and meta["fit"]["steps"] == 2  # 6 fit images of batch 4: 1 a epoch
    capsys.readouterr()


def test_a_finished_run_is_returned_only_for_its_training_images_and_backbone(data, tmp_path, capsys, monkeypatch):
    """Regression: after training images were added, --resume on the finished run returned the old
    model (exit 0) although README promised it only when the data match."""
    out = tmp_path / "run"
    assert fit(data, out, "--set", "train.steps=2") == 0
    assert fit(data, out, "--set", "train.steps=2", "--resume") == 0  # the same data: the run as it is
    save(data / "widget" / "train" / "good" / "new.png", normal_image(np.random.default_rng(9), (64, 64)))
    capsys.readouterr()
    assert fit(data, out, "--set", "train.steps=2", "--resume") == 2
    assert "the finished run was trained on other training images (8 then, 9 now)" in capsys.readouterr().err
    (data / "widget" / "train" / "good" / "new.png").unlink()

    import realnet.engine.fit as fit_module

    real = fit_module.build_backbone
    monkeypatch.setattr(fit_module, "build_backbone", lambda config: SimpleNamespace(identity={
        **real(config).identity, "sha256": "another"}))
    assert fit(data, out, "--set", "train.steps=2", "--resume") == 2
    assert "the finished run was trained with other backbone weights" in capsys.readouterr().err


def test_a_resume_that_changes_the_feature_cache_says_the_weights_will_round_differently(capsys):
    from realnet.engine.fit import warn_of_rounding_changes

    config = RealNetConfig()
    request = SimpleNamespace(config=config)
    warn_of_rounding_changes(request, config.to_dict())
    assert capsys.readouterr().err == ""
    config.train.feature_cache_gb = 0.0
    warn_of_rounding_changes(request, RealNetConfig().to_dict())
    assert "train.feature_cache_gb changed (4 -> 0)" in capsys.readouterr().err
