"""`realnet bench`: suites expand into shared cells, a suite resumes after an interruption and
writes its tables, a failed cell is recorded while the suite goes on, missing data fails fast,
efficiency figures are consistent (tiny preset, fixture data, CPU)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import realnet
from dataset_fixtures import make_mvtec_tree
from realnet.bench import tables
from realnet.bench.runner import BenchRequest, run_suite
from realnet.bench.suite import expand, load_suite, parse_suite, select, shipped_suites
from realnet.cli.main import main
from realnet.errors import RealnetError

SRC = Path(realnet.__file__).resolve().parents[1]


@pytest.fixture
def fixture_data(tmp_path):
    return make_mvtec_tree(tmp_path / "data", "widget", n_train=8, n_test_good=2, defects={"scratch": 2},
                           size=(64, 64))


def suite_dict(variants, **extra):
    return {"name": "s", "preset": "tiny",
            "datasets": [{"name": "fixture", "layout": "mvtec", "root": "fixture", "path": ".", "categories": ["widget"]}],
            "axes": [{"name": "axis", "variants": variants}], **extra}


def read_json(path):
    return json.loads(Path(path).read_text())


def test_tiny_suite_runs_resumes_after_one_cell_and_writes_both_tables(tmp_path, fixture_data, capsys):
    out = tmp_path / "out"
    command = ["bench", "--suite", "tiny", "--data", str(fixture_data), "--out", str(out), "--device", "cpu"]
    first, second = out / "tiny/fixture/widget/reference", out / "tiny/fixture/widget/max_avg-p0.5"

    assert main(command + ["--only", "fixture/widget/reference"]) == 0  # interrupted after one cell
    assert read_json(first / "cell.json")["status"] == "complete"
    assert not second.exists()
    stamps = {name: (first / name).stat().st_mtime_ns for name in ("cell.json", "model.safetensors", "metrics.json")}

    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "fixture/widget/reference: complete, kept" in printed
    assert {name: (first / name).stat().st_mtime_ns for name in stamps} == stamps  # not run again
    done = [read_json(folder / "cell.json") for folder in (first, second)]
    assert [d["status"] for d in done] == ["complete", "complete"]
    assert done[1]["config"]["rrs"]["ratio"] == 0.5 and done[0]["config"]["rrs"]["ratio"] == pytest.approx(1 / 3)
    assert read_json(second / "metrics.json")["image_auroc"] == done[1]["metrics"]["image_auroc"]

    table_dir = out / "tiny/tables"
    markdown = (table_dir / "fig5.md").read_text()
    for status in done:
        assert tables.triple(tuple(status["metrics"][k] for k in ("image_auroc", "pixel_auroc", "aupro"))) in markdown
    rows = list(csv.reader((table_dir / "fig5.csv").open()))
    assert rows[0][:5] == ["dataset", "category", "reference Image AUROC", "reference Pixel AUROC", "reference PRO"]
    assert rows[1][:2] == ["fixture", "widget"]
    assert float(rows[1][5]) == pytest.approx(100 * done[1]["metrics"]["image_auroc"], abs=0.006)
    trend = list(csv.DictReader((table_dir / "fig5_trend.csv").open()))
    assert [r["variant"] for r in trend] == ["reference", "max_avg-p0.5"] and all(r["complete"] == "1" for r in trend)
    assert (out / "tiny/plots/fig5-fixture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny/tables/README.md" in printed


def test_failed_cell_is_recorded_and_the_suite_goes_on(tmp_path, fixture_data):
    suite_file = tmp_path / "broken.yaml"
    suite_file.write_text(yaml.safe_dump(suite_dict([
        {"name": "broken", "set": {"selection.channels": [999, 16]}},
        {"name": "reference"},
    ])))
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite_file), "--data", str(fixture_data), "--out", str(out), "--device", "cpu"]) == 1
    broken = read_json(out / "s/fixture/widget/broken/cell.json")
    assert broken["status"] == "failed"
    assert broken["error"].startswith("selection.channels: m_k=999") and "\n" not in broken["error"]
    assert not (out / "s/fixture/widget/broken/error.log").exists()  # a user error, not a crash
    assert read_json(out / "s/fixture/widget/reference/cell.json")["status"] == "complete"
    results = {r["variant"]: r for r in csv.DictReader((out / "s/tables/results.csv").open())}
    assert results["broken"]["status"] == "failed" and results["reference"]["status"] == "complete"
    assert "| failed |" in (out / "s/tables/axis.md").read_text()


def test_missing_dataset_root_fails_fast_with_one_line_before_importing_torch(tmp_path):
    code = "import sys\nfrom realnet.cli.main import main\nrc = main(sys.argv[1:])\nprint('torch' in sys.modules, rc)"
    missing = tmp_path / "nowhere"
    done = subprocess.run([sys.executable, "-c", code, "bench", "--suite", "paper-main", "--data", str(missing),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert done.stdout.split() == ["False", "2"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("realnet: error:")
    assert str(missing / "mvtec") in lines[0] and str(missing / "visa") in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_category_and_needed_folders_are_reported_before_running(tmp_path, fixture_data):
    suite = parse_suite(suite_dict([{"name": "reference"}]) | {"datasets": [
        {"name": "fixture", "layout": "mvtec", "root": "fixture", "path": ".", "categories": ["widget", "gadget"]}]}, "t")
    with pytest.raises(RealnetError, match="fixture categories gadget"):
        run_suite(BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data))
    with pytest.raises(RealnetError, match="--sia folder"):
        run_suite(BenchRequest(suite=load_suite("tiny"), out=tmp_path / "out", data=fixture_data, sia=tmp_path / "no"))
    assert not (tmp_path / "out").exists()


def test_shipped_suites_share_the_reference_cell_and_mark_sia_cells():
    assert {"paper-main", "ablations", "cpu-real", "tiny"} <= set(shipped_suites())
    cells = expand(load_suite("cpu-real"))
    reference = next(c for c in cells if c.variant == "reference")
    assert {("tab5a", "reference"), ("fig5", "max_avg-p0.33"), ("tab1", "reference"), ("tabS3", "reference")} <= set(reference.members)
    stride4 = next(c for c in cells if c.variant == "lite0-stride4")
    assert {("tabS3", "lite0-stride4"), ("tabS4", "lite0-stride4")} <= set(stride4.members)
    fig5 = [m for c in cells for m in c.members if m[0] == "fig5"]
    assert len(fig5) == 18 and len({c.id for c in cells if any(a == "fig5" for a, _ in c.members)}) == 18
    assert sorted(c.variant for c in cells if c.needs) == ["sia", "sia-s0", "sia-s0.1", "sia-s0.2"]
    assert all(c.config["train"]["steps"] == reference.config["train"]["steps"] for c in cells)
    assert [c.id for c in select(cells, ["tab5a"])][-1] == "magnetic_tile/magnetic_tile/reference"
    assert len(select(cells, ["*/max-p*"])) == 6

    ablations = expand(load_suite("ablations"))
    assert len({c.category for c in ablations}) == 15
    strengths = [c for c in ablations if c.variant.startswith("s0")]
    assert all(c.needs == ("sia",) and c.config["synthesis"]["sia_root"].startswith("{sia}/") for c in strengths)


def test_shipped_suites_fit_each_backbone_channel_counts():
    """Every m_k of every shipped configuration is at most its backbone layer's channel count."""
    import timm
    import torch

    from realnet.model.backbone import BACKBONES

    checked = set()
    for name in shipped_suites():
        for cell in expand(load_suite(name)):
            backbone, selection = cell.config["backbone"], cell.config["selection"]
            layers = tuple(backbone["layers"] or BACKBONES[backbone["name"]].layers)
            key = (backbone["name"], layers, tuple(selection["channels"] or ()))
            if key in checked:
                continue
            checked.add(key)
            with torch.device("meta"):
                channels = timm.create_model(backbone["name"], features_only=True, out_indices=layers).feature_info.channels()
            wanted = selection["channels"] or channels
            assert len(wanted) == len(channels) and all(0 < m <= c for m, c in zip(wanted, channels)), (name, key, channels)
    # Tab. S3's B4 as the authors ran it: timm's weights, strides 2-16, m_k = every channel of each layer
    assert ("efficientnet_b4", (0, 1, 2, 3), (24, 32, 56, 160)) in checked


