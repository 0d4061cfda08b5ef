"""Following linked texture folders, each real folder is listed once and
a folder already walked is not descended into again (two links above would otherwise branch the
walk until the system's link limit: 2**40 listings)."""

from __future__ import annotations

import os

import numpy as np

from dataset_fixtures import normal_image, save
from realnet.synthesis.sources import DTDSource


def test_links_to_folders_above_are_not_walked_again(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(2):
        save(tmp_path / "real" / "banded" / f"{i}.jpg", normal_image(rng, (40, 40)))
    images = tmp_path / "dtd" / "images"
    images.mkdir(parents=True)
    (images / "banded").symlink_to(tmp_path / "real" / "banded")
    (images / "up").symlink_to(tmp_path / "dtd")
    (images / "here").symlink_to(images)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path="."):
        listed.append(os.path.realpath(path))
        if len(listed) > 50:  # far more than the 5 folders there are: the walk is going round the links
            raise AssertionError(f"walked {len(listed)} folders: {listed[-5:]}")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    bank = DTDSource(tmp_path / "dtd", 32).bank
    monkeypatch.undo()
    assert len(bank.items) == 2
    # each real folder (dtd, dtd/images, real/banded) listed at most once per link that reaches it
    assert len(listed) <= 6
