"""`realnet bench`: an explicit DTD folder is part of a cell's inputs, odd --set values and table
names that collide are refused at load, a partial CSV average is marked, and a cell.json with
fields of the wrong type is one line (regressions from an audit; no fit runs here)."""

from __future__ import annotations

import datetime
import json

import pytest

from test_bench import fixture_data, suite_dict  # noqa: F401  (fixture_data: a pytest fixture)
from test_bench_resume_and_overrides import _leave
from realnet.bench import runner
from realnet.bench.runner import BenchRequest, cell_dir, cell_inputs, read_status, run_suite
from realnet.bench.suite import expand, parse_suite
from realnet.errors import RealnetError


def _dtd(folder):
    from dataset_fixtures import normal_image, save
    import numpy as np

    save(folder / "banded" / "a.jpg", normal_image(np.random.default_rng(0), (40, 40)))
    return folder


def test_an_explicit_dtd_root_is_part_of_a_cells_inputs(tmp_path, fixture_data, monkeypatch):
    """Regression: a cell trained on `synthesis.dtd_root` A was kept, 'complete', when the suite or
    --set named folder B (only --dtd and the looked-up folder were compared)."""
    first, second = _dtd(tmp_path / "dtdA"), _dtd(tmp_path / "dtdB")
    suite = parse_suite(suite_dict([{"name": "reference"}], set={
        "synthesis.sources": {"dtd": 1.0}, "synthesis.dtd_root": str(first)}), "s.yaml")
    (cell,) = expand(suite)
    assert cell_inputs(cell, fixture_data, {})["dtd"] == str(first.resolve())
    out = tmp_path / "out"
    _leave(cell_dir(out, suite, cell), cell, fixture_data, "complete", metrics=True)
    status_file = cell_dir(out, suite, cell) / "cell.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()),
                                       "inputs": cell_inputs(cell, fixture_data, {})}))
    monkeypatch.setattr(runner, "fit_and_test", lambda *args: pytest.fail("no fit may start"))
    moved = suite.with_overrides([("synthesis.dtd_root", str(second))])
    with pytest.raises(RealnetError, match=r"holds a run on other inputs \(dtd .*dtdA' -> .*dtdB'\)"):
        run_suite(BenchRequest(suite=moved, out=out, data=fixture_data, device="cpu", progress=False))
    statuses, _ = run_suite(BenchRequest(suite=suite, out=out, data=fixture_data, device="cpu", progress=False))
    assert statuses[cell.id]["status"] == "complete"  # the same folder: kept


@pytest.mark.parametrize("value", [datetime.date(2024, 1, 1), b"hello", {1, 2}])
def test_a_set_value_no_setting_takes_is_one_line(value):
    """Regression: a YAML date, binary or set value in a suite's set ended in a TypeError traceback."""
    with pytest.raises(RealnetError, match=r"train.seed: .* is no value a setting takes"):
        parse_suite(suite_dict([{"name": "reference"}], set={"train.seed": value}), "s.yaml")


@pytest.mark.parametrize("names", [["results"], ["README"], ["efficiency"], ["x", "x_trend"]])
def test_axis_names_sharing_table_files_are_refused(names):
    """Regression: an axis 'results' lost its CSV to results.csv, 'efficiency' garbled the index, and
    axes x and x_trend overwrote each other's tables."""
    raw = suite_dict([{"name": "reference"}])
    raw["axes"] = [{"name": name, "variants": [{"name": "reference"}]} for name in names]
    with pytest.raises(RealnetError, match=f"axis name '{names[-1]}' would share its table files"):
        parse_suite(raw, "s.yaml")


@pytest.mark.parametrize("field, value", [("config", [1]), ("metrics", "x"), ("inputs", "x"), ("data_root", 5),
                                          ("status", ["complete"])])
def test_a_cell_status_with_a_field_of_the_wrong_type_is_one_line(tmp_path, field, value):
    (tmp_path / "cell.json").write_text(json.dumps({"status": "complete", field: value}))
    with pytest.raises(RealnetError, match="unreadable cell status; delete that cell folder to rerun it"):
        read_status(tmp_path)


def test_a_partial_average_row_is_marked_in_the_csv_too():
    from realnet.bench.tables import category_table

    raw = suite_dict([{"name": "reference"}])
    raw["datasets"][0]["categories"] = ["widget", "gadget"]
    suite = parse_suite(raw, "s.yaml")
    cells = expand(suite)
    done = {"status": "complete", "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7}}
    statuses = {cell.id: done if cell.category == "widget" else {"status": "failed"} for cell in cells}
    markdown, csv_text = category_table(suite, suite.axes[0], cells, statuses)
    assert "**AVG** | (90.00, 80.00, 70.00)*" in markdown
    assert csv_text.splitlines()[-1].startswith("fixture,AVG*,")
    statuses = dict.fromkeys(statuses, done)
    assert category_table(suite, suite.axes[0], cells, statuses)[1].splitlines()[-1].startswith("fixture,AVG,")
