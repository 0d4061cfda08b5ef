"""The caption `realnet test` writes over each panel: the case's defect, its score against the run's
threshold and the overlay's colour scale (the run's display maximum, not 1), and the verdict
'>' only for a score strictly above the threshold (a deployment flags score > threshold)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _strip(text: str, width: int, height: int) -> np.ndarray:
    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.asarray(strip)


def test_a_score_equal_to_the_threshold_is_not_shown_above_it():
    from realnet.report.panels import caption_for

    assert caption_for("good", 0.5, 0.5, 1.0) == "good: score 0.500 <= threshold 0.500; map 0..1"
    assert caption_for("crack", 0.5001, 0.5, 2.5) == "crack: score 0.500 > threshold 0.500; map 0..2.5"


def test_written_panels_are_captioned_with_the_runs_threshold_and_heat_scale(tmp_path):
    from realnet.data.records import Record
    from realnet.engine.evaluate import TestSplit
    from realnet.report.panels import CAPTION_HEIGHT, write_panels

    image = np.full((20, 120, 3), 90, np.uint8)  # wide enough for the whole caption
    mask = np.zeros((20, 120), bool)
    mask[5:9, 10:20] = True
    Image.fromarray(image).save(tmp_path / "part.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "part_mask.png")
    records = [Record(tmp_path / "part.png", tmp_path / "part_mask.png", 1, "crack", "c", "test"),
               Record(tmp_path / "part.png", None, 0, "good", "c", "test")]
    size = 16
    split = TestSplit(np.zeros((2, size, size, 3), np.uint8), np.zeros((2, size, size), bool), records)
    maps = np.zeros((2, size, size), np.float32)
    written = write_panels(tmp_path / "panels", split, maps, np.array([3.0, 0.5]), count=1,
                           display_max=4.0, threshold=2.0)
    expected = {"crack": "crack: score 3.000 > threshold 2.000; map 0..4",
                "good": "good: score 0.500 <= threshold 2.000; map 0..4"}
    assert len(written) == 3
    for path in written:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        defect = "crack" if "_crack_" in path.name else "good"
        assert np.array_equal(pixels[:CAPTION_HEIGHT], _strip(expected[defect], pixels.shape[1], CAPTION_HEIGHT))
