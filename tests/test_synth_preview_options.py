"""`realnet synth preview`: --count (default 16), --seed and --foreground reach the synthesis."""

from __future__ import annotations

import cv2
import numpy as np

from realnet.cli.main import main


def _demo(tmp_path):
    from realnet.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path / "demo", size=32, n_train=3, n_test_good=1, n_test_defect=1,
                             categories=("brick",))


def test_preview_count_defaults_to_16_and_seed_picks_the_samples(tmp_path, capsys):
    data = _demo(tmp_path)
    base = ["synth", "preview", "--data", str(data), "--category", "brick", "--source", "cutpaste", "nsa",
            "--size", "32"]
    assert main(base + ["--out", str(tmp_path / "default.png")]) == 0
    assert "16 samples" in capsys.readouterr().out
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main(base + ["--count", "6", "--seed", seed, "--out", str(tmp_path / f"{name}.png")]) == 0
    a, b, c = (cv2.imread(str(tmp_path / f"{n}.png")) for n in "abc")
    assert np.array_equal(a, b)  # the same seed: the same grid
    assert not np.array_equal(a, c)  # another seed: other samples


def test_preview_foreground_choice_reaches_the_synthesizer(tmp_path, monkeypatch, capsys):
    import realnet.synthesis.foreground as foreground

    asked = []
    real = foreground.resolve_foreground
    monkeypatch.setattr(foreground, "resolve_foreground", lambda mode, *a, **k: asked.append(mode) or real(mode, *a, **k))
    data = _demo(tmp_path)
    base = ["synth", "preview", "--data", str(data), "--category", "brick", "--source", "cutpaste",
            "--size", "32", "--count", "2"]
    assert main(base + ["--out", str(tmp_path / "n.png"), "--foreground", "none"]) == 0
    assert main(base + ["--out", str(tmp_path / "r.png")]) == 0
    assert asked == ["none", "rule"]
