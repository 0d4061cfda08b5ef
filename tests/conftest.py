from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def shared_data() -> Path:
    """Root of the real data in ../shared/data; skips the test when it is absent."""
    if not (SHARED_DATA / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (needs ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
