"""Fit options beyond the paper: bf16 autocast of the trainable part (used on CUDA and on CPUs with
native bf16 kernels, refused with one line and fp32 training elsewhere; model.json records which
precision trained, and on which machine and software) and the recalibration of the RRS BatchNorm
statistics after training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from realnet.config import load_config
from realnet.engine import fit as fit_module
from realnet.engine.runtime import bf16_autocast_available


@pytest.mark.parametrize("native_on_gpu", [True, False])
def test_bf16_is_available_on_gpus_and_cpus_with_native_kernels(monkeypatch, native_on_gpu):
    # a pre-Ampere GPU (no native bf16) was treated as bf16-capable
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or native_on_gpu)
    assert bf16_autocast_available(torch.device("cuda")) is native_on_gpu
    assert asked == [False]
    assert bf16_autocast_available(torch.device("cpu")) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not bf16_autocast_available(torch.device("mps"))


def tiny_fit(tmp_path, name, *overrides, category="widget"):
    from dataset_fixtures import make_mvtec_tree

    data_root = tmp_path / "data"
    if not data_root.exists():
        make_mvtec_tree(data_root, category, n_train=10, n_test_good=2, defects={"scratch": 2}, size=(64, 64))
    config = load_config("tiny", overrides=["train.steps=4", *overrides])
    fit_module.fit(fit_module.FitRequest(config=config, data_root=data_root, category=category,
                                         out=tmp_path / name, device="cpu", progress=False))
    return json.loads((tmp_path / name / "model.json").read_text())["fit"]


def test_rrs_recalibration_changes_only_the_rrs_statistics_and_is_repeatable(tmp_path):
    from safetensors.torch import load_file

    tiny_fit(tmp_path, "authors")
    tiny_fit(tmp_path, "recalibrated", "rrs.recalibration_batches=3")
    tiny_fit(tmp_path, "again", "rrs.recalibration_batches=3")
    authors, recalibrated, again = (load_file(str(tmp_path / name / "model.safetensors"))
                                    for name in ("authors", "recalibrated", "again"))
    statistics = {k for k in authors if k.startswith("residual_selection.norm.running_")}
    assert len(statistics) == 2
    for key in authors:
        if key in statistics:
            assert not torch.equal(authors[key], recalibrated[key]), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(authors[key], recalibrated[key]), key
        assert torch.equal(recalibrated[key], again[key]), key


@pytest.mark.parametrize("native", [True, False])
def test_fit_records_the_precision_it_trained_in(tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(fit_module, "bf16_autocast_available", lambda device: native)
    assert tiny_fit(tmp_path, "fp32")["precision"] == "fp32"
    assert tiny_fit(tmp_path, "bf16", "train.bf16=true")["precision"] == ("bf16 autocast" if native else "fp32")
    warned = "train.bf16 ignored" in capsys.readouterr().err  # stdout is for the JSON summary
    assert warned is not native


def test_bf16_train_step_runs_the_trainable_part_in_bf16_and_keeps_fp32_weights():
    from realnet.engine.build import build_model
    from realnet.model.backbone import create_backbone

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16 kernels")
    torch.manual_seed(0)
    config = load_config("tiny")
    model = build_model(config, create_backbone(config.backbone.name, weights="random",
                                                layers=config.backbone.layers))
    features = [f.repeat(2, 1, 1, 1) for f in model.select_features(torch.rand(1, 3, 64, 64))]
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(features)
    assert output.logits.dtype == torch.bfloat16
    loss, _ = fit_module.realnet_loss(output, features, torch.zeros(2, 64, 64, dtype=torch.long))
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.dtype == torch.float32 for p in model.trainable_modules().parameters())


def test_weight_average_is_the_exponential_average_of_the_live_weights_with_live_buffers():
    torch.manual_seed(0)
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    averaged = fit_module.weight_average(live, 0.75)
    expected = None
    for _ in range(4):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        live(torch.randn(5, 3))  # moves the BatchNorm statistics
        averaged.update_parameters(live)
        current = [p.detach().clone() for p in live.parameters()]
        expected = current if expected is None else [0.75 * e + 0.25 * c for e, c in zip(expected, current)]
    for got, want in zip(averaged.module.parameters(), expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(averaged.module[1].running_mean, live[1].running_mean)
    assert fit_module.weight_average(live, None) is None


def test_fit_with_ema_saves_the_average_of_its_steps_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    trajectory = []
    original_step = fit_module.train_step

    def recording_step(model, *args, **kwargs):
        losses = original_step(model, *args, **kwargs)
        trajectory.append({k: v.detach().clone() for k, v in model.trainable_modules().named_parameters()})
        return losses

    monkeypatch.setattr(fit_module, "train_step", recording_step)
    tiny_fit(tmp_path, "averaged", "train.ema_decay=0.5", "rrs.recalibration_batches=2")
    assert len(trajectory) == 4
    saved = load_file(str(tmp_path / "averaged" / "model.safetensors"))
    for name in trajectory[0]:
        expected = trajectory[0][name]
        for weights in trajectory[1:]:
            expected = 0.5 * expected + 0.5 * weights[name]
        torch.testing.assert_close(saved[name], expected)
        assert not torch.equal(saved[name], trajectory[-1][name]) or torch.equal(trajectory[0][name], trajectory[-1][name])


def test_averaged_weights_get_their_own_discriminator_batchnorm_statistics(tmp_path, monkeypatch):
    """Regression: the averaged weights ran with the discriminator BatchNorm statistics of the
    live weights (copied at every update), which never produced them. The recalibration batches
    are now run through the discriminator for statistics of its own; a run without averaging keeps
    its live statistics."""
    from safetensors.torch import load_file

    live_statistics, recalibrated = {}, {}
    original_step, original_update_bn = fit_module.train_step, torch.optim.swa_utils.update_bn

    def recording_step(model, *args, **kwargs):
        losses = original_step(model, *args, **kwargs)
        live_statistics.update({k: v.clone() for k, v in model.discriminator.state_dict().items() if "running" in k})
        return losses

    def recording_update_bn(loader, module, **kwargs):
        original_update_bn(loader, module, **kwargs)
        recalibrated.update({k: v.clone() for k, v in module.state_dict().items() if "running" in k})

    monkeypatch.setattr(fit_module, "train_step", recording_step)
    monkeypatch.setattr(torch.optim.swa_utils, "update_bn", recording_update_bn)
    for name, options in (("averaged", ("train.ema_decay=0.5", "rrs.recalibration_batches=2")),
                          ("live", ("rrs.recalibration_batches=2",))):
        recalibrated.clear()
        tiny_fit(tmp_path, name, *options)
        saved = load_file(str(tmp_path / name / "model.safetensors"))
        statistics = {k: saved[f"discriminator.{k}"] for k in live_statistics}
        if name == "averaged":
            assert recalibrated.keys() == statistics.keys()
            for key, value in statistics.items():
                torch.testing.assert_close(value, recalibrated[key])
                assert not torch.equal(value, live_statistics[key])
        else:
            assert not recalibrated
            for key, value in statistics.items():
                torch.testing.assert_close(value, live_statistics[key], rtol=0, atol=0)


def test_ema_is_refused_outside_its_range():
    from realnet.errors import RealnetError

    with pytest.raises(RealnetError, match="train.ema_decay must be in"):
        load_config("tiny", overrides=["train.ema_decay=1", "rrs.recalibration_batches=2"])
    with pytest.raises(RealnetError, match="train.ema_decay needs rrs.recalibration_batches > 0"):
        load_config("tiny", overrides=["train.ema_decay=0.9"])


@pytest.mark.parametrize("overrides, message", [
    (["train.ema_decay=0.9", "rrs.recalibration_batches=2"], "cannot be combined with train.ema_decay"),
    # the cpu preset's image weight must go too, so the message names both overrides
    (["density.weight=0.5"], "needs density.weight=0 and memory.weight=0 .*--set density.image_weight=null"),
    (["memory.weight=0.5"], "needs density.weight=0 and memory.weight=0"),
    # the position statistics are calibrated after training, so the test scores that chose the
    # model were not the saved model's (this one was accepted)
    (["train.map_normalization=position"], "needs train.map_normalization=none"),
    # the step was chosen on the live RRS statistics, then recalibrated ones were saved (accepted)
    (["rrs.recalibration_batches=2"], "needs rrs.recalibration_batches=0"),
])
def test_test_set_selection_refuses_what_is_calibrated_after_training_before_anything_is_written(
        tmp_path, overrides, message):
    from realnet.errors import RealnetError

    with pytest.raises(RealnetError, match=message):
        fit_module.fit(fit_module.FitRequest(config=load_config("tiny", overrides=overrides), data_root=tmp_path,
                                             category="widget", out=tmp_path / "run", device="cpu", progress=False,
                                             select_on_test=True))
    assert not (tmp_path / "run").exists()


def test_model_json_records_the_environment_the_fit_ran_on(tmp_path):
    """A seeded fit repeats bit for bit only on the same CPU and PyTorch; the run says which."""
    environment = tiny_fit(tmp_path, "run")["environment"]
    assert environment["torch"] == torch.__version__
    assert environment["threads"] == torch.get_num_threads()
    assert environment["native_bf16"] == bf16_autocast_available(torch.device("cpu"))
    assert environment["processor"] and environment["processor"] != "unknown"
    assert "accelerator" not in environment


def test_validation_seed_fixes_the_held_out_images_and_their_painted_defects_across_training_seeds(tmp_path):
    """Comparing training seeds needs one validation set; by default it follows train.seed."""
    import numpy as np

    from dataset_fixtures import make_mvtec_tree
    from realnet.data.layouts import load_dataset
    from realnet.synthesis.foreground import NO_FOREGROUND

    make_mvtec_tree(tmp_path / "data", "widget", n_train=12, n_test_good=1, defects={"scratch": 1}, size=(32, 32))
    records = load_dataset(tmp_path / "data", "widget", "mvtec")

    def validation_set(*overrides):
        config = load_config("tiny", overrides=["train.holdout_fraction=0.25", *overrides])
        request = fit_module.FitRequest(config=config, data_root=tmp_path / "data", category="widget",
                                        out=tmp_path / "unused", device="cpu", progress=False)
        holdout = fit_module.load_training_images(request, records, NO_FOREGROUND).holdout
        return fit_module.painted_validation_set(holdout, config.train.holdout_seed)[0]

    fixed = [validation_set(f"train.seed={seed}", "train.validation_seed=7") for seed in (1, 2)]
    assert np.array_equal(*fixed)
    assert not np.array_equal(validation_set("train.seed=1"), validation_set("train.seed=2"))
    assert np.array_equal(validation_set("train.seed=7"), fixed[0])


def test_out_that_is_a_file_gets_one_clear_error(tmp_path):
    from realnet.errors import RealnetError

    out = tmp_path / "not_a_folder"
    out.write_text("x")
    with pytest.raises(RealnetError, match="is a file; give a folder"):
        fit_module.prepare_run_dir(fit_module.FitRequest(config=load_config("tiny"), data_root=tmp_path,
                                                         category="widget", out=out))
    assert out.read_text() == "x"


def test_only_rank_0_creates_the_run_folder(tmp_path, monkeypatch):
    """Regression: under torchrun every rank made the folder; when rank 1 was first, rank 0 (the
    only rank that cleans up) had not created it, and a refused or killed fit left it behind empty."""
    request = fit_module.FitRequest(config=load_config("tiny"), data_root=tmp_path, category="widget",
                                    out=tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    assert fit_module.prepare_run_dir(request) == []
    assert not request.out.exists()
    monkeypatch.setenv("RANK", "0")
    assert fit_module.prepare_run_dir(request) == [request.out] and request.out.is_dir()


def test_skipped_bad_images_still_leave_enough_training_images(tmp_path):
    """Regression: the minimum was checked before --skip-bad dropped images, so a category with one
    readable image trained without any held-out image, and one with none raised a traceback."""
    from dataset_fixtures import make_mvtec_tree
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=3, n_test_good=1, size=(64, 64))
    for path in sorted((data / "widget" / "train" / "good").iterdir())[1:]:
        path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(RealnetError, match=r"has 1 readable normal training images \(2 skipped\)"):
        fit_module.fit(fit_module.FitRequest(config=load_config("tiny", overrides=["train.steps=2"]), data_root=data,
                                             category="widget", out=tmp_path / "run", device="cpu", progress=False,
                                             skip_bad=True))
    assert not (tmp_path / "run").exists()


def test_missing_backbone_weights_fail_before_any_image_is_read(tmp_path, monkeypatch):
    from realnet.errors import BadFileError

    def no_reading(*args, **kwargs):
        raise AssertionError("the training images were read before the backbone weights were found")

    monkeypatch.setattr(fit_module, "load_training_images", no_reading)
    with pytest.raises(BadFileError, match="backbone weights file not found"):
        tiny_fit(tmp_path, "run", f"backbone.weights={tmp_path / 'missing.safetensors'}")
    assert not (tmp_path / "run").exists()


def test_threshold_is_the_configured_quantile_of_the_held_out_normal_scores(fused_run):
    """Not of the fit images (on which the maps read low) and not the complementary quantile."""
    from realnet.engine.evaluate import load_run
    from realnet.engine.fit import calibrate_threshold, score_images

    assert calibrate_threshold(np.arange(101.0), 0.99) == 99.0
    _, run_dir, fit_images, holdout = fused_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    quantile = meta["config"]["train"]["threshold_quantile"]
    _, held_out_scores = score_images(model, holdout, torch.device("cpu"), 4)
    _, fit_scores = score_images(model, fit_images, torch.device("cpu"), 4)
    assert meta["threshold"] == pytest.approx(float(np.quantile(held_out_scores.astype(np.float64), quantile)),
                                              abs=1e-6)
    assert abs(meta["threshold"] - float(np.quantile(fit_scores.astype(np.float64), quantile))) > 1e-4


def test_fit_crops_the_training_images_with_the_categorys_tabled_foreground_rule(tmp_path, monkeypatch):
    """synthesis.foreground=rule hands the table's rule for the category to the image loading."""
    from realnet.synthesis.foreground import foreground_rule

    class Loaded(Exception):
        pass

    load = fit_module.load_training_images
    used = []

    def recording_load(request, records, rule):
        used.append((rule, load(request, records, rule)))
        raise Loaded  # the images are all this test needs

    monkeypatch.setattr(fit_module, "load_training_images", recording_load)
    with pytest.raises(Loaded):
        tiny_fit(tmp_path, "run", "synthesis.foreground=rule", category="bottle")
    [(rule, images)] = used
    assert rule == foreground_rule("mvtec", "bottle") and rule.method == "otsu"
    assert images.foreground.any() and not images.foreground.all()


