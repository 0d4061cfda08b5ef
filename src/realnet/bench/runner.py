"""`realnet bench`: run a suite's cells, each a fit then a test, into <out>/<suite>/<cell id>/.

A cell folder is an ordinary run folder (model.safetensors, model.json, metrics.json, scores.csv,
panels/) plus ``cell.json``: its status (running / complete / failed / interrupted), its
configuration, the one-line error of a failed attempt and the headline metrics. Cells are
independent: a complete cell is kept, any other is (re)run, and a fit killed mid-way continues
from its resume state, so a suite can be stopped and continued at any time. A failed cell is
recorded and the suite goes on.

Everything that can be checked before the first fit is checked first, without importing torch:
the suite, the data roots and category folders, --sia / --dtd, and that no existing cell folder
holds a run of another configuration.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realnet.bench import tables
from realnet.bench.suite import METRICS, Cell, Suite, expand, override_strings, select, substitute
from realnet.config import flat_config, setting_changes
from realnet.errors import RealnetError

CELL_STATUS = "cell.json"
CRASH_LOG = "error.log"
TABLES = "tables"
PLOTS = "plots"
EFFICIENCY_TABLE, EFFICIENCY_RECORD = "efficiency.md", "efficiency.json"  # see benchmarks/bench_efficiency.py
NEEDS_FLAG = {"sia": "--sia (SDAS image bank)", "dtd": "--dtd (DTD folder)"}


@dataclass
class BenchRequest:
    suite: Suite
    out: Path
    data: Path | None = None  # default parent of every dataset root
    data_roots: dict[str, Path] = field(default_factory=dict)  # root key -> folder
    dtd: Path | None = None
    sia: Path | None = None
    only: list[str] = field(default_factory=list)  # globs on dataset/category/variant or axis names
    device: str = "auto"
    progress: bool = True


def suite_dir(out: Path, suite: Suite) -> Path:
    return Path(out) / suite.name


def cell_dir(out: Path, suite: Suite, cell: Cell) -> Path:
    return suite_dir(out, suite) / cell.id


def resolve_roots(cells: list[Cell], data: Path | None, data_roots: dict[str, Path], suite: Suite) -> dict[str, Path]:
    """Data root of every dataset the cells read: --data-root KEY=DIR, else <--data>/<path>. A key
    of the suite that the selected cells do not read is no error (one command line for any --only)."""
    datasets = {cell.dataset.name: cell.dataset for cell in cells}
    keys = {d.root for d in suite.datasets}
    unknown = sorted(set(data_roots) - keys)
    if unknown:
        raise RealnetError(f"--data-root {', '.join(unknown)}: no such root key in {suite.source} "
                           f"(known: {', '.join(sorted(keys))})")
    roots = {}
    for dataset in datasets.values():
        if dataset.root in data_roots:
            roots[dataset.name] = Path(data_roots[dataset.root])
        elif data is not None:
            roots[dataset.name] = Path(data) / dataset.path
        else:
            raise RealnetError(
                f"dataset {dataset.name} has no data root: pass --data ROOT or --data-root {dataset.root}=DIR")
    return roots


def check_data(cells: list[Cell], roots: dict[str, Path]) -> None:
    """Every data root and category folder the cells read exists; one line names all that do not."""
    from realnet.data.layouts import list_categories

    missing = [f"{name} root {root}" for name, root in roots.items() if not root.is_dir()]
    if missing:
        raise RealnetError(f"missing data folder(s): {'; '.join(missing)} (pass --data ROOT or --data-root KEY=DIR)")
    for name, root in roots.items():
        layout = next(c.dataset.layout for c in cells if c.dataset.name == name)
        found = set(list_categories(root, layout))
        absent = sorted({c.category for c in cells if c.dataset.name == name} - found)
        if absent:
            missing.append(f"{name} categories {', '.join(absent)} not under {root}")
    if missing:
        raise RealnetError(f"missing data: {'; '.join(missing)} (run the others with --only)")


def check_device(device: str) -> None:
    """A device this machine lacks is one line before the first fit, not one failure per cell."""
    from realnet.engine.runtime import resolve_device  # torch is imported once the suite is known good

    resolve_device(device)


def check_folders(dtd: Path | None, sia: Path | None) -> dict[str, str]:
    """The --sia / --dtd folders that were given, checked, as template values."""
    folders = {}
    for name, path in (("sia", sia), ("dtd", dtd)):
        if path is not None:
            if not Path(path).is_dir():
                raise RealnetError(f"--{name} folder {path} not found")
            folders[name] = str(Path(path).resolve())
    return folders


def read_status(folder: Path) -> dict[str, Any] | None:
    path = folder / CELL_STATUS
    if not path.is_file():
        return None
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # not JSON, or not UTF-8
        status = None
    if not isinstance(status, dict) or not _has_status_types(status):
        raise RealnetError(f"{path}: unreadable cell status; delete that cell folder to rerun it")
    return status


def _has_status_types(status: dict[str, Any]) -> bool:
    """The fields the runner and the tables read have the types run_cell writes (a hand edit or
    another program's file may not)."""
    kinds = {"config": dict, "metrics": dict, "inputs": dict, "status": str, "data_root": str}
    return all(status.get(key) is None or isinstance(status[key], kind) for key, kind in kinds.items())


def cell_inputs(cell: Cell, data_root: Path, folders: dict[str, str]) -> dict[str, str]:
    """What a cell reads besides its configuration: its data root, the --sia / --dtd folders it
    needs, and the DTD folder it draws textures from (found as fit finds it; an error when there is
    none). Part of its identity, so that a rerun on other data never keeps the old results."""
    from realnet.synthesis.sources import find_dtd_root

    inputs = {"data_root": str(Path(data_root).resolve()), **{name: folders[name] for name in cell.needs if name in folders}}
    if "dtd" in cell_reads(cell):  # given by --dtd, a suite's or --set's synthesis.dtd_root, or found
        inputs["dtd"] = str(find_dtd_root(run_config(cell, folders).synthesis.dtd_root, data_root).resolve())
    return inputs


def cell_reads(cell: Cell) -> set[str]:
    """The synthesis folders (sia, dtd) the cell's sources draw from."""
    return {name for name in ("sia", "dtd") if cell.config["synthesis"]["sources"].get(name, 0) > 0}


def recorded_config_changes(status: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, recorded value, value now) for each setting a cell's recorded run differs in
    from `config`; every one when its cell.json records no configuration (a setting it merely
    lacks counts as its default)."""
    recorded = status.get("config")
    return (setting_changes(recorded, config) if recorded
            else [(name, None, value) for name, value in sorted(flat_config(config).items())])


def check_identities(cells: list[Cell], out: Path, suite: Suite, roots: dict[str, Path],
                     folders: dict[str, str], others: list[Cell] = ()) -> None:
    """No cell folder may hold a run of another configuration (a changed suite or --set) or on
    other inputs (another data root, --sia or --dtd folder). `others`, the suite's cells not run
    now but sharing a data root with those that are, are checked for their inputs, so that one
    table never compares cells trained on different data."""
    for cell in [*cells, *others]:
        folder = cell_dir(out, suite, cell)
        status = read_status(folder)
        if status is None:
            continue
        changed = recorded_config_changes(status, cell.config)
        if cell in others and (changed or any(n not in folders for n in cell.needs)):
            continue  # stale, or its inputs cannot be known now: its table says so
        if changed:
            shown = ", ".join(f"{k} {before!r} -> {now!r}" for k, before, now in changed[:3])
            raise RealnetError(
                f"{folder} holds a run of another configuration ({shown}); choose another --out or delete it")
        try:
            now = cell_inputs(cell, roots[cell.dataset.name], folders)
        except RealnetError:  # no DTD folder: only a cell not run now gets here, and its table marks it
            continue
        recorded = status.get("inputs") or {"data_root": str(Path(status.get("data_root", "")).resolve())}
        # an input a cell was recorded without (one added to the record later) is not compared,
        # as fit's resume does; the data root always is
        changed = sorted(k for k in now if (k in recorded or k == "data_root") and recorded.get(k) != now[k])
        if changed:
            shown = ", ".join(f"{k} {recorded.get(k)!r} -> {now[k]!r}" for k in changed)
            raise RealnetError(f"{folder} holds a run on other inputs ({shown}); choose another --out or delete it")


RETESTED = "its metrics.json was removed or rewritten by another test; rerun the suite to test it on the suite's data again"


def is_complete(folder: Path, status: dict[str, Any] | None) -> bool:
    return (status is not None and status.get("status") == "complete" and (folder / "metrics.json").is_file()
            and not retested(folder, status))


def retested(folder: Path, status: dict[str, Any]) -> bool:
    """A `realnet test` run on the cell's folder since (on other data, say) replaced the metrics
    the tables would show from cell.json; the next suite run tests the cell again."""
    try:
        measured = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    recorded = status.get("metrics") or {}
    return not isinstance(measured, dict) or any(measured.get(name) != recorded.get(name) for name in METRICS)


def collect_statuses(suite: Suite, cells: list[Cell], out: Path,
                     folders: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The status of every cell: its cell.json, or 'stale' (it was run under another
    configuration, so its figures are not the suite's), 'skipped' (a needed folder was not given)
    or 'pending' (not run yet)."""
    statuses = {}
    for cell in cells:
        folder = cell_dir(out, suite, cell)
        status = read_status(folder)
        if status is not None and recorded_config_changes(status, cell.config):
            status = {"status": "stale", "reason": "run under another configuration; rerun it or delete its folder"}
        elif status is not None and status.get("status") == "complete" and retested(folder, status):
            status = {"status": "stale", "reason": RETESTED}
        if status is None:
            unmet = [n for n in cell.needs if n not in (folders or {})]
            status = ({"status": "skipped", "reason": "needs " + ", ".join(NEEDS_FLAG[n] for n in unmet)}
                      if unmet else {"status": "pending"})
        statuses[cell.id] = status
    return statuses


def run_suite(request: BenchRequest, report: Callable[[str], None] = lambda line: None
              ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Path]]]:
    """Run the selected cells of the suite (preflight first, see the module docstring), then
    write the tables and plots of the whole suite. Returns the statuses of the selected cells
    and the files written."""
    suite = request.suite
    cells = expand(suite)
    chosen = select(cells, request.only)
    if not chosen:
        raise RealnetError(f"--only {' '.join(request.only)} matches no cell of {suite.source}")
    folders = check_folders(request.dtd, request.sia)
    roots = resolve_roots(chosen, request.data, request.data_roots, suite)
    check_data(chosen, roots)
    for cell in chosen:  # a missing DTD folder is one line before the first fit, not one failure per cell
        if not any(n not in folders for n in cell.needs):
            cell_inputs(cell, roots[cell.dataset.name], folders)
    check_device(request.device)
    others = [c for c in cells if c not in chosen and c.dataset.name in roots]
    check_identities(chosen, request.out, suite, roots, folders, others)

    width = len(str(len(chosen)))
    for number, cell in enumerate(chosen, 1):
        prefix = f"[{number:>{width}}/{len(chosen)}] {cell.id}"
        folder = cell_dir(request.out, suite, cell)
        previous = read_status(folder)
        if is_complete(folder, previous):
            report(f"{prefix}: complete, kept")
            continue
        unmet = [n for n in cell.needs if n not in folders]
        if unmet:
            report(f"{prefix}: skipped, needs {', '.join(NEEDS_FLAG[n] for n in unmet)}")
            continue
        report(f"{prefix}: running")
        status = run_cell(cell, folder, roots[cell.dataset.name], folders, request)
        report(f"{prefix}: {describe(status)}")
    written = write_reports(suite, cells, request.out, folders)
    return collect_statuses(suite, chosen, request.out, folders), written