def test_only_selects_a_variant_by_any_name_of_its_shared_cell():
    """Regression: Fig. 5's max_avg-p0.33 is the reference cell, named after 'reference' only, so
    --only 'mvtec/bottle/max_avg-p0.33' matched no cell and 'mvtec/bottle/max_avg-*' left it out."""
    cells = expand(load_suite("ablations"))
    assert [c.id for c in select(cells, ["mvtec/bottle/max_avg-p0.33"])] == ["mvtec/bottle/reference"]
    max_avg = [c.id for c in select(cells, ["mvtec/bottle/max_avg-*"])]
    assert len(max_avg) == 6 and "mvtec/bottle/reference" in max_avg


@pytest.mark.parametrize("change, needle", [
    ({"axes": [{"name": "a", "variants": [{"name": "v", "set": {"rrs.mode": "max"}}]},
               {"name": "b", "variants": [{"name": "v", "set": {"rrs.mode": "avg"}}]}]}, "variant name 'v'"),
    ({"axes": [{"name": "a", "variants": [{"name": "v", "set": {"rrs.nope": 1}}]}]}, "rrs.nope"),
    ({"axes": [{"name": "a", "variants": [{"name": "v"}], "colour": "red"}]}, "colour"),
    ({"axes": [{"name": "a", "datasets": ["mvtec"], "variants": [{"name": "v"}]}]}, "unknown dataset"),
    ({"preset": "huge"}, "preset 'huge'"),
    # regressions: a mistyped plot key failed after every cell had trained; the others were tracebacks,
    # a string of datasets was split into letters, and a name '..' wrote tables outside --out
    ({"axes": [{"name": "a", "plot": {"x": "rrs.ratioo", "lines": "rrs.mode"}, "variants": [{"name": "v"}]}]},
     "plot x 'rrs.ratioo' is not a setting"),
    ({"axes": [{"name": "a", "datasets": 5, "variants": [{"name": "v"}]}]}, r"datasets: expected a non-empty list"),
    ({"axes": [{"name": "a", "datasets": "fixture", "variants": [{"name": "v"}]}]}, "datasets: expected a non-empty list"),
    ({"name": ".."}, "'..' must be a name"),
    # regressions: a plot setting that is not a string was a TypeError traceback, and one whose values are
    # lists or mappings crashed drawing the plot after every cell had trained
    ({"axes": [{"name": "a", "plot": {"x": [1], "lines": "rrs.mode"}, "variants": [{"name": "v"}]}]},
     r"plot x '\[1\]' is not a setting"),
    ({"axes": [{"name": "a", "plot": {"x": "rrs.ratio", "lines": {"a": 1}}, "variants": [{"name": "v"}]}]},
     r"plot lines '\{'a': 1\}' is not a setting"),
    ({"axes": [{"name": "a", "plot": {"x": "selection.channels", "lines": "rrs.mode"}, "variants": [{"name": "v"}]}]},
     r"t.yaml: axis a: plot x selection.channels is \[8, 16\] in variant v; a plot needs a number"),
    ({"axes": [{"name": "a", "plot": {"x": "rrs.ratio", "lines": "synthesis.sources"}, "variants": [{"name": "v"}]}]},
     r"plot lines synthesis.sources is \{\"cutpaste\": 1.0\} in variant v"),
])
def test_bad_suites_name_the_problem(change, needle):
    with pytest.raises(RealnetError, match=needle):
        expand(parse_suite(suite_dict([{"name": "v"}]) | change, "t.yaml"))


