"""The paper preset is OpenAI's ADM ImageNet-256 U-Net (REFERENCE_NOTES, SDAS): attention at 32/16/8 px,
scale-shift norm, learned sigma, about 553M parameters."""

from __future__ import annotations

from realnet.diffusion.network import parameter_count, unet_config


def test_paper_preset_is_the_adm_256_unet():
    config = unet_config("paper", in_channels=3)
    assert config["out_channels"] == 6  # eps and v
    assert config["resnet_time_scale_shift"] == "scale_shift"
    resolutions = [256 // 2**level for level in range(6)]
    attended = {r for r, kind in zip(resolutions, config["down_block_types"]) if kind.startswith("Attn")}
    assert attended == {32, 16, 8}
    assert 552e6 < parameter_count(config) < 554e6


def test_attention_stays_at_the_same_fraction_of_a_smaller_image():
    """--image-size 128 with the paper preset: attention at 16/8/4 px (1/8, 1/16, 1/32 of the image)."""
    config = unet_config("paper", in_channels=3, image_size=128)
    resolutions = [128 // 2**level for level in range(6)]
    attended = {r for r, kind in zip(resolutions, config["down_block_types"]) if kind.startswith("Attn")}
    assert attended == {16, 8, 4}
