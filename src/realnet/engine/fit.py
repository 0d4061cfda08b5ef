"""`realnet fit`: AFS once, then a fixed schedule of Eq. 6 steps, then threshold calibration on
held-out normal training images. No test image is seen unless `select_on_test` is asked for."""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from realnet.config import RealNetConfig, setting_changes
from realnet.data.layouts import load_dataset
from realnet.data.records import Record
from realnet.data.validate import MIN_TRAINING_IMAGES
from realnet.engine import checkpoint
from realnet.engine.build import build_backbone, build_model
from realnet.engine.distributed import launched_rank
from realnet.engine.runtime import (
    adam,
    adopt_thread_count,
    batch_indices,
    bf16_autocast_available,
    compute_environment,
    load_samples,
    resolve_device,
    seed_everything,
    steps_per_epoch,
    Stream,
    stream_rng,
    to_tensor,
    training_image_digests,
)
from realnet.errors import RealnetError
from realnet.files import missing_folders, remove_created_folders
from realnet.model.afs import afs_loss, init_random_projection, random_subset, rank_channels
from realnet.model.realnet import RealNet, realnet_loss
from realnet.model.rrs import reconstruction_residuals
from realnet.synthesis.feature_noise import add_feature_noise, channel_std
from realnet.synthesis.foreground import foreground_mask, resolve_foreground
from realnet.synthesis.sources import find_dtd_root, refuse_texture_folders_holding_the_data, texture_folders


@dataclass
class FitRequest:
    config: RealNetConfig
    data_root: Path
    category: str
    out: Path
    dataset: str = "mvtec"
    resume: bool = False
    device: str = "auto"
    skip_bad: bool = False
    select_on_test: bool = False
    eval_every: int | None = None
    progress: bool = True
    folder_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingImages:
    """Normal training images held in memory, split into fit and held-out parts."""

    fit: np.ndarray  # (N, S, S, 3) uint8
    holdout: np.ndarray
    foreground: np.ndarray  # (N, S, S) bool, per fit image


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = stream_rng(seed, Stream.HOLDOUT_SPLIT).permutation(n)
    n_holdout = min(n - 1, round(fraction * n)) if fraction > 0 else 0
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


class SyntheticBatch(NamedTuple):
    """A training batch: indices of the normal images I, the synthetic images A, masks M and
    labels made from them, and per row the feature-noise strength (0 where the anomaly, if any,
    is in the image) and the seed of its noise."""

    indices: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    noise_strengths: np.ndarray
    noise_seeds: np.ndarray


def synthesize(synthesizer, images: np.ndarray, foregrounds: np.ndarray, indices: np.ndarray,
               seed: int, key: tuple[Stream, int], force_anomalous: bool = False,
               slots: np.ndarray | None = None) -> SyntheticBatch:
    """The synthetic batch made from images[indices]. The sample in batch position `slot`
    (default 0..n-1) uses randomness from (seed, *key, slot) alone, key = (stream, step or AFS
    batch), so a rank that builds only its shard of a batch gets exactly the samples a single
    process would."""
    slots = np.arange(len(indices)) if slots is None else slots
    size = images.shape[1]
    out_images = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    out_masks = np.zeros((len(indices), size, size), dtype=bool)
    labels = np.zeros(len(indices), dtype=np.int64)
    noise_strengths = np.zeros(len(indices), dtype=np.float32)
    noise_seeds = np.zeros(len(indices), dtype=np.int64)
    for row, (slot, index) in enumerate(zip(slots, indices)):
        sample = synthesizer(images[index], stream_rng(seed, *key, int(slot)),
                             foreground_mask=foregrounds[index], force_anomalous=force_anomalous)
        out_images[row], out_masks[row], labels[row] = sample.image, sample.mask, sample.label
        if sample.noise_seed is not None:
            noise_strengths[row], noise_seeds[row] = sample.delta, sample.noise_seed
    return SyntheticBatch(np.asarray(indices), out_images, out_masks, labels, noise_strengths, noise_seeds)


class SyntheticBatches:
    """The training batch of a given step (a `SyntheticBatch`)."""

    def __init__(self, synthesizer, images: TrainingImages, batch_size: int, seed: int):
        self.synthesizer = synthesizer
        self.images = images
        self.batch_size = batch_size
        self.seed = seed

    def make(self, indices: np.ndarray, key: tuple[Stream, int], force_anomalous: bool = False) -> SyntheticBatch:
        return synthesize(self.synthesizer, self.images.fit, self.images.foreground, indices, self.seed,
                          key, force_anomalous)

    def for_step(self, step: int, rank: int = 0, world_size: int = 1) -> SyntheticBatch:
        """This rank's shard (batch positions rank, rank + world, ...) of the step's batch."""
        slots = np.arange(rank, self.batch_size, world_size)
        indices = batch_indices(step, len(self.images.fit), self.batch_size, self.seed)[slots]
        return synthesize(self.synthesizer, self.images.fit, self.images.foreground, indices,
                          self.seed, (Stream.TRAINING_SAMPLE, step), slots=slots)

    @property
    def has_feature_noise(self) -> bool:
        return "feature_noise" in self.synthesizer.names


def build_synthesizer(config: RealNetConfig, rule, data_root: Path, category: str, normal_images: np.ndarray,
                      records: Sequence[Record] = ()):
    """The training-time anomaly synthesizer (Eq. 3) with the configured sources; NSA takes its
    donor patches from the other normal fit images. A texture folder holding any of the dataset's
    `records` is refused."""
    from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, build_sources

    weights = {name: w for name, w in config.synthesis.sources.items() if w > 0}
    dtd_root = find_dtd_root(config.synthesis.dtd_root, data_root) if "dtd" in weights else None
    refuse_texture_folders_holding_the_data(texture_folders(weights, category, dtd_root, config.synthesis.sia_root),
                                            records)
    sources = build_sources(list(weights), size=config.train.image_size, category=category, dtd_root=dtd_root,
                            sia_root=config.synthesis.sia_root, normal_images=normal_images)
    settings = SynthesisConfig(normal_probability=config.synthesis.normal_probability, source_weights=weights,
                               match_gray=config.synthesis.match_gray,
                               retry_empty_masks=config.synthesis.retry_empty_masks,
                               delta_ranges={name: tuple(bounds) for name, bounds in config.synthesis.delta_ranges.items()})
    return AnomalySynthesizer(settings, sources, rule)


