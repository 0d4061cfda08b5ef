from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import realnet
from dataset_fixtures import make_btad_tree, make_folder_tree, make_mvtec_tree, make_visa_tree
from realnet.cli.main import main
from realnet.data.layouts import find_orphan_masks, load_dataset
from realnet.data.validate import check_dataset
from realnet.errors import BadFileError


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    if path.is_symlink():
        path.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- check_dataset -------------------------------------------------------------------------


def test_clean_dataset_counts_and_no_problems(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=3, n_test_good=2, defects={"scratch": 2, "hole": 1})
    records = load_dataset(root, "widget")
    report = check_dataset(records, orphan_masks=find_orphan_masks(root, "widget"))
    assert report.counts == {"train": {"good": 3}, "test": {"good": 2, "hole": 1, "scratch": 2}}
    assert report.mask_counts == {
        "train": {"good": 0}, "test": {"good": 0, "hole": 1, "scratch": 2}
    }
    assert report.anomalous_counts == {"hole": 1, "scratch": 2}
    assert report.anomalous_with_mask == 3
    assert report.n_images == 8
    assert report.problems == [] and report.skipped == [] and report.empty_masks == []
    assert report.kept == records
    text = report.format()
    assert text.splitlines()[0] == "widget: 8 images"
    assert "anomalous test images: 3 over 2 defect type(s), 3 with a mask" in text
    assert text.endswith("no problems")
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["counts"]["test"]["scratch"] == 2 and as_json["problems"] == []


def test_missing_masks_orphans_and_size_mismatch_are_problems(tmp_path):
    root = make_mvtec_tree(tmp_path, defects={"scratch": 3})
    truth = root / "widget" / "ground_truth" / "scratch"
    (truth / "000_mask.png").unlink()
    shutil.copy(truth / "001_mask.png", truth / "777_mask.png")
    Image.new("L", (10, 12), 255).save(truth / "002_mask.png")
    records = load_dataset(root, "widget")
    report = check_dataset(records, orphan_masks=find_orphan_masks(root, "widget"))
    test_dir = root / "widget" / "test" / "scratch"
    assert report.missing_masks == [test_dir / "000.png"]
    assert report.orphan_masks == [truth / "777_mask.png"]
    assert len(report.size_mismatches) == 1
    mismatch = report.size_mismatches[0]
    assert (mismatch.mask, mismatch.mask_size, mismatch.image_size) == (
        truth / "002_mask.png", (10, 12), (40, 32)
    )
    assert report.problems == [
        f"anomalous image without mask: {test_dir / '000.png'}",
        f"mask without image: {truth / '777_mask.png'}",
        f"size mismatch: mask {truth / '002_mask.png'} is 10x12, "
        f"image {test_dir / '002.png'} is 40x32",
    ]
    assert test_dir / "002.png" not in [r.image for r in report.kept]
    assert report.counts["test"]["scratch"] == 3
    assert "3 problem(s):" in report.format()


def test_empty_mask_is_a_note_not_a_problem(tmp_path):
    root = make_mvtec_tree(tmp_path, defects={"scratch": 1})
    mask = root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    Image.new("L", (40, 32), 0).save(mask)
    report = check_dataset(load_dataset(root, "widget"))
    assert report.empty_masks == [root / "widget" / "test" / "scratch" / "000.png"]
    assert report.problems == []
    assert "note: 1 anomalous image(s) have an empty mask" in report.format()



