"""Acceptance of `realnet predict` on awkward files: grayscale, RGBA and 16-bit images are scored (one
JSON line each), a truncated JPEG gets one error line naming it and a non-zero exit code."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_fixtures import normal_image, refuse_listing
import realnet
from realnet.cli.main import main
from realnet.engine import checkpoint

SRC = Path(realnet.__file__).resolve().parents[1]
SIZE = 64  # the tiny preset's train.image_size
KERNEL = 4  # and its train.score_kernel


@pytest.fixture
def predict():
    """`realnet predict --run RUN ARGS...` in-process; returns the exit code, output goes to capsys."""

    def run(run_dir: Path, *arguments) -> int:
        return main(["predict", "--run", str(run_dir), *map(str, arguments)])

    return run


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> dict[str, Path]:
    """gray: 8-bit L PNG; gray16: the same pixels x 257 as a 16-bit TIFF (so it must score exactly
    like gray); rgba: RGBA PNG with an alpha ramp; truncated: the first half of a JPEG."""
    folder = tmp_path_factory.mktemp("awkward")
    rng = np.random.default_rng(0)
    gray = normal_image(rng, (80, 96), gray=True)
    rgb = normal_image(rng, (80, 96))
    alpha = np.tile(np.linspace(0, 255, 96).round().astype(np.uint8), (80, 1))
    files = {"gray": folder / "gray.png", "rgba": folder / "rgba.png", "gray16": folder / "gray16.tif",
             "truncated": folder / "truncated.jpg"}
    Image.fromarray(gray).save(files["gray"])
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(files["rgba"])
    Image.fromarray(gray.astype(np.uint16) * 257).save(files["gray16"])
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, "JPEG")
    files["truncated"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with Image.open(files["gray"]) as g, Image.open(files["rgba"]) as a, Image.open(files["gray16"]) as d:
        assert (g.mode, a.mode, d.mode) == ("L", "RGBA", "I;16")
    return files


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_awkward_files_are_scored_and_the_truncated_one_is_named(predict, tiny_run, awkward, capsys):
    run_dir = tiny_run[1]
    threshold = checkpoint.read_meta(run_dir)["threshold"]
    code = predict(run_dir, awkward["gray"], awkward["rgba"], awkward["gray16"], awkward["truncated"])
    out, err = capsys.readouterr()
    assert code != 0
    results = json_lines(out)
    assert [r["path"] for r in results] == [str(awkward[k]) for k in ("gray", "rgba", "gray16")]
    for result in results:
        assert 0.0 <= result["score"] <= 1.0
        assert result["is_anomalous"] is (result["score"] > threshold)
    assert results[2]["score"] == results[0]["score"]  # 16 bits scaled by their range, not clipped
    (line,) = err.splitlines()
    assert line.startswith(f"realnet: error: {awkward['truncated']}: ") and "truncated" in line.lower()


@pytest.mark.slow
def test_real_process_exit_code_is_non_zero_for_a_broken_file(tiny_run, awkward):
    result = subprocess.run(
        [sys.executable, "-m", "realnet", "predict", "--run", str(tiny_run[1]), str(awkward["gray"]),
         str(awkward["truncated"])],
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert [r["path"] for r in json_lines(result.stdout)] == [str(awkward["gray"])]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"realnet: error: {awkward['truncated']}: ")


def test_a_folder_expands_to_its_images_recursively(predict, tiny_run, tmp_path, capsys):
    Image.fromarray(normal_image(np.random.default_rng(1), (40, 40))).save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(normal_image(np.random.default_rng(2), (40, 40))).save(tmp_path / "sub" / "a.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    code = predict(tiny_run[1], tmp_path)
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert [r["path"] for r in json_lines(out)] == [str(tmp_path / "b.png"), str(tmp_path / "sub" / "a.JPG")]


def test_save_maps_writes_the_map_the_score_comes_from(predict, tiny_run, awkward, tmp_path, capsys):
    maps = tmp_path / "maps"
    code = predict(tiny_run[1], awkward["rgba"], "--save-maps", maps, "--map-size", "run")
    (result,) = json_lines(capsys.readouterr().out)
    assert code == 0 and result["map"] == str(maps / "00000_rgba.png")
    with Image.open(result["map"]) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (SIZE, SIZE)
        anomaly_map = np.asarray(image, dtype=np.float64) / 255
    windows = np.lib.stride_tricks.sliding_window_view(anomaly_map, (KERNEL, KERNEL))
    assert abs(windows.mean(axis=(2, 3)).max() - result["score"]) <= 0.5 / 255 + 1e-6  # PNG rounding


def test_missing_run_folder_is_one_error_line(predict, awkward, tmp_path, capsys):
    code = predict(tmp_path / "no_run", awkward["gray"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == [f"realnet: error: {tmp_path / 'no_run'} is not a finished realnet run "
                                f"(model.json not found)"]


def test_truncated_weights_and_an_absent_device_are_one_error_line(predict, tiny_run, awkward, tmp_path, capsys):
    """Both reached the user as a traceback with exit code 1, the code of a failed image."""
    import shutil

    run_dir = tmp_path / "truncated_run"
    shutil.copytree(tiny_run[1], run_dir)
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert predict(run_dir, awkward["gray"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"realnet: error: {weights}: unreadable weights")
    if not torch.backends.mps.is_available():
        assert main(["predict", "--run", str(tiny_run[1]), "--device", "mps", str(awkward["gray"])]) == 2
        assert capsys.readouterr().err.splitlines() == ["realnet: error: --device mps was requested but MPS is "
                                                        "not available"]


def test_save_maps_keeps_one_map_per_input_with_the_same_stem(predict, tiny_run, tmp_path, capsys):
    for folder, seed in (("good", 1), ("scratch", 2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(normal_image(np.random.default_rng(seed), (40, 40))).save(tmp_path / folder / "000.png")
    predict(tiny_run[1], tmp_path / "good", tmp_path / "scratch", "--save-maps", tmp_path / "maps")
    written = {r["map"] for r in json_lines(capsys.readouterr().out)}
    assert len(written) == 2 and all(Path(p).is_file() for p in written)


def test_maps_folder_that_cannot_be_created_is_one_error_line_before_scoring(predict, tiny_run, awkward,
                                                                            tmp_path, capsys):
    """Regression: a --save-maps path under a file was a traceback after the first image was scored."""
    (tmp_path / "taken").write_text("a file")
    maps = tmp_path / "taken" / "maps"
    assert predict(tiny_run[1], awkward["gray"], "--save-maps", maps) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"realnet: error: --save-maps {maps}: cannot create the folder "
                                              f"(Not a directory)"]


def test_a_maps_folder_is_not_left_behind_when_no_image_could_be_scored(predict, tiny_run, awkward, tmp_path,
                                                                         capsys):
    """Regression: --save-maps created an empty folder even when every input failed."""
    assert predict(tiny_run[1], awkward["truncated"], "--save-maps", tmp_path / "maps") == 1
    assert "truncated.jpg" in capsys.readouterr().err and not (tmp_path / "maps").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays
    assert predict(tiny_run[1], awkward["truncated"], "--save-maps", tmp_path / "kept") == 1
    assert (tmp_path / "kept").is_dir()


def test_out_is_the_design_contracts_name_for_save_maps(predict, tiny_run, awkward, tmp_path, capsys):
    assert predict(tiny_run[1], awkward["gray"], "--out", tmp_path / "maps") == 0
    (result,) = json_lines(capsys.readouterr().out)
    assert Path(result["map"]).parent == tmp_path / "maps" and Path(result["map"]).is_file()


def test_an_unanticipated_file_system_error_is_one_line(monkeypatch, capsys):
    import realnet.engine.predict as engine_predict

    def fail(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/some/run/model.json")

    monkeypatch.setattr(engine_predict, "predict", fail)
    assert main(["predict", "--run", "/some/run", "x.png"]) == 2
    assert capsys.readouterr().err.splitlines() == ["realnet: error: /some/run/model.json: Permission denied"]


def test_in_process_output_follows_the_current_stdout(tiny_run, awkward):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["predict", "--run", str(tiny_run[1]), str(awkward["gray"])])
    assert json_lines(stdout.getvalue())[0]["path"] == str(awkward["gray"])


def test_runs_with_unbounded_maps_predict_draw_and_export_them(unbounded_map_run, tmp_path):
    """Position-normalised and fused runs: is_anomalous follows the threshold, heatmaps span 0 to
    twice it, and the ONNX metadata says which map it is."""
    import onnx

    from realnet.engine.predict import predict
    from realnet.report.panels import map_display_max

    (data_root, run_dir, *_), words = unbounded_map_run
    meta = json.loads((run_dir / "model.json").read_text())
    assert map_display_max(meta) == pytest.approx(2 * meta["threshold"])
    image = sorted((data_root / "widget" / "test" / "scratch").iterdir())[0]
    out = io.StringIO()
    assert predict(run_dir, [str(image)], save_maps=tmp_path / "maps", device="cpu", out=out) == 0
    result = json.loads(out.getvalue())
    assert result["is_anomalous"] == (result["score"] > meta["threshold"])
    assert Path(result["map"]).is_file()
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert words in props["output_format"]


def test_the_printed_score_is_the_models_image_score_not_the_map_maximum(predict, tiny_run, awkward, capsys):
    """The image score is the max of the score_kernel-mean-filtered map (paper Sec. 3.4), exactly
    as `test` computes it; the map's own maximum is another, larger number."""
    from realnet.data.io import read_image, resize_image
    from realnet.engine.evaluate import load_run
    from realnet.engine.runtime import to_tensor

    model, _ = load_run(tiny_run[1], torch.device("cpu"))
    image = resize_image(read_image(awkward["rgba"]), SIZE)
    with torch.no_grad():
        maps, scores = model.predict(to_tensor(image[None]))
    assert float(maps.max()) - float(scores[0]) > 1e-4  # else the two readings could not be told apart
    assert predict(tiny_run[1], awkward["rgba"]) == 0
    (result,) = json_lines(capsys.readouterr().out)
    assert result["score"] == float(scores[0])


