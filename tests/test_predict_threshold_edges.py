"""`realnet predict --threshold` at its edges: a score equal to the threshold is normal (the contract
is score > threshold, as scores.csv has it), and 0 is a threshold like any other (position-normalised
and fused maps are standardised, so 0 is a natural operating point), not "no threshold given"."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_fixtures import normal_image
from realnet.cli.main import main


def _one_line(capsys) -> dict:
    (line,) = capsys.readouterr().out.splitlines()
    return json.loads(line)


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "part.png"
    Image.fromarray(normal_image(np.random.default_rng(3), (80, 96))).save(path)
    return path


def test_a_score_equal_to_the_threshold_is_not_anomalous(tiny_run, tmp_path, capsys):
    image = _image(tmp_path)
    assert main(["predict", "--run", str(tiny_run[1]), str(image)]) == 0
    score = _one_line(capsys)["score"]
    assert main(["predict", "--run", str(tiny_run[1]), str(image), "--threshold", repr(score)]) == 0
    result = _one_line(capsys)
    assert result["score"] == result["threshold"] == score
    assert result["is_anomalous"] is False
    below = np.nextafter(score, -np.inf)
    assert main(["predict", "--run", str(tiny_run[1]), str(image), "--threshold", repr(float(below))]) == 0
    assert _one_line(capsys)["is_anomalous"] is True


def test_a_threshold_of_zero_is_used_not_taken_for_none(tiny_run, tmp_path, capsys):
    image = _image(tmp_path)
    run_threshold = json.loads((tiny_run[1] / "model.json").read_text())["threshold"]
    assert run_threshold != 0
    for given in ("0", "-0"):
        assert main(["predict", "--run", str(tiny_run[1]), str(image), "--threshold", given]) == 0
        result = _one_line(capsys)
        assert result["threshold"] == 0.0
        assert result["is_anomalous"] is (result["score"] > 0.0)