def test_shared_masks_masked_normals_split_leaks_and_too_few_training_images_are_problems(tmp_path):
    """Regression: each of these passed as "no problems" (found by review): two test images with
    one stem sharing a mask, a normal image whose mask marks defects (a VisA split row), the same
    image in train and test, and a category with fewer training images than fit needs."""
    import dataclasses

    root = make_mvtec_tree(tmp_path, n_train=3, n_test_good=1, defects={"crack": 1})
    category = root / "widget"
    shutil.copy(category / "test" / "crack" / "000.png", category / "test" / "crack" / "000.bmp")
    records = load_dataset(root, "widget")
    good = next(r for r in records if r.split == "test" and r.defect == "good")
    crack_mask = next(r.mask for r in records if r.defect == "crack")
    training = [r for r in records if r.split == "train"]
    leaked = dataclasses.replace(training[0], split="test")
    marked = shutil.copy(crack_mask, tmp_path / "good_000_mask.png")
    records = [r for r in records if r is not good] + [dataclasses.replace(good, mask=Path(marked)), leaked]
    report = check_dataset(records)
    crack_images = sorted(r.image for r in records if r.defect == "crack")
    assert report.shared_masks == {crack_mask: crack_images}
    assert report.normal_with_defect_mask == [good.image]
    assert report.in_both_splits == [training[0].image]
    assert report.too_few_training_images == {}
    assert len(report.problems) == 3 and report.to_dict()["in_both_splits"] == [str(training[0].image)]

    few = check_dataset([r for r in records if r.split == "test"] + training[:1])
    assert few.too_few_training_images == {"widget": 1}
    assert "category widget: 1 readable training image(s); fit needs at least 2" in few.problems

def test_first_bad_file_in_record_order_raises(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=6)
    train = root / "widget" / "train" / "good"
    _truncate(train / "004.png")
    _truncate(train / "002.png")
    with pytest.raises(BadFileError) as caught:
        check_dataset(load_dataset(root, "widget"), workers=3)
    assert caught.value.path == train / "002.png"


def test_skip_bad_collects_bad_images_and_masks(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=4, defects={"scratch": 2})
    bad_image = _truncate(root / "widget" / "train" / "good" / "001.png")
    bad_mask = root / "widget" / "ground_truth" / "scratch" / "001_mask.png"
    bad_mask.write_text("not a png")
    records = load_dataset(root, "widget")
    report = check_dataset(records, skip_bad=True)
    assert [s.path for s in report.skipped] == [bad_image, bad_mask]
    assert "truncated" in report.skipped[0].reason
    assert report.counts == {"train": {"good": 3}, "test": {"good": 2, "scratch": 1}}
    assert len(report.kept) == len(records) - 2
    assert report.problems == []
    assert "skipped 2 file(s):" in report.format()


def test_long_lists_are_shortened_in_text_only(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=4, n_abnormal=25, size=(8, 8))
    records = load_dataset(root, "custom", "folder", normal_dir="normal", abnormal_dir="abnormal")
    report = check_dataset(records)
    assert len(report.missing_masks) == 25
    assert "... and 5 more" in report.format()
    assert len(report.to_dict()["missing_masks"]) == 25


# --- CLI -----------------------------------------------------------------------------------


def test_cli_clean_tree_exits_0(tmp_path, capsys):
    root = make_mvtec_tree(tmp_path)
    code, out, err = _run(capsys, "--data", root, "--category", "widget")
    assert code == 0 and err == ""
    assert re.search(r"^  train  good +4 +0$", out, re.MULTILINE)
    assert re.search(r"^  test   scratch +2 +2$", out, re.MULTILINE)
    assert out.rstrip().endswith("no problems")


