from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from realnet.model.discriminator import Discriminator, anomaly_map, image_score
from realnet.model.reconstruction import count_parameters

TINY_HIDDEN = (8, 6, 4, 4)


def brute_force_score(amap: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max over every fully-inside kernel x kernel window of the window mean, by loops."""
    scores = []
    for image in amap:
        h, w = image.shape
        best = max(image[i:i + kernel, j:j + kernel].mean().item()
                   for i in range(h - kernel + 1) for j in range(w - kernel + 1))
        scores.append(best)
    return torch.tensor(scores, dtype=amap.dtype)


def test_output_shape_equals_output_size():
    torch.manual_seed(0)
    disc = Discriminator(6, hidden=TINY_HIDDEN, output_size=32)
    logits = disc(torch.randn(2, 6, 8, 8))
    assert logits.shape == (2, 2, 32, 32)
    assert disc(torch.randn(1, 6, 8, 8), output_size=(24, 40)).shape == (1, 2, 24, 40)


def test_output_size_is_required():
    disc = Discriminator(6, hidden=TINY_HIDDEN)
    with pytest.raises(ValueError, match="output_size"):
        disc(torch.randn(1, 6, 8, 8))
    with pytest.raises(ValueError, match="four positive hidden widths"):
        Discriminator(6, hidden=(8, 4, 2))


def test_layer_layout_follows_the_notes():
    disc = Discriminator(6, hidden=TINY_HIDDEN, num_residual_units=2)
    assert len(disc.residual_units) == 2
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    head_and_tail = [(c.in_channels, c.out_channels, c.kernel_size) for c in convs[4:]]
    assert head_and_tail == [(6, 8, (3, 3)), (8, 6, (3, 3)), (6, 4, (3, 3)), (4, 4, (3, 3)),
                             (4, 2, (3, 3))]
    # BatchNorm directly after the in -> hidden[0] conv
    assert isinstance(disc.head[1], nn.BatchNorm2d) and disc.head[1].num_features == 8


def test_gradients_flow_to_every_parameter_and_input():
    torch.manual_seed(0)
    disc = Discriminator(6, hidden=TINY_HIDDEN, output_size=16)
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 16, 16))
    nn.functional.cross_entropy(disc(x), target).backward()
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_paper_discriminator_has_about_six_million_parameters():
    with torch.device("meta"):
        disc = Discriminator(512, output_size=256)
        logits = disc(torch.empty(2, 512, 64, 64))
    assert logits.shape == (2, 2, 256, 256)
    count = count_parameters(disc)
    assert count == pytest.approx(6e6, rel=0.05)
    assert count == 5_876_630


def test_anomaly_map_is_probability_of_class_one():
    logits = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    amap = anomaly_map(logits)
    assert amap.shape == (3, 5, 7)
    assert torch.allclose(amap, torch.sigmoid(logits[:, 1] - logits[:, 0]), atol=1e-6)


@pytest.mark.parametrize("shape, kernel", [((2, 6, 7), 3), ((2, 19, 21), 16)])
def test_image_score_is_max_of_mean_filtered_map(shape, kernel):
    amap = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    amap[1, 2:5, 3:6] += 5.0  # one hot blob: its window must win for image 1
    expected = brute_force_score(amap, kernel)
    assert torch.allclose(image_score(amap, kernel=kernel), expected, atol=1e-6)


def test_image_score_default_window_is_16():
    amap = torch.zeros(1, 20, 20)
    amap[0, 0, 0] = 256.0  # only the top-left window (mean 1) contains it
    assert image_score(amap).item() == pytest.approx(1.0)
    assert image_score(amap, kernel=1).item() == pytest.approx(256.0)


def test_image_score_rejects_bad_maps():
    with pytest.raises(ValueError, match="smaller than the 16x16 window"):
        image_score(torch.rand(1, 15, 40))
    with pytest.raises(ValueError, match=r"\(B, H, W\) map"):
        image_score(torch.rand(1, 1, 32, 32))


def test_residual_unit_adds_its_input():
    """A residual unit whose body outputs zero passes ReLU(x) through."""
    from realnet.model.discriminator import ResidualUnit

    unit = ResidualUnit(4)
    nn.init.zeros_(unit.body[-1].weight)  # the last BatchNorm's scale: body(x) = 0
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(unit(x), torch.relu(x))


def test_tail_runs_at_twice_the_head_resolution_and_output_is_bilinear():
    """Notes: 3x3 convs ->8, bilinear x2, 3x3 convs 8->4->2, bilinear to the image size."""
    torch.manual_seed(0)
    disc = Discriminator(6, hidden=TINY_HIDDEN, output_size=40).eval()
    seen = {}
    disc.head.register_forward_hook(lambda module, args, out: seen.update(head=out))
    disc.tail.register_forward_hook(lambda module, args, out: seen.update(tail_in=args[0], tail=out))
    with torch.no_grad():
        logits = disc(torch.randn(2, 6, 8, 8))
    assert seen["head"].shape[-2:] == (8, 8) and seen["tail_in"].shape[-2:] == (16, 16)
    torch.testing.assert_close(seen["tail_in"], F.interpolate(seen["head"], scale_factor=2, mode="bilinear",
                                                              align_corners=False))
    torch.testing.assert_close(logits, F.interpolate(seen["tail"], size=(40, 40), mode="bilinear",
                                                     align_corners=False))


def test_the_last_layer_is_a_conv_and_the_logits_take_both_signs():
    torch.manual_seed(0)
    discriminator = Discriminator(6, hidden=(8, 8, 4, 4), num_residual_units=1, output_size=16).eval()
    last = list(discriminator.tail.children())[-1]
    assert isinstance(last, nn.Conv2d) and last.out_channels == 2
    with torch.no_grad():
        logits = discriminator(torch.randn(2, 6, 4, 4))
    assert logits.min() < 0 < logits.max()
