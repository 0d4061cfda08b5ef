"""`realnet sdas train`: checkpoints, exact resume, init from a checkpoint, grids, DDP over gloo; what one
training step feeds the diffusion (images in [-1, 1], integer timesteps uniform over 0..T-1) and the
EMA weights `sdas generate` samples from."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from dataset_fixtures import make_mvtec_tree
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from realnet.diffusion.network import create_unet
from realnet.diffusion.gaussian import GaussianDiffusion
from realnet.diffusion.train import (
    DEFAULT_EMA,
    EMA_WEIGHTS,
    MODEL_META,
    TRAIN_LOG,
    TRAIN_STATE,
    TrainRequest,
    load_sdas_model,
    load_training_images,
    rank_batch,
    rank_noise,
    to_uint8,
    train,
)
from realnet.errors import RealnetError


@pytest.fixture(scope="module")
def gray_data(tmp_path_factory) -> Path:
    return make_mvtec_tree(tmp_path_factory.mktemp("gray"), category="tile", n_train=6, gray=True, image_ext=".jpg")


def request(data: Path, out: Path, **overrides) -> TrainRequest:
    settings = dict(data=data, categories=["tile"], out=out, preset="tiny", steps=4, batch_size=4, sample_every=100,
                    save_every=2, log_every=2, sample_count=2, sample_steps=4, progress=False)
    settings.update(overrides)
    return TrainRequest(**settings)


def test_resume_continues_bit_identically(gray_data, tmp_path):
    train(request(gray_data, tmp_path / "straight"))
    train(request(gray_data, tmp_path / "resumed", steps=2))
    summary = train(request(gray_data, tmp_path / "resumed", resume=True))
    assert summary["started_at_step"] == 2
    straight = load_file(tmp_path / "straight" / TRAIN_STATE)
    resumed = load_file(tmp_path / "resumed" / TRAIN_STATE)
    assert straight.keys() == resumed.keys() and any(k.startswith("optimizer.") for k in straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (tmp_path / "straight" / EMA_WEIGHTS).read_bytes() == (tmp_path / "resumed" / EMA_WEIGHTS).read_bytes()
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_log_records_say_how_many_steps_they_average_also_across_a_resume(gray_data, tmp_path):
    """A resume from a save between two log steps starts a shorter averaging window; the records
    read as if every one averaged log_every steps."""
    out = tmp_path / "run"
    train(request(gray_data, out, steps=2, log_every=3))
    train(request(gray_data, out, steps=7, log_every=3, resume=True))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["averaged_steps"]) for r in records] == [(2, 2), (3, 1), (6, 3), (7, 1)]


def test_a_killed_run_logs_each_step_once(gray_data, tmp_path, monkeypatch):
    """Killed after logging step 3 but before saving it, the resumed run redid step 3 from the
    step-2 state and logged it a second time ([1, 2, 3, 3, 4])."""
    from realnet.diffusion import train as train_module

    out = tmp_path / "run"
    save = train_module.save_train_state

    def die_after_step_2(out_, meta, unet, ema, optimizer, done):
        if done > 2:
            raise KeyboardInterrupt
        save(out_, meta, unet, ema, optimizer, done)

    monkeypatch.setattr(train_module, "save_train_state", die_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(request(gray_data, out, log_every=1, save_every=1))
    monkeypatch.setattr(train_module, "save_train_state", save)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    train(request(gray_data, out, log_every=1, save_every=1, resume=True))
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_training_changes_weights_and_records_the_run(gray_data, tmp_path):
    out = tmp_path / "run"
    train(request(gray_data, out, steps=2, sample_every=2))
    meta = json.loads((out / MODEL_META).read_text())
    assert meta["step"] == 2 and meta["channels"] == 1 and meta["num_images"] == 6
    assert meta["unet"]["out_channels"] == 2 and meta["unet"]["num_class_embeds"] is None
    unet, _ = load_sdas_model(out)
    torch.manual_seed(0)
    initial = create_unet(meta["unet"]).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in unet.state_dict().items())
    grid = Image.open(out / "samples" / "step_0000002.png")
    assert grid.size == (44 + 2 * (16 + 2), 3 * (16 + 2))


def test_one_step_trains_the_learned_variance_half_of_the_output(gray_data, tmp_path):
    """The step backpropagates the hybrid loss: only its L_vlb term reaches the variance (v) half of conv_out."""
    out = tmp_path / "run"
    train(request(gray_data, out, steps=1))
    meta = json.loads((out / MODEL_META).read_text())
    torch.manual_seed(0)
    initial = create_unet(meta["unet"]).state_dict()
    trained = load_file(out / TRAIN_STATE)
    v = slice(meta["channels"], None)
    for name in ("conv_out.weight", "conv_out.bias"):
        assert not torch.equal(trained[f"model.{name}"][v], initial[name][v]), name


def test_existing_runs_are_protected(gray_data, tmp_path):
    out = tmp_path / "run"
    train(request(gray_data, out, steps=2))
    with pytest.raises(RealnetError, match="--resume"):
        train(request(gray_data, out, steps=2))
    with pytest.raises(RealnetError, match="lr"):
        train(request(gray_data, out, steps=3, lr=1e-3, resume=True))
    with pytest.raises(RealnetError, match="nothing to resume"):
        train(request(gray_data, tmp_path / "empty", resume=True))


def test_a_resume_may_change_the_sample_steps_but_not_the_training_diffusion(gray_data, tmp_path):
    """Regression: a resume with only another --sample-steps (which sets the preview grids and
    generate's default, not training) was refused as 'different diffusion'."""
    out = tmp_path / "run"
    train(request(gray_data, out, steps=2))
    with pytest.raises(RealnetError, match="different diffusion.schedule than"):
        train(request(gray_data, out, steps=3, schedule="cosine", resume=True))
    assert train(request(gray_data, out, steps=3, sample_steps=2, resume=True))["started_at_step"] == 2
    assert json.loads((out / MODEL_META).read_text())["diffusion"]["sample_steps"] == 2


def test_a_kill_before_model_json_still_resumes_and_a_trimmed_model_is_protected(gray_data, tmp_path):
    """Regressions: a kill after the resume state but before model.json was written left a folder
    that could neither resume nor restart; a model folder without train_state.safetensors (what
    generate needs) was overwritten by a fresh train; a half-written checkpoint stayed for good;
    a torn last log line broke --resume with a traceback; --steps below the step reached 'succeeded'."""
    out = tmp_path / "run"
    train(request(gray_data, out, steps=2))
    (out / MODEL_META).unlink()
    (out / EMA_WEIGHTS).unlink()
    (out / ".train_state.safetensors.abc.tmp").write_bytes(b"half")
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 3, "loss": 1.0')
    assert train(request(gray_data, out, resume=True))["started_at_step"] == 2
    assert not list(out.glob(".*.tmp")) and json.loads((out / MODEL_META).read_text())["step"] == 4
    with pytest.raises(RealnetError, match="already at step 4; --steps 3"):
        train(request(gray_data, out, steps=3, resume=True))

    (out / TRAIN_STATE).unlink()
    with pytest.raises(RealnetError, match="already holds an SDAS model"):
        train(request(gray_data, out, steps=2))


def test_a_damaged_resume_state_is_one_line_whose_advice_works(gray_data, tmp_path, capsys, monkeypatch):
    """Regression: a resume state whose recorded settings were torn was a JSONDecodeError traceback,
    and any other unreadable one passed the reader's own message on whole (which can span lines)
    without saying what to do."""
    from safetensors.torch import save_file

    from realnet.cli.main import main
    from realnet.diffusion import train as train_module

    out = tmp_path / "run"
    arguments = ["sdas", "train", "--data", str(gray_data), "--categories", "tile", "--out", str(out),
                 "--preset", "tiny", "--steps", "2", "--batch", "4", "--save-every", "2", "--log-every", "2",
                 "--sample-count", "2", "--sample-steps", "4", "--no-progress"]
    assert main(arguments) == 0
    capsys.readouterr()
    state = load_file(out / TRAIN_STATE)
    save_file(state, str(out / TRAIN_STATE), metadata={"step": "2", "param_groups": "[]", "meta": '{"unet": '})

    def unreadable(*args, **kwargs):
        raise OSError("cannot read the header\nwhile deserializing")

    for damage in (None, unreadable):
        if damage is not None:
            monkeypatch.setattr(train_module, "safe_open", damage)
        assert main([*arguments, "--resume"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1, error
        assert error.startswith(f"realnet: error: {out / TRAIN_STATE}: unreadable resume state")
        assert "delete the model folder to train it again, or choose another --out" in error
    monkeypatch.undo()
    shutil.rmtree(out)
    assert main(arguments) == 0


@pytest.mark.parametrize("overrides, message", [
    ({"grad_clip": -1.0}, "--grad-clip -1.0: must be a positive number"),
    ({"grad_clip": 0.0}, "--grad-clip 0.0: must be a positive number"),
    ({"lr": float("nan")}, "--lr nan: must be a positive number"),
    ({"sample_steps": 2000}, "--sample-steps 2000: at most the 1000"),
    ({"schedule": "foo"}, "--schedule 'foo': use one of linear, cosine"),
    ({"image_size": 9}, "--image-size 9: the tiny preset needs a positive multiple of"),
    ({"image_size": 100000}, "--image-size 100000: at most 2048"),  # was a 335 GiB allocation
    ({"categories": ["tile", "tile"]}, "each category once"),
    ({"dataset": "folder"}, "--dataset folder: sdas train reads"),
])
def test_bad_training_requests_fail_before_any_work(gray_data, tmp_path, overrides, message):
    """Regressions: each was accepted; a negative clip norm trained by gradient ascent, 0 never
    learnt, the others failed with a traceback after loading the data or hours into training."""
    with pytest.raises(RealnetError, match=message):
        train(request(gray_data, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_init_copies_matching_tensors_and_conditions_on_categories(gray_data, tmp_path):
    source = tmp_path / "gray_model"
    train(request(gray_data, source, steps=1))
    color = make_mvtec_tree(tmp_path / "color", category="a", n_train=3)
    make_mvtec_tree(tmp_path / "color", category="b", n_train=3, seed=1)
    out = tmp_path / "color_model"
    train(request(color, out, categories=["a", "b"], steps=1, batch_size=2, init=source, lr=1e-12))
    meta = json.loads((out / MODEL_META).read_text())
    assert meta["channels"] == 3 and meta["unet"]["num_class_embeds"] == 2
    gray_state = load_file(source / EMA_WEIGHTS)
    color_state = load_file(out / EMA_WEIGHTS)
    mismatched = [k for k in color_state if k not in gray_state or gray_state[k].shape != color_state[k].shape]
    assert sorted(mismatched) == ["class_embedding.weight", "conv_in.weight", "conv_out.bias", "conv_out.weight"]
    assert meta["init"]["kept_initial"] == len(mismatched)
    assert meta["init"]["loaded"] == len(color_state) - len(mismatched)
    torch.testing.assert_close(color_state["mid_block.resnets.0.conv1.weight"],
                               gray_state["mid_block.resnets.0.conv1.weight"], atol=1e-6, rtol=0)


def test_rank_batches_partition_the_global_batch():
    whole = rank_batch(5, 10, 4, 0, 0, 1)
    parts = np.concatenate([rank_batch(5, 10, 4, 0, r, 2) for r in range(2)])
    assert sorted(whole.tolist()) == sorted(parts.tolist()) and len(set(whole.tolist())) == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, data: str, out: str, steps: int = 1) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(request(Path(data), Path(out), steps=steps, log_every=1, device="cpu"))


@pytest.mark.slow
def test_two_gloo_ranks_train_like_one_process(gray_data, tmp_path):
    """Gradients are averaged over ranks and the randomness is the global batch's: 2 ranks x 2
    images step like 1 process x 4 images."""
    mp.spawn(ddp_worker, args=(2, free_port(), str(gray_data), str(tmp_path / "ddp")), nprocs=2, join=True)
    train(request(gray_data, tmp_path / "single", steps=1))
    ddp = load_file(tmp_path / "ddp" / TRAIN_STATE)
    single = load_file(tmp_path / "single" / TRAIN_STATE)
    torch.manual_seed(0)
    initial = create_unet(json.loads((tmp_path / "single" / MODEL_META).read_text())["unet"]).state_dict()
    moved = torch.cat([(single[f"model.{k}"] - v).abs().flatten() for k, v in initial.items()])
    differences = torch.cat([(ddp[f"model.{k}"] - single[f"model.{k}"]).abs().flatten() for k in initial])
    assert moved.median() > 1e-5
    # Only rounding differs; a rare Adam sign flip on a near-zero gradient may move one weight.
    assert differences.mean() < 1e-4 * moved.mean() and (differences > 1e-6).float().mean() < 1e-3
    assert json.loads((tmp_path / "ddp" / MODEL_META).read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_gloo_ranks_log_each_window_like_one_process(gray_data, tmp_path):
    """Regression: only rank 0 reset its window totals after logging, so from the second window on
    the other ranks' stale sums were averaged in and the logged loss grew under torchrun."""
    mp.spawn(ddp_worker, args=(2, free_port(), str(gray_data), str(tmp_path / "ddp"), 3), nprocs=2, join=True)
    train(request(gray_data, tmp_path / "single", steps=3, log_every=1))

    def losses(run: str) -> list[float]:
        return [json.loads(line)["loss"] for line in (tmp_path / run / TRAIN_LOG).read_text().splitlines()]

    np.testing.assert_allclose(losses("ddp"), losses("single"), rtol=1e-3)


def test_only_rank_zero_draws_the_loading_bar(gray_data, monkeypatch):
    """Regression: under torchrun every rank drew its own 'loading' progress bar."""
    from realnet.diffusion import train as train_module
    from realnet.engine import runtime

    asked = []
    load = runtime.load_samples
    monkeypatch.setattr(runtime, "load_samples", lambda *a, **k: asked.append(k["progress"]) or load(*a, **k))
    for rank in (1, 0):
        monkeypatch.setattr(train_module, "launched_rank", lambda: rank)
        train_module.load_training_images(request(gray_data, Path("unused"), progress=True), 16)
    assert asked == [False, True]


def test_ema_moves_a_fraction_one_minus_decay_towards_the_model():
    """EMA: ema <- decay * ema + (1 - decay) * model."""
    from realnet.diffusion.train import update_ema

    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(ema.weight), torch.nn.init.zeros_(ema.bias)
    torch.nn.init.ones_(model.weight), torch.nn.init.ones_(model.bias)
    update_ema(ema, model, 0.9)
    for parameter in ema.parameters():
        assert torch.allclose(parameter, torch.full_like(parameter, 0.1))


def test_gradients_are_clipped_to_grad_clip_every_step(gray_data, tmp_path, monkeypatch):
    """Each optimiser step clips the U-Net's gradient norm to --grad-clip."""
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train(request(gray_data, tmp_path / "run", steps=2, save_every=2, log_every=1, grad_clip=0.5))
    assert calls == [0.5, 0.5]


def test_truncated_weights_are_one_error_naming_the_file(gray_data, tmp_path):
    """Regression: safetensors' own error type for a truncated or foreign file escaped as a
    traceback from `sdas generate`'s model, `sdas train --init` and the resume state."""
    from realnet.diffusion.train import init_from_checkpoint
    from realnet.errors import BadFileError

    out = tmp_path / "model"
    train(request(gray_data, out, steps=2))
    for name in (EMA_WEIGHTS, TRAIN_STATE):
        (out / name).write_bytes((out / name).read_bytes()[:1000])
    with pytest.raises(BadFileError, match=f"{EMA_WEIGHTS}: cannot be loaded"):
        load_sdas_model(out)
    with pytest.raises(BadFileError, match=f"{EMA_WEIGHTS}: cannot be read as safetensors weights"):
        init_from_checkpoint(create_unet(json.loads((out / MODEL_META).read_text())["unet"]), out)
    with pytest.raises(RealnetError, match=f"{TRAIN_STATE}: unreadable resume state"):
        train(request(gray_data, out, steps=4, resume=True))


def test_weights_that_cannot_be_opened_get_the_system_reason(gray_data, tmp_path):
    """Regression: safetensors reports a weights path it cannot open as "No such device" (a folder)
    or "No such file" (a file it may not read), which sent users looking for a missing file."""
    from realnet.diffusion.train import init_from_checkpoint
    from realnet.errors import BadFileError

    out = tmp_path / "model"
    train(request(gray_data, out, steps=2))
    (out / EMA_WEIGHTS).unlink()
    (out / EMA_WEIGHTS).mkdir()
    with pytest.raises(BadFileError, match=f"{EMA_WEIGHTS}: Is a directory$"):
        load_sdas_model(out)
    with pytest.raises(BadFileError, match=f"{EMA_WEIGHTS}: Is a directory$"):
        init_from_checkpoint(create_unet(json.loads((out / MODEL_META).read_text())["unet"]), out)


def test_one_channel_training_of_colour_images_uses_their_luma(tmp_path):
    """Regression: --channels 1 kept the red channel of colour images instead of their gray level."""
    from realnet.diffusion.train import load_training_images

    data = make_mvtec_tree(tmp_path / "colour", category="tile", n_train=2)
    images, _, channels = load_training_images(request(data, tmp_path / "run", channels="1", image_size=32), 32)
    rgb, _ = load_training_images(request(data, tmp_path / "run", channels="3", image_size=32), 32)[:2]
    assert channels == 1 and not torch.equal(rgb[:, :1], rgb[:, 1:2])  # so red alone would differ
    luma = (rgb.double() * torch.tensor([299, 587, 114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert (images.double() - luma / 1000).abs().max() <= 0.5 + 1e-9  # Pillow's L conversion, rounded


def test_a_fresh_run_clears_a_temporary_left_by_a_run_killed_in_its_first_save(gray_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".{TRAIN_STATE}.k3j2a_x.tmp"
    stale.write_bytes(b"half a state")
    train(request(gray_data, out, steps=2))
    assert not stale.exists()


def test_a_run_interrupted_before_its_first_save_leaves_no_folder(gray_data, tmp_path, monkeypatch):
    """Regression: Ctrl-C before the first checkpoint left the --out folders it had created, empty
    or holding only log.jsonl, which `sdas generate` cannot use."""
    import realnet.diffusion.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "update_ema", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(request(gray_data, tmp_path / "runs" / "model"))
    assert not (tmp_path / "runs").exists()


def test_bf16_is_refused_on_a_gpu_without_native_bf16(monkeypatch):
    """Regression: `sdas train/generate --bf16` ran emulated bf16, slower than fp32, on pre-Ampere GPUs
    without a word (fit ignores bf16 there)."""
    from realnet.diffusion.train import run_device
    from realnet.engine import runtime
    from realnet.engine.distributed import DistributedContext
    from realnet.errors import RealnetError

    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(runtime, "bf16_autocast_available", lambda device: False)
    with pytest.raises(RealnetError, match="--bf16: cuda has no native bf16"):
        run_device(DistributedContext(), "cuda", bf16=True)
    assert run_device(DistributedContext(), "cuda", bf16=False) == torch.device("cuda")


def test_training_timesteps_are_uniform_over_all_of_0_to_T_minus_1():
    t, noise = rank_noise(0, 0, (20000, 1, 1, 1), 1000, 0, 1)
    assert t.min().item() == 0 and t.max().item() == 999
    counts = torch.bincount(t, minlength=1000)
    assert counts.numel() == 1000 and abs(t.double().mean().item() - 499.5) < 10
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1) < 0.03


def test_a_step_diffuses_the_batch_images_in_minus_one_to_one_at_integer_timesteps(gray_data, tmp_path, monkeypatch):
    seen = {}
    q_sample = GaussianDiffusion.q_sample

    def spy_q_sample(self, x0, t, noise):
        seen["x0"], seen["t"] = x0.detach().clone(), t.clone()
        return q_sample(self, x0, t, noise)

    from diffusers import UNet2DModel
    forward = UNet2DModel.forward

    def spy_forward(self, sample, timestep, *args, **kwargs):
        if "unet_t" not in seen:
            seen["unet_t"] = torch.as_tensor(timestep).clone()
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "q_sample", spy_q_sample)
    monkeypatch.setattr(UNet2DModel, "forward", spy_forward)
    req = request(gray_data, tmp_path / "run", steps=1, save_every=1, log_every=1)
    train(req)
    images, _, _ = load_training_images(req, 16)
    index = rank_batch(0, len(images), 4, 0, 0, 1)
    expected_t, _ = rank_noise(0, 0, (4, *images.shape[1:]), 1000, 0, 1)
    torch.testing.assert_close(seen["x0"], images[torch.from_numpy(index)].float() / 127.5 - 1.0)
    assert torch.equal(seen["t"], expected_t)
    assert torch.equal(seen["unet_t"].long(), expected_t) and torch.equal(seen["unet_t"].double(), expected_t.double())


def test_ema_file_holds_the_averaged_weights(gray_data, tmp_path):
    """After one step from the initial weights w0 to w1, ema = d w0 + (1 - d) w1 (d = 0.9 for tiny)."""
    out = tmp_path / "run"
    train(request(gray_data, out, steps=1, save_every=1, log_every=1, ema_decay=0.9))
    state = load_file(out / TRAIN_STATE)
    ema = load_file(out / EMA_WEIGHTS)
    torch.manual_seed(0)
    initial = create_unet(create_meta_unet(out)).state_dict()
    moved = 0
    for name, w0 in initial.items():
        w1 = state[f"model.{name}"]
        torch.testing.assert_close(ema[name], 0.9 * w0 + 0.1 * w1, rtol=1e-5, atol=1e-7)
        moved += not torch.equal(w0, w1)
    assert moved > 0


def create_meta_unet(out: Path) -> dict:
    return json.loads((out / "model.json").read_text())["unet"]


def test_paper_preset_ema_is_0_9999():
    assert DEFAULT_EMA["paper"] == 0.9999


def test_to_uint8_inverts_the_training_scaling():
    """Training maps pixel k to k / 127.5 - 1; a sample at exactly that value must be written as k."""
    k = torch.arange(256, dtype=torch.float64)
    images = (k / 127.5 - 1.0).float().reshape(1, 1, 16, 16)
    np.testing.assert_array_equal(to_uint8(images)[0, ..., 0].reshape(-1), np.arange(256))
    assert to_uint8(torch.tensor([-3.0, 3.0]).reshape(1, 1, 1, 2)).reshape(-1).tolist() == [0, 255]


def test_a_resume_trains_with_the_thread_count_the_killed_run_had(gray_data, tmp_path, capsys):
    """The thread count changes how CPU kernels round, and sdas train did not record it, so a resume
    at another --threads drifted from the uninterrupted run (fit adopts the recorded count)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(request(gray_data, tmp_path / "straight"))
        train(request(gray_data, tmp_path / "resumed", steps=2))
        assert json.loads((tmp_path / "resumed" / "model.json").read_text())["cpu_threads"] == 1
        torch.set_num_threads(2)
        train(request(gray_data, tmp_path / "resumed", resume=True))
        assert torch.get_num_threads() == 1
        assert "--resume trains with the 1 CPU thread(s) the run started with (not 2)" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    straight = load_file(tmp_path / "straight" / TRAIN_STATE)
    resumed = load_file(tmp_path / "resumed" / TRAIN_STATE)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
