"""SDAS sizes and speeds; prints Markdown tables.

1. The `paper` preset (ADM-size UNet at 256 px), built on the meta device (no memory used):
   exact parameter count, bytes of weights and of the training state (weights, gradients, Adam's
   two moments and the EMA copy, fp32), and the activations kept for the backward pass at
   batch 1 and 16: the tensors autograd saves during one forward (counted once per storage,
   views included in their base; the eager attention path, so a memory-efficient attention
   kernel on a GPU needs less).
2. The `cpu` preset on this machine: seconds per training step (hybrid loss, Adam, EMA) and SIA
   generation speed in images/second (20 respaced ancestral SDAS steps), with random weights
   (speed does not depend on them) and --threads CPU threads.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_sdas.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from common import run_as_command

from realnet.cli.common import positive_int
from realnet.diffusion.gaussian import GaussianDiffusion, linear_betas
from realnet.diffusion.network import create_unet, make_denoiser, parameter_count, unet_config
from realnet.diffusion.sampler import sdas_sample
from realnet.diffusion.train import update_ema

GIB = 2**30


def saved_activation_bytes(config: dict, batch: int) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass, on the meta device."""
    unet = create_unet(config, "meta")
    parameters = {id(p) for p in unet.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in parameters:
            saved[id(base)] = base.numel() * base.element_size()
        return tensor

    size, channels = config["sample_size"], config["in_channels"]
    labels = torch.zeros(batch, dtype=torch.long, device="meta") if config["num_class_embeds"] else None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(torch.zeros(batch, channels, size, size, device="meta"), torch.zeros(batch, dtype=torch.long, device="meta"),
             class_labels=labels)
    return sum(saved.values())


def paper_table() -> str:
    rows = ["| paper preset (256 px, 3 channels) | value |", "|---|---|"]
    plain = unet_config("paper", 3)
    count = parameter_count(plain)
    rows.append(f"| parameters, unconditional | {count:,} |")
    rows.append(f"| parameters, 15 category embeddings (MVTec) | {parameter_count(unet_config('paper', 3, 15)):,} |")
    rows.append(f"| fp32 weights | {count * 4 / GIB:.2f} GiB |")
    rows.append(f"| fp32 training state (weights + grads + Adam m, v + EMA) | {count * 4 * 5 / GIB:.2f} GiB |")
    for batch in (1, 16):
        activations = saved_activation_bytes(plain, batch)
        rows.append(f"| activations saved for backward, batch {batch}, fp32 | {activations / GIB:.2f} GiB |")
        rows.append(f"| training total estimate, batch {batch}, fp32 | {(activations + count * 20) / GIB:.2f} GiB |")
    return "\n".join(rows)


def cpu_table(threads: int, train_steps: int, images: int, batch: int) -> str:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = unet_config("cpu", 1)
    unet = create_unet(config)
    diffusion = GaussianDiffusion(linear_betas())
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    ema = copy.deepcopy(unet).requires_grad_(False)
    size = config["sample_size"]
    x0 = torch.rand(batch, 1, size, size) * 2 - 1
    durations = []
    for step in range(train_steps + 1):
        began = time.perf_counter()
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        x_t = diffusion.q_sample(x0, t, noise)
        loss = diffusion.hybrid_loss(unet(x_t, t).sample, x0, x_t, t, noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, unet, 0.995)
        if step:  # the first step pays one-time kernel setup
            durations.append(time.perf_counter() - began)
    spaced = diffusion.respace(20)
    denoise = make_denoiser(ema.eval())
    with torch.no_grad():
        warmup = [torch.Generator().manual_seed(i) for i in range(batch)]
        sdas_sample(denoise, spaced, warmup, (1, size, size), 0.1)  # one-time setup at the timed batch size
        began = time.perf_counter()
        for start in range(0, images, batch):
            generators = [torch.Generator().manual_seed(i) for i in range(start, min(start + batch, images))]
            sdas_sample(denoise, spaced, generators, (1, size, size), 0.15)
        seconds = time.perf_counter() - began
    return "\n".join([
        f"| cpu preset (64 px, 1 channel, {parameter_count(config):,} params), {threads} thread(s) | value |",
        "|---|---|",
        f"| training step, batch {batch} (median of {train_steps}) | {statistics.median(durations):.3f} s |",
        f"| generation, 20 ancestral SDAS steps, batch {batch} | {images / seconds:.2f} images/s |",
    ])


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--train-steps", type=positive_int, default=10)
    parser.add_argument("--images", type=positive_int, default=32)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--skip-cpu", action="store_true", help="only the meta-device paper preset table")
    args = parser.parse_args()
    print(paper_table())
    if not args.skip_cpu:
        print()
        print(cpu_table(args.threads, args.train_steps, args.images, args.batch))


if __name__ == "__main__":
    main()
