"""Tables in the paper's format, from a suite's cells and their statuses (pure: strings in, strings
out).

- Per axis, by category: rows are categories (with an AVG row per dataset), columns are the
  axis's variants, each cell is (Image AUROC, Pixel AUROC, PRO) in %, as in the paper's Tab. 1.
- Per axis, the trend: one row per variant with the metrics averaged over the axis's categories,
  beside the paper's reported averages where the suite gives them.
- Every cell in one long CSV (results.csv).

A cell that is not complete shows its status (failed, needs --sia, pending); an average over
fewer categories than the axis has is marked with '*' (in the CSV, its row is AVG*).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

from realnet.bench.suite import METRICS, Axis, Cell, Suite
from realnet.config import flat_config

HEADERS = ("Image AUROC", "Pixel AUROC", "PRO")
Metrics = tuple[float | None, ...]  # fractions in [0, 1], in METRICS order


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def csv_percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def triple(values: Metrics) -> str:
    """(Image AUROC, Pixel AUROC, PRO) in %, the paper's cell format."""
    return "(" + ", ".join(percent(v) for v in values) + ")"


def metrics_of(status: dict[str, Any]) -> Metrics | None:
    if status.get("status") != "complete":
        return None
    return tuple(status["metrics"].get(name) for name in METRICS)


def status_text(status: dict[str, Any]) -> str:
    if status.get("status") == "skipped":
        return status["reason"].split(" (")[0]
    return status.get("status", "pending")


def mean_metrics(rows: list[Metrics]) -> Metrics:
    """Per metric, the mean over the rows that have it (None where none has)."""
    means = []
    for column in zip(*rows) if rows else [()] * len(METRICS):
        present = [v for v in column if v is not None]
        means.append(sum(present) / len(present) if present else None)
    return tuple(means)


def axis_cells(axis: Axis, cells: list[Cell]) -> dict[tuple[str, str, str], Cell]:
    """(variant, dataset, category) -> the cell that holds it, for one axis."""
    return {(variant, cell.dataset.name, cell.category): cell
            for cell in cells for axis_name, variant in cell.members if axis_name == axis.name}


def caption(suite: Suite, axis: Axis, what: str) -> str:
    name = f"{axis.paper}: {axis.title}" if axis.paper else axis.title
    return f"**{name}** ({suite.preset} preset): {what}"


def overrides_text(overrides) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides)


def category_table(suite: Suite, axis: Axis, cells: list[Cell], statuses: dict[str, dict]) -> tuple[str, str]:
    """The paper-format table of one axis: Markdown and CSV."""
    held = axis_cells(axis, cells)
    names = [v.name for v in axis.variants]
    md = [caption(suite, axis, "(Image AUROC, Pixel AUROC, PRO) in %"), "",
          "| dataset | category | " + " | ".join(v.label for v in axis.variants) + " |",
          "|---|---|" + "---|" * len(names)]
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["dataset", "category"] + [f"{name} {header}" for name in names for header in HEADERS])
    partial = False
    for dataset_name in axis.datasets:
        categories = suite.dataset(dataset_name).categories
        per_variant: dict[str, list[Metrics]] = {name: [] for name in names}
        for category in categories:
            shown, numbers = [], []
            for name in names:
                status = statuses[held[(name, dataset_name, category)].id]
                values = metrics_of(status)
                if values is None:
                    shown.append(status_text(status))
                    numbers += [""] * len(METRICS)
                else:
                    per_variant[name].append(values)
                    shown.append(triple(values))
                    numbers += [csv_percent(v) for v in values]
            md.append(f"| {dataset_name} | {category} | " + " | ".join(shown) + " |")
            writer.writerow([dataset_name, category] + numbers)
        if len(categories) > 1:
            shown, numbers, row_partial = [], [], False
            for name in names:
                done = per_variant[name]
                counted = [sum(v is not None for v in column) for column in zip(*done)]  # per metric
                star = "*" if any(0 < n < len(categories) for n in counted) else ""
                row_partial |= bool(star)
                averages = mean_metrics(done)
                shown.append(triple(averages) + star if done else "-")
                numbers += [csv_percent(v) for v in averages]
            partial |= row_partial
            md.append(f"| {dataset_name} | **AVG** | " + " | ".join(shown) + " |")
            writer.writerow([dataset_name, "AVG*" if row_partial else "AVG"] + numbers)
    if partial:
        md += ["", "\\* average over fewer categories than the dataset has: those completed so far, and for a "
               "pixel metric those with masks."]
    return "\n".join(md) + "\n", rows.getvalue()