def test_cells_needing_sia_are_found_from_config_and_templates():
    suite = parse_suite(suite_dict([
        {"name": "plain"},
        {"name": "bank", "set": {"synthesis.sources": {"sia": 1.0}}},
        {"name": "strength", "set": {"synthesis.sources": {"sia": 1.0}, "synthesis.sia_root": "{sia}/s0.1"}},
        {"name": "fixed", "set": {"synthesis.sources": {"sia": 1.0}, "synthesis.sia_root": "/banks/widget"}},
    ]), "t")
    assert {c.variant: c.needs for c in expand(suite)} == {"plain": (), "bank": ("sia",), "strength": ("sia",), "fixed": ()}


def test_tables_show_paper_format_partial_averages_and_statuses():
    suite = parse_suite(suite_dict([{"name": "a", "paper": [99.0, 98.0, None]}, {"name": "b", "set": {"rrs.mode": "max"}}])
                        | {"datasets": [{"name": "d", "layout": "mvtec", "root": "d", "categories": ["x", "y"]}]}, "t")
    cells = expand(suite)
    complete = {"status": "complete", "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": None}}
    statuses = {"d/x/a": complete, "d/y/a": {"status": "complete", "metrics": {"image_auroc": 0.7, "pixel_auroc": 0.6, "aupro": 0.5}},
                "d/x/b": {"status": "failed", "error": "boom"}, "d/y/b": {**complete, "metrics": {**complete["metrics"], "image_auroc": 1.0}}}
    markdown, text = tables.category_table(suite, suite.axes[0], cells, statuses)
    assert "| d | x | (90.00, 80.00, -) | failed |" in markdown
    # regression: a metric that one category lacks (no masks) was averaged over the other without a star
    assert "| d | **AVG** | (80.00, 70.00, 50.00)* | (100.00, 80.00, -)* |" in markdown
    assert list(csv.reader(text.splitlines()))[3] == ["d", "AVG*", "80.00", "70.00", "50.00", "100.00", "80.00", ""]
    trend_md, trend_csv = tables.trend_table(suite, suite.axes[0], cells, statuses)
    assert "| d | a | suite default | 80.00 | 70.00 | 50.00 | 2/2 | (99.00, 98.00, -) |" in trend_md
    assert "| d | b | rrs.mode=max | 100.00 | 80.00 | - | 1/2 |  |" in trend_md
    trend_rows = list(csv.DictReader(trend_csv.splitlines()))
    columns = ["image_auroc", "pixel_auroc", "aupro", "paper_image_auroc", "paper_pixel_auroc", "paper_aupro"]
    assert [[row[c] for c in columns] for row in trend_rows] == [
        [f"{100 * (0.9 + 0.7) / 2:.2f}", f"{100 * (0.8 + 0.6) / 2:.2f}", f"{100 * 0.5:.2f}", "99.00", "98.00", ""],
        [f"{100 * 1.0:.2f}", f"{100 * 0.8:.2f}", "", "", "", ""]]


def test_efficiency_of_a_config_in_its_own_process_matches_the_model(tmp_path):
    from realnet.bench.efficiency import measure_in_subprocess, parameter_counts
    from realnet.config import load_config
    from realnet.engine.build import build_model
    from realnet.model.backbone import create_backbone

    result = measure_in_subprocess({"preset": "tiny", "warmup": 1, "repeats": 1, "threads": 1})
    config = load_config("tiny")
    model = build_model(config, create_backbone(config.backbone.name, weights="random", layers=config.backbone.layers))
    assert (result["detector_params"], result["backbone_params"]) == parameter_counts(model)
    state_mb = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if not k.startswith("backbone.")) / 2**20
    assert state_mb < result["checkpoint_mb"] < state_mb + 0.1  # tensors plus the safetensors header
    assert result["peak_rss_mb"] > 0
    for batch in (1, 8):
        ratio = result[f"backbone_images_per_s_bs{batch}"] / result[f"images_per_s_bs{batch}"]
        assert result[f"time_ratio_bs{batch}"] == pytest.approx(ratio, abs=0.02)
    markdown, text = tables.efficiency_table([{**result, "name": "tiny"}])
    assert markdown.splitlines()[2].startswith(f"| tiny | {result['detector_params'] / 1e6:.2f} |")
    assert list(csv.DictReader(text.splitlines()))[0]["checkpoint_mb"] == str(result["checkpoint_mb"])


