"""Fusion of the discriminator's map with training-free maps of the backbone features (ours).

fused = w_p * p / b_p + w_d * d / b_d + w_k * k / b_k, where p is the discriminator's map, d the
feature density's (`realnet.model.density`), k the memory bank's (`realnet.model.memory`),
w_p = 1 - w_d - w_k, and each b the mean image score of held-out normal images under its map,
so that every map reads about 1 on a normal image. An added constant would change no ranking, so
no offset is needed. The image score may pool the maps fused at its own density weight (same
scales), while the pixel map keeps w_d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realnet.model.density import FeatureDensity
from realnet.model.memory import FeatureMemory


class MapFusion(nn.Module):
    """The weighted sum of the module docstring at image resolution. `scales` holds one b per
    map, in the order discriminator, density (when present), memory (when present); all 1 until
    `calibrate_scales`."""

    def __init__(self, density: FeatureDensity | None = None, density_weight: float = 0.0,
                 memory: FeatureMemory | None = None, memory_weight: float = 0.0,
                 image_density_weight: float | None = None):
        super().__init__()
        if density is None and memory is None:
            raise ValueError("MapFusion: nothing to fuse; give a density, a memory or both")
        self.density = density
        self.memory = memory
        self.set_weights(density_weight, memory_weight)
        self.set_image_weight(image_density_weight)
        self.register_buffer("scales", torch.ones(1 + len(self.branches())))

    def named_branches(self) -> list[tuple[str, nn.Module]]:
        """The fused maps the detector has, in `scales` order after the discriminator."""
        return [(name, branch) for name, branch in (("density", self.density), ("memory", self.memory))
                if branch is not None]

    def branches(self) -> list[nn.Module]:
        return [branch for _, branch in self.named_branches()]

    def set_weights(self, density_weight: float, memory_weight: float) -> None:
        given = {"density": density_weight, "memory": memory_weight}
        present = dict(self.named_branches())
        for name, weight in given.items():
            if name not in present and weight != 0:
                raise ValueError(f"MapFusion: a {name} weight of {weight} but no {name} map to fuse")
        branch_weights = [given[name] for name in present]
        if any(not 0 <= w <= 1 for w in branch_weights) or sum(branch_weights) > 1 + 1e-9:
            raise ValueError("MapFusion: each fused map's weight must be in [0, 1] and their sum at most 1, got "
                             f"density {density_weight}, memory {memory_weight}")
        self.weights = [max(0.0, 1 - sum(branch_weights))] + branch_weights

    def set_image_weight(self, image_density_weight: float | None) -> None:
        """The density weight of the map the image score pools; None: the pixel map's."""
        if image_density_weight is not None and (self.density is None or self.memory is not None
                                                 or not 0 <= image_density_weight <= 1):
            raise ValueError("MapFusion: an image density weight needs a density alone and a weight in [0, 1], "
                             f"got {image_density_weight}")
        self.image_weights = (None if image_density_weight is None
                              else [1 - image_density_weight, image_density_weight])

    @property
    def image_density_weight(self) -> float | None:
        """What `set_image_weight` was given."""
        return None if self.image_weights is None else self.image_weights[1]

    def branch_maps(self, features: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
        """d and/or k at image resolution, each (B, H, W)."""
        return [F.interpolate(branch(features).unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
                for branch in self.branches()]

    @torch.no_grad()
    def calibrate_scales(self, *scales: float) -> None:
        names = ["discriminator"] + [name for name, _ in self.named_branches()]
        if len(scales) != len(names):
            raise ValueError(f"MapFusion: needs {len(names)} mean normal image scores ({', '.join(names)}), got {scales}")
        for name, scale in zip(names, scales):
            if scale <= 0:
                raise ValueError(f"MapFusion: the {name} map's mean normal image score is {scale}; it must be "
                                 "positive (were the scales computed on the images the map was fitted on?)")
        self.scales.copy_(torch.tensor(scales))

    def weighted_sum(self, maps: list[Tensor], weights: list[float]) -> Tensor:
        """sum of w * m / b over the maps in `scales` order (the module docstring's formula)."""
        return sum(w * m / b for w, m, b in zip(weights, maps, self.scales))

    def forward(self, anomaly_map: Tensor, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The fused pixel map and the map the image score pools (the same one unless the image
        score has its own density weight)."""
        maps = [anomaly_map] + self.branch_maps(features, tuple(anomaly_map.shape[-2:]))
        fused = self.weighted_sum(maps, self.weights)
        return fused, fused if self.image_weights is None else self.weighted_sum(maps, self.image_weights)
