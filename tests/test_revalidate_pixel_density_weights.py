"""revalidate.py --pixel-density-weights W...: the heatmap fused at each W while the image score
stays as fitted, so only the pixel metrics move, the run's own W reproduces its validation, and
the screens after it run under the run's own weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import revalidate  # noqa: E402


def test_the_pixel_screen_moves_the_heatmap_and_keeps_the_image_score(image_weight_run, monkeypatch, capsys):
    _, run_dir, _, _ = image_weight_run  # heatmap at density weight 0.5, image score at 0
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--pixel-density-weights", "0.5", "1",
                                      "--heatmap-flips", "1"])
    revalidate.main()
    as_fitted, own_weight, density_only, one_flip = [json.loads(line)
                                                      for line in capsys.readouterr().out.splitlines()]
    assert own_weight["variant"].startswith("pixel map at density weight 0.5, image score at 0.0")
    assert density_only["variant"].startswith("pixel map at density weight 1.0, image score at 0.0")
    metrics = [k for k in as_fitted if k.startswith("val")]
    image_keys = [k for k in metrics if "image" in k]
    pixel_keys = [k for k in metrics if k not in image_keys]
    assert {k: own_weight[k] for k in metrics} == {k: as_fitted[k] for k in metrics}
    # the fixture's image AUROC is below 1 at image weight 0 and 1 at any weight from 0.1 up
    assert {k: density_only[k] for k in image_keys} == {k: as_fitted[k] for k in image_keys}
    assert {k: density_only[k] for k in pixel_keys} != {k: as_fitted[k] for k in pixel_keys}
    assert one_flip["variant"].startswith("heatmap over 1 flips, image weight 0.0")
    assert {k: one_flip[k] for k in metrics} == {k: as_fitted[k] for k in metrics}


def test_the_pixel_screen_pins_an_image_score_that_pools_the_heatmap(fused_run, monkeypatch, capsys):
    _, run_dir, _, _ = fused_run  # density.image_weight null: the image score pools the heatmap (0.5)
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--pixel-density-weights", "0.25"])
    revalidate.main()
    _, screened = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert screened["variant"].startswith("pixel map at density weight 0.25, image score at 0.5")


@pytest.mark.parametrize("weight", ["-0.1", "1.5"])
def test_pixel_density_weights_outside_zero_one_are_one_clear_error(fused_run, monkeypatch, capsys, weight):
    _, run_dir, _, _ = fused_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--pixel-density-weights", weight])
    with pytest.raises(SystemExit):
        revalidate.main()
    assert "--pixel-density-weights: every weight must be in [0, 1]" in capsys.readouterr().err
