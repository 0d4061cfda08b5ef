"""The benchmark scripts that re-score a finished run's held-out validation (benchmarks/) must
score the images the run held out, and their options must run on the current package."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import revalidate  # noqa: E402

from realnet.engine.evaluate import load_run  # noqa: E402
from realnet.engine.fit import split_holdout  # noqa: E402
from realnet.errors import RealnetError  # noqa: E402


def test_held_out_images_are_the_runs_own_and_other_data_is_refused(fused_run, tmp_path):
    data_root, run_dir, fit_images, holdout_images = fused_run
    _, meta = load_run(run_dir, torch.device("cpu"))
    size = meta["config"]["train"]["image_size"]
    images = common.normal_training_images(run_dir, meta, size)  # the recorded root, layout and category
    fit_rows, holdout_rows = split_holdout(len(images), meta["config"]["train"]["holdout_fraction"],
                                           meta["config"]["train"]["seed"])
    assert np.array_equal(images[fit_rows], fit_images) and np.array_equal(images[holdout_rows], holdout_images)

    # one training image fewer: the seeded split would move images the run trained on into "held out"
    copy = shutil.copytree(data_root, tmp_path / "data")
    next((copy / "widget" / "train" / "good").iterdir()).unlink()
    with pytest.raises(RealnetError, match="readable normal training images of widget; .* was fitted on 12"):
        common.normal_training_images(run_dir, meta, size, data=copy)
    with pytest.raises(RealnetError, match="fitted on category 'widget', not 'gadget'"):
        common.normal_training_images(run_dir, meta, size, category="gadget")
    with pytest.raises(RealnetError, match="chosen on the test split"):
        common.normal_training_images(run_dir, {**meta, "protocol": "select-on-test"}, size)


def test_revalidate_recalibrates_rrs_then_the_fusion_scales_as_fit_does(fused_run, monkeypatch, capsys):
    """--recalibrate-rrs crashed (TrainingImages lost a field), skipped the fusion scales fit
    recalibrates after it, and changed the model that later variants were measured on."""
    _, run_dir, _, _ = fused_run
    _, meta = load_run(run_dir, torch.device("cpu"))
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--recalibrate-rrs", "2", "--score-kernels", "4"])
    recalibrated_scales = []
    original = revalidate.calibrate_fusion_scales
    monkeypatch.setattr(revalidate, "calibrate_fusion_scales",
                        lambda model, *args: recalibrated_scales.append(model) or original(model, *args))
    revalidate.main()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["variant"].split(",")[0] for line in lines] == [
        "map_normalization none", "score kernel 4", "none"]
    as_fitted = {k: v for k, v in meta["fit"]["validation"].items() if not k.startswith("val_n_")}
    assert {k: lines[0][k] for k in as_fitted} == {k: round(v, 4) for k, v in as_fitted.items()}
    assert len(recalibrated_scales) == 2  # the score-kernel variant's, then the recalibrated model's


def test_revalidate_screens_weights_under_another_score_kernel(fused_run, monkeypatch, capsys):
    """--score-kernel K: each weight screen pools its image score over K x K with scales calibrated
    for K, so at the run's own weight both screens reproduce the K-alone row exactly."""
    _, run_dir, _, _ = fused_run
    _, meta = load_run(run_dir, torch.device("cpu"))
    weight = meta["config"]["density"]["weight"]
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--score-kernel", "8", "--density-weights",
                                      str(weight), "--image-density-weights", str(weight)])
    revalidate.main()
    as_fitted, kernel_alone, fused, image_weight = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert kernel_alone["variant"].startswith("score kernel 8")
    assert "score kernel 8" in fused["variant"] and "score kernel 8" in image_weight["variant"]
    metrics = [k for k in as_fitted if k.startswith("val")]
    assert {k: fused[k] for k in metrics} == {k: kernel_alone[k] for k in metrics}
    assert {k: image_weight[k] for k in metrics} == {k: kernel_alone[k] for k in metrics}
    kernel_alone_scales = json.loads(kernel_alone["variant"].split("scales ")[1])
    fitted_scales = load_run(run_dir, torch.device("cpu"))[0].fusion.scales.tolist()
    assert kernel_alone_scales != [round(b, 4) for b in fitted_scales]  # the kernel reached the scales
    assert json.loads(fused["variant"].split("scales ")[1]) == kernel_alone_scales


