"""`realnet sdas generate`: the SIA bank is reproducible per image, resumable and shardable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import realnet
from dataset_fixtures import make_mvtec_tree
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from realnet.cli.main import main
from realnet.diffusion.generate import (
    MANIFEST,
    GenerateRequest,
    generate,
    image_name,
    image_seed,
    image_strength,
    parse_strength,
)
from realnet.diffusion.network import make_denoiser
from realnet.diffusion.sampler import sdas_sample
from realnet.diffusion.train import TrainRequest, diffusion_for, load_sdas_model, to_uint8, train
from realnet.errors import RealnetError


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdas")
    data = make_mvtec_tree(root / "data", category="tile", n_train=4, gray=True, image_ext=".jpg")
    train(TrainRequest(data=data, categories=["tile"], out=root / "model", preset="tiny", steps=1, batch_size=2,
                       sample_every=10, sample_steps=4, progress=False))
    return root / "model"


def bank(model: Path, out: Path, count: int, **overrides) -> dict:
    settings = dict(model=model, category="tile", count=count, out=out, batch_size=2, steps=4, progress=False)
    settings.update(overrides)
    return generate(GenerateRequest(**settings))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_bank_layout_and_manifest(model, tmp_path):
    summary = bank(model, tmp_path / "sia", 5)
    folder = tmp_path / "sia" / "tile"
    assert summary["written"] == 5 and summary["images_per_second"] > 0
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == [f"{i:06d}.png" for i in range(5)]
    with Image.open(folder / names[0]) as image:
        assert image.mode == "L" and image.size == (16, 16)
    rows = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    assert [r["file"] for r in rows] == names
    assert all(0.1 <= r["s"] <= 0.2 for r in rows) and len({r["s"] for r in rows}) == 5
    assert [r["seed"] for r in rows] == [image_seed(0, i) for i in range(5)]
    assert not any(p.name.startswith(".") for p in folder.iterdir())


def test_an_image_depends_only_on_seed_and_index(model, tmp_path):
    bank(model, tmp_path / "a", 3)
    bank(model, tmp_path / "a", 5)  # extends the bank
    bank(model, tmp_path / "b", 5)
    assert files(tmp_path / "a" / "tile") == files(tmp_path / "b" / "tile")
    bank(model, tmp_path / "c", 5, seed=1)
    assert files(tmp_path / "c" / "tile")["000000.png"] != files(tmp_path / "b" / "tile")["000000.png"]


def test_a_rerun_fills_in_missing_files_only(model, tmp_path):
    bank(model, tmp_path / "sia", 4)
    folder = tmp_path / "sia" / "tile"
    before = files(folder)
    inodes = {p.name: p.stat().st_ino for p in folder.glob("*.png")}
    (folder / "000002.png").unlink()
    (folder / ".000002.png.x1y2.tmp").write_bytes(b"half an image")  # a kill mid-write; it stayed for good
    summary = bank(model, tmp_path / "sia", 4)
    assert summary["written"] == 1 and summary["sampled"] == 2
    assert files(folder) == before and not list(folder.glob(".*.tmp"))
    assert all(inodes[p.name] == p.stat().st_ino for p in folder.glob("*.png") if p.name != "000002.png")


def test_a_failed_run_leaves_a_manifest_of_the_images_it_wrote(model, tmp_path, monkeypatch):
    """The manifest was written only on success: after a failure it still listed the previous
    run's images while the folder (which the SIA source reads) held more."""
    from realnet.diffusion import generate as generate_module

    bank(model, tmp_path / "sia", 2)
    save = generate_module.save_png

    def fail_at_the_fourth(path, image):
        if path.name == "000003.png":
            raise KeyboardInterrupt
        save(path, image)

    monkeypatch.setattr(generate_module, "save_png", fail_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        bank(model, tmp_path / "sia", 6)
    folder = tmp_path / "sia" / "tile"
    listed = [json.loads(line)["file"] for line in (folder / MANIFEST).read_text().splitlines()]
    assert listed == sorted(p.name for p in folder.glob("*.png")) == [f"{i:06d}.png" for i in range(3)]


def test_a_run_that_made_no_image_leaves_nothing_that_refuses_a_rerun(model, tmp_path, monkeypatch):
    """Regression: generation.json was written before the first image and kept after a failure, so
    a rerun with a smaller --batch after running out of memory (or after Ctrl-C) was refused as
    "holds images made with other batch_size"; the folders it created and an empty manifest stayed."""
    from realnet.diffusion import generate as generate_module

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    out = tmp_path / "new" / "sia"
    with monkeypatch.context() as patch:
        patch.setattr(generate_module, "sdas_sample", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            bank(model, out, 2, batch_size=64)
    assert not (tmp_path / "new").exists()
    (out / "tile").mkdir(parents=True)  # what such a failure left before
    (out / "tile" / "generation.json").write_text(json.dumps({"batch_size": 64}))
    (out / "tile" / MANIFEST).write_text("")
    assert bank(model, out, 2, batch_size=1)["written"] == 2


def test_a_rerun_with_other_settings_is_refused(model, tmp_path):
    bank(model, tmp_path / "sia", 2)
    with pytest.raises(RealnetError, match="seed"):
        bank(model, tmp_path / "sia", 2, seed=3)
    with pytest.raises(RealnetError, match="category"):
        bank(model, tmp_path / "sia", 2, category="carpet")


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_bank_images_are_the_requested_samplers_at_their_strengths(model, tmp_path, sampler):
    """Each image is sdas_sample's with the request's sampler and the image's own drawn strength."""
    assert bank(model, tmp_path / "sia", 2, sampler=sampler, ddim_variance="beta", strength=(0.2, 0.5))["written"] == 2
    unet, meta = load_sdas_model(model)
    generators = [torch.Generator().manual_seed(image_seed(0, i)) for i in range(2)]
    with torch.no_grad():
        expected = to_uint8(sdas_sample(make_denoiser(unet), diffusion_for(meta).respace(4), generators, (1, 16, 16),
                                        [image_strength(0, i, (0.2, 0.5)) for i in range(2)], sampler=sampler,
                                        ddim_variance="beta"))
    for i in range(2):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "sia" / "tile" / image_name(i))), expected[i, ..., 0])


