"""The shipped suites run what their rows say: every variant of an axis is its own configuration,
labels agree with the settings, and the `paper:` figures are the paper's (Tab. 1, Tab. 5a, Tab. 5b,
read off the paper, not the suites). Found by mutation testing: a copy-paste slip in a suite
(NSA set to cutpaste, a "w/o RRS" row that keeps RRS) merged two rows into one cell unnoticed."""

from __future__ import annotations

import re

import pytest

from realnet.bench.suite import expand, load_suite, shipped_suites

# The paper's MVTec-AD averages (Image AUROC, Pixel AUROC, PRO) in %.
PAPER_TAB1 = {"SIA": (99.65, 99.03, 93.07), "DTD": (99.52, 98.92, 91.40), "NSA": (99.35, 98.28, 90.73),
              "CutPaste": (98.73, 98.14, 86.40)}
PAPER_TAB5A = {"RDR, w/o RRS": (94.46, 93.38, 79.81), "RLPR, w/o RRS": (95.67, 95.84, 82.26),
               "AFS, w/o RRS": (96.86, 96.32, 84.13), "RDR + RRS": (99.39, 98.66, 92.01),
               "RLPR + RRS": (99.09, 98.22, 88.38), "AFS + RRS": (99.65, 99.03, 93.07)}
PAPER_TAB5B = {"s = 0": (99.35, 98.85, 91.80), "s = 0.1": (99.65, 98.96, 92.16), "s = 0.2": (99.61, 98.95, 89.36),
               "s ~ U(0.1, 0.2)": (99.65, 99.03, 93.07)}
SOURCE_LABELS = {"SIA": "sia", "DTD": "dtd", "NSA": "nsa", "CutPaste": "cutpaste"}


def _cells_by_member(cells):
    return {(axis, variant, cell.dataset.name, cell.category): cell
            for cell in cells for axis, variant in cell.members}


@pytest.mark.parametrize("name", shipped_suites())
def test_every_variant_of_an_axis_is_its_own_configuration(name):
    suite = load_suite(name)
    held = _cells_by_member(expand(suite))
    for axis in suite.axes:
        for dataset in axis.datasets:
            category = suite.dataset(dataset).categories[0]
            ids = [held[(axis.name, v.name, dataset, category)].id for v in axis.variants]
            assert len(set(ids)) == len(ids), (name, axis.name, ids)


@pytest.mark.parametrize("name", shipped_suites())
def test_labels_agree_with_the_settings_they_run(name):
    """'Max&Avg, P = 0.2' runs rrs.mode max_avg at ratio 0.2; 'NSA' draws from nsa alone;
    'w/o RRS' keeps every residual; 's = 0.1' reads the s0.1 bank."""
    suite = load_suite(name)
    held = _cells_by_member(expand(suite))
    for axis in suite.axes:
        for variant in axis.variants:
            dataset = axis.datasets[0]
            config = held[(axis.name, variant.name, dataset, suite.dataset(dataset).categories[0])].config
            rrs, synthesis = config["rrs"], config["synthesis"]
            found = re.fullmatch(r"(Max&Avg|Max|Avg), P = (1/3|1/2|[0-9.]+)", variant.label)
            if found:
                mode = {"Max&Avg": "max_avg", "Max": "max", "Avg": "avg"}[found[1]]
                ratio = {"1/3": 1 / 3, "1/2": 0.5}.get(found[2]) or float(found[2])
                assert (rrs["mode"], rrs["ratio"]) == (mode, pytest.approx(ratio)), (name, variant.name)
            if variant.label in SOURCE_LABELS:
                assert synthesis["sources"] == {SOURCE_LABELS[variant.label]: 1.0}, (name, variant.name)
            if "w/o RRS" in variant.label:
                assert rrs["mode"] == "all", (name, variant.name)
            elif variant.label.endswith("+ RRS"):
                assert rrs["mode"] != "all", (name, variant.name)
            for method in ("RDR", "RLPR", "AFS"):
                if variant.label.startswith(method + ",") or variant.label.startswith(method + " +"):
                    assert config["selection"]["method"] == method.lower(), (name, variant.name)
            strength = re.fullmatch(r"s = ([0-9.]+)", variant.label)
            if strength:
                assert synthesis["sia_root"] == "{sia}/s" + strength[1], (name, variant.name)


@pytest.mark.parametrize("name", shipped_suites())
def test_the_paper_figures_beside_tab1_and_tab5_rows_are_the_papers(name):
    suite = load_suite(name)
    checked = 0
    for axis in suite.axes:
        table = {"Tab. 1": PAPER_TAB1, "Tab. 1 / Tab. 2": PAPER_TAB1, "Tab. 5a": PAPER_TAB5A,
                 "Tab. 5b": PAPER_TAB5B}.get(axis.paper)
        if table is None:
            continue
        for variant in axis.variants:
            if variant.label in table:
                assert variant.paper == table[variant.label], (name, axis.name, variant.name)
                checked += 1
    if name in ("ablations", "paper-main", "cpu-real"):
        assert checked >= 4