def test_an_oversized_image_gets_the_one_error_line_without_pillows_warning(predict, tiny_run, tmp_path, capsys,
                                                                             monkeypatch, recwarn):
    """Regression: Pillow's DecompressionBombWarning (a file:line and a source line) was printed
    before realnet's own one-line refusal of the same image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above 1000 pixels, refuses above 2000
    monkeypatch.setenv("REALNET_MAX_IMAGE_PIXELS", "2400")
    big, fits = tmp_path / "big.png", tmp_path / "fits.png"
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(big)
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(fits)
    assert predict(tiny_run[1], big, fits) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"realnet: error: {big}: refused as a decompression bomb: 50x50 = 2500 pixels "
                                "exceeds the limit of 2400 (set REALNET_MAX_IMAGE_PIXELS to raise it)"]
    assert [r["path"] for r in json_lines(out)] == [str(fits)]  # over Pillow's own limit, within the one set
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("value", ["0", "lots", "-5"])
def test_a_bad_pixel_limit_is_one_error_line(predict, tiny_run, awkward, monkeypatch, capsys, value):
    monkeypatch.setenv("REALNET_MAX_IMAGE_PIXELS", value)
    assert predict(tiny_run[1], awkward["gray"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"realnet: error: REALNET_MAX_IMAGE_PIXELS={value!r}: give the largest number of pixels an image may have"]


def test_maps_and_overlays_come_at_the_inputs_own_size_by_default(predict, tiny_run, awkward, tmp_path, capsys):
    """An inspection engineer lays the map over the photograph: both have the input's (H, W), and
    the map is the run-size map stretched back, not another computation."""
    from realnet.report.panels import map_at_input_size

    maps = tmp_path / "maps"
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", maps, "--overlays") == 0
    (result,) = json_lines(capsys.readouterr().out)
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", tmp_path / "square", "--map-size", "run") == 0
    (square,) = json_lines(capsys.readouterr().out)
    with Image.open(result["map"]) as stretched, Image.open(square["map"]) as small, \
            Image.open(result["overlay"]) as overlay:
        assert stretched.size == overlay.size == (96, 80) and small.size == (SIZE, SIZE)
        assert overlay.mode == "RGB" and Path(result["overlay"]).name == "00000_rgba_overlay.png"
        expected = map_at_input_size(np.asarray(small, np.float32), (80, 96))
        assert np.abs(np.asarray(stretched, np.float32) - expected).max() <= 1.0  # PNG rounding, twice
    assert "overlay" not in square


def test_overlays_without_a_maps_folder_are_refused(predict, tiny_run, awkward, capsys):
    assert predict(tiny_run[1], awkward["gray"], "--overlays") == 2
    assert capsys.readouterr().err.splitlines() == ["realnet: error: --overlays needs --save-maps DIR to write "
                                                    "them into"]


@pytest.mark.parametrize("size", ["input", "run"])
def test_a_map_size_without_a_maps_folder_is_refused(predict, tiny_run, awkward, capsys, size):
    """--map-size sizes the saved maps; without --save-maps it was accepted and did nothing."""
    assert predict(tiny_run[1], awkward["gray"], "--map-size", size) == 2
    assert capsys.readouterr().err.splitlines() == [f"realnet: error: --map-size {size} needs --save-maps DIR "
                                                    "(it sizes the saved maps)"]


def test_batches_score_like_single_images_and_keep_input_order(predict, tiny_run, awkward, tmp_path, capsys):
    """Scoring 3 images per batch with a broken file in the middle gives each image the score it
    gets alone, lines in input order, and the broken one still named."""
    order = [awkward["gray"], awkward["truncated"], awkward["rgba"], awkward["gray16"], awkward["gray"]]
    assert predict(tiny_run[1], *order, "--batch-size", "3") == 1
    out, err = capsys.readouterr()
    batched = json_lines(out)
    assert [r["path"] for r in batched] == [str(p) for p in order if p != awkward["truncated"]]
    assert len(err.splitlines()) == 1 and "truncated.jpg" in err
    for path in (awkward["gray"], awkward["rgba"], awkward["gray16"]):
        assert predict(tiny_run[1], path, "--batch-size", "1") == 0
        (alone,) = json_lines(capsys.readouterr().out)
        assert all(r["score"] == pytest.approx(alone["score"], abs=2e-6) for r in batched if r["path"] == str(path))


def test_a_map_that_fails_half_written_leaves_no_file_behind(predict, tiny_run, awkward, tmp_path, capsys,
                                                            monkeypatch):
    """Regression: maps were saved in place, so a write that failed (disk full) or a killed
    predict left a truncated PNG under the final name."""
    def half_write(image, fp, format=None, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_write)
    maps = tmp_path / "maps"
    assert predict(tiny_run[1], awkward["gray"], "--save-maps", maps) == 2
    assert capsys.readouterr().err.splitlines() == [f"realnet: error: {maps / '00000_gray.png'}: cannot write "
                                                    "there (No space left on device)"]
    assert not maps.exists()  # created for maps of which none came


def test_an_input_the_os_cannot_even_look_up_is_one_error_line_and_the_rest_are_scored(predict, tiny_run, awkward,
                                                                                      tmp_path, capsys):
    """Regression: an OSError other than 'not found' from the existence check (a name over the file
    system's limit, a folder without search permission) escaped the reader and ended predict with
    exit code 2, the images after it unscored."""
    unreachable = tmp_path / ("x" * 300 + ".png")
    assert predict(tiny_run[1], unreachable, awkward["gray"]) == 1
    out, err = capsys.readouterr()
    assert [r["path"] for r in json_lines(out)] == [str(awkward["gray"])]
    (line,) = err.splitlines()
    assert line.startswith(f"realnet: error: {unreachable}: ") and "name too long" in line.lower()


def test_an_input_with_a_long_name_gets_its_map_and_overlay(predict, tiny_run, tmp_path, capsys):
    """Regression: the map's name (position, stem, '_overlay.png') and atomic_write's temporary one
    were over the 255-byte file name limit for an input named near it, and predict stopped there."""
    long_name = tmp_path / ("ü" * 120 + ".png")  # 244 bytes in UTF-8
    Image.fromarray(normal_image(np.random.default_rng(3), (40, 40))).save(long_name)
    assert predict(tiny_run[1], long_name, "--save-maps", tmp_path / "maps", "--overlays") == 0
    (result,) = json_lines(capsys.readouterr().out)
    assert Path(result["map"]).is_file() and Path(result["overlay"]).is_file()
    assert Path(result["map"]).name.startswith("00000_üü")


def test_a_batch_size_below_one_is_refused_not_a_silent_empty_run(tiny_run, awkward):
    """Regression: the Python API took batch_size=-1 as 'no batches' (nothing printed, 0 failures)
    and 0 as a range() traceback; the CLI's own check does not guard callers such as the demo."""
    from realnet.engine.predict import predict
    from realnet.errors import RealnetError

    for size in (0, -1):
        with pytest.raises(RealnetError, match=rf"^batch size {size}: must be >= 1$"):
            predict(tiny_run[1], [str(awkward["gray"])], batch_size=size, device="cpu", out=io.StringIO())


def test_a_folder_leaves_out_images_inside_hidden_folders(predict, tiny_run, tmp_path, capsys):
    """Regression: only hidden file names were skipped, so the copies in .ipynb_checkpoints or
    .thumbnails under a folder of parts were scored as parts too (the layouts skip them)."""
    Image.fromarray(normal_image(np.random.default_rng(1), (40, 40))).save(tmp_path / "b.png")
    for hidden in (".ipynb_checkpoints", ".thumbnails/normal"):
        (tmp_path / hidden).mkdir(parents=True)
        Image.fromarray(normal_image(np.random.default_rng(2), (40, 40))).save(tmp_path / hidden / "b.png")
    assert predict(tiny_run[1], tmp_path) == 0
    assert [r["path"] for r in json_lines(capsys.readouterr().out)] == [str(tmp_path / "b.png")]


def test_a_maps_folder_inside_an_input_folder_is_not_scored_on_the_next_run(predict, tiny_run, tmp_path, capsys):
    """Regression: `predict parts/ --save-maps parts/maps` run twice scored the first run's maps and
    overlays as parts (each rerun adding maps of maps), and exited 0."""
    parts = tmp_path / "parts"
    parts.mkdir()
    Image.fromarray(normal_image(np.random.default_rng(1), (40, 40))).save(parts / "a.png")
    for rerun in ((), ("--overwrite",)):
        assert predict(tiny_run[1], parts, "--save-maps", parts / "maps", "--overlays", *rerun) == 0
        assert [r["path"] for r in json_lines(capsys.readouterr().out)] == [str(parts / "a.png")]
    assert sorted(p.name for p in (parts / "maps").iterdir()) == [".realnet-maps.json", "00000_a.png",
                                                                   "00000_a_overlay.png"]


def test_an_image_too_large_for_memory_is_one_error_line_and_the_rest_are_scored(predict, tiny_run, awkward,
                                                                                capsys, monkeypatch):
    """Regression: a MemoryError converting one image (an 80-megapixel 16-bit TIFF goes through
    float64) escaped the reader thread as a traceback; its batch-mates read before it and every
    image after it got no line."""
    from realnet.engine import predict as predict_module

    read = predict_module.read_image

    def short_of_memory(path):
        if Path(path) == awkward["rgba"]:
            raise MemoryError
        return read(path)

    monkeypatch.setattr(predict_module, "read_image", short_of_memory)
    order = [awkward["gray"], awkward["rgba"], awkward["gray16"]]
    assert predict(tiny_run[1], *order, "--batch-size", "2") == 1
    out, err = capsys.readouterr()
    assert [r["path"] for r in json_lines(out)] == [str(awkward["gray"]), str(awkward["gray16"])]
    assert err.splitlines() == [f"realnet: error: {awkward['rgba']}: not enough memory to read it"]


def test_a_folder_without_images_beside_other_inputs_is_one_error_line(predict, tiny_run, awkward, tmp_path,
                                                                        capsys):
    """Regression: a folder with no image files was an error only when it was the sole input; beside
    others (a mistyped camera folder, one holding only .heic files) it was dropped silently, exit 0."""
    empty = tmp_path / "camera2"
    empty.mkdir()
    (empty / "shot.heic").write_bytes(b"not read")
    maps = tmp_path / "maps"
    assert predict(tiny_run[1], awkward["gray"], empty, "--save-maps", maps) == 1
    out, err = capsys.readouterr()
    assert [r["path"] for r in json_lines(out)] == [str(awkward["gray"])]
    assert err.splitlines() == [f"realnet: error: {empty}: no image files in this folder"]
    assert (maps / "00000_gray.png").is_file()


def test_a_folder_takes_in_the_images_of_a_linked_subfolder_once_even_through_a_loop(predict, tiny_run, tmp_path,
                                                                                    capsys):
    """Regression: rglob does not enter symlinked folders, so a camera folder linked into the folder
    of parts was left out without a word. A link back up (a loop) must not repeat images forever."""
    camera = tmp_path / "camera1"
    camera.mkdir()
    Image.fromarray(normal_image(np.random.default_rng(1), (40, 40))).save(camera / "x.png")
    parts = tmp_path / "parts"
    parts.mkdir()
    Image.fromarray(normal_image(np.random.default_rng(2), (40, 40))).save(parts / "own.png")
    (parts / "lineA").symlink_to(camera, target_is_directory=True)
    (camera / "up").symlink_to(parts, target_is_directory=True)
    assert predict(tiny_run[1], parts) == 0
    assert [r["path"] for r in json_lines(capsys.readouterr().out)] == [str(parts / "lineA" / "x.png"),
                                                                        str(parts / "own.png")]


def test_a_bad_file_with_a_newline_in_its_name_is_still_one_error_line(predict, tiny_run, awkward, tmp_path,
                                                                        capsys):
    """Regression: the error line printed the name as it is, so a newline in it split the one
    `realnet: error:` line in two (a script counting them saw a stray line)."""
    broken = tmp_path / "part\n7.png"
    broken.write_bytes(b"not an image")
    assert predict(tiny_run[1], broken, awkward["gray"]) == 1
    out, err = capsys.readouterr()
    assert [r["path"] for r in json_lines(out)] == [str(awkward["gray"])]
    assert err.splitlines() == [f"realnet: error: {tmp_path}/part\\n7.png: not an image file Pillow can read"]


def test_a_maps_folder_that_holds_files_is_refused_unless_asked_to_overwrite(predict, tiny_run, awkward, tmp_path,
                                                                             capsys):
    """Regression: a second predict into the same --save-maps folder left the first one's maps
    (of other inputs, at other positions) beside its own, so the folder mixed two runs."""
    maps = tmp_path / "maps"
    assert predict(tiny_run[1], awkward["gray"], awkward["rgba"], "--save-maps", maps, "--overlays") == 0
    capsys.readouterr()
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", maps) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"realnet: error: --save-maps {maps} is not empty; choose a new or "
                                              "empty folder, or add --overwrite to replace the maps in it"]
    assert len([p for p in maps.iterdir() if not p.name.startswith(".")]) == 4
    (maps / "notes.txt").write_text("not a map")
    (maps / ".00001_rgba.png.abc123.tmp").write_bytes(b"half a map of a killed predict")
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", maps, "--overwrite") == 0
    assert [Path(r["map"]).name for r in json_lines(capsys.readouterr().out)] == ["00000_rgba.png"]
    assert sorted(p.name for p in maps.iterdir() if p.name != ".realnet-maps.json") == ["00000_rgba.png",
                                                                                     "notes.txt"]
    assert predict(tiny_run[1], awkward["rgba"], "--overwrite") == 2
    assert capsys.readouterr().err.splitlines() == ["realnet: error: --overwrite needs --save-maps DIR to replace the "
                                                    "maps in"]


