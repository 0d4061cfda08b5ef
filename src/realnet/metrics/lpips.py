"""LPIPS (Zhang et al. 2018) and cluster-LPIPS diversity (paper Appendix C.6, after DFMGAN).

LPIPS(x, y) = sum_l mean_hw sum_c w_lc (f_lchw(x) - f_lchw(y))^2, with f_l the layer-l features
unit-normalised over channels. The official w are learned 1x1 layers for AlexNet/VGG/SqueezeNet
features; without them every w_lc = 1 (the "uniform" variant, LPIPS's own unlearned baseline),
which works on any backbone. Either way LPIPS is a squared Euclidean distance between the
embeddings concat_l sqrt(w_l / (H_l W_l)) * f_l, which is how it is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from realnet.numerics import as_float64

NORMALISATION_EPS = 1e-10


def normalize_channels(features: Tensor) -> Tensor:
    """Unit length over the channel dimension at every position."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + NORMALISATION_EPS)


def lpips_embedding(feature_maps: Sequence[Tensor], weights: Sequence[Tensor] | None = None) -> Tensor:
    """(B, D) vectors whose squared Euclidean distances are LPIPS; `weights` holds one
    non-negative (C_l,) vector per layer, None for uniform weights."""
    parts = []
    for layer, maps in enumerate(feature_maps):
        maps = normalize_channels(maps.float())
        scale = maps.new_tensor(1.0 / (maps.shape[2] * maps.shape[3])).sqrt()
        if weights is not None:
            scale = scale * weights[layer].to(maps).sqrt().reshape(1, -1, 1, 1)
        parts.append((maps * scale).flatten(1))
    return torch.cat(parts, dim=1)


def lpips_weights_from_state(state: Mapping[str, Tensor], channels: Sequence[int]) -> list[Tensor]:
    """The per-layer weights of an official LPIPS linear-layer state dict (keys
    `lin{l}.model.1.weight`, shape (1, C_l, 1, 1)) for a backbone with these channels."""
    weights = []
    for layer, count in enumerate(channels):
        key = f"lin{layer}.model.1.weight"
        if key not in state:
            raise ValueError(f"has no {key} (needs one linear layer per feature layer, {len(channels)} in all)")
        weight = state[key].float().reshape(-1)
        if weight.numel() != count:
            raise ValueError(f"{key} has {weight.numel()} channels but feature layer {layer} has {count}")
        if (weight < 0).any():
            raise ValueError(f"{key} has negative weights")
        weights.append(weight)
    if f"lin{len(channels)}.model.1.weight" in state:
        raise ValueError(f"has more linear layers than the {len(channels)} feature layers")
    return weights


def squared_distances(a: Tensor, b: Tensor, chunk: int = 256) -> Tensor:
    """(Na, Nb) squared Euclidean distances in float64, chunked to bound memory."""
    a, b = as_float64(a), as_float64(b)
    rows = [torch.cdist(a[i:i + chunk], b).square() for i in range(0, len(a), chunk)]
    return torch.cat(rows) if rows else a.new_zeros((0, len(b)))


def cluster_lpips(real: Tensor, fake: Tensor) -> dict[str, float | int]:
    """Cluster-LPIPS (Appendix C.6): each of the N real images is a cluster centre; every fake
    image joins the centre at the lowest LPIPS; the score is the mean over clusters of the mean
    pairwise LPIPS of the fakes inside. Clusters with fewer than 2 fakes have no pair and are left
    out (`clusters_used` counts the others). Inputs are `lpips_embedding` outputs."""
    if len(real) < 1 or len(fake) < 2:
        raise ValueError("cluster-LPIPS needs at least one real and two synthetic images")
    assignment = squared_distances(fake, real).argmin(dim=1)
    means = []
    for centre in range(len(real)):
        members = fake[assignment == centre]
        if len(members) < 2:
            continue
        pairs = squared_distances(members, members)
        upper = torch.triu_indices(len(members), len(members), offset=1)
        means.append(pairs[upper[0], upper[1]].mean())
    if not means:
        raise ValueError("no cluster holds two synthetic images; use more synthetic images")
    return {"cluster_lpips": float(torch.stack(means).mean()), "clusters_used": len(means), "clusters": len(real)}
