"""Efficiency table: per configuration, parameters (detector without backbone, and backbone),
checkpoint MB, peak RSS, images/s at batch 1 and 8, backbone-only images/s on the same inputs and
the time ratio (what RealNet adds over the backbone pass). See realnet.bench.efficiency.

Each configuration is measured in its own fresh process (so peak RSS is its own).

    # every complete cell of one category of a suite's results (default: its first category),
    # written to OUT/SUITE/tables/efficiency.{md,csv,json} and linked from the suite README:
    PYTHONPATH=src .venv/bin/python benchmarks/bench_efficiency.py --suite cpu-real --out bench_runs
    # configurations without training (fresh weights; speed and sizes do not depend on them):
    PYTHONPATH=src .venv/bin/python benchmarks/bench_efficiency.py --preset cpu \\
        --config A= --config B=reconstruction.arch=B --config C=reconstruction.arch=C
    # finished runs, each with its own weights (a memory bank's size depends on its fit images):
    PYTHONPATH=src .venv/bin/python benchmarks/bench_efficiency.py --threads 2 \\
        --run fused=runs/mt_fused2 --run fused_memory=runs/mt_fused2_k
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from common import run_as_command

from realnet.bench import tables
from realnet.bench.efficiency import measure_in_subprocess
from realnet.bench.runner import (EFFICIENCY_RECORD, EFFICIENCY_TABLE, TABLES, cell_dir, collect_statuses,
                                  is_complete, suite_dir, write_reports)
from realnet.bench.suite import Cell, expand, load_suite, parse_override
from realnet.cli.common import positive_int
from realnet.engine.checkpoint import atomic_write
from realnet.errors import RealnetError

OVERRIDE_SPLIT = re.compile(r",(?=\s*[A-Za-z_]+\.[A-Za-z_]+=)")


def suite_cells(suite, args) -> dict[str, tuple[Cell, str]]:
    """The complete, current cells of one category: cell id -> (cell, its 'finished' stamp)."""
    cells = expand(suite)
    dataset = args.dataset or cells[0].dataset.name
    if dataset not in {c.dataset.name for c in cells}:
        raise RealnetError(f"--dataset {dataset}: not a dataset of {suite.source}")
    category = args.category or next(c.category for c in cells if c.dataset.name == dataset)  # its first
    statuses = collect_statuses(suite, cells, args.out)
    done = {c.id: (c, statuses[c.id]["finished"]) for c in cells
            if c.dataset.name == dataset and c.category == category and statuses[c.id]["status"] == "complete"
            and is_complete(cell_dir(args.out, suite, c), statuses[c.id])}
    if not done:
        raise SystemExit(f"no complete cell of {dataset}/{category} under {suite_dir(args.out, suite)}")
    return done


def config_specs(args) -> list[tuple[str, dict]]:
    specs = []
    for text in args.config:
        name, _, overrides = text.partition("=")
        # overrides are separated by commas that start a new section.key=, so list values keep theirs
        specs.append((name, {"preset": args.preset, "overrides": [o for o in OVERRIDE_SPLIT.split(overrides) if o]}))
    return specs


@run_as_command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--suite", help="measure the complete cells of this suite under --out")
    parser.add_argument("--out", type=Path, help="the --out of the realnet bench run")
    parser.add_argument("--set", action="append", default=[], help="the --set values the suite was run with")
    parser.add_argument("--dataset")
    parser.add_argument("--category")
    parser.add_argument("--preset", default="cpu", help="with --config: the preset to measure")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                        help="a configuration to measure without training (repeatable; 'NAME=' is the preset)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="a finished run to measure with its own weights (repeatable; with --config or alone)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    if bool(args.suite) == bool(args.config or args.run) or (args.suite and not args.out):
        parser.error("give either --suite with --out, or one or more --config and/or --run")
    if args.warmup < 0 or args.threads < 0:
        parser.error("--warmup and --threads must be >= 0")
    if any("=" not in text for text in args.run):
        parser.error("--run: expected NAME=DIR")

    suite = load_suite(args.suite).with_overrides([parse_override(t) for t in args.set]) if args.suite else None
    if suite:
        measured = suite_cells(suite, args)
        specs = [(cell.variant, {"run": str(cell_dir(args.out, suite, cell))}) for cell, _ in measured.values()]
    else:
        specs = config_specs(args) + [(name, {"run": run}) for name, _, run in (t.partition("=") for t in args.run)]
    rows = []
    for name, spec in specs:
        spec.update(device=args.device, threads=args.threads, warmup=args.warmup, repeats=args.repeats)
        rows.append({"name": name, **measure_in_subprocess(spec)})
        print(f"measured {name}", flush=True)
    markdown, text = tables.efficiency_table(rows)
    print(markdown)
    if suite:
        folder = suite_dir(args.out, suite) / TABLES
        # the record names the runs measured, so the README drops the table once one is rerun
        record = {"cells": {cell_id: finished for cell_id, (_, finished) in measured.items()}, "rows": rows}
        # the record goes first and comes back last: a crash in between leaves no record, so the
        # README shows no table rather than a new table with an old record (or the reverse)
        (folder / EFFICIENCY_RECORD).unlink(missing_ok=True)
        for name, content in ((EFFICIENCY_TABLE, markdown), (Path(EFFICIENCY_TABLE).with_suffix(".csv").name, text),
                              (EFFICIENCY_RECORD, json.dumps(record, indent=2) + "\n")):
            atomic_write(folder / name, lambda tmp, content=content: tmp.write_text(content))
        write_reports(suite, expand(suite), args.out)
        print(f"written: {folder / EFFICIENCY_TABLE} (and .csv, .json); README updated")


if __name__ == "__main__":
    main()
