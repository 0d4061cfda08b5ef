"""What the benchmark scripts share: the normal training images a finished run was fitted on
(for revalidate.py, screen_density.py and refuse_run.py, which re-score its held-out validation;
never the test split), a median timer, and a main that runs as `realnet` commands do.

The held-out split is a seeded permutation of the run's normal training images, so it only
names the same images if they are read from the same layout and number the same; anything else
would score images the run was trained on as "held out"."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from realnet.allocator import keep_freed_memory
from realnet.data.layouts import load_dataset
from realnet.engine.runtime import load_samples
from realnet.errors import RealnetError


def normal_training_images(run: Path, meta: dict[str, Any], image_size: int, data: Path | None = None,
                           category: str | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 in the order `fit` read them; `data` / `category` default to the run's
    own. Refuses runs chosen on the test split, another category and another image count."""
    if meta.get("protocol", "final-model") != "final-model":
        raise RealnetError(f"{run}: protocol {meta['protocol']!r}; its weights were chosen on the test split "
                           "(--select-on-test), so no validation of it is held out")
    recorded = meta["data"]
    if category is not None and category != recorded["category"]:
        raise RealnetError(f"{run} was fitted on category {recorded['category']!r}, not {category!r}")
    root = Path(recorded["root"]) if data is None else data
    records = [r for r in load_dataset(root, recorded["category"], recorded["dataset"],
                                       **recorded.get("folder_options", {}))
               if r.split == "train" and r.label == 0]
    images = load_samples(records, image_size, skip_bad=True, desc="loading", progress=False)[0]
    expected = meta["fit"]["n_fit_images"] + meta["fit"]["n_holdout_images"]
    if len(images) != expected:
        raise RealnetError(f"{root} has {len(images)} readable normal training images of {recorded['category']}; "
                           f"{run} was fitted on {expected}, so its held-out split would name other images")
    return images


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The median of `repeats` timed calls after `warmup` untimed ones (first-call setup)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_as_command(main: Callable[[], None]) -> Callable[[], None]:
    """Runs a benchmark's main as `realnet` runs a command: with freed memory kept for reuse
    (`realnet.allocator`, so speeds match the CLI's), and a realnet input error (bad run, option or
    data) as one line and exit status 2."""
    def wrapped() -> None:
        keep_freed_memory()
        try:
            main()
        except RealnetError as error:
            print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    return wrapped
