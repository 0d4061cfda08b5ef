"""Nearest-neighbour memory branch fused into RealNet's anomaly map (ours, not in the paper).

PatchCore (Roth et al., CVPR 2022) scores a position by the distance of its locally aggregated
backbone features to the nearest normal patch in a memory bank, a greedy coreset of the normal
patches. Unlike the per-position Gaussian of `realnet.model.density`, it assumes neither a
distribution nor that a patch's normal look is tied to its position. `MapFusion` fuses it with
the discriminator's map like the density.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from realnet.model.density import local_embedding


DISTANCE_BLOCK_ELEMENTS = 2**24  # 64 MB of float32 distances at a time
PROJECTION_BLOCK_ROWS = 2**16  # rows projected at a time, so that no float32 copy of all points is made


def squared_distances(points: Tensor, centres: Tensor) -> Tensor:
    """|x - c|^2 for every row x of points (N, C) and c of centres (M, C), as one matrix product
    (exportable to ONNX, unlike torch.cdist): (N, M). Both are first moved by the centres' mean,
    which leaves the distances unchanged and keeps float32 from cancelling when the features lie
    far from the origin."""
    origin = centres.mean(0)
    points, centres = points - origin, centres - origin
    products = points @ centres.T
    return (points.square().sum(1, keepdim=True) - 2 * products + centres.square().sum(1)).clamp_min(0)


@torch.no_grad()
def greedy_coreset(points: Tensor, size: int, projection_dim: int | None, seed: int,
                   progress: Callable[[Iterable[int]], Iterable[int]] = iter,
                   device: torch.device | None = None) -> Tensor:
    """Indices of `size` rows of points (N, C) chosen by greedy k-centre selection (PatchCore's
    coreset subsampling): start from a seeded random row, then repeatedly add the row farthest
    from every row chosen so far. Distances are measured in a seeded Gaussian random projection
    to `projection_dim` dimensions (Johnson-Lindenstrauss; None or >= C: no projection).
    `progress` wraps the selection loop (e.g. a progress bar). The selection runs on `device`
    (default: the points' own), which then holds only the projected points; the indices are
    returned on the points' device."""
    n, channels = points.shape
    if size >= n:
        return torch.arange(n, device=points.device)
    device = points.device if device is None else device
    generator = torch.Generator().manual_seed(seed)
    if projection_dim is not None and projection_dim < channels:
        projection = (torch.randn(channels, projection_dim, generator=generator) / projection_dim ** 0.5).to(points)
        projected = torch.cat([block.float() @ projection.float() for block in points.split(PROJECTION_BLOCK_ROWS)])
    else:
        projected = points.float()
    # (C, N): a row vector times it runs ~3x faster on the CPU than (N, C) @ c; only this copy is kept
    columns = projected.to(device).T.contiguous()
    del projected
    columns -= columns.mean(1, keepdim=True)  # as in squared_distances: no float32 cancellation far from 0
    norms = columns.square().sum(0)
    chosen = torch.empty(size, dtype=torch.long, device=device)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    nearest = torch.full((n,), float("inf"), device=device)
    for i in progress(range(1, size)):
        centre = columns[:, chosen[i - 1]]
        nearest = torch.minimum(nearest, norms - 2 * (centre @ columns) + centre.square().sum())
        chosen[i] = nearest.argmax()
    return chosen.to(points.device)


class FeatureMemory(nn.Module):
    """A memory bank (M, C) of normal patch embeddings; returns each position's distance to its
    nearest neighbour in the bank (B, h, w). Empty until `calibrate`; a checkpoint's bank of any
    size loads into it."""

    def __init__(self, channels: int, neighbourhood: int = 3):
        super().__init__()
        self.neighbourhood = neighbourhood
        self.register_buffer("bank", torch.zeros(0, channels))

    def embed(self, features: list[Tensor]) -> Tensor:
        return local_embedding(features, self.neighbourhood)

    @torch.no_grad()
    def calibrate(self, embeddings: Tensor, ratio: float, projection_dim: int | None, seed: int,
                  progress: Callable[[Iterable[int]], Iterable[int]] = iter) -> None:
        """The bank becomes the greedy coreset of a `ratio` fraction of the patch embeddings
        (N, C) of the normal fit images (they may stay on the CPU; the selection runs on the
        bank's device)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.bank.shape[1]:
            raise ValueError(f"FeatureMemory: embeddings of shape {tuple(embeddings.shape)} do not have "
                             f"{self.bank.shape[1]} channels")
        size = max(1, round(ratio * len(embeddings)))
        chosen = greedy_coreset(embeddings, size, projection_dim, seed, progress, device=self.bank.device)
        self.bank = embeddings[chosen].float().to(self.bank.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "bank")
        if stored is not None:  # the bank's length is the run's; a wrong channel count is still refused
            self.bank = torch.empty(len(stored), self.bank.shape[1], dtype=self.bank.dtype, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(self.bank) == 0:
            raise RuntimeError("FeatureMemory: the bank is empty; calibrate it on normal images first")
        embedding = self.embed(features)
        b, c, h, w = embedding.shape
        rows = embedding.permute(0, 2, 3, 1).reshape(-1, c)
        if torch.jit.is_tracing():  # one product, so that an exported graph keeps a dynamic batch
            nearest = squared_distances(rows, self.bank).amin(1)
        else:  # row blocks bound the (rows, bank) distance matrix to DISTANCE_BLOCK_ELEMENTS
            block = max(1, DISTANCE_BLOCK_ELEMENTS // len(self.bank))
            nearest = torch.cat([squared_distances(part, self.bank).amin(1) for part in rows.split(block)])
        return nearest.sqrt().reshape(b, h, w)
