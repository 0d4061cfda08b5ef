"""Copy a finished run with its fused maps rebuilt for other `density.*` / `memory.*` settings.

The fused maps are calibrated after training, so no retraining is needed: the copy gets the same
networks, its density and/or memory bank fitted on the run's fit images, the fusion's scales,
threshold and painted-defect validation from its held-out images, exactly as `fit` computes them
(`realnet.engine.fit`), and its config records the new settings. `realnet test --run OUT` then
scores it. Never touches the test split.

    PYTHONPATH=src .venv/bin/python benchmarks/refuse_run.py runs/mt_fused2 runs/mt_fused2_k \\
        --data ../shared/data --category magnetic_tile --set density.weight=0.25 --set memory.weight=0.25
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from common import normal_training_images, run_as_command

from realnet.config import RealNetConfig, apply_overrides
from realnet.engine import checkpoint
from realnet.engine.build import build_fusion
from realnet.engine.evaluate import load_run
from realnet.engine.fit import calibrate_fusion_and_threshold, split_holdout, validate_on_painted_defects

RUN_FILES = ("afs.json",)  # what the copy keeps besides the rewritten model files


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, help="the data root, if it moved since the run was fitted")
    parser.add_argument("--category", help="refuse a run fitted on another category")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="density.* or memory.* settings of the copy")
    args = parser.parse_args()
    if any(not o.startswith(("density.", "memory.")) for o in args.overrides):
        parser.error("--set: only density.* and memory.* can change without retraining")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    device = torch.device("cpu")
    model, meta = load_run(args.run, device)
    config = apply_overrides(RealNetConfig.from_dict(meta["config"], saved=True), args.overrides)
    tc = config.train
    images = normal_training_images(args.run, meta, tc.image_size, args.data, args.category)
    fit_rows, holdout_rows = split_holdout(len(images), tc.holdout_fraction, tc.holdout_seed)
    model.fusion = build_fusion(config, model.backbone)
    threshold, _ = calibrate_fusion_and_threshold(model, images[fit_rows], images[holdout_rows], config, device,
                                                  progress=True)
    meta = {key: value for key, value in meta.items() if key not in ("format_version", "realnet_version")}
    meta["config"] = config.to_dict()
    meta["threshold"] = threshold
    meta["fit"]["validation"] = validate_on_painted_defects(model, images[holdout_rows], config, device)
    meta["refused_from"] = {"run": str(args.run), "overrides": args.overrides}
    args.out.mkdir(parents=True)
    try:
        for name in RUN_FILES:
            if (args.run / name).exists():
                shutil.copy2(args.run / name, args.out / name)
        checkpoint.save_model(args.out, model, meta)
    except BaseException:
        shutil.rmtree(args.out, ignore_errors=True)
        raise
    validation = {k: round(v, 4) for k, v in meta["fit"]["validation"].items() if not k.startswith("val_n_")}
    print(json.dumps({"run": str(args.out), "from": str(args.run), "overrides": args.overrides, **validation,
                      "mean": round(float(np.mean(list(validation.values()))), 4)}))


if __name__ == "__main__":
    main()
