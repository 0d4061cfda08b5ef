"""`realnet predict --save-maps DIR --map-size run --overlays`: the overlay is the run-size map over
the image as the network saw it (resized to the run's square size), like the map beside it."""

import json

import numpy as np
import torch
from PIL import Image

from dataset_fixtures import normal_image
from realnet.cli.main import main
from realnet.data.io import read_image, resize_image
from realnet.engine.evaluate import load_run
from realnet.engine.runtime import to_tensor
from realnet.report.panels import heatmap_overlay


def test_run_size_overlays_lay_the_run_size_map_over_the_resized_image(tiny_run, tmp_path, capsys):
    image = tmp_path / "part.png"
    Image.fromarray(normal_image(np.random.default_rng(1), (80, 96))).save(image)
    model, meta = load_run(tiny_run[1], torch.device("cpu"))
    size = meta["config"]["train"]["image_size"]
    resized = resize_image(read_image(image), size)
    with torch.no_grad():
        maps, _ = model.predict(to_tensor(resized[None], torch.device("cpu")))
    assert main(["predict", "--run", str(tiny_run[1]), str(image), "--save-maps", str(tmp_path / "maps"),
                 "--map-size", "run", "--overlays"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    with Image.open(result["map"]) as saved_map, Image.open(result["overlay"]) as overlay:
        assert saved_map.size == overlay.size == (size, size)
        drawn = np.asarray(overlay.convert("RGB"), np.int64)
    expected = heatmap_overlay(resized, maps[0].numpy(), display_max=1.0).astype(np.int64)  # probability run
    assert np.abs(drawn - expected).max() <= 1
