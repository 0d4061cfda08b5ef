from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def shared_data() -> Path:
    """Root of the real data in ../shared/data; skips the test when it is absent."""
    if not (SHARED_DATA / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (needs ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def random_lite0():
    """The tiny preset's backbone (tf_efficientnet_lite0, layers 1 and 2) on random weights, eager:
    frozen and in eval mode, so tests may share it."""
    from realnet.model.backbone import create_backbone

    return create_backbone("tf_efficientnet_lite0", weights="random", layers=[1, 2], frozen_graph=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data_root, run_dir): a fixture MVTec tree (category "widget", 80x96 images, 4 normal and 4
    "scratch" test images) fitted once per session with the tiny preset on the CPU. Shared: read it,
    never write into it."""
    from dataset_fixtures import fit_tiny_widget_run

    data_root, run_dir, *_ = fit_tiny_widget_run(tmp_path_factory.mktemp("tiny_run"))
    return data_root, run_dir


@pytest.fixture(scope="session")
def position_run(tmp_path_factory):
    """A tiny run fitted with position normalisation: (data_root, run_dir, fit images, held-out images)."""
    from dataset_fixtures import fit_tiny_widget_run

    return fit_tiny_widget_run(tmp_path_factory.mktemp("position_run"), ["train.map_normalization=position"])


@pytest.fixture(scope="session")
def fused_run(tmp_path_factory):
    """A tiny run fitted with density.weight = 0.5: (data_root, run_dir, fit images, held-out images)."""
    from dataset_fixtures import fit_tiny_widget_run

    return fit_tiny_widget_run(tmp_path_factory.mktemp("fused_run"), ["density.weight=0.5"])


@pytest.fixture(scope="session")
def image_weight_run(tmp_path_factory):
    """A tiny run whose heatmap is fused at density weight 0.5 and whose image score pools the
    discriminator's map alone (density.image_weight = 0; its validation image AUROC is not 1, as
    it is at any weight from 0.1 up): (data_root, run_dir, fit images, held-out images)."""
    from dataset_fixtures import fit_tiny_widget_run

    return fit_tiny_widget_run(tmp_path_factory.mktemp("image_weight_run"),
                               ["density.weight=0.5", "density.image_weight=0.0"])


@pytest.fixture(scope="session")
def memory_run(tmp_path_factory):
    """A tiny run fused with the density (0.25) and the memory bank (0.25): (data_root, run_dir,
    fit images, held-out images)."""
    from dataset_fixtures import fit_tiny_widget_run

    return fit_tiny_widget_run(tmp_path_factory.mktemp("memory_run"),
                               ["density.weight=0.25", "memory.weight=0.25", "memory.coreset_ratio=0.05"])


@pytest.fixture(params=["position_run", "fused_run", "memory_run"])
def unbounded_map_run(request):
    """Each tiny run whose maps are not probabilities, with the words its ONNX metadata must hold."""
    words = {"position_run": "standardised per pixel position", "fused_run": "feature-density",
             "memory_run": "memory-bank"}[request.param]
    return request.getfixturevalue(request.param), words
