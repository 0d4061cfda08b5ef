"""Where a `fit` step of a preset spends its time: the backbone pass (eager network vs the frozen
TorchScript graph), the trainable part (reconstruction + discriminator forward and backward and
the Adam step, with the fused kernel or PyTorch's per-parameter loop, then fused in bf16
autocast where the CPU has native bf16 kernels) and the synthesis of one batch. Random weights
and random features (speed does not depend on them); synthesis uses the shade and cut-paste
sources on random-noise images (no data needed). Prints one JSON line.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train_step.py --preset cpu
    PYTHONPATH=src .venv/bin/python benchmarks/bench_train_step.py --preset cpu --set reconstruction.num_res_blocks=2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from common import median_seconds, run_as_command

from realnet.cli.common import positive_int
from realnet.config import load_config
from realnet.engine.build import build_model
from realnet.engine.fit import synthesize, train_step
from realnet.engine.runtime import Stream, bf16_autocast_available
from realnet.model.backbone import create_backbone
from realnet.synthesis.foreground import NO_FOREGROUND
from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, build_sources


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as in realnet fit --set")
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    parser.add_argument("--backbone-batch", type=positive_int, default=4,
                        help="images per backbone call (a fit step passes only its anomalous rows)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.preset, overrides=args.overrides)
    tc = config.train
    backbone = create_backbone(config.backbone.name, weights="random", layers=config.backbone.layers)
    model = build_model(config, backbone)
    images = torch.rand(args.backbone_batch, 3, tc.image_size, tc.image_size)
    result: dict[str, object] = {"preset": args.preset, "threads": torch.get_num_threads(),
                                 "batch_size": tc.batch_size, "image_size": tc.image_size}

    with torch.no_grad():
        for frozen in (False, True):
            backbone.frozen_graph = frozen
            name = "frozen_graph" if frozen else "eager"
            result[f"backbone_{name}_s_per_image"] = round(
                median_seconds(lambda: backbone(images), args.repeats, warmup=2) / len(images), 5)
        probe = model.select_features(torch.rand(1, 3, tc.image_size, tc.image_size))
    features = [torch.randn(tc.batch_size, *f.shape[1:]) for f in probe]
    masks = torch.zeros(tc.batch_size, tc.image_size, tc.image_size, dtype=torch.long)
    masks[:, : tc.image_size // 4, : tc.image_size // 4] = 1
    # fit's own train_step on given features: the trainable part alone.
    model.train()
    variants = [("loop_adam", False, False), ("fused_adam", True, False)]
    if bf16_autocast_available(torch.device("cpu")):
        variants.append(("fused_adam_bf16", True, True))
    for name, fused, bf16 in variants:
        optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=tc.learning_rate, fused=fused)
        autocast = lambda bf16=bf16: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
        result[f"trainable_{name}_s_per_step"] = round(median_seconds(
            lambda: train_step(model, optimizer, features, features, masks, autocast, lambda: None),
            args.repeats, warmup=2), 4)

    synthesizer = AnomalySynthesizer(
        SynthesisConfig(source_weights={"shade": 0.5, "cutpaste": 0.5}),
        build_sources(["shade", "cutpaste"], size=tc.image_size, category="bench"), NO_FOREGROUND)
    normals = np.random.default_rng(0).integers(0, 256, (16, tc.image_size, tc.image_size, 3), dtype=np.uint8)
    foregrounds = np.ones(normals.shape[:3], bool)
    rows = np.arange(tc.batch_size) % len(normals)
    calls = iter(range(10**9))
    result["synthesis_s_per_batch"] = round(median_seconds(
        lambda: synthesize(synthesizer, normals, foregrounds, rows, tc.seed, (Stream.TRAINING_SAMPLE, next(calls))),
        args.repeats, warmup=2), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
