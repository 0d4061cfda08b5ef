"""Fit options beyond the paper: bf16 autocast of the trainable part (used on CUDA and on CPUs with
native bf16 kernels, refused with one line and fp32 training elsewhere; model.json records which
precision trained) and the recalibration of the RRS BatchNorm statistics after training."""

import json

import pytest
import torch

from realnet.config import load_config
from realnet.engine import fit as fit_module
from realnet.engine.runtime import bf16_autocast_available


def test_bf16_is_available_on_cuda_and_on_cpus_with_native_kernels():
    assert bf16_autocast_available(torch.device("cuda"))
    assert bf16_autocast_available(torch.device("cpu")) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not bf16_autocast_available(torch.device("mps"))


def tiny_fit(tmp_path, name, *overrides):
    from dataset_fixtures import make_mvtec_tree

    data_root = tmp_path / "data"
    if not data_root.exists():
        make_mvtec_tree(data_root, "widget", n_train=10, n_test_good=2, defects={"scratch": 2}, size=(64, 64))
    config = load_config("tiny", overrides=["train.steps=4", *overrides])
    fit_module.fit(fit_module.FitRequest(config=config, data_root=data_root, category="widget",
                                         out=tmp_path / name, device="cpu", progress=False))
    return json.loads((tmp_path / name / "model.json").read_text())["fit"]


def test_rrs_recalibration_changes_only_the_rrs_statistics_and_is_repeatable(tmp_path):
    from safetensors.torch import load_file

    tiny_fit(tmp_path, "authors")
    tiny_fit(tmp_path, "recalibrated", "rrs.recalibration_batches=3")
    tiny_fit(tmp_path, "again", "rrs.recalibration_batches=3")
    authors, recalibrated, again = (load_file(str(tmp_path / name / "model.safetensors"))
                                    for name in ("authors", "recalibrated", "again"))
    statistics = {k for k in authors if k.startswith("residual_selection.norm.running_")}
    assert len(statistics) == 2
    for key in authors:
        if key in statistics:
            assert not torch.equal(authors[key], recalibrated[key]), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(authors[key], recalibrated[key]), key
        assert torch.equal(recalibrated[key], again[key]), key


@pytest.mark.parametrize("native", [True, False])
def test_fit_records_the_precision_it_trained_in(tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(fit_module, "bf16_autocast_available", lambda device: native)
    assert tiny_fit(tmp_path, "fp32")["precision"] == "fp32"
    assert tiny_fit(tmp_path, "bf16", "train.bf16=true")["precision"] == ("bf16 autocast" if native else "fp32")
    warned = "train.bf16 ignored" in capsys.readouterr().out
    assert warned is not native


def test_bf16_train_step_runs_the_trainable_part_in_bf16_and_keeps_fp32_weights():
    from realnet.engine.build import build_model
    from realnet.model.backbone import create_backbone

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16 kernels")
    torch.manual_seed(0)
    config = load_config("tiny")
    model = build_model(config, create_backbone(config.backbone.name, weights="random",
                                                layers=config.backbone.layers))
    features = [f.repeat(2, 1, 1, 1) for f in model.select_features(torch.rand(1, 3, 64, 64))]
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(features)
    assert output.logits.dtype == torch.bfloat16
    loss, _ = fit_module.realnet_loss(output, features, torch.zeros(2, 64, 64, dtype=torch.long))
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.dtype == torch.float32 for p in model.trainable_modules().parameters())
