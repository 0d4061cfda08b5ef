"""`realnet sdas train|generate|quality`: the SDAS diffusion model, the SIA image bank, and FID /
cluster-LPIPS of synthetic images. All run under `torchrun` unchanged (train and generate split
their work across ranks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from realnet.cli.common import path_argument, positive_int, print_json_line, seed_int, thread_count
from realnet.errors import BadFileError, RealnetError
from realnet.files import openable_file


def register(subparsers: argparse._SubParsersAction) -> None:
    sdas = subparsers.add_parser("sdas", help="train SDAS, generate the SIA bank, measure synthesis quality",
                                 description=__doc__)
    actions = sdas.add_subparsers(dest="sdas_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train the diffusion model on normal images (Appendix B)")
    train.add_argument("--data", type=path_argument, required=True, help="dataset root")
    train.add_argument("--categories", required=True,
                       help="comma-separated categories; more than one trains one class-conditional model")
    train.add_argument("--dataset", default="mvtec", help="dataset layout (default mvtec)")
    train.add_argument("--out", type=path_argument, required=True, help="model folder")
    train.add_argument("--preset", default="cpu", help="paper (256 px, 553M params), cpu (64 px, the default) or tiny")
    train.add_argument("--image-size", type=int, help="override the preset's image size")
    train.add_argument("--channels", default="auto", help="auto (1 if every image is gray), 1 or 3")
    train.add_argument("--steps", type=int, default=2000, help="total optimizer steps (default 2000)")
    train.add_argument("--batch", type=int, default=8, help="global batch size over all ranks (default 8)")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    train.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    train.add_argument("--ema", type=float, help="EMA decay (default: paper 0.9999, cpu 0.995, tiny 0.9)")
    train.add_argument("--schedule", default="linear", help="beta schedule: linear (paper) or cosine")
    train.add_argument("--sample-every", type=int, default=500, help="steps between sample grids (default 500)")
    train.add_argument("--sample-count", type=int, default=8, help="images per grid row (default 8)")
    train.add_argument("--sample-steps", type=int, default=20, help="respaced sampling steps (default 20)")
    train.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (default 500)")
    train.add_argument("--log-every", type=int, default=50, help="steps between log.jsonl lines (default 50)")
    train.add_argument("--seed", type=seed_int, default=0, help="training seed (default 0)")
    train.add_argument("--init", type=path_argument, help="start from a model folder or .safetensors (matching tensors only)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_runtime_flags(train)
    train.set_defaults(func=run_train)

    generate = actions.add_parser("generate", help="write the SIA bank of one category: OUT/<category>/*.png")
    generate.add_argument("--model", type=path_argument, required=True, help="model folder from `sdas train`")
    generate.add_argument("--category", required=True, help="the category to generate (one the model was trained on)")
    generate.add_argument("--count", type=int, required=True, help="images 0..COUNT-1 (existing ones are kept)")
    generate.add_argument("--strength", default="0.1:0.2", help="s ~ U(LOW, HIGH) per image, or one value, within [0, 100] (default 0.1:0.2)")
    generate.add_argument("--out", type=path_argument, required=True, help="SIA root folder")
    generate.add_argument("--seed", type=seed_int, default=0,
                          help="fixes every image's noise and strength (default 0)")
    generate.add_argument("--batch", type=int, default=8, help="images sampled together (part of what fixes the bytes)")
    generate.add_argument("--steps", type=int, help="respaced sampling steps (default: the model's, 20)")
    generate.add_argument("--sampler", default="ancestral", help="ancestral (Algorithm 1) or ddim (Algorithm S1)")
    generate.add_argument("--ddim-variance", default="learned", help="DDIM Sigma: beta, beta_tilde or learned")
    _add_runtime_flags(generate)
    generate.set_defaults(func=run_generate)

    quality = actions.add_parser("quality", help="FID and cluster-LPIPS of synthetic against real images (Tab. S6)")
    quality.add_argument("--real", type=path_argument, nargs="+", required=True, help="folders of real (anomalous) images")
    quality.add_argument("--fake", type=path_argument, nargs="+", required=True, help="folders of synthetic images")
    quality.add_argument("--features", default="tf_efficientnet_lite0",
                         help="backbone for the features (default tf_efficientnet_lite0)")
    quality.add_argument("--backbone-weights", "--weights", dest="weights", default="auto",
                         help="backbone weights: auto, timm, torchvision or a file (the name fit takes; --weights "
                              "is the same option)")
    quality.add_argument("--lpips-weights", type=path_argument, help="official LPIPS linear-layer weights; default uniform")
    quality.add_argument("--size", type=positive_int, default=256, help="images are resized to SIZE x SIZE (default 256)")
    quality.add_argument("--batch", type=positive_int, default=16, help="images per forward pass (default 16)")
    quality.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    quality.add_argument("--threads", type=thread_count, help="torch CPU threads")
    quality.add_argument("--no-progress", action="store_true", help="no progress bar")
    quality.set_defaults(func=run_quality)


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (torchrun: one GPU per rank)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=thread_count, help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def run_train(args: argparse.Namespace) -> int:
    from realnet.diffusion.train import TrainRequest, train

    _set_threads(args.threads)
    summary = train(TrainRequest(
        data=args.data, categories=[c for c in args.categories.split(",") if c], out=args.out,
        dataset=args.dataset, preset=args.preset, image_size=args.image_size, channels=args.channels,
        steps=args.steps, batch_size=args.batch, lr=args.lr, grad_clip=args.grad_clip, ema_decay=args.ema,
        schedule=args.schedule, sample_every=args.sample_every, sample_count=args.sample_count,
        sample_steps=args.sample_steps, save_every=args.save_every, log_every=args.log_every, seed=args.seed,
        init=args.init, resume=args.resume, device=args.device, bf16=args.bf16, progress=not args.no_progress,
    ))
    if summary["rank"] == 0:
        print_json_line(summary)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from realnet.diffusion.generate import GenerateRequest, generate, parse_strength

    _set_threads(args.threads)
    summary = generate(GenerateRequest(
        model=args.model, category=args.category, count=args.count, out=args.out,
        strength=parse_strength(args.strength), seed=args.seed, batch_size=args.batch, steps=args.steps,
        sampler=args.sampler, ddim_variance=args.ddim_variance, device=args.device, bf16=args.bf16,
        progress=not args.no_progress,
    ))
    print_json_line(summary)
    return 0


def _image_files(folders: list[Path]) -> list[Path]:
    from realnet.synthesis.sources import collect_images

    return [path for folder in folders for path in collect_images(folder, "image")]


def _read_lpips_weights(path: Path, channels: list[int]):
    import torch

    from realnet.metrics.lpips import lpips_weights_from_state

    openable_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # many types; PyTorch's own message advises weights_only=False, unsafe for a foreign file
        raise BadFileError(path, "not usable as LPIPS linear weights: not a tensor file realnet can read safely "
                                 "(damaged, or another format)") from None
    try:
        return lpips_weights_from_state(state, channels)
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise BadFileError(path, f"not usable as LPIPS linear weights: {reason}") from None


def run_quality(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from realnet.data.io import read_image, resize_image
    from realnet.engine.runtime import resolve_device, to_tensor
    from realnet.metrics.fid import fid_from_features, pooled_features
    from realnet.metrics.lpips import cluster_lpips, lpips_embedding
    from realnet.model.backbone import create_backbone

    _set_threads(args.threads)
    device = resolve_device(args.device)
    weights = Path(args.weights) if args.weights not in ("auto", "timm", "torchvision", "random") else args.weights
    net = create_backbone(args.features, weights=weights, layers=(1, 2, 3, 4)).to(device)
    lin = _read_lpips_weights(args.lpips_weights, net.channels) if args.lpips_weights else None

    def features(files: list[Path], desc: str) -> tuple[np.ndarray, torch.Tensor]:
        pooled, embedded = [], []
        with torch.no_grad(), tqdm(total=len(files), desc=desc, unit="img", disable=args.no_progress) as bar:
            for start in range(0, len(files), args.batch):
                images = np.stack([resize_image(read_image(f), args.size) for f in files[start:start + args.batch]])
                maps = net(to_tensor(images, device))
                pooled.append(pooled_features(maps).cpu())
                embedded.append(lpips_embedding(maps, lin).cpu())
                bar.update(len(images))
        return torch.cat(pooled).double().numpy(), torch.cat(embedded)

    real_files, fake_files = _image_files(args.real), _image_files(args.fake)
    if len(real_files) < 2 or len(fake_files) < 2:
        raise RealnetError("quality needs at least 2 real and 2 synthetic images")
    real_pooled, real_embedded = features(real_files, "real images")
    fake_pooled, fake_embedded = features(fake_files, "synthetic images")
    try:
        diversity = cluster_lpips(real_embedded, fake_embedded)
    except ValueError as error:  # every synthetic image alone in its cluster: no diversity to measure
        raise RealnetError(f"cluster LPIPS: {error} ({len(fake_files)} synthetic for {len(real_files)} real "
                           "images)") from None
    report = {
        "fid": fid_from_features(real_pooled, fake_pooled),
        **diversity,
        "features": net.identity,
        "fid_note": ("FID on this backbone's pooled deepest features; comparable only to FIDs with the same "
                     "backbone, weights and size"),
        "lpips_weights": str(args.lpips_weights) if args.lpips_weights else "uniform (no learned linear layers)",
        "n_real": len(real_files), "n_fake": len(fake_files), "size": args.size,
    }
    print(json.dumps(report, indent=2))
    return 0
