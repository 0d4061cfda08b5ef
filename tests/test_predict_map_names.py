"""`realnet predict --save-maps`: each input's map is named by its own position in the input list
(`<position>_<stem>.png`) and holds its own map, also in later batches and after an unreadable file."""

import io
import json

import numpy as np
import torch
from PIL import Image

from dataset_fixtures import normal_image
from realnet.cli.main import main
from realnet.data.io import read_image, resize_image
from realnet.engine.evaluate import load_run
from realnet.engine.runtime import to_tensor
from realnet.report.panels import map_at_input_size


def test_maps_keep_their_inputs_position_across_batches_and_bad_files(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(2)
    first, third, fourth = (tmp_path / f"{name}.png" for name in ("first", "third", "fourth"))
    for path in (first, third, fourth):
        Image.fromarray(normal_image(rng, (80, 96))).save(path)
    broken = tmp_path / "broken.jpg"
    jpeg = io.BytesIO()
    Image.fromarray(normal_image(rng, (80, 96))).save(jpeg, "JPEG")
    broken.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    maps = tmp_path / "maps"
    inputs = [first, broken, third, fourth]
    assert main(["predict", "--run", str(tiny_run[1]), *map(str, inputs), "--save-maps", str(maps),
                 "--batch-size", "2"]) == 1
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in results] == [str(first), str(third), str(fourth)]
    assert [r["map"] for r in results] == [str(maps / "00000_first.png"), str(maps / "00002_third.png"),
                                           str(maps / "00003_fourth.png")]
    # each saved file is that image's own map (a probability map: 0..1 drawn as 0..255), not another input's
    model, meta = load_run(tiny_run[1], torch.device("cpu"))
    size = meta["config"]["train"]["image_size"]
    batch = np.stack([resize_image(read_image(path), size) for path in (first, third, fourth)])
    with torch.no_grad():
        own, _ = model.predict(to_tensor(batch, torch.device("cpu")))
    for result, expected in zip(results, own.numpy().astype(np.float64)):
        with Image.open(result["map"]) as png:
            saved = np.asarray(png, np.float64)
        assert saved.shape == (80, 96)  # drawn at the input's size by default
        assert np.abs(saved - np.clip(np.round(map_at_input_size(expected, (80, 96)) * 255), 0, 255)).max() <= 1
