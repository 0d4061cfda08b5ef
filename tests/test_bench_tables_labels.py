"""Bench tables: rows are labelled as the suite labels them, the setting column shows what the
variant changes, the '*' of an average marks missing categories only, and line plots put numeric
x values in order (found by mutation testing; pure table and plot functions, no fit)."""

from __future__ import annotations

import csv

from realnet.bench import tables
from realnet.bench.plots import _sorted_positions
from realnet.bench.suite import expand, parse_suite


def two_category_suite(variants, **extra):
    return parse_suite({"name": "s", "preset": "tiny",
                        "datasets": [{"name": "d", "layout": "mvtec", "root": "d", "categories": ["x", "y"]}],
                        "axes": [{"name": "axis", "variants": variants}], **extra}, "s.yaml")


def complete(image, pixel, pro):
    return {"status": "complete", "metrics": {"image_auroc": image, "pixel_auroc": pixel, "aupro": pro}}


def test_trend_rows_show_the_variant_label_and_only_the_variants_own_settings():
    suite = two_category_suite([{"name": "ref", "label": "Max&Avg, P = 1/3"},
                                {"name": "pmax", "label": "Max, P = 1/3", "set": {"rrs.mode": "max"}}],
                               set={"train.steps": 5})
    cells = expand(suite)
    statuses = {cell.id: complete(0.9, 0.8, 0.7) for cell in cells}
    markdown, text = tables.trend_table(suite, suite.axes[0], cells, statuses)
    assert "| d | Max&Avg, P = 1/3 | suite default | 90.00 | 80.00 | 70.00 | 2/2 |" in markdown
    assert "| d | Max, P = 1/3 | rrs.mode=max | 90.00 | 80.00 | 70.00 | 2/2 |" in markdown
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["variant"], r["label"], r["setting"]) for r in rows] == [
        ("ref", "Max&Avg, P = 1/3", "suite default"), ("pmax", "Max, P = 1/3", "rrs.mode=max")]


def test_an_average_is_starred_only_when_some_categories_are_missing():
    """A metric that no category has (a dataset without masks) is '-', not a partial average."""
    suite = two_category_suite([{"name": "a"}])
    cells = expand(suite)
    statuses = {"d/x/a": complete(0.9, None, None), "d/y/a": complete(0.7, None, None)}
    markdown, _ = tables.category_table(suite, suite.axes[0], cells, statuses)
    average = next(line for line in markdown.splitlines() if "**AVG**" in line)
    assert average == "| d | **AVG** | (80.00, -, -) |" and "fewer categories" not in markdown
    statuses["d/y/a"] = {"status": "failed", "error": "boom"}
    markdown, _ = tables.category_table(suite, suite.axes[0], cells, statuses)
    assert "| d | **AVG** | (90.00, -, -)* |" in markdown and "fewer categories" in markdown


def test_numeric_x_values_are_plotted_in_increasing_order_and_others_as_first_seen():
    assert _sorted_positions([0.5, 0.1, 1.0, 0.5, 1 / 3, 0.05]) == [0.05, 0.1, 1 / 3, 0.5, 1.0]
    assert _sorted_positions([4, 1, 2]) == [1, 2, 4]
    assert _sorted_positions(["max", "avg", "max", "max_avg"]) == ["max", "avg", "max_avg"]
