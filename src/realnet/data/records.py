"""A dataset is a list of `Record`s: where an image lives and what we know about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NORMAL, ANOMALOUS = 0, 1


@dataclass(frozen=True)
class Record:
    image: Path
    mask: Path | None
    label: int  # NORMAL or ANOMALOUS
    defect: str  # "good" for normal images
    category: str
    split: str  # "train" or "test"