def test_revalidate_fusion_weights_on_a_run_with_an_image_weight_score_each_pairs_own_map(image_weight_run,
                                                                                         monkeypatch, capsys):
    """--fusion-weights on a run fitted with density.image_weight raised (the memory branch was
    built beside the run's image weight). Each pair scores the map it fuses: pair (0.5, 0) has the
    run's pixel metrics but not its image metrics (the run scores images on the discriminator's map)."""
    _, run_dir, _, _ = image_weight_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--fusion-weights", "0.5,0", "0.25,0.25"])
    revalidate.main()
    as_fitted, heatmap_pair, memory_pair = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert memory_pair["variant"].startswith("density weight 0.25, memory weight 0.25")
    pixel_keys = [k for k in as_fitted if k.startswith("val") and "pixel" in k]
    image_keys = [k for k in as_fitted if k.startswith("val") and "image" in k]
    assert pixel_keys and image_keys
    assert {k: as_fitted[k] for k in pixel_keys} == {k: heatmap_pair[k] for k in pixel_keys}
    assert {k: as_fitted[k] for k in image_keys} != {k: heatmap_pair[k] for k in image_keys}


def test_revalidate_image_density_weights_reproduce_the_runs_own_image_weight(image_weight_run, monkeypatch, capsys):
    _, run_dir, _, _ = image_weight_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--image-density-weights", "0", "0.5"])
    revalidate.main()
    as_fitted, own_weight, other_weight = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    metrics = [k for k in as_fitted if k.startswith("val")]
    assert {k: own_weight[k] for k in metrics} == {k: as_fitted[k] for k in metrics}
    assert {k: other_weight[k] for k in metrics} != {k: as_fitted[k] for k in metrics}


def test_screen_density_reproduces_the_runs_own_validation_with_its_image_weight(image_weight_run, monkeypatch, capsys):
    """The screen's row for the run's own density settings scored images on the fused pixel map,
    so on a run fitted with density.image_weight it did not reproduce the run's validation."""
    import screen_density

    _, run_dir, _, _ = image_weight_run
    _, meta = load_run(run_dir, torch.device("cpu"))
    monkeypatch.setattr(sys, "argv", ["screen_density.py", str(run_dir)])
    screen_density.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    own = rows[1]
    assert own["variant"].startswith("layers run, channels all") and "image score at w 0.0" in own["variant"]
    fitted = {k: round(v, 4) for k, v in meta["fit"]["validation"].items() if not k.startswith("val_n_")}
    assert {k: own[k] for k in fitted} == fitted
    assert fitted["val_image_auroc"] < 1  # an image score from the fused map reads 1 here


def test_revalidate_refuses_position_normalization_on_a_fused_run(fused_run, monkeypatch, capsys):
    _, run_dir, _, _ = fused_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--position-normalization"])
    with pytest.raises(SystemExit, match="is fused"):
        revalidate.main()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("script, arguments, message", [
    ("bench_efficiency", ["--suite", "no-such-suite", "--out", "o"], "unknown suite 'no-such-suite'"),
    ("model_size", ["--archs", "Z"], None),
])
def test_benchmark_scripts_report_bad_input_in_one_line(script, arguments, message, monkeypatch, capsys):
    """Regression: an unknown suite was a traceback from bench_efficiency.py, and an unknown
    architecture one from model_size.py."""
    import importlib

    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *arguments])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"{script}.py: error: ")
    assert message is None or f"{script}.py: error: {message}" in err


def test_bench_efficiency_takes_the_chosen_datasets_own_first_category(tmp_path):
    """Regression: --dataset without --category looked for the first dataset's category there."""
    import argparse
    import json as json_module

    import bench_efficiency
    from realnet.bench.runner import cell_dir
    from realnet.bench.suite import expand, parse_suite

    raw = {"name": "s", "preset": "tiny", "axes": [{"name": "axis", "variants": [{"name": "v"}]}],
           "datasets": [{"name": "first", "layout": "mvtec", "root": "a", "categories": ["widget"]},
                        {"name": "second", "layout": "mvtec", "root": "b", "categories": ["gadget"]}]}
    suite = parse_suite(raw, "s.yaml")
    second = next(c for c in expand(suite) if c.dataset.name == "second")
    folder = cell_dir(tmp_path, suite, second)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "cell.json").write_text(json_module.dumps({"status": "complete", "config": second.config,
                                                         "finished": "now"}))
    args = argparse.Namespace(dataset="second", category=None, out=tmp_path)
    assert list(bench_efficiency.suite_cells(suite, args)) == [second.id]
    with pytest.raises(RealnetError, match="--dataset third: not a dataset of s.yaml"):
        bench_efficiency.suite_cells(suite, argparse.Namespace(dataset="third", category=None, out=tmp_path))


