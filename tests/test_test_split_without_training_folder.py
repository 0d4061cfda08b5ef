"""`realnet test` on a new batch laid out as test/ and ground_truth/ alone: the training folder is
never read for a test, so its absence is no error (it was: "training folder ... not found");
`fit` and the layouts' full scan still require it."""

from __future__ import annotations

import json
import shutil

import pytest

from realnet.cli.main import main
from realnet.data.layouts import load_dataset
from realnet.errors import RealnetError


def test_a_tree_without_a_training_folder_is_tested_as_the_full_tree_is(tiny_run, tmp_path, capsys):
    data_root, run_dir = tiny_run
    batch = tmp_path / "batch"
    shutil.copytree(data_root, batch)
    shutil.rmtree(batch / "widget" / "train")
    scores = {}
    for name, root in (("full", data_root), ("batch", batch)):
        run = shutil.copytree(run_dir, tmp_path / f"run_{name}")
        assert main(["test", "--run", str(run), "--data", str(root), "--category", "widget", "--panels", "0"]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        scores[name] = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "n_images")}
    capsys.readouterr()
    assert scores["batch"] == scores["full"]

    assert [r.image.name for r in load_dataset(batch, "widget", test_only=True)] == [
        r.image.name for r in load_dataset(data_root, "widget") if r.split == "test"]
    with pytest.raises(RealnetError, match="training folder .* not found"):
        load_dataset(batch, "widget")