def load_training_images(request: FitRequest, records: list[Record], rule) -> TrainingImages:
    config = request.config
    train = [r for r in records if r.split == "train" and r.label == 0]
    if len(train) < MIN_TRAINING_IMAGES:
        where = " (a folder dataset takes them from --normal-dir)" if request.dataset == "folder" else ""
        raise RealnetError(f"{request.data_root}: category '{request.category}' has {len(train)} normal training "
                           f"images{where}; at least {MIN_TRAINING_IMAGES} are needed")
    images, _, _, skipped = load_samples(
        train, config.train.image_size, skip_bad=request.skip_bad, desc="loading train images",
        progress=request.progress,
    )
    for error in skipped if launched_rank() == 0 else ():
        tqdm.write(f"realnet: skipped {error}", file=sys.stderr)  # stdout holds the JSON summary
    if len(images) < MIN_TRAINING_IMAGES:
        raise RealnetError(f"{request.data_root}: category '{request.category}' has {len(images)} readable normal "
                           f"training images ({len(skipped)} skipped); at least {MIN_TRAINING_IMAGES} are needed")
    fit_idx, holdout_idx = split_holdout(len(images), config.train.holdout_fraction, config.train.holdout_seed)
    if config.memory.weight > 0 and len(holdout_idx) == 0:  # validate_config could only check the fraction
        raise RealnetError(f"memory.weight > 0 needs held-out images: train.holdout_fraction "
                           f"{config.train.holdout_fraction} holds out none of the {len(images)} normal training "
                           "images; raise it (on its own fit images the memory map reads about 0)")
    if config.density.weight > 0 and len(fit_idx) < 2:
        raise RealnetError(f"density.weight > 0 needs at least 2 fit images for its per-position covariance; "
                           f"train.holdout_fraction {config.train.holdout_fraction} leaves {len(fit_idx)} of the "
                           f"{len(images)} normal training images; lower it")
    if len(holdout_idx) < 2 and launched_rank() == 0:
        consequence = ("the threshold comes from the fit images (biased low) and no validation is reported"
                       if len(holdout_idx) == 0 else "no validation is reported (it needs 2)")
        tqdm.write(f"realnet: warning: {len(holdout_idx)} of {len(images)} normal training images held out "
                   f"(train.holdout_fraction {config.train.holdout_fraction}); {consequence}", file=sys.stderr)
    fit = images[fit_idx]
    foreground = np.stack([foreground_mask(image, rule) for image in fit])
    return TrainingImages(fit, images[holdout_idx], foreground)


def run_feature_selection(model: RealNet, batches: SyntheticBatches, config: RealNetConfig,
                          device: torch.device, progress: bool) -> dict[str, Any]:
    """AFS (Eq. 4) over `selection.batches` batches of purely anomalous samples, or the RDR /
    RLPR ablations. Stores the result in the model's selector and returns a summary. Feature-noise
    samples leave the image unchanged, so they add the same constant to every channel's loss and
    do not change the ranking."""
    selector = model.selector
    generator = torch.Generator().manual_seed(config.train.seed)
    if selector.method == "rdr":
        for k, (c, m) in enumerate(zip(selector.in_channels, selector.out_channels)):
            selector.set_indices(k, random_subset(c, m, generator))
        return {"method": "rdr"}
    if selector.method == "rlpr":
        init_random_projection(selector, generator)
        return {"method": "rlpr"}
    sel = config.selection
    totals = [torch.zeros(c, dtype=torch.float64) for c in selector.in_channels]
    n_images = len(batches.images.fit)
    for b in tqdm(range(sel.batches), desc="AFS", disable=not progress, leave=False):
        rng = stream_rng(config.train.seed, Stream.AFS_IMAGES, b)
        indices = rng.choice(n_images, size=sel.batch_size, replace=n_images < sel.batch_size)
        batch = batches.make(indices, (Stream.AFS_SAMPLE, b), force_anomalous=True)
        with torch.no_grad():
            normal_features = model.backbone(to_tensor(batches.images.fit[indices], device))
            anomalous_features = model.backbone(to_tensor(batch.images, device))
        mask_tensor = torch.from_numpy(batch.masks).to(device)
        for k, (a, i) in enumerate(zip(anomalous_features, normal_features)):
            totals[k] += afs_loss(a, i, mask_tensor).cpu().double()  # MPS has no float64
    order = [rank_channels(t) for t in totals]
    for k, m in enumerate(selector.out_channels):
        selector.set_indices(k, order[k][:m])
    return {"method": "afs", "losses": [t.tolist() for t in totals],
            "indices": [o[:m].tolist() for o, m in zip(order, selector.out_channels)]}


class NormalFeatures:
    """varphi_k(I) of the fit images: cached once when they fit in the memory budget,
    otherwise computed per batch."""

    def __init__(self, model: RealNet, images: np.ndarray, device: torch.device, budget_gb: float,
                 batch_size: int, progress: bool):
        self.model, self.images, self.device = model, images, device
        self.cache: list[torch.Tensor] | None = None
        probe = model.select_features(to_tensor(images[:1], device))
        per_image = sum(f[0].numel() * f.element_size() for f in probe)
        if per_image * len(images) <= budget_gb * 2**30:
            chunks = [model.select_features(to_tensor(images[i:i + batch_size], device))
                      for i in tqdm(range(0, len(images), batch_size), desc="caching features",
                                    disable=not progress, leave=False)]
            self.cache = [torch.cat(parts) for parts in zip(*chunks)]

    def __call__(self, indices: np.ndarray) -> list[torch.Tensor]:
        if self.cache is not None:
            index = torch.from_numpy(indices).to(self.device)
            return [f.index_select(0, index) for f in self.cache]
        return self.model.select_features(to_tensor(self.images[indices], self.device))