def test_revalidate_heatmap_flips_keep_the_image_score_and_one_flip_reproduces_the_model(image_weight_run,
                                                                                       monkeypatch, capsys):
    """--image-density-weight at the run's own weight and --heatmap-flips 1 reproduce the run's
    validation; more flips move the pixel metrics only, and the model is put back afterwards."""
    _, run_dir, _, _ = image_weight_run
    kernel = load_run(run_dir, torch.device("cpu"))[1]["config"]["train"]["score_kernel"]
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--image-density-weight", "0",
                                      "--heatmap-flips", "1", "4", "--score-kernels", str(kernel)])
    revalidate.main()
    as_fitted, own_weight, one_flip, four_flips, after = [json.loads(line) for line in
                                                          capsys.readouterr().out.splitlines()]
    assert after["variant"].startswith(f"score kernel {kernel}")  # screened after the flips, as fitted
    assert four_flips["variant"].startswith("heatmap over 4 flips, image weight 0.0")
    metrics = [k for k in as_fitted if k.startswith("val")]
    image_keys = [k for k in metrics if "image" in k]
    pixel_keys = [k for k in metrics if k not in image_keys]
    for row in (own_weight, one_flip, after):
        assert {k: row[k] for k in metrics} == {k: as_fitted[k] for k in metrics}
    assert {k: four_flips[k] for k in image_keys} == {k: as_fitted[k] for k in image_keys}
    assert {k: four_flips[k] for k in pixel_keys} != {k: as_fitted[k] for k in pixel_keys}


def test_revalidate_refuses_an_image_density_weight_on_a_run_without_the_density(memory_run, monkeypatch):
    _, run_dir, _, _ = memory_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--image-density-weight", "0.5"])
    with pytest.raises(SystemExit, match="--image-density-weight: .* must be fused with the feature density alone"):
        revalidate.main()


def test_revalidate_density_neighbourhoods_refit_the_density_and_one_reproduces_the_run(image_weight_run,
                                                                                        monkeypatch, capsys):
    """--density-neighbourhoods 1 refits the run's own density (same scales, same validation);
    3 refits it on aggregated features under the run's image weight; the run's fusion is put
    back for the screens after it."""
    _, run_dir, _, _ = image_weight_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    kernel = meta["config"]["train"]["score_kernel"]
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--density-neighbourhoods", "1", "3",
                                      "--score-kernels", str(kernel)])
    revalidate.main()
    as_fitted, own, aggregated, after = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert own["variant"].startswith("density neighbourhood 1, image weight 0.0")
    assert aggregated["variant"].startswith("density neighbourhood 3, image weight 0.0")
    metrics = [k for k in as_fitted if k.startswith("val")]
    for row in (own, after):
        assert {k: row[k] for k in metrics} == {k: as_fitted[k] for k in metrics}
    assert json.loads(own["variant"].split("scales ")[1]) == [round(b, 4) for b in model.fusion.scales.tolist()]
    assert {k: aggregated[k] for k in metrics} != {k: as_fitted[k] for k in metrics}


def test_revalidate_refuses_an_even_density_neighbourhood(image_weight_run, monkeypatch, capsys):
    _, run_dir, _, _ = image_weight_run
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(run_dir), "--density-neighbourhoods", "2"])
    with pytest.raises(SystemExit):
        revalidate.main()
    assert "--density-neighbourhoods: every neighbourhood must be an odd number >= 1" in capsys.readouterr().err


def test_the_benchmark_scripts_read_a_run_that_recorded_a_retired_setting(image_weight_run, monkeypatch, capsys,
                                                                          tmp_path):
    """train.num_workers was retired and runs that recorded it still load, test and resume, but
    revalidate.py (and screen_density.py, refuse_run.py) refused them as an unknown config key."""
    _, run_dir, _, _ = image_weight_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    meta = json.loads((copy / "model.json").read_text())
    meta["config"]["train"]["num_workers"] = 0
    (copy / "model.json").write_text(json.dumps(meta))
    monkeypatch.setattr(sys, "argv", ["revalidate.py", str(copy)])
    revalidate.main()
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["run"] == str(copy) and 0 <= row["mean"] <= 1
