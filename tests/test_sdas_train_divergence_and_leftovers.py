"""`sdas train` and `sdas generate` against a diverged training, another run's sample grids, an
edited model description, and `sdas quality`'s weights option (regressions from an audit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dataset_fixtures import make_mvtec_tree, normal_image, save
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from test_sdas_train import request
from realnet.cli.main import main
from realnet.diffusion.train import EMA_WEIGHTS, MODEL_META, SAMPLES_DIR, TRAIN_LOG, TRAIN_STATE, load_sdas_model, train
from realnet.errors import BadFileError, RealnetError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("sdas_data"), category="tile", n_train=6, gray=True,
                           image_ext=".jpg")


def test_a_diverged_training_stops_at_the_first_non_finite_loss_keeping_the_last_save(data, tmp_path):
    """Regression: the run trained on after its loss became NaN, saved NaN weights (and NaN tokens
    in log.jsonl), and `generate` then wrote black images."""
    out = tmp_path / "model"
    with pytest.raises(RealnetError, match=r"training diverged: the loss is nan at step \d+; lower --lr \(now 1e\+06\)"):
        train(request(data, out, steps=40, save_every=1, log_every=1, lr=1e6))
    state = load_file(out / TRAIN_STATE)
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    for line in (out / TRAIN_LOG).read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the log"))


def test_a_model_with_non_finite_weights_is_refused_by_name(data, tmp_path):
    out = tmp_path / "model"
    train(request(data, out, steps=1))
    weights = load_file(out / EMA_WEIGHTS)
    first = sorted(name for name, t in weights.items() if t.is_floating_point())[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, out / EMA_WEIGHTS)
    with pytest.raises(BadFileError, match=rf"{EMA_WEIGHTS}: 1 tensors hold NaN or infinite values \('{first}' first\)"):
        load_sdas_model(out)


def test_a_fresh_run_removes_the_sample_grids_of_a_run_that_saved_nothing(data, tmp_path):
    """Regression: a fresh run into a folder kept the grids of an earlier run killed before its
    first save, for steps the new model never reached."""
    out = tmp_path / "model"
    samples = out / SAMPLES_DIR
    samples.mkdir(parents=True)
    for name in ("step_0000005.png", "step_0000010.png", ".step_0000015.png.abc.tmp"):
        (samples / name).write_bytes(b"another run's grid")
    (samples / "notes.txt").write_text("the user's")
    train(request(data, out, steps=4, sample_every=4))
    assert sorted(p.name for p in samples.iterdir()) == ["notes.txt", "step_0000004.png"]


def test_a_resume_removes_the_grids_after_the_step_it_resumes_from(data, tmp_path):
    out = tmp_path / "model"
    train(request(data, out, steps=2, sample_every=1, save_every=2))
    (out / SAMPLES_DIR / "step_0000003.png").write_bytes(b"drawn after the last save by the killed run")
    train(request(data, out, steps=4, sample_every=1, save_every=2, resume=True))
    assert sorted(p.name for p in (out / SAMPLES_DIR).iterdir()) == [f"step_000000{i}.png" for i in (1, 2, 3, 4)]
    assert (out / SAMPLES_DIR / "step_0000003.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("edit", [{"future_option": True}, {"block_out_channels": "16,32"}])
def test_an_edited_unet_description_is_one_line(data, tmp_path, edit):
    """Regression: an unknown key or a wrong value in model.json's unet was a TypeError/ValueError traceback."""
    out = tmp_path / "model"
    train(request(data, out, steps=1))
    meta = json.loads((out / MODEL_META).read_text())
    meta["unet"].update(edit)
    (out / MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(BadFileError, match=r"model.json: malformed SDAS model description \(unet: .+\); it was "
                                           "edited or damaged"):
        load_sdas_model(out)


def test_sdas_quality_takes_the_backbone_weights_option_its_errors_name(tmp_path, capsys):
    """Regression: its missing-weights error said `--backbone-weights FILE`, an option it refused."""
    rng = np.random.default_rng(0)
    for i in range(4):
        save(tmp_path / "real" / f"{i}.png", normal_image(rng, (40, 40)))
        save(tmp_path / "fake" / f"{i}.png", 255 - normal_image(rng, (40, 40), gray=True))
    args = ["sdas", "quality", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--size", "64",
            "--threads", "1", "--no-progress"]
    assert main([*args, "--backbone-weights", "random"]) == 0
    assert main([*args, "--backbone-weights", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
