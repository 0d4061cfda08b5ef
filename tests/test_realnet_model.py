"""The composed detector: paper-preset shapes (on the meta device, so 518M parameters cost
nothing), the loss of Eq. 6, and image-score pooling through the full model."""

import contextlib

import pytest
import torch

from realnet.config import load_config
from realnet.engine.build import build_model
from realnet.model.backbone import create_backbone
from realnet.model.realnet import realnet_loss
from realnet.model.reconstruction import count_parameters


def test_paper_preset_shapes_on_meta_device():
    config = load_config("paper")
    with torch.device("meta"):
        backbone = create_backbone("wide_resnet50_2", weights="random")
        model = build_model(config, backbone)
        images = torch.empty(2, 3, 256, 256)
        features = model.select_features(images)
        output = model(features)
    assert [tuple(f.shape) for f in features] == [(2, 256, 64, 64), (2, 512, 32, 32), (2, 512, 16, 16), (2, 256, 8, 8)]
    assert [r.shape for r in output.reconstructions] == [f.shape for f in features]
    assert tuple(output.logits.shape) == (2, 2, 256, 256)
    assert model.residual_selection.retained == 512  # P = 1/3 of 1536
    reconstruction = count_parameters(model.reconstruction)
    assert 500e6 < reconstruction < 560e6  # notes: about 518M for architecture A
    assert 5e6 < count_parameters(model.discriminator) < 7e6  # notes: about 6M


@pytest.mark.parametrize("overrides", [[], ["discriminator.residual_units=3"]], ids=["tiny", "three"])
def test_the_built_discriminator_has_the_configured_residual_units(overrides):
    """build_model hands discriminator.residual_units to the discriminator (tiny's 1 is not the default 2)."""
    config = load_config("tiny", overrides=overrides)
    model = build_model(config, create_backbone("tf_efficientnet_lite0", weights="random", layers=[1, 2]))
    assert len(model.discriminator.residual_units) == config.discriminator.residual_units


def test_loss_is_reconstruction_plus_segmentation():
    config = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(config, create_backbone("tf_efficientnet_lite0", weights="random", layers=[1, 2]))
    images = torch.rand(4, 3, 64, 64)
    features = model.select_features(images)
    masks = torch.zeros(4, 64, 64, dtype=torch.long)
    masks[:, 10:20, 10:20] = 1
    output = model(features)
    loss, parts = realnet_loss(output, [f * 0 for f in features], masks)
    expected_recon = sum(((r - 0) ** 2).mean() for r in output.reconstructions)
    expected_seg = torch.nn.functional.cross_entropy(output.logits, masks)
    assert torch.allclose(loss, expected_recon + expected_seg)
    assert abs(parts["recon"] - float(expected_recon.detach())) < 1e-6


def test_predict_score_is_max_of_mean_filtered_map():
    config = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(config, create_backbone("tf_efficientnet_lite0", weights="random", layers=[1, 2])).eval()
    maps, scores = model.predict(torch.rand(2, 3, 64, 64))
    k = config.train.score_kernel
    pooled = torch.nn.functional.avg_pool2d(maps[:, None], k, stride=1)
    assert torch.allclose(scores, pooled.flatten(1).amax(1))
    assert maps.shape == (2, 64, 64) and (maps >= 0).all() and (maps <= 1).all()


def test_train_step_reconstructs_the_synthetic_features_towards_the_normal_ones():
    """Eq. 5/6: G runs on varphi(A) and its loss targets varphi(I); the step returns that loss."""
    import torch.nn.functional as F
    from torch import nn

    from realnet.engine.fit import train_step
    from realnet.model.realnet import RealNetOutput, reconstruction_loss, segmentation_loss

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.d = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, features):
            return RealNetOutput([self.g(features[0])], F.interpolate(self.d(features[0]), size=(8, 8)))

    torch.manual_seed(0)
    model = Tiny()
    generator = torch.Generator().manual_seed(1)
    normal, anomalous = [torch.randn(3, 2, 4, 4, generator=generator)], [torch.randn(3, 2, 4, 4, generator=generator)]
    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    masks[1, 2:5, 2:5] = 1
    with torch.no_grad():
        output = model(anomalous)
        expected_recon = float(reconstruction_loss(output.reconstructions, normal))
        expected_seg = float(segmentation_loss(output.logits, masks))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = train_step(model, optimizer, normal, anomalous, masks, contextlib.nullcontext, lambda: None)
    assert parts["recon"] == pytest.approx(expected_recon, rel=1e-6)
    assert parts["seg"] == pytest.approx(expected_seg, rel=1e-6)
    assert parts["loss"] == pytest.approx(expected_recon + expected_seg, rel=1e-6)


