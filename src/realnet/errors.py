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
        super().__init__(f"{self.path}: {reason}")
