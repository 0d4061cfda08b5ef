"""Edges of the config validation, and the paper preset's remaining settings against the paper
and the notes. Mutation audit: every one of these bounds could be loosened by one (< to <=, > to
>=), bools accepted as numbers, and the paper preset could switch to RDR, grayscale matching,
bf16, RRS recalibration or another discriminator width without any test failing."""

from __future__ import annotations

import pytest
import yaml

from realnet.config import load_config
from realnet.errors import RealnetError


@pytest.mark.parametrize("overrides, needle", [
    (["rrs.ratio=0"], r"rrs.ratio \(P\) must be in \(0, 1\]"),
    (["rrs.ratio=1.01"], r"rrs.ratio \(P\) must be in \(0, 1\]"),
    (["train.batch_size=1"], "train.batch_size must be at least 2"),
    (["synthesis.normal_probability=1"], r"synthesis.normal_probability must be in \[0, 1\)"),  # no anomalies at all
    (["synthesis.normal_probability=-0.1"], r"synthesis.normal_probability must be in \[0, 1\)"),
    (["train.holdout_fraction=1"], r"train.holdout_fraction must be in \[0, 1\)"),  # nothing left to fit on
    (["train.threshold_quantile=0"], r"train.threshold_quantile must be in \(0, 1\]"),
    (["train.threshold_quantile=1.5"], r"train.threshold_quantile must be in \(0, 1\]"),
    # decay 1 would never move the average: the saved weights would be the initial ones
    (["rrs.recalibration_batches=2", "train.ema_decay=1"], r"train.ema_decay must be in \(0, 1\)"),
    (["rrs.recalibration_batches=2", "train.ema_decay=0"], r"train.ema_decay must be in \(0, 1\)"),
    (["train.ema_decay=0.99"], "train.ema_decay needs rrs.recalibration_batches > 0"),
    (["rrs.recalibration_batches=-1"], "rrs.recalibration_batches must be >= 0"),
    (["train.epochs=0"], "train.epochs must be >= 1"),
    (["reconstruction.num_res_blocks=0"], "reconstruction.num_res_blocks must be >= 1"),
    (["reconstruction.channel_mults=[]"], "reconstruction.channel_mults must be a non-empty list"),
    (["reconstruction.channel_mults=[1, 0]"], "reconstruction.channel_mults must be a non-empty list"),
    (["selection.channels=[0, 16]"], "selection.channels must be positive channel counts or null"),
    (["discriminator.residual_units=-1"], "discriminator.residual_units must be >= 0"),
    (["reconstruction.arch=D"], "reconstruction.arch must be A, B or C"),
    (["selection.method=pca"], "selection.method must be afs, rdr or rlpr"),
    # a bool is not a number: YAML's true would have become 1.0
    (["train.learning_rate=true"], "train.learning_rate must be a number, got True"),
    (["density.weight=true"], "density.weight must be a number, got True"),
    (["reconstruction.width_factor=false"], "reconstruction.width_factor must be a number, got False"),
])
def test_values_just_outside_each_range_are_refused_by_name(overrides, needle):
    with pytest.raises(RealnetError, match=needle):
        load_config("tiny", overrides=overrides)


@pytest.mark.parametrize("overrides", [
    ["rrs.ratio=1"], ["rrs.ratio=0.001"], ["train.batch_size=2"], ["synthesis.normal_probability=0"],
    ["synthesis.normal_probability=0.99"], ["train.holdout_fraction=0"], ["train.threshold_quantile=1"],
    ["rrs.recalibration_batches=2", "train.ema_decay=0.999"], ["train.epochs=1"],
    ["discriminator.residual_units=0"], ["train.learning_rate=1"],
])
def test_values_at_the_edge_of_each_range_are_accepted(overrides):
    settings = load_config("tiny", overrides=overrides).to_dict()
    for override in overrides:
        key, _, text = override.partition("=")
        section, name = key.split(".")
        assert settings[section][name] == yaml.safe_load(text), override


def test_paper_preset_holds_the_papers_remaining_settings():
    """Sec. 4.1, App. B and C.4 and the notes: AFS, U-Nets of width 0.5 m_k with multipliers
    (1, 2, 4), two residual blocks per level and self-attention; the [128, 32, 8, 4] discriminator
    with two residual units; fp32; the final weights; BatchNorm statistics as trained; the
    discriminator's probability map alone; texture blending without grayscale matching."""
    config = load_config("paper")
    assert config.backbone.layers == [1, 2, 3, 4] and config.backbone.weights == "auto"
    assert config.selection.method == "afs"
    rc = config.reconstruction
    assert (rc.arch, rc.width_factor, rc.channel_mults, rc.num_res_blocks, rc.attention) == ("A", 0.5, [1, 2, 4], 2, True)
    assert config.discriminator.hidden == [128, 32, 8, 4] and config.discriminator.residual_units == 2
    assert config.rrs.recalibration_batches == 0
    assert config.train.bf16 is False and config.train.ema_decay is None and config.train.steps is None
    assert config.train.map_normalization == "none"
    assert config.density.weight == 0 and config.memory.weight == 0
    assert config.synthesis.match_gray is False
