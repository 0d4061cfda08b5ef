"""Arguments every data-reading command shares (where the data is and how it is laid out), and
the one-line JSON summary every command prints."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from realnet.errors import RealnetError

DATASETS = ("mvtec", "mpdd", "btad", "visa", "folder")
FOLDER_FLAGS = {
    "normal_dir": "--normal-dir",
    "abnormal_dir": "--abnormal-dir",
    "mask_dir": "--mask-dir",
    "normal_test_dir": "--normal-test-dir",
    "test_ratio": "--test-ratio",
    "split_seed": "--split-seed",
}


def non_negative_int(text: str) -> int:
    """argparse type for counts."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type for seeds: numpy refuses negative ones and torch.manual_seed those past 64 bits,
    both deep inside a run."""
    from realnet.config import MAX_SEED

    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_SEED}], got {value}")
    return value


# More CPU threads than any machine has: torch.set_num_threads overflows past 2**31 - 1, and far
# below that OpenMP fails to create its threads or crashes (100000 segfaulted a matrix product).
MAX_THREADS = 1024


def thread_count(text: str) -> int:
    """argparse type for --threads."""
    value = int(text)
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_THREADS}], got {value}")
    return value


def path_text(text: str) -> str:
    """argparse type for path arguments kept as text: an empty one (an unset shell variable, "$IMG")
    would mean the current folder, whose every image predict would score."""
    if not text:
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?)")
    return text


def path_argument(text: str) -> Path:
    """argparse type for path arguments: `path_text`'s check, as a Path."""
    return Path(path_text(text))


def file_to_write(text: str) -> Path:
    """argparse type for an output file: a name ending in a separator, ".", ".." or "/" names a folder
    (Path drops a trailing slash, so `--out models/` wrote a file named models)."""
    path = path_argument(text)
    if text.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"{text} names a folder; give the path of the file to write")
    return path


def finite_float(text: str) -> float:
    """argparse type for thresholds: NaN would pass every part (NaN > x is False)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type for step counts."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, *, default_dataset: str | None = "mvtec") -> None:
    """--data, --category, --dataset and the folder-dataset options. With default_dataset=None
    the dataset may be left out (e.g. `test`, which defaults to the run's own data)."""
    parser.add_argument("--data", type=path_argument, help="dataset root (folder dataset: base for its relative dirs; "
                                                  "for test, the run's own root when left out, or the current "
                                                  "folder for --dataset folder on a run of another layout)")
    parser.add_argument("--category", help="category name (folder dataset: any name, default 'custom')")
    parser.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                        help="layout: mvtec (also MPDD and magnetic_tile), btad, visa, folder"
                             + (f" (default {default_dataset})" if default_dataset else ""))
    folder = parser.add_argument_group("folder dataset (--dataset folder)")
    folder.add_argument("--normal-dir", type=path_argument, help="normal training images (required for folder, except a test split given by --normal-test-dir)")
    folder.add_argument("--abnormal-dir", type=path_argument, help="anomalous test images")
    folder.add_argument("--mask-dir", type=path_argument, help="masks of the anomalous images, matched by file stem")
    folder.add_argument("--normal-test-dir", type=path_argument, help="normal test images")
    folder.add_argument("--test-ratio", type=float,
                        help="share of normal images kept for test without --normal-test-dir (default 0.2)")
    folder.add_argument("--split-seed", type=non_negative_int, help="seed of that train/test split (default 0)")


def data_selection(args: argparse.Namespace, *, required: bool = True) -> tuple[Path | None, str | None, str | None, dict[str, Any]]:
    """(root, category, dataset, folder options) from parsed arguments, with one-line errors."""
    options = {name: getattr(args, name) for name in FOLDER_FLAGS if getattr(args, name) is not None}
    if "split_seed" in options:
        options["seed"] = options.pop("split_seed")
    if args.dataset == "folder" or (args.dataset is None and not required and options):
        if not required:  # left out, the command picks them (`test`: a folder run's own dataset, root and name)
            return args.data, args.category, args.dataset, options
        return args.data or Path("."), args.category or "custom", "folder", options
    if options:
        flags = ", ".join(FOLDER_FLAGS["split_seed" if n == "seed" else n] for n in options)
        raise RealnetError(f"{flags} only apply to --dataset folder")
    if required and (args.data is None or args.category is None):
        raise RealnetError(f"--dataset {args.dataset or 'mvtec'} needs --data and --category")
    return args.data, args.category, args.dataset, options


def print_json_line(payload: Any) -> None:
    """One JSON line on stdout in a single write, so that lines printed by several torchrun ranks
    sharing one stdout never interleave (print() writes the text and the newline separately)."""
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
