"""Parameter counts and checkpoint sizes of each preset, computed on the meta device (no memory,
no weights needed). Checkpoint bytes = the tensor bytes of model.safetensors (the detector
without its backbone; the safetensors header adds a few kB)."""

from __future__ import annotations

import argparse

import torch

from common import run_as_command

from realnet.config import PRESETS, load_config
from realnet.engine.build import build_model
from realnet.model.reconstruction import ARCHITECTURES
from realnet.model.backbone import create_backbone
from realnet.model.reconstruction import count_parameters


def measure(preset: str, arch: str | None = None, overrides: list[str] = ()) -> dict[str, float]:
    config = load_config(preset, overrides=list(overrides))
    if arch:
        config.reconstruction.arch = arch
    with torch.device("meta"):
        backbone = create_backbone(config.backbone.name, weights="random", layers=config.backbone.layers)
        model = build_model(config, backbone)
    everything = model.state_dict()
    state = {k: v for k, v in everything.items() if not k.startswith("backbone.")}
    return {
        "preset": preset, "arch": config.reconstruction.arch, "backbone": config.backbone.name,
        "backbone_params": count_parameters(backbone),
        "reconstruction_params": count_parameters(model.reconstruction),
        "discriminator_params": count_parameters(model.discriminator),
        "detector_params": count_parameters(model) - count_parameters(backbone),
        "checkpoint_mb": sum(t.numel() * t.element_size() for t in state.values()) / 2**20,
        # parameters and buffers (the density's statistics, BatchNorm's), backbone included, as fp32
        "with_backbone_fp32_gib": sum(t.numel() * 4 for t in everything.values() if t.is_floating_point()) / 2**30,
    }


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--archs", nargs="+", default=["A"], choices=ARCHITECTURES)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every preset, as in realnet fit --set")
    args = parser.parse_args()
    rows = [measure(p, a, args.overrides) for p in args.presets for a in args.archs]
    print("| preset | arch | backbone | backbone params | reconstruction params | discriminator params "
          "| detector params | checkpoint MB | detector+backbone fp32 GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['arch']} | {r['backbone']} | {r['backbone_params']:,} | {r['reconstruction_params']:,} "
              f"| {r['discriminator_params']:,} | {r['detector_params']:,} | {r['checkpoint_mb']:.1f} "
              f"| {r['with_backbone_fp32_gib']:.2f} |")


if __name__ == "__main__":
    main()
