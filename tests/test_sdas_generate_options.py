"""`sdas generate` honours --steps, conditions a multi-category model on the requested category, and gives
every index its own noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_fixtures import make_mvtec_tree
from test_diffusion_math import one_thread  # noqa: F401  (autouse: 1 torch thread)
from realnet.diffusion.generate import GenerateRequest, generate, image_name, image_seed, image_strength
from realnet.diffusion.network import make_denoiser
from realnet.diffusion.sampler import sdas_sample
from realnet.diffusion.train import TrainRequest, diffusion_for, load_sdas_model, to_uint8, train


@pytest.fixture(scope="module")
def two_category_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdas2")
    make_mvtec_tree(root / "data", category="a", n_train=2, gray=True)
    make_mvtec_tree(root / "data", category="b", n_train=2, gray=True, seed=1)
    train(TrainRequest(data=root / "data", categories=["a", "b"], out=root / "model", preset="tiny", steps=1,
                       batch_size=2, sample_every=10, sample_steps=4, progress=False))
    return root / "model"


def expected_images(model: Path, steps: int, label: int | None, indices, strength=(0.1, 0.2)) -> np.ndarray:
    unet, meta = load_sdas_model(model)
    labels = None if label is None else torch.full((len(indices),), label)
    generators = [torch.Generator().manual_seed(image_seed(0, i)) for i in indices]
    with torch.no_grad():
        return to_uint8(sdas_sample(make_denoiser(unet, labels), diffusion_for(meta).respace(steps), generators,
                                    (1, 16, 16), [image_strength(0, i, strength) for i in indices]))


def read(folder: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(folder / image_name(index)))


def test_steps_option_sets_the_respaced_process(two_category_model, tmp_path):
    """--steps 2 samples over 2 respaced steps, not the model's 4 sample_steps."""
    generate(GenerateRequest(model=two_category_model, category="a", count=2, out=tmp_path, batch_size=2, steps=2,
                             progress=False))
    assert json.loads((tmp_path / "a" / "generation.json").read_text())["steps"] == 2
    expected = expected_images(two_category_model, 2, 0, [0, 1])
    for i in range(2):
        assert np.array_equal(read(tmp_path / "a", i), expected[i, ..., 0])


def test_a_multi_category_model_is_conditioned_on_the_requested_category(two_category_model, tmp_path):
    generate(GenerateRequest(model=two_category_model, category="b", count=2, out=tmp_path, batch_size=2, steps=4,
                             progress=False))
    as_b = expected_images(two_category_model, 4, 1, [0, 1])
    as_a = expected_images(two_category_model, 4, 0, [0, 1])
    assert not np.array_equal(as_a, as_b)  # the class embedding matters for this model
    for i in range(2):
        assert np.array_equal(read(tmp_path / "b", i), as_b[i, ..., 0])


def test_every_index_has_its_own_noise(two_category_model, tmp_path):
    """With one fixed strength, images differ only through their noise: no two indices may share it."""
    assert len({image_seed(0, i) for i in range(1000)}) == 1000
    generate(GenerateRequest(model=two_category_model, category="a", count=4, out=tmp_path, batch_size=2, steps=2,
                             strength=(0.15, 0.15), progress=False))
    images = [read(tmp_path / "a", i) for i in range(4)]
    assert all(not np.array_equal(images[i], images[j]) for i in range(4) for j in range(i))


@pytest.mark.parametrize("model", ["data_folder", "missing"])
def test_generate_from_a_folder_that_is_no_sdas_model_says_so(tmp_path, model):
    """The weights file was looked for first, so the message was "ema.safetensors: No such file or
    directory" and the hint to train a model never showed."""
    from realnet.errors import RealnetError

    folder = make_mvtec_tree(tmp_path / "data", "widget", n_train=1) if model == "data_folder" else tmp_path / "nowhere"
    with pytest.raises(RealnetError, match=r"not an SDAS model folder .*realnet sdas train"):
        generate(GenerateRequest(model=folder, category="widget", count=1, out=tmp_path / "bank", device="cpu",
                                 progress=False))
    assert not (tmp_path / "bank").exists()