def test_cli_json(tmp_path, capsys):
    root = make_btad_tree(tmp_path, categories=("03",))
    code, out, _ = _run(capsys, "--data", root, "--category", "03", "--dataset", "btad", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["counts"] == {"train": {"good": 3}, "test": {"good": 2, "ko": 2}}
    assert report["anomalous_with_mask"] == 2


def test_cli_visa(tmp_path, capsys):
    root = make_visa_tree(tmp_path)
    code, out, _ = _run(capsys, "--data", root, "--category", "candle", "--dataset", "visa")
    assert code == 0
    assert "anomalous test images: 2 over 1 defect type(s), 2 with a mask" in out


def test_cli_problems_exit_1(tmp_path, capsys):
    root = make_mvtec_tree(tmp_path)
    (root / "widget" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    code, out, _ = _run(capsys, "--data", root, "--category", "widget")
    assert code == 1
    assert "anomalous image without mask:" in out


def test_cli_bad_file_one_line_and_skip_bad(tmp_path, capsys):
    root = make_mvtec_tree(tmp_path, image_ext=".jpg")
    bad = _truncate(root / "widget" / "test" / "good" / "001.jpg")
    code, out, err = _run(capsys, "--data", root, "--category", "widget")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"realnet: error: {bad}: ")
    code, out, err = _run(capsys, "--data", root, "--category", "widget", "--skip-bad")
    # regression: this exited 0 with "no problems", so `data check --skip-bad && fit` went on to a
    # fit that failed on the same file
    assert code == 1 and err == ""
    assert f"skipped 1 file(s):\n  {bad}: " in out and "no problems" not in out


def test_cli_folder_dataset(tmp_path, capsys):
    root = make_folder_tree(tmp_path, n_normal=5, n_abnormal=2)
    code, out, _ = _run(capsys, "--data", root, "--dataset", "folder", "--normal-dir", "normal",
                        "--abnormal-dir", "abnormal", "--mask-dir", "masks", "--test-ratio", "0.4",
                        "--json")
    assert code == 0
    report = json.loads(out)
    assert report["categories"] == ["custom"]
    assert report["counts"] == {"train": {"good": 3}, "test": {"good": 2, "anomaly": 2}}


def test_cli_folder_test_split_alone_is_not_short_of_training_images(tmp_path, capsys):
    """A test split of new images (no --normal-dir, as `realnet test` takes it) has no training
    split by design: regression, it exited 1 with "0 readable training image(s); fit needs at least 2"."""
    root = make_folder_tree(tmp_path, n_normal=0, n_abnormal=2, n_normal_test=2)
    code, out, _ = _run(capsys, "--data", root, "--dataset", "folder", "--normal-test-dir", "normal_test",
                        "--abnormal-dir", "abnormal", "--mask-dir", "masks", "--json")
    report = json.loads(out)
    assert report["counts"] == {"test": {"good": 2, "anomaly": 2}}
    assert report["problems"] == [] and code == 0
    # with --normal-dir a training split is wanted, and a short one is still a problem
    (root / "normal").mkdir()
    Image.new("RGB", (32, 32)).save(root / "normal" / "only.png")
    code, out, _ = _run(capsys, "--data", root, "--dataset", "folder", "--normal-dir", "normal",
                        "--normal-test-dir", "normal_test", "--json")
    assert code == 1 and json.loads(out)["too_few_training_images"] == {"custom": 1}


def test_cli_option_errors(tmp_path, capsys):
    code, _, err = _run(capsys, "--data", tmp_path, "--category", "x", "--normal-dir", "n")
    assert code == 2 and err == "realnet: error: --normal-dir only apply to --dataset folder\n"
    code, _, err = _run(capsys, "--data", tmp_path)
    assert code == 2 and "needs --data and --category" in err
    code, _, err = _run(capsys, "--data", tmp_path / "absent", "--category", "x")
    assert code == 2 and err == f"realnet: error: data root {tmp_path / 'absent'} not found\n"


# --- real data -----------------------------------------------------------------------------

MAGNETIC_TILE_DEFECTS = {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}


@pytest.mark.realdata
def test_magnetic_tile_check(shared_data, capsys):
    code, out, err = _run(capsys, "--data", shared_data, "--category", "magnetic_tile", "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["counts"] == {
        "train": {"good": 702}, "test": {"good": 250, **MAGNETIC_TILE_DEFECTS}
    }
    assert report["defect_types"] == MAGNETIC_TILE_DEFECTS
    assert report["anomalous_images"] == report["anomalous_with_mask"] == 392
    assert report["problems"] == [] and report["skipped"] == []


@pytest.mark.realdata
def test_magnetic_tile_with_one_truncated_jpeg(shared_data, tmp_path, capsys):
    source = shared_data / "magnetic_tile"
    copy = tmp_path / "magnetic_tile"
    for folder, _, files in os.walk(source):
        target = copy / Path(folder).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / name).symlink_to(Path(folder) / name)
    bad = _truncate(sorted((copy / "train" / "good").iterdir())[0])
    assert bad.suffix == ".jpg"

    code, out, err = _run(capsys, "--data", tmp_path, "--category", "magnetic_tile")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"realnet: error: {bad}: ")

    code, out, err = _run(capsys, "--data", tmp_path, "--category", "magnetic_tile", "--skip-bad")
    assert code == 1  # the skipped file would stop a fit run without --skip-bad
    assert f"skipped 1 file(s):\n  {bad}: " in out
    assert re.search(r"^  train  good +701 +0$", out, re.MULTILINE)
    assert "no problems" not in out


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """Regression: `realnet data check ... --json | head -1` printed "error: Broken pipe" and
    exited 2, as for an input error; now it stops silently with the SIGPIPE status. Python's
    default buffered stdout too: the output sat in the buffer until the interpreter's last flush,
    which failed outside main()'s handlers (exit 120, "Exception ignored ... BrokenPipeError")."""
    import signal
    import subprocess
    import sys

    root = make_mvtec_tree(tmp_path, "widget", n_train=3)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(Path(realnet.__file__).resolve().parents[1])
    process = subprocess.Popen([sys.executable, "-m", "realnet", "data", "check", "--data", str(root), "--category",
                                "widget", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # the reader is gone before the first line
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE
    assert error == ""


def test_debug_shows_the_traceback_and_keeps_the_input_error_status(tmp_path, capsys):
    assert main(["--debug", "data", "check", "--data", str(tmp_path / "nowhere"), "--category", "widget"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" in error and error.rstrip().endswith(f"realnet: error: data root {tmp_path / 'nowhere'} not found")


def test_a_file_name_that_is_not_utf8_is_reported_on_a_strict_utf8_stdout(tmp_path):
    """Regression: an orphan mask named in a legacy encoding crashed the report with a
    UnicodeEncodeError traceback where stdout encodes strictly (PYTHONIOENCODING=utf-8)."""
    import subprocess
    import sys

    root = make_mvtec_tree(tmp_path, "widget", n_train=3, defects={"scratch": 1})
    mask = next((root / "widget" / "ground_truth" / "scratch").iterdir())
    os.rename(os.fsencode(mask), os.fsencode(mask.parent) + b"/\xb2\xe2_mask.png")  # an orphan now
    env = {**os.environ, "PYTHONPATH": str(Path(realnet.__file__).resolve().parents[1]), "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "realnet", "data", "check", "--data", str(root), "--category",
                           "widget"], capture_output=True, env=env, timeout=120)
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert b"\\xb2\\xe2_mask.png" in done.stdout


def test_skipped_files_are_listed_in_record_order_whichever_thread_finishes_first(tmp_path, monkeypatch):
    """Regression: the reader threads appended bad files as they finished, so metrics.json's
    skipped_images and the 'skipped' lines came in a different order on every run."""
    import time

    from realnet.engine import runtime
    from realnet.errors import BadFileError

    root = make_mvtec_tree(tmp_path, "widget", n_train=6, size=(32, 32))
    records = [r for r in load_dataset(root, "widget") if r.split == "train"]

    def slow_early_files_fail(record, size):
        index = records.index(record)
        time.sleep(0.05 * (len(records) - index))  # the first records finish last
        raise BadFileError(record.image, "unreadable")

    monkeypatch.setattr(runtime, "load_sample", slow_early_files_fail)
    *_, skipped = runtime.load_samples(records, 32, skip_bad=True, progress=False)
    assert [error.path for error in skipped] == [r.image for r in records]