def test_the_efficiency_table_puts_each_measurement_under_its_own_column():
    """Each Markdown column and each CSV column holds the row's value for that column (bs 1 and bs 8 apart)."""
    row = {"name": "tiny", "detector_params": 2_500_000, "backbone_params": 11_000_000, "checkpoint_mb": 9.5,
           "peak_rss_mb": 300.0, "images_per_s_bs1": 11.5, "images_per_s_bs8": 80.25,
           "backbone_images_per_s_bs1": 40.0, "backbone_images_per_s_bs8": 200.0, "time_ratio_bs1": 3.48,
           "time_ratio_bs8": 2.49, "image_size": 64, "device": "cpu", "threads": 2, "n_images": 8, "repeats": 3}
    markdown, text = tables.efficiency_table([row])
    header, _, values = ([cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()[:3])
    assert dict(zip(header, values)) == {
        "configuration": "tiny", "detector params (M)": f"{2.5:.2f}", "backbone params (M)": f"{11.0:.2f}",
        "checkpoint MB": "9.5", "peak RSS MB": "300.0", "img/s bs 1": "11.5", "img/s bs 8": "80.25",
        "backbone img/s bs 1": "40.0", "backbone img/s bs 8": "200.0",
        "time / backbone bs 1": "3.48", "time / backbone bs 8": "2.49"}
    assert list(csv.DictReader(text.splitlines())) == [{key: str(value) for key, value in row.items()}]


def fake_complete_cell(folder: Path, config: dict, data_root: Path, image_auroc: float) -> None:
    folder.mkdir(parents=True)
    metrics = {"image_auroc": image_auroc, "pixel_auroc": image_auroc, "aupro": image_auroc}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "cell.json").write_text(json.dumps({
        "status": "complete", "config": config, "metrics": metrics, "data_root": str(data_root),
        "inputs": {"data_root": str(data_root.resolve())}, "fit_wall_s": 1.0, "test_wall_s": 1.0}))


def test_cells_of_another_configuration_are_stale_and_left_out_of_the_averages(tmp_path, fixture_data):
    """Regression: tables read every cell.json, so a cell run before a suite edit or --set change
    was averaged with the current ones."""
    from realnet.bench.runner import cell_dir, collect_statuses, write_reports

    suite = parse_suite(suite_dict([{"name": "reference"}, {"name": "p05", "set": {"rrs.ratio": 0.5}}]), "s.yaml")
    reference, p05 = expand(suite)
    old_config = json.loads(json.dumps(p05.config))
    old_config["train"]["steps"] = 7
    fake_complete_cell(cell_dir(tmp_path, suite, reference), reference.config, fixture_data, 0.9)
    fake_complete_cell(cell_dir(tmp_path, suite, p05), old_config, fixture_data, 0.5)
    statuses = collect_statuses(suite, [reference, p05], tmp_path)
    assert statuses[reference.id]["status"] == "complete" and statuses[p05.id]["status"] == "stale"
    write_reports(suite, [reference, p05], tmp_path)
    table = (tmp_path / "s/tables/axis.md").read_text()
    assert "stale" in table and "50.00" not in table


def test_a_cell_recorded_before_a_new_setting_is_current_and_one_without_a_config_is_stale(tmp_path, fixture_data):
    """A cell.json written before a setting existed lacks its key; that counts as the default the
    run had (it was stale as 'density.neighbourhood=None'), while a cell.json with no config at
    all says nothing of its run and stays stale."""
    from realnet.bench.runner import cell_dir, collect_statuses

    suite = parse_suite(suite_dict([{"name": "reference"}, {"name": "p05", "set": {"rrs.ratio": 0.5}}]), "s.yaml")
    reference, p05 = expand(suite)
    older = json.loads(json.dumps(reference.config))
    del older["density"]["neighbourhood"]
    fake_complete_cell(cell_dir(tmp_path, suite, reference), older, fixture_data, 0.9)
    fake_complete_cell(cell_dir(tmp_path, suite, p05), {}, fixture_data, 0.5)
    statuses = collect_statuses(suite, [reference, p05], tmp_path)
    assert statuses[reference.id]["status"] == "complete" and statuses[p05.id]["status"] == "stale"


def test_a_cell_retested_by_hand_is_stale_in_the_tables_and_tested_again(tmp_path, fixture_data):
    """Tables read cell.json, so after `realnet test` on a cell's folder (other data) they showed
    figures its metrics.json no longer held, and the next suite run kept the cell."""
    from realnet.bench.runner import cell_dir, collect_statuses, is_complete, read_status, write_reports

    suite = parse_suite(suite_dict([{"name": "reference"}, {"name": "p05", "set": {"rrs.ratio": 0.5}}]), "s.yaml")
    reference, p05 = expand(suite)
    fake_complete_cell(cell_dir(tmp_path, suite, reference), reference.config, fixture_data, 0.9)
    fake_complete_cell(cell_dir(tmp_path, suite, p05), p05.config, fixture_data, 0.5)
    retested = cell_dir(tmp_path, suite, p05)
    (retested / "metrics.json").write_text(json.dumps({"image_auroc": 0.7, "pixel_auroc": 0.5, "aupro": 0.5}))
    statuses = collect_statuses(suite, [reference, p05], tmp_path)
    assert statuses[reference.id]["status"] == "complete"
    assert statuses[p05.id]["status"] == "stale" and "rewritten by another test" in statuses[p05.id]["reason"]
    assert not is_complete(retested, read_status(retested))
    write_reports(suite, [reference, p05], tmp_path)
    table = (tmp_path / "s/tables/axis.md").read_text()
    assert "stale" in table and "50.00" not in table and "70.00" not in table


def test_a_rerun_on_other_data_refuses_to_keep_the_old_cells(tmp_path, fixture_data):
    """Regression: a complete cell was kept, and reported, when the suite was rerun on another
    --data root (the identity was the configuration alone)."""
    from realnet.bench.runner import cell_dir

    suite = parse_suite(suite_dict([{"name": "reference"}]), "s.yaml")
    (cell,) = expand(suite)
    elsewhere = tmp_path / "other_data"
    elsewhere.mkdir()
    fake_complete_cell(cell_dir(tmp_path / "out", suite, cell), cell.config, elsewhere, 0.9)
    request = BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data, data_roots={}, dtd=None, sia=None,
                           only=[], device="cpu")
    with pytest.raises(RealnetError, match=r"holds a run on other inputs \(data_root .*other_data"):
        run_suite(request)


