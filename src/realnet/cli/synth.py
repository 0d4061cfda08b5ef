"""`realnet synth preview`: a grid of the synthetic anomalies the model trains on, with their masks."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from realnet.cli.common import add_data_arguments, data_selection, file_to_write, path_argument, seed_int
from realnet.errors import RealnetError

GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
JPEG_MAX_SIDE = 65500  # libjpeg's largest side, as OpenCV enforces it


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synth", help="training-time anomaly synthesis tools", description=__doc__)
    actions = synth.add_subparsers(dest="synth_command", required=True, metavar="ACTION")
    preview = actions.add_parser(
        "preview",
        help="write a grid of synthetic training anomalies and their masks",
        description="Each column is one synthetic sample made from a random normal training image: "
                    "the image (captioned with its source and opacity d) above the same image with its "
                    "anomaly mask in red.",
    )
    add_data_arguments(preview)
    preview.add_argument("--source", action="extend", nargs="+", metavar="NAME[:WEIGHT]",
                         help="anomaly source(s): dtd, sia, cutpaste, nsa, shade, crack, feature_noise (the image is left as it is; shown with its mask) (default: dtd and/or sia "
                              "when --dtd/--sia are given)")
    preview.add_argument("--dtd", type=path_argument, help="DTD folder for the dtd source (e.g. DATA/dtd); every image below it is a texture")
    preview.add_argument("--sia", type=path_argument, help="SDAS image bank for the sia source (holding <category>/)")
    preview.add_argument("--foreground", choices=("rule", "auto", "none"), default="rule",
                         help="where anomalies may go: the category's rule (auto when unknown), auto, "
                              "or none = whole image (default rule)")
    preview.add_argument("--colour-textures", action="store_true",
                         help="blend colour textures into grayscale images as the paper does (default: "
                              "grayscale textures on grayscale images, like fit's synthesis.match_gray)")
    preview.add_argument("--delta-range", action="append", default=[], metavar="SOURCE=LOW,HIGH",
                         help="opacity range of a texture source in Eq. 3, like fit's "
                              "synthesis.delta_ranges (default dtd=0.2,1.0 and sia=0.5,1.0)")
    preview.add_argument("--size", type=int, default=256, help="training image size (default 256)")
    preview.add_argument("--count", type=int, default=16, help="number of samples (default 16)")
    preview.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    preview.add_argument("--out", type=file_to_write, required=True, help="grid image to write (.png, .jpg, ...)")
    preview.set_defaults(func=run_preview)


def _source_weights(args: argparse.Namespace) -> dict[str, float]:
    from realnet.cli.detector import parse_sources

    if args.source:
        return parse_sources(args.source)
    weights = {name: 1.0 for name, root in (("dtd", args.dtd), ("sia", args.sia)) if root is not None}
    if not weights:
        raise RealnetError("choose --source: dtd needs --dtd ROOT, sia needs --sia DIR; cutpaste, nsa, shade, crack and feature_noise need nothing")
    return weights


def _delta_ranges(values: list[str], drawn: Collection[str]) -> dict[str, tuple[float, float]]:
    """Overrides of the default opacity ranges, from --delta-range SOURCE=LOW,HIGH, each for one of
    the `drawn` sources, once."""
    from realnet.config import SOURCE_NAMES, is_opacity_range
    from realnet.synthesis.synthesizer import SynthesisConfig

    ranges = dict(SynthesisConfig().delta_ranges)
    given: set[str] = set()
    for value in values:
        name, _, bounds = value.partition("=")
        try:
            low, high = (float(b) for b in bounds.split(","))
        except ValueError:
            raise RealnetError(f"--delta-range {value!r}: expected SOURCE=LOW,HIGH, e.g. dtd=0.05,1.0") from None
        if name not in SOURCE_NAMES:  # a misspelt name would leave the source at its default range
            raise RealnetError(f"--delta-range {value!r}: unknown source {name!r}; choose from {', '.join(SOURCE_NAMES)}")
        if name in given:  # the last would win in silence
            raise RealnetError(f"--delta-range {value!r}: a range for {name} was given already; give each source once")
        if name not in drawn:  # it would change nothing the grid shows
            raise RealnetError(f"--delta-range {value!r}: {name} is not among the sources drawn "
                               f"({', '.join(sorted(drawn))}); add it to --source")
        given.add(name)
        if not is_opacity_range(low, high):
            raise RealnetError(f"--delta-range {value!r}: needs 0 <= LOW <= HIGH <= 1 and HIGH > 0")
        ranges[name] = (low, high)
    return ranges


def _refuse_unwritable_grid(path: Path, count: int, size: int) -> None:
    """Before any synthesis: a format the grid cannot be written in, or a JPEG taller than the
    format allows (OpenCV would fail only after the whole grid was made)."""
    from realnet.synthesis.preview import grid_shape

    if path.suffix.lower() not in GRID_SUFFIXES:
        raise RealnetError(f"--out {path}: use one of {', '.join(GRID_SUFFIXES)}")
    height, width = grid_shape(count, size)
    if path.suffix.lower() in (".jpg", ".jpeg") and max(height, width) > JPEG_MAX_SIDE:
        raise RealnetError(f"--out {path}: {count} samples of {size} px make a grid of {width} x {height} px, above "
                           f"JPEG's {JPEG_MAX_SIDE} px a side; write a .png, or fewer or smaller samples")


def _write_image_atomically(path: Path, rgb) -> None:
    import cv2

    from realnet.engine.checkpoint import atomic_write

    ok, encoded = cv2.imencode(path.suffix.lower(), rgb[..., ::-1])
    if not ok:
        raise RealnetError(f"--out {path}: cannot encode the grid")
    atomic_write(path, lambda tmp: tmp.write_bytes(encoded.tobytes()))


def run_preview(args: argparse.Namespace) -> int:
    import numpy as np

    from realnet.data.io import read_image, resize_image
    from realnet.data.layouts import load_dataset
    from realnet.data.records import NORMAL
    from realnet.synthesis.foreground import resolve_foreground
    from realnet.synthesis.preview import preview_grid
    from realnet.synthesis.sources import find_dtd_root, refuse_texture_folders_holding_the_data, texture_folders
    from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, build_sources

    if args.count < 1 or args.size < 8:
        raise RealnetError(f"--count must be >= 1 and --size >= 8, got {args.count} and {args.size}")
    _refuse_unwritable_grid(args.out, args.count, args.size)
    root, category, dataset, folder_options = data_selection(args)
    weights = _source_weights(args)
    records = load_dataset(root, category, dataset, **folder_options)
    train = [r.image for r in records if r.split == "train" and r.label == NORMAL]
    if not train:
        raise RealnetError(f"{root}: category '{category}' has no normal training images")

    names = [name for name, weight in weights.items() if weight > 0]
    config = SynthesisConfig(source_weights=weights, match_gray=not args.colour_textures,
                             delta_ranges=_delta_ranges(args.delta_range, names))
    dtd_root = find_dtd_root(args.dtd, root) if "dtd" in names else None  # where fit looks, too
    refuse_texture_folders_holding_the_data(texture_folders(names, category, dtd_root, args.sia), records)
    sources = build_sources(names, size=args.size, category=category, dtd_root=dtd_root,
                            sia_root=args.sia, normal_images=train)
    synthesizer = AnomalySynthesizer(config, sources, resolve_foreground(args.foreground, dataset, category))
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(train), size=args.count, replace=args.count > len(train))
    loaded = {int(i): resize_image(read_image(train[int(i)]), args.size) for i in set(picks.tolist())}
    samples = [synthesizer(loaded[int(i)], rng, force_anomalous=True) for i in picks]
    _write_image_atomically(args.out, preview_grid(samples, opacity_sources=config.delta_ranges))
    made = Counter(sample.source for sample in samples)
    deltas = [sample.delta for sample in samples if sample.source in config.delta_ranges]
    opacity = f"; opacity d {min(deltas):.3f} to {max(deltas):.3f}" if deltas else ""
    print(f"wrote {args.out}: {args.count} samples ({', '.join(f'{k} {v}' for k, v in sorted(made.items()))}"
          f"{opacity})")
    return 0
