"""The SDAS denoising network: a `diffusers` UNet2DModel configured like OpenAI's ADM.

ADM traits kept: learned sigma (2C output channels: eps and the variance weight v of Eq. S1),
scale-shift normalisation of the time embedding, residual-block down/upsampling, self-attention
at the 32/16/8 px levels of a 256 px model with 64 channels per head, and an optional class
embedding so one model covers every category of a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from realnet.diffusion.sampler import Denoiser


@dataclass(frozen=True)
class UNetPreset:
    image_size: int
    base_channels: int
    channel_mults: tuple[int, ...]
    layers_per_block: int
    attention_resolutions: tuple[int, ...]  # in pixels, at this preset's image size
    head_channels: int
    norm_groups: int = 32
    dropout: float = 0.0


PRESETS = {
    # ADM ImageNet 256: width 256, mults (1,1,2,2,4,4), 2 res blocks, attention at 32/16/8 px.
    "paper": UNetPreset(256, 256, (1, 1, 2, 2, 4, 4), 2, (32, 16, 8), 64),
    # The same shape scaled down to train for minutes on a few CPU cores.
    "cpu": UNetPreset(64, 32, (1, 2, 2, 4), 1, (16, 8), 32, norm_groups=8),
    # For tests: 16 px, about 0.2M parameters.
    "tiny": UNetPreset(16, 16, (1, 2), 1, (8,), 16, norm_groups=8),
}


def unet_config(preset: str | UNetPreset, in_channels: int = 3, num_classes: int | None = None,
                image_size: int | None = None) -> dict:
    """The JSON-serialisable `UNet2DModel` config for a preset. `image_size` overrides the
    preset's; attention stays at the same fraction of the image size."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown SDAS preset {preset!r} (use one of {', '.join(PRESETS)})")
        preset = PRESETS[preset]
    size = image_size or preset.image_size
    if size % 2 ** (len(preset.channel_mults) - 1):
        raise ValueError(f"image size {size} must be divisible by {2 ** (len(preset.channel_mults) - 1)}")
    scale = size / preset.image_size
    attention = {round(r * scale) for r in preset.attention_resolutions}
    with_attention = [size // 2**level in attention for level in range(len(preset.channel_mults))]
    return {
        "sample_size": size,
        "in_channels": in_channels,
        "out_channels": 2 * in_channels,
        "block_out_channels": [preset.base_channels * m for m in preset.channel_mults],
        "layers_per_block": preset.layers_per_block,
        "down_block_types": ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in with_attention],
        "up_block_types": ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(with_attention)],
        "downsample_type": "resnet",
        "upsample_type": "resnet",
        "attention_head_dim": preset.head_channels,
        "norm_num_groups": preset.norm_groups,
        # ADM normalises every attention layer; diffusers leaves the middle block's unnormalised
        # under scale-shift conditioning unless told
        "attn_norm_num_groups": preset.norm_groups,
        "resnet_time_scale_shift": "scale_shift",
        "dropout": preset.dropout,
        "num_class_embeds": num_classes,
    }


def create_unet(config: dict, device: torch.device | str | None = None) -> nn.Module:
    """A `diffusers` UNet2DModel from `unet_config(...)`; device "meta" allocates nothing."""
    from diffusers import UNet2DModel

    with torch.device(device or "cpu"):
        return UNet2DModel(**config)


def parameter_count(config: dict) -> int:
    """Exact parameter count of the network, built on the meta device (no memory used)."""
    return sum(p.numel() for p in create_unet(config, "meta").parameters())


def make_denoiser(unet: nn.Module, class_labels: Tensor | None = None, bf16: bool = False) -> Denoiser:
    """The network as the samplers' `Denoiser`: float32 output, class labels bound, and bf16
    autocast when asked and on CUDA only."""

    def denoise(x: Tensor, timesteps: Tensor) -> Tensor:
        labels = None if class_labels is None else class_labels.to(x.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and x.device.type == "cuda"):
            return unet(x, timesteps, class_labels=labels).sample.float()

    return denoise
