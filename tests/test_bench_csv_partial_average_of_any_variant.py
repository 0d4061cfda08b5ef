"""The CSV's AVG* marks a partial average of any variant in the row, not
only of the first column."""

from __future__ import annotations

from test_bench import suite_dict
from realnet.bench.suite import expand, parse_suite
from realnet.bench.tables import category_table


def test_a_partial_average_of_the_second_variant_marks_the_csv_row():
    raw = suite_dict([{"name": "reference"}, {"name": "max", "set": {"rrs.mode": "max"}}])
    raw["datasets"][0]["categories"] = ["widget", "gadget"]
    suite = parse_suite(raw, "s.yaml")
    cells = expand(suite)
    done = {"status": "complete", "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7}}
    variant = {cell.id: dict(cell.members)["axis"] for cell in cells}
    statuses = {cell.id: {"status": "failed"} if variant[cell.id] == "max" and cell.category == "gadget" else done
                for cell in cells}
    markdown, csv_text = category_table(suite, suite.axes[0], cells, statuses)
    avg_md = [line for line in markdown.splitlines() if "**AVG**" in line]
    assert avg_md == ["| fixture | **AVG** | (90.00, 80.00, 70.00) | (90.00, 80.00, 70.00)* |"]
    assert csv_text.splitlines()[-1].startswith("fixture,AVG*,")