@pytest.mark.parametrize("overrides, refused", [
    ([], False),
    (["train.image_size=32"], True),  # the stride-16 U-Net halves 2x2 to 1x1, 8 channels in 8 groups
    (["train.image_size=32", "reconstruction.width_factor=8"], False),  # 1x1, but 4+ channels per group
])
def test_a_u_net_that_would_normalise_single_values_at_its_bottom_is_refused(overrides, refused):
    """Regression: tiny at 32 px was accepted, trained (batches of two pass torch's check while
    every value at the bottom normalised to zero), then failed with a traceback scoring one image."""
    from realnet.config import load_config
    from realnet.engine.build import build_backbone, build_model
    from realnet.errors import RealnetError

    config = load_config("tiny", overrides=overrides)
    if refused:
        with pytest.raises(RealnetError, match=r"train.image_size=32 leaves the reconstruction U-Net of backbone.layers "
                                               r"2 a 1x1 map at its bottom"):
            build_model(config, build_backbone(config))
        return
    model = build_model(config, build_backbone(config)).eval()
    with torch.no_grad():
        maps, scores = model.predict(torch.rand(1, 3, config.train.image_size, config.train.image_size))
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("size, strides, arch, mults, ok", [
    (256, [8, 16], "A", [1, 2, 4], True),
    # regression: four U-Net levels halve three times, so a 4x4 map at stride 8 passed the check
    # and failed at the first training step, after AFS and the feature cache
    (32, [4, 8], "A", [1, 2, 4, 8], False),
    (64, [4, 8], "A", [1, 2, 4, 8], True),
    # regression: two levels halve once, so 96 px (6x6 at stride 16) works but was refused
    (96, [8, 16], "A", [1, 2], True),
    (96, [8, 16], "A", [1, 2, 4], False),
    # B and C reconstruct each group at its finest stride only
    (96, [8, 16], "B", [1, 2, 4], True),
])
def test_image_size_check_follows_the_u_nets_levels_and_groups(size, strides, arch, mults, ok):
    from realnet.engine.build import check_image_size
    from realnet.errors import RealnetError

    context = contextlib.nullcontext() if ok else pytest.raises(RealnetError, match=f"train.image_size={size}")
    with context:
        check_image_size(size, strides, arch, mults)


def test_the_focal_loss_is_cross_entropy_at_gamma_0_and_weighs_hard_pixels_above_easy_ones():
    """train.focal_gamma: -(1 - p_t)^gamma log p_t, by hand; gamma 0 is the paper's cross-entropy."""
    from realnet.model.realnet import segmentation_loss

    torch.manual_seed(0)
    logits, masks = torch.randn(2, 2, 4, 4), torch.rand(2, 4, 4) > 0.5
    torch.testing.assert_close(segmentation_loss(logits, masks, 0.0), segmentation_loss(logits, masks))
    p_true = torch.where(masks, logits.softmax(1)[:, 1], logits.softmax(1)[:, 0])
    torch.testing.assert_close(segmentation_loss(logits, masks, 2.0), (-(1 - p_true) ** 2 * p_true.log()).mean())
    easy, hard = torch.tensor([[[[4.0]], [[-4.0]]]]), torch.tensor([[[[0.2]], [[-0.2]]]])  # class 0 logits lead
    normal = torch.zeros(1, 1, 1, dtype=torch.bool)
    ratio_focal = segmentation_loss(hard, normal, 2.0) / segmentation_loss(easy, normal, 2.0)
    assert ratio_focal > 100 * segmentation_loss(hard, normal) / segmentation_loss(easy, normal)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_the_focal_loss_has_finite_gradients_where_the_discriminator_is_certain(gamma):
    """Where p_t rounds to 1, (1 - p_t)^gamma had an infinite derivative for gamma < 1 and the
    fit stopped as "diverged" (NaN) at train.focal_gamma=0.5."""
    from realnet.model.realnet import segmentation_loss

    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0], logits[:, 1] = 30.0, -30.0
    logits.requires_grad_(True)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True  # one pixel the discriminator gets wrong, so some gradient is not zero
    segmentation_loss(logits, masks, gamma).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_a_training_step_uses_the_configured_segmentation_loss(monkeypatch):
    from realnet.engine import fit
    from realnet.errors import RealnetError

    assert load_config("tiny", overrides=["train.focal_gamma=2"]).train.focal_gamma == 2
    with pytest.raises(RealnetError, match="train.focal_gamma must be in"):
        load_config("tiny", overrides=["train.focal_gamma=-1"])
    gammas = []
    weight = torch.nn.Parameter(torch.ones(1))
    monkeypatch.setattr(fit, "realnet_loss", lambda output, normal, masks, gamma: (
        gammas.append(gamma) or (weight * output).sum(), {}))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    fit.train_step(lambda features: features[0], optimizer, [], [torch.ones(1)], torch.zeros(1),
                   contextlib.nullcontext, lambda: None, 2.0)
    fit.train_step(lambda features: features[0], optimizer, [], [torch.ones(1)], torch.zeros(1),
                   contextlib.nullcontext, lambda: None)
    assert gammas == [2.0, None]
