"""File-system helpers shared by every layer: the user's umask, staging folders that are renamed
into place once complete, folders a failed command created, input names cut to fit an output's
name, inputs that cannot be opened, and UTF-8 text inputs."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from realnet.errors import BadFileError, RealnetError

# read once (os.umask can only be read by setting it); files written through a temporary name get
# the mode the user's umask gives any other new file, not mkstemp's/mkdtemp's private 0600/0700
USER_UMASK = os.umask(0)
os.umask(USER_UMASK)


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in `parent`, with the mode a folder made by mkdir would have."""
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(staging, 0o777 & ~USER_UMASK)
    return staging


def remove_stale_staging(parent: Path, prefix: str) -> None:
    """Delete the staging folders named `prefix`* in `parent` that a killed command (SIGKILL, power
    loss) left behind; any characters of `prefix` are taken literally."""
    for stale in Path(parent).glob(f"{glob.escape(prefix)}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first: what a command that
    creates `folder` must remove again if it fails before writing anything there."""
    folder, missing = Path(folder), []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_created_folders(created: list[Path]) -> None:
    """Remove the folders `missing_folders` listed, innermost first, where they are still empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # gone, or it holds something after all: keep the rest
            return


@contextmanager
def removed_on_failure(created: list[Path]) -> Iterator[None]:
    """Around the work that fills folders `missing_folders` listed: if it fails or is interrupted,
    the ones still empty are removed."""
    try:
        yield
    except BaseException:
        remove_created_folders(created)
        raise


def cut_to_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes in the file system's encoding, for an output named after an
    input whose own name may already be near the 255-byte limit."""
    while len(os.fsencode(text)) > limit:
        text = text[:-1]
    return text


def not_utf8(path: Path | str, error: UnicodeDecodeError) -> RealnetError:
    """The one-line error for a text input saved in a legacy code page (a spreadsheet, an editor)."""
    return RealnetError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8")


def openable_file(path: Path | str) -> str:
    """`path` as a string, once it has been opened for reading: safetensors reports a file it may
    not read as missing and a folder as "No such device", so the system's own reason comes first."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise BadFileError(path, error.strerror or str(error)) from None
    return str(path)


def read_utf8_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from None


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def contents_sha256(paths: Iterable[Path]) -> list[str | None]:
    """file_sha256 of each path (None where it cannot be read), read by a few threads."""
    def digest(path: Path) -> str | None:
        try:
            return file_sha256(path)
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(digest, paths))