def trend_rows(suite: Suite, axis: Axis, cells: list[Cell], statuses: dict[str, dict]) -> list[dict[str, Any]]:
    """Per dataset and variant: metrics averaged over its complete categories, and the paper's."""
    held = axis_cells(axis, cells)
    rows = []
    for dataset_name in axis.datasets:
        categories = suite.dataset(dataset_name).categories
        for variant in axis.variants:
            found = (metrics_of(statuses[held[(variant.name, dataset_name, c)].id]) for c in categories)
            done = [m for m in found if m]
            rows.append({"dataset": dataset_name, "variant": variant.name, "label": variant.label,
                         "setting": overrides_text(variant.overrides) or "suite default",
                         "metrics": mean_metrics(done),
                         "complete": len(done), "total": len(categories), "paper": variant.paper})
    return rows


def trend_table(suite: Suite, axis: Axis, cells: list[Cell], statuses: dict[str, dict]) -> tuple[str, str]:
    """The ablation trend of one axis (variant vs averaged metrics): Markdown and CSV."""
    rows = trend_rows(suite, axis, cells, statuses)
    with_paper = any(r["paper"] for r in rows)
    header = ["dataset", "variant", "setting", *HEADERS, "cells"]
    header += ["paper (Image AUROC, Pixel AUROC, PRO)"] if with_paper else []
    md = [caption(suite, axis, "averages over categories in %"), "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "variant", "label", "setting", *METRICS, "complete", "total",
                     *(f"paper_{m}" for m in METRICS)])
    for r in rows:
        paper = r["paper"] or (None,) * len(METRICS)
        line = [r["dataset"], r["label"], r["setting"], *map(percent, r["metrics"]), f"{r['complete']}/{r['total']}"]
        if with_paper:
            line.append("(" + ", ".join("-" if p is None else f"{p:.2f}" for p in paper) + ")" if r["paper"] else "")
        md.append("| " + " | ".join(line) + " |")
        writer.writerow([r["dataset"], r["variant"], r["label"], r["setting"],
                         *map(csv_percent, r["metrics"]), r["complete"], r["total"],
                         *("" if p is None else f"{p:.2f}" for p in paper)])
    return "\n".join(md) + "\n", out.getvalue()


def plot_series(suite: Suite, axis: Axis, cells: list[Cell], statuses: dict[str, dict]) -> dict[str, dict[str, list]]:
    """For an axis with a plot: per dataset, per line value, the points (x, averaged metrics,
    whether every category is complete) of the variants with at least one complete category. x
    and line values come from each variant's effective configuration."""
    held = axis_cells(axis, cells)
    series: dict[str, dict[str, list]] = {}
    for dataset_name in axis.datasets:
        lines: dict[str, list] = {}
        for variant in axis.variants:
            cells_of = [held[(variant.name, dataset_name, c)] for c in suite.dataset(dataset_name).categories]
            done = [m for m in (metrics_of(statuses[c.id]) for c in cells_of) if m]
            if done:
                config = flat_config(cells_of[0].config)
                lines.setdefault(str(config[axis.plot.lines]), []).append(
                    (config[axis.plot.x], mean_metrics(done), len(done) == len(cells_of)))
        series[dataset_name] = lines
    return series


