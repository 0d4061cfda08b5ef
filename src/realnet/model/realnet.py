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
        read about 1 on normal images when it has a `MapFusion`."""
        backbone_features = self.backbone(images)
        maps = score_maps = self.map_normalization(self.probability_maps(self.selector(backbone_features)))
        if self.fusion is not None:
            maps, score_maps = self.fusion(maps, backbone_features)
        return maps, image_score(score_maps, self.score_kernel)

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


def segmentation_loss(logits: Tensor, masks: Tensor, focal_gamma: float | None = None) -> Tensor:
    """L_seg: 2-class cross-entropy over all pixels against the synthetic anomaly mask; with
    `focal_gamma` γ, the focal loss -(1 - p_t)^γ log p_t instead (ours, as DRAEM segments), which
    weighs the pixels the discriminator finds hard above the many easy ones."""
    if focal_gamma is None:
        return F.cross_entropy(logits.float(), masks.long())
    log_p_true = F.log_softmax(logits.float(), dim=1).gather(1, masks.long().unsqueeze(1)).squeeze(1)
    # 1 - p_t kept above 0: where p_t rounds to 1, x^gamma's derivative at 0 is infinite for gamma < 1
    # and the backward pass would turn it into NaN
    one_minus_p_true = (-torch.expm1(log_p_true)).clamp_min(torch.finfo(torch.float32).tiny)
    return -(one_minus_p_true ** focal_gamma * log_p_true).mean()


def realnet_loss(
    output: RealNetOutput, normal_features: list[Tensor], masks: Tensor, focal_gamma: float | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 6: L = L_recon + L_seg (both weight 1; normal samples count too)."""
    recon = reconstruction_loss(output.reconstructions, normal_features)
    seg = segmentation_loss(output.logits, masks, focal_gamma)
    return recon + seg, {"recon": float(recon.detach()), "seg": float(seg.detach())}