def test_a_rerun_cell_drops_the_traceback_of_its_earlier_crash(tmp_path, fixture_data, monkeypatch):
    """Regression: error.log of a crashed attempt stayed beside the cell after it was rerun."""
    from realnet.bench import runner

    suite = parse_suite(suite_dict([{"name": "reference"}]), "s.yaml")
    (cell,) = expand(suite)
    folder = runner.cell_dir(tmp_path, suite, cell)
    folder.mkdir(parents=True)
    request = BenchRequest(suite=suite, out=tmp_path, data=fixture_data, device="cpu")

    def crash(*args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(runner, "fit_and_test", crash)
    assert runner.run_cell(cell, folder, fixture_data, {}, request)["status"] == "failed"
    assert "ZeroDivisionError" in (folder / "error.log").read_text()

    def user_error(*args):
        raise RealnetError("bad option")

    monkeypatch.setattr(runner, "fit_and_test", user_error)
    assert runner.run_cell(cell, folder, fixture_data, {}, request)["error"] == "bad option"
    assert not (folder / "error.log").exists()


def test_the_efficiency_table_is_dropped_once_a_measured_cell_is_rerun(tmp_path, fixture_data):
    """Regression: the suite README kept showing efficiency.md after the cells it measured were
    refitted under other settings."""
    from realnet.bench.runner import cell_dir, write_reports

    suite = parse_suite(suite_dict([{"name": "reference"}]), "s.yaml")
    (cell,) = expand(suite)
    folder = cell_dir(tmp_path, suite, cell)
    fake_complete_cell(folder, cell.config, fixture_data, 0.9)
    status = read_json(folder / "cell.json")
    folder.joinpath("cell.json").write_text(json.dumps({**status, "finished": "2026-01-01T00:00:00"}))
    tables_dir = tmp_path / "s/tables"
    tables_dir.mkdir(parents=True)
    (tables_dir / "efficiency.md").write_text("| name | MEASURED |\n")
    (tables_dir / "efficiency.json").write_text(json.dumps({"cells": {cell.id: "2026-01-01T00:00:00"}, "rows": []}))
    write_reports(suite, [cell], tmp_path)
    assert "MEASURED" in (tables_dir / "README.md").read_text()

    folder.joinpath("cell.json").write_text(json.dumps({**status, "finished": "2026-02-02T00:00:00"}))
    write_reports(suite, [cell], tmp_path)
    readme = (tables_dir / "README.md").read_text()
    assert "MEASURED" not in readme and "Out of date" in readme


@pytest.mark.parametrize("record", [b"{", b"[1]", b"{\"cells\": \"x\xe9\"}"])
def test_a_damaged_efficiency_record_marks_the_efficiency_table_out_of_date(tmp_path, fixture_data, record):
    """Regression: an efficiency.json that was not a JSON mapping in UTF-8 gave a JSONDecodeError /
    AttributeError traceback on every bench and --tables-only."""
    from realnet.bench.runner import cell_dir, write_reports

    suite = parse_suite(suite_dict([{"name": "reference"}]), "s.yaml")
    (cell,) = expand(suite)
    fake_complete_cell(cell_dir(tmp_path, suite, cell), cell.config, fixture_data, 0.9)
    tables_dir = tmp_path / "s/tables"
    tables_dir.mkdir(parents=True)
    (tables_dir / "efficiency.md").write_text("| name | MEASURED |\n")
    (tables_dir / "efficiency.json").write_bytes(record)
    write_reports(suite, [cell], tmp_path)
    readme = (tables_dir / "README.md").read_text()
    assert "MEASURED" not in readme and "efficiency.json is missing or damaged" in readme


def test_results_csv_holds_every_cell_with_its_status_and_metrics_as_fractions():
    suite = parse_suite(suite_dict([{"name": "a"}, {"name": "b", "set": {"rrs.mode": "max"}}]), "t")
    cells = expand(suite)
    statuses = {cells[0].id: {"status": "complete", "fit_steps": 4, "fit_wall_s": 1.5, "test_wall_s": 0.5,
                              "metrics": {"image_auroc": 0.91234567, "pixel_auroc": 0.5, "aupro": None}},
                cells[1].id: {"status": "failed", "error": "boom"}}
    rows = list(csv.DictReader(tables.results_csv(cells, statuses).splitlines()))
    assert [(r["cell"], r["variant"], r["status"], r["error"]) for r in rows] == [
        (cells[0].id, "a", "complete", ""), (cells[1].id, "b", "failed", "boom")]
    assert (rows[0]["image_auroc"], rows[0]["pixel_auroc"], rows[0]["aupro"]) == ("0.912346", "0.500000", "")
    assert (rows[0]["fit_steps"], rows[0]["fit_wall_s"], rows[0]["test_wall_s"]) == ("4", "1.5", "0.5")
    assert rows[1]["image_auroc"] == "" and rows[1]["axes"] == "axis:b"


def test_a_cell_drawing_from_dtd_records_its_folder_and_refuses_another(tmp_path, fixture_data):
    """Regression: the DTD folder was not part of a cell's identity, so a rerun with another --dtd
    kept the old cells beside new ones trained on other textures, in one table."""
    from realnet.bench.runner import cell_dir, cell_inputs

    suite = parse_suite(suite_dict([{"name": "d", "set": {"synthesis.sources": {"dtd": 1.0}}}]), "s.yaml")
    (cell,) = expand(suite)
    dtd_a, dtd_b = tmp_path / "dtdA", tmp_path / "dtdB"
    dtd_a.mkdir(), dtd_b.mkdir()
    folder = cell_dir(tmp_path / "out", suite, cell)
    fake_complete_cell(folder, cell.config, fixture_data, 0.9)
    status = read_json(folder / "cell.json")
    status["inputs"] = cell_inputs(cell, fixture_data, {"dtd": str(dtd_a)})
    (folder / "cell.json").write_text(json.dumps(status))
    request = BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data, data_roots={}, dtd=dtd_b, sia=None,
                           only=[], device="cpu")
    with pytest.raises(RealnetError, match=r"holds a run on other inputs \(dtd .*dtdA.* -> .*dtdB"):
        run_suite(request)
    with pytest.raises(RealnetError, match="the dtd synthesis source needs the Describable Textures Dataset"):
        run_suite(BenchRequest(suite=suite, out=tmp_path / "out2", data=fixture_data, data_roots={}, dtd=None,
                               sia=None, only=[], device="cpu"))  # before any fit, not once per cell