def test_fit_seeds_everything_from_the_configured_seed(tmp_path, monkeypatch):
    seeds = []
    monkeypatch.setattr(fit_module, "seed_everything", seeds.append)
    tiny_fit(tmp_path, "run", "train.seed=7")
    assert seeds == [7]


def test_afs_keeps_the_channel_whose_difference_matches_the_synthetic_masks(rng):
    """run_feature_selection scores channels by Eq. 4 against the masks of the batches it makes."""
    from types import SimpleNamespace

    from realnet.model.afs import FeatureSelector

    normal = rng.integers(0, 200, (4, 8, 8, 3), dtype=np.uint8)
    masks = np.zeros((4, 8, 8), np.float32)
    masks[:, 2:5, 3:7] = 1
    anomalous = normal.copy()
    anomalous[..., 2] += (50 * masks).astype(np.uint8)  # only channel 2 changes, and only inside M
    batches = SimpleNamespace(images=SimpleNamespace(fit=normal), make=lambda indices, key, force_anomalous: (
        SimpleNamespace(images=anomalous[indices], masks=masks[indices])))
    model = SimpleNamespace(selector=FeatureSelector("afs", [3], [1]), backbone=lambda x: [x])  # features = pixels
    config = load_config("tiny", overrides=["selection.batches=2", "selection.batch_size=4"])
    summary = fit_module.run_feature_selection(model, batches, config, torch.device("cpu"), progress=False)
    assert summary["indices"] == [[2]] and model.selector.indices(0).tolist() == [2]


