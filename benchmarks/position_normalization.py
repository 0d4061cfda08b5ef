"""Held-out validation of finished runs with and without position normalisation of the map.

For each run (fitted with `train.map_normalization=none`), recomputes fit's validation (held-out
normal training images versus painted and faint painted defects), then calibrates a
`PositionNormalization` on the run's fit images exactly as `fit` does and validates again. This
is how the `cpu` preset's `map_normalization: position` was chosen; it never reads the test split.

    PYTHONPATH=src .venv/bin/python benchmarks/position_normalization.py --data ../shared/data \\
        --category magnetic_tile runs/mt_cpu2 runs/mt_b8 runs/mt_b8cos
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
from realnet.engine.fit import NormalFeatures, calibrate_map_normalization, split_holdout, validate_on_painted_defects
from realnet.engine.runtime import load_samples
from realnet.model.discriminator import PositionNormalization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--dataset", default="mvtec")
    args = parser.parse_args()
    records = [r for r in load_dataset(args.data, args.category, args.dataset) if r.split == "train" and r.label == 0]
    device = torch.device("cpu")
    for run in args.runs:
        model, meta = load_run(run, device)
        config = RealNetConfig.from_dict(meta["config"])
        if config.train.map_normalization != "none":
            raise SystemExit(f"{run}: already fitted with map_normalization={config.train.map_normalization}")
        tc = config.train
        images = load_samples(records, tc.image_size, skip_bad=False, desc="loading", progress=False)[0]
        fit_rows, holdout_rows = split_holdout(len(images), tc.holdout_fraction, tc.seed)
        results = {"none": validate_on_painted_defects(model, images[holdout_rows], config, device)}
        model.map_normalization = PositionNormalization(tc.image_size)
        features = NormalFeatures(model, images[fit_rows], device, tc.feature_cache_gb, tc.batch_size, progress=False)
        calibrate_map_normalization(model, features, len(fit_rows), tc.batch_size)
        results["position"] = validate_on_painted_defects(model, images[holdout_rows], config, device)
        for mode, metrics in results.items():
            values = {k: round(v, 4) for k, v in metrics.items() if not k.startswith("val_n_")}
            print(json.dumps({"run": str(run), "map_normalization": mode, **values,
                              "mean": round(float(np.mean(list(values.values()))), 4)}), flush=True)


if __name__ == "__main__":
    main()
