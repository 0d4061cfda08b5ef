"""Direct checks of realnet.files helpers that the commands rely on: folders a failed command made
are removed innermost first and only while empty (also on Ctrl-C), names are cut by bytes, and
file digests cover the whole file."""

from __future__ import annotations

import hashlib
import os

import pytest

from realnet.files import contents_sha256, cut_to_bytes, file_sha256, missing_folders, remove_created_folders, \
    removed_on_failure


def test_missing_folders_are_listed_innermost_first_and_removed_while_empty(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    created = missing_folders(out)
    assert created == [out, out.parent, out.parent.parent]
    out.mkdir(parents=True)
    remove_created_folders(created)
    assert not (tmp_path / "a").exists() and tmp_path.is_dir()


def test_a_created_folder_holding_something_is_kept_with_its_contents(tmp_path):
    out = tmp_path / "a" / "b"
    created = missing_folders(out)
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("x")
    remove_created_folders(created)
    assert (out / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_removed_on_failure_removes_the_empty_folders_on_any_interruption(tmp_path, interruption):
    out = tmp_path / "a" / "b"
    created = missing_folders(out)
    with pytest.raises(interruption):
        with removed_on_failure(created):
            out.mkdir(parents=True)
            raise interruption()
    assert not (tmp_path / "a").exists()


def test_cut_to_bytes_counts_encoded_bytes_and_keeps_a_name_that_fits():
    assert cut_to_bytes("abc", 3) == "abc"  # exactly at the limit: unchanged
    name = "ü" * 10  # 2 bytes each in UTF-8
    cut = cut_to_bytes(name, 5)
    assert cut == "üü" and len(os.fsencode(cut)) <= 5


def test_file_sha256_covers_every_chunk_of_a_large_file(tmp_path):
    data = bytes(range(256)) * (5 * 4096 + 3)  # a little over 5 MiB: several read chunks
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert contents_sha256([path, tmp_path / "missing.bin"]) == [hashlib.sha256(data).hexdigest(), None]


def test_contents_sha256_gives_none_for_any_path_it_cannot_read(tmp_path):
    """A folder (or a file it may not read) is no reason to stop: its digest is None."""
    (tmp_path / "a_folder.png").mkdir()
    (tmp_path / "ok.bin").write_bytes(b"abc")
    assert contents_sha256([tmp_path / "a_folder.png", tmp_path / "ok.bin"]) == [
        None, hashlib.sha256(b"abc").hexdigest()]