def test_afs_keeps_the_lowest_loss_channels_measured_on_anomalous_samples_only(tmp_path, monkeypatch):
    """Eq. 4: a channel's loss is small where its normalised difference matches the anomaly mask,
    so AFS keeps the m smallest; every AFS sample carries a synthetic anomaly (force_anomalous)."""
    from safetensors.torch import load_file

    from realnet.engine.runtime import Stream

    labels_by_stream = []
    make = fit_module.SyntheticBatches.make

    def recording_make(self, indices, key, force_anomalous=False):
        batch = make(self, indices, key, force_anomalous)
        labels_by_stream.append((key[0], batch.labels.copy()))
        return batch

    monkeypatch.setattr(fit_module.SyntheticBatches, "make", recording_make)
    tiny_fit(tmp_path, "run")
    afs_batches = [labels for stream, labels in labels_by_stream if stream == Stream.AFS_SAMPLE]
    assert afs_batches and all(labels.all() for labels in afs_batches)
    afs = json.loads((tmp_path / "run" / "afs.json").read_text())
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    for k, (indices, losses) in enumerate(zip(afs["indices"], afs["losses"])):
        assert weights[f"selector.indices_{k}"].tolist() == indices
        assert sorted(indices) == sorted(np.argsort(losses, kind="stable")[:len(indices)].tolist())
        assert max(losses[i] for i in indices) < max(losses)  # a real choice, not every channel


