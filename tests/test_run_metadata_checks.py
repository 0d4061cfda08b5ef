"""model.json fields that `test` and `predict` rely on are checked when the run is loaded: a run of
another checkpoint format is refused by name, and a field `test` writes into metrics.json that is
missing is a one-line error (or taken from the config), never a traceback after scoring."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dataset_fixtures import normal_image
from realnet.cli.main import main


def _edited_run(tiny_run, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    meta = json.loads((run / "model.json").read_text())
    edit(meta)
    (run / "model.json").write_text(json.dumps(meta))
    return run


def _predict_one_part(run, tmp_path, capsys) -> tuple[int, str, str]:
    image = tmp_path / "part.png"
    Image.fromarray(normal_image(np.random.default_rng(0), (80, 96))).save(image)
    code = main(["predict", "--run", str(run), str(image)])
    return (code, *capsys.readouterr())


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_a_run_of_another_checkpoint_format_is_refused_by_name(tiny_run, tmp_path, capsys, version):
    run = _edited_run(tiny_run, tmp_path, lambda meta: meta.update(format_version=version))
    code, out, err = _predict_one_part(run, tmp_path, capsys)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"realnet: error: {run / 'model.json'}: unsupported checkpoint format {version}"]


@pytest.mark.parametrize("threshold", [True, False])
def test_a_threshold_that_is_a_boolean_is_refused(tiny_run, tmp_path, capsys, threshold):
    """JSON true is not a number of the score's scale (Python would take it for 1 and pass every part)."""
    run = _edited_run(tiny_run, tmp_path, lambda meta: meta.update(threshold=threshold))
    code, out, err = _predict_one_part(run, tmp_path, capsys)
    assert code == 2
    assert out == "" and len(err.splitlines()) == 1 and "threshold" in err and "malformed run metadata" in err


def test_weights_that_lack_a_tensor_of_the_model_are_refused(tiny_run, tmp_path, capsys):
    """A detector tensor missing from model.safetensors would keep its random initial values and
    score every part with them."""
    from safetensors.torch import load_file, save_file

    run = _edited_run(tiny_run, tmp_path, lambda meta: None)
    weights = run / "model.safetensors"
    state = load_file(weights)
    name = next(k for k in sorted(state) if k.startswith("discriminator.") and state[k].is_floating_point())
    del state[name]
    save_file(state, weights)
    code, out, err = _predict_one_part(run, tmp_path, capsys)
    assert code == 2
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"realnet: error: {weights}: does not match the model") and repr(name) in err


def test_a_run_without_a_preset_is_refused_in_one_line_before_scoring(tiny_run, tmp_path, capsys):
    """metrics.json records the run's preset; a model.json without one made `test` score the whole
    split and then end in a KeyError traceback (found by a mutation audit)."""
    run = _edited_run(tiny_run, tmp_path, lambda meta: meta.pop("preset"))
    assert main(["test", "--run", str(run), "--data", str(tiny_run[0]), "--category", "widget"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "preset" in err and "malformed run metadata" in err
    assert not (run / "metrics.json").exists()


def test_a_backbone_that_hashes_otherwise_than_recorded_is_refused_by_test_and_predict(tiny_run, tmp_path, capsys):
    """The backbone is never stored; it is re-created and must hash to the run's sha256, else the
    detector scores features it was never trained on."""
    run = _edited_run(tiny_run, tmp_path, lambda meta: meta["backbone"].update(sha256="0" * 64))
    code, out, err = _predict_one_part(run, tmp_path, capsys)
    assert code == 2
    assert out == "" and len(err.splitlines()) == 1 and "backbone weights differ" in err and "000000000000" in err
    assert main(["test", "--run", str(run), "--data", str(tiny_run[0]), "--category", "widget"]) == 2
    assert "backbone weights differ" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()


def test_a_run_whose_data_record_lacks_the_dataset_is_one_line(tiny_run, tmp_path, capsys):
    """`test` reads data.dataset to find the test split; without it, a KeyError traceback."""
    run = _edited_run(tiny_run, tmp_path, lambda meta: meta["data"].pop("dataset"))
    assert main(["test", "--run", str(run), "--data", str(tiny_run[0]), "--category", "widget"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "data.dataset" in err and "malformed run metadata" in err


def test_a_resume_state_lacking_one_of_its_entries_is_refused(tmp_path):
    """Each of resume.pt's entries is needed to continue; a state holding only some of them (a foreign or
    damaged file) is refused when read, not a KeyError later in the fit."""
    import torch

    from realnet.engine import checkpoint
    from realnet.errors import BadFileError

    for left_out in checkpoint.RESUME_KEYS:
        torch.save({key: 1 for key in checkpoint.RESUME_KEYS if key != left_out}, tmp_path / checkpoint.RESUME_STATE)
        with pytest.raises(BadFileError, match="unreadable resume state"):
            checkpoint.load_resume_state(tmp_path)
    torch.save({key: 1 for key in checkpoint.RESUME_KEYS}, tmp_path / checkpoint.RESUME_STATE)
    assert set(checkpoint.load_resume_state(tmp_path)) == set(checkpoint.RESUME_KEYS)


@pytest.mark.parametrize("edit, field", [
    (lambda meta: meta["config"]["train"].pop("image_size"), "config.train.image_size"),
    (lambda meta: meta["config"].pop("train"), "config.train"),
])
def test_a_run_without_its_image_size_is_one_line_for_test_predict_and_export(tiny_run, tmp_path, capsys, edit, field):
    """predict, test and export read the size from model.json's raw config: a KeyError traceback."""
    run = _edited_run(tiny_run, tmp_path, edit)
    code, out, err = _predict_one_part(run, tmp_path, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and field in err and "malformed run metadata" in err
    assert main(["test", "--run", str(run), "--data", str(tiny_run[0]), "--category", "widget"]) == 2
    assert "malformed run metadata" in capsys.readouterr().err
