"""`realnet bench`: a resume reruns every cell that is not complete, and --set beats the suite's
own `set` (found by mutation testing; no fit runs here: fit_and_test is stubbed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bench import fixture_data, suite_dict  # noqa: F401  (fixture_data: a pytest fixture)
from realnet.bench import runner
from realnet.bench.runner import BenchRequest, cell_dir, run_suite
from realnet.bench.suite import expand, parse_suite


def _leave(folder: Path, cell, data_root: Path, status: str, metrics: bool) -> None:
    """A cell folder as an earlier attempt left it: its cell.json, and metrics.json when that attempt
    got as far as writing one."""
    folder.mkdir(parents=True)
    figures = {"image_auroc": 0.5, "pixel_auroc": 0.5, "aupro": 0.5}
    if metrics:
        (folder / "metrics.json").write_text(json.dumps(figures))
    (folder / "cell.json").write_text(json.dumps({
        "status": status, "config": cell.config, "metrics": figures, "error": "boom",
        "data_root": str(data_root), "inputs": {"data_root": str(Path(data_root).resolve())}}))


def test_a_resume_reruns_every_cell_but_the_complete_ones(tmp_path, fixture_data, monkeypatch):
    """Only status 'complete' with its metrics.json keeps a cell, whatever files an earlier attempt
    left (an attempt that failed or was stopped after the evaluation has a metrics.json too)."""
    suite = parse_suite(suite_dict([{"name": "done"}, {"name": "failed", "set": {"rrs.ratio": 0.5}},
                                    {"name": "stopped", "set": {"rrs.ratio": 0.25}},
                                    {"name": "killed", "set": {"rrs.ratio": 1.0}},
                                    {"name": "lost", "set": {"rrs.ratio": 0.75}}]), "s.yaml")
    cells = {cell.variant: cell for cell in expand(suite)}
    out = tmp_path / "out"
    _leave(cell_dir(out, suite, cells["done"]), cells["done"], fixture_data, "complete", metrics=True)
    _leave(cell_dir(out, suite, cells["failed"]), cells["failed"], fixture_data, "failed", metrics=True)
    _leave(cell_dir(out, suite, cells["stopped"]), cells["stopped"], fixture_data, "interrupted", metrics=True)
    _leave(cell_dir(out, suite, cells["killed"]), cells["killed"], fixture_data, "running", metrics=True)
    _leave(cell_dir(out, suite, cells["lost"]), cells["lost"], fixture_data, "complete", metrics=False)
    ran = []

    def fit_and_test(cell, folder, data_root, folders, request):
        ran.append(cell.variant)
        metrics = {"image_auroc": 0.9, "pixel_auroc": 0.9, "aupro": 0.9}
        (folder / "metrics.json").write_text(json.dumps(metrics))  # as `realnet test` writes it
        return {"metrics": metrics, "device": "cpu",
                "fit_wall_s": 1.0, "fit_steps": 1, "test_wall_s": 1.0, "backbone_weights_sha256": "x"}

    monkeypatch.setattr(runner, "fit_and_test", fit_and_test)
    statuses, _ = run_suite(BenchRequest(suite=suite, out=out, data=fixture_data, device="cpu", progress=False))
    assert sorted(ran) == ["failed", "killed", "lost", "stopped"]
    assert {cell.variant: statuses[cell.id]["status"] for cell in cells.values()} == dict.fromkeys(cells, "complete")
    assert statuses[cells["done"].id]["metrics"]["image_auroc"] == 0.5  # kept, not rerun


def test_a_command_line_set_replaces_the_suites_own_set_for_the_same_key():
    """`bench --suite cpu-real --set train.steps=100` runs 100 steps, not the suite's own 250."""
    suite = parse_suite(suite_dict([{"name": "reference"}], set={"train.steps": 5, "train.batch_size": 2}), "s.yaml")
    (cell,) = expand(suite.with_overrides([("train.steps", 3)]))
    assert cell.config["train"]["steps"] == 3 and cell.config["train"]["batch_size"] == 2


def test_a_cell_runs_with_its_sia_templates_filled_and_only_its_own_folders(tmp_path):
    """Tab. 5b's "{sia}/s0.1" becomes <--sia>/s0.1; --sia reaches the cells that draw from sia and
    no other (a cut-paste cell must resume without it), as --dtd does."""
    from realnet.bench.runner import run_config

    suite = parse_suite(suite_dict([
        {"name": "cut", "set": {"synthesis.sources": {"cutpaste": 1.0}}},
        {"name": "bank", "set": {"synthesis.sources": {"sia": 1.0}}},
        {"name": "s0.1", "set": {"synthesis.sources": {"sia": 1.0}, "synthesis.sia_root": "{sia}/s0.1"}},
    ]), "s.yaml")
    cut, bank, strength = expand(suite)
    folders = {"sia": str(tmp_path / "banks"), "dtd": str(tmp_path / "dtd")}
    assert run_config(cut, folders).synthesis.sia_root is None and run_config(cut, folders).synthesis.dtd_root is None
    assert run_config(bank, folders).synthesis.sia_root == str(tmp_path / "banks")
    assert run_config(strength, folders).synthesis.sia_root == f"{tmp_path / 'banks'}/s0.1"
    assert strength.config["synthesis"]["sia_root"] == "{sia}/s0.1"  # the identity keeps the template


def test_a_folder_fixed_in_the_suite_is_not_replaced_by_the_command_line(tmp_path):
    """A variant that names its own DTD / SIA folder keeps it whatever --dtd / --sia say."""
    from realnet.bench.runner import run_config

    suite = parse_suite(suite_dict([
        {"name": "d", "set": {"synthesis.sources": {"dtd": 1.0}, "synthesis.dtd_root": "/fixed/dtd"}},
        {"name": "s", "set": {"synthesis.sources": {"sia": 1.0}, "synthesis.sia_root": "/fixed/sia"}},
    ]), "s.yaml")
    dtd, sia = expand(suite)
    folders = {"sia": str(tmp_path / "sia"), "dtd": str(tmp_path / "dtd")}
    assert run_config(dtd, folders).synthesis.dtd_root == "/fixed/dtd"
    assert run_config(sia, folders).synthesis.sia_root == "/fixed/sia"


def test_a_selected_cell_holding_a_run_of_another_configuration_is_refused_before_any_fit(tmp_path, fixture_data,
                                                                                        monkeypatch):
    """A changed suite or --set must not report an old run as 'complete, kept' under the new settings."""
    from realnet.errors import RealnetError

    suite = parse_suite(suite_dict([{"name": "reference"}]), "s.yaml")
    (cell,) = expand(suite)
    old = json.loads(json.dumps(cell.config))
    old["train"]["steps"] = cell.config["train"]["steps"] + 7
    _leave(cell_dir(tmp_path / "out", suite, cell), cell, fixture_data, "complete", metrics=True)
    status_file = cell_dir(tmp_path / "out", suite, cell) / "cell.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "config": old}))
    monkeypatch.setattr(runner, "fit_and_test", lambda *args: pytest.fail("no fit may start"))
    with pytest.raises(RealnetError, match=r"holds a run of another configuration \(train.steps"):
        run_suite(BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data, device="cpu", progress=False))
