"""revalidate.py --image-density-weight W: the run is validated with its image score taken from
the maps fused at W (as the --image-density-weights screen at W gives it), and the
--density-neighbourhoods screen after it runs under W: neighbourhood 1 reproduces that row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import revalidate  # noqa: E402


def test_the_image_density_weight_reaches_the_image_score_and_the_neighbourhood_screen(image_weight_run,
                                                                                      monkeypatch, capsys):
    _, run_dir, _, _ = image_weight_run  # image score fitted at density weight 0
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--image-density-weights", "0.5",
                                      "--image-density-weight", "0.5", "--density-neighbourhoods", "1"])
    revalidate.main()
    as_fitted, screened, weighted, neighbourhood = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert neighbourhood["variant"].startswith("density neighbourhood 1, image weight 0.5")
    metrics = [k for k in as_fitted if k.startswith("val")]
    image_keys = [k for k in metrics if "image" in k]
    pixel_keys = [k for k in metrics if k not in image_keys]
    for row in (weighted, neighbourhood):
        assert {k: row[k] for k in metrics} == {k: screened[k] for k in metrics}
        assert {k: row[k] for k in pixel_keys} == {k: as_fitted[k] for k in pixel_keys}  # the heatmap as fitted
    # the fixture's image AUROC at weight 0 is not 1 and is 1 from 0.1 up: W moved the image score
    assert {k: weighted[k] for k in image_keys} != {k: as_fitted[k] for k in image_keys}


def test_the_image_density_weights_screen_puts_the_runs_own_image_weight_back(image_weight_run, monkeypatch, capsys):
    """The screens after --image-density-weights run under the run's own image weight."""
    _, run_dir, _, _ = image_weight_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--image-density-weights", "0.5",
                                      "--heatmap-flips", "1"])
    revalidate.main()
    as_fitted, _, one_flip = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert one_flip["variant"].startswith("heatmap over 1 flips, image weight 0.0")
    metrics = [k for k in as_fitted if k.startswith("val")]
    assert {k: one_flip[k] for k in metrics} == {k: as_fitted[k] for k in metrics}
