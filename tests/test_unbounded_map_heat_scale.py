"""The heat scale of a run whose maps are not probabilities (position-normalised here): full heat at
twice the run's threshold (so the threshold sits mid-scale), the same in `predict`'s saved maps and
in `test`'s panels, and not moved by a --threshold given to predict. The other tests of the scale
use the tiny probability run, where the scale is 1 whichever way it is worked out."""

import json
import shutil

import numpy as np
import torch
from PIL import Image

import realnet.engine.fit as fit_module
from realnet.cli.main import main
from realnet.data.io import read_image, resize_image
from realnet.engine.evaluate import load_run, load_test_split
from realnet.engine.runtime import to_tensor


def _full_heat(run_dir) -> float:
    threshold = json.loads((run_dir / "model.json").read_text())["threshold"]
    assert abs(2 * threshold - 1) > 0.05  # else a scale of 1 could not be told from it
    return 2 * threshold


def test_predict_saves_maps_on_twice_the_runs_threshold_whatever_threshold_is_given(position_run, tmp_path,
                                                                                     capsys):
    data_root, run_dir, *_ = position_run
    full = _full_heat(run_dir)
    image = sorted((data_root / "widget" / "test" / "scratch").iterdir())[0]
    from realnet.report.panels import heatmap_overlay

    model, meta = load_run(run_dir, torch.device("cpu"))
    size = meta["config"]["train"]["image_size"]
    resized = resize_image(read_image(image), size)
    with torch.no_grad():
        maps, _ = model.predict(to_tensor(resized[None], torch.device("cpu")))
    expected = np.clip(np.round(maps[0].numpy().astype(np.float64) / full * 255), 0, 255)
    assert 0 < expected.mean() < 255  # neither all clipped cold nor all clipped hot
    saved, overlays = [], []
    for name, extra in (("run", []), ("given", ["--threshold", repr(full * 3)])):
        assert main(["predict", "--run", str(run_dir), str(image), "--save-maps", str(tmp_path / name),
                     "--map-size", "run", "--overlays", *extra]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        result = json.loads(line)
        with Image.open(result["map"]) as png, Image.open(result["overlay"]) as overlay:
            saved.append(np.asarray(png, np.float64))
            overlays.append(np.asarray(overlay, np.float64))
    assert np.abs(saved[0] - expected).max() <= 1  # float32 vs float64 rounding at .5
    assert np.array_equal(saved[1], saved[0])
    drawn = heatmap_overlay(resized, maps[0].numpy(), display_max=full)
    assert np.abs(overlays[0] - drawn).max() <= 1
    assert np.array_equal(overlays[1], overlays[0])


def test_test_panels_draw_the_map_on_twice_the_runs_threshold(position_run, tmp_path, monkeypatch):
    """A map that is 3/4 of full heat everywhere is drawn at 3/4 of the colour map in every panel."""
    from realnet.report.panels import heatmap_overlay

    data_root, run_dir, *_ = position_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    full = _full_heat(copy)
    meta = json.loads((copy / "model.json").read_text())
    split = load_test_split(data_root, "widget", meta["data"]["dataset"], meta["config"]["train"]["image_size"],
                            progress=False)
    n, size = len(split.records), split.images.shape[1]
    scores = np.where(split.labels == 1, 2.0, 1.0).astype(np.float32) * full
    monkeypatch.setattr(fit_module, "score_images", lambda model, images, *args, **kwargs: (
        np.full((n, size, size), 0.75 * full, np.float32), scores))
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 0
    panels = sorted((copy / "panels").glob("*.png"))
    assert panels
    for path in panels:
        with Image.open(path) as png:
            drawn = np.asarray(png.convert("RGB"))
        image = read_image(next(r.image for r in split.records if f"_{r.defect}_{r.image.stem}_" in path.name))
        height, width = image.shape[:2]
        overlay = drawn[-height:, -width:]  # image | gap | mask | gap | overlay, under a caption
        expected = heatmap_overlay(image, np.full((height, width), 0.75 * full, np.float32), display_max=full)
        assert np.abs(overlay.astype(int) - expected.astype(int)).max() <= 1
