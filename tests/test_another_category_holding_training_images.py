"""A test of another category of the run's own data root is not the run's own split: a copy of a
training image in it is refused, as for any test split that is not the dataset's own one."""

import json
import shutil

from realnet.cli.main import main


def test_another_category_of_the_runs_root_holding_a_training_image_is_refused(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    root = tmp_path / "data"
    shutil.copytree(data, root)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    assert meta["fit"].get("training_image_sha256")  # found by content
    meta["data"]["root"] = str(root.resolve())  # the run's data, moved: the same root as tested below
    (copy / "model.json").write_text(json.dumps(meta))
    other = root / "gadget"
    shutil.copytree(root / "widget", other)  # its test split holds the widget's test images ...
    training = sorted((root / "widget" / "train" / "good").iterdir())[0]
    shutil.copy(training, other / "test" / "good" / "copy.png")  # ... and a copy of a training image
    capsys.readouterr()
    assert main(["test", "--run", str(copy), "--category", "gadget", "--panels", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("realnet: error: 1 of the test images are normal training images of this run")
    assert not (copy / "metrics.json").exists()
