"""`realnet export --format onnx`: the whole inference graph in onnxruntime matches PyTorch, carries
the run's threshold, and takes any batch size when exported with --batch-size-dynamic."""

import contextlib
import copy
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import realnet.export.onnx as onnx_export
from realnet import __version__
from realnet.cli.main import main
from realnet.data.io import read_image, resize_image
from realnet.engine import checkpoint
from realnet.engine.evaluate import load_run
from realnet.engine.runtime import to_tensor
from realnet.errors import RealnetError
from realnet.report.panels import map_display_max

pytestmark = pytest.mark.slow  # each export traces and runs the tiny detector: several seconds

SIZE = 64  # the tiny preset's train.image_size


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, int, str]:
    """(model path, exit code, stdout) of `realnet export ... --batch-size-dynamic` run in-process."""
    _, run_dir = tiny_run
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(out),
                     "--batch-size-dynamic"])
    return out, code, stdout.getvalue()


@pytest.fixture(scope="module")
def detector(tiny_run):
    return load_run(tiny_run[1], torch.device("cpu"))


def read_test_images(data_root: Path) -> torch.Tensor:
    """The run's three first test images, (3, 3, S, S) in [0, 1], read independently of the exporter."""
    paths = sorted((data_root / "widget" / "test").rglob("*.png"))[:3]
    return to_tensor(np.stack([resize_image(read_image(p), SIZE) for p in paths]))


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cli_export_writes_one_valid_model_and_prints_parity_within_tolerance(exported):
    out, code, stdout = exported
    assert code == 0
    onnx.checker.check_model(str(out))
    assert sorted(os.listdir(out.parent)) == ["model.onnx"]  # no staging folder or temp file left
    parity_line, summary_line = stdout.strip().splitlines()
    assert parity_line.startswith("parity (onnxruntime CPU vs PyTorch, 3 test images of ")
    summary = json.loads(summary_line)
    assert summary["onnx"] == str(out) and summary["files"] == [str(out)]
    assert summary["dynamic_batch"] is True and summary["opset"] == onnx_export.DEFAULT_OPSET
    assert 0 <= summary["parity_max_abs_map_difference"] <= onnx_export.MAP_TOLERANCE
    assert 0 <= summary["parity_max_abs_score_difference"] <= onnx_export.SCORE_TOLERANCE


def test_model_metadata_tells_a_deployment_its_threshold(exported, tiny_run):
    meta = checkpoint.read_meta(tiny_run[1])
    props = session(exported[0]).get_modelmeta().custom_metadata_map
    assert float(props["threshold"]) == meta["threshold"]  # exact: stored with repr
    assert float(props["map_display_max"]) == map_display_max(meta)  # predict's heatmap scale
    assert props["image_size"] == str(SIZE)
    assert props["backbone"] == meta["backbone"]["name"]
    assert props["backbone_sha256"] == meta["backbone"]["sha256"] and len(props["backbone_sha256"]) == 64
    assert props["realnet_version"] == __version__


def test_graph_is_the_whole_pipeline_with_named_and_shaped_ends(exported):
    operators = {node.op_type for node in onnx.load(str(exported[0])).graph.node}
    # RRS (ranking BatchNorm, top-k, gather), softmax map, mean-filter + max score
    assert {"BatchNormalization", "TopK", "GatherElements", "Softmax", "AveragePool", "ReduceMax"} <= operators
    sess = session(exported[0])
    (image,) = sess.get_inputs()
    assert image.name == "image" and image.shape == ["batch", 3, SIZE, SIZE]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [
        ("anomaly_map", ["batch", SIZE, SIZE]), ("score", ["batch"])]


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_pytorch(exported, detector, tiny_run, batch):
    model, _ = detector
    images = read_test_images(tiny_run[0])[:batch]
    maps, scores = session(exported[0]).run(None, {"image": images.numpy()})
    expected_maps, expected_scores = model.predict(images)
    assert maps.shape == (batch, SIZE, SIZE) and scores.shape == (batch,)
    assert np.abs(maps - expected_maps.numpy()).max() <= onnx_export.MAP_TOLERANCE
    assert np.abs(scores - expected_scores.numpy()).max() <= onnx_export.SCORE_TOLERANCE
    assert expected_maps.std() > 0  # a constant map would make the comparison meaningless


