"""`realnet data check`: list a dataset's records, decode every file and report problems."""

from __future__ import annotations

import argparse
import json
import sys

from realnet.cli.common import add_data_arguments, data_selection
from realnet.data.layouts import find_orphan_masks, lacks_training_folder, load_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect datasets", description=__doc__)
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="count images per split and defect; find missing, orphan, mismatched and bad files",
        description="Exit status: 0 no problems, 1 problems found, 2 a bad file (without "
        "--skip-bad) or a bad option.",
    )
    add_data_arguments(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--skip-bad", action="store_true", help="skip undecodable files and list them instead"
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from realnet.data.validate import check_dataset

    root, category, dataset, folder_options = data_selection(args)
    # a folder dataset without --normal-dir, or an MVTec-style tree without train/, is a test split
    # of new images (what `test --data` reads)
    test_split_only = ((dataset == "folder" and "normal_dir" not in folder_options)
                       or lacks_training_folder(root, category, dataset))
    if test_split_only and dataset != "folder":
        sys.stderr.write(f"realnet: note: {category} has no training folder; checking its test split alone\n")
    records = load_dataset(root, category, dataset, test_only=test_split_only, **folder_options)
    orphans = find_orphan_masks(root, category, dataset, test_only=test_split_only, **folder_options)
    report = check_dataset(records, skip_bad=args.skip_bad, orphan_masks=orphans,
                           needs_training=not test_split_only)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 1 if report.problems or report.skipped else 0  # an unreadable file stops a fit without --skip-bad
