"""User-facing errors. The CLI prints them as one line and exits non-zero (no traceback)."""

from __future__ import annotations

from pathlib import Path


class RealnetError(Exception):
    """A mistake in the user's input (bad file, bad option, missing data)."""


class BadFileError(RealnetError):
    """A single file that cannot be used; names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{_printable(self.path)}: {reason}")


def _printable(path: Path) -> str:
    """The path with control characters escaped: a newline in a file name would split the one-line error."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))