def test_fixed_batch_export_with_external_weights(detector, tmp_path):
    model, meta = detector
    out = tmp_path / "fixed.onnx"
    images = torch.rand((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    report = onnx_export.export_onnx(model, out, image_size=SIZE, metadata=onnx_export.run_metadata(meta),
                                     parity_images=images, external_data=True)
    data = tmp_path / "fixed.onnx.data"
    assert report.files == (out, data) and report.parity.passed and report.parity.batch_sizes == (1,)
    assert sorted(os.listdir(tmp_path)) == ["fixed.onnx", "fixed.onnx.data"]
    assert os.stat(data).st_mode == os.stat(out).st_mode
    assert data.stat().st_size > out.stat().st_size  # the weights really live outside the model
    sess = session(out)
    assert [i.shape for i in sess.get_inputs()] == [[1, 3, SIZE, SIZE]]
    assert [o.shape for o in sess.get_outputs()] == [[1, SIZE, SIZE], [1]]
    maps, _ = sess.run(None, {"image": images[:1].numpy()})
    assert np.abs(maps - model.predict(images[:1])[0].numpy()).max() <= onnx_export.MAP_TOLERANCE
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        sess.run(None, {"image": images.numpy()})
    # the export patched the RRS BatchNorm only while tracing
    assert not model.residual_selection.norm.affine and model.residual_selection.norm.weight is None


def test_failed_parity_raises_and_writes_nothing(detector, tmp_path, monkeypatch):
    """An exporter that emits a different graph is caught before anything reaches --out."""
    model, meta = detector
    trace = onnx_export.trace_to_onnx

    def trace_a_different_detector(model, *args, **kwargs):
        different = copy.deepcopy(model)
        with torch.no_grad():
            different.discriminator.tail[-1].bias += torch.tensor([0.0, 1.0])  # anomaly logit + 1
        trace(different, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "trace_to_onnx", trace_a_different_detector)
    images = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(2))
    with pytest.raises(RealnetError, match=r"model\.onnx: ONNX parity check failed .* not written"):
        onnx_export.export_onnx(model, tmp_path / "model.onnx", image_size=SIZE,
                                metadata=onnx_export.run_metadata(meta), parity_images=images)
    assert os.listdir(tmp_path) == []


def test_a_standardised_map_with_amplified_rounding_still_exports(tmp_path):
    """Regression: the parity bound was absolute, so a position-normalised detector, whose
    scales (up to 100) multiply float32 rounding, was refused although its graph was right."""
    from realnet.config import load_config
    from realnet.engine.build import build_backbone, build_model

    torch.manual_seed(0)
    config = load_config("tiny", overrides=["train.map_normalization=position"])
    model = build_model(config, build_backbone(config)).eval()
    model.map_normalization.calibrate(torch.full((SIZE, SIZE), 0.5), torch.zeros(SIZE, SIZE))
    images = torch.rand((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    report = onnx_export.export_onnx(model, tmp_path / "m.onnx", image_size=SIZE, metadata={"threshold": "1.0"},
                                     parity_images=images)
    expected = model.predict(images)[0].abs().max().item()
    assert report.parity.passed and expected > 10  # so the bound is relative here
    assert report.parity.map_tolerance == pytest.approx(onnx_export.MAP_TOLERANCE * expected)


@pytest.mark.parametrize("opset", ["9", "0"])
def test_unsupported_opset_is_one_error_line(tiny_run, tmp_path, capsys, opset):
    """Regression: --opset 0 was taken as 'not given' and silently exported at opset 17."""
    code = main(["export", "--run", str(tiny_run[1]), "--out", str(tmp_path / "m.onnx"), "--opset", opset])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [f"realnet: error: --opset {opset} is not supported (use 13 to 20)"]
    assert os.listdir(tmp_path) == []


def test_out_under_a_file_is_one_error_line(tiny_run, tmp_path, capsys):
    """Regression: a parent that is a file escaped as a FileExistsError traceback."""
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / "m.onnx"
    assert main(["export", "--run", str(tiny_run[1]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"realnet: error: --out {out}: cannot create its folder")


def test_parity_inputs_spread_over_the_test_split_or_fall_back_to_random(tiny_run):
    data_root, run_dir = tiny_run
    meta = checkpoint.read_meta(run_dir)
    images, source = onnx_export.parity_inputs(meta, SIZE, 3)
    tests = sorted((data_root / "widget" / "test").rglob("*.png"))
    assert source == f"test images of {data_root / 'widget'}" and images.shape == (3, 3, SIZE, SIZE)
    for image, path in zip(images[[0, -1]], [tests[0], tests[-1]]):  # a good and a scratch image
        assert torch.equal(image, to_tensor(resize_image(read_image(path), SIZE)[None])[0])

    gone = {**meta, "data": {**meta["data"], "root": str(data_root / "moved")}}
    first, source = onnx_export.parity_inputs(gone, SIZE, 2)
    again, _ = onnx_export.parity_inputs(gone, SIZE, 2)
    assert source == "random images" and first.shape == (2, 3, SIZE, SIZE) and torch.equal(first, again)


def test_a_run_with_fused_density_and_memory_exports_with_a_dynamic_batch(memory_run, tmp_path, monkeypatch):
    """The memory branch's distances are one product when traced, so the exported graph takes
    any batch size and matches PyTorch's row-blocked computation (blocks of 5 rows here)."""
    from realnet.model import memory as memory_module

    data_root, run_dir, *_ = memory_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    monkeypatch.setattr(memory_module, "DISTANCE_BLOCK_ELEMENTS", 5 * len(model.fusion.memory.bank))
    out = tmp_path / "memory.onnx"
    images = read_test_images(data_root)
    onnx_export.export_onnx(model, out, image_size=SIZE, metadata=onnx_export.run_metadata(meta),
                            parity_images=images[:2], dynamic_batch=True)
    for batch in (1, 3):
        maps, scores = session(out).run(None, {"image": images[:batch].numpy()})
        expected_maps, expected_scores = model.predict(images[:batch])
        assert np.abs(maps - expected_maps.numpy()).max() <= onnx_export.MAP_TOLERANCE
        assert np.abs(scores - expected_scores.numpy()).max() <= onnx_export.SCORE_TOLERANCE


def exported_graph_matches_predict(model, meta: dict, images: torch.Tensor, out: Path
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exports the model with a dynamic batch, checks onnxruntime's maps and scores of all the
    images against `predict`'s, and returns the latter."""
    onnx_export.export_onnx(model, out, image_size=SIZE, metadata=onnx_export.run_metadata(meta),
                            parity_images=images[:2], dynamic_batch=True)
    maps, scores = session(out).run(None, {"image": images.numpy()})
    expected_maps, expected_scores = model.predict(images)
    assert np.abs(maps - expected_maps.numpy()).max() <= onnx_export.MAP_TOLERANCE
    assert np.abs(scores - expected_scores.numpy()).max() <= onnx_export.SCORE_TOLERANCE
    return expected_maps, expected_scores


def test_a_run_whose_image_score_has_its_own_density_weight_keeps_it_through_load_and_export(image_weight_run,
                                                                                              tmp_path):
    """density.image_weight reaches the loaded run and the ONNX graph: the exported score pools
    the maps fused at that weight, not the heatmap."""
    from realnet.model.discriminator import image_score

    data_root, run_dir, *_ = image_weight_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    assert model.fusion.weights == [0.5, 0.5] and model.fusion.image_weights == [1.0, 0.0]
    images = read_test_images(data_root)
    expected_maps, expected_scores = exported_graph_matches_predict(model, meta, images, tmp_path / "image_weight.onnx")
    assert not torch.allclose(expected_scores, image_score(expected_maps, model.score_kernel))


def _mean_map_graph(path: Path, size: int = 4) -> None:
    """A stand-in exported detector: anomaly_map = channel mean, score = its maximum."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["anomaly_map"], axes=[1], keepdims=0),
         helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0)],
        "mean_map",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", size, size]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


class _MeanMapDetector(torch.nn.Module):
    """PyTorch side of `_mean_map_graph`, off by `offset` on the last image only."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def predict(self, images):
        maps = images.mean(1)
        maps[-1] += self.offset
        return maps, maps.amax((1, 2))


def test_parity_compares_every_image_at_every_batch_size(tmp_path):
    """A graph that disagrees with PyTorch on the last parity image only must still fail."""
    path = tmp_path / "mean.onnx"
    _mean_map_graph(path)
    images = torch.rand((3, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    report = onnx_export.check_parity(_MeanMapDetector(0.0), path, images, batch_sizes=(3, 1))
    assert report.passed and report.max_abs_map_difference < 1e-6 and report.batch_sizes == (3, 1)
    for batch_sizes in [(1,), (3,), (3, 1)]:
        report = onnx_export.check_parity(_MeanMapDetector(0.5), path, images, batch_sizes=batch_sizes)
        assert not report.passed and report.n_images == 3
        assert report.max_abs_map_difference == pytest.approx(0.5, abs=1e-5)
        assert report.max_abs_score_difference == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_without_the_export_extra_it_is_one_error_line_before_any_work(tiny_run, tmp_path, capsys, monkeypatch,
                                                                      missing):
    """Regression: a missing onnx or onnxruntime package escaped as a ModuleNotFoundError traceback
    (onnxruntime's only after the whole graph had been traced)."""
    monkeypatch.setitem(sys.modules, missing, None)  # what an import finds for a package not installed
    assert main(["export", "--run", str(tiny_run[1]), "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"realnet: error: realnet export needs the {missing} package: pip install 'realnet[export]'"]
    assert os.listdir(tmp_path) == []


def test_the_input_format_names_the_resize_a_deployment_must_reproduce(exported):
    """Regression: "bilinear" alone led a deployment to cv2.resize, which does not antialias when
    shrinking, so its scores differed from realnet's enough to flip a decision."""
    props = {p.key: p.value for p in onnx.load(str(exported[0])).metadata_props}
    assert "PIL.Image.resize" in props["input_format"] and "antialias" in props["input_format"]


def test_an_out_name_near_the_file_name_limit_exports(tiny_run, tmp_path, capsys):
    """Regression: the staging folder's name, `.<out name>.` plus a random suffix, went past 255
    bytes for a legal --out name, refused as "File name too long"."""
    out = tmp_path / ("a" * 245 + ".onnx")
    assert main(["export", "--run", str(tiny_run[1]), "--out", str(out)]) == 0
    assert os.listdir(tmp_path) == [out.name]


def test_a_killed_exports_staging_folder_is_cleared_by_the_next_export(tiny_run, tmp_path, capsys):
    """Regression: an export killed with SIGKILL left its hidden staging folder (copies of the
    model) behind for good; a later export to the same --out now removes it. Names with glob
    characters are matched literally, so another hidden folder is kept."""
    out = tmp_path / "m[1].onnx"
    stale = tmp_path / ".m[1].onnx.export-abc123"
    stale.mkdir()
    (stale / "m[1].onnx").write_bytes(b"half")
    kept = tmp_path / ".m1.onnx.export-abc123"
    kept.mkdir()
    assert main(["export", "--run", str(tiny_run[1]), "--out", str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == [kept.name, out.name]


def test_an_interrupted_export_leaves_none_of_the_folders_it_made(tiny_run, tmp_path, capsys, monkeypatch):
    """Regression: Ctrl-C (or a failed parity) during the export left the --out folders it had
    created behind, empty."""
    import realnet.export.onnx

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(realnet.export.onnx, "trace_to_onnx", interrupted)
    assert main(["export", "--run", str(tiny_run[1]), "--out", str(tmp_path / "a" / "b" / "m.onnx")]) != 0
    assert "interrupted" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_parity_line_names_a_folder_datasets_folders_not_a_missing_category_folder(tmp_path):
    """Regression: a folder-dataset run's parity line named ROOT/custom, a folder that does not exist."""
    from dataset_fixtures import make_folder_tree
    from realnet.export.onnx import parity_inputs

    root = make_folder_tree(tmp_path / "data", n_normal=4, n_abnormal=2, n_normal_test=2, size=(64, 64))
    meta = {"data": {"root": str(root), "category": "custom", "dataset": "folder",
                     "folder_options": {"normal_dir": "normal", "abnormal_dir": "abnormal", "mask_dir": "masks",
                                        "normal_test_dir": "normal_test"}}}
    images, where = parity_inputs(meta, 64, 2)
    assert images.shape == (2, 3, 64, 64)
    assert where == (f"test images of the folder dataset at {root} (normal_dir=normal, abnormal_dir=abnormal, "
                     "mask_dir=masks, normal_test_dir=normal_test)")


def test_the_parity_check_fails_a_graph_that_outputs_nan(exported, detector, tmp_path):
    """Regression: max(0.0, nan) is 0.0, so a graph whose maps and scores were NaN passed parity
    with a difference of 0."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from realnet.export.onnx import check_parity

    proto = onnx.load(exported[0])
    weights = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(weights).shape, np.nan, np.float32),
                                             weights.name))
    onnx.save(proto, tmp_path / "nan.onnx")
    size = detector[1]["config"]["train"]["image_size"]
    report = check_parity(detector[0], tmp_path / "nan.onnx", torch.rand(2, 3, size, size))
    assert report.max_abs_map_difference == float("inf") and not report.passed


def test_an_out_path_on_a_file_of_the_run_is_refused(tiny_run, tmp_path, capsys):
    """Regression: `--out RUN/model.safetensors` replaced the run's weights with the ONNX graph."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[1], run_dir)
    weights = (run_dir / "model.safetensors").read_bytes()
    assert main(["export", "--run", str(run_dir), "--out", str(run_dir / "model.safetensors")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"realnet: error: --out {run_dir / 'model.safetensors'}: model.safetensors is a file of the run being "
        "exported; give a path outside the run folder or a new name"]
    assert (run_dir / "model.safetensors").read_bytes() == weights


def test_an_earlier_export_into_the_run_folder_is_replaced(tiny_run, tmp_path, capsys):
    """Regression: a second export to RUN/model.onnx (another opset, a dynamic batch) was refused as
    "a file of the run being exported"."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[1], run_dir)
    assert main(["export", "--run", str(run_dir), "--out", str(run_dir / "model.onnx")]) == 0
    first = (run_dir / "model.onnx").read_bytes()
    assert main(["export", "--run", str(run_dir), "--out", str(run_dir / "model.onnx"), "--batch-size-dynamic"]) == 0
    assert (run_dir / "model.onnx").read_bytes() != first
    capsys.readouterr()


@pytest.mark.parametrize("map_difference, score_difference", [(0.0, 1.0), (1.0, 0.0)])
def test_parity_fails_when_only_the_map_or_only_the_score_is_off(map_difference, score_difference):
    """A report passes only when both the map and the score are within their tolerances."""
    report = onnx_export.ParityReport(1, "random images", (1,), map_difference, score_difference, 1e-3, 1e-3)
    assert not report.passed
    assert onnx_export.ParityReport(1, "random images", (1,), 0.0, 0.0, 1e-3, 1e-3).passed


def test_a_density_on_aggregated_features_exports_with_parity(image_weight_run, tmp_path):
    """density.neighbourhood's window average is part of the graph: onnxruntime matches predict."""
    data_root, run_dir, *_ = image_weight_run
    model, meta = load_run(run_dir, torch.device("cpu"))
    model.fusion.density.neighbourhood = 3
    images = read_test_images(data_root)
    expected_maps, _ = exported_graph_matches_predict(model, meta, images, tmp_path / "aggregated.onnx")
    model.fusion.density.neighbourhood = 1
    assert not torch.allclose(model.predict(images)[0], expected_maps)  # the window reached the map


def test_a_run_whose_density_reads_some_layers_fits_loads_and_exports_them(tmp_path):
    """density.layers reaches the fitted statistics, the loaded run and the ONNX graph: the
    Gaussian is that of the coarser layer's features alone, on that layer's grid."""
    from dataset_fixtures import fit_tiny_widget_run

    data_root, run_dir, fit_images, _ = fit_tiny_widget_run(tmp_path, ["density.weight=0.5", "density.layers=[2]"])
    model, meta = load_run(run_dir, torch.device("cpu"))
    assert meta["config"]["density"]["layers"] == [2] and model.fusion.density.feature_indices == (1,)
    coarse = model.backbone(to_tensor(fit_images))[1]
    assert model.fusion.density.mean.shape == (*coarse.shape[2:], coarse.shape[1])
    torch.testing.assert_close(model.fusion.density.mean, coarse.mean(0).permute(1, 2, 0), atol=1e-4, rtol=1e-4)
    exported_graph_matches_predict(model, meta, read_test_images(data_root), tmp_path / "layers.onnx")
