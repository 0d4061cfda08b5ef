"""Efficiency of a detector configuration: parameters, checkpoint size, peak memory and
inference speed next to the backbone alone.

For one configuration (a finished run, or a config with freshly initialised weights):

- parameters of the detector without the backbone, and of the backbone;
- checkpoint MB: the size of model.safetensors (the detector without the backbone);
- peak RSS: the peak resident memory of a fresh process that loads the detector and runs the
  timing below (interpreter and libraries included), measured by `measure_in_subprocess`;
- images/s of the full detector (``RealNet.predict``: anomaly map + image score) at batch 1 and
  8 on the same fixed inputs, and of the backbone alone on those inputs, and their time ratio
  (detector time / backbone time): what RealNet costs over the backbone pass it cannot avoid.

Timing: `warmup` untimed passes, then `repeats` timed passes over all `n_images` inputs; the
median pass gives images/s. On CUDA and MPS the device is synchronised before each clock reading.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

BATCH_SIZES = (1, 8)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(detector parameters without the backbone, backbone parameters)."""
    from realnet.model.reconstruction import count_parameters

    backbone = count_parameters(model.backbone)
    return count_parameters(model) - backbone, backbone


def images_per_second(forward: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int,
                      warmup: int, repeats: int) -> float:
    """Median-pass throughput of `forward` over `images` in batches of `batch_size`."""
    # accelerators run kernels asynchronously: the clock must wait for them, or it times the queueing
    synchronize = {"cuda": lambda: torch.cuda.synchronize(images.device),
                   "mps": lambda: torch.mps.synchronize()}.get(images.device.type, lambda: None)
    batches = list(images.split(batch_size))

    def one_pass() -> float:
        synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                forward(batch)
        synchronize()
        return time.perf_counter() - started

    for _ in range(warmup):
        one_pass()
    return len(images) / statistics.median(one_pass() for _ in range(repeats))


def fixed_inputs(n_images: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """The same seeded images in [0, 1] for every configuration of a given size."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_images, 3, size, size, generator=generator).to(device)


def measure_model(model, image_size: int, device: torch.device, *, n_images: int = 8, warmup: int = 2,
                  repeats: int = 5) -> dict[str, Any]:
    """Parameters and throughput of a built detector (already on `device`, in eval mode)."""
    detector_params, backbone_params = parameter_counts(model)
    images = fixed_inputs(n_images, image_size, device)
    result: dict[str, Any] = {"detector_params": detector_params, "backbone_params": backbone_params,
                              "image_size": image_size, "device": str(device), "threads": torch.get_num_threads(),
                              "n_images": n_images, "repeats": repeats}
    for batch_size in BATCH_SIZES:
        full = images_per_second(model.predict, images, batch_size, warmup, repeats)
        backbone = images_per_second(model.backbone, images, batch_size, warmup, repeats)
        result[f"images_per_s_bs{batch_size}"] = round(full, 2)
        result[f"backbone_images_per_s_bs{batch_size}"] = round(backbone, 2)
        result[f"time_ratio_bs{batch_size}"] = round(backbone / full, 2)
    return result


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where `resource` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def measure_run(run_dir: Path, device: str = "cpu", **timing) -> dict[str, Any]:
    """Efficiency of a finished run (its trained weights and its model.safetensors)."""
    from realnet.engine.checkpoint import MODEL_WEIGHTS
    from realnet.engine.evaluate import load_run
    from realnet.engine.runtime import resolve_device

    torch_device = resolve_device(device)
    model, meta = load_run(Path(run_dir), torch_device)
    result = measure_model(model, meta["config"]["train"]["image_size"], torch_device, **timing)
    return {**result, "checkpoint_mb": round((Path(run_dir) / MODEL_WEIGHTS).stat().st_size / 2**20, 2)}


def measure_config(preset: str, overrides: list[str] = (), device: str = "cpu", **timing) -> dict[str, Any]:
    """Efficiency of a configuration with freshly initialised weights (backbone weights
    "random" unless an override names others: speed and sizes do not depend on the values)."""
    from safetensors.torch import save_file

    from realnet.config import load_config
    from realnet.engine.build import build_backbone, build_model
    from realnet.engine.checkpoint import detector_state
    from realnet.engine.runtime import resolve_device

    config = load_config(preset, None, ["backbone.weights=random", *overrides])
    torch_device = resolve_device(device)
    backbone = build_backbone(config)
    model = build_model(config, backbone).to(torch_device).eval()
    result = measure_model(model, config.train.image_size, torch_device, **timing)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file(detector_state(model), str(path))
        result["checkpoint_mb"] = round(path.stat().st_size / 2**20, 2)
    return result


def measure_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`measure_run` ({"run": DIR}) or `measure_config` ({"preset": P, "overrides": [...]}), with
    optional "device", "threads", "n_images", "warmup", "repeats"; adds this process's peak RSS."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    timing = {k: int(spec[k]) for k in ("n_images", "warmup", "repeats") if k in spec}
    device = spec.get("device", "cpu")
    if "run" in spec:
        result = measure_run(Path(spec["run"]), device, **timing)
    else:
        result = measure_config(spec["preset"], list(spec.get("overrides", [])), device, **timing)
    return {**result, "peak_rss_mb": peak_rss_mb()}


def measure_in_subprocess(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """`measure_spec` in a fresh Python process, so its peak RSS belongs to this configuration
    alone, with malloc set up as `realnet` commands set it. Raises RealnetError with the child's
    last error line when it fails."""
    from realnet.errors import RealnetError

    code = ("import json, sys\nfrom realnet.allocator import keep_freed_memory\n"
            "from realnet.bench.efficiency import measure_spec\n"
            "keep_freed_memory()\nprint(json.dumps(measure_spec(json.loads(sys.argv[1]))))")
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line[0].isspace()]
        raise RealnetError(f"efficiency measurement of {spec} failed: {lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])
