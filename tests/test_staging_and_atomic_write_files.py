"""Stale staging folders are found by their literal prefix (glob characters in a user's folder
name included), and files written through a temporary name get the user's usual file mode."""

from __future__ import annotations

import stat

from realnet.engine.checkpoint import atomic_write
from realnet.files import USER_UMASK, remove_stale_staging


def test_stale_staging_of_a_folder_named_with_glob_characters_is_removed(tmp_path):
    prefix = ".demo[1].tmp-"
    stale = tmp_path / f"{prefix}k1ll3d"
    (stale / "brick").mkdir(parents=True)
    other = tmp_path / ".demo1.tmp-k1ll3d"  # matches the pattern [1] as a glob, but is not ours
    other.mkdir()
    remove_stale_staging(tmp_path, prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo1.tmp-k1ll3d"]


def test_atomic_write_gives_the_file_the_users_mode_not_mkstemps_private_one(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write(target, lambda tmp: tmp.write_text("{}"))
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~USER_UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
