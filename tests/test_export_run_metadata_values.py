"""`run_metadata`: every metadata_props value a deployment reads comes from its own field of the
run's model.json (checked on a hand-made model.json, without tracing a graph)."""

from __future__ import annotations

import pytest
from dataset_fixtures import handmade_png

pytest.importorskip("onnx")

from realnet.export.onnx import run_metadata  # noqa: E402


def _meta(map_normalization: str = "none") -> dict:
    return {"realnet_version": "0.0.1", "threshold": 0.3141592653589793,
            "config": {"train": {"image_size": 96, "map_normalization": map_normalization},
                       "density": {"weight": 0}, "memory": {"weight": 0}},
            "backbone": {"name": "wide_resnet50_2", "sha256": "ab" * 32},
            "data": {"root": "/data", "category": "bottle", "dataset": "mvtec"}}


def test_each_value_comes_from_its_own_field():
    props = run_metadata(_meta())
    assert float(props["threshold"]) == 0.3141592653589793  # exact (repr), not a float32 rounding
    assert props["image_size"] == "96"
    assert props["backbone"] == "wide_resnet50_2" and props["backbone_sha256"] == "ab" * 32
    assert props["category"] == "bottle"
    assert props["dataset"] == "mvtec"
    assert props["run_realnet_version"] == "0.0.1"
    assert float(props["map_display_max"]) == 1.0  # probability maps: full heat at 1


def test_an_unbounded_map_is_drawn_full_at_twice_the_threshold():
    props = run_metadata(_meta("position"))
    assert float(props["map_display_max"]) == pytest.approx(2 * 0.3141592653589793)
    assert "standardised per pixel position" in props["output_format"]


def test_the_score_format_says_what_the_score_pools():
    """A deployment that pools anomaly_map itself must learn the window, and that a run with
    density.image_weight scores another fusion of the same maps."""
    meta = _meta()
    meta["config"]["train"]["score_kernel"] = 8
    assert "the max of the 8 x 8 mean of anomaly_map;" in run_metadata(meta)["output_format"]
    meta["config"]["density"] = {"weight": 0.5, "image_weight": 0.75}
    format_ = run_metadata(meta)["output_format"]
    assert "8 x 8 mean of the maps fused at density weight 0.75 (anomaly_map is fused at 0.5" in format_
    meta["config"]["density"]["image_weight"] = 0.5  # the same fusion: the score is anomaly_map's
    assert "8 x 8 mean of anomaly_map;" in run_metadata(meta)["output_format"]
    del meta["config"]["train"]["score_kernel"]  # a model.json from before the option: the paper's 16
    assert "16 x 16 mean" in run_metadata(meta)["output_format"]
    del meta["config"]["density"]  # nor the density fusion (export raised KeyError: 'density')
    assert "16 x 16 mean of anomaly_map;" in run_metadata(meta)["output_format"]


def test_the_input_format_states_the_rules_read_image_applies_to_wide_and_float_images(tmp_path):
    """A deployment follows input_format to feed the graph; it described 16-bit colour images with
    the grey rule (round(v * 255 / 65535)) while they are read at their high byte, and said nothing
    of float images."""
    import cv2
    import numpy as np
    from PIL import Image

    from realnet.data.io import read_image
    from realnet.export.onnx import INPUT_FORMAT

    samples = np.array([[[0, 255, 256], [511, 32767, 65535], [40000, 128, 1000]]], np.uint16)
    cv2.imwrite(str(tmp_path / "colour16.png"), samples[:, :, ::-1])  # OpenCV writes BGR
    assert "high byte (v >> 8" in INPUT_FORMAT
    assert np.array_equal(read_image(tmp_path / "colour16.png"), (samples >> 8).astype(np.uint8))

    grey = samples[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert "grey integer images wider than 8 bits scaled by round(v * 255 / (2**bits - 1))" in INPUT_FORMAT
    expected = np.rint(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "grey16.png"), np.repeat(expected[:, :, None], 3, axis=2))

    # regression: 16-bit grey with alpha (PNG colour type 4, opaque) is read at its high byte, which
    # the text did not say
    opaque = np.stack([grey, np.full_like(grey, 65535)], axis=2).astype(">u2")
    (tmp_path / "grey_alpha16.png").write_bytes(handmade_png(
        grey.shape[1], grey.shape[0], 16, 4, b"".join(b"\x00" + row.tobytes() for row in opaque)))
    assert Image.open(tmp_path / "grey_alpha16.png").mode == "RGBA"  # how Pillow decodes it
    assert "colour images, and grey ones with alpha, of 16 bits a sample keep the high byte" in INPUT_FORMAT
    assert np.array_equal(read_image(tmp_path / "grey_alpha16.png"), np.repeat((grey >> 8).astype(np.uint8)[:, :, None],
                                                                               3, axis=2))

    values = np.array([[-0.5, 0.2, 0.5, 1.7]], np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    assert "float images clipped to [0, 1] and scaled by round(v * 255)" in INPUT_FORMAT
    expected = np.rint(np.clip(values, 0, 1).astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "float.tif"), np.repeat(expected[:, :, None], 3, axis=2))

