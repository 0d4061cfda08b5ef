"""Position normalisation of the anomaly map (ours): the math, its calibration during fit, and
that a normalised run scores, predicts and exports consistently."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from realnet.config import load_config
from realnet.engine.evaluate import load_run
from realnet.errors import RealnetError
from realnet.model.discriminator import PositionNormalization, position_statistics


def test_identity_until_calibrated_then_standardises_per_position():
    torch.manual_seed(0)
    maps = torch.rand(3, 4, 5)
    norm = PositionNormalization((4, 5))
    assert torch.equal(norm(maps), maps)
    mean, std = torch.rand(4, 5), torch.rand(4, 5)
    norm.calibrate(mean, std)
    torch.testing.assert_close(norm(maps), (maps - mean) / (std + PositionNormalization.MIN_STD))
    with pytest.raises(ValueError, match="do not match the map size"):
        norm.calibrate(torch.zeros(5, 4), torch.ones(5, 4))


def test_position_statistics_over_uneven_batches_equal_numpy():
    rng = np.random.default_rng(0)
    maps = rng.random((7, 6, 5)).astype(np.float32)
    mean, std = position_statistics(torch.from_numpy(maps[i:i + 3]) for i in range(0, 7, 3))
    np.testing.assert_allclose(mean.numpy(), maps.mean(0), atol=1e-6)
    np.testing.assert_allclose(std.numpy(), maps.std(0), atol=1e-6)
    with pytest.raises(ValueError, match="at least one map"):
        position_statistics([])


def test_unknown_map_normalization_is_one_clear_error():
    with pytest.raises(RealnetError, match="train.map_normalization must be none or position"):
        load_config("tiny", overrides=["train.map_normalization=pixel"])


@pytest.fixture(scope="module")
def position_run(tmp_path_factory):
    """A tiny run fitted with position normalisation, plus its fit and held-out images."""
    from dataset_fixtures import fit_tiny_widget_run

    return fit_tiny_widget_run(tmp_path_factory.mktemp("position_run"), ["train.map_normalization=position"])


def test_fit_calibrates_on_the_fit_images_and_the_checkpoint_keeps_it(position_run):
    from realnet.engine.runtime import to_tensor

    _, run_dir, fit_images, _ = position_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    assert meta["config"]["train"]["map_normalization"] == "position"
    assert isinstance(model.map_normalization, PositionNormalization)
    probabilities = model.probability_maps(model.select_features(to_tensor(fit_images, torch.device("cpu"))))
    mean, std = position_statistics([probabilities])
    torch.testing.assert_close(model.map_normalization.offset, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.map_normalization.scale, 1 / (std + PositionNormalization.MIN_STD),
                               atol=1e-3, rtol=1e-4)
    maps, _ = model.predict(to_tensor(fit_images, torch.device("cpu")))
    # standardised against exactly these images: zero mean at every position
    assert maps.mean(0).abs().max() < 1e-3


def test_a_run_without_it_has_no_normalisation_state(tiny_run):
    model, meta = load_run(tiny_run[1], torch.device("cpu"))
    assert meta["config"]["train"]["map_normalization"] == "none"
    assert not any(k.startswith("map_normalization") for k in model.state_dict())


def test_predict_and_export_use_the_normalised_map(position_run, tmp_path):
    from realnet.cli.main import main
    from realnet.engine.predict import predict
    from realnet.report.panels import map_display_max

    data_root, run_dir, *_ = position_run
    meta = json.loads((run_dir / "model.json").read_text())
    assert map_display_max(meta) == pytest.approx(2 * meta["threshold"])
    image = sorted((data_root / "widget" / "test" / "scratch").iterdir())[0]
    out = io.StringIO()
    assert predict(run_dir, [str(image)], save_maps=tmp_path / "maps", device="cpu", out=out) == 0
    result = json.loads(out.getvalue())
    assert result["is_anomalous"] == (result["score"] > meta["threshold"])
    assert Path(result["map"]).is_file()
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "standardised per pixel position" in props["output_format"]