def test_the_saved_weights_never_hold_the_backbone(tiny_run):
    from safetensors import safe_open

    with safe_open(str(tiny_run[1] / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert keys and not any(key.startswith("backbone.") for key in keys)


def test_the_synthesizer_gets_the_configured_normal_probability():
    from realnet.engine.fit import build_synthesizer
    from realnet.synthesis.foreground import NO_FOREGROUND

    config = load_config("tiny", overrides=["synthesis.normal_probability=0.2", "synthesis.sources={cutpaste: 1}"])
    images = np.zeros((4, config.train.image_size, config.train.image_size, 3), np.uint8)
    synthesizer = build_synthesizer(config, NO_FOREGROUND, None, "widget", images)
    assert synthesizer.config.normal_probability == 0.2


def test_the_paper_presets_synthesizer_draws_the_papers_perlin_masks():
    """Perlin scales 2^k with k in [0, 6), rotation U(-90, 90) degrees, threshold 0.5 (REFERENCE_NOTES)."""
    from realnet.engine.fit import build_synthesizer
    from realnet.synthesis.foreground import NO_FOREGROUND

    config = load_config("paper", overrides=["synthesis.sources={cutpaste: 1}"])  # SIA would need its image bank
    images = np.zeros((4, config.train.image_size, config.train.image_size, 3), np.uint8)
    settings = build_synthesizer(config, NO_FOREGROUND, None, "widget", images).config
    assert (settings.min_exponent, settings.max_exponent, settings.rotation, settings.threshold) == (0, 6, 90.0, 0.5)


@pytest.mark.parametrize("n_train, held_out, consequence", [
    (2, 0, "the threshold comes from the fit images (biased low)"), (3, 1, "no validation is reported (it needs 2)")])
def test_too_few_held_out_images_are_said_out_loud(tmp_path, capsys, n_train, held_out, consequence):
    """Regression: with 2 or 3 training images fit printed no validation and no word about why."""
    from dataset_fixtures import make_mvtec_tree

    from realnet.cli.main import main

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=n_train, size=(64, 64))
    assert main(["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--steps", "2",
                 "--out", str(tmp_path / "run")]) == 0
    error = capsys.readouterr().err
    assert f"realnet: warning: {held_out} of {n_train} normal training images held out" in error
    assert consequence in error


def test_a_diverging_fit_stops_at_the_first_non_finite_loss_and_leaves_no_run(tmp_path):
    """Regression: a loss that went NaN trained on; the run was saved with a NaN threshold
    (`predict` then called every image normal), or the validation crashed with a traceback after
    the whole training, leaving a resume.pt that diverged again on --resume."""
    from realnet.errors import RealnetError

    with pytest.raises(RealnetError, match=r"loss is (nan|inf) at step \d+.*train\.learning_rate"):
        tiny_fit(tmp_path, "diverged", "train.learning_rate=1e12", "train.checkpoint_every=2")
    assert not (tmp_path / "diverged").exists()


def test_a_density_fusion_with_one_fit_image_is_refused_before_training(tmp_path):
    """Regression: density.weight > 0 with a single fit image trained, then failed with a traceback in
    the density's statistics and left a resume.pt that failed the same way."""
    from dataset_fixtures import make_mvtec_tree

    from realnet.errors import RealnetError

    make_mvtec_tree(tmp_path / "data", "widget", n_train=3, n_test_good=2, defects={"scratch": 2}, size=(64, 64))
    with pytest.raises(RealnetError, match="density.weight > 0 needs at least 2 fit images"):
        tiny_fit(tmp_path, "run", "train.holdout_fraction=0.5", "density.weight=0.5")
    assert not (tmp_path / "run").exists()
    # regression: the parents of --out that the fit created were left behind, empty
    with pytest.raises(RealnetError, match="density.weight > 0 needs at least 2 fit images"):
        tiny_fit(tmp_path, "a/b/run", "train.holdout_fraction=0.5", "density.weight=0.5")
    assert not (tmp_path / "a").exists()


def test_the_afs_record_is_written_before_model_json_marks_the_run_finished(tmp_path, monkeypatch):
    """Regression: afs.json came after model.json, so a kill between them left a finished run whose
    AFS losses --resume then deleted for good with resume.pt."""
    from realnet.engine import checkpoint

    seen = []
    save_model = checkpoint.save_model
    monkeypatch.setattr(checkpoint, "save_model", lambda out, model, meta: (
        seen.append((out / fit_module.AFS_RECORD).exists()), save_model(out, model, meta)))
    tiny_fit(tmp_path, "run")
    assert seen == [True]


def test_resume_of_a_finished_run_on_read_only_media_returns_it(tmp_path, monkeypatch):
    """Regression: --resume on a finished run unlinked its (absent) resume.pt, which fails with EROFS on
    a read-only file system, so the run could not be returned."""
    import errno

    tiny_fit(tmp_path, "run")

    def read_only(path, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(Path, "unlink", read_only)
    config = load_config("tiny", overrides=["train.steps=4"])
    meta = fit_module.fit(fit_module.FitRequest(config=config, data_root=tmp_path / "data", category="widget",
                                                out=tmp_path / "run", device="cpu", progress=False, resume=True))
    assert meta == json.loads((tmp_path / "run" / "model.json").read_text())
