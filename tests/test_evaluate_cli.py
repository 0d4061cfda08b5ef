"""`realnet fit` metadata and `realnet test` outputs on the shared tiny run; the paper's
test-set selection protocol only on request, and labelled."""

import csv
import json
import shutil
import stat

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from realnet.cli.main import main
from realnet.data.layouts import load_dataset
from realnet.engine.evaluate import load_run, load_test_split, merged_folder_options
from realnet.engine.fit import score_images
from realnet.files import USER_UMASK
from realnet.metrics import aupro


def test_run_metadata_records_identity_threshold_and_protocol(tiny_run):
    _, run = tiny_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["protocol"] == "final-model"
    assert meta["backbone"]["name"] == "tf_efficientnet_lite0" and len(meta["backbone"]["sha256"]) == 64
    assert meta["threshold_source"].startswith("held-out normal")
    assert meta["fit"]["n_holdout_images"] == 3 and meta["fit"]["n_fit_images"] == 9
    validation = meta["fit"]["validation"]
    for prefix in ("val", "val_faint"):
        assert all(0.0 <= validation[f"{prefix}_{m}"] <= 1.0 for m in ("image_auroc", "pixel_auroc", "aupro"))
    assert len(meta["selection"]["indices"]) == 2
    assert not any(p.name.startswith("resume") for p in run.iterdir())


def test_test_command_writes_metrics_scores_and_panels(tiny_run, tmp_path, capsys):
    """metrics.json holds the metrics of scores.csv and of the run's maps (AUPRO up to FPR 0.3), and the files agree."""
    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["test", "--run", str(copy), "--data", str(data), "--category", "widget"]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_images"] == 8 and metrics["n_anomalous"] == 4
    assert metrics["protocol"] == "final-model" and metrics["preset"] == "tiny"
    assert set(metrics["image_auroc_per_defect"]) == {"scratch"}
    assert metrics["backbone_weights_sha256"] == json.loads((copy / "model.json").read_text())["backbone"]["sha256"]
    with open(copy / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["label"] for r in rows} == {"0", "1"}
    threshold = metrics["threshold"]
    assert all(int(r["is_anomalous"]) == (float(r["score"]) > threshold) for r in rows)
    assert metrics["image_auroc"] == pytest.approx(
        roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows]), abs=1e-6)
    model, meta = load_run(copy, torch.device("cpu"))
    train = meta["config"]["train"]
    split = load_test_split(data, "widget", meta["data"]["dataset"], train["image_size"], progress=False)
    maps, _ = score_images(model, split.images, torch.device("cpu"), train["batch_size"])
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(split.masks.ravel(), maps.ravel()), abs=1e-6)
    assert metrics["aupro"] == pytest.approx(aupro(maps, split.masks, fpr_limit=0.3), abs=1e-6)
    panels = sorted((copy / "panels").glob("*.png"))
    assert panels and any(p.name.startswith("worst_anomalous") for p in panels)
    assert '"image_auroc"' in capsys.readouterr().out


