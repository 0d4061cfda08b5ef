"""Recompute fit's held-out validation (painted and faint painted defects) on finished runs.

The holdout split and the painted defects depend only on the run's config (seed, holdout
fraction, image size), so the numbers equal what `fit` records today; runs fitted before the
faint set existed get it too. Never touches the test split.

With --recalibrate-rrs N, each run is validated a second time after its RRS BatchNorm statistics
are recomputed over N training batches exactly as `fit` does it with rrs.recalibration_batches.

With --density-weights W..., each run is validated again with its map fused with the feature-density
map (density.weight = W, calibrated on its fit and held-out images exactly as `fit` does it) for each W.

With --fusion-weights WD,WK..., the same with the feature density at weight WD and the nearest-neighbour
memory bank at weight WK (`memory.weight`). Both options score the --painted-draws when given.

With --score-kernels K..., each run is validated again with its image score pooled over K x K
windows (the paper's 16 is the default `train.score_kernel`), the fusion's scales recalibrated for it.

With --image-density-weights W..., each fused run is validated again with its image score taken
from its maps fused at density weight W (same scales) while its pixel map stays as fitted.

With --pixel-density-weights W..., the same the other way round: the heatmap fused at density
weight W, the image score (and so the image metrics) as fitted.

With --score-kernel K, the --density-weights, --fusion-weights, --image-density-weights and
--pixel-density-weights screens run with the image score pooled over K x K windows (the fusion's
scales recalibrated for it, as `fit` would), so that a window and a weight are screened together;
K itself is first validated on its own (as --score-kernels K does).

With --image-density-weight W, each fused run is validated with its image score taken from its
maps fused at density weight W (as `density.image_weight` does), and the screens after it
(--density-neighbourhoods, --heatmap-flips, --score-kernels) run so.

With --heatmap-flips N..., each run is validated again with its heatmap's discriminator map
averaged over N mirrored copies of the images (2: left-right; 4: also up-down and both), the
image score unchanged.

With --density-neighbourhoods N..., each fused run is validated again with its density refitted
on each layer's features averaged over N x N positions (`density.neighbourhood`), under the
image weight and window the model has by then.

With --painted-draws N, each run is also validated on N independent draws of the painted defects
(seeds seed + 1000·k, the same held-out images), to see how much the draw alone moves the numbers
and whether a difference between runs holds draw by draw.

With --ensemble, the runs (fitted on the same held-out split, e.g. training seeds under one
`train.validation_seed`) are also validated as one detector: the mean of their discriminator maps,
fused with the first run's fused maps and weights, recalibrated as `fit` does it (on the painted
draws when given).

With --position-normalization, runs fitted without it (and without fused maps) are validated a
second time after a `PositionNormalization` is calibrated on their fit images exactly as `fit`
does it (how that option was assessed; see docs/results-history.md).

Each run's normal training images are read from the data root, layout and category it recorded
(--data only when the root moved), and the run is refused unless they number as at fit: its
held-out split would otherwise name images it was trained on (benchmarks/common.py).

    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile runs/mt_cpu runs/mt_cpu2
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --position-normalization runs/mt_cpu2 runs/mt_b8 runs/mt_b8cos
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --recalibrate-rrs 64 runs/mt_c7k
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile runs/mt_c7k --density-weights 0.25 0.5 0.75 1
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_fused2 runs/mt_dfused runs/mt_e10k
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_fused2 \\
        --fusion-weights 0.5,0 0,0.5 0.25,0.25 0.3333,0.3333 0.25,0.5 0.5,0.25
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_preset12 runs/mt_preset12_s101 --score-kernels 8 16 32
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_preset12 runs/mt_preset12_s101 \\
        --image-density-weights 0.5 0.625 0.75 0.875 1
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_preset29 runs/mt_preset29_s101 \\
        --score-kernel 8 --density-weights 0.75 --image-density-weights 0.75
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_preset29x runs/mt_preset29_s101 \\
        --score-kernel 8 --image-density-weight 0.75 --heatmap-flips 2 4
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_preset29x runs/mt_preset29_s101 \\
        --score-kernel 8 --image-density-weight 0.75 --density-neighbourhoods 1 3 5
    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile --painted-draws 5 runs/mt_s35 runs/mt_s35_s101 \\
        --pixel-density-weights 0.25 0.375 0.625 0.75
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import normal_training_images, run_as_command

from realnet.config import RealNetConfig
from realnet.engine.build import build_fusion
from realnet.engine.evaluate import load_run
from realnet.engine.fit import (
    NormalFeatures,
    SyntheticBatches,
    TrainingFeatures,
    TrainingImages,
    build_synthesizer,
    calibrate_fusion,
    calibrate_fusion_scales,
    calibrate_map_normalization,
    recalibrate_batch_statistics,
    split_holdout,
    validate_on_painted_defects,
)
from realnet.model.discriminator import PositionNormalization, image_score
from realnet.synthesis.foreground import foreground_mask, resolve_foreground


def report(run: Path, variant: str, metrics: dict[str, float]) -> None:
    values = {k: round(v, 4) for k, v in metrics.items() if not k.startswith("val_n_")}
    print(json.dumps({"run": str(run), "variant": variant, **values,
                      "mean": round(float(np.mean(list(values.values()))), 4)}), flush=True)


def recalibrate_from_run(model, config: RealNetConfig, meta: dict, fit_images: np.ndarray,
                         args: argparse.Namespace, device: torch.device) -> None:
    """What fit does with rrs.recalibration_batches = N, on a finished run's fit images."""
    tc = config.train
    rule = resolve_foreground(config.synthesis.foreground, meta["data"]["dataset"], meta["data"]["category"])
    foreground = np.stack([foreground_mask(image, rule) for image in fit_images])
    images = TrainingImages(fit_images, np.zeros((0, *fit_images.shape[1:]), np.uint8), foreground)
    synthesizer = build_synthesizer(config, rule, Path(meta["data"]["root"]) if args.data is None else args.data,
                                    meta["data"]["category"], fit_images)
    batches = SyntheticBatches(synthesizer, images, tc.batch_size, tc.seed)
    normal = NormalFeatures(model, fit_images, device, tc.feature_cache_gb, tc.batch_size, progress=False)
    features = TrainingFeatures(model, normal, device, batches.has_feature_noise)
    recalibrate_batch_statistics(model, batches, features, meta["fit"]["steps"], args.recalibrate_rrs,
                                 discriminator=tc.ema_decay is not None)


