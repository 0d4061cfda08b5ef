"""The training preview grid: one row per strength s in GRID_STRENGTHS, each row sampled at its own s
from the same starting noise (so rows differ only through s)."""

from __future__ import annotations

import numpy as np
import torch

from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from realnet.diffusion.network import create_unet, unet_config
from realnet.diffusion.train import GRID_STRENGTHS, sample_grid


def test_grid_rows_are_sampled_at_their_strengths():
    config = unet_config("tiny", in_channels=1)
    torch.manual_seed(0)
    unet = create_unet(config).eval()
    meta = {"diffusion": {"schedule": "linear", "timesteps": 1000, "sample_steps": 3}, "image_size": 16,
            "channels": 1, "categories": ["tile"], "unet": config}
    grid = sample_grid(unet, meta, 0, 2, torch.device("cpu"), False)
    size, gap, margin = 16, 2, 44
    assert grid.shape == (len(GRID_STRENGTHS) * (size + gap), margin + 2 * (size + gap), 3)
    rows = [grid[r * (size + gap): r * (size + gap) + size, margin:] for r in range(len(GRID_STRENGTHS))]
    assert GRID_STRENGTHS[0] == 0.0 and len(set(GRID_STRENGTHS)) == len(GRID_STRENGTHS)
    for i in range(len(rows)):
        for j in range(i):
            assert not np.array_equal(rows[i], rows[j]), (i, j)