def test_a_dtd_cell_recorded_before_its_folder_was_is_kept_and_a_changed_setting_names_its_old_default(
        tmp_path, fixture_data):
    """cell.json gained inputs.dtd after cells were recorded without it: such a cell was refused as
    "other inputs (dtd None -> ...)" although fit resumes a run with the same gap. A setting a cell
    lacks counts as its default, and the refusal shows that default, not None."""
    from realnet.bench.runner import cell_dir

    suite = parse_suite(suite_dict([{"name": "d", "set": {"synthesis.sources": {"dtd": 1.0}}}]), "s.yaml")
    (cell,) = expand(suite)
    dtd = tmp_path / "dtd"
    dtd.mkdir()
    folder = cell_dir(tmp_path / "out", suite, cell)
    fake_complete_cell(folder, cell.config, fixture_data, 0.9)  # inputs: the data root alone
    request = BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data, data_roots={}, dtd=dtd, sia=None,
                           only=[], device="cpu")
    run_suite(request)
    assert read_json(folder / "cell.json")["status"] == "complete"

    status = read_json(folder / "cell.json")
    del status["config"]["synthesis"]["retry_empty_masks"]
    (folder / "cell.json").write_text(json.dumps(status))
    run_suite(request)  # lacking the key is the default, True: the same run
    changed = parse_suite(suite_dict([{"name": "d", "set": {"synthesis.sources": {"dtd": 1.0},
                                                              "synthesis.retry_empty_masks": False}}]), "s.yaml")
    with pytest.raises(RealnetError, match=r"another configuration \(synthesis.retry_empty_masks True -> False\)"):
        run_suite(BenchRequest(suite=changed, out=tmp_path / "out", data=fixture_data, data_roots={}, dtd=dtd,
                               sia=None, only=[], device="cpu"))


def test_cells_not_run_now_are_checked_for_their_data_too(tmp_path, fixture_data):
    """Regression: only the selected cells' inputs were compared, so --only b on new data put b
    beside an a trained on the old data in one table."""
    from realnet.bench.runner import cell_dir

    suite = parse_suite(suite_dict([{"name": "a"}, {"name": "b", "set": {"rrs.ratio": 0.5}}]), "s.yaml")
    a, _ = expand(suite)
    elsewhere = tmp_path / "old_data"
    elsewhere.mkdir()
    fake_complete_cell(cell_dir(tmp_path / "out", suite, a), a.config, elsewhere, 0.9)
    request = BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data, data_roots={}, dtd=None, sia=None,
                           only=["*/b"], device="cpu")
    with pytest.raises(RealnetError, match=r"fixture/widget/a holds a run on other inputs \(data_root .*old_data"):
        run_suite(request)


def test_a_folder_a_cell_never_reads_leaves_its_settings_alone(tmp_path):
    """Regression: --dtd was written into every cell's config, so a cut-paste cell killed without
    --dtd could not resume with it ("started with other settings: synthesis.dtd_root")."""
    from realnet.bench.runner import run_config

    suite = parse_suite(suite_dict([{"name": "c", "set": {"synthesis.sources": {"cutpaste": 1.0}}},
                                    {"name": "d", "set": {"synthesis.sources": {"dtd": 1.0}}}]), "s.yaml")
    cut, dtd = expand(suite)
    assert run_config(cut, {"dtd": str(tmp_path)}).synthesis.dtd_root is None
    assert run_config(dtd, {"dtd": str(tmp_path)}).synthesis.dtd_root == str(tmp_path)


def test_a_data_root_of_the_suite_that_the_selection_does_not_read_is_accepted(tmp_path, fixture_data):
    """Regression: the --help example (--data-root for two datasets, --only one of them) was refused."""
    from realnet.bench.runner import resolve_roots

    raw = suite_dict([{"name": "v"}])
    raw["datasets"].append({"name": "other", "layout": "mvtec", "root": "other", "path": ".", "categories": ["x"]})
    suite = parse_suite(raw, "s.yaml")
    chosen = select(expand(suite), ["fixture/*"])
    roots = resolve_roots(chosen, None, {"fixture": fixture_data, "other": tmp_path}, suite)
    assert roots == {"fixture": fixture_data}
    with pytest.raises(RealnetError, match="--data-root typo: no such root key in s.yaml"):
        resolve_roots(chosen, None, {"fixture": fixture_data, "typo": tmp_path}, suite)