def validate_fused(run: Path, model, config: RealNetConfig, fit_images: np.ndarray, holdout: np.ndarray,
                   weight_pairs: list[tuple[float, float]], draws: int, device: torch.device) -> None:
    """Validation with the map fused at each (density weight, memory weight) pair, the fused maps
    calibrated once as `fit` does it (on `draws` painted draws when given); the run's own fusion
    is put back afterwards, so the other variants are measured as fitted."""
    fitted_fusion = model.fusion
    fused_config = RealNetConfig.from_dict(config.to_dict())
    # a branch is built when any pair uses it; its weight is then set pair by pair
    fused_config.density.weight = 0.5 if any(d > 0 for d, _ in weight_pairs) else 0.0
    fused_config.memory.weight = 0.5 if any(k > 0 for _, k in weight_pairs) else 0.0
    fused_config.density.image_weight = None  # each pair's image score pools the map that pair fuses
    model.fusion = build_fusion(fused_config, model.backbone).to(device)
    calibrate_fusion(model, fit_images, holdout, fused_config, device)
    for density_weight, memory_weight in weight_pairs:
        model.fusion.set_weights(density_weight, memory_weight)
        variant = (f"density weight {density_weight}, memory weight {memory_weight}, score kernel {model.score_kernel}, "
                   f"scales {[round(b, 4) for b in model.fusion.scales.tolist()]}")
        validate_variant(run, model, config, holdout, draws, device, variant)
    model.fusion = fitted_fusion


def validate_density_neighbourhoods(run: Path, model, config: RealNetConfig, fit_images: np.ndarray,
                                   holdout: np.ndarray, sizes: list[int], draws: int, device: torch.device) -> None:
    """Validation with the density refitted on features aggregated over each n x n neighbourhood
    (`density.neighbourhood`), under the model's weights, image weight and window, calibrated as
    `fit` does it; the run's own fusion is put back afterwards."""
    fitted_fusion = model.fusion
    image_weight = require_density_alone(run, model, "--density-neighbourhoods")
    for size in sizes:
        aggregated = RealNetConfig.from_dict(config.to_dict())
        aggregated.density.neighbourhood = size
        aggregated.density.image_weight = image_weight
        model.fusion = build_fusion(aggregated, model.backbone).to(device)
        calibrate_fusion(model, fit_images, holdout, aggregated, device)
        validate_variant(run, model, config, holdout, draws, device,
                         f"density neighbourhood {size}, image weight {image_weight}, score kernel {model.score_kernel}, "
                         f"scales {[round(b, 4) for b in model.fusion.scales.tolist()]}")
    model.fusion = fitted_fusion


