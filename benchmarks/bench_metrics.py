"""Time AUPRO and pixel AUROC on N synthetic maps with blob-shaped masks; print a Markdown table.

Masks are Gaussian-smoothed noise thresholded into blobs, with a fraction of the images fully
normal; maps are float32 (the blobs raised, plus smooth and pixel noise). Wall time is the best
and the median of --repeats calls (time.perf_counter, no tracing). Peak memory is measured in a
separate call under tracemalloc: the peak of memory allocated during the call (numpy buffers
included, the inputs excluded). The process peak RSS (resource.getrusage ru_maxrss) is printed
as an upper bound for the whole run, inputs and interpreter included.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_metrics.py --n 500 --size 256
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc

import numpy as np
from scipy import ndimage

from common import run_as_command

from realnet.cli.common import positive_int
from realnet.metrics import aupro, pixel_auroc


def blob_maps(n: int, size: int, normal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (n, size, size), masks bool): smoothed-noise blobs, some images normal."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    normal = rng.random(n) < normal_fraction
    for i in range(n):
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 32)
        field /= field.std()
        masks[i] = (field > 1.5) & ~normal[i]
        maps[i] = 1.5 * masks[i] + 0.5 * field + rng.standard_normal((size, size), dtype=np.float32)
    return maps, masks


def measure(metric, maps: np.ndarray, masks: np.ndarray, repeats: int) -> tuple[float, list[float], float]:
    """(value, wall times in s, traced peak in MiB) of metric(maps, masks)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = metric(maps, masks)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    metric(maps, masks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, times, peak / 2**20


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=500, help="number of maps (default 500)")
    parser.add_argument("--size", type=positive_int, default=256, help="map height and width (default 256)")
    parser.add_argument("--normal-fraction", type=float, default=0.3, help="share of fully normal images")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per metric (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 <= args.normal_fraction < 1:
        parser.error(f"--normal-fraction {args.normal_fraction}: must be in [0, 1) (AUPRO needs defect pixels)")

    maps, masks = blob_maps(args.n, args.size, args.normal_fraction, args.seed)
    n_regions = sum(ndimage.label(mask, structure=np.ones((3, 3)))[1] for mask in masks)
    print(
        f"{args.n} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f}M pixels, "
        f"{masks.mean():.1%} defect pixels in {n_regions} regions, "
        f"{int((~masks.any(axis=(1, 2))).sum())} normal images; "
        f"inputs {(maps.nbytes + masks.nbytes) / 2**20:.0f} MiB\n"
    )
    print("| metric | value | wall time best (s) | wall time median (s) | peak traced memory (MiB) |")
    print("|---|---|---|---|---|")
    for name, metric in [("aupro (fpr_limit 0.3)", aupro), ("pixel_auroc", pixel_auroc)]:
        value, times, peak_mib = measure(metric, maps, masks, args.repeats)
        median = statistics.median(times)
        print(f"| {name} | {value:.6f} | {min(times):.2f} | {median:.2f} | {peak_mib:.0f} |")
    max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS (ru_maxrss, whole run): {max_rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
