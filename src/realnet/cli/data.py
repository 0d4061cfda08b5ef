"""`realnet data check`: list a dataset's records, decode every file and report problems."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from realnet.data.layouts import DATASETS, find_orphan_masks, load_dataset
from realnet.errors import RealnetError

_FOLDER_FLAGS = {
    "normal_dir": "--normal-dir",
    "abnormal_dir": "--abnormal-dir",
    "mask_dir": "--mask-dir",
    "normal_test_dir": "--normal-test-dir",
    "test_ratio": "--test-ratio",
    "seed": "--seed",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect datasets", description=__doc__)
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="count images per split and defect; find missing, orphan, mismatched and bad files",
        description="Exit status: 0 no problems, 1 problems found, 2 a bad file (without "
        "--skip-bad) or a bad option.",
    )
    check.add_argument("--data", type=Path, help="dataset root (folder dataset: base for its dirs)")
    check.add_argument("--category", help="category (folder dataset: a name, default 'custom')")
    check.add_argument(
        "--dataset", choices=DATASETS, default="mvtec", help="layout (default mvtec)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--skip-bad", action="store_true", help="skip undecodable files and list them instead"
    )
    folder = check.add_argument_group("folder dataset (--dataset folder)")
    folder.add_argument("--normal-dir", type=Path, help="normal images (required for folder)")
    folder.add_argument("--abnormal-dir", type=Path, help="anomalous test images")
    folder.add_argument("--mask-dir", type=Path, help="masks of the anomalous images, by stem")
    folder.add_argument("--normal-test-dir", type=Path, help="normal test images")
    folder.add_argument(
        "--test-ratio",
        type=float,
        help="share of normal images for test without --normal-test-dir (default 0.2)",
    )
    folder.add_argument("--seed", type=int, help="seed of the train/test split (0)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from PIL import Image

    from realnet.data.validate import check_dataset

    # read_image refuses oversized images with its own one-line error; Pillow's warning would
    # only repeat it.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    folder_options = {
        name: getattr(args, name) for name in _FOLDER_FLAGS if getattr(args, name) is not None
    }
    if args.dataset == "folder":
        root, category = args.data or Path("."), args.category or "custom"
    else:
        if folder_options:
            flags = ", ".join(_FOLDER_FLAGS[name] for name in folder_options)
            raise RealnetError(f"{flags} only apply to --dataset folder")
        if args.data is None or args.category is None:
            raise RealnetError(f"--dataset {args.dataset} needs --data and --category")
        root, category = args.data, args.category
    records = load_dataset(root, category, args.dataset, **folder_options)
    orphans = find_orphan_masks(root, category, args.dataset, **folder_options)
    report = check_dataset(records, skip_bad=args.skip_bad, orphan_masks=orphans)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 1 if report.problems else 0