def validate_score_kernels(run: Path, model, config: RealNetConfig, holdout: np.ndarray, kernels: list[int],
                           draws: int, device: torch.device) -> None:
    """Validation with the image score pooled over each k x k window instead of the run's
    `train.score_kernel`, the fusion's scales recalibrated for it as `fit` would (they are mean
    image scores of the held-out images); the run's own kernel and scales are put back afterwards."""
    fitted_kernel, fusion = model.score_kernel, model.fusion
    fitted_scales = None if fusion is None else fusion.scales.clone()
    for kernel in kernels:
        model.score_kernel = kernel
        variant = f"score kernel {kernel}"
        if fusion is not None:
            calibrate_fusion_scales(model, holdout, config.train.batch_size, device)
            variant += f", scales {[round(b, 4) for b in fusion.scales.tolist()]}"
        validate_variant(run, model, config, holdout, draws, device, variant)
    model.score_kernel = fitted_kernel
    if fusion is not None:
        fusion.calibrate_scales(*fitted_scales.tolist())


def set_score_kernel(model, kernel: int, holdout: np.ndarray, batch_size: int, device: torch.device) -> None:
    """The image score pooled over kernel x kernel windows from now on, the fusion's scales
    recalibrated for it (a fusion built later calibrates its own with the model's kernel)."""
    model.score_kernel = kernel
    if model.fusion is not None:
        calibrate_fusion_scales(model, holdout, batch_size, device)


def validate_variant(run: Path, detector, config: RealNetConfig, holdout: np.ndarray, draws: int,
                     device: torch.device, variant: str) -> None:
    """One variant's validation: on the painted draws when given, else on the run's own draw."""
    if draws:
        validate_on_draws(run, detector, config, holdout, draws, device, variant)
    else:
        report(run, variant, validate_on_painted_defects(detector, holdout, config, device))


def validate_on_draws(run: Path, model, config: RealNetConfig, holdout: np.ndarray, draws: int,
                      device: torch.device, variant: str = "as fitted") -> None:
    """The mean of six on `draws` independent draws of the painted defects, then their mean and
    standard deviation."""
    means = []
    for draw in range(draws):
        metrics = validate_on_painted_defects(model, holdout, config, device, seed=config.train.holdout_seed + 1000 * draw)
        means.append(float(np.mean([v for k, v in metrics.items() if not k.startswith("val_n_")])))
    print(json.dumps({"run": str(run), "variant": f"{variant}, {draws} painted draws", "means": [round(m, 4) for m in means],
                      "mean": round(float(np.mean(means)), 4), "sd": round(float(np.std(means, ddof=1)), 4)}),
          flush=True)