def test_overwrite_deletes_only_the_maps_predict_wrote_never_a_users_images(predict, tiny_run, awkward, tmp_path,
                                                                           capsys):
    """Regression: --overwrite deleted every file named like a map (`00001_top.png`), so a camera's
    own numbered images in the maps folder vanished unscored, with exit 0."""
    camera = tmp_path / "camera"
    camera.mkdir()
    for name in ("00001_top.png", "00002_side.png", "part7.png"):
        shutil.copy(awkward["gray"], camera / name)
    for _ in range(2):
        assert predict(tiny_run[1], camera, "--save-maps", camera, "--overwrite") == 0
        scored = [Path(r["path"]).name for r in json_lines(capsys.readouterr().out)]
        assert scored == ["00001_top.png", "00002_side.png", "part7.png"]
    assert sorted(p.name for p in camera.iterdir() if not p.name.startswith(".")) == [
        "00000_00001_top.png", "00001_00002_side.png", "00001_top.png", "00002_part7.png", "00002_side.png",
        "part7.png"]


def test_overwrite_refuses_to_replace_a_file_that_is_not_an_earlier_map(predict, tiny_run, awkward, tmp_path,
                                                                        capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "00000_rgba.png").write_bytes(b"the user's own file")
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", maps, "--overwrite") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"realnet: error: --save-maps {maps}: 00000_rgba.png is not a map an "
                                              "earlier predict wrote; move it, or choose another folder"]
    assert (maps / "00000_rgba.png").read_bytes() == b"the user's own file"


