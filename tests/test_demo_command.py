"""`realnet demo` orchestration with fit, test and predict stubbed out (the real run is `make demo`):
the demo dataset is rebuilt when out of date and kept across categories, and bad options are
refused before anything runs."""

from __future__ import annotations

import json

import pytest

from realnet.cli.main import main
from realnet.config import load_config
from realnet.data.demo import MARKER
from realnet.engine.demo import demo_config, run_demo


@pytest.fixture
def stubbed(monkeypatch):
    import realnet.engine.evaluate as evaluate
    import realnet.engine.fit as fit
    import realnet.engine.predict as predict

    seen = []

    def fake_fit(request):
        seen.append(request.config.train.steps)
        (request.out / "model.json").parent.mkdir(parents=True, exist_ok=True)
        (request.out / "model.json").write_text(json.dumps({"format_version": 1,
                                                            "data": {"root": str(request.data_root.resolve())}}))

    monkeypatch.setattr(fit, "fit", fake_fit)
    monkeypatch.setattr(evaluate, "evaluate", lambda run: {"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0,
                                                           "n_images": 1})
    monkeypatch.setattr(predict, "predict", lambda run, paths, save_maps: 0)
    return seen


def test_an_out_of_date_demo_dataset_is_rebuilt_and_categories_share_one(tmp_path, stubbed):
    """Regression: the dataset was made only when <out>/data/<category> was missing, so a tree of
    an older generator was used as it was, and a second category deleted the first's data."""
    assert run_demo(tmp_path, "brick") == 0
    marker = tmp_path / "data" / MARKER
    brick = (tmp_path / "data" / "brick" / "train" / "good" / "000.png").read_bytes()
    assert run_demo(tmp_path, "gravel") == 0
    assert (tmp_path / "data" / "brick" / "train" / "good" / "000.png").read_bytes() == brick
    settings = json.loads(marker.read_text())
    marker.write_text(json.dumps({**settings, "version": 0}))
    (tmp_path / "data" / "brick" / "train" / "good" / "000.png").write_bytes(b"an older generator's image")
    assert run_demo(tmp_path, "brick") == 0
    assert json.loads(marker.read_text()) == settings
    assert (tmp_path / "data" / "brick" / "train" / "good" / "000.png").read_bytes() == brick
    assert stubbed == [800, 800, 800]


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_demo_steps_must_be_positive(tmp_path, capsys, stubbed, steps):
    """Regression: --steps 0 meant the default budget and --steps -5 tested an untrained model."""
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "demo"), "--steps", steps])
    assert "--steps: must be >= 1" in capsys.readouterr().err
    assert stubbed == [] and not (tmp_path / "demo").exists()


def test_unknown_demo_category_is_one_error_line(tmp_path, capsys, stubbed):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--category", "marble"]) == 2
    assert capsys.readouterr().err.splitlines() == ["realnet: error: unknown demo category 'marble'; "
                                                    "choose from brick, gravel, grass"]
    assert stubbed == [] and not (tmp_path / "demo").exists()


@pytest.mark.parametrize("left", [[], ["model.safetensors"], ["afs.json", ".model.safetensors.k1ll3d.tmp"]])
def test_a_demo_killed_before_its_first_checkpoint_runs_again(tmp_path, stubbed, left):
    """Regression: a demo killed (SIGHUP, SIGKILL) before the run's first checkpoint, or while it
    saved the model, left a run folder without model.json or resume.pt, and every later
    `make demo` was refused with 'exists and is not a realnet run' until it was deleted by hand."""
    run = tmp_path / "run"
    run.mkdir()
    for name in left:
        (run / name).write_bytes(b"half")
    assert run_demo(tmp_path, "brick") == 0
    assert sorted(p.name for p in run.iterdir()) == ["model.json"]
    assert run_demo(tmp_path, "brick") == 0  # its own finished run is started again


@pytest.mark.parametrize("kind", ["files", "run on other data"])
def test_a_demo_run_folder_holding_someone_elses_files_or_run_is_refused(tmp_path, stubbed, capsys, kind):
    """Regression (the second case): the demo deleted any finished realnet run at OUT/run, such as
    a user's own `realnet fit --out OUT/run` on their data."""
    run = tmp_path / "run"
    run.mkdir()
    if kind == "files":
        (run / "notes.txt").write_text("mine")
    else:
        (run / "model.json").write_text(json.dumps({"format_version": 1, "data": {"root": "/my/line/images"}}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "exists and is not the demo's run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_demo_keeps_the_settings_its_figures_were_measured_with_where_the_cpu_preset_moved():
    """docs/results.md's demo figures were measured with half the samples normal, the maps' own
    16 x 16 image score and U-Nets at width factor 0.5; the `cpu` preset has since moved all three."""
    preset, demo = load_config("cpu"), demo_config("brick", None)
    assert preset.synthesis.normal_probability != 0.5 and demo.synthesis.normal_probability == 0.5
    assert demo.density.image_weight is None and demo.train.score_kernel == 16
    assert preset.reconstruction.width_factor != 0.5 and demo.reconstruction.width_factor == 0.5