def test_select_on_test_is_opt_in_and_labelled(tmp_path, tiny_run):
    data, _ = tiny_run
    out = tmp_path / "selected"
    assert main(["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--out", str(out),
                 "--steps", "4", "--select-on-test", "--eval-every", "2"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["protocol"] == "select-on-test"
    assert meta["fit"]["selected_step"] in (2, 4)
    assert meta["fit"]["eval_every"] == 2  # the steps it chose among, which the protocol is only known with
    assert main(["test", "--run", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "select-on-test" and "test set" in metrics["warning"]
    best = meta["fit"]["selection_metrics"]["image_auroc"]
    assert np.isclose(metrics["image_auroc"], best)


def test_select_on_test_evaluates_every_five_epochs_of_a_schedule_in_epochs(tmp_path, tiny_run):
    """The notes: the authors evaluated on the test set every 5 epochs. The default interval was
    train.checkpoint_every steps whatever the schedule, so the paper preset (1000 epochs) chose among
    other steps than theirs unless --eval-every was worked out by hand."""
    from realnet.engine.runtime import steps_per_epoch

    data, _ = tiny_run
    out = tmp_path / "selected"
    assert main(["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--out", str(out),
                 "--set", "train.steps=null", "--set", "train.epochs=10", "--set", "train.checkpoint_every=3",
                 "--select-on-test"]) == 0
    meta = json.loads((out / "model.json").read_text())
    per_epoch = steps_per_epoch(meta["fit"]["n_fit_images"], meta["config"]["train"]["batch_size"])
    assert meta["fit"]["eval_every"] == 5 * per_epoch and meta["fit"]["steps"] == 10 * per_epoch
    assert meta["fit"]["selected_step"] % (5 * per_epoch) == 0


def test_missing_data_and_bad_preset_are_one_line_errors(tmp_path, capsys):
    assert main(["fit", "--data", str(tmp_path / "nope"), "--category", "x", "--preset", "tiny",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nope") in err[0]
    assert not (tmp_path / "r").exists()
    assert main(["fit", "--data", str(tmp_path), "--category", "x", "--preset", "huge", "--out", str(tmp_path / "r")]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_counts_out_of_range_and_eval_every_without_selection_are_refused(tmp_path, tiny_run, capsys):
    """Regressions: test --batch-size -4 scored nothing and failed with a traceback (0 fell back to
    the default silently); --eval-every without --select-on-test was ignored silently."""
    fit = ["fit", "--data", str(tmp_path), "--category", "x", "--preset", "tiny", "--out", str(tmp_path / "r")]
    assert main(fit + ["--eval-every", "5"]) == 2
    assert "--eval-every only applies with --select-on-test" in capsys.readouterr().err
    for command in (fit + ["--eval-every", "0", "--select-on-test"], fit + ["--steps", "0"],
                    ["test", "--run", str(tiny_run[1]), "--batch-size", "-4"]):
        with pytest.raises(SystemExit):
            main(command)
        assert "must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_folder_dataset_fits_and_tests_from_the_command_line(tmp_path):
    """The folder options reached model.json as Path objects, so every CLI fit of a folder
    dataset crashed at the end and left an unfinished run."""
    from dataset_fixtures import make_folder_tree

    root = make_folder_tree(tmp_path / "data", n_normal=10, n_abnormal=3, size=(64, 64))
    out = tmp_path / "run"
    folder = ["--dataset", "folder", "--data", str(root), "--normal-dir", "normal", "--abnormal-dir", "abnormal",
              "--mask-dir", "masks"]
    assert main(["fit", *folder, "--preset", "tiny", "--out", str(out), "--steps", "2"]) == 0
    assert json.loads((out / "model.json").read_text())["data"]["folder_options"]["normal_dir"] == "normal"
    assert main(["test", "--run", str(out)]) == 0
    # regression: the folder options were inherited into another dataset, which refused them
    from dataset_fixtures import make_mvtec_tree

    mvtec = make_mvtec_tree(tmp_path / "mvtec", "widget", n_train=2, n_test_good=2, defects={"scratch": 2},
                            size=(64, 64), seed=1)  # seed 0 draws the folder tree's normal images, byte for byte
    assert main(["test", "--run", str(out), "--data", str(mvtec), "--category", "widget", "--dataset", "mvtec"]) == 0
    assert json.loads((out / "metrics.json").read_text())["data"]["dataset"] == "mvtec"


def test_a_folder_test_split_of_new_images_needs_no_training_folder(tmp_path, capsys):
    """Regression: `test --dataset folder` on new normal and anomalous images demanded
    --normal-dir, a training folder the test never reads; fit without one says what is missing."""
    from dataset_fixtures import make_folder_tree

    root = make_folder_tree(tmp_path / "data", n_normal=10, n_abnormal=3, size=(64, 64))
    new = make_folder_tree(tmp_path / "new", n_normal=0, n_abnormal=2, n_normal_test=3, size=(64, 64), seed=1)
    out = tmp_path / "run"
    assert main(["fit", "--dataset", "folder", "--data", str(root), "--normal-dir", "normal", "--preset", "tiny",
                 "--out", str(out), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["test", "--run", str(out), "--dataset", "folder", "--data", str(new), "--abnormal-dir", "abnormal",
                 "--mask-dir", "masks", "--normal-test-dir", "normal_test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_images"], metrics["n_anomalous"]) == (5, 2)
    assert main(["fit", "--dataset", "folder", "--data", str(new), "--normal-test-dir", "normal_test",
                 "--preset", "tiny", "--out", str(tmp_path / "run2"), "--steps", "2"]) == 2
    assert "--normal-dir" in capsys.readouterr().err


def test_test_split_with_one_class_and_missing_masks_are_reported(tiny_run, tmp_path, capsys):
    """A test split without anomalous images crashed in image_auroc with a traceback; an anomalous
    image without a mask was silently scored as all-normal pixels."""
    data, run = tiny_run
    only_good = tmp_path / "only_good"
    shutil.copytree(data, only_good)
    shutil.rmtree(only_good / "widget" / "test" / "scratch")
    shutil.rmtree(only_good / "widget" / "ground_truth")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["test", "--run", str(copy), "--data", str(only_good), "--category", "widget"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("realnet:")]
    assert len(errors) == 1 and "has only normal test images" in errors[0]
    assert not (copy / "metrics.json").exists()

    one_mask_gone = tmp_path / "one_mask_gone"
    shutil.copytree(data, one_mask_gone)
    next((one_mask_gone / "widget" / "ground_truth" / "scratch").glob("*")).unlink()
    assert main(["test", "--run", str(copy), "--data", str(one_mask_gone), "--category", "widget"]) == 0
    assert json.loads((copy / "metrics.json").read_text())["anomalous_without_mask"] == 1
    assert "1 anomalous test image(s) have no mask; the pixel metrics count all their pixels as normal" in \
        capsys.readouterr().err

    # regression: with no mask at all the warning said the same, though the pixel metrics were null
    no_masks = tmp_path / "no_masks"
    shutil.copytree(data, no_masks)
    shutil.rmtree(no_masks / "widget" / "ground_truth")
    assert main(["test", "--run", str(copy), "--data", str(no_masks), "--category", "widget"]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    assert "4 anomalous test image(s) have no mask; no test pixel is marked, so the pixel metrics are null" in \
        capsys.readouterr().err


def test_skipped_test_images_are_named_and_recorded(tiny_run, tmp_path, capsys):
    """Regression: test --skip-bad dropped unreadable images without a word, so the metrics were
    computed over fewer images than the split had."""
    data, run = tiny_run
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    bad = sorted((broken / "widget" / "test" / "good").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:40])
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["test", "--run", str(copy), "--data", str(broken), "--category", "widget", "--skip-bad"]) == 0
    assert f"realnet: skipped {bad}" in capsys.readouterr().err
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["skipped_images"] == [str(bad)] and metrics["n_images"] == 7


def test_a_second_test_replaces_the_panels_and_refuses_a_negative_count(tiny_run, tmp_path, capsys):
    """Regression: panel names carry scores and panels/ was never cleared, so a re-test left the
    earlier panels beside the new ones; --panels -1 showed all but the last case of each kind."""
    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "panels").mkdir(exist_ok=True)
    (copy / "panels" / "worst_anomalous_00_scratch_old_0.999.png").write_bytes(b"an earlier test's panel")
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 0
    listed = json.loads((copy / "metrics.json").read_text())["panels"]
    assert sorted(f"panels/{p.name}" for p in (copy / "panels").iterdir()) == sorted(listed) and len(listed) == 3
    assert not list(copy.glob(".panels.*"))
    # regression: the folder kept its staging folder's private mode 0700, unlike every other output
    assert stat.S_IMODE((copy / "panels").stat().st_mode) == 0o777 & ~USER_UMASK
    with pytest.raises(SystemExit):
        main(["test", "--run", str(copy), "--panels", "-1"])
    assert "--panels: must be >= 0" in capsys.readouterr().err


def test_a_test_whose_panels_fail_leaves_the_previous_outputs_as_they_were(tiny_run, tmp_path, monkeypatch, capsys):
    """Regression: scores.csv was rewritten before the panels, so a panel failure left a new
    scores.csv beside the previous test's metrics.json and panels."""
    import realnet.report.panels

    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 0
    before = {name: (copy / name).read_bytes() for name in ("scores.csv", "metrics.json")}
    (copy / "scores.csv").write_text("path,defect,label,score,is_anomalous\nmarker,good,0,0,0\n")
    before["scores.csv"] = (copy / "scores.csv").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(realnet.report.panels, "write_panels", disk_full)
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {name: (copy / name).read_bytes() for name in before} == before


def test_a_test_whose_metrics_file_fails_leaves_every_previous_output_as_it_was(tiny_run, tmp_path, monkeypatch,
                                                                               capsys):
    """Regression: panels/ and scores.csv were moved into place before metrics.json was written, so a
    full disk while writing metrics.json left the new panels and scores beside the previous test's
    metrics.json, which listed panels that were gone."""
    from pathlib import Path

    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["test", "--run", str(copy), "--panels", "2"]) == 0
    before = {path.relative_to(copy): path.read_bytes() for path in [copy / "scores.csv", copy / "metrics.json",
                                                                       *(copy / "panels").iterdir()]}
    real_write_text = Path.write_text

    def disk_full_for_metrics(path, *args, **kwargs):
        if path.name.startswith(".metrics.json."):
            raise OSError(28, "No space left on device")
        return real_write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_for_metrics)
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    after = {path.relative_to(copy): path.read_bytes() for path in [copy / "scores.csv", copy / "metrics.json",
                                                                      *(copy / "panels").iterdir()]}
    assert after == before
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == []


def test_a_run_folder_that_cannot_be_written_is_named_not_a_staging_folder(tiny_run, tmp_path, monkeypatch, capsys):
    """Regression: on a read-only run `realnet test` said '<run>/.panels.nl911_85: Permission denied',
    naming a temporary folder the user never saw."""
    import tempfile

    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def read_only(dir=None, prefix=None, **kwargs):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}k1ll3d")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"realnet: error: {copy}: cannot write the test's outputs there (Permission denied)"
    assert ".panels." not in err


def test_panel_paths_in_metrics_are_relative_to_the_run_and_a_killed_tests_leftovers_are_removed(
        tiny_run, tmp_path, monkeypatch):
    """Regressions: metrics.json named the panels relative to the folder `realnet test` ran in, so
    they could not be found from anywhere else; a test killed mid-write left its hidden staging
    folder and temporary files in the run for good."""
    data, run = tiny_run
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, copy)
    (copy / ".panels.k1ll3d").mkdir()
    (copy / ".panels.k1ll3d" / "worst_normal_00_good_000_0.123.png").write_bytes(b"half")
    (copy / ".scores.csv.k1ll3d.tmp").write_text("half")
    (copy / ".metrics.json.k1ll3d.tmp").write_text("half")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["test", "--run", "run", "--panels", "1"]) == 0
    panels = json.loads((copy / "metrics.json").read_text())["panels"]
    assert panels and all(name.startswith("panels/") and (copy / name).is_file() for name in panels)
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("edit", [
    lambda meta: [1, 2],
    lambda meta: {k: v for k, v in meta.items() if k != "config"},
    lambda meta: {**meta, "threshold": "high"},
    lambda meta: {**meta, "threshold": float("nan")},
    lambda meta: {**meta, "backbone": "x"},
    lambda meta: {**meta, "data": "x"},
    lambda meta: {**meta, "backbone": {**meta["backbone"], "sha256": None}},
], ids=["list", "no config", "text threshold", "nan threshold", "backbone text", "data text", "no sha256"])
def test_a_damaged_model_json_is_one_line_for_every_command_that_reads_it(tiny_run, tmp_path, capsys, edit):
    """Regression: model.json was only checked to be JSON, so an edited or damaged one gave an
    AttributeError/KeyError/TypeError traceback, and a NaN threshold was used (every image normal)."""
    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps(edit(meta)))
    image = next((data / "widget" / "test" / "good").iterdir())
    for command in (["predict", "--run", str(copy), str(image)], ["test", "--run", str(copy)],
                    ["export", "--run", str(copy), "--out", str(tmp_path / "m.onnx")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"realnet: error: {copy / 'model.json'}: malformed"), err
    assert not (tmp_path / "m.onnx").exists()


def test_weights_of_other_shapes_than_model_json_describes_are_one_line_for_every_command(tiny_run, tmp_path,
                                                                                          capsys):
    """Regression: load_state_dict raised on a size mismatch before the one-line check ran, so a
    model.json edited to another discriminator ended predict, test and export in a long traceback."""
    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["config"]["discriminator"]["hidden"] = [32, 8, 8, 4]
    (copy / "model.json").write_text(json.dumps(meta))
    image = next((data / "widget" / "test" / "good").iterdir())
    for command in (["predict", "--run", str(copy), str(image)], ["test", "--run", str(copy)],
                    ["export", "--run", str(copy), "--out", str(tmp_path / "m.onnx")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(f"realnet: error: {copy / 'model.safetensors'}: does not match the model that "
                              "model.json describes, 6 tensors have other shapes (file vs model: "
                              "'discriminator.head.0.weight' (16, 8, 3, 3) vs (32, 8, 3, 3)"), err
    assert not (tmp_path / "m.onnx").exists()


def test_every_option_of_every_command_says_what_it_does():
    """Regression: `realnet --help` printed a sentence cut off mid-way and several options (test
    --run, predict --device, demo --out, the seeds ...) had no help text."""
    import argparse

    from realnet.cli.main import build_parser

    parser = build_parser()
    assert parser.description.endswith(".")
    undocumented = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
            elif action.option_strings and action.dest != "help" and not action.help:
                undocumented.append(" ".join([*prefix, action.option_strings[0]]))

    walk(parser, [])
    assert undocumented == []


def test_errors_say_what_to_do_when_data_moved_a_folder_is_empty_or_a_config_file_is_wrong(
        tiny_run, tmp_path, capsys):
    """Regressions: a run whose data moved said only 'data root ... not found'; predict on an
    empty folder said 'no input images given' although a folder was given; an unknown key in a
    --config file did not name the file."""
    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["data"]["root"] = str(tmp_path / "moved")
    (copy / "model.json").write_text(json.dumps(meta))
    assert main(["test", "--run", str(copy)]) == 2
    assert "is not there any more; pass --data" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert main(["predict", "--run", str(run), str(tmp_path / "empty")]) == 2
    assert f"no image files in {tmp_path / 'empty'}" in capsys.readouterr().err

    config = tmp_path / "c.yaml"
    config.write_text("train: {trian: 1}\n")
    assert main(["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--config", str(config),
                 "--out", str(tmp_path / "r")]) == 2
    assert f"{config}: unknown config key 'train.trian'" in capsys.readouterr().err


def test_test_warns_about_empty_masks_and_records_the_data_it_tested(tiny_run, tmp_path, capsys, monkeypatch):
    """Regressions: an anomalous image whose mask marks nothing was scored as all-normal pixels
    without a word (only `data check` noticed); metrics.json recorded a relative root and no
    folder-dataset folders, so it did not say which data was tested."""
    from PIL import Image

    data, run = tiny_run
    copy, moved = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, copy)
    shutil.copytree(data, moved)
    blank = sorted((moved / "widget" / "ground_truth" / "scratch").iterdir())[0]
    with Image.open(blank) as mask:
        Image.new("L", mask.size).save(blank)
    monkeypatch.chdir(tmp_path)
    assert main(["test", "--run", str(copy), "--data", "data", "--category", "widget"]) == 0
    assert ("realnet: warning: 1 anomalous test image(s) have a mask that marks no pixel at 64 px"
            in capsys.readouterr().err)
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["anomalous_with_empty_mask"] == 1
    assert metrics["data"] == {"root": str(moved.resolve()), "category": "widget", "dataset": "mvtec",
                               "folder_options": {}}


def test_panels_carry_a_caption_with_the_score_threshold_and_colour_scale():
    """Regression: panels were three bare images; the score was only in the file name and the
    threshold and the overlay's colour scale nowhere."""
    from realnet.report.panels import CAPTION_HEIGHT, caption_for, panel

    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    anomaly_map = np.zeros((64, 64), np.float32)
    assert caption_for("crack", 0.532, 0.41, 1.0) == "crack: score 0.532 > threshold 0.410; map 0..1"
    assert caption_for("good", 0.2, 0.41, 0.82) == "good: score 0.200 <= threshold 0.410; map 0..0.82"
    plain = panel(image, mask, anomaly_map)
    captioned = panel(image, mask, anomaly_map, caption=caption_for("crack", 0.532, 0.41, 1.0))
    assert captioned.shape[1:] == plain.shape[1:] and (captioned.shape[0] - 64) % CAPTION_HEIGHT == 0
    assert np.array_equal(captioned[-64:], plain)
    strip = captioned[:-64]
    assert (strip < 100).any() and (strip == 255).any()  # dark text on white


def crack_and_good_split(tmp_path, image: np.ndarray, mask: np.ndarray, size: int):
    """A test split of one part saved as a crack (with its mask) and as a good case, loaded at
    size x size (black: panels draw each case from its own files)."""
    from PIL import Image

    from realnet.data.records import Record
    from realnet.engine.evaluate import TestSplit

    Image.fromarray(image).save(tmp_path / "part.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "part_mask.png")
    records = [Record(tmp_path / "part.png", tmp_path / "part_mask.png", 1, "crack", "c", "test"),
               Record(tmp_path / "part.png", None, 0, "good", "c", "test")]
    return records, TestSplit(np.zeros((2, size, size, 3), np.uint8), np.zeros((2, size, size), bool), records)


def test_panels_show_each_case_at_its_own_size_and_aspect(tmp_path):
    """Regression: panels showed the run's square input (a 30x50 part squashed to the run's
    size) and its square ground truth, not the part as the inspector sees it."""
    from PIL import Image

    from realnet.report.panels import CAPTION_HEIGHT, case_at_input_size, write_panels

    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    mask = np.zeros((30, 50), bool)
    mask[5:9, 40:47] = True  # thin and off-centre: a square resize and back would move its edges
    records, split = crack_and_good_split(tmp_path, image, mask, size=16)
    size = 16
    maps = np.zeros((2, size, size), np.float32)
    maps[0, :, size // 2:] = 1.0
    written = write_panels(tmp_path / "panels", split, maps, np.array([0.9, 0.1]), count=1)
    assert len(written) == 3
    for path in written:
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (CAPTION_HEIGHT + 30, 3 * 50 + 2 * 4, 3)
        assert np.array_equal(pixels[CAPTION_HEIGHT:, :50], image)
    crack = np.asarray(Image.open(next(p for p in written if "crack" in p.name)))
    assert np.array_equal(crack[CAPTION_HEIGHT:, 54:104, 0] == 255, mask)

    shown, shown_mask, shown_map = case_at_input_size(records[0], maps[0], max_side=25)
    assert shown.shape == (15, 25, 3) and shown_mask.shape == shown_map.shape == (15, 25)
    assert shown_mask.any() and shown_map[:, :10].max() < 1e-6 and shown_map[:, 15:].min() > 1 - 1e-6


def test_a_case_with_a_long_image_name_gets_its_panel(tmp_path):
    """Regression: a panel's name (kind, rank, defect, image stem, score) went over the 255-byte file
    name limit for an image named near it, and `realnet test` failed after scoring the whole split."""
    from PIL import Image

    from realnet.data.records import Record
    from realnet.engine.evaluate import TestSplit
    from realnet.report.panels import write_panels

    long_stem = "部品" * 40  # 240 bytes in UTF-8
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / f"{long_stem}.png")
    records = [Record(tmp_path / f"{long_stem}.png", None, 0, "good", "c", "test")]
    split = TestSplit(np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 16, 16), bool), records)
    maps = np.zeros((1, 16, 16), np.float32)
    (written,) = write_panels(tmp_path / "panels", split, maps, np.array([0.25]), count=1)
    assert written.is_file() and written.name.startswith("worst_normal_00_good_部品")
    assert written.name.endswith("_0.250.png")


def test_a_case_whose_file_went_away_after_loading_is_drawn_at_the_runs_size(tmp_path, capsys):
    """Regression: panels re-read each case's files at their own size, so an image moved or replaced
    (by one of another size than its mask) while the split was being scored failed `realnet test`
    after all the scoring; the pixels it was scored on are still there to draw."""
    from PIL import Image

    from realnet.data.records import Record
    from realnet.engine.evaluate import TestSplit
    from realnet.report.panels import write_panels

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "moved.png")
    records = [Record(tmp_path / "moved.png", None, 0, "good", "c", "test")]
    loaded = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    split = TestSplit(loaded, np.zeros((1, 16, 16), bool), records)
    (tmp_path / "moved.png").unlink()
    (written,) = write_panels(tmp_path / "panels", split, np.zeros((1, 16, 16), np.float32), np.array([0.25]),
                              count=1)
    assert np.array_equal(np.asarray(Image.open(written))[-16:, :16], loaded[0])  # under a wrapped caption
    assert capsys.readouterr().err.splitlines() == [f"realnet: warning: panel {written.name} drawn at the run's "
                                                    f"image size: {tmp_path / 'moved.png'}: file not found"]


