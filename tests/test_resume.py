"""Kill-and-resume: a fit killed mid-run and continued with --resume ends with exactly the
weights of an uninterrupted run with the same seed (CPU, tiny preset)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import realnet
from dataset_fixtures import make_folder_tree, make_mvtec_tree

SRC = Path(realnet.__file__).resolve().parents[1]


def fit_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "realnet", "fit", "--data", str(data), "--category", "widget",
            "--preset", "tiny", "--out", str(out), "--steps", "24", "--set", "train.checkpoint_every=2", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("schedule, averaging", [("constant", None), ("cosine", None), ("constant", 0.9)])
def test_killed_fit_resumes_to_identical_weights(tmp_path, schedule, averaging):
    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))
    schedule_option = ("--set", f"train.lr_schedule={schedule}", "--set", f"train.ema_decay={averaging or 'null'}",
                       "--set", f"rrs.recalibration_batches={2 if averaging else 0}")
    reference = subprocess.run(fit_command(data, tmp_path / "reference", *schedule_option), env=environment(),
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(fit_command(data, killed, *schedule_option), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "resume.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.json").exists(), "the run finished before it could be killed"
    assert (killed / "resume.pt").exists()

    resumed = subprocess.run(fit_command(data, killed, *schedule_option, "--resume"), env=environment(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(killed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert (expected[key] == actual[key]).all(), key
    assert not (killed / "resume.pt").exists()


def test_existing_run_folder_is_refused_without_resume(tmp_path):
    from realnet.cli.main import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4)
    assert main(["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--out", str(out)]) == 2
    assert (out / "something").exists()


class Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was written."""


def killed_after_checkpoints(monkeypatch, request, count: int) -> None:
    from realnet.engine import checkpoint
    from realnet.engine import fit as fit_module

    written = []
    save = checkpoint.save_resume_state

    def save_then_die(run_dir, state):
        save(run_dir, state)
        written.append(state["step"])
        if len(written) == count:
            raise Killed

    monkeypatch.setattr(checkpoint, "save_resume_state", save_then_die)
    with pytest.raises(Killed):
        fit_module.fit(request)
    monkeypatch.setattr(checkpoint, "save_resume_state", save)


def tiny_request(data: Path, out: Path, *overrides: str, **options):
    from realnet.config import load_config
    from realnet.engine.fit import FitRequest

    config = load_config("tiny", overrides=["train.steps=12", "train.checkpoint_every=2", *overrides])
    return FitRequest(config=config, data_root=data, category="widget", out=out, device="cpu", progress=False,
                      **options)


def test_resumed_test_set_selection_still_knows_the_best_model_before_the_kill(tmp_path, monkeypatch):
    """The selector's best model was not in resume.pt: a resumed --select-on-test run only
    compared the steps after the kill and could save a worse model than an uninterrupted run."""
    import json

    from realnet.engine.fit import fit

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=3, defects={"scratch": 3},
                           size=(64, 64))
    options = dict(select_on_test=True, eval_every=2)
    fit(tiny_request(data, tmp_path / "reference", **options))
    reference = json.loads((tmp_path / "reference" / "model.json").read_text())
    kill_after = reference["fit"]["selected_step"] // 2 + 1  # checkpoints, i.e. just after the best step
    if reference["fit"]["selected_step"] >= 12:
        pytest.skip("the best step is the last one here, so a kill cannot hide it")
    killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / "killed", **options), kill_after)
    fit(tiny_request(data, tmp_path / "killed", resume=True, **options))
    resumed = json.loads((tmp_path / "killed" / "model.json").read_text())
    assert resumed["fit"]["selected_step"] == reference["fit"]["selected_step"]
    assert resumed["threshold"] == reference["threshold"]
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_resumed_test_set_selection_keeps_the_steps_it_evaluates(tmp_path, monkeypatch):
    """Regression: --eval-every, and train.checkpoint_every that stands in for it, were free to
    change on a resume, so the resumed run chose among other steps than any uninterrupted run."""
    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))
    killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / "run", select_on_test=True), 2)
    with pytest.raises(RealnetError, match=r"evaluated the test split every 2 steps \(now 3\); resume it with "
                                           r"--eval-every 2"):
        fit(tiny_request(data, tmp_path / "run", resume=True, select_on_test=True, eval_every=3))
    with pytest.raises(RealnetError, match=r"every 2 steps \(now 3\)"):
        fit(tiny_request(data, tmp_path / "run", "train.checkpoint_every=3", resume=True, select_on_test=True))
    meta = fit(tiny_request(data, tmp_path / "run", "train.checkpoint_every=3", resume=True, select_on_test=True,
                            eval_every=2))
    assert meta["fit"]["selected_step"] % 2 == 0


