"""Devices, seeds and image batches: the small runtime pieces every command shares."""

from __future__ import annotations

import platform
import random
import sys
from enum import IntEnum
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from realnet.data.io import load_sample
from realnet.data.records import Record
from realnet.errors import BadFileError, RealnetError
from realnet.files import contents_sha256


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RealnetError(f"--device {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise RealnetError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RealnetError("--device cuda was requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise RealnetError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        # calls that take no device (bf16 support, synchronize, new streams) answer for the current one
        torch.cuda.set_device(device)
    if device.type == "mps" and not _mps_available():
        raise RealnetError("--device mps was requested but MPS is not available")
    return device


def adam(parameters: Iterable[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where PyTorch has one (CPU and CUDA): one pass over all
    parameters instead of a Python loop of small tensor ops per parameter."""
    return torch.optim.Adam(parameters, lr=lr, fused=device.type in ("cpu", "cuda"))


def bf16_autocast_available(device: torch.device) -> bool:
    """Whether bf16 autocast speeds `device` up: a CUDA GPU with native bf16 (compute capability
    8.0 or later), or a CPU whose oneDNN has native bf16 kernels (AVX512-BF16 or AMX). Elsewhere
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def processor_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def compute_environment(device: torch.device) -> dict[str, object]:
    """What a run's floating-point results depend on besides its seed: a seeded fit repeats bit
    for bit on the same machine and software, but another CPU model or PyTorch version picks
    other oneDNN / cuDNN kernels, which round differently (docs/results-history.md measures how much)."""
    environment: dict[str, object] = {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "processor": processor_name(), "threads": torch.get_num_threads(),
        "native_bf16": bf16_autocast_available(device),  # of the device the fit trained on, not the host CPU
    }
    if device.type == "cuda":
        environment["accelerator"] = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        environment["accelerator"] = "mps"
    return environment


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Stream(IntEnum):
    """The independent random streams drawn from one seed. A draw's randomness comes from
    (seed, stream, *key), every key of a stream has the same length, and the stream id and key
    form a SeedSequence spawn key (where, unlike in an entropy list, a trailing 0 counts), so no
    two draws share randomness."""

    TRAINING_SAMPLE = 1  # (step, batch slot)
    EPOCH_ORDER = 2  # (epoch,)
    HOLDOUT_SPLIT = 3  # ()
    AFS_IMAGES = 4  # (AFS batch,)
    AFS_SAMPLE = 5  # (AFS batch, batch slot)
    PAINTED_DEFECT = 6  # (held-out image,)


def stream_rng(seed: int, stream: Stream, *key: int) -> np.random.Generator:
    """The generator of one draw of `stream` (see `Stream`); it depends on nothing else, so runs
    repeat and resume identically."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(stream), *map(int, key))))


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return max(1, n_images // batch_size)


def batch_indices(step: int, n_images: int, batch_size: int, seed: int) -> np.ndarray:
    """Epoch-wise shuffling without replacement, computed from (seed, epoch) alone."""
    per_epoch = steps_per_epoch(n_images, batch_size)
    epoch, position = divmod(step, per_epoch)
    order = stream_rng(seed, Stream.EPOCH_ORDER, epoch).permutation(n_images)
    if n_images < batch_size:
        order = np.resize(order, batch_size)
    return order[position * batch_size:(position + 1) * batch_size]


def to_tensor(images: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device).permute(0, 3, 1, 2)
    return tensor.float().div_(255.0)


def load_samples(
    records: list[Record], size: int, *, skip_bad: bool = False, desc: str = "loading images",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[Record], list[BadFileError]]:
    """Decode and resize every record once, in parallel threads (Pillow releases the GIL).

    Returns images (N, S, S, 3) uint8, masks (N, S, S) bool, the records kept, and the bad files
    skipped (only with skip_bad; otherwise the first bad file raises)."""
    images = np.zeros((len(records), size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(records), size, size), dtype=bool)
    ok = np.zeros(len(records), dtype=bool)
    errors: dict[int, BadFileError] = {}

    def decode(i: int) -> None:
        try:
            images[i], masks[i] = load_sample(records[i], size)
            ok[i] = True
        except BadFileError as error:
            if not skip_bad:
                raise
            errors[i] = error

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in tqdm(pool.map(decode, range(len(records))), total=len(records), desc=desc,
                      disable=not progress, leave=False):
            pass
    kept = [r for r, good in zip(records, ok) if good]
    return images[ok], masks[ok], kept, [errors[i] for i in sorted(errors)]  # record order, not finishing order


def training_image_digests(records: list[Record]) -> list[str]:
    """The sorted sha256 of the normal training images, as model.json records them: by content,
    `test` finds them in any test split (renamed, copied, or moved there by a folder dataset's split
    when files are added), and --resume refuses a training set changed meanwhile."""
    return sorted({digest for digest in contents_sha256(
        record.image for record in records if record.split == "train" and record.label == 0) if digest})


def adopt_thread_count(threads: int | None, device: torch.device, warn: bool) -> None:
    """A resumed CPU run (fit, sdas train) trains with the thread count the killed run had (None: an older realnet did
    not record it): another count splits the kernels' sums differently, so the weights would round
    away from an uninterrupted run's."""
    if device.type != "cpu" or threads is None or threads == torch.get_num_threads():
        return
    if warn:
        tqdm.write(f"realnet: --resume trains with the {threads} CPU thread(s) the run started with (not "
                   f"{torch.get_num_threads()}): the thread count changes how the kernels round", file=sys.stderr)
    torch.set_num_threads(threads)
