"""`realnet` entry point. Each command group lives in its own module under `realnet.cli` and
exposes `register(subparsers)`; handlers import heavy libraries lazily so `--help` stays fast."""

from __future__ import annotations

import argparse
import codecs
import importlib
import io
import os
import signal
import sys
import threading
import traceback

from realnet import __version__
from realnet.allocator import keep_freed_memory
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


class Terminated(BaseException):
    """SIGTERM (torchrun stopping its other ranks, a job scheduler, `kill`) raised in the main
    thread, so that every command cleans up as it does for Ctrl-C instead of dying mid-write."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (captured in tests)
        pass


def _undecodable_bytes_escaped(error: UnicodeEncodeError) -> tuple[str, int]:
    """The file name's own bytes as \\xNN for the surrogates os.fsdecode made of them (U+DC80..U+DCFF);
    any other unencodable character as backslashreplace writes it."""
    def escaped(char: str) -> str:
        if 0xDC80 <= ord(char) <= 0xDCFF:
            return f"\\x{ord(char) - 0xDC00:02x}"
        return char.encode("ascii", "backslashreplace").decode()

    return "".join(map(escaped, error.object[error.start:error.end])), error.end


def _escape_undecodable_names() -> None:
    """A file name in a legacy encoding reaches Python with surrogates, which a strictly encoding
    stdout (PYTHONIOENCODING=utf-8) refuses mid-report; print its bytes as \\xNN escapes instead."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        codecs.register_error("realnet-undecodable-bytes", _undecodable_bytes_escaped)
        sys.stdout.reconfigure(errors="realnet-undecodable-bytes")


CPU_ALLOCATION_FAILURE = "DefaultCPUAllocator: can't allocate memory"
# how each allocator's failure starts; TorchScript (the frozen backbone) rethrows CUDA's as a plain
# RuntimeError whose message quotes it below its own first line
ALLOCATION_FAILURES = (CPU_ALLOCATION_FAILURE, "CUDA out of memory", "MPS backend out of memory")


def _out_of_memory(error: RuntimeError) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError quoting an allocator's failure."""
    torch = sys.modules.get("torch")  # not imported by commands that never allocate a tensor
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return any(failure in str(error) for failure in ALLOCATION_FAILURES)


def _allocation_failure(error: RuntimeError) -> str:
    """The allocator's first two sentences (what failed, and how much it asked for), without the C++
    source location the CPU allocator prefixes, TorchScript's traceback or CUDA's advice on its own settings."""
    message = str(error) or type(error).__name__
    starts = [start for start in map(message.find, ALLOCATION_FAILURES) if start >= 0]
    failure = message[min(starts):] if starts else message
    return ". ".join(failure.splitlines()[0].split(". ")[:2]).rstrip(".")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    _escape_undecodable_names()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    previous_interrupt = signal.getsignal(signal.SIGINT)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the handlers: a reader gone while the output sat in the buffer is a quiet SIGPIPE too
        return status
    except Terminated:
        print("realnet: terminated", file=sys.stderr)
        return 143
    except RealnetError as error:
        if args.debug:
            traceback.print_exc()
        print(f"realnet: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`realnet ... | head`): nothing is wrong, nothing more to say
        _discard_stdout()
        return 128 + signal.SIGPIPE
    except OSError as error:  # a file system failure no command anticipated: still one line
        if args.debug:
            traceback.print_exc()
        where = f"{error.filename}: " if error.filename else ""
        print(f"realnet: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if in_main_thread:  # a second Ctrl-C while the process exits (torch's exit handlers) printed a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("realnet: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as error:
        if not _out_of_memory(error):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"realnet: error: out of memory ({_allocation_failure(error)}); use a smaller --batch-size "
              "(train.batch_size for fit, --batch for sdas) or image size", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
            if argv is not None:  # an in-process caller goes on: Ctrl-C must reach it again
                signal.signal(signal.SIGINT, previous_interrupt)
