"""Validation screen of the feature-density branch's options on a finished run (never the test split).

The run's held-out normal images and their painted and faint copies (the validation `fit`
reports, `realnet.engine.fit.painted_validation_set`) are scored once by the run's discriminator
and once per density variant (backbone layers, channel subset, covariance regularisation,
statistics pooled over a neighbourhood of positions); each map is divided by the mean image score
of the held-out normal images, as `fit` calibrates the fusion. Then the fused map is varied on the
run's own density settings: weight, Gaussian smoothing, fusion rule, a separate weight for the image score,
the image score's mean-filter size. One JSON line per variant with the six validation numbers
and their mean. A run fitted with `density.image_weight` W (or --image-weight W) scores every
weighted-sum variant's images on (1 - W) p + W d with that variant's density d, so the run's own
row equals its fit-time validation; the max and sqrt fusion rules pool their own map. The ninth
session's screens in docs/results-history.md are its output:

    PYTHONPATH=src .venv/bin/python benchmarks/screen_density.py --data ../shared/data \\
        --category magnetic_tile runs/mt_fused2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from common import normal_training_images, run_as_command

from realnet.config import RealNetConfig
from realnet.engine.build import density_channel_subset
from realnet.engine.evaluate import load_run
from realnet.engine.fit import painted_validation_metrics, painted_validation_set, split_holdout
from realnet.engine.runtime import to_tensor
from realnet.model.backbone import create_backbone
from realnet.model.density import FeatureDensity, feature_embedding, gaussian_statistics
from realnet.model.fusion import MapFusion
from realnet.model.discriminator import image_score

# (layers or None for the run's own, channel subset or None, regularisation, neighbourhood or None);
# the run's own density settings come first
DENSITY_VARIANTS = [
    (None, None, 0.001, None), (None, None, 0.1, None), (None, None, 1.0, None),
    (None, 100, 0.01, None), (None, 50, 0.01, None),
    (None, None, 0.01, 3), (None, None, 0.01, 5), (None, None, 0.01, "all"),
    ((1, 2, 3), None, 0.01, None), ((1, 2, 3), 100, 0.01, None), ((1, 2), None, 0.01, None),
]
SCORE_KERNELS = (1, 4, 8, 16, 32)
BLUR_SIGMAS = (2.0, 4.0, 8.0)


def pool_positions(mean: torch.Tensor, covariance: torch.Tensor, count: int, size: int | str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-position Gaussian refitted on the samples of a size x size neighbourhood of
    positions ("all": every position), from the first and second moments."""
    h, w, c = mean.shape
    second = covariance * (count - 1) / count + mean.unsqueeze(-1) * mean.unsqueeze(-2)

    def pool(t: torch.Tensor) -> torch.Tensor:
        grid = t.reshape(h, w, -1).permute(2, 0, 1).unsqueeze(0)
        if size == "all":
            pooled = grid.mean((-2, -1), keepdim=True).expand_as(grid)
        else:
            pooled = F.avg_pool2d(grid, size, 1, size // 2, count_include_pad=False)
        return pooled[0].permute(1, 2, 0).reshape(t.shape)

    pooled_mean = pool(mean)
    pooled_cov = (pool(second) - pooled_mean.unsqueeze(-1) * pooled_mean.unsqueeze(-2)) * count / (count - 1)
    return pooled_mean, pooled_cov


def batches(images: np.ndarray, size: int):
    for start in range(0, len(images), size):
        yield to_tensor(images[start:start + size], torch.device("cpu"))


@torch.no_grad()
def density_maps(backbone, channels: int | None, regularization: float, neighbourhood, fit_images: np.ndarray,
                 images: np.ndarray, seed: int, batch_size: int) -> torch.Tensor:
    """Mahalanobis maps (N, S, S) of `images` under the per-position Gaussian of `fit_images`,
    through the detector's own `FeatureDensity` and `MapFusion.branch_maps`."""
    total = sum(backbone.channels)
    indices = density_channel_subset(total, channels, seed)
    mean, covariance = gaussian_statistics(feature_embedding(backbone(x), indices) for x in batches(fit_images, batch_size))
    if neighbourhood is not None:
        mean, covariance = pool_positions(mean, covariance, len(fit_images), neighbourhood)
    fusion = MapFusion(FeatureDensity(total, tuple(mean.shape[:2]), indices), density_weight=1.0)
    fusion.density.calibrate(mean, covariance, regularization)
    del covariance
    size = tuple(images.shape[1:3])
    return torch.cat([fusion.branch_maps(backbone(x), size)[0] for x in batches(images, batch_size)])


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    side = 2 * int(4 * sigma + 0.5) + 1
    return gaussian_blur(maps.unsqueeze(1), [side, side], [sigma, sigma])[:, 0]


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, help="the data root, if it moved since the run was fitted")
    parser.add_argument("--category", help="refuse a run fitted on another category")
    parser.add_argument("--weight", type=float, help="density weight of the density variants (default: the "
                                                     "run's density.weight, else 0.5)")
    parser.add_argument("--image-weight", type=float, help="density weight of the image score's map (default: the "
                                                           "run's density.image_weight; none: each variant's own map)")
    args = parser.parse_args()
    model, meta = load_run(args.run, torch.device("cpu"))
    model.eval()
    config = RealNetConfig.from_dict(meta["config"], saved=True)
    if args.weight is None:
        args.weight = config.density.weight or 0.5
    if not 0 < args.weight <= 1:
        parser.error(f"--weight {args.weight}: must be in (0, 1]")
    image_weight = config.density.image_weight if args.image_weight is None else args.image_weight
    if image_weight is not None and not 0 <= image_weight <= 1:
        parser.error(f"--image-weight {image_weight}: must be in [0, 1]")
    image_label = "" if image_weight is None else f", image score at w {image_weight}"
    tc = config.train
    normal = normal_training_images(args.run, meta, tc.image_size, args.data, args.category)
    fit_rows, holdout_rows = split_holdout(len(normal), tc.holdout_fraction, tc.holdout_seed)
    images, defect_masks = painted_validation_set(normal[holdout_rows], tc.holdout_seed)
    n = len(holdout_rows)

    def scaled(maps: torch.Tensor) -> torch.Tensor:
        return maps / image_score(maps[:n], model.score_kernel).mean()

    def report(variant: str, maps: torch.Tensor, score_maps: torch.Tensor | None = None, kernel: int | None = None):
        scores = image_score(maps if score_maps is None else score_maps, kernel or model.score_kernel)
        metrics = {k: round(v, 4) for k, v in painted_validation_metrics(maps.numpy(), scores.numpy(), defect_masks).items()}
        print(json.dumps({"run": str(args.run), "variant": variant, **metrics,
                          "mean": round(float(np.mean(list(metrics.values()))), 4)}), flush=True)

    def score_maps_for(density: torch.Tensor) -> torch.Tensor | None:
        return None if image_weight is None else (1 - image_weight) * p + image_weight * density

    with torch.no_grad():
        p = scaled(torch.cat([model.probability_maps(model.select_features(x)) for x in batches(images, tc.batch_size)]))
    report("discriminator alone", p)
    own_density = None
    own = (None, config.density.channels, config.density.regularization, None)
    for layers, channels, regularization, neighbourhood in [own, *DENSITY_VARIANTS]:
        backbone = model.backbone if layers is None else create_backbone(
            config.backbone.name, weights=config.backbone.weights, layers=layers).eval()
        d = scaled(density_maps(backbone, channels, regularization, neighbourhood, normal[fit_rows], images,
                                tc.seed, tc.batch_size))
        own_density = d if own_density is None else own_density
        report(f"layers {layers or 'run'}, channels {channels or 'all'}, regularisation {regularization}, "
               f"neighbourhood {neighbourhood or 1}, w {args.weight}{image_label}",
               (1 - args.weight) * p + args.weight * d, score_maps_for(d))
    d = own_density
    for weight in (0.25, 0.75, 1.0):
        report(f"w {weight}{image_label}", (1 - weight) * p + weight * d, score_maps_for(d))
    fused = (1 - args.weight) * p + args.weight * d
    own_score_maps = score_maps_for(d)
    for sigma in BLUR_SIGMAS:
        blurred = blur(d, sigma)
        report(f"density blurred, sigma {sigma}{image_label}", (1 - args.weight) * p + args.weight * blurred,
               score_maps_for(blurred))
        report(f"fused map blurred, sigma {sigma}{image_label}", blur(fused, sigma),
               None if own_score_maps is None else blur(own_score_maps, sigma))
    report("max(p, d), image score from it", torch.maximum(p, d))
    report("sqrt(p d), image score from it", (p * d).sqrt())
    if image_weight is None:
        report("image score from w 0.75", fused, score_maps=0.25 * p + 0.75 * d)
    for kernel in SCORE_KERNELS:
        report(f"image score kernel {kernel}{image_label}", fused, own_score_maps, kernel=kernel)


if __name__ == "__main__":
    main()
