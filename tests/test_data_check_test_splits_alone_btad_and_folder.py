"""`data check` takes a BTAD or MPDD tree without its training folder as a test split (as
for MVTec), and a folder dataset's test split alone gets no "no training folder" note."""

from __future__ import annotations

import json
import shutil

from dataset_fixtures import make_btad_tree, make_folder_tree

from realnet.cli.main import main


def test_data_check_takes_a_btad_tree_without_train_as_a_test_split(tmp_path, capsys):
    root = make_btad_tree(tmp_path, categories=("03",))
    shutil.rmtree(root / "BTech_Dataset_transformed" / "03" / "train")
    assert main(["data", "check", "--data", str(root), "--category", "03", "--dataset", "btad", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["counts"] == {"test": {"good": 2, "ko": 2}} and report["problems"] == []
    assert captured.err == "realnet: note: 03 has no training folder; checking its test split alone\n"


def test_a_folder_test_split_alone_is_checked_without_a_note(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", n_normal=3, n_abnormal=2, size=(32, 32))
    assert main(["data", "check", "--dataset", "folder", "--data", str(root), "--normal-test-dir", "normal",
                 "--abnormal-dir", "abnormal", "--mask-dir", "masks"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "no problems" in captured.out


def test_data_check_takes_an_mpdd_tree_without_train_as_a_test_split(tmp_path, capsys):
    """Regression: only mvtec and btad were looked at, so `--dataset mpdd` refused the test/ +
    ground_truth/ tree that `test --data` reads."""
    from dataset_fixtures import make_mvtec_tree

    root = make_mvtec_tree(tmp_path / "mpdd", category="bracket_black", n_test_good=2, defects={"hole": 2})
    shutil.rmtree(root / "bracket_black" / "train")
    assert main(["data", "check", "--data", str(root), "--category", "bracket_black", "--dataset", "mpdd",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["counts"] == {"test": {"good": 2, "hole": 2}}
    assert captured.err == "realnet: note: bracket_black has no training folder; checking its test split alone\n"