class EnsembleDetector(torch.nn.Module):
    """Several fitted RealNets over one frozen backbone scored as one: the mean of their
    discriminator maps (each through its own feature selection), then the first run's fusion."""

    def __init__(self, members: list, fusion, score_kernel: int):
        super().__init__()
        self.backbone = members[0].backbone
        self.members = torch.nn.ModuleList(members)
        self.selector = torch.nn.Identity()  # each member selects its own channels
        self.fusion = fusion
        self.score_kernel = score_kernel

    @torch.no_grad()
    def probability_maps(self, backbone_features: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([m.probability_maps(m.selector(backbone_features)) for m in self.members]).mean(0)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        maps = score_maps = self.probability_maps(features)
        if self.fusion is not None:
            maps, score_maps = self.fusion(maps, features)
        return maps, image_score(score_maps, self.score_kernel)


def validate_split_weights(run: Path, model, config: RealNetConfig, holdout: np.ndarray, weights: list[float],
                           draws: int, device: torch.device, screened: str) -> None:
    """Validation with one of the two fused maps (screened: "image", the map the image score
    pools, or "pixel", the heatmap) at each density weight, the other as fitted and the scales
    unchanged; the run's own weights are put back afterwards."""
    fitted_image_weight = require_density_alone(run, model, f"--{screened}-density-weights")
    fitted_pixel_weight = config.density.weight
    # an image score that pools the pixel map is pinned to it, so a pixel screen leaves it as fitted
    image_weight = fitted_pixel_weight if fitted_image_weight is None else fitted_image_weight
    for weight in weights:
        pixel_weight = weight if screened == "pixel" else fitted_pixel_weight
        model.fusion.set_weights(pixel_weight, 0.0)
        model.fusion.set_image_weight(weight if screened == "image" else image_weight)
        variant = (f"pixel map at density weight {pixel_weight}, image score at "
                   f"{model.fusion.image_density_weight}, score kernel {model.score_kernel}")
        report(run, variant, validate_on_painted_defects(model, holdout, config, device))
        if draws:
            validate_on_draws(run, model, config, holdout, draws, device, variant)
    model.fusion.set_weights(fitted_pixel_weight, 0.0)
    model.fusion.set_image_weight(fitted_image_weight)


def require_density_alone(run: Path, model, option: str) -> float | None:
    """The run's image density weight, after checking that it is fused with the density alone."""
    if model.fusion is None or model.fusion.memory is not None:
        raise SystemExit(f"{option}: {run} must be fused with the feature density alone")
    return image_weight_of(model)


# the mirrorings whose maps the flipped heatmap averages, by count: image dims flipped (none,
# left-right, up-down, both)
HEATMAP_FLIPS = {1: ((),), 2: ((), (-1,)), 4: ((), (-1,), (-2,), (-2, -1))}


class FlippedHeatmapDetector(torch.nn.Module):
    """A fitted RealNet whose pixel map takes the mean of the discriminator's maps over `count`
    mirrored copies of the images (each mirrored back), fused as fitted (the per-position density
    of the unmirrored images); the image score is left exactly as fitted."""

    def __init__(self, model, count: int):
        super().__init__()
        self.model = model
        self.flips = HEATMAP_FLIPS[count]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model, batch = self.model, images.shape[0]
        views = torch.cat([images.flip(dims) if dims else images for dims in self.flips])
        features = model.backbone(views)  # one pass over every copy
        maps = model.probability_maps(model.selector(features)).split(batch)
        mirrored_mean = torch.stack([m.flip(dims) if dims else m for m, dims in zip(maps, self.flips)]).mean(0)
        pixel_map, image_map = model.map_normalization(mirrored_mean), model.map_normalization(maps[0])
        fusion = model.fusion
        if fusion is not None:
            branch_maps = fusion.branch_maps([f[:batch] for f in features], tuple(pixel_map.shape[-2:]))
            pixel_map, image_map = (fusion.weighted_sum([pixel_map] + branch_maps, fusion.weights),
                                    fusion.weighted_sum([image_map] + branch_maps, fusion.image_weights or fusion.weights))
        return pixel_map, image_score(image_map, model.score_kernel)


def validate_heatmap_flips(run: Path, model, config: RealNetConfig, holdout: np.ndarray, counts: list[int],
                           draws: int, device: torch.device) -> None:
    """Validation with the heatmap's discriminator map averaged over each number of mirrored
    copies, the image score as the model has it."""
    for count in counts:
        validate_variant(run, FlippedHeatmapDetector(model, count), config, holdout, draws, device,
                         f"heatmap over {count} flips, image weight {image_weight_of(model)}, "
                         f"score kernel {model.score_kernel}")


def image_weight_of(model) -> float | None:
    return None if model.fusion is None else model.fusion.image_density_weight


def validate_ensemble(loaded: list[tuple[Path, object, RealNetConfig, np.ndarray]], draws: int,
                      device: torch.device) -> None:
    splits = {(config.train.holdout_seed, config.train.holdout_fraction, config.train.image_size)
              for _, _, config, _ in loaded}
    if len(splits) != 1 or any(not np.array_equal(images, loaded[0][3]) for *_, images in loaded):
        raise SystemExit(f"--ensemble: the runs were fitted on different images or held-out splits: {sorted(splits)}")
    _, first, config, images = loaded[0]
    fit_rows, holdout_rows = split_holdout(len(images), config.train.holdout_fraction, config.train.holdout_seed)
    ensemble = EnsembleDetector([model for _, model, _, _ in loaded], first.fusion, first.score_kernel).to(device)
    calibrate_fusion(ensemble, images[fit_rows], images[holdout_rows], config, device)
    name = Path("+".join(str(run) for run, *_ in loaded))
    report(name, "ensemble: mean of the discriminator maps", validate_on_painted_defects(ensemble, images[holdout_rows],
                                                                                      config, device))
    if draws:
        validate_on_draws(name, ensemble, config, images[holdout_rows], draws, device, "ensemble")


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path,
                        help="the data root, if it moved since the runs were fitted (default: each run's own)")
    parser.add_argument("--category", help="refuse runs fitted on another category")
    parser.add_argument("--recalibrate-rrs", type=int, default=0, metavar="N",
                        help="also validate after recomputing the RRS statistics over N training batches")
    parser.add_argument("--density-weights", type=float, nargs="+", default=[], metavar="W",
                        help="also validate with the map fused with the feature density at each weight in (0, 1]")
    parser.add_argument("--fusion-weights", nargs="+", default=[], metavar="WD,WK",
                        help="also validate with the map fused with the feature density at weight WD and the "
                             "memory bank at WK (each in [0, 1], WD + WK <= 1), on the painted draws when given")
    parser.add_argument("--image-density-weights", type=float, nargs="+", default=[], metavar="W",
                        help="also validate with the image score taken from the map fused at density weight W, "
                             "the pixel map as fitted (fused runs), on the painted draws when given")
    parser.add_argument("--pixel-density-weights", type=float, nargs="+", default=[], metavar="W",
                        help="also validate with the heatmap fused at density weight W, the image score as "
                             "fitted (runs fused with the density alone), on the painted draws when given")
    parser.add_argument("--image-density-weight", type=float, metavar="W",
                        help="validate with the image score taken from the maps fused at density weight W, "
                             "then run the --density-neighbourhoods, --heatmap-flips and --score-kernels "
                             "screens so (runs fused with the density alone)")
    parser.add_argument("--heatmap-flips", type=int, nargs="+", default=[], choices=sorted(HEATMAP_FLIPS),
                        metavar="N", help="also validate with the heatmap's discriminator map averaged over N "
                                          "mirrored copies (1, 2 or 4), on the painted draws when given")
    parser.add_argument("--density-neighbourhoods", type=int, nargs="+", default=[], metavar="N",
                        help="also validate with the density refitted on each layer's features averaged over "
                             "N x N positions (odd N; fused runs, the model's image weight and window)")
    parser.add_argument("--score-kernels", type=int, nargs="+", default=[], metavar="K",
                        help="also validate with the image score pooled over K x K windows (the run's fusion "
                             "weights, scales recalibrated), on the painted draws when given")
    parser.add_argument("--score-kernel", type=int, metavar="K",
                        help="run the weight screens with the image score pooled over K x K windows instead of "
                             "the run's own (scales recalibrated)")
    parser.add_argument("--painted-draws", type=int, default=0, metavar="N",
                        help="also validate on N independent draws of the painted defects (N >= 2)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also validate the runs together: the mean of their discriminator maps")
    parser.add_argument("--position-normalization", action="store_true",
                        help="also validate runs fitted without it after calibrating it on their fit images")
    args = parser.parse_args()
    if any(not 0 < w <= 1 for w in args.density_weights):
        parser.error("--density-weights: every weight must be in (0, 1]")
    weight_pairs = [(w, 0.0) for w in args.density_weights]
    for pair in args.fusion_weights:
        try:
            density_weight, memory_weight = (float(w) for w in pair.split(","))
        except ValueError:
            parser.error(f"--fusion-weights: expected WD,WK, got {pair!r}")
        if min(density_weight, memory_weight) < 0 or density_weight + memory_weight > 1 + 1e-9 or (
                density_weight + memory_weight == 0):
            parser.error(f"--fusion-weights: {pair}: the weights must be >= 0 with a sum in (0, 1]")
        weight_pairs.append((density_weight, memory_weight))
    for option, weights in (("image", args.image_density_weights), ("pixel", args.pixel_density_weights)):
        if any(not 0 <= w <= 1 for w in weights):
            parser.error(f"--{option}-density-weights: every weight must be in [0, 1]")
    if args.image_density_weight is not None and not 0 <= args.image_density_weight <= 1:
        parser.error("--image-density-weight: the weight must be in [0, 1]")
    if any(n < 1 or n % 2 == 0 for n in args.density_neighbourhoods):
        parser.error("--density-neighbourhoods: every neighbourhood must be an odd number >= 1")
    if any(k < 1 for k in args.score_kernels):
        parser.error("--score-kernels: every kernel must be at least 1")
    if args.score_kernel is not None and args.score_kernel < 1:
        parser.error("--score-kernel: the kernel must be at least 1")
    if args.painted_draws == 1 or args.painted_draws < 0:
        parser.error("--painted-draws: give 0 (off) or at least 2 draws")
    if args.recalibrate_rrs < 0:
        parser.error("--recalibrate-rrs: give 0 (off) or a number of batches")
    device = torch.device("cpu")
    loaded = []
    for run in args.runs:
        model, meta = load_run(run, device)
        if args.position_normalization and model.fusion is not None:
            raise SystemExit(f"--position-normalization: {run} is fused; fit refuses position normalisation "
                             "with density.weight or memory.weight > 0")
        config = RealNetConfig.from_dict(meta["config"], saved=True)
        tc = config.train
        images = normal_training_images(run, meta, tc.image_size, args.data, args.category)
        fit_rows, holdout_rows = split_holdout(len(images), tc.holdout_fraction, tc.holdout_seed)
        report(run, f"map_normalization {tc.map_normalization}, density weight {config.density.weight}, "
                    f"memory weight {config.memory.weight}",
               validate_on_painted_defects(model, images[holdout_rows], config, device))
        if args.painted_draws:
            validate_on_draws(run, model, config, images[holdout_rows], args.painted_draws, device)
        if args.score_kernel is not None:
            validate_score_kernels(run, model, config, images[holdout_rows], [args.score_kernel],
                                   args.painted_draws, device)
            set_score_kernel(model, args.score_kernel, images[holdout_rows], tc.batch_size, device)
        if weight_pairs:
            validate_fused(run, model, config, images[fit_rows], images[holdout_rows], weight_pairs,
                           args.painted_draws, device)
        if args.image_density_weights:
            validate_split_weights(run, model, config, images[holdout_rows], args.image_density_weights,
                                   args.painted_draws, device, "image")
        if args.pixel_density_weights:
            validate_split_weights(run, model, config, images[holdout_rows], args.pixel_density_weights,
                                   args.painted_draws, device, "pixel")
        if args.image_density_weight is not None:
            require_density_alone(run, model, "--image-density-weight")
            model.fusion.set_image_weight(args.image_density_weight)
            validate_variant(run, model, config, images[holdout_rows], args.painted_draws, device,
                             f"image score at density weight {args.image_density_weight}, "
                             f"score kernel {model.score_kernel}")
        if args.density_neighbourhoods:
            validate_density_neighbourhoods(run, model, config, images[fit_rows], images[holdout_rows],
                                            args.density_neighbourhoods, args.painted_draws, device)
        if args.heatmap_flips:
            validate_heatmap_flips(run, model, config, images[holdout_rows], args.heatmap_flips,
                                   args.painted_draws, device)
        if args.score_kernels:
            validate_score_kernels(run, model, config, images[holdout_rows], args.score_kernels, args.painted_draws,
                                   device)
        if args.ensemble:
            loaded.append((run, model, config, images))
        # the variants below change the model: each gets a fresh copy, so nothing above or after is affected
        if args.recalibrate_rrs > 0:
            recalibrated, _ = load_run(run, device)
            recalibrate_from_run(recalibrated, config, meta, images[fit_rows], args, device)
            if recalibrated.fusion is not None:  # fit calibrates the fusion's scales after the statistics
                calibrate_fusion_scales(recalibrated, images[holdout_rows], tc.batch_size, device)
            report(run, f"{tc.map_normalization}, RRS recalibrated on {args.recalibrate_rrs} batches",
                   validate_on_painted_defects(recalibrated, images[holdout_rows], config, device))
        if args.position_normalization and tc.map_normalization == "none":
            normalized, _ = load_run(run, device)
            normalized.map_normalization = PositionNormalization(tc.image_size)
            features = NormalFeatures(normalized, images[fit_rows], device, tc.feature_cache_gb, tc.batch_size,
                                      progress=False)
            calibrate_map_normalization(normalized, features, len(fit_rows), tc.batch_size)
            report(run, "position", validate_on_painted_defects(normalized, images[holdout_rows], config, device))
    if args.ensemble:
        validate_ensemble(loaded, args.painted_draws, device)


if __name__ == "__main__":
    main()
