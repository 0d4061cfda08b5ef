"""`realnet` entry point. Each command group lives in its own module under `realnet.cli` and
exposes `register(subparsers)`; handlers import heavy libraries lazily so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from realnet import __version__
from realnet.errors import RealnetError

COMMAND_MODULES = ("data", "detector", "synth", "sdas", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realnet", description="RealNet industrial anomaly detection: train "
                                     "from normal images, then score and map anomalies (CVPR 2024).")
    parser.add_argument("--version", action="version", version=f"realnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"realnet.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RealnetError as error:
        if args.debug:
            raise
        print(f"realnet: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file system failure no command anticipated: still one line
        if args.debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"realnet: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("realnet: interrupted", file=sys.stderr)
        return 130