def test_resume_with_other_settings_is_refused_with_the_setting_named(tmp_path, monkeypatch):
    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / "run"), 2)
    with pytest.raises(RealnetError, match=r"train.seed=0 \(now 7\)"):
        fit(tiny_request(data, tmp_path / "run", "train.seed=7", resume=True))
    with pytest.raises(RealnetError, match="started without --select-on-test"):
        fit(tiny_request(data, tmp_path / "run", resume=True, select_on_test=True))
    # how often it checkpoints does not change what it computes
    fit(tiny_request(data, tmp_path / "run", "train.checkpoint_every=3", resume=True))
    assert (tmp_path / "run" / "model.json").exists()


def test_resume_on_other_data_or_of_a_finished_run_with_other_settings_is_refused(tmp_path, monkeypatch):
    """Regressions: a killed run resumed on another category trained the old weights and AFS
    channels on the new images and recorded the new data; --resume on a finished run returned
    it whatever settings and data were asked for."""
    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    make_mvtec_tree(tmp_path / "data", "gadget", n_train=10, n_test_good=2, size=(64, 64))
    killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / "run"), 2)
    other = tiny_request(data, tmp_path / "run", resume=True)
    with pytest.raises(RealnetError, match=r"started on other inputs: category 'widget' \(now 'gadget'\)"):
        fit(replace(other, category="gadget"))
    fewer = sorted((data / "widget" / "train" / "good").iterdir())[-1]
    moved = fewer.rename(tmp_path / fewer.name)
    with pytest.raises(RealnetError, match=r"n_training_images 10 \(now 9\)"):
        fit(other)
    moved.rename(fewer)
    fit(other)
    with pytest.raises(RealnetError, match=r"finished run was trained with other settings: train.steps=12 \(now 13\)"):
        fit(tiny_request(data, tmp_path / "run", "train.steps=13", resume=True))
    with pytest.raises(RealnetError, match=r"finished run was trained on other inputs: category"):
        fit(replace(other, category="gadget"))
    assert fit(other)["fit"]["steps"] == 12


def test_a_folder_dataset_run_resumes_and_its_finished_run_is_recognised(tmp_path, monkeypatch):
    """Regression: the folder dataset's directories (pathlib objects, as the command line gives
    them) went into resume.pt, which weights_only loading refused: such a run could never resume."""
    from realnet.engine.fit import fit

    data = make_folder_tree(tmp_path / "data", n_normal=10, size=(64, 64))
    options = {"normal_dir": Path("normal"), "abnormal_dir": Path("abnormal"), "mask_dir": Path("masks")}
    request = replace(tiny_request(data, tmp_path / "run", dataset="folder", folder_options=options),
                      category="custom")
    killed_after_checkpoints(monkeypatch, request, 2)
    assert fit(replace(request, resume=True))["fit"]["steps"] == 12
    assert fit(replace(request, resume=True))["data"]["folder_options"]["normal_dir"] == "normal"


def test_resume_of_a_finished_run_asked_for_the_other_protocol_is_refused(tmp_path):
    """Regression: `--resume --select-on-test` on a finished final-model run (or the reverse)
    returned that run as if it had been trained the way asked, where a killed run was refused."""
    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))
    fit(tiny_request(data, tmp_path / "run", "train.steps=2"))
    with pytest.raises(RealnetError, match="the finished run was trained without --select-on-test"):
        fit(tiny_request(data, tmp_path / "run", "train.steps=2", resume=True, select_on_test=True))
    assert fit(tiny_request(data, tmp_path / "run", "train.steps=2", resume=True))["protocol"] == "final-model"


