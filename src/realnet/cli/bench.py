"""`realnet bench`: run a benchmark suite (the paper's tables and ablations) and write its tables."""

from __future__ import annotations

from pathlib import Path

from realnet.cli.common import path_argument

EPILOG = """examples:
  realnet bench --suite cpu-real --data ../shared/data --out bench_runs
  realnet bench --suite paper-main --data-root mvtec=/data/mvtec --data-root visa=/data/visa \\
      --sia /data/SIA --dtd /data/dtd --out runs --only 'mvtec/*'
  realnet bench --suite ablations --out runs --tables-only

A suite is run cell by cell (dataset/category/variant), each a fit then a test in
OUT/SUITE/CELL/. Rerunning the same command keeps complete cells and continues the rest."""


def register(subparsers) -> None:
    import argparse

    bench = subparsers.add_parser("bench", help="run a benchmark suite and write its tables and plots",
                                  epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--suite", required=True, metavar="NAME_OR_FILE",
                       help="a shipped suite (paper-main, ablations, cpu-real, tiny) or a suite YAML file")
    bench.add_argument("--data", type=path_argument, metavar="ROOT", help="parent folder of every dataset root")
    bench.add_argument("--data-root", action="append", default=[], metavar="KEY=DIR",
                       help="the root of one dataset, by the suite's root key (repeatable)")
    bench.add_argument("--dtd", type=path_argument, metavar="DIR", help="DTD folder for the dtd synthesis source")
    bench.add_argument("--sia", type=path_argument, metavar="DIR",
                       help="SDAS image bank (DIR/<category>/); cells that need it are skipped without it")
    bench.add_argument("--out", type=path_argument, required=True, metavar="DIR", help="results go to DIR/SUITE/")
    bench.add_argument("--only", action="append", default=[], metavar="PATTERN",
                       help="run only cells whose dataset/category/variant (any variant a shared cell stands for) "
                            "or axis matches this glob (repeatable)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value in every cell, e.g. --set train.steps=5; part of each "
                            "cell's identity. A key that a variant sets is refused (it is what the table compares)")
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    bench.add_argument("--tables-only", action="store_true", help="rewrite the tables and plots from finished cells")
    bench.set_defaults(func=run_bench)


def parse_data_roots(specs: list[str]) -> dict[str, Path]:
    from realnet.errors import RealnetError

    roots = {}
    for spec in specs:
        key, sep, folder = spec.partition("=")
        if not sep or not key or not folder:
            raise RealnetError(f"--data-root '{spec}' must look like KEY=DIR")
        if key in roots:  # the last one would silently win, as a repeated --source or --set is refused
            raise RealnetError(f"--data-root gives '{key}' twice ({roots[key]} and {folder}); give it once")
        roots[key] = Path(folder)
    return roots


def run_bench(args) -> int:
    from realnet.bench.runner import BenchRequest, check_folders, run_suite, suite_dir, write_reports
    from realnet.bench.suite import expand, load_suite, parse_override
    from realnet.config import refuse_lost_overrides
    from realnet.errors import RealnetError

    refuse_lost_overrides(args.overrides)
    suite = load_suite(args.suite).with_overrides([parse_override(text) for text in args.overrides])
    if args.tables_only:
        if not suite_dir(args.out, suite).is_dir():  # a mistyped --out would get a tree of "pending" tables
            raise RealnetError(f"--tables-only: {suite_dir(args.out, suite)} does not exist: no cell of suite "
                               f"{suite.name} has run under --out {args.out}")
        written = write_reports(suite, expand(suite), args.out, check_folders(args.dtd, args.sia))
        failed = 0
    else:
        request = BenchRequest(suite=suite, out=args.out, data=args.data, data_roots=parse_data_roots(args.data_root),
                               dtd=args.dtd, sia=args.sia, only=args.only, device=args.device)
        statuses, written = run_suite(request, report=lambda line: print(line, flush=True))
        failed = sum(status["status"] == "failed" for status in statuses.values())
    folder = suite_dir(args.out, suite)
    print(f"tables: {folder / 'tables' / 'README.md'} (Markdown + CSV per axis in {folder / 'tables'})")
    if written["plots"]:
        print("plots: " + " ".join(str(p) for p in written["plots"]))
    if failed:
        print(f"{failed} cell(s) failed; see {folder / 'tables' / 'results.csv'} and their cell.json")
    return 1 if failed else 0
