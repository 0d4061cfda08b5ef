"""`realnet sdas train`: fit the SDAS diffusion model on normal images (paper Appendix B).

Hybrid loss (Eq. S2), Adam, gradient clipping and an EMA of the weights, on one device or on
every rank of a `torchrun` job (gradients averaged across ranks). A model folder holds:

- `model.json`: network, diffusion and data settings, the step reached;
- `ema.safetensors`: the EMA weights, which `realnet sdas generate` samples from;
- `train_state.safetensors`: weights, EMA, Adam state and step, for `--resume`;
- `log.jsonl`: mean losses every `log_every` steps (`averaged_steps` says over how many: fewer
  in the window a resume starts in);
- `samples/step_NNNNNNN.png`: grids of EMA samples, one row per strength s.

Every step's randomness (batch, timesteps, noise) comes from (seed, step) alone, so a resumed run
continues exactly as an uninterrupted one would, and the number of ranks changes only rounding.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from realnet import __version__
from realnet.data.records import NORMAL
from realnet.diffusion.gaussian import DEFAULT_TIMESTEPS, SCHEDULES, GaussianDiffusion, make_betas
from realnet.diffusion.network import PRESETS, create_unet, make_denoiser, unet_config
from realnet.diffusion.sampler import sdas_sample
from realnet.engine.checkpoint import atomic_write, read_json, remove_stale_temporaries, unreadable_resume_state
from realnet.engine.runtime import adopt_thread_count, batch_indices
from realnet.engine.distributed import DistributedContext, launched_rank
from realnet.errors import BadFileError, RealnetError
from realnet.files import missing_folders, openable_file

MODEL_META = "model.json"
EMA_WEIGHTS = "ema.safetensors"
TRAIN_STATE = "train_state.safetensors"
TRAIN_LOG = "log.jsonl"
MAX_IMAGE_SIZE = 2048
SAMPLES_DIR = "samples"
FORMAT = "realnet-sdas"
GRID_STRENGTHS = (0.0, 0.1, 0.2)
# A short CPU run cannot wait for a 0.9999 average to forget the random initial weights.
DEFAULT_EMA = {"paper": 0.9999, "cpu": 0.995, "tiny": 0.9}
# What to do about an unreadable resume state: a folder that still holds the model's other files
# is refused by a fresh `sdas train`, and one without the resume state has nothing to resume.
DAMAGED_STATE_REMEDY = "delete the model folder to train it again, or choose another --out"
# Settings a resumed run must share with the run it continues. Of the diffusion's, sample_steps
# sets only the preview grids and generate's default, so a resume may change it.
RESUME_KEYS = ("unet", "categories", "data_sha256", "seed", "batch_size", "lr", "grad_clip", "ema_decay")
RESUME_DIFFUSION_KEYS = ("schedule", "timesteps")


@dataclass
class TrainRequest:
    data: Path
    categories: list[str]
    out: Path
    dataset: str = "mvtec"
    preset: str = "cpu"
    image_size: int | None = None
    channels: str = "auto"  # "auto" (1 when every image is gray), "1" or "3"
    steps: int = 2000
    batch_size: int = 8  # over all ranks
    lr: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float | None = None  # None: the preset's DEFAULT_EMA
    schedule: str = "linear"
    sample_every: int = 500
    sample_count: int = 8
    sample_steps: int = 20
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    init: Path | None = None
    resume: bool = False
    device: str = "auto"
    bf16: bool = False
    progress: bool = True


# --- model folders ---


def read_model_meta(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_META
    meta = read_json(path, f"{model_dir}: not an SDAS model folder (no {MODEL_META}); train one with `realnet sdas train`")
    if meta.get("format") != FORMAT:
        raise BadFileError(path, f"not an SDAS model description (format {meta.get('format')!r})")
    diffusion = meta["diffusion"] if isinstance(meta.get("diffusion"), dict) else {}
    timesteps, sample_steps = diffusion.get("timesteps"), diffusion.get("sample_steps")
    categories = meta.get("categories")
    valid = {
        "unet": isinstance(meta.get("unet"), dict),
        "diffusion.schedule": diffusion.get("schedule") in SCHEDULES,
        "diffusion.timesteps": _is_positive_int(timesteps),
        "diffusion.sample_steps": _is_positive_int(sample_steps) and _is_positive_int(timesteps)
                                  and sample_steps <= timesteps,
        "categories": isinstance(categories, list) and bool(categories)
                      and all(isinstance(category, str) for category in categories),
        "image_size": _is_positive_int(meta.get("image_size")),
        "channels": _is_positive_int(meta.get("channels")),
        "step": type(meta.get("step")) is int and meta["step"] >= 0,
    }
    wrong = [name for name, ok in valid.items() if not ok]
    if wrong:
        raise BadFileError(path, f"malformed SDAS model description ({', '.join(wrong)} missing or invalid); "
                                 "it was edited or damaged")
    return meta


def _is_positive_int(value: Any) -> bool:
    return type(value) is int and value >= 1


def load_sdas_model(model_dir: Path, device: torch.device | str = "cpu",
                    meta: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The EMA network of a trained model folder, in eval mode, and its metadata (`meta`: the
    folder's, already read with `read_model_meta`)."""
    meta = read_model_meta(model_dir) if meta is None else meta
    try:
        unet = create_unet(meta["unet"])
    except (TypeError, ValueError) as error:  # an unknown key or a wrong value (an edit, a newer realnet)
        raise BadFileError(Path(model_dir) / MODEL_META, f"malformed SDAS model description (unet: "
                                                         f"{str(error).splitlines()[0]}); it was edited or damaged") from None
    weights = Path(model_dir) / EMA_WEIGHTS
    try:
        state = load_file(openable_file(weights))
        unet.load_state_dict(state)
    except (OSError, RuntimeError, SafetensorError) as error:
        reason = str(error).splitlines()[0]
        raise BadFileError(weights, f"cannot be loaded into the network of {MODEL_META} ({reason})") from None
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:  # every image it generated would be black
        raise BadFileError(weights, f"{len(broken)} tensors hold NaN or infinite values ('{broken[0]}' first): the "
                                    "weights are broken, e.g. by a diverged training; train the model again")
    return unet.to(device).eval(), meta


