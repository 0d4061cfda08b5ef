"""Texture folders that hold the dataset, linked texture class folders, `synth preview`'s
--delta-range checks, captions and JPEG limit (regressions from an audit of the synthesis)."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_fixtures import make_mvtec_tree, normal_image, save
from realnet.cli.main import main
from realnet.errors import RealnetError
from realnet.synthesis.preview import sample_caption
from realnet.synthesis.sources import DTDSource
from realnet.synthesis.synthesizer import SynthesizedSample


@pytest.fixture
def data(tmp_path):
    return make_mvtec_tree(tmp_path / "data", n_train=4, n_test_good=1, defects={"scratch": 1}, size=(32, 32))


def preview(data, tmp_path, *extra) -> int:
    return main(["synth", "preview", "--data", str(data), "--category", "widget", "--size", "32", "--count", "2",
                 "--out", str(tmp_path / "grid.png"), *extra])


@pytest.mark.parametrize("flag, folder", [("--dtd", "widget"), ("--dtd", "widget/test"), ("--sia", ".")])
def test_a_texture_folder_holding_the_datasets_images_is_refused(data, tmp_path, capsys, flag, folder):
    """Regression: --sia DATA (which holds <category>/) and --dtd DATA/CATEGORY blended the
    category's test images and masks in as anomalies, without a word."""
    source = "dtd" if flag == "--dtd" else "sia"
    assert preview(data, tmp_path, "--source", source, flag, str(data / folder)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"realnet: error: the {source} folder ") and "holds the dataset's" in error
    assert not (tmp_path / "grid.png").exists()
    fit = ["fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--source", source, flag,
           str(data / folder), "--steps", "1", "--out", str(tmp_path / "run")]
    assert main(fit) == 2
    assert "holds the dataset's" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_texture_folder_beside_the_data_is_used(data, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(2):
        save(tmp_path / "textures" / "banded" / f"{i}.jpg", normal_image(rng, (40, 40)))
    assert preview(data, tmp_path, "--source", "dtd", "--dtd", str(tmp_path / "textures")) == 0
    capsys.readouterr()


def test_linked_texture_class_folders_are_read_once(tmp_path):
    """Regression: os.walk did not enter linked folders, so a DTD tree of linked class folders was
    'empty' and a partly linked one silently lost classes."""
    rng = np.random.default_rng(0)
    for name in ("banded", "bubbly"):
        for i in range(2):
            save(tmp_path / "real" / name / f"{i}.jpg", normal_image(rng, (40, 40)))
    linked = tmp_path / "dtd" / "images"
    linked.mkdir(parents=True)
    (linked / "banded").symlink_to(tmp_path / "real" / "banded")
    (linked / "bubbly").symlink_to(tmp_path / "real" / "bubbly")
    (linked / "bubbly_again").symlink_to(tmp_path / "real" / "bubbly")  # the same real folder: read once
    (linked / "loop").symlink_to(tmp_path / "dtd")  # a link above: no endless walk
    assert len(DTDSource(tmp_path / "dtd", 32).bank.items) == 4


@pytest.mark.parametrize("ranges, message", [
    (["dtd=0.1,0.2", "dtd=0.9,1.0"], "a range for dtd was given already"),
    (["sia=0.1,0.2"], "sia is not among the sources drawn (dtd)"),
])
def test_delta_range_refuses_a_repeat_and_a_source_not_drawn(data, tmp_path, capsys, ranges, message):
    """Regression: the last of two ranges won silently, and a range for a source not drawn was ignored."""
    rng = np.random.default_rng(0)
    save(tmp_path / "textures" / "a.jpg", normal_image(rng, (40, 40)))
    extra = [arg for value in ranges for arg in ("--delta-range", value)]
    assert preview(data, tmp_path, "--source", "dtd", "--dtd", str(tmp_path / "textures"), *extra) == 2
    assert message in capsys.readouterr().err


def test_captions_show_an_opacity_only_for_sources_blended_with_one():
    """Regression: shade, crack, cutpaste and nsa samples were captioned d=1.00, feature noise its sigma as d."""
    image, mask = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool)
    opacity = {"dtd": (0.2, 1.0), "sia": (0.5, 1.0)}
    assert sample_caption(SynthesizedSample(image, mask, 1, "dtd", 0.5), opacity) == "dtd d=0.50"
    assert sample_caption(SynthesizedSample(image, mask, 1, "shade", 1.0), opacity) == "shade"
    assert sample_caption(SynthesizedSample(image, mask, 1, "cutpaste", 1.0), opacity) == "cutpaste"
    assert sample_caption(SynthesizedSample(image, mask, 1, "feature_noise", 0.3, noise_seed=1), opacity) == \
        "feature_noise sigma=0.30"
    assert sample_caption(SynthesizedSample(image, ~mask, 0, "normal", 0.0), opacity) == "normal"


def test_a_jpeg_grid_too_tall_for_the_format_is_refused_before_synthesis(data, tmp_path, capsys, monkeypatch):
    import realnet.synthesis.synthesizer as synthesizer

    monkeypatch.setattr(synthesizer, "build_sources", lambda *a, **k: pytest.fail("synthesis started"))
    assert main(["synth", "preview", "--data", str(data), "--category", "widget", "--size", "32", "--count", "7300",
                 "--source", "cutpaste", "--out", str(tmp_path / "big.jpg")]) == 2
    # 913 groups of 8: 2 * 913 * 32 + 1825 * 4 = 65732 tall, 8 * 32 + 7 * 4 = 284 wide
    assert "make a grid of 284 x 65732 px, above JPEG's 65500 px a side; write a .png" in capsys.readouterr().err


def test_texture_folder_check_takes_masks_and_ignores_missing_folders(tmp_path):
    from realnet.data.records import ANOMALOUS, Record
    from realnet.synthesis.sources import refuse_texture_folders_holding_the_data

    (tmp_path / "masks").mkdir()
    record = Record(tmp_path / "images" / "a.png", tmp_path / "masks" / "a_mask.png", ANOMALOUS, "x", "c", "test")
    with pytest.raises(RealnetError, match="the dtd folder .*masks holds the dataset's .*a_mask.png"):
        refuse_texture_folders_holding_the_data({"dtd": tmp_path / "masks"}, [record])
    refuse_texture_folders_holding_the_data({"sia": tmp_path / "nowhere"}, [record])  # named where it is read
    (tmp_path / "mask").mkdir()  # a folder whose name merely starts the path's is not above it
    refuse_texture_folders_holding_the_data({"dtd": tmp_path / "mask"}, [record])
