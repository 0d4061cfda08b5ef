"""--resume on a finished run refuses training images changed in place
(as many as before, other contents), not only a changed count."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dataset_fixtures import make_mvtec_tree, normal_image, save
import realnet.engine.fit as fit_module
from realnet.data.layouts import load_dataset
from realnet.errors import RealnetError


def test_a_training_image_replaced_in_place_is_refused(tmp_path, monkeypatch):
    data = make_mvtec_tree(tmp_path / "data", n_train=3, n_test_good=1, defects={"scratch": 1}, size=(32, 32))
    monkeypatch.setattr(fit_module, "build_backbone", lambda config: SimpleNamespace(identity={"sha256": "b"}))
    request = SimpleNamespace(data_root=data, category="widget", dataset="mvtec", folder_options={},
                              out=tmp_path / "run", config=None)
    meta = {"fit": {"training_image_sha256": fit_module.training_image_digests(load_dataset(data, "widget"))},
            "backbone": {"sha256": "b"}}
    fit_module.check_finished_run_inputs(request, meta)  # the same images: returned
    save(data / "widget" / "train" / "good" / "001.png", normal_image(np.random.default_rng(9), (32, 32)))
    with pytest.raises(RealnetError, match=r"trained on other training images \(as many, other contents\)"):
        fit_module.check_finished_run_inputs(request, meta)
