"""RealNet composed from its parts: frozen backbone -> feature selection (AFS) -> per-layer
reconstruction -> residuals -> RRS -> discriminator -> anomaly map (optionally standardised per
position, or fused with feature-density and memory-bank maps) and image score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realnet.model.afs import FeatureSelector
from realnet.model.fusion import MapFusion
from realnet.model.discriminator import PositionNormalization, anomaly_map, image_score
from realnet.model.reconstruction import aligned_targets
from realnet.model.rrs import ResidualSelection, reconstruction_residuals


# the mirrorings whose maps the heatmap averages, by count: image dims flipped (none, left-right, up-down, both)
HEATMAP_FLIPS = {1: ((),), 2: ((), (-1,)), 4: ((), (-1,), (-2,), (-2, -1))}


@dataclass
class RealNetOutput:
    reconstructions: list[Tensor]
    logits: Tensor  # (B, 2, H, W) discriminator logits at image resolution


class RealNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        selector: FeatureSelector,
        reconstruction: nn.Module,
        residual_selection: ResidualSelection,
        discriminator: nn.Module,
        score_kernel: int = 16,
        map_normalization: PositionNormalization | None = None,
        fusion: MapFusion | None = None,
        heatmap_flips: int = 1,
    ):
        super().__init__()
        self.backbone = backbone
        self.selector = selector
        self.reconstruction = reconstruction
        self.residual_selection = residual_selection
        self.discriminator = discriminator
        self.score_kernel = score_kernel
        self.map_normalization = map_normalization or nn.Identity()
        self.fusion = fusion
        self.heatmap_flips = heatmap_flips

    @torch.no_grad()
    def select_features(self, images: Tensor) -> list[Tensor]:
        """phi_k then the selection varphi_k, for images in [0, 1]. Never trained."""
        return self.selector(self.backbone(images))

    def forward(self, features: list[Tensor]) -> RealNetOutput:
        reconstructions = self.reconstruction(features)
        residuals = reconstruction_residuals(features, reconstructions)
        logits = self.discriminator(self.residual_selection(residuals))
        return RealNetOutput(reconstructions, logits)

    @torch.no_grad()
    def probability_maps(self, features: list[Tensor]) -> Tensor:
        """The discriminator's anomaly probability (B, H, W), before any position normalisation."""
        return anomaly_map(self(features).logits.float())

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B, H, W) and image scores (B,). The maps are probabilities in [0, 1];
        standardised scores when the detector has a `PositionNormalization`; fused scores that
        read about 1 on normal images when it has a `MapFusion`. With `heatmap_flips` > 1 the
        maps take the mean of the discriminator's maps over mirrored copies of the images; the
        image scores pool the unmirrored map."""
        if self.heatmap_flips == 1:
            backbone_features = self.backbone(images)
            probabilities = self.probability_maps(self.selector(backbone_features))
            pixel_probabilities = None
        else:
            backbone_features, probabilities, pixel_probabilities = self.mirrored_probability_maps(images)
            pixel_probabilities = self.map_normalization(pixel_probabilities)
        maps = score_maps = self.map_normalization(probabilities)
        if self.fusion is not None:
            maps, score_maps = self.fusion(maps, backbone_features, pixel_probabilities)
        elif pixel_probabilities is not None:
            maps = pixel_probabilities
        return maps, image_score(score_maps, self.score_kernel)

    def mirrored_probability_maps(self, images: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """One backbone pass over the images and their `heatmap_flips` - 1 mirrored copies: the
        unmirrored images' backbone features and probability map, and the mean of all the copies'
        maps, each mirrored back (B, H, W)."""
        flips = HEATMAP_FLIPS[self.heatmap_flips]
        views = torch.cat([images.flip(dims) if dims else images for dims in flips])
        backbone_features = self.backbone(views)
        batch = images.shape[0]
        maps = self.probability_maps(self.selector(backbone_features)).split(batch)
        mean_map = torch.stack([m.flip(dims) if dims else m for m, dims in zip(maps, flips)]).mean(0)
        return [f[:batch] for f in backbone_features], maps[0], mean_map

    def trainable_modules(self) -> nn.ModuleDict:
        """What fit optimises and checkpoints (the backbone is never stored)."""
        return nn.ModuleDict(
            {
                "reconstruction": self.reconstruction,
                "residual_selection": self.residual_selection,
                "discriminator": self.discriminator,
            }
        )


def reconstruction_loss(reconstructions: list[Tensor], normal_features: list[Tensor]) -> Tensor:
    """Eq. 5: sum over layers of the mean squared error between G_k(varphi_k(A)) and varphi_k(I),
    the target at the reconstruction's size (see `aligned_targets`)."""
    targets = aligned_targets(normal_features, reconstructions)
    return sum(F.mse_loss(g.float(), target.float()) for g, target in zip(reconstructions, targets))


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """L_seg: 2-class cross-entropy over all pixels against the synthetic anomaly mask."""
    return F.cross_entropy(logits.float(), masks.long())


def realnet_loss(
    output: RealNetOutput, normal_features: list[Tensor], masks: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 6: L = L_recon + L_seg (both weight 1; normal samples count too)."""
    recon = reconstruction_loss(output.reconstructions, normal_features)
    seg = segmentation_loss(output.logits, masks)
    return recon + seg, {"recon": float(recon.detach()), "seg": float(seg.detach())}