def test_nan_anomaly_maps_are_a_one_line_error_naming_an_image(tiny_run, tmp_path, monkeypatch, capsys):
    """Regression: a detector giving NaN (diverged or corrupted weights) failed `realnet test` with a
    ValueError traceback from the metrics, naming neither the run nor an image."""
    import realnet.engine.fit

    data, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    real_score_images = realnet.engine.fit.score_images

    def nan_in_the_third_map(*args, **kwargs):
        maps, scores = real_score_images(*args, **kwargs)
        maps[2, 0, 0], scores[2] = np.nan, np.nan
        return maps, scores

    monkeypatch.setattr(realnet.engine.fit, "score_images", nan_in_the_third_map)
    assert main(["test", "--run", str(copy), "--panels", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("realnet:")]
    assert len(errors) == 1 and errors[0].startswith("realnet: error: ")
    assert "NaN" in errors[0] and "1 of 8 test images" in errors[0] and str(data / "widget" / "test") in errors[0]
    assert not (copy / "metrics.json").exists() and not (copy / "scores.csv").exists()


def test_skipped_test_images_are_named_by_rank_0_only(tmp_path, capsys, monkeypatch):
    """Regression: under torchrun --select-on-test --skip-bad every rank named each unreadable test image."""
    from dataset_fixtures import make_mvtec_tree

    root = make_mvtec_tree(tmp_path / "data")
    broken = next((root / "widget" / "test" / "good").iterdir())
    broken.write_bytes(b"not a png")
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        load_test_split(root, "widget", "mvtec", 32, skip_bad=True, progress=False)
        assert capsys.readouterr().err.count(f"realnet: skipped {broken}") == lines


def test_a_test_split_left_empty_or_one_sided_by_skipped_images_says_so(tmp_path, capsys):
    """Regression: with --skip-bad and every test image unreadable, load_test_split failed with an
    IndexError traceback; a class lost to skipping was reported as a split without that class."""
    from dataset_fixtures import make_mvtec_tree

    from realnet.engine.evaluate import load_test_split
    from realnet.errors import RealnetError

    root = make_mvtec_tree(tmp_path / "data")
    for image in (root / "widget" / "test").rglob("*.png"):
        image.write_bytes(b"not a png")
    with pytest.raises(RealnetError, match=r"none of the 4 test images .* could be read"):
        load_test_split(root, "widget", "mvtec", 32, skip_bad=True, progress=False)
    for image in (root / "widget" / "test" / "good").iterdir():
        image.unlink()
    make_mvtec_tree(tmp_path / "data", n_train=0, defects={})
    with pytest.raises(RealnetError, match=r"has only normal test images, after 2 unreadable ones were skipped"):
        load_test_split(root, "widget", "mvtec", 32, skip_bad=True, progress=False)


def test_folder_options_for_a_test_keep_the_runs_root_and_category(tmp_path, monkeypatch):
    """Regression: `test --dataset folder` with new folders but no --data looked for them under the
    current directory instead of the run's root, and recorded the category as 'custom'."""
    from dataset_fixtures import make_folder_tree

    root = make_folder_tree(tmp_path / "data", n_normal=10, n_abnormal=2, n_normal_test=3, size=(64, 64))
    out = tmp_path / "run"
    assert main(["fit", "--dataset", "folder", "--data", str(root), "--normal-dir", "normal", "--category", "tiles",
                 "--preset", "tiny", "--out", str(out), "--steps", "2"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["test", "--run", str(out), "--dataset", "folder", "--abnormal-dir", "abnormal",
                 "--mask-dir", "masks", "--normal-test-dir", "normal_test", "--panels", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["root"] == str(root.resolve()) and metrics["data"]["category"] == "tiles"
    assert (metrics["n_images"], metrics["n_anomalous"]) == (5, 2)
    # regression: without --dataset the folder options were refused, though the run's own data is a folder
    # dataset and the README says new folder images need only --normal-test-dir and --abnormal-dir
    (out / "metrics.json").unlink()
    assert main(["test", "--run", str(out), "--abnormal-dir", "abnormal", "--mask-dir", "masks",
                 "--normal-test-dir", "normal_test", "--panels", "0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["data"] == metrics["data"]


def test_a_folder_option_given_to_test_keeps_the_recorded_ones_that_still_fit(tmp_path):
    """Regression: any folder option given to `test` replaced all the recorded ones, so
    `--abnormal-dir new` on a run split from --normal-dir failed for want of --normal-dir."""
    from dataset_fixtures import make_folder_tree

    root = make_folder_tree(tmp_path / "data", n_normal=10, n_abnormal=2, size=(64, 64))
    shutil.copytree(root / "abnormal", root / "new_parts")  # same names as the recorded masks
    out = tmp_path / "run"
    assert main(["fit", "--dataset", "folder", "--data", str(root), "--normal-dir", "normal", "--abnormal-dir",
                 "abnormal", "--mask-dir", "masks", "--preset", "tiny", "--out", str(out), "--steps", "2"]) == 0
    assert main(["test", "--run", str(out), "--abnormal-dir", "new_parts", "--panels", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["folder_options"] == {"normal_dir": "normal", "abnormal_dir": "new_parts"}
    assert (metrics["n_images"], metrics["n_anomalous"]) == (4, 2)
    assert metrics["anomalous_without_mask"] == 2  # the recorded masks belong to the recorded folder


@pytest.mark.parametrize(("given", "expected"), [
    ({}, {"normal_dir": "n", "test_ratio": 0.2, "seed": 0, "abnormal_dir": "a", "mask_dir": "m"}),
    ({"mask_dir": "m2"}, {"normal_dir": "n", "test_ratio": 0.2, "seed": 0, "abnormal_dir": "a", "mask_dir": "m2"}),
    ({"abnormal_dir": "a2"}, {"normal_dir": "n", "test_ratio": 0.2, "seed": 0, "abnormal_dir": "a2"}),
    ({"normal_test_dir": "t"}, {"abnormal_dir": "a", "mask_dir": "m", "normal_test_dir": "t"}),
    ({"seed": 3}, {"normal_dir": "n", "test_ratio": 0.2, "seed": 3, "abnormal_dir": "a", "mask_dir": "m"}),
])
def test_merged_folder_options_keep_the_recorded_ones_that_fit(given, expected):
    recorded = {"normal_dir": "n", "test_ratio": 0.2, "seed": 0, "abnormal_dir": "a", "mask_dir": "m"}
    assert merged_folder_options(recorded, given) == expected
    assert merged_folder_options({"normal_dir": "n", "normal_test_dir": "t"}, {"seed": 1}) == {"normal_dir": "n",
                                                                                              "seed": 1}


def test_folder_options_on_a_run_of_another_layout_need_dataset_folder(tiny_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run[1], copy)
    assert main(["test", "--run", str(copy), "--normal-test-dir", str(tmp_path), "--abnormal-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "realnet: error: the folder dataset's options apply to --dataset folder only, and the run's data is mvtec: "
        "add --dataset folder to test on folders"]


def test_a_test_split_holding_the_runs_training_images_is_refused(tmp_path, capsys):
    """Regression: `test --normal-dir ok ... --split-seed 1` on a run split with seed 0 scored 8 of
    its training images as normal test images, without a word."""
    from dataset_fixtures import make_folder_tree

    root = make_folder_tree(tmp_path / "data", n_normal=10, n_abnormal=2, size=(64, 64))
    out = tmp_path / "run"
    folder = ["--dataset", "folder", "--data", str(root), "--normal-dir", "normal", "--abnormal-dir", "abnormal",
              "--mask-dir", "masks"]
    assert main(["fit", *folder, "--preset", "tiny", "--out", str(out), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["test", "--run", str(out), *folder, "--split-seed", "1", "--panels", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("realnet: error: ") and "of the test images are normal training images of this run" in error
    assert not (out / "metrics.json").exists()
    assert main(["test", "--run", str(out), *folder, "--panels", "0"]) == 0  # its own split, given again
    # regression: found by path only, so copies of the training images passed as new parts
    shutil.copytree(root / "normal", root / "copies")
    assert main(["test", "--run", str(out), "--normal-test-dir", "copies", "--panels", "0"]) == 2
    assert "8 of the test images are normal training images of this run" in capsys.readouterr().err  # 2 were tests
    # regression: renaming the files reshuffles the run's own split, which moved training images into it
    before = {r.image.name for r in load_dataset(root, "custom", "folder", normal_dir="normal") if r.split == "train"}
    for image in (root / "normal").iterdir():
        image.rename(image.with_name(f"cam1_{image.name}"))
    moved = [r for r in load_dataset(root, "custom", "folder", normal_dir="normal")
             if r.split == "test" and r.image.name.removeprefix("cam1_") in before]
    assert moved  # the precondition: the new names put a training image into the test split
    assert main(["test", "--run", str(out), "--panels", "0"]) == 2
    assert "normal training images of this run (first: " in capsys.readouterr().err


def test_a_fixed_layouts_own_split_holding_a_training_image_copy_is_a_warning(tmp_path, capsys):
    """The dataset's own split (MVTec) decides its tests; a byte copy of a training image there is named."""
    from dataset_fixtures import make_mvtec_tree

    root = make_mvtec_tree(tmp_path / "data", n_train=6, size=(64, 64))
    out = tmp_path / "run"
    assert main(["fit", "--data", str(root), "--category", "widget", "--preset", "tiny", "--out", str(out),
                 "--steps", "2"]) == 0
    copied = root / "widget" / "test" / "good" / "copy.png"
    shutil.copy(next((root / "widget" / "train" / "good").iterdir()), copied)
    capsys.readouterr()
    assert main(["test", "--run", str(out), "--panels", "0"]) == 0
    assert (f"realnet: warning: 1 of the dataset's test images are copies of its training images (first: {copied})"
            in capsys.readouterr().err)


def test_a_linked_panels_folder_is_refused_before_scoring(tiny_run, tmp_path, capsys, monkeypatch):
    """Regression: with RUN/panels a link to a shared folder, test scored every image, then failed with
    'Cannot call rmtree on a symbolic link'."""
    import realnet.engine.fit

    copy = tmp_path / "run"
    shutil.copytree(tiny_run[1], copy)
    (tmp_path / "share").mkdir()
    (copy / "panels").symlink_to(tmp_path / "share")
    monkeypatch.setattr(realnet.engine.fit, "score_images", lambda *args, **kwargs: pytest.fail("scored"))
    assert main(["test", "--run", str(copy)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"realnet: error: {copy / 'panels'} is a symbolic link; test replaces the panels folder whole, so remove "
        "the link (and copy the panels where they are shared after each test)")


def _strip(text: str, width: int, height: int) -> np.ndarray:
    """A caption drawn independently of the panel code: black default-font text on white."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.asarray(strip)


def test_a_narrow_parts_caption_is_wrapped_not_cut():
    """Regression: the caption was one line cut to the panel's width, so the panel of a part under
    about 70 px wide lost the threshold and the colour scale at the caption's end."""
    from PIL import Image, ImageDraw

    from realnet.report.panels import CAPTION_HEIGHT, CAPTION_MARGIN, caption_for, caption_lines, panel

    image = np.full((20, 20, 3), 90, np.uint8)
    caption = caption_for("crack", 3.0, 2.0, 4.0)
    captioned = panel(image, np.zeros((20, 20), bool), np.zeros((20, 20), np.float32), 4.0, caption)
    width = captioned.shape[1]
    lines = caption_lines(caption, width - CAPTION_MARGIN)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    assert len(lines) > 1 and " ".join(lines) == caption  # every word kept, in order
    assert all(measure(line) <= width - CAPTION_MARGIN for line in lines)
    assert all(measure(f"{line} {following.split()[0]}") > width - CAPTION_MARGIN  # each line as full as it can be
               for line, following in zip(lines, lines[1:]))
    assert captioned.shape[0] == 20 + CAPTION_HEIGHT * len(lines)
    for number, line in enumerate(lines):
        band = captioned[CAPTION_HEIGHT * number:CAPTION_HEIGHT * (number + 1)]
        assert np.array_equal(band, _strip(line, width, CAPTION_HEIGHT))
    assert caption_lines(caption, 10_000) == [caption]
    (cut,) = caption_lines("incomprehensibilities", 30)  # one word wider than the panel: cut to it
    assert "incomprehensibilities".startswith(cut) and 0 < measure(cut) <= 30 < measure(cut + "i")


def test_a_score_equal_to_the_threshold_is_not_shown_above_it():
    """A deployment flags score > threshold, so a tie is captioned '<='."""
    from realnet.report.panels import caption_for

    assert caption_for("good", 0.5, 0.5, 1.0) == "good: score 0.500 <= threshold 0.500; map 0..1"
    assert caption_for("crack", 0.5001, 0.5, 2.5) == "crack: score 0.500 > threshold 0.500; map 0..2.5"


def test_written_panels_are_captioned_with_the_runs_threshold_and_heat_scale(tmp_path):
    from PIL import Image

    from realnet.report.panels import CAPTION_HEIGHT, write_panels

    image = np.full((20, 120, 3), 90, np.uint8)  # wide enough for the whole caption
    mask = np.zeros((20, 120), bool)
    mask[5:9, 10:20] = True
    _, split = crack_and_good_split(tmp_path, image, mask, size=16)
    maps = np.zeros((2, 16, 16), np.float32)
    written = write_panels(tmp_path / "panels", split, maps, np.array([3.0, 0.5]), count=1,
                           display_max=4.0, threshold=2.0)
    expected = {"crack": "crack: score 3.000 > threshold 2.000; map 0..4",
                "good": "good: score 0.500 <= threshold 2.000; map 0..4"}
    assert len(written) == 3
    for path in written:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        defect = "crack" if "_crack_" in path.name else "good"
        assert np.array_equal(pixels[:CAPTION_HEIGHT], _strip(expected[defect], pixels.shape[1], CAPTION_HEIGHT))