def test_resume_of_a_finished_test_set_selection_with_other_evaluation_steps_is_refused(tmp_path):
    """Regression: `--resume --select-on-test` on a finished selected run returned it whatever
    --eval-every was asked for, where a killed run with other evaluation steps was refused."""
    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))
    options = dict(select_on_test=True, eval_every=2)
    fit(tiny_request(data, tmp_path / "run", "train.steps=4", **options))
    with pytest.raises(RealnetError, match=r"finished run evaluated the test split every 2 steps \(now 3\)"):
        fit(tiny_request(data, tmp_path / "run", "train.steps=4", resume=True, select_on_test=True, eval_every=3))
    assert fit(tiny_request(data, tmp_path / "run", "train.steps=4", resume=True, **options))["fit"]["eval_every"] == 2


@pytest.mark.parametrize("damage", ["bytes", "foreign dict"])
def test_a_damaged_resume_state_is_one_line_whose_advice_works(tmp_path, capsys, damage):
    """Regression: a damaged resume.pt gave PyTorch's multi-line weights_only message (which
    suggests loading with weights_only=False) and the advice to start again without --resume,
    which then refused the folder because it holds a killed run."""
    from realnet.cli.main import main

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, size=(64, 64))
    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.pt").write_bytes(b"not a checkpoint")
    if damage == "foreign dict":  # regression: a readable state without the run's entries was KeyError: 'step'
        torch.save({"foo": 1}, run / "resume.pt")
    fit_args = ["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--steps", "2",
                "--out", str(run)]
    assert main([*fit_args, "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "weights_only" not in error
    assert f"{run / 'resume.pt'}: unreadable resume state" in error and "delete it to start the run again" in error
    (run / "resume.pt").unlink()
    assert main(fit_args) == 0


def test_resume_with_other_backbone_weights_at_the_same_path_is_refused(tmp_path, monkeypatch):
    """Regression: the config records a weights file by its path, so a killed run resumed after
    that file was replaced trained on with another backbone than its AFS channels were chosen on."""
    import timm
    from safetensors.torch import save_file

    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    def write_weights(seed: int) -> None:
        torch.manual_seed(seed)
        network = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(tmp_path / "lite0.safetensors"))

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    write_weights(1)
    request = tiny_request(data, tmp_path / "run", f"backbone.weights={tmp_path / 'lite0.safetensors'}")
    killed_after_checkpoints(monkeypatch, request, 1)
    write_weights(2)
    with pytest.raises(RealnetError, match=r"started on other inputs: backbone_sha256 '[0-9a-f]{64}' \(now '"):
        fit(replace(request, resume=True))
    write_weights(1)
    assert fit(replace(request, resume=True))["fit"]["steps"] == 12


def test_resume_after_a_training_image_changed_is_refused(tmp_path, monkeypatch):
    """Regression: a killed run resumed after a training image was replaced (same count, same names)
    trained on with other images than its first steps and AFS had used."""
    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    request = tiny_request(data, tmp_path / "run")
    killed_after_checkpoints(monkeypatch, request, 1)
    image = next((data / "widget" / "train" / "good").iterdir())
    original = image.read_bytes()
    shutil.copy(data / "widget" / "test" / "good" / "000.png", image)
    with pytest.raises(RealnetError, match=r"started on other inputs: training_images_sha256 '[0-9a-f]{64}' \(now '"):
        fit(replace(request, resume=True))
    image.write_bytes(original)
    assert fit(replace(request, resume=True))["fit"]["steps"] == 12


def test_a_resume_removes_the_half_written_checkpoint_of_the_kill(tmp_path, monkeypatch):
    """Regression: a kill during a checkpoint write left .resume.pt.*.tmp in the run for good."""
    from realnet.engine.fit import fit

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / "run"), 1)
    (tmp_path / "run" / ".resume.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    fit(tiny_request(data, tmp_path / "run", resume=True))
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


def test_a_run_killed_while_writing_its_first_checkpoint_can_be_started_again(tmp_path):
    """Regression: the half-written first checkpoint was all the folder held, so `fit` refused it
    as not empty while `fit --resume` found nothing to resume."""
    from realnet.engine.fit import fit

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, size=(64, 64))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".resume.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    fit(tiny_request(data, tmp_path / "run", "train.steps=2"))
    assert (tmp_path / "run" / "model.json").exists()
    assert not (tmp_path / "run" / ".resume.pt.abc123.tmp").exists()