def results_csv(cells: list[Cell], statuses: dict[str, dict]) -> str:
    """Every cell: id, axes, status or error, metrics as fractions, wall times."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cell", "dataset", "category", "variant", "axes", "status", "error", *METRICS,
                     "fit_steps", "fit_wall_s", "test_wall_s"])
    for cell in cells:
        status = statuses[cell.id]
        values = metrics_of(status) or (None,) * len(METRICS)
        writer.writerow([cell.id, cell.dataset.name, cell.category, cell.variant,
                         " ".join(f"{a}:{v}" for a, v in cell.members), status_text(status),
                         status.get("error", ""), *("" if v is None else f"{v:.6f}" for v in values),
                         status.get("fit_steps", ""), status.get("fit_wall_s", ""), status.get("test_wall_s", "")])
    return out.getvalue()


def axis_section(suite: Suite, axis: Axis, trend: str, by_category: str, plots: list) -> str:
    """An axis in the suite README: trend, plots, and the per-category table when the axis has
    more than one category (with one, the trend table already holds every number)."""
    images = "".join(f"\n![{axis.name}]({p.as_posix()})\n" for p in plots)
    categories = sum(len(suite.dataset(d).categories) for d in axis.datasets)
    return f"## {axis.paper + ' - ' if axis.paper else ''}{axis.title}\n\n{trend}{images}" + (
        f"\n{by_category}" if categories > 1 else "")


def index_markdown(suite: Suite, cells: list[Cell], statuses: dict[str, dict], sections: list[str],
                   efficiency: str | None) -> str:
    """The suite's README: cell counts by status, then every axis (trend, plot, categories)."""
    counts = Counter(status_text(statuses[cell.id]) for cell in cells)
    lines = [f"# Suite {suite.name}", "", suite.description, "",
             f"Preset `{suite.preset}`"
             + (f"; every cell also sets `{overrides_text(suite.overrides)}`" if suite.overrides else "") + ".",
             f"Cells: {len(cells)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}). "
             "Per-cell status, errors and wall times: `results.csv`.", ""]
    if efficiency:
        lines += ["## Efficiency", "", efficiency]
    return "\n".join(lines + sections)


EFFICIENCY_COLUMNS = (
    ("configuration", "name"), ("detector params (M)", "detector_params"), ("backbone params (M)", "backbone_params"),
    ("checkpoint MB", "checkpoint_mb"), ("peak RSS MB", "peak_rss_mb"),
    ("img/s bs 1", "images_per_s_bs1"), ("img/s bs 8", "images_per_s_bs8"),
    ("backbone img/s bs 1", "backbone_images_per_s_bs1"), ("backbone img/s bs 8", "backbone_images_per_s_bs8"),
    ("time / backbone bs 1", "time_ratio_bs1"), ("time / backbone bs 8", "time_ratio_bs8"),
)


def efficiency_table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """One row per configuration (see realnet.bench.efficiency): Markdown and CSV."""
    def shown(key: str, value: Any) -> str:
        if value is None:
            return "-"
        return f"{value / 1e6:.2f}" if key.endswith("_params") else str(value)

    md = ["| " + " | ".join(title for title, _ in EFFICIENCY_COLUMNS) + " |", "|" + "---|" * len(EFFICIENCY_COLUMNS)]
    md += ["| " + " | ".join(shown(key, row.get(key)) for _, key in EFFICIENCY_COLUMNS) + " |" for row in rows]
    if rows:
        first = rows[0]
        md += ["", f"{first['device']}, {first['threads']} threads, {first['image_size']} px, the same "
               f"{first['n_images']} images per configuration, median of {first['repeats']} passes. "
               "Time / backbone = the detector's time per image over the backbone's alone."]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [key for _, key in EFFICIENCY_COLUMNS] + ["image_size", "device", "threads", "n_images", "repeats"]
    writer.writerow(keys)
    writer.writerows([[row.get(key, "") for key in keys] for row in rows])
    return "\n".join(md) + "\n", out.getvalue()
