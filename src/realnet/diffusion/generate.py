"""`realnet sdas generate`: the SIA image bank of one category (paper Sec. 3.1, Appendix B).

Layout (what `realnet fit --source sia --sia SIA_DIR` reads):

    SIA_DIR/<category>/000000.png, 000001.png, ...   one image per index, PNG
    SIA_DIR/<category>/manifest.jsonl                 {"file", "index", "s", "seed"} per image
    SIA_DIR/<category>/generation.json                the settings that fix every image's bytes

Image i is sampled from its own generator, seeded from (seed, i), with its own strength
s ~ U(lo, hi) drawn from (seed, i). Images are sampled in blocks of `batch_size` consecutive
indices [kB, (k+1)B), always whole (the last block too, whatever --count), and block k goes to
rank k mod world size. A block always holds the same images, so the bytes of image i never
depend on --count, on the number of ranks or on what an earlier, interrupted run already wrote
(batched matrix products round differently for different batch compositions), as long as
every process runs with the same number of CPU threads: on the CPU another thread count picks
other kernels, which can move a pixel by one level (torchrun sets OMP_NUM_THREADS=1, so compare
with --threads 1). With --batch 1 this is the plain rule "rank r takes the indices i = r mod
world size".
Files are written atomically; a rerun skips complete blocks and fills in missing files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realnet.diffusion.network import make_denoiser
from realnet.diffusion.sampler import DDIM_VARIANCES, SAMPLERS, sdas_sample
from realnet.diffusion.train import EMA_WEIGHTS, diffusion_for, load_sdas_model, read_model_meta, run_device, save_png, to_uint8
from realnet.engine.checkpoint import read_json
from realnet.errors import RealnetError
from realnet.files import file_sha256, missing_folders, remove_created_folders

MANIFEST = "manifest.jsonl"
# s inflates each reverse step's variance (1 + s)-fold; far beyond the paper's 0.2 the images are
# noise, and past float32's range all black
MAX_STRENGTH = 100.0
SETTINGS = "generation.json"
IMAGE_NAME = re.compile(r"^(\d{6,})\.png$")
# Settings that change the bytes of an image; a rerun into the same folder must keep them.
FIXED_KEYS = ("model_sha256", "category", "seed", "strength", "batch_size", "steps", "sampler", "ddim_variance",
              "device", "bf16")


@dataclass
class GenerateRequest:
    model: Path
    category: str
    count: int
    out: Path
    strength: tuple[float, float] = (0.1, 0.2)
    seed: int = 0
    batch_size: int = 8
    steps: int | None = None  # None: the model's sample_steps (20)
    sampler: str = "ancestral"
    ddim_variance: str = "learned"
    device: str = "auto"
    bf16: bool = False
    progress: bool = True


def parse_strength(text: str) -> tuple[float, float]:
    """"0.1:0.2" -> (0.1, 0.2); "0.15" -> (0.15, 0.15)."""
    try:
        parts = [float(part) for part in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 0 <= parts[0] <= parts[1] <= MAX_STRENGTH:
        raise RealnetError(f"--strength {text!r}: use LOW:HIGH with 0 <= LOW <= HIGH <= {MAX_STRENGTH:g}, or one "
                           "value (the paper's is 0.1:0.2)")
    return parts[0], parts[1]


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index`'s noise generator."""
    state = np.random.SeedSequence([seed, 37, index]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def image_strength(seed: int, index: int, strength: tuple[float, float]) -> float:
    """Anomaly strength s ~ U(low, high) of image `index`."""
    low, high = strength
    return float(low + (high - low) * np.random.default_rng([seed, 31, index]).random())


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def _file_identity(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, status.st_size


def image_indices(folder: Path) -> list[int]:
    """The indices of the bank images present in `folder`, sorted."""
    return sorted(int(m.group(1)) for p in folder.iterdir()
                  if (m := IMAGE_NAME.match(p.name)) and p.name == image_name(int(m.group(1))))  # not 0000001


def manifest_rows(folder: Path, seed: int, strength: tuple[float, float]) -> list[dict[str, Any]]:
    """One row per bank image present in `folder`, by index."""
    return [{"file": image_name(i), "index": i, "s": image_strength(seed, i, strength), "seed": image_seed(seed, i)}
            for i in image_indices(folder)]


def _check_request(request: GenerateRequest) -> None:
    if request.count < 1 or request.batch_size < 1:
        raise RealnetError("--count and --batch must be at least 1")
    if request.sampler not in SAMPLERS:
        raise RealnetError(f"--sampler {request.sampler!r}: use one of {', '.join(SAMPLERS)}")
    if request.ddim_variance not in DDIM_VARIANCES:
        raise RealnetError(f"--ddim-variance {request.ddim_variance!r}: use one of {', '.join(DDIM_VARIANCES)}")
    if request.steps is not None and not 1 <= request.steps <= 1000:
        raise RealnetError(f"--steps {request.steps}: must be in [1, 1000]")


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    path = folder / SETTINGS
    if not path.is_file() or not image_indices(folder):  # the settings fix nothing before the first image
        return
    previous = read_json(path, f"{path} not found")
    changed = [key for key in FIXED_KEYS if previous.get(key) != settings[key]]
    if changed:
        raise RealnetError(f"{folder} holds images made with other {', '.join(changed)}; choose a new --out")


def generate(request: GenerateRequest) -> dict[str, Any]:
    """Write the bank's missing images for indices 0..count-1 and its manifest; returns a summary."""
    from tqdm.auto import tqdm

    from realnet.engine import distributed
    from realnet.engine.checkpoint import atomic_write, remove_stale_temporaries, write_json

    _check_request(request)
    context = distributed.init_for_device(request.device)
    try:
        device = run_device(context, request.device, request.bf16)
        weights = Path(request.model) / EMA_WEIGHTS
        meta = read_model_meta(request.model)  # "not an SDAS model folder" before the weights file is looked for
        identity = _file_identity(weights)  # training saves by atomic replace: a new inode and mtime
        model_sha256 = file_sha256(weights)
        unet, meta = load_sdas_model(request.model, device, meta)
        if _file_identity(weights) != identity:  # a training run still saving into the folder
            raise RealnetError(f"{weights} was replaced while it was loaded (is sdas train still writing to "
                               f"{request.model}?); run generate again")
        if request.category not in meta["categories"]:
            raise RealnetError(f"--category {request.category!r}: the model knows only {', '.join(meta['categories'])}")
        steps = request.steps or meta["diffusion"]["sample_steps"]
        if steps > meta["diffusion"]["timesteps"]:
            raise RealnetError(f"--steps {steps}: at most the model's {meta['diffusion']['timesteps']} timesteps")
        settings = {
            "model": str(Path(request.model).resolve()), "model_sha256": model_sha256,
            "model_step": meta["step"], "category": request.category, "seed": request.seed,
            "strength": list(request.strength), "batch_size": request.batch_size, "steps": steps,
            "sampler": request.sampler, "ddim_variance": request.ddim_variance if request.sampler == "ddim" else None,
            "device": device.type, "bf16": request.bf16, "image_size": meta["image_size"], "channels": meta["channels"],
        }
        folder = Path(request.out) / request.category
        _check_settings(folder, settings)
        diffusion = diffusion_for(meta).respace(steps)
        label = meta["categories"].index(request.category)
        blocks = [range(start, start + request.batch_size)
                  for start in range(0, request.count, request.batch_size)][context.rank::context.world_size]
        todo = [block for block in blocks
                if not all((folder / image_name(i)).is_file() for i in block if i < request.count)]
        shape = (meta["channels"], meta["image_size"], meta["image_size"])
        written = 0
        began = time.perf_counter()
        bar = tqdm(total=sum(len(b) for b in todo), desc=f"sdas generate {request.category}", unit="img",
                   disable=not (context.is_main_process and request.progress))

        def write_manifest() -> None:
            rows = manifest_rows(folder, request.seed, request.strength)
            atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))

        created = missing_folders(folder) if context.is_main_process else []
        try:
            distributed.barrier(context)
            if context.is_main_process:
                folder.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(folder)  # of a run killed while it wrote an image
                write_json(folder / SETTINGS, settings)
            distributed.barrier(context)
            with torch.no_grad():
                for block in todo:
                    labels = torch.full((len(block),), label) if meta["unet"]["num_class_embeds"] else None
                    generators = [torch.Generator().manual_seed(image_seed(request.seed, i)) for i in block]
                    strengths = [image_strength(request.seed, i, request.strength) for i in block]
                    images = to_uint8(sdas_sample(make_denoiser(unet, labels, request.bf16), diffusion, generators,
                                                  shape, strengths, sampler=request.sampler,
                                                  ddim_variance=request.ddim_variance, device=device))
                    for index, image in zip(block, images):
                        path = folder / image_name(index)
                        if index < request.count and not path.is_file():
                            save_png(path, image)
                            written += 1
                    if context.is_main_process:  # kept current, so that even a SIGKILL leaves one
                        write_manifest()
                    bar.update(len(block))
        except BaseException:
            if context.is_main_process and folder.is_dir():
                if image_indices(folder):
                    write_manifest()  # the manifest lists what is on disk, also after a failure
                else:  # nothing made yet: leave no settings behind, a rerun may choose others (a smaller --batch)
                    for name in (SETTINGS, MANIFEST):
                        (folder / name).unlink(missing_ok=True)
            remove_created_folders(created)  # those still empty
            raise
        bar.close()
        seconds = time.perf_counter() - began
        distributed.barrier(context)
        if context.is_main_process:
            write_manifest()
        sampled = sum(len(b) for b in todo)
        return {"folder": str(folder), "written": written, "sampled": sampled, "seconds": round(seconds, 2),
                "images_per_second": round(sampled / seconds, 3) if sampled else None, "rank": context.rank,
                "world_size": context.world_size}
    finally:
        distributed.cleanup(context)