def test_strength_parsing_and_draws():
    assert parse_strength("0.1:0.2") == (0.1, 0.2) and parse_strength("0.15") == (0.15, 0.15)
    for bad in ("0.2:0.1", "-1", "a:b", "0.1:0.2:0.3", "inf", "0.1:inf", "nan", "1e39"):  # inf and 1e39 drew all-black images
        with pytest.raises(RealnetError, match="--strength"):
            parse_strength(bad)
    draws = [image_strength(0, i, (0.1, 0.2)) for i in range(200)]
    assert min(draws) >= 0.1 and max(draws) <= 0.2 and max(draws) - min(draws) > 0.09
    assert image_strength(0, 7, (0.1, 0.2)) == image_strength(0, 7, (0.1, 0.2)) != image_strength(1, 7, (0.1, 0.2))


@pytest.mark.slow
def test_two_torchrun_ranks_write_the_same_bank_as_one_process(model, tmp_path):
    args = ["sdas", "generate", "--model", str(model), "--category", "tile", "--count", "7", "--batch", "2",
            "--steps", "4", "--threads", "1", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(realnet.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "realnet",
         *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted((s["rank"], s["world_size"], s["written"]) for s in summaries) == [(0, 2, 4), (1, 2, 3)]
    one, two = files(tmp_path / "one" / "tile"), files(tmp_path / "two" / "tile")
    assert one.keys() == two.keys() and len([n for n in one if n.endswith(".png")]) == 7
    assert one == two  # images, manifest and settings


def test_json_summaries_are_one_write_so_torchrun_ranks_cannot_interleave(monkeypatch):
    """Regression: print() wrote the JSON and its newline separately, so two ranks sharing an
    unbuffered stdout produced '{...}{...}' lines the torchrun test could not parse."""
    from realnet.cli.common import print_json_line

    class RecordingStdout:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    stdout = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    print_json_line({"rank": 1, "written": 3})
    assert stdout.writes == ['{"rank": 1, "written": 3}\n']


def test_a_model_replaced_while_loading_is_refused(model, tmp_path, monkeypatch):
    """Regression: the recorded model_sha256 was taken after loading, so weights a training run
    saved in between were recorded for images made with the older ones."""
    import shutil

    from realnet.diffusion import generate as generate_module
    from realnet.diffusion.train import EMA_WEIGHTS

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    load = generate_module.load_sdas_model

    def load_then_training_saves(*args, **kwargs):
        loaded = load(*args, **kwargs)
        (copy / EMA_WEIGHTS).write_bytes((copy / EMA_WEIGHTS).read_bytes() + b" ")
        return loaded

    monkeypatch.setattr(generate_module, "load_sdas_model", load_then_training_saves)
    with pytest.raises(RealnetError, match="was replaced while it was loaded"):
        bank(copy, tmp_path / "sia", 2)


def _start_a_long_generate(model, out: Path) -> subprocess.Popen:
    """`sdas generate` of 5000 one-image batches in a child process, to be stopped by a signal."""
    env = {**os.environ, "PYTHONPATH": str(Path(realnet.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "realnet", "sdas", "generate", "--model", str(model), "--category", "tile",
         "--count", "5000", "--batch", "1", "--steps", "4", "--threads", "1", "--no-progress", "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_terminated_generate_still_writes_its_manifest(model, tmp_path):
    """Regression: SIGTERM (what torchrun sends the other ranks when one fails) killed generate
    without the clean-up it does for Ctrl-C, so the manifest of the images it wrote was missing."""
    import signal
    import time

    out = tmp_path / "sia"
    process = _start_a_long_generate(model, out)
    deadline = time.time() + 120
    while not list(out.glob("tile/0000*.png")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "realnet: terminated" in err
    written = sorted(p.name for p in (out / "tile").glob("*.png"))
    listed = [json.loads(line)["file"] for line in (out / "tile" / MANIFEST).read_text().splitlines()]
    assert 0 < len(written) < 5000 and listed == written


def test_a_killed_generate_leaves_a_manifest_of_all_but_its_last_batch(model, tmp_path):
    """Regression: SIGKILL (no clean-up possible) left no manifest at all; it is now rewritten
    after every batch, so at most the batch being written is missing from it."""
    import signal
    import time

    out = tmp_path / "sia"
    process = _start_a_long_generate(model, out)
    deadline = time.time() + 120
    while len(list(out.glob("tile/0000*.png"))) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    written = sorted(p.name for p in (out / "tile").glob("*.png"))
    listed = [json.loads(line)["file"] for line in (out / "tile" / MANIFEST).read_text().splitlines()]
    assert listed == written[:len(listed)] and 2 <= len(listed) and len(written) - len(listed) <= 1


def test_a_stray_file_named_like_an_image_adds_no_manifest_row(model, tmp_path):
    """Regression: `0000001.png` (a leading zero too many) matched the image pattern and its index
    rebuilt the name of the bank's own 000001.png, so the manifest listed that image twice."""
    bank(model, tmp_path / "sia", 2)
    folder = tmp_path / "sia" / "tile"
    (folder / "0000001.png").write_bytes((folder / "000001.png").read_bytes())
    bank(model, tmp_path / "sia", 2)
    rows = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    assert [r["file"] for r in rows] == ["000000.png", "000001.png"]


@pytest.mark.parametrize("damage", ["model list", "text timesteps", "no unet", "settings list", "schedule foo",
                                    "no sample_steps", "sample_steps 0", "no categories", "no image_size",
                                    "fewer timesteps than --steps"])
def test_damaged_metadata_is_one_error_and_leaves_no_output(model, tmp_path, damage):
    """Regressions: a model.json or generation.json of the wrong shape gave a traceback, and a text
    diffusion.timesteps, an unknown schedule or sample_steps 0 also left generation.json behind."""
    import shutil

    from realnet.diffusion.train import MODEL_META

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    meta = json.loads((copy / MODEL_META).read_text())
    out = tmp_path / "sia"
    if damage == "settings list":
        (out / "tile").mkdir(parents=True)
        (out / "tile" / "generation.json").write_text("[1]")
        (out / "tile" / "000000.png").write_bytes(b"")  # settings matter once the bank holds an image
    else:
        diffusion = meta["diffusion"]
        edited = {"model list": [1], "text timesteps": {**meta, "diffusion": {**diffusion, "timesteps": "x"}},
                  "no unet": {k: v for k, v in meta.items() if k != "unet"},
                  "schedule foo": {**meta, "diffusion": {**diffusion, "schedule": "foo"}},
                  "no sample_steps": {**meta, "diffusion": {"schedule": "linear", "timesteps": 1000}},
                  "sample_steps 0": {**meta, "diffusion": {**diffusion, "sample_steps": 0}},
                  "no categories": {k: v for k, v in meta.items() if k != "categories"},
                  "no image_size": {k: v for k, v in meta.items() if k != "image_size"},
                  "fewer timesteps than --steps": {**meta, "diffusion": {**diffusion, "timesteps": 3,
                                                                         "sample_steps": 3}},
                  }[damage]
        (copy / MODEL_META).write_text(json.dumps(edited))
    message = "--steps 4: at most the model's 3 timesteps" if damage == "fewer timesteps than --steps" else "malformed"
    with pytest.raises(RealnetError, match=message):
        bank(copy, out, 2)
    if damage != "settings list":
        assert not out.exists() or not any(out.rglob("*"))
