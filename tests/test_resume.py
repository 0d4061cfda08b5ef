"""Kill-and-resume: a fit killed mid-run and continued with --resume ends with exactly the
weights of an uninterrupted run with the same seed (CPU, tiny preset)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dataset_fixtures import make_mvtec_tree

SRC = Path(__file__).resolve().parents[1] / "src"


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