def test_a_refused_overwrite_deletes_no_earlier_map(predict, tiny_run, awkward, tmp_path, capsys):
    """Regression: --overwrite deleted the earlier maps and their manifest before it found a user's
    file under one of the new names and refused, so the refusal still lost the earlier maps."""
    maps = tmp_path / "maps"
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", maps) == 0
    before = {p.name: p.read_bytes() for p in maps.iterdir()}
    (maps / "00000_rgba_overlay.png").write_bytes(b"the user's own file")
    capsys.readouterr()
    assert predict(tiny_run[1], awkward["rgba"], "--save-maps", maps, "--overwrite", "--overlays") == 2
    assert "00000_rgba_overlay.png is not a map an earlier predict wrote" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in maps.iterdir() if p.name != "00000_rgba_overlay.png"} == before


def test_a_maps_folder_created_for_no_map_is_removed_with_the_folders_above_it(predict, tiny_run, awkward,
                                                                              tmp_path, capsys):
    """Regression: only the innermost of the folders --save-maps created was removed when no image
    could be read, so `nest/a` stayed behind."""
    assert predict(tiny_run[1], awkward["truncated"], "--save-maps", tmp_path / "nest" / "a" / "maps") == 1
    assert not (tmp_path / "nest").exists()


def test_the_printed_score_and_threshold_are_the_ones_compared(predict, tiny_run, awkward, tmp_path, capsys):
    """Regression: score and threshold were printed rounded to six decimals while is_anomalous compared
    the exact values, so a line could read score == threshold and is_anomalous true."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    assert predict(run, awkward["rgba"]) == 0
    score = json_lines(capsys.readouterr().out)[0]["score"]
    meta = json.loads((run / "model.json").read_text())
    meta["threshold"] = score - 1e-9  # below the score, equal to it at six decimals
    (run / "model.json").write_text(json.dumps(meta))
    assert predict(run, awkward["rgba"]) == 0
    (result,) = json_lines(capsys.readouterr().out)
    assert result["is_anomalous"] and result["score"] > result["threshold"]


def test_a_subfolder_that_cannot_be_listed_is_named_and_fails_the_run(predict, tiny_run, awkward, tmp_path,
                                                                      capsys, monkeypatch):
    """Regression: a subfolder without read permission was skipped in silence: its images were never
    scored and the exit code was 0."""
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    shutil.copy(awkward["gray"], inputs / "a.png")
    shutil.copy(awkward["gray"], inputs / "sub" / "b.png")
    refuse_listing(monkeypatch, inputs / "sub")
    assert predict(tiny_run[1], inputs) == 1
    out, err = capsys.readouterr()
    assert [Path(r["path"]).name for r in json_lines(out)] == ["a.png"]
    assert err.splitlines() == [f"realnet: error: {inputs / 'sub'}: cannot list this folder (Permission denied); "
                                "its images were not scored"]
    refuse_listing(monkeypatch, inputs)
    assert predict(tiny_run[1], inputs) == 2
    assert "cannot list this folder (Permission denied)" in capsys.readouterr().err


def test_a_run_whose_weights_hold_nan_is_refused_by_predict_and_test(predict, tiny_run, awkward, tmp_path, capsys):
    """Regression: predict printed `"score": NaN` (not JSON) with is_anomalous false, so every part
    passed, and exited 0; test refused only later, naming an image."""
    from safetensors.torch import load_file, save_file

    run_dir = tmp_path / "nan_run"
    shutil.copytree(tiny_run[1], run_dir)
    weights = run_dir / "model.safetensors"
    state = load_file(weights)
    name = next(k for k in sorted(state) if k.startswith("discriminator.") and state[k].is_floating_point())
    state[name].view(-1)[0] = float("nan")
    save_file(state, weights)
    expected = (f"realnet: error: {weights}: 1 tensors hold NaN or infinite values ('{name}' first): the weights "
                "are broken, e.g. by a diverged fit; fit the run again")
    assert predict(run_dir, awkward["gray"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [expected]
    assert main(["test", "--run", str(run_dir), "--data", str(tiny_run[0])]) == 2
    assert capsys.readouterr().err.splitlines() == [expected]


def test_an_image_whose_score_is_not_finite_is_an_error_line_and_the_rest_are_scored(predict, tiny_run, awkward,
                                                                                    monkeypatch, capsys):
    from realnet.model.realnet import RealNet

    scored = RealNet.predict

    def first_score_nan(self, images):
        maps, scores = scored(self, images)
        return maps, torch.where(torch.arange(len(scores)) == 0, torch.tensor(float("nan")), scores)

    monkeypatch.setattr(RealNet, "predict", first_score_nan)
    assert predict(tiny_run[1], "--batch-size", 2, awkward["gray"], awkward["rgba"]) == 1
    out, err = capsys.readouterr()
    assert [r["path"] for r in json_lines(out)] == [str(awkward["rgba"])]
    assert err.splitlines() == [f"realnet: error: {awkward['gray']}: the detector's score for it is not finite (nan); "
                                "it was not scored"]


def test_broken_links_in_a_folder_are_named_not_skipped(predict, tiny_run, tmp_path, capsys):
    """Regression: a link to an image or folder on an unmounted share was left out in silence, exit 0."""
    Image.fromarray(normal_image(np.random.default_rng(1), (40, 40))).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "unmounted" / "b.png")
    (tmp_path / "line3").symlink_to(tmp_path / "unmounted" / "line3")
    assert predict(tiny_run[1], tmp_path) == 1
    out, err = capsys.readouterr()
    assert [r["path"] for r in json_lines(out)] == [str(tmp_path / "a.png")]
    assert sorted(err.splitlines()) == [
        f"realnet: error: {tmp_path / 'b.png'}: broken symbolic link",
        f"realnet: error: {tmp_path / 'line3'}: cannot list this folder (broken symbolic link); its images were not "
        "scored"]


def test_an_earlier_predicts_maps_folder_inside_the_inputs_is_not_scored(predict, tiny_run, tmp_path, capsys):
    """Regression: only the current --save-maps folder was left out, so a second predict into
    parts/maps_v2 scored parts/maps_v1's maps and overlays as parts."""
    parts = tmp_path / "parts"
    parts.mkdir()
    Image.fromarray(normal_image(np.random.default_rng(1), (40, 40))).save(parts / "a.png")
    assert predict(tiny_run[1], parts, "--save-maps", parts / "maps_v1", "--overlays") == 0
    capsys.readouterr()
    assert predict(tiny_run[1], parts, "--save-maps", parts / "maps_v2") == 0
    assert [r["path"] for r in json_lines(capsys.readouterr().out)] == [str(parts / "a.png")]


