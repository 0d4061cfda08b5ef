"""RealNet composed from its parts: frozen backbone -> feature selection (AFS) -> per-layer
reconstruction -> residuals -> RRS -> discriminator -> anomaly map and image score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realnet.model.afs import FeatureSelector
from realnet.model.discriminator import anomaly_map, image_score
from realnet.model.rrs import ResidualSelection, reconstruction_residuals


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
    ):
        super().__init__()
        self.backbone = backbone
        self.selector = selector
        self.reconstruction = reconstruction
        self.residual_selection = residual_selection
        self.discriminator = discriminator
        self.score_kernel = score_kernel

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
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B, H, W) in [0, 1] and image scores (B,)."""
        maps = anomaly_map(self(self.select_features(images)).logits.float())
        return maps, image_score(maps, self.score_kernel)

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
    """Eq. 5: sum over layers of the mean squared error between G_k(varphi_k(A)) and varphi_k(I)."""
    return sum(F.mse_loss(g.float(), target.float()) for g, target in zip(reconstructions, normal_features))


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
