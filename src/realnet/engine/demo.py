"""`realnet demo` / `make demo`: generate the embedded demo dataset, then fit, test, predict and
report, offline, in minutes on a CPU."""

from __future__ import annotations

import io
import json
import shutil
import time
from contextlib import redirect_stdout
from pathlib import Path

from realnet.config import load_config, validate_config
from realnet.engine import checkpoint
from realnet.errors import RealnetError

DEMO_STEPS = 800
DEMO_IMAGE_SIZE = 128  # keeps fit + test + predict within minutes on 2 CPU cores


def demo_config(category: str, steps: int | None):
    config = load_config("cpu")
    # The demo ships no texture dataset: anomalies come from the images themselves.
    config.synthesis.sources = {"cutpaste": 0.5, "nsa": 0.5}
    config.synthesis.foreground = "none"
    config.synthesis.normal_probability = 0.5  # the share the demo was measured with
    # At 128 px the preset's strides 8/16 leave 16x16 and 8x8 maps, too coarse for thin scratches
    # and cracks; the stride-4 layer (32x32) is affordable at this size.
    config.backbone.layers = [1, 2, 3]
    config.selection.channels = [24, 40, 80]
    config.train.image_size = DEMO_IMAGE_SIZE
    config.train.batch_size = 16  # the demo's measured budget; the preset uses 8 at 256 px
    # The demo keeps the half-width, two-block fp32 U-Nets it was measured with: with the preset's
    # one block and bf16 it ran in 4:07 instead of ~6 minutes but scored 0.865 / 0.974 / 0.736 on
    # brick instead of 0.925 / 0.983 / 0.751.
    config.reconstruction.num_res_blocks = 2
    config.reconstruction.width_factor = 0.5
    config.train.bf16 = False
    # and the image score it was measured with: the maps' own 16 x 16 windows
    config.density.image_weight = None
    config.train.score_kernel = 16
    config.train.steps = DEMO_STEPS if steps is None else steps
    config.train.checkpoint_every = 50
    validate_config(config)
    return config


def is_demo_run(run: Path, data_root: Path) -> bool:
    """Whether `run` is a finished or killed fit on the demo's own data, or what a fit killed before
    its first checkpoint left (nothing but its own files): the demo starts those again. A run on
    other data at the same place is a user's, never deleted."""
    from realnet.engine.fit import foreign_entries

    if not run.is_dir():
        return False
    try:
        if (run / checkpoint.MODEL_META).exists():
            recorded = checkpoint.read_json(run / checkpoint.MODEL_META, "")["data"]["root"]
        elif (run / checkpoint.RESUME_STATE).exists():
            recorded = checkpoint.load_resume_state(run)["inputs"]["root"]
        else:
            return not foreign_entries(run)
        return Path(recorded).resolve() == data_root.resolve()
    except (RealnetError, KeyError, TypeError):
        return False


def run_demo(out: Path, category: str = "brick", steps: int | None = None) -> int:
    from realnet.data.demo import DEMO_CATEGORIES, make_demo_dataset
    from realnet.engine.evaluate import evaluate
    from realnet.engine.fit import FitRequest, fit
    from realnet.engine.predict import predict

    started = time.time()
    out = Path(out)
    data_root = out / "data"
    if category not in DEMO_CATEGORIES:
        raise RealnetError(f"unknown demo category {category!r}; choose from {', '.join(DEMO_CATEGORIES)}")
    config = demo_config(category, steps)
    # every category at once, so switching categories never rebuilds; an up-to-date tree is kept
    print(f"[1/4] the demo dataset in {data_root}")
    make_demo_dataset(data_root)
    run = out / "run"
    if run.exists():
        if not is_demo_run(run, data_root):
            raise RealnetError(f"{run} exists and is not the demo's run (another run, or other files); remove it "
                               "or choose another --out")
        shutil.rmtree(run)
    print(f"[2/4] fitting RealNet (cpu preset, {config.train.steps} steps) on '{category}'")
    fit(FitRequest(config=config, data_root=data_root, category=category, out=run))
    print("[3/4] testing")
    metrics = evaluate(run)
    print("[4/4] predicting two test images")
    samples = [min((data_root / category / "test" / "good").iterdir()),
               next(p for d in sorted((data_root / category / "test").iterdir()) if d.name != "good"
                    for p in sorted(d.iterdir()))]
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        failures = predict(run, [str(p) for p in samples], save_maps=run / "maps")
    print(buffer.getvalue().rstrip())
    summary = {k: round(metrics[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro")}
    print(f"\ndemo metrics ({category}, {metrics['n_images']} test images): {json.dumps(summary)}")
    print(f"panels: {run / 'panels'}   metrics: {run / 'metrics.json'}   total {time.time() - started:.0f} s")
    return 1 if failures else 0
