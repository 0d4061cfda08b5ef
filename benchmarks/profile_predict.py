"""Where a finished run's `predict` spends its time: backbone, discriminator path (AFS selection,
reconstruction, RRS, discriminator), feature-density fusion and the whole call, in milliseconds
per batch (median of N calls on random images, CPU).

    PYTHONPATH=src .venv/bin/python benchmarks/profile_predict.py runs/mt_fused2 --batch-sizes 1 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import median_seconds, run_as_command

from realnet.cli.common import positive_int
from realnet.engine.evaluate import load_run


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=positive_int, default=30)
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_run(args.run, torch.device("cpu"))
    model.eval()
    size = meta["config"]["train"]["image_size"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch_size in args.batch_sizes:
            images = torch.rand(batch_size, 3, size, size, generator=generator)
            features = model.backbone(images)
            probabilities = model.probability_maps(model.selector(features))
            parts = {
                "backbone": lambda: model.backbone(images),
                "discriminator_path": lambda: model.probability_maps(model.selector(features)),
                "fusion": (lambda: model.fusion(probabilities, features)) if model.fusion is not None else None,
                "predict": lambda: model.predict(images),
            }
            print(json.dumps({"run": str(args.run), "batch_size": batch_size, "threads": args.threads, **{
                f"{name}_ms": round(1000 * median_seconds(call, args.repeats), 2) for name, call in parts.items() if call}}))


if __name__ == "__main__":
    main()