def test_resume_with_another_dtd_found_through_the_environment_is_refused(tmp_path, monkeypatch):
    """Regression: a DTD found through $REALNET_DTD or <data root>/dtd was recorded as null, so a
    killed run resumed on other textures; a $REALNET_DTD that is no folder was silently skipped."""
    import numpy as np
    from PIL import Image

    from realnet.engine.fit import fit
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    for name in ("dtd_a", "dtd_b"):
        (tmp_path / name / "images" / "banded").mkdir(parents=True)
        texture = np.random.default_rng(len(name)).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(texture).save(tmp_path / name / "images" / "banded" / "0.jpg")
    monkeypatch.setenv("REALNET_DTD", str(tmp_path / "dtd_a"))
    request = tiny_request(data, tmp_path / "run", "synthesis.sources={dtd: 1}")
    killed_after_checkpoints(monkeypatch, request, 2)
    monkeypatch.setenv("REALNET_DTD", str(tmp_path / "dtd_b"))
    with pytest.raises(RealnetError, match=r"started on other inputs: dtd '.*dtd_a' \(now '.*dtd_b'\)"):
        fit(replace(request, resume=True))
    monkeypatch.setenv("REALNET_DTD", str(tmp_path / "nowhere"))
    with pytest.raises(RealnetError, match=r"DTD folder .*nowhere not found \(\$REALNET_DTD\)"):
        fit(replace(request, resume=True))
    # regression: the same folder given as --dtd (synthesis.dtd_root) instead of $REALNET_DTD was refused
    # as "other settings", though it is the folder found, not the way it is given, that the run depends on
    monkeypatch.delenv("REALNET_DTD")
    request.config.synthesis.dtd_root = str(tmp_path / "dtd_a")
    meta = fit(replace(request, resume=True))
    assert meta["data"]["dtd"] == str((tmp_path / "dtd_a").resolve())


def test_resume_with_a_relative_sia_root_from_another_folder_is_refused(tmp_path, monkeypatch):
    """Regression: the SIA bank was not among a run's recorded inputs, so a killed run given a relative
    synthesis.sia_root resumed from another working directory on that folder's bank; a run recorded
    before the bank was (no 'sia' input) still resumes."""
    import numpy as np
    from PIL import Image

    from realnet.engine import checkpoint
    from realnet.engine.fit import fit, run_inputs
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    for name in ("a", "b"):
        (tmp_path / name / "sia" / "widget").mkdir(parents=True)
        image = np.random.default_rng(len(name)).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / name / "sia" / "widget" / "0.png")
    monkeypatch.chdir(tmp_path / "a")
    request = tiny_request(data, tmp_path / "run", "synthesis.sources={sia: 1}", "synthesis.sia_root=sia")
    assert run_inputs(request)["sia"] == str(tmp_path / "a" / "sia")
    killed_after_checkpoints(monkeypatch, request, 2)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(RealnetError, match=r"started on other inputs: sia '.*a/sia' \(now '.*b/sia'\)"):
        fit(replace(request, resume=True))
    state = checkpoint.load_resume_state(tmp_path / "run")
    del state["inputs"]["sia"]
    checkpoint.save_resume_state(tmp_path / "run", state)
    monkeypatch.chdir(tmp_path / "a")
    assert fit(replace(request, resume=True))["data"]["sia"] == str(tmp_path / "a" / "sia")


