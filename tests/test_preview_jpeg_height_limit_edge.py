"""The JPEG limit refuses only grids OpenCV cannot write (a side over 65500 px), tall or wide; a grid
exactly 65500 px tall is written."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from realnet.cli.synth import _refuse_unwritable_grid
from realnet.errors import RealnetError


def test_a_jpeg_grid_at_opencvs_limit_is_accepted_and_one_pixel_more_refused(tmp_path):
    # one group of one sample: an image row and a mask row of `size` px with a 4 px gap between
    size = (65500 - 4) // 2
    assert 2 * size + 4 == 65500
    ok, _ = cv2.imencode(".jpg", np.zeros((65500, 8, 3), np.uint8))  # what OpenCV itself allows
    assert ok
    _refuse_unwritable_grid(Path(tmp_path / "grid.jpg"), 1, size)
    with pytest.raises(RealnetError, match="above JPEG's 65500 px a side"):
        _refuse_unwritable_grid(Path(tmp_path / "grid.jpg"), 1, size + 1)
    _refuse_unwritable_grid(Path(tmp_path / "grid.png"), 1, size + 1)
    # the width too: 8 samples a row (regression: only the height was checked)
    wide = (65500 - 7 * 4) // 8 + 1
    with pytest.raises(RealnetError, match="above JPEG's 65500 px a side"):
        _refuse_unwritable_grid(Path(tmp_path / "grid.jpg"), 8, wide)