def diffusion_for(meta: dict[str, Any]) -> GaussianDiffusion:
    spec = meta["diffusion"]
    return GaussianDiffusion(make_betas(spec["schedule"], spec["timesteps"]))


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from realnet.engine.checkpoint import atomic_write

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_train_state(out: Path, meta: dict[str, Any], unet: nn.Module, ema: nn.Module,
                     optimizer: torch.optim.Optimizer, step: int) -> None:
    """Resume state first, then the EMA weights, then model.json: a reader of model.json always
    finds weights at least as new as the step it names."""
    from realnet.engine.checkpoint import write_json

    tensors = {f"model.{k}": v for k, v in _cpu_state(unet).items()}
    tensors.update({f"ema.{k}": v for k, v in _cpu_state(ema).items()})
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        tensors.update({f"optimizer.{index}.{name}": value.detach().cpu().contiguous() for name, value in state.items()})
    # the run's metadata travels with the resume state, so a kill before model.json is written
    # (the paper preset's EMA file takes a while) still leaves a resumable run
    metadata = {"step": str(step), "param_groups": json.dumps(optimizer_state["param_groups"]),
                "meta": json.dumps({**meta, "step": step})}
    _atomic_save_file(tensors, out / TRAIN_STATE, metadata)
    _atomic_save_file(_cpu_state(ema), out / EMA_WEIGHTS)
    write_json(out / MODEL_META, {**meta, "step": step})


def resume_meta(out: Path) -> dict[str, Any]:
    """The metadata saved with the resume state (model.json for states older than that)."""
    openable_file(out / TRAIN_STATE)
    try:
        with safe_open(str(out / TRAIN_STATE), "pt") as handle:
            saved = handle.metadata().get("meta")
        meta = json.loads(saved) if saved else None
    except Exception:  # a truncated or foreign file, or torn metadata
        raise unreadable_resume_state(out / TRAIN_STATE, DAMAGED_STATE_REMEDY) from None
    return read_model_meta(out) if meta is None else meta


