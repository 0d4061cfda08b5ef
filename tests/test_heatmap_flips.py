"""The flipped-heatmap screen of benchmarks/revalidate.py (`--heatmap-flips`): the pixel map
averages the discriminator's maps of mirrored copies, each mirrored back; the image score stays
the unmirrored map's, exactly as fitted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from realnet.model.density import FeatureDensity
from realnet.model.discriminator import image_score
from realnet.model.fusion import MapFusion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from revalidate import HEATMAP_FLIPS, FlippedHeatmapDetector  # noqa: E402

SIZE = 8
# a map that is not mirror-symmetric, so each flip's map differs from the unmirrored one
RAMP = torch.arange(SIZE, dtype=torch.float32)[None, :] + 3 * torch.arange(SIZE, dtype=torch.float32)[:, None]


class Detector(torch.nn.Module):
    """A fitted detector's parts: a backbone that passes the images through and a discriminator
    map that is the first channel times a ramp; the ramp makes the map depend on orientation."""

    def __init__(self, fusion: MapFusion | None = None):
        super().__init__()
        self.fusion, self.score_kernel = fusion, 4
        self.map_normalization = torch.nn.Identity()
        self.backbone_batches: list[int] = []

    def backbone(self, images):
        self.backbone_batches.append(images.shape[0])
        return [images]

    def selector(self, features):
        return features

    def probability_maps(self, features):
        return features[0][:, 0] * RAMP


def mirrored_mean(images: torch.Tensor, count: int) -> torch.Tensor:
    """The expected heatmap: the mean over the mirrorings of p(flip(x)), flipped back, by hand."""
    maps = [images[:, 0] * RAMP]
    if count >= 2:
        maps.append((images[:, 0].flip(-1) * RAMP).flip(-1))
    if count == 4:
        maps.append((images[:, 0].flip(-2) * RAMP).flip(-2))
        maps.append((images[:, 0].flip(-2, -1) * RAMP).flip(-2, -1))
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("count", [2, 4])
def test_the_heatmap_is_the_mean_of_the_mirrored_maps_and_the_score_the_unmirrored_maps(count):
    torch.manual_seed(0)
    images = torch.rand(3, 3, SIZE, SIZE)
    detector = Detector()
    maps, scores = FlippedHeatmapDetector(detector, count).predict(images)
    torch.testing.assert_close(maps, mirrored_mean(images, count))
    torch.testing.assert_close(scores, image_score(images[:, 0] * RAMP, 4))
    assert not torch.allclose(maps, images[:, 0] * RAMP)
    assert detector.backbone_batches == [3 * count]  # one backbone pass over all the copies


def test_with_a_fusion_the_flips_reach_the_pixel_map_only():
    torch.manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE)
    fusion = MapFusion(FeatureDensity(3, (SIZE, SIZE)), density_weight=0.5, image_density_weight=0.75)
    fusion.calibrate_scales(0.5, 2.0)
    maps, scores = FlippedHeatmapDetector(Detector(fusion), 4).predict(images)
    (distances,) = fusion.branch_maps([images], (SIZE, SIZE))  # the density of the unmirrored images
    torch.testing.assert_close(maps, 0.5 * mirrored_mean(images, 4) / 0.5 + 0.5 * distances / 2.0)
    torch.testing.assert_close(scores, image_score(0.25 * images[:, 0] * RAMP / 0.5 + 0.75 * distances / 2.0, 4))

    fusion.set_image_weight(None)  # the image score pools the pixel map's weights, on the unmirrored map
    maps, scores = FlippedHeatmapDetector(Detector(fusion), 2).predict(images)
    torch.testing.assert_close(scores, image_score(0.5 * images[:, 0] * RAMP / 0.5 + 0.5 * distances / 2.0, 4))
    torch.testing.assert_close(maps, 0.5 * mirrored_mean(images, 2) / 0.5 + 0.5 * distances / 2.0)


def test_one_flip_is_the_plain_map():
    images = torch.rand(2, 3, SIZE, SIZE)
    maps, scores = FlippedHeatmapDetector(Detector(), 1).predict(images)
    torch.testing.assert_close(maps, images[:, 0] * RAMP)
    assert sorted(HEATMAP_FLIPS) == [1, 2, 4] and all(HEATMAP_FLIPS[n][0] == () for n in HEATMAP_FLIPS)