def run_config(cell: Cell, folders: dict[str, str]):
    """The cell's RealNetConfig with --sia / --dtd filled in."""
    from realnet.config import load_config

    config = load_config(cell.config["preset"], None, override_strings(substitute(cell.overrides, folders)))
    reads = cell_reads(cell)  # only those: a folder a cell never reads must not change its settings on a resume
    if "sia" in folders and "sia" in reads and config.synthesis.sia_root is None:
        config.synthesis.sia_root = folders["sia"]
    if "dtd" in folders and "dtd" in reads and config.synthesis.dtd_root is None:
        config.synthesis.dtd_root = folders["dtd"]
    return config


def run_cell(cell: Cell, folder: Path, data_root: Path, folders: dict[str, str],
             request: BenchRequest) -> dict[str, Any]:
    """Fit then test one cell in `folder`, recording its status; a failure is recorded, not raised
    (KeyboardInterrupt is recorded as 'interrupted' and raised)."""
    from realnet.engine.checkpoint import write_json

    status: dict[str, Any] = {
        "id": cell.id, "dataset": cell.dataset.name, "layout": cell.dataset.layout, "category": cell.category,
        "variant": cell.variant, "members": [list(m) for m in cell.members],
        "overrides": dict(cell.overrides), "config": cell.config, "data_root": str(data_root),
        "inputs": cell_inputs(cell, data_root, folders),
        "device": request.device, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(folder / CELL_STATUS, status)
    (folder / CRASH_LOG).unlink(missing_ok=True)  # a previous attempt's traceback no longer applies
    try:
        status.update(fit_and_test(cell, folder, data_root, folders, request), status="complete")
    except RealnetError as error:
        status.update(status="failed", error=one_line(str(error)))
    except Exception as error:  # a bug or a library error: keep going, keep the traceback
        status.update(status="failed", error=f"{type(error).__name__}: {one_line(str(error))} (traceback in {CRASH_LOG})")
        (folder / CRASH_LOG).write_text(traceback.format_exc())
    except BaseException:  # Ctrl-C, the CLI's SIGTERM exception, SystemExit: stopped, not failed
        write_json(folder / CELL_STATUS, {**status, "status": "interrupted"})
        raise
    status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(folder / CELL_STATUS, status)
    return status


def fit_and_test(cell: Cell, folder: Path, data_root: Path, folders: dict[str, str],
                 request: BenchRequest) -> dict[str, Any]:
    from realnet.engine.evaluate import evaluate
    from realnet.engine.fit import FitRequest, fit

    meta = fit(FitRequest(config=run_config(cell, folders), data_root=data_root, category=cell.category, out=folder,
                          dataset=cell.dataset.layout, resume=True, device=request.device, progress=request.progress))
    started = time.perf_counter()
    metrics = evaluate(folder, device=request.device, progress=request.progress)
    return {"metrics": {name: metrics[name] for name in METRICS}, "device": meta["fit"]["device"],
            "fit_wall_s": meta["fit"]["wall_s"], "fit_steps": meta["fit"]["steps"],
            "test_wall_s": round(time.perf_counter() - started, 1),
            "backbone_weights_sha256": metrics["backbone_weights_sha256"]}


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def describe(status: dict[str, Any]) -> str:
    if status["status"] != "complete":
        return f"{status['status']}: {status.get('error') or status.get('reason', '')}".rstrip(": ")
    m = status["metrics"]
    shown = "  ".join(f"{name} {'-' if m[key] is None else f'{100 * m[key]:.2f}'}"
                      for name, key in zip(("image AUROC", "pixel AUROC", "PRO"), METRICS))
    return f"complete: {shown}  (fit {status['fit_wall_s']:.0f} s, test {status['test_wall_s']:.0f} s)"


def write_reports(suite: Suite, cells: list[Cell], out: Path,
                  folders: dict[str, str] | None = None) -> dict[str, list[Path]]:
    """Tables (Markdown + CSV per axis, a trend table per axis, every cell in results.csv, an
    index README.md) and line plots for the axes that ask for one. Returns what was written."""
    from realnet.engine.checkpoint import atomic_write

    statuses = collect_statuses(suite, cells, out, folders)
    table_dir, plot_dir = suite_dir(out, suite) / TABLES, suite_dir(out, suite) / PLOTS
    written: dict[str, list[Path]] = {"tables": [], "plots": []}

    def save(path: Path, text: str) -> None:
        atomic_write(path, lambda tmp: tmp.write_text(text))
        written["tables"].append(path)

    sections = []
    for axis in suite.axes:
        by_category, by_category_csv = tables.category_table(suite, axis, cells, statuses)
        trend, trend_csv = tables.trend_table(suite, axis, cells, statuses)
        save(table_dir / f"{axis.name}.md", by_category)
        save(table_dir / f"{axis.name}.csv", by_category_csv)
        save(table_dir / f"{axis.name}_trend.md", trend)
        save(table_dir / f"{axis.name}_trend.csv", trend_csv)
        plots = []
        if axis.plot is not None:
            from realnet.bench.plots import line_plot

            title = f"{axis.paper}: {axis.title}" if axis.paper else axis.title
            for dataset, series in tables.plot_series(suite, axis, cells, statuses).items():
                path = plot_dir / f"{axis.name}-{dataset}.png"
                if line_plot(path, series, axis.plot.x_label, f"{title} ({dataset})"):
                    plots.append(path)
                    written["plots"].append(path)
        links = [Path("..") / p.relative_to(suite_dir(out, suite)) for p in plots]  # from tables/README.md
        sections.append(tables.axis_section(suite, axis, trend, by_category, links))
    save(table_dir / "results.csv", tables.results_csv(cells, statuses))
    save(table_dir / "README.md", tables.index_markdown(suite, cells, statuses, sections,
                                                        current_efficiency(table_dir, statuses)))
    return written


def current_efficiency(table_dir: Path, statuses: dict[str, dict[str, Any]]) -> str | None:
    """The efficiency table that benchmarks/bench_efficiency.py wrote, or a line saying it is out
    of date when a cell it measured was rerun, or is no longer complete, since."""
    markdown, record = table_dir / EFFICIENCY_TABLE, table_dir / EFFICIENCY_RECORD
    if not markdown.is_file():
        return None
    try:
        content = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except ValueError:  # not JSON, or not UTF-8: the table cannot be checked, as with no record
        content = None
    measured = content.get("cells") if isinstance(content, dict) else None
    if not isinstance(measured, dict) or any(
            statuses.get(cell_id, {}).get("status") != "complete" or statuses[cell_id].get("finished") != finished
            for cell_id, finished in measured.items()):
        return (f"*Out of date: cells it measured were rerun since, or its record {EFFICIENCY_RECORD} is missing "
                "or damaged. Rerun `benchmarks/bench_efficiency.py --suite ... --out ...`.*")
    return markdown.read_text()