def load_train_state(out: Path, unet: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights, EMA and Adam state from `train_state.safetensors`; returns its step."""
    path = out / TRAIN_STATE
    openable_file(path)
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        device = next(unet.parameters()).device
        unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        return int(metadata["step"])
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError):  # settings matched: the file is damaged
        raise unreadable_resume_state(path, DAMAGED_STATE_REMEDY) from None


def init_from_checkpoint(unet: nn.Module, source: Path) -> dict[str, Any]:
    """Copy every tensor of `source` (a model folder or a .safetensors file) whose name and shape
    match the network; the others keep their initial values."""
    path = Path(source) / EMA_WEIGHTS if Path(source).is_dir() else Path(source)
    try:
        tensors = load_file(openable_file(path))
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        raise BadFileError(path, f"cannot be read as safetensors weights ({str(error).splitlines()[0]})") from None
    own = unet.state_dict()
    matching = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise BadFileError(path, "no tensor matches the network by name and shape")
    unet.load_state_dict(matching, strict=False)
    return {"path": str(path), "loaded": len(matching), "kept_initial": len(own) - len(matching)}


# --- data ---


def load_training_images(request: TrainRequest, size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every normal training image of the categories, decoded once: uint8 (N, C, S, S), the
    category index of each, and C (1 when asked, or on "auto" when every image is gray)."""
    from PIL import Image

    from realnet.data.layouts import load_dataset
    from realnet.engine.runtime import load_samples

    arrays, labels = [], []
    for index, category in enumerate(request.categories):
        records = [r for r in load_dataset(request.data, category, request.dataset)
                   if r.split == "train" and r.label == NORMAL]
        if not records:
            raise RealnetError(f"{request.data}: category {category!r} has no normal training images")
        images, _, _, _ = load_samples(records, size, desc=f"loading {category}",
                                       progress=request.progress and launched_rank() == 0)  # one bar under torchrun
        arrays.append(images)
        labels += [index] * len(images)
    images = np.concatenate(arrays)
    if request.channels not in ("auto", "1", "3"):
        raise RealnetError(f"--channels {request.channels!r}: use auto, 1 or 3")
    gray = bool((images[..., :1] == images).all())
    channels = 3 if request.channels == "3" or (request.channels == "auto" and not gray) else 1
    if channels == 1 and not gray:  # the gray level, as Pillow's L conversion computes it, not the red channel
        images = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(images[..., :channels].transpose(0, 3, 1, 2)))
    return tensor, torch.tensor(labels, dtype=torch.long), channels


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def rank_batch(step: int, n_images: int, batch_size: int, seed: int, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s share of the global batch of `step` (epoch-wise shuffling, as in fit)."""
    return batch_indices(step, n_images, batch_size, seed)[rank::world_size]


def rank_noise(step: int, seed: int, shape: tuple[int, ...], num_timesteps: int, rank: int,
               world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps t ~ U{0..T-1} and noise for rank `rank`'s share of step `step`'s global batch of
    `shape`. They are drawn for the whole batch from (seed, step) alone, so the number of ranks
    changes only float rounding, never the randomness."""
    state = np.random.SeedSequence([seed, 23, step]).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    t = torch.randint(0, num_timesteps, shape[:1], generator=generator)
    noise = torch.randn(shape, generator=generator)
    return t[rank::world_size], noise[rank::world_size]


# --- training ---


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for averaged, current in zip(ema.parameters(), model.parameters()):
            averaged.lerp_(current, 1.0 - decay)


@torch.no_grad()
def sample_grid(ema: nn.Module, meta: dict[str, Any], seed: int, count: int, device: torch.device,
                bf16: bool) -> np.ndarray:
    """uint8 (H, W, 3) grid of EMA samples: one row per s in GRID_STRENGTHS, the same starting
    noise in every row of a column, a label "s=..." left of each row."""
    from PIL import Image, ImageDraw

    diffusion = diffusion_for(meta).respace(meta["diffusion"]["sample_steps"])
    size, channels = meta["image_size"], meta["channels"]
    labels = (torch.arange(count) % len(meta["categories"])) if meta["unet"]["num_class_embeds"] else None
    denoise = make_denoiser(ema, labels, bf16)
    gap, margin = 2, 44
    canvas = Image.new("RGB", (margin + count * (size + gap), len(GRID_STRENGTHS) * (size + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, strength in enumerate(GRID_STRENGTHS):
        generators = [torch.Generator().manual_seed(seed * 1000 + column) for column in range(count)]
        images = to_uint8(sdas_sample(denoise, diffusion, generators, (channels, size, size), strength, device=device))
        top = row * (size + gap)
        draw.text((4, top + size // 2 - 5), f"s={strength:g}", fill="black")
        for column, image in enumerate(images):
            tile = Image.fromarray(image[..., 0] if channels == 1 else image).convert("RGB")
            canvas.paste(tile, (margin + column * (size + gap), top))
    return np.asarray(canvas)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C)."""
    return ((images.float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from realnet.engine.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG"))


def _check_request(request: TrainRequest) -> None:
    if request.preset not in PRESETS:
        raise RealnetError(f"--preset {request.preset!r}: use one of {', '.join(PRESETS)}")
    for name in ("steps", "batch_size", "sample_every", "sample_count", "sample_steps", "save_every", "log_every"):
        if getattr(request, name) < 1:
            flag = "batch" if name == "batch_size" else name.replace("_", "-")  # the command line's spelling
            raise RealnetError(f"--{flag} must be at least 1")
    if not request.categories:
        raise RealnetError("--categories: name at least one category")
    if request.ema_decay is not None and not 0.0 <= request.ema_decay < 1.0:
        raise RealnetError(f"--ema {request.ema_decay}: must be in [0, 1)")
    # a negative clip norm reverses the gradients and 0 zeroes them: both train without an error
    for name, value in (("lr", request.lr), ("grad-clip", request.grad_clip)):
        if not 0 < value < math.inf:
            raise RealnetError(f"--{name} {value}: must be a positive number")
    if request.sample_steps > DEFAULT_TIMESTEPS:
        raise RealnetError(f"--sample-steps {request.sample_steps}: at most the {DEFAULT_TIMESTEPS} training timesteps")
    if request.schedule not in SCHEDULES:
        raise RealnetError(f"--schedule {request.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if request.image_size is not None:
        factor = 2 ** (len(PRESETS[request.preset].channel_mults) - 1)  # the U-Net's downsampling
        if request.image_size < factor or request.image_size % factor:
            raise RealnetError(f"--image-size {request.image_size}: the {request.preset} preset needs a positive "
                               f"multiple of {factor}")
        if request.image_size > MAX_IMAGE_SIZE:  # every training image is held in memory at this size
            raise RealnetError(f"--image-size {request.image_size}: at most {MAX_IMAGE_SIZE} (the paper's model "
                               "works at 256)")
    if request.dataset == "folder":  # its layout needs options (--normal-dir ...) this command does not take
        raise RealnetError("--dataset folder: sdas train reads the mvtec, visa, mpdd and btad layouts; put the "
                           "normal images in ROOT/CATEGORY/train/good/ and use --dataset mvtec")
    if len(set(request.categories)) != len(request.categories):
        raise RealnetError(f"--categories {','.join(request.categories)}: each category once")


def keep_log_until(path: Path, step: int) -> None:
    """Drop the log records after `step`, the last saved one: a killed run logs more often than it
    saves, and the steps it redoes on resume (or all of them, when it died before its first save
    and starts afresh) would otherwise be logged twice."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line]
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) < len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def keep_samples_until(folder: Path, step: int) -> None:
    """Remove the sample grids after `step`, the last saved one, for the reason `keep_log_until`
    drops log records: after a fresh start they would be another run's. Also the temporaries of
    grids a kill cut short."""
    if not folder.is_dir():
        return
    remove_stale_temporaries(folder)
    for grid in folder.glob("step_*.png"):
        number = grid.stem.removeprefix("step_")
        if number.isdigit() and int(number) > step:
            grid.unlink()


def _logged_step(line: str) -> float:
    """A log record's step; a line torn by a kill mid-write counts as after every save."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _prepare_out(request: TrainRequest, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse to overwrite a run by accident, and to resume one trained with other settings.
    Returns the metadata of the run a resume continues (None for a new run)."""
    out = Path(request.out)
    has_state = (out / TRAIN_STATE).is_file()
    if not request.resume:
        # a model folder without its resume state (all that generate needs) is a trained model too
        if any((out / name).is_file() for name in (TRAIN_STATE, EMA_WEIGHTS, MODEL_META)):
            raise RealnetError(f"{out} already holds an SDAS model: pass --resume to continue its training or "
                               "choose a new --out")
        if out.is_dir():
            remove_stale_temporaries(out)  # of a run killed in its first save, which left nothing to resume
        return None
    if not has_state:
        raise RealnetError(f"{out}: nothing to resume (no {TRAIN_STATE})")
    previous = resume_meta(out)
    changed = [key for key in RESUME_KEYS if previous.get(key) != meta[key]]
    diffusion = previous.get("diffusion") if isinstance(previous.get("diffusion"), dict) else {}
    changed += [f"diffusion.{key}" for key in RESUME_DIFFUSION_KEYS if diffusion.get(key) != meta["diffusion"][key]]
    if changed:
        raise RealnetError(f"{out}: cannot resume with different {', '.join(changed)} than the run there")
    if previous["step"] > request.steps:
        raise RealnetError(f"{out} is already at step {previous['step']}; --steps {request.steps} would not train "
                           "it (give more steps, or use the model as it is)")
    remove_stale_temporaries(out)  # of a run killed while it wrote a checkpoint
    return previous


def run_device(context: DistributedContext, name: str, bf16: bool) -> torch.device:
    """The rank's own device under torchrun, else the device `name` (auto, cpu, cuda...);
    bf16 autocast is refused off a GPU with native bf16, where emulated bf16 is slower than fp32."""
    from realnet.engine.runtime import bf16_autocast_available, resolve_device

    device = context.device if context.enabled else resolve_device(name)
    if bf16 and device.type != "cuda":
        raise RealnetError("--bf16 needs a CUDA device")
    if bf16 and not bf16_autocast_available(device):
        raise RealnetError(f"--bf16: {device} has no native bf16 (it needs compute capability 8.0 or later, "
                           "where emulated bf16 is slower than fp32); leave --bf16 out")
    return device


def train(request: TrainRequest) -> dict[str, Any]:
    """Train (or continue training) an SDAS model into `request.out`; returns a summary."""
    from tqdm.auto import tqdm

    from realnet.engine import distributed

    _check_request(request)
    context = distributed.init_for_device(request.device)
    try:
        device = run_device(context, request.device, request.bf16)
        if request.batch_size % context.world_size:
            raise RealnetError(f"--batch {request.batch_size} must be divisible by the {context.world_size} ranks")
        main = context.is_main_process
        preset = PRESETS[request.preset]
        size = request.image_size or preset.image_size
        images, labels, channels = load_training_images(request, size)
        conditional = len(request.categories) > 1
        meta: dict[str, Any] = {
            "format": FORMAT, "realnet_version": __version__, "preset": request.preset,
            "unet": unet_config(request.preset, channels, len(request.categories) if conditional else None, size),
            "diffusion": {"schedule": request.schedule, "timesteps": DEFAULT_TIMESTEPS, "sample_steps": request.sample_steps},
            "image_size": size, "channels": channels, "categories": list(request.categories),
            "dataset": request.dataset, "data": str(request.data), "num_images": len(images),
            "data_sha256": data_fingerprint(images, labels), "seed": request.seed,
            "batch_size": request.batch_size, "lr": request.lr, "grad_clip": request.grad_clip,
            "ema_decay": DEFAULT_EMA[request.preset] if request.ema_decay is None else request.ema_decay,
            "world_size": context.world_size, "device": device.type, "bf16": request.bf16, "init": None,
        }
        out = Path(request.out)
        previous = _prepare_out(request, meta)
        if previous is not None:  # bit for bit only at the killed run's thread count (None: not recorded, older)
            adopt_thread_count(previous.get("cpu_threads"), device, warn=main)
        meta["cpu_threads"] = torch.get_num_threads() if device.type == "cpu" else None
        diffusion = diffusion_for(meta)
        torch.manual_seed(request.seed)
        unet = create_unet(meta["unet"])
        if request.init and not request.resume:
            meta["init"] = init_from_checkpoint(unet, request.init)
        unet.to(device).train()
        ema = copy.deepcopy(unet).requires_grad_(False).eval()
        optimizer = torch.optim.Adam(unet.parameters(), lr=request.lr)
        start = load_train_state(out, unet, ema, optimizer) if request.resume else 0
        if previous is not None:
            meta["init"] = previous.get("init")
        created = missing_folders(out) if main else []
        if main:
            out.mkdir(parents=True, exist_ok=True)
            keep_log_until(out / TRAIN_LOG, start)
            keep_samples_until(out / SAMPLES_DIR, start)
        try:
            summary = _train_loop(request, meta, diffusion, images, labels, unet, ema, optimizer, start, device,
                                  context, tqdm)
        except BaseException:
            if created and not (out / TRAIN_STATE).exists():  # a run that saved nothing leaves no folder
                shutil.rmtree(created[-1], ignore_errors=True)
            raise
        distributed.barrier(context)
        return summary
    finally:
        distributed.cleanup(context)


def _train_loop(request, meta, diffusion, images, labels, unet, ema, optimizer, start, device, context, tqdm) -> dict[str, Any]:
    from realnet.engine import distributed

    out = Path(request.out)
    main = context.is_main_process
    conditional = meta["unet"]["num_class_embeds"] is not None
    totals = {"loss": 0.0, "mse": 0.0, "vlb": 0.0}
    logged_steps = 0
    began = time.perf_counter()
    bar = tqdm(total=request.steps, initial=start, desc="sdas train", unit="step", disable=not (main and request.progress))
    for step in range(start, request.steps):
        index = torch.from_numpy(
            rank_batch(step, len(images), request.batch_size, request.seed, context.rank, context.world_size))
        x0 = images[index].to(device).float() / 127.5 - 1.0
        t, noise = rank_noise(step, request.seed, (request.batch_size, *images.shape[1:]), diffusion.num_timesteps,
                              context.rank, context.world_size)
        t, noise = t.to(device), noise.to(device)
        x_t = diffusion.q_sample(x0, t, noise)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=request.bf16):
            output = unet(x_t, t, class_labels=labels[index].to(device) if conditional else None).sample
        terms = diffusion.hybrid_loss(output.float(), x0, x_t, t, noise)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].mean().backward()
        distributed.average_gradients(unet.parameters(), context)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), request.grad_clip)
        optimizer.step()
        update_ema(ema, unet, meta["ema_decay"])
        step_terms = {name: terms[name].mean().item() for name in totals}
        done = step + 1
        if not math.isfinite(step_terms["loss"]):  # before this step's save: the last saved weights are still finite
            raise RealnetError(f"{out}: training diverged: the loss is {step_terms['loss']} at step {done}; lower "
                               f"--lr (now {request.lr:g}){' or leave out --bf16' if request.bf16 else ''} and train "
                               "again (a --resume would diverge the same way)")
        for name in totals:
            totals[name] += step_terms[name]
        logged_steps += 1
        bar.update(1)
        log_now = done % request.log_every == 0 or done == request.steps
        if log_now:
            totals = distributed.average_scalars(totals, context)  # the whole batch's loss, on every rank
            if main:
                record = {"step": done, **{k: v / logged_steps for k, v in totals.items()},
                          "averaged_steps": logged_steps, "seconds": round(time.perf_counter() - began, 2)}
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                with open(out / TRAIN_LOG, "a") as log:
                    log.write(json.dumps(record) + "\n")
            totals = dict.fromkeys(totals, 0.0)  # on every rank: the next window starts empty everywhere
            logged_steps = 0
        if main and (done % request.save_every == 0 or done == request.steps):
            save_train_state(out, meta, unet, ema, optimizer, done)
        if main and (done % request.sample_every == 0 or done == request.steps):
            grid = sample_grid(ema, meta, request.seed, request.sample_count, device, request.bf16)
            save_png(out / SAMPLES_DIR / f"step_{done:07d}.png", grid)
    bar.close()
    return {"out": str(out), "steps": request.steps, "started_at_step": start,
            "seconds": round(time.perf_counter() - began, 2), "images": meta["num_images"],
            "channels": meta["channels"], "rank": context.rank, "world_size": context.world_size}