class TrainingFeatures:
    """varphi of training batches: normal rows reuse varphi(I); rows with an image-space anomaly
    go through the backbone again; feature-noise rows get varphi(I) plus their noise, scaled by
    each channel's spread over the first `NOISE_SCALE_IMAGES` fit images."""

    NOISE_SCALE_IMAGES = 128

    def __init__(self, model: RealNet, normal_features: NormalFeatures, device: torch.device, feature_noise: bool):
        self.model, self.normal_features, self.device = model, normal_features, device
        self.noise_stds = None
        if feature_noise:
            first = np.arange(min(len(normal_features.images), self.NOISE_SCALE_IMAGES))
            self.noise_stds = channel_std(normal_features(first))

    def __call__(self, batch: SyntheticBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(varphi(I), varphi of the training samples) for the batch."""
        normal = self.normal_features(batch.indices)
        features = [f.clone() for f in normal]
        image_rows = np.flatnonzero((batch.labels == 1) & (batch.noise_strengths == 0))
        if image_rows.size:
            index = torch.from_numpy(image_rows).to(self.device)
            # contiguous NCHW: the convolutions round differently on to_tensor's channels-last
            # layout, and the recorded runs trained on contiguous rows; keeps refits bit-identical
            anomalous = to_tensor(batch.images[image_rows], self.device).contiguous()
            for k, f in enumerate(self.model.select_features(anomalous)):
                features[k][index] = f.to(features[k].dtype)
        noise_rows = np.flatnonzero(batch.noise_strengths > 0)
        if noise_rows.size:
            if self.noise_stds is None:
                raise RealnetError("a feature-noise sample reached a training step built without feature noise")
            index = torch.from_numpy(noise_rows).to(self.device)
            noisy = add_feature_noise([f.index_select(0, index) for f in features], self.noise_stds,
                                      torch.from_numpy(batch.masks[noise_rows]),
                                      torch.from_numpy(batch.noise_strengths[noise_rows]),
                                      batch.noise_seeds[noise_rows].tolist())
            for k, f in enumerate(noisy):
                features[k][index] = f
        return normal, features


def train_step(model: RealNet, optimizer: torch.optim.Optimizer, normal_features: list[torch.Tensor],
               features: list[torch.Tensor], masks: torch.Tensor,
               autocast: Callable[[], Any], reduce_gradients: Callable[[], None],
               focal_gamma: float | None = None) -> dict[str, float]:
    """One step of Eq. 6 on the training samples' features and masks."""
    with autocast():
        output = model(features)
        loss, parts = realnet_loss(output, normal_features, masks, focal_gamma)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    reduce_gradients()
    optimizer.step()
    return {"loss": float(loss.detach()), **parts}


def weight_average(trainable: torch.nn.Module, decay: float | None):
    """The exponential moving average of the trainable weights (train.ema_decay; None: off). The
    buffers are copied from the live model at each update, not averaged; the BatchNorm statistics
    of the averaged weights (RRS's and the discriminator's) are recomputed after training
    (`recalibrate_batch_statistics` over rrs.recalibration_batches, which config validation
    requires with it)."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(trainable, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def learning_rate_at(step: int, total_steps: int, base: float, schedule: str) -> float:
    """The step's learning rate, a pure function of the step so that --resume needs no scheduler
    state. "cosine" (ours, not the paper's constant rate) decays from base towards 0, which it
    would reach at step `total_steps`, one after the last."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def score_images(model: RealNet, images: np.ndarray, device: torch.device, batch_size: int,
                 progress: bool = False, desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (N, S, S) float32 and image scores (N,) for uint8 images, in eval mode."""
    model.eval()
    maps, scores = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        batch_maps, batch_scores = model.predict(to_tensor(images[start:start + batch_size], device))
        maps.append(batch_maps.cpu().numpy())
        scores.append(batch_scores.cpu().numpy())
    if not maps:
        size = images.shape[1]
        return np.zeros((0, size, size), np.float32), np.zeros(0, np.float32)
    return np.concatenate(maps), np.concatenate(scores)


def recalibrate_batch_statistics(model: RealNet, batches: SyntheticBatches, training_features: TrainingFeatures,
                                 first_step: int, n_batches: int, *, discriminator: bool = False,
                                 rank: int = 0, world_size: int = 1, progress: bool = False) -> None:
    """rrs.recalibration_batches (ours): the RRS BatchNorm's running statistics recomputed over
    `n_batches` fresh training batches (steps first_step, first_step + 1, ...: the same mix of
    normal and synthetic samples as training, drawn after it, so reproducible and unseen). With
    `discriminator` (averaged weights, train.ema_decay: they never produced the live model's
    statistics) the discriminator's BatchNorm statistics are then recomputed the same way, on the
    residuals RRS selects with its new statistics (torch.optim.swa_utils.update_bn). Under torchrun
    update_bn's training-mode forwards go through the synchronised BatchNorm, so each rank feeds it
    only its shard (`rank` of `world_size`), as in training; RRS's plain BatchNorm sees whole batches."""
    if n_batches <= 0:
        return
    from torch.optim.swa_utils import update_bn

    model.eval()

    def residual_batches(desc: str, rank: int = 0, world_size: int = 1):
        for step in tqdm(range(first_step, first_step + n_batches), desc=desc, disable=not progress, leave=False):
            _, features = training_features(batches.for_step(step, rank, world_size))
            yield reconstruction_residuals(features, model.reconstruction(features))

    with torch.no_grad():
        model.residual_selection.recalibrate(residual_batches("RRS statistics"))
        if discriminator:
            update_bn((model.residual_selection(residuals)
                       for residuals in residual_batches("discriminator statistics", rank, world_size)),
                      model.discriminator)


def calibrate_map_normalization(model: RealNet, normal_features: "NormalFeatures", n_images: int,
                                batch_size: int, progress: bool = False) -> None:
    """Sets the detector's `PositionNormalization` from the probability maps of the normal fit
    images (never the held-out ones, which calibrate the threshold and validate)."""
    from realnet.model.discriminator import PositionNormalization, position_statistics

    if not isinstance(model.map_normalization, PositionNormalization):
        return
    model.eval()
    batches = tqdm(range(0, n_images, batch_size), desc="position statistics", disable=not progress, leave=False)
    maps = (model.probability_maps(normal_features(np.arange(start, min(start + batch_size, n_images))))
            for start in batches)
    model.map_normalization.calibrate(*(t.to(model.map_normalization.offset.device)
                                        for t in position_statistics(maps)))


def _backbone_batches(model: RealNet, images: np.ndarray, batch_size: int, device: torch.device, desc: str,
                      progress: bool):
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        yield model.backbone(to_tensor(images[start:start + batch_size], device))


def calibrate_fusion(model: RealNet, fit_images: np.ndarray, scale_images: np.ndarray, config: RealNetConfig,
                     device: torch.device, progress: bool = False) -> None:
    """Sets the detector's fused maps (when it has any): the per-position Gaussian and/or the
    memory bank's coreset from the fit images' backbone features, then the mean image score of
    `scale_images` under each fused map. Those should be normal images no map was fitted on (fit
    passes the held-out ones): on its own fit images a map reads low, the Gaussian the more so
    the fewer images it has, and the scales would then weigh the maps unlike their weights say."""
    from functools import partial

    from realnet.model.density import gaussian_statistics

    fusion = model.fusion
    if fusion is None:
        return
    model.eval()
    batch_size = config.train.batch_size
    with torch.no_grad():
        if fusion.density is not None:
            # float64 sums on the CPU: the accelerator may have no float64 (MPS)
            mean, covariance = gaussian_statistics(
                fusion.density.embed(f).cpu()
                for f in _backbone_batches(model, fit_images, batch_size, device, "feature density", progress))
            try:
                fusion.density.calibrate(mean, covariance, config.density.regularization)
            except torch.linalg.LinAlgError:  # few fit images for many channels leave the covariance singular
                raise RealnetError(f"density.regularization={config.density.regularization:g} is too small to make "
                                   f"the feature covariance of {len(fit_images)} fit images and {mean.shape[-1]} "
                                   "channels invertible; raise it (default 0.01) or give more images") from None
        if fusion.memory is not None:
            # on the CPU: every fit position's embedding may not fit on the accelerator
            patches = torch.cat([fusion.memory.embed(f).permute(0, 2, 3, 1).flatten(0, 2).cpu()
                                 for f in _backbone_batches(model, fit_images, batch_size, device, "memory bank",
                                                            progress)])
            mc = config.memory
            fusion.memory.calibrate(patches, mc.coreset_ratio, mc.projection_dim, config.train.seed,
                                    partial(tqdm, desc="memory coreset", disable=not progress, leave=False))
    calibrate_fusion_scales(model, scale_images, batch_size, device, progress)


def calibrate_fusion_scales(model: RealNet, scale_images: np.ndarray, batch_size: int, device: torch.device,
                            progress: bool = False) -> None:
    """The fusion's scales alone: the mean image score of `scale_images` under each of its maps
    (already calibrated), with the detector's current `score_kernel`."""
    from realnet.model.discriminator import image_score

    fusion = model.fusion
    model.eval()
    with torch.no_grad():
        scores: list[list[torch.Tensor]] = [[] for _ in fusion.scales]
        for features in _backbone_batches(model, scale_images, batch_size, device, "fusion scales", progress):
            probabilities = model.probability_maps(model.selector(features))
            maps = [probabilities] + fusion.branch_maps(features, tuple(probabilities.shape[-2:]))
            for kept, map_ in zip(scores, maps):
                kept.append(image_score(map_, model.score_kernel))
    fusion.calibrate_scales(*(float(torch.cat(kept).mean()) for kept in scores))


def calibrate_threshold(scores: np.ndarray, quantile: float) -> float:
    """The is_anomalous threshold: a quantile of held-out normal training scores."""
    return float(np.quantile(scores.astype(np.float64), quantile))


def calibrate_fusion_and_threshold(model: RealNet, fit_images: np.ndarray, holdout: np.ndarray,
                                   config: RealNetConfig, device: torch.device,
                                   progress: bool = False) -> tuple[float, str]:
    """What `fit` calibrates once the networks are final: the fused maps (`calibrate_fusion`),
    then the is_anomalous threshold, both on the held-out images (on the fit images only when
    there are none). Returns the threshold and which images set it."""
    calibration_images, source = holdout, "held-out normal training images"
    if len(holdout) == 0:
        calibration_images, source = fit_images, "fit images (no held-out images: biased low)"
    calibrate_fusion(model, fit_images, calibration_images, config, device, progress)
    _, scores = score_images(model, calibration_images, device, config.train.batch_size)
    return calibrate_threshold(scores, config.train.threshold_quantile), source


FAINT_DEFECT_CONTRAST = 0.35  # faint copies keep this fraction of each painted change


def painted_validation_set(holdout: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out normal images, then copies with painted defects (scratches, holes, stains,
    cracks from `realnet.data.demo`, code that shares nothing with the training-time synthesis),
    then faint copies that keep only `FAINT_DEFECT_CONTRAST` of each painted change (real defects
    are often that subtle; the full-contrast set saturates early): images (3n, S, S, 3) and the
    painted defects' masks (n, S, S)."""
    from realnet.data.demo import draw_defect_rgb

    painted = [draw_defect_rgb(image, stream_rng(seed, Stream.PAINTED_DEFECT, i)) for i, image in enumerate(holdout)]
    strong = np.stack([p[0] for p in painted])
    change = strong.astype(np.float32) - holdout.astype(np.float32)
    faint = np.clip(np.round(holdout + FAINT_DEFECT_CONTRAST * change), 0, 255).astype(np.uint8)
    return np.concatenate([holdout, strong, faint]), np.stack([p[1] for p in painted])


def painted_validation_metrics(maps: np.ndarray, scores: np.ndarray, defect_masks: np.ndarray) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of the normal images against the painted ones (val_)
    and against the faint ones (val_faint_), from maps and scores of `painted_validation_set`."""
    from realnet.metrics import aupro, image_auroc, pixel_auroc

    n = len(defect_masks)
    masks = np.concatenate([np.zeros_like(defect_masks, dtype=bool), defect_masks])
    labels = np.r_[np.zeros(n), np.ones(n)]
    metrics: dict[str, float] = {}
    for prefix, part in (("val", slice(n, 2 * n)), ("val_faint", slice(2 * n, 3 * n))):
        part_maps = np.concatenate([maps[:n], maps[part]])
        metrics |= {f"{prefix}_image_auroc": image_auroc(np.r_[scores[:n], scores[part]], labels),
                    f"{prefix}_pixel_auroc": pixel_auroc(part_maps, masks),
                    f"{prefix}_aupro": aupro(part_maps, masks)}
    return metrics


def validate_on_painted_defects(model: RealNet, holdout: np.ndarray, config: RealNetConfig,
                                device: torch.device, seed: int | None = None) -> dict[str, float]:
    """Metrics of the detector on `painted_validation_set` (painted with `seed`, by default the
    run's). This is the signal for choosing hyperparameters: never the test split."""
    if len(holdout) < 2:
        return {}
    images, defect_masks = painted_validation_set(holdout, config.train.holdout_seed if seed is None else seed)
    maps, scores = score_images(model, images, device, config.train.batch_size)
    return painted_validation_metrics(maps, scores, defect_masks) | {"val_n_normal": len(holdout),
                                                                     "val_n_painted": len(holdout)}


def check_finished_run_inputs(request: FitRequest, meta: dict[str, Any]) -> None:
    """--resume on a finished run returns it only for the training images and backbone weights it
    was trained on (a run of an older realnet that recorded no image digests: the images unchecked)."""
    recorded = meta["fit"].get("training_image_sha256")
    if recorded is not None:
        records = load_dataset(request.data_root, request.category, request.dataset, **request.folder_options)
        now = training_image_digests(records)
        if now != recorded:
            counts = f"{len(recorded)} then, {len(now)} now" if len(now) != len(recorded) else "as many, other contents"
            raise RealnetError(f"{request.out}: the finished run was trained on other training images ({counts}); "
                               "give the same ones or choose another --out")
    if build_backbone(request.config).identity["sha256"] != meta["backbone"]["sha256"]:
        raise RealnetError(f"{request.out}: the finished run was trained with other backbone weights; give the same "
                           "ones or choose another --out")


def warn_of_rounding_changes(request: FitRequest, started_with: dict[str, Any]) -> None:
    """A resume may change train.feature_cache_gb, but whether the normal images' features come from
    the cache changes their last bits, so the weights end close to, not equal to, an uninterrupted run's."""
    before = started_with.get("train", {}).get("feature_cache_gb", request.config.train.feature_cache_gb)
    if before != request.config.train.feature_cache_gb and launched_rank() == 0:
        tqdm.write(f"realnet: train.feature_cache_gb changed ({before:g} -> {request.config.train.feature_cache_gb:g}); "
                   "cached and uncached features round differently, so the weights will end close to, not bit for "
                   "bit equal to, an uninterrupted run's", file=sys.stderr)


def check_resumable(request: FitRequest, state: dict[str, Any], inputs: dict[str, Any], n_fit_images: int) -> None:
    """A killed run continues only with the settings and data it was started with: another
    seed, step budget, architecture or dataset would silently mix two runs in one set of weights."""
    started_with = state.get("config")
    if started_with is None:
        raise RealnetError(f"{request.out / checkpoint.RESUME_STATE} was written by an older realnet that did not "
                           "record the run's settings; delete it to start the run again, or choose another --out")
    check_same_settings(request, started_with, "the killed run was started with")
    warn_of_rounding_changes(request, started_with)
    if ("select_on_test" in state) != request.select_on_test:
        raise RealnetError(f"{request.out}: the killed run was started {'with' if 'select_on_test' in state else 'without'}"
                           " --select-on-test; resume it the same way")
    check_same_evaluation_steps(request, state.get("select_on_test", {}).get("every"), n_fit_images, "the killed run",
                                "resume it with --eval-every {every}")
    check_same_inputs(request, state.get("inputs"), inputs, "the killed run was started on")


BF16, FP32 = "bf16 autocast", "fp32"  # the precision a run trained in, as model.json and resume.pt name it


def trains_in_bf16(request: FitRequest, device: torch.device, resume_state: dict[str, Any] | None,
                   warn: bool) -> bool:
    """Whether the steps run under bf16 autocast: with train.bf16 where `device` has native bf16
    kernels (elsewhere emulated bf16 is slower than fp32, so fp32, said on stderr); a resumed run
    in the precision it was killed in, so that no run mixes the two while model.json names one."""
    native = bf16_autocast_available(device)
    killed_in = None if resume_state is None else resume_state.get("precision")  # absent: not recorded (older)
    if killed_in == BF16 and not native:
        raise RealnetError(f"{request.out}: the killed run trained in bf16 autocast, which {device} has no native "
                           "kernels for; resume it where bf16 is native (a GPU of compute capability 8.0 or later, "
                           "a CPU with AVX512-BF16 or AMX), or choose another --out to train in fp32")
    if request.config.train.bf16 and killed_in == FP32:
        if warn:
            tqdm.write("realnet: train.bf16 ignored: the killed run trained in fp32; it goes on in fp32",
                       file=sys.stderr)
        return False
    if request.config.train.bf16 and not native and warn:
        tqdm.write(f"realnet: train.bf16 ignored: {device} has no native bf16 kernels; training in fp32",
                   file=sys.stderr)
    return request.config.train.bf16 and native


def check_same_evaluation_steps(request: FitRequest, every: int | None, n_fit_images: int, run: str,
                                remedy: str) -> None:
    """--select-on-test chooses among the steps it evaluated: another interval is another protocol.
    `every` is None where an older realnet did not record it."""
    if not request.select_on_test or every is None:
        return
    now = evaluation_interval(request, n_fit_images)
    if every != now:
        raise RealnetError(f"{request.out}: {run} evaluated the test split every {every} steps (now "
                           f"{now}); {remedy.format(every=every)}")


EVALUATION_EPOCHS = 5  # the authors' code evaluated on the test split every 5 epochs (notes)


def evaluation_interval(request: FitRequest, n_fit_images: int) -> int:
    """Steps between --select-on-test's evaluations: --eval-every; else, for a schedule in epochs,
    every EVALUATION_EPOCHS epochs as the authors' code; else (a step budget) train.checkpoint_every,
    so then that setting too decides which steps can be selected."""
    tc = request.config.train
    if request.eval_every:
        return request.eval_every
    if not tc.steps:
        return EVALUATION_EPOCHS * steps_per_epoch(n_fit_images, tc.batch_size)
    return tc.checkpoint_every


def check_same_settings(request: FitRequest, recorded_config: dict[str, Any], what: str) -> None:
    changes = setting_changes(recorded_config, request.config.to_dict())
    if changes:
        shown = ", ".join(f"{k}={before!r} (now {now!r})" for k, before, now in changes[:4])
        raise RealnetError(f"{request.out}: {what} other settings: {shown}"
                           f"{' ...' if len(changes) > 4 else ''}; give the settings it was started with")


def run_inputs(request: FitRequest, n_images: int | None = None, world_size: int | None = None) -> dict[str, Any]:
    """What a run trains on besides its config: the data it reads and, once loaded, how many
    training images were readable and how many processes shared each batch."""
    # the folder dataset's directories as text: resume.pt is read back with weights_only, which
    # refuses pathlib objects, and model.json records text that must compare equal on a resume
    folder_options = {name: str(value) if isinstance(value, PurePath) else value
                      for name, value in request.folder_options.items()}
    inputs: dict[str, Any] = {"root": str(request.data_root), "category": request.category,
                              "dataset": request.dataset, "folder_options": folder_options}
    if request.config.synthesis.sources.get("dtd", 0) > 0:  # also when found through $REALNET_DTD or the root
        inputs["dtd"] = str(find_dtd_root(request.config.synthesis.dtd_root, request.data_root).resolve())
    if request.config.synthesis.sources.get("sia", 0) > 0 and request.config.synthesis.sia_root is not None:
        inputs["sia"] = str(Path(request.config.synthesis.sia_root).resolve())  # a relative root: another bank elsewhere
    if n_images is not None:
        inputs |= {"n_training_images": n_images, "world_size": world_size}
    return inputs


def check_same_inputs(request: FitRequest, recorded: dict[str, Any] | None, now: dict[str, Any], what: str) -> None:
    """Refuse to continue a run on other data (or another image count or number of processes):
    the weights would mix two trainings while model.json named one. `recorded` None: written by
    a realnet that did not record them."""
    recorded = {} if recorded is None else {**recorded, "root": str(Path(recorded["root"]).resolve())}
    differing = [f"{key} {recorded[key]!r} (now {now.get(key)!r})" for key in sorted(recorded)
                 if recorded[key] != now.get(key)]
    if differing:
        raise RealnetError(f"{request.out}: {what} other inputs: {', '.join(differing)}; give the same ones "
                           "or choose another --out")


AFS_RECORD = "afs.json"  # every channel's AFS loss, beside the model


RUN_FILES = (checkpoint.RESUME_STATE, checkpoint.MODEL_WEIGHTS, checkpoint.MODEL_META, AFS_RECORD)


def foreign_entries(out: Path) -> list[str]:
    """The names in `out` that are neither a file fit writes nor one's temporary: what a killed fit
    cannot have left there."""
    return sorted(entry.name for entry in out.iterdir() if entry.name not in RUN_FILES
                  and not checkpoint.is_temporary_of(entry.name, RUN_FILES)) if out.exists() else []


def prepare_run_dir(request: FitRequest) -> list[Path]:
    """Returns the folders this call created, innermost (the run folder) first, so that a failure
    can remove them."""
    out = request.out
    if out.exists() and not out.is_dir():
        raise RealnetError(f"--out {out} is a file; give a folder for the run")
    foreign = foreign_entries(out)
    # a run killed before its first checkpoint leaves no resume.pt, only what it was writing: half a
    # checkpoint (no one else's file, so a plain fit starts there), or, killed while saving the
    # finished model, its weights without model.json, which --resume trains again from the start
    killed_saving = (out / checkpoint.MODEL_WEIGHTS).exists() and not (out / checkpoint.RESUME_STATE).exists()
    if not request.resume:
        if (out / checkpoint.MODEL_META).exists():
            raise RealnetError(f"{out} already holds a finished run; choose another --out")
        if (out / checkpoint.RESUME_STATE).exists():
            raise RealnetError(f"{out} holds a killed run; use --resume to continue it or choose another --out")
        if foreign:
            raise RealnetError(f"{out} exists and is not empty; choose another --out")
        if killed_saving:
            raise RealnetError(f"{out} holds a run killed while saving its model ({checkpoint.MODEL_WEIGHTS} "
                               f"without {checkpoint.MODEL_META}); use --resume to train it again or choose "
                               "another --out")
    elif killed_saving:
        if foreign:
            raise RealnetError(f"{out}: nothing to resume (no {checkpoint.RESUME_STATE}), and it holds files of no "
                               f"realnet run ({', '.join(foreign[:3])}); choose another --out")
        if launched_rank() == 0:
            tqdm.write(f"realnet: {out}: the run was killed while saving its model, before any "
                       f"{checkpoint.RESUME_STATE}; training it again from the start", file=sys.stderr)
    if launched_rank() != 0:
        # torchrun starts every rank at once: the one that made the folder must be the one that removes
        # it on failure, so rank 0 alone makes it (the others write nothing there)
        return []
    created = missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.remove_stale_temporaries(out)  # of a run killed while it wrote a checkpoint
    return created


def fit(request: FitRequest) -> dict[str, Any]:
    """Train a detector and write RUN/model.safetensors + RUN/model.json. Returns the metadata."""
    request = replace(request, data_root=Path(request.data_root).resolve())  # test works from anywhere
    if request.resume and (request.out / checkpoint.MODEL_META).exists():
        meta = checkpoint.read_meta(request.out)  # finished: nothing to continue, if it is the same run
        check_same_settings(request, meta["config"], "the finished run was trained with")
        if (meta.get("protocol") == "select-on-test") != request.select_on_test:
            raise RealnetError(f"{request.out}: the finished run was trained "
                               f"{'without' if request.select_on_test else 'with'} --select-on-test; choose another --out "
                               "to train one the other way")
        check_same_evaluation_steps(request, meta["fit"].get("eval_every"), meta["fit"]["n_fit_images"],
                                    "the finished run", "choose another --out to select among other steps")
        check_same_inputs(request, meta["data"], run_inputs(request), "the finished run was trained on")
        check_finished_run_inputs(request, meta)
        # a kill after the model was saved; one rank removes it (all at once would race), and only when it is
        # there (unlink of a missing file fails on read-only media, where a finished run is kept)
        if launched_rank() == 0 and (request.out / checkpoint.RESUME_STATE).exists():
            (request.out / checkpoint.RESUME_STATE).unlink()
        return meta
    if request.select_on_test and (request.config.density.weight > 0 or request.config.memory.weight > 0):
        # the fused maps are calibrated once, after training; mid-run test scores would not be the fused ones
        raise RealnetError("--select-on-test reproduces the paper's protocol and needs density.weight=0 and "
                           "memory.weight=0 (with the cpu preset: --set density.weight=0 --set density.image_weight=null)")
    if request.select_on_test and request.config.train.ema_decay is not None:
        raise RealnetError("--select-on-test keeps the best live weights; it cannot be combined with train.ema_decay")
    if request.select_on_test and request.config.train.map_normalization != "none":
        # the position statistics are calibrated after training: mid-run test scores would not be the saved model's
        raise RealnetError("--select-on-test reproduces the paper's protocol and needs train.map_normalization=none")
    if request.select_on_test and request.config.rrs.recalibration_batches > 0:
        # the step is chosen on the live RRS statistics; recalibrating after would save another model
        raise RealnetError("--select-on-test keeps the best step as it was evaluated; it needs "
                           "rrs.recalibration_batches=0")
    created = prepare_run_dir(request)
    try:
        return _fit(request)
    except BaseException:
        # only rank 0 owns the folder (prepare_run_dir gives the others none), and a finished run (a
        # failure after saving it) is kept
        if created and not any(
                (request.out / name).exists() for name in (checkpoint.RESUME_STATE, checkpoint.MODEL_META)):
            shutil.rmtree(request.out, ignore_errors=True)
            remove_created_folders(created[1:])  # the parents --out named that did not exist
        raise


def _fit(request: FitRequest) -> dict[str, Any]:
    from realnet.engine import distributed

    config, tc = request.config, request.config.train
    started = time.time()
    context = distributed.init_for_device(request.device)
    device = context.device if context.enabled else resolve_device(request.device)
    main_process = context.rank == 0
    if tc.batch_size % context.world_size:
        raise RealnetError(f"train.batch_size={tc.batch_size} must be a multiple of the {context.world_size} "
                           "processes, so that every rank trains an equal shard of each batch")
    progress = request.progress and main_process
    request = replace(request, progress=progress)  # one progress bar under torchrun, not one per rank
    seed_everything(tc.seed)

    backbone = build_backbone(config).to(device)  # missing weights fail before the images are read
    records = load_dataset(request.data_root, request.category, request.dataset, **request.folder_options)
    rule = resolve_foreground(config.synthesis.foreground, request.dataset, request.category)
    images = load_training_images(request, records, rule)
    training_contents = training_image_digests(records)
    model = build_model(config, backbone).to(device)
    distributed.synchronize_batchnorm(model.trainable_modules(), context)  # before the optimizer takes the parameters
    synthesizer = build_synthesizer(config, rule, request.data_root, request.category, images.fit, records)
    batches = SyntheticBatches(synthesizer, images, tc.batch_size, tc.seed)
    trainable = model.trainable_modules()
    optimizer = adam(trainable.parameters(), tc.learning_rate, device)
    averaged = weight_average(trainable, tc.ema_decay)

    resume_state = checkpoint.load_resume_state(request.out) if request.resume else None
    selector_on_test = TestSetSelector(request, device, len(images.fit)) if request.select_on_test else None
    if not distributed.all_ranks_agree(-1 if resume_state is None else resume_state["step"], context):
        raise RealnetError(f"{request.out}: the ranks found different resume states (is --out on a file system "
                           "every node shares?); resume with the same resume.pt visible to all ranks")
    # the weights too, not only the config's name or path for them: a file replaced at the same path,
    # or another download, would train on with another backbone than AFS chose the channels on
    inputs = {**run_inputs(request, len(images.fit) + len(images.holdout), context.world_size),
              "backbone_sha256": backbone.identity["sha256"],
              "training_images_sha256": hashlib.sha256("".join(training_contents).encode()).hexdigest()}
    if resume_state is not None:
        check_resumable(request, resume_state, inputs, len(images.fit))
        adopt_thread_count(resume_state.get("threads"), device, warn=main_process)
        model.load_state_dict(resume_state["model"], strict=False)
        optimizer.load_state_dict(resume_state["optimizer"])
        if selector_on_test is not None:
            selector_on_test.load_state_dict(resume_state["select_on_test"])
        if averaged is not None:
            averaged.load_state_dict(resume_state["averaged"])
        start_step, selection = resume_state["step"], resume_state["selection"]
        elapsed_before = resume_state["elapsed_s"]
    else:
        selection = run_feature_selection(model, batches, config, device, progress)
        start_step, elapsed_before = 0, 0.0
    use_bf16 = trains_in_bf16(request, device, resume_state, warn=main_process)
    precision = BF16 if use_bf16 else FP32
    distributed.broadcast_state(model.selector, context)
    distributed.broadcast_state(trainable, context)
    total_steps = tc.steps or tc.epochs * steps_per_epoch(len(images.fit), tc.batch_size)
    normal_features = NormalFeatures(model, images.fit, device, tc.feature_cache_gb, tc.batch_size, progress)
    training_features = TrainingFeatures(model, normal_features, device, batches.has_feature_noise)

    autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    reduce_gradients = lambda: distributed.average_gradients(trainable.parameters(), context)  # noqa: E731

    model.train()
    bar = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, desc="fit",
               disable=not progress, dynamic_ncols=True)
    losses: dict[str, float] = {}
    for step in bar:
        batch = batches.for_step(step, context.rank, context.world_size)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, total_steps, tc.learning_rate, tc.lr_schedule)
        losses = train_step(model, optimizer, *training_features(batch), torch.from_numpy(batch.masks).to(device),
                            autocast, reduce_gradients, tc.focal_gamma)
        distributed.broadcast_buffers(trainable, context)
        if averaged is not None:
            averaged.update_parameters(trainable)
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        done = step + 1
        if not math.isfinite(losses["loss"]):  # before this step's checkpoint: the last one is still finite
            raise RealnetError(f"{request.out}: training diverged: the loss is {losses['loss']} at step {done}; lower "
                               f"train.learning_rate (now {tc.learning_rate:g}) or turn off train.bf16, and fit again "
                               "(a --resume would diverge the same way)")
        if selector_on_test is not None and (done % selector_on_test.every == 0 or done == total_steps):
            selector_on_test.consider(model, done)  # before the checkpoint, which then holds this step's verdict
            model.train()
        if main_process and done < total_steps and done % tc.checkpoint_every == 0:
            checkpoint.save_resume_state(request.out, {
                "model": checkpoint.detector_state(model), "optimizer": optimizer.state_dict(),
                "step": done, "selection": selection,
                "elapsed_s": elapsed_before + time.time() - started,
                "config": config.to_dict(), "inputs": inputs, "precision": precision,
                "threads": torch.get_num_threads(),
                **({"averaged": averaged.state_dict()} if averaged is not None else {}),
                **({"select_on_test": selector_on_test.state_dict()} if selector_on_test is not None else {}),
            })
    bar.close()
    losses = distributed.average_scalars(losses, context)  # the whole batch's, not rank 0's shard's
    if averaged is not None:
        trainable.load_state_dict(averaged.module.state_dict())

    model.eval()
    if selector_on_test is not None:
        selector_on_test.restore_best(model)
    recalibrate_batch_statistics(model, batches, training_features, total_steps, config.rrs.recalibration_batches,
                                 discriminator=averaged is not None, rank=context.rank,
                                 world_size=context.world_size, progress=progress)
    calibrate_map_normalization(model, normal_features, len(images.fit), tc.batch_size, progress)
    threshold, threshold_source = calibrate_fusion_and_threshold(model, images.fit, images.holdout, config, device,
                                                                 progress)
    validation = validate_on_painted_defects(model, images.holdout, config, device)
    meta = {
        "config": config.to_dict(),
        "preset": config.preset,
        "data": run_inputs(request),
        "backbone": backbone.identity,
        "selection": {k: v for k, v in selection.items() if k != "losses"},
        "channels": {"backbone": backbone.channels, "selected": model.selector.out_channels,
                     "strides": backbone.strides},
        "threshold": threshold,
        "threshold_quantile": tc.threshold_quantile,
        "threshold_source": threshold_source,  # and of the fused maps' scales, when it has them
        "protocol": "select-on-test" if request.select_on_test else "final-model",
        "fit": {
            "steps": total_steps, "n_fit_images": int(len(images.fit)),
            "n_holdout_images": int(len(images.holdout)), "final_losses": losses,
            "wall_s": round(time.time() - started + (elapsed_before if resume_state else 0.0), 1),
            "device": str(device), "world_size": context.world_size,
            "precision": precision,
            "environment": compute_environment(device),
            "validation": validation,
            "training_image_sha256": training_contents,
            # the steps the test split chose among: part of the protocol a selected model reports under
            **({"selected_step": selector_on_test.best_step, "selection_metrics": selector_on_test.best_metrics,
                "eval_every": selector_on_test.every} if selector_on_test else {}),
        },
    }
    if main_process:
        if selection.get("losses") is not None:  # before model.json, which marks the run finished
            checkpoint.write_json(request.out / AFS_RECORD, selection)
        checkpoint.save_model(request.out, model, meta)
        (request.out / checkpoint.RESUME_STATE).unlink(missing_ok=True)
    distributed.barrier(context)
    distributed.cleanup(context)
    return meta


class TestSetSelector:
    """The authors' protocol, only on request: evaluate on the TEST split every k steps and keep
    the best model. This is test-set model selection; metrics.json labels it as such."""

    def __init__(self, request: FitRequest, device: torch.device, n_fit_images: int):
        from realnet.engine.evaluate import load_test_split

        self.split = load_test_split(request.data_root, request.category, request.dataset,
                                     request.config.train.image_size, request.folder_options,
                                     skip_bad=request.skip_bad, progress=request.progress)
        self.device, self.batch_size = device, request.config.train.batch_size
        self.every = evaluation_interval(request, n_fit_images)
        self.best_key: tuple[float, float] | None = None
        self.best_step, self.best_metrics, self.best_state = 0, {}, None

    def consider(self, model: RealNet, step: int) -> None:
        from realnet.engine.evaluate import compute_metrics

        maps, scores = score_images(model, self.split.images, self.device, self.batch_size)
        metrics = compute_metrics(maps, scores, self.split, detailed=False)
        key = (metrics["image_auroc"], metrics["pixel_auroc"])
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_step, self.best_metrics = key, step, metrics
            self.best_state = {k: v.clone() for k, v in checkpoint.detector_state(model).items()}

    def state_dict(self) -> dict[str, Any]:
        """The best model so far, so that a resumed run still compares against it."""
        return {"best_key": self.best_key, "best_step": self.best_step, "best_metrics": self.best_metrics,
                "best_state": self.best_state, "every": self.every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_key, self.best_step = state["best_key"], state["best_step"]
        self.best_metrics, self.best_state = state["best_metrics"], state["best_state"]

    def restore_best(self, model: RealNet) -> None:
        model.load_state_dict(self.best_state, strict=False)