def test_maps_written_beside_the_parts_leave_the_parts_scored(predict, tiny_run, tmp_path, capsys):
    """Regression: a subfolder holding an earlier predict's maps manifest was dropped whole, so the
    parts beside the maps were never scored (exit 0); at the top level the maps were scored as parts."""
    line = tmp_path / "line"
    for folder, name, seed in (("cam1", "p1.png", 1), ("cam1", "p2.png", 2), ("cam2", "p3.png", 3)):
        (line / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(normal_image(np.random.default_rng(seed), (40, 40))).save(line / folder / name)
    assert predict(tiny_run[1], line / "cam1", "--save-maps", line / "cam1", "--overwrite", "--overlays") == 0
    capsys.readouterr()
    parts = [str(line / "cam1" / "p1.png"), str(line / "cam1" / "p2.png"), str(line / "cam2" / "p3.png")]
    assert predict(tiny_run[1], line) == 0
    assert [r["path"] for r in json_lines(capsys.readouterr().out)] == parts
    assert predict(tiny_run[1], line / "cam1") == 0
    assert [r["path"] for r in json_lines(capsys.readouterr().out)] == parts[:2]


def test_threshold_sets_the_operating_point_and_keeps_the_heatmap_scale(predict, tiny_run, awkward, tmp_path, capsys):
    """--threshold replaces the run's calibrated threshold for is_anomalous only; NaN is refused."""
    assert predict(tiny_run[1], awkward["gray"], "--save-maps", tmp_path / "run_threshold") == 0
    (scored,) = json_lines(capsys.readouterr().out)
    for threshold, anomalous in ((scored["score"] - 1e-6, True), (scored["score"] + 1e-6, False)):
        assert predict(tiny_run[1], awkward["gray"], "--threshold", repr(threshold),
                       "--save-maps", tmp_path / f"at_{anomalous}") == 0
        (result,) = json_lines(capsys.readouterr().out)
        assert (result["score"], result["threshold"], result["is_anomalous"]) == (scored["score"], threshold, anomalous)
        saved = (tmp_path / f"at_{anomalous}" / Path(result["map"]).name).read_bytes()
        assert saved == Path(scored["map"]).read_bytes()
    with pytest.raises(SystemExit):
        predict(tiny_run[1], awkward["gray"], "--threshold", "nan")
    assert "--threshold: must be a finite number, got nan" in capsys.readouterr().err
