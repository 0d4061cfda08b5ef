"""Recompute fit's held-out validation (painted and faint painted defects) on finished runs.

The holdout split and the painted defects depend only on the run's config (seed, holdout
fraction, image size), so the numbers equal what `fit` records today; runs fitted before the
faint set existed get it too. Never touches the test split.

    PYTHONPATH=src .venv/bin/python benchmarks/revalidate.py --data ../shared/data \\
        --category magnetic_tile runs/mt_cpu runs/mt_cpu2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from realnet.config import RealNetConfig
from realnet.data.layouts import load_dataset
from realnet.engine.evaluate import load_run
from realnet.engine.fit import split_holdout, validate_on_painted_defects
from realnet.engine.runtime import load_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--dataset", default="mvtec")
    args = parser.parse_args()
    records = [r for r in load_dataset(args.data, args.category, args.dataset) if r.split == "train" and r.label == 0]
    images_by_size: dict[int, np.ndarray] = {}
    for run in args.runs:
        model, meta = load_run(run, torch.device("cpu"))
        config = RealNetConfig.from_dict(meta["config"])
        size = config.train.image_size
        if size not in images_by_size:
            images_by_size[size] = load_samples(records, size, skip_bad=False, desc="loading", progress=False)[0]
        images = images_by_size[size]
        _, holdout = split_holdout(len(images), config.train.holdout_fraction, config.train.seed)
        metrics = validate_on_painted_defects(model, images[holdout], config, torch.device("cpu"))
        print(json.dumps({"run": str(run), **{k: round(v, 4) for k, v in metrics.items()}}), flush=True)


if __name__ == "__main__":
    main()