def test_bench_set_with_an_empty_value_and_a_suite_file_not_utf8_are_one_line(tmp_path):
    from realnet.bench.suite import parse_override

    with pytest.raises(RealnetError, match="--set train.steps=: empty value; write null for none"):
        parse_override("train.steps=")
    path = tmp_path / "s.yaml"
    path.write_bytes(b"# r\xe9glages\n" + yaml.safe_dump(suite_dict([{"name": "v"}])).encode())
    with pytest.raises(RealnetError, match=f"{path}: not UTF-8 text"):
        load_suite(path)


def test_a_setting_that_cannot_change_results_keeps_finished_cells(tmp_path, fixture_data):
    """Regression: `--set train.checkpoint_every=3` (or feature_cache_gb) made every finished cell
    "a run of another configuration", although fit may change them on a resume."""
    from realnet.bench.runner import cell_dir, collect_statuses

    suite = parse_suite(suite_dict([{"name": "a"}]), "s.yaml")
    (cell,) = expand(suite)
    fake_complete_cell(cell_dir(tmp_path / "out", suite, cell), cell.config, fixture_data, 0.9)
    rerun = suite.with_overrides([("train.checkpoint_every", 3), ("train.feature_cache_gb", 1.0)])
    (again,) = expand(rerun)
    assert again.config != cell.config
    assert collect_statuses(rerun, [again], tmp_path / "out")[again.id]["status"] == "complete"
    request = BenchRequest(suite=rerun, out=tmp_path / "out", data=fixture_data, data_roots={}, dtd=None, sia=None,
                           only=[], device="cpu")
    statuses, _ = run_suite(request)
    assert statuses[again.id]["status"] == "complete"


@pytest.mark.parametrize("content", [b"[1]", b"{\"status\": \"complete\xe9\"}", b"{not json"])
def test_a_damaged_cell_status_is_one_error(tmp_path, content):
    """Regression: a cell.json holding a JSON list, or bytes that are not UTF-8, gave an
    AttributeError / UnicodeDecodeError traceback instead of the advice to delete the cell."""
    from realnet.bench.runner import CELL_STATUS, read_status
    from realnet.errors import RealnetError

    (tmp_path / CELL_STATUS).write_bytes(content)
    with pytest.raises(RealnetError, match="unreadable cell status; delete that cell folder to rerun it"):
        read_status(tmp_path)


def test_a_suite_with_a_number_for_a_key_is_one_error():
    """Regression: unknown keys were sorted as they were, so a number among them (`1: x`) failed
    with a TypeError traceback comparing int and str."""
    from realnet.errors import RealnetError

    with pytest.raises(RealnetError, match=r"s\.yaml: unknown key\(s\) 1, zz \(allowed: "):
        parse_suite({"name": "t", "preset": "tiny", 1: "x", "zz": "y"}, "s.yaml")