def test_resume_needs_something_to_resume_and_a_foreign_folder_is_not_offered_it(tmp_path, capsys):
    """Regression: `fit --resume` into a missing or foreign folder started a new run there (next to
    the user's files), where the error for a non-empty folder had suggested --resume."""
    from realnet.cli.main import main

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4)
    fit_args = ["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--out"]
    assert main([*fit_args, str(tmp_path / "new"), "--resume"]) == 2
    assert "nothing to resume (no resume.pt)" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "important.txt").write_text("x")
    assert main([*fit_args, str(foreign)]) == 2
    error = capsys.readouterr().err
    assert "exists and is not empty; choose another --out" in error and "--resume" not in error
    assert main([*fit_args, str(foreign), "--resume"]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["important.txt"]


def test_a_resume_keeps_the_precision_the_killed_run_trained_in(tmp_path, monkeypatch):
    """Regression: a run killed while training in bf16 autocast and resumed where bf16 is not
    native finished its steps in fp32 and recorded fp32, without a word. It is refused now, and a
    run that trained in fp32 (bf16 asked for where it was not native) goes on in fp32 where it is."""
    from realnet.engine import fit as fit_module
    from realnet.errors import RealnetError

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    short = ("train.bf16=true", "train.steps=4")
    for started_native, name in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(fit_module, "bf16_autocast_available", lambda device: started_native)
        killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / name, *short), 1)
    monkeypatch.setattr(fit_module, "bf16_autocast_available", lambda device: False)
    with pytest.raises(RealnetError, match=r"the killed run trained in bf16 autocast, which cpu has no native "
                                           r"kernels for; resume it where bf16 is native .* or choose another --out"):
        fit_module.fit(tiny_request(data, tmp_path / "bf16", *short, resume=True))
    assert (tmp_path / "bf16" / "resume.pt").exists() and not (tmp_path / "bf16" / "model.json").exists()
    monkeypatch.setattr(fit_module, "bf16_autocast_available", lambda device: True)
    meta = fit_module.fit(tiny_request(data, tmp_path / "fp32", *short, resume=True))
    assert meta["fit"]["precision"] == "fp32"


def test_a_run_killed_while_saving_its_model_is_trained_again_with_resume(tmp_path, capsys):
    """Regression: a run killed before its first checkpoint, between writing model.safetensors and
    model.json, left a folder that `fit` refused as not empty and `fit --resume` as holding nothing
    to resume. `fit` now offers --resume, which trains it again from the start (there is no
    resume.pt to continue from), unless the folder holds someone else's files too."""
    from realnet.cli.main import main

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, size=(64, 64))
    run = tmp_path / "run"
    fit_args = ["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--steps", "2",
                "--out", str(run)]
    assert main(fit_args) == 0
    for name in ("model.json", "afs.json"):  # written after the weights
        (run / name).unlink()
    (run / ".model.json.abc123.tmp").write_text("{")  # killed while writing model.json
    capsys.readouterr()
    assert main(fit_args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "use --resume to train it again or choose another --out" in error
    (run / "notes.txt").write_text("mine")
    assert main([*fit_args, "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "notes.txt" in error and "choose another --out" in error
    (run / "notes.txt").unlink()
    assert main([*fit_args, "--resume"]) == 0
    assert "training it again from the start" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["afs.json", "model.json", "model.safetensors"]


def test_resume_of_a_finished_run_removes_a_resume_state_left_by_a_kill_after_saving(tmp_path):
    """Regression: a fit killed between writing model.json and deleting resume.pt left that file for
    good (hundreds of MB at the paper preset): --resume returned the finished run and kept it."""
    from realnet.engine import checkpoint
    from realnet.engine.fit import fit

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    fit(tiny_request(data, tmp_path / "run", "train.steps=2"))
    (tmp_path / "run" / checkpoint.RESUME_STATE).write_bytes(b"a killed run's last state")
    assert fit(tiny_request(data, tmp_path / "run", "train.steps=2", resume=True))["fit"]["steps"] == 2
    assert not (tmp_path / "run" / checkpoint.RESUME_STATE).exists()


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_resume_trains_with_the_thread_count_the_run_started_with(tmp_path, monkeypatch, restore_threads,
                                                                    capsys):
    """Regression: the CPU thread count changes how the kernels round, and a run killed with one
    thread and resumed with two ended with other weights than an uninterrupted run, silently."""
    from realnet.engine.fit import fit

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))
    torch.set_num_threads(1)
    fit(tiny_request(data, tmp_path / "reference"))
    killed_after_checkpoints(monkeypatch, tiny_request(data, tmp_path / "run"), 2)
    torch.set_num_threads(2)
    capsys.readouterr()
    fit(tiny_request(data, tmp_path / "run", resume=True))
    assert "1 CPU thread" in capsys.readouterr().err
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
