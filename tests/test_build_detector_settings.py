"""build_model hands the selection, RRS and discriminator settings to the parts it builds, and the
loss of Eq. 6 trains the reconstruction networks through both terms. Mutation audit: build_model
ignoring selection.method (rdr / rlpr ran AFS), rrs.mode, rrs.ratio or discriminator.hidden, and
the discriminator's input detached from the reconstructions, passed every test before."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from realnet.config import load_config
from realnet.engine.build import build_model
from realnet.model.realnet import segmentation_loss

TINY_M = [8, 16]  # tiny preset's selection.channels


@pytest.mark.parametrize("method", ["afs", "rdr", "rlpr"])
def test_the_selector_uses_the_configured_method(random_lite0, method):
    model = build_model(load_config("tiny", overrides=[f"selection.method={method}"]), random_lite0)
    assert model.selector.method == method
    projections = [isinstance(p, nn.Conv2d) for p in model.selector.projections]
    assert projections == [method == "rlpr"] * 2


@pytest.mark.parametrize("mode, ratio, retained", [
    ("max_avg", 1 / 3, 8),  # P * sum(m_k) = 24 / 3 = 8, split 4 + 4
    ("max_avg", 0.5, 12),
    ("max", 0.25, 6),
    ("avg", 0.5, 12),
    ("all", 1 / 3, 24),  # no RRS: every residual channel
])
def test_rrs_takes_the_configured_mode_and_ratio(random_lite0, mode, ratio, retained):
    config = load_config("tiny", overrides=[f"rrs.mode={mode}", f"rrs.ratio={ratio}"])
    model = build_model(config, random_lite0)
    assert sum(TINY_M) == 24
    assert model.residual_selection.mode == mode
    assert model.residual_selection.retained == retained
    assert model.discriminator.head[0].in_channels == retained
    features = model.select_features(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert model(features).logits.shape == (2, 2, 64, 64)


def test_the_discriminator_has_the_configured_hidden_widths(random_lite0):
    config = load_config("tiny", overrides=["discriminator.hidden=[12, 6, 5, 3]"])
    model = build_model(config, random_lite0)
    convs = [m for part in (model.discriminator.head, model.discriminator.tail) for m in part
             if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [12, 6, 5, 3, 2]


def test_the_segmentation_loss_also_trains_the_reconstruction_networks(random_lite0):
    """Eq. 6 trains G and the discriminator on L = L_recon + L_seg together: the discriminator's
    input, the residuals [phi - G(phi)]^2, keeps G in the graph, so L_seg alone reaches G."""
    torch.manual_seed(0)
    model = build_model(load_config("tiny"), random_lite0)
    features = model.select_features(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    masks = torch.zeros(4, 64, 64, dtype=torch.long)
    masks[:2, 16:40, 8:32] = 1
    segmentation_loss(model(features).logits, masks).backward()
    for network in model.reconstruction.networks:
        grad = network.output[-1].weight.grad  # the zero-initialised output conv: G's only gradient at init
        assert grad is not None and grad.abs().sum() > 0