def test_tables_only_on_an_out_folder_with_no_cells_is_refused(tmp_path, capsys):
    """Regression: `bench --tables-only --out <a typo>` wrote a tree of tables of pending cells there
    and exited 0."""
    from realnet.cli.main import main

    assert main(["bench", "--suite", "tiny", "--out", str(tmp_path / "typo"), "--tables-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("realnet: error: --tables-only:") and "has run under --out" in err
    assert not (tmp_path / "typo").exists()


def test_a_device_the_machine_lacks_is_refused_before_any_cell(tmp_path, fixture_data):
    """A bad --device failed every cell one by one and left their folders and tables behind."""
    with pytest.raises(RealnetError, match="'bogus' is not a device"):
        run_suite(BenchRequest(suite=load_suite("tiny"), out=tmp_path / "out", data=fixture_data, device="bogus"))
    assert not (tmp_path / "out").exists()


def test_a_yaml_syntax_error_in_a_suite_or_config_file_names_its_line_and_column(tmp_path):
    from realnet.config import load_config

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\npreset: tiny\ndatasets: [\n")
    with pytest.raises(RealnetError, match=r"bad\.yaml: not valid YAML at line 4, column 1 \(expected the node content"):
        load_suite(path)
    path.write_text("train:\n  steps: 3\n bad: 1\n")
    with pytest.raises(RealnetError, match=r"bad\.yaml: not valid YAML at line 3, column 2 \("):
        load_config("tiny", path)


def test_a_bad_setting_is_blamed_on_where_it_was_given(tmp_path):
    """A bad --set or suite-wide `set:` value was reported as the first variant's
    ("axis ..., variant ...: unknown config key")."""
    with pytest.raises(RealnetError, match=r"^--set: unknown config key 'train.stepz'"):
        load_suite("tiny").with_overrides([("train.stepz", 3)])
    with pytest.raises(RealnetError, match=r"^--set: train.steps must be >= 1"):
        load_suite("tiny").with_overrides([("train.steps", -1)])
    path = tmp_path / "suite.yaml"
    path.write_text("name: s\npreset: tiny\nset: {train.steps: 0}\n"
                    "datasets: [{name: A, layout: mvtec, root: a, path: ., categories: [widget]}]\n"
                    "axes: [{name: ax, variants: [{name: v, set: {rrs.ratio: 0.5}}]}]\n")
    with pytest.raises(RealnetError, match=r"suite\.yaml: set: train.steps must be >= 1"):
        load_suite(path)


def test_a_suite_file_is_read_as_config_files_are(tmp_path):
    """Regression: a suite file was read with YAML 1.1's rules, so a second `axes:` silently replaced
    the first and `train.seed: 010` was the seed 8."""
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\npreset: tiny\ndatasets: []\naxes: []\naxes: []\n")
    with pytest.raises(RealnetError, match=r"twice\.yaml: key 'axes' is given twice \(line 5\)"):
        load_suite(path)
    path = tmp_path / "octal.yaml"
    path.write_text("name: octal\npreset: tiny\n"
                    "datasets: [{name: A, layout: mvtec, root: a, path: ., categories: [widget]}]\n"
                    "axes: [{name: seeds, variants: [{name: ten, set: {train.seed: 010}}]}]\n")
    (cell,) = expand(load_suite(path))
    assert cell.config["train"]["seed"] == 10


@pytest.mark.parametrize("given", [("rrs.ratio", 0.5), ("synthesis.sources", {"dtd": 1.0}),
                                   ("synthesis.sources.dtd", 1.0)])
def test_a_suite_wide_set_of_a_key_a_variant_sets_is_refused(given):
    """Regression: `bench --suite tiny --set rrs.ratio=0.5` ran the reference cell at P = 1/2 and
    labelled it "Max&Avg, P = 1/3 | suite default" beside the paper's P = 1/3 figures."""
    suite = parse_suite(suite_dict([{"name": "reference"}, {"name": "p05", "set": {"rrs.ratio": 0.5}},
                                    {"name": "shade", "set": {"synthesis.sources": {"shade": 1.0}}}]), "s.yaml")
    with pytest.raises(RealnetError, match=rf"--set {given[0]}: variant \w+ of axis axis sets [\w.]+ itself"):
        suite.with_overrides([given])
    assert suite.with_overrides([("train.steps", 3)]).overrides == (("train.steps", 3),)


def test_null_texts_of_a_suite_fall_back_to_their_defaults():
    """Regression: `label: null` (or title, paper, description) printed the word None in the tables."""
    suite = parse_suite(suite_dict([{"name": "r", "label": None}], description=None)
                        | {"axes": [{"name": "a", "paper": None, "title": None, "variants": [{"name": "r", "label": None}]}]},
                        "s.yaml")
    assert (suite.description, suite.axes[0].paper, suite.axes[0].title, suite.axes[0].variants[0].label) == ("", "", "a", "r")


def test_a_plot_with_no_points_left_is_removed_and_partial_points_are_marked(tmp_path, fixture_data):
    """Regression: a plot kept its old figures once no cell of the current settings was complete;
    a point averaged over some categories only was drawn like the others."""
    from realnet.bench.plots import line_plot

    path = tmp_path / "plot.png"
    assert line_plot(path, {"max_avg": [(0.5, (0.9, 0.8, 0.7), True), (1.0, (0.8, 0.7, 0.6), False)]}, "P", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not line_plot(path, {"max_avg": []}, "P", "t") and not path.exists()
    suite = parse_suite(suite_dict([{"name": "a"}, {"name": "b", "set": {"rrs.ratio": 0.5}}])
                        | {"datasets": [{"name": "d", "layout": "mvtec", "root": "d", "categories": ["x", "y"]}]}
                        | {"axes": [{"name": "axis", "plot": {"x": "rrs.ratio", "lines": "rrs.mode"},
                                     "variants": [{"name": "a"}, {"name": "b", "set": {"rrs.ratio": 0.5}}]}]}, "t")
    done = {"status": "complete", "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7}}
    statuses = {"d/x/a": done, "d/y/a": done, "d/x/b": done, "d/y/b": {"status": "pending"}}
    ((line, points),) = tables.plot_series(suite, suite.axes[0], expand(suite), statuses)["d"].items()
    assert [(x, complete) for x, _, complete in points] == [(pytest.approx(1 / 3), True), (0.5, False)]


def test_a_cell_stopped_by_sigterm_is_recorded_as_interrupted(tmp_path, fixture_data, monkeypatch):
    """Regression: only Ctrl-C was recorded; SIGTERM (the CLI's Terminated) left the cell "running"."""
    from realnet.bench import runner

    class Terminated(BaseException):
        pass

    def stopped(*args, **kwargs):
        raise Terminated

    monkeypatch.setattr(runner, "fit_and_test", stopped)
    suite = load_suite("tiny")
    with pytest.raises(Terminated):
        run_suite(BenchRequest(suite=suite, out=tmp_path / "out", data=fixture_data, only=["fixture/widget/reference"],
                               device="cpu"))
    assert read_json(tmp_path / "out/tiny/fixture/widget/reference/cell.json")["status"] == "interrupted"


def test_tables_only_given_the_runs_sia_folder_calls_unrun_sia_cells_pending(tmp_path, fixture_data):
    """Regression: --tables-only always said "needs --sia" for SIA cells not run yet, though the run
    that made the folder had --sia (and its own tables said pending)."""
    from realnet.bench.runner import cell_dir

    raw = suite_dict([{"name": "plain"}, {"name": "bank", "set": {"synthesis.sources": {"sia": 1.0}}}])
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(yaml.safe_dump(raw))
    suite = parse_suite(raw, str(suite_file))
    plain, bank = expand(suite)
    fake_complete_cell(cell_dir(tmp_path / "out", suite, plain), plain.config, fixture_data, 0.9)
    (tmp_path / "sia").mkdir()
    command = ["bench", "--suite", str(suite_file), "--out", str(tmp_path / "out"), "--tables-only"]
    table = tmp_path / "out/s/tables/axis.md"
    assert main(command + ["--sia", str(tmp_path / "sia")]) == 0
    assert "| fixture | widget | (90.00, 90.00, 90.00) | pending |" in table.read_text()
    assert main(command) == 0
    assert "| fixture | widget | (90.00, 90.00, 90.00) | needs --sia |" in table.read_text()
