"""Benchmark suites: a YAML file naming datasets, a preset and named ablation axes, expanded into
independent cells (dataset x category x configuration).

Schema (unknown keys are refused by name)::

    name: ablations                     # folder name under --out
    description: one line
    preset: paper                       # paper | cpu | tiny
    set: {train.steps: 300}             # optional, applied to every cell (e.g. a time budget)
    datasets:
      - name: mvtec                     # used in cell ids and tables
        layout: mvtec                   # mvtec | mpdd | btad | visa (realnet.data.layouts)
        root: mvtec                     # key for --data-root KEY=DIR
        path: mvtec                     # optional: default location under --data (default: root)
        categories: [bottle, cable]
    axes:
      - name: tab5a                     # one table per axis
        paper: Tab. 5a                  # what it mirrors
        title: AFS vs RDR vs RLPR, with and without RRS
        datasets: [mvtec]               # optional, default every dataset
        plot: {x: rrs.ratio, lines: rrs.mode, x_label: retention ratio P}   # optional line plot
        variants:
          - name: rdr                   # [A-Za-z0-9_.+-]
            label: RDR + RRS            # optional, shown in tables
            set: {selection.method: rdr}
            paper: [99.39, 98.66, 92.01]  # optional: the paper's (Image AUROC, Pixel AUROC, PRO) in %

``set`` values are config values (realnet.config, "section.key" names). String values may hold
the templates ``{sia}`` and ``{dtd}``, replaced by the --sia / --dtd folders at run time; a cell
whose configuration draws from the sia source, or uses ``{sia}``, needs --sia and is skipped
without it.

Cells are identified by their effective configuration: a variant repeated in several axes (the
paper's reference setting usually is) is one cell, run once, named after its first variant in
suite order. The same variant name in two axes must mean the same configuration.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from realnet.config import PRESETS, flat_config, load_config, read_config_yaml, setting_covers, yaml_error_text
from realnet.config import parse_override as parse_config_override
from realnet.errors import RealnetError
from realnet.files import read_utf8_text

LAYOUTS = ("mvtec", "mpdd", "btad", "visa")
TEMPLATES = ("sia", "dtd")
METRICS = ("image_auroc", "pixel_auroc", "aupro")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
RESERVED_TABLE_NAMES = {"results", "readme", "efficiency"}  # tables/results.csv, README.md, efficiency.md
_SUITE_KEYS = {"name", "description", "preset", "set", "datasets", "axes"}
_DATASET_KEYS = {"name", "layout", "root", "path", "categories"}
_AXIS_KEYS = {"name", "paper", "title", "datasets", "plot", "variants"}
_VARIANT_KEYS = {"name", "label", "set", "paper"}
_PLOT_KEYS = {"x", "lines", "x_label"}

Override = tuple[str, Any]  # ("section.key", value)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    layout: str
    root: str  # --data-root key
    path: str  # default location relative to --data
    categories: tuple[str, ...]


@dataclass(frozen=True)
class PlotSpec:
    x: str  # config key on the x axis, e.g. "rrs.ratio"
    lines: str  # config key with one line per value, e.g. "rrs.mode"
    x_label: str


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: tuple[Override, ...]
    paper: tuple[float | None, ...] | None  # (Image AUROC, Pixel AUROC, PRO) in %


@dataclass(frozen=True)
class Axis:
    name: str
    paper: str
    title: str
    datasets: tuple[str, ...]
    variants: tuple[Variant, ...]
    plot: PlotSpec | None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    preset: str
    overrides: tuple[Override, ...]
    datasets: tuple[DatasetSpec, ...]
    axes: tuple[Axis, ...]
    source: str  # where it was read from, for messages

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def with_overrides(self, overrides: list[Override]) -> Suite:
        """The same suite with `set` values for every cell, replacing the suite's own for the same
        keys (they change cell identities). A key that a variant sets is refused: the cells of the
        variants that leave it out would run the value given here under their own labels (a "P =
        1/3" row run at P = 1/2)."""
        for key, _ in overrides:
            for axis in self.axes:
                for variant in axis.variants:
                    clash = next((own for own, _ in variant.overrides
                                  if setting_covers(key, own) or setting_covers(own, key)), None)
                    if clash is not None:
                        raise RealnetError(f"--set {key}: variant {variant.name} of axis {axis.name} sets {clash} "
                                           "itself, which that axis compares; the other variants' rows would be "
                                           "labelled with settings they did not run. Leave it out, or edit a copy "
                                           f"of {self.source}")
        merged = dict(self.overrides)
        merged.update(overrides)
        _check_settings(self.preset, tuple(merged.items()), "--set")
        return replace(self, overrides=tuple(merged.items()))


@dataclass(frozen=True)
class Cell:
    """One fit + test: a dataset category under one configuration."""

    id: str  # "<dataset>/<category>/<variant>", also the folder under <out>/<suite>/
    dataset: DatasetSpec
    category: str
    variant: str
    overrides: tuple[Override, ...]  # suite then variant overrides, templates unresolved
    config: dict[str, Any]  # effective configuration with templates unresolved: the identity
    needs: tuple[str, ...]  # command-line folders the cell cannot run without ("sia")
    members: tuple[tuple[str, str], ...]  # (axis, variant) pairs this cell stands for


def _suite_folder():
    """The shipped suites: package data of realnet (src/realnet/suites/*.yaml)."""
    return resources.files("realnet").joinpath("suites")


def shipped_suites() -> list[str]:
    return sorted(p.name[:-5] for p in _suite_folder().iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_file: str | Path) -> Suite:
    """A shipped suite by name (see `shipped_suites`) or a suite YAML file."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise RealnetError(f"suite file {path} not found")
        text, source = read_utf8_text(path), str(path)
    elif str(name_or_file) in shipped_suites():
        text = _suite_folder().joinpath(f"{name_or_file}.yaml").read_text()
        source = f"suite '{name_or_file}'"
    else:
        raise RealnetError(
            f"unknown suite '{name_or_file}' (shipped: {', '.join(shipped_suites())}; or pass a YAML file)"
        )
    try:
        raw = read_config_yaml(text)
    except yaml.YAMLError as error:
        raise RealnetError(f"{source}: {yaml_error_text(error)}") from None
    except RealnetError as error:  # a key given twice
        raise RealnetError(f"{source}: {error}") from None
    return parse_suite(raw, source)


def parse_suite(raw: Any, source: str) -> Suite:
    """Validate a suite mapping (see the module docstring) into a `Suite`."""
    where = source
    _check_keys(raw, _SUITE_KEYS, where, required={"name", "preset", "datasets", "axes"})
    name = _name(raw["name"], f"{where}: name")
    if raw["preset"] not in PRESETS:
        raise RealnetError(f"{where}: preset '{raw['preset']}' unknown (choose from {', '.join(PRESETS)})")
    datasets = tuple(_parse_dataset(d, f"{where}: datasets[{i}]")
                     for i, d in enumerate(_list(raw["datasets"], f"{where}: datasets")))
    _unique([d.name for d in datasets], f"{where}: dataset names")
    known_keys = set(flat_config(load_config(raw["preset"]).to_dict()))
    axes = tuple(_parse_axis(a, f"{where}: axes[{i}]", datasets, known_keys)
                 for i, a in enumerate(_list(raw["axes"], f"{where}: axes")))
    _unique([a.name for a in axes], f"{where}: axis names")
    trend_names = {f"{axis.name}_trend" for axis in axes}
    for axis in axes:  # each axis writes tables/<name>.{md,csv} and <name>_trend.{md,csv} beside the index files
        if axis.name.lower() in RESERVED_TABLE_NAMES or axis.name in trend_names:
            raise RealnetError(f"{where}: axis name '{axis.name}' would share its table files with the index's or "
                               "another axis's trend table; rename it")
    suite_set = _parse_set(raw.get("set"), f"{where}: set")
    _check_settings(raw["preset"], suite_set, f"{where}: set")  # before a variant is blamed for it
    return Suite(name, _text(raw, "description", ""), raw["preset"], suite_set, datasets, axes, source)


def _check_settings(preset: str, overrides: tuple[Override, ...], where: str) -> None:
    try:
        load_config(preset, None, override_strings(overrides))
    except RealnetError as error:
        raise RealnetError(f"{where}: {error}") from None


def _parse_dataset(raw: Any, where: str) -> DatasetSpec:
    _check_keys(raw, _DATASET_KEYS, where, required={"name", "layout", "root", "categories"})
    if raw["layout"] not in LAYOUTS:
        raise RealnetError(f"{where}: layout '{raw['layout']}' unknown (choose from {', '.join(LAYOUTS)})")
    categories = tuple(_name(str(c), f"{where}: category") for c in _list(raw["categories"], f"{where}: categories"))
    _unique(list(categories), f"{where}: categories")
    return DatasetSpec(_name(raw["name"], f"{where}: name"), raw["layout"], str(raw["root"]),
                       str(raw.get("path", raw["root"])), categories)


def _parse_axis(raw: Any, where: str, datasets: tuple[DatasetSpec, ...], known_keys: set[str]) -> Axis:
    _check_keys(raw, _AXIS_KEYS, where, required={"name", "variants"})
    name = _name(raw["name"], f"{where}: name")
    where = f"{where} ({name})"
    known = [d.name for d in datasets]
    chosen = tuple(_list(raw.get("datasets", known), f"{where}: datasets"))
    unknown = [d for d in chosen if d not in known]
    if unknown:
        raise RealnetError(f"{where}: unknown dataset(s) {', '.join(map(str, unknown))} (suite has {', '.join(known)})")
    plot = None
    if raw.get("plot") is not None:
        _check_keys(raw["plot"], _PLOT_KEYS, f"{where}: plot", required={"x", "lines"})
        for role in ("x", "lines"):  # checked now, not after every cell has trained
            if not isinstance(raw["plot"][role], str) or raw["plot"][role] not in known_keys:
                raise RealnetError(f"{where}: plot {role} '{raw['plot'][role]}' is not a setting (section.key)")
        plot = PlotSpec(raw["plot"]["x"], raw["plot"]["lines"], _text(raw["plot"], "x_label", raw["plot"]["x"]))
    variants = tuple(_parse_variant(v, f"{where}: variants[{i}]")
                     for i, v in enumerate(_list(raw["variants"], f"{where}: variants")))
    _unique([v.name for v in variants], f"{where}: variant names")
    return Axis(name, _text(raw, "paper", ""), _text(raw, "title", name), chosen, variants, plot)


def _parse_variant(raw: Any, where: str) -> Variant:
    _check_keys(raw, _VARIANT_KEYS, where, required={"name"})
    name = _name(raw["name"], f"{where}: name")
    paper = raw.get("paper")
    if paper is not None:
        numbers = isinstance(paper, list) and all(v is None or isinstance(v, (int, float)) for v in paper)
        if not numbers or len(paper) != len(METRICS):
            raise RealnetError(
                f"{where} ({name}): paper must be [Image AUROC, Pixel AUROC, PRO] in % (null where not reported)")
        paper = tuple(None if v is None else float(v) for v in paper)
    return Variant(name, _text(raw, "label", name), _parse_set(raw.get("set"), f"{where} ({name}): set"), paper)


def _text(raw: dict, key: str, default: str) -> str:
    """An optional text entry; left out or null, `default` (not the word None in every table)."""
    value = raw.get(key)
    return default if value is None else str(value)


def _parse_set(raw: Any, where: str) -> tuple[Override, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise RealnetError(f"{where}: expected a mapping of section.key: value")
    for key in raw:
        if not isinstance(key, str) or key.count(".") != 1:
            raise RealnetError(f"{where}: '{key}' must look like section.key")
    return tuple(raw.items())


def parse_override(text: str) -> Override:
    """'section.key=value' (value in YAML) -> ("section.key", value); a suite sets whole settings."""
    key, value = parse_config_override(text)
    if key.count(".") != 1:
        raise RealnetError(f"--set '{text}' must look like section.key=value")
    return key, value


def override_strings(overrides: tuple[Override, ...] | list[Override]) -> list[str]:
    """The `load_config` form; values are written as JSON, which YAML reads back unchanged."""
    strings = []
    for key, value in overrides:
        try:
            strings.append(f"{key}={json.dumps(value)}")
        except (TypeError, ValueError):  # a YAML date, binary or set; a nan is written as NaN, which YAML reads
            raise RealnetError(f"{key}: {value!r} is no value a setting takes (quote it to give text)") from None
    return strings


def substitute(overrides: tuple[Override, ...], folders: dict[str, str]) -> tuple[Override, ...]:
    """Replace {sia} / {dtd} in string values with the given folders."""
    def fill(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for name, folder in folders.items():
            value = value.replace("{" + name + "}", folder)
        return value

    return tuple((key, fill(value)) for key, value in overrides)


def templates_in(overrides: tuple[Override, ...]) -> set[str]:
    return {name for _, value in overrides if isinstance(value, str)
            for name in TEMPLATES if "{" + name + "}" in value}


def effective_config(suite: Suite, overrides: tuple[Override, ...], where: str) -> dict[str, Any]:
    """The configuration a cell runs with (templates unresolved), as a plain dict."""
    try:
        return load_config(suite.preset, None, override_strings(overrides)).to_dict()
    except RealnetError as error:
        raise RealnetError(f"{suite.source}: {where}: {error}") from None


def cell_needs(config: dict[str, Any], overrides: tuple[Override, ...]) -> tuple[str, ...]:
    """Command-line folders a configuration cannot run without: the SDAS image bank when it
    draws from sia without a fixed sia_root, and any folder named by a template."""
    needs = templates_in(overrides)
    synthesis = config["synthesis"]
    if synthesis["sources"].get("sia", 0) > 0 and synthesis["sia_root"] is None:
        needs.add("sia")
    return tuple(sorted(needs))


def expand(suite: Suite) -> list[Cell]:
    """Every cell of the suite, in suite order (axis, dataset, category, variant); a
    configuration shared by several variants of a dataset category is one cell."""
    configs: dict[str, tuple[dict[str, Any], tuple[Override, ...]]] = {}  # variant name -> config, overrides
    for axis in suite.axes:
        for variant in axis.variants:
            overrides = suite.overrides + variant.overrides
            config = effective_config(suite, overrides, f"axis {axis.name}, variant {variant.name}")
            if variant.name in configs and configs[variant.name][0] != config:
                raise RealnetError(
                    f"{suite.source}: variant name '{variant.name}' is used for two different configurations "
                    f"(axis {axis.name} and an earlier axis); rename one"
                )
            configs.setdefault(variant.name, (config, overrides))
            if axis.plot is not None:  # plotted values become points and line names, checked before any fit
                settings = flat_config(config)
                for role, key in (("x", axis.plot.x), ("lines", axis.plot.lines)):
                    if not isinstance(settings[key], (int, float, str, bool, type(None))):
                        raise RealnetError(
                            f"{suite.source}: axis {axis.name}: plot {role} {key} is {json.dumps(settings[key])} in "
                            f"variant {variant.name}; a plot needs a number, a string, true/false or null there")

    cells: dict[tuple[str, str, str], Cell] = {}
    for axis in suite.axes:
        for dataset_name in axis.datasets:
            dataset = suite.dataset(dataset_name)
            for category in dataset.categories:
                for variant in axis.variants:
                    config, overrides = configs[variant.name]
                    key = (dataset.name, category, json.dumps(config, sort_keys=True))
                    if key in cells:
                        cell = cells[key]
                        cells[key] = replace(cell, members=cell.members + ((axis.name, variant.name),))
                        continue
                    cells[key] = Cell(f"{dataset.name}/{category}/{variant.name}", dataset, category, variant.name,
                                      overrides, config, cell_needs(config, overrides), ((axis.name, variant.name),))
    return list(cells.values())


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """Cells matching a glob on dataset/category/variant, for any variant the cell stands for (a
    shared cell is named after its first one only), or on one of its axis names."""
    if not patterns:
        return list(cells)

    def names(cell: Cell) -> list[str]:
        return [name for axis, variant in cell.members
                for name in (f"{cell.dataset.name}/{cell.category}/{variant}", axis)]

    return [c for c in cells if any(fnmatchcase(name, p) for name in names(c) for p in patterns)]


def _check_keys(raw: Any, allowed: set[str], where: str, required: set[str]) -> None:
    if not isinstance(raw, dict):
        raise RealnetError(f"{where}: expected a mapping")
    unknown = sorted(map(str, set(raw) - allowed))  # str: a YAML key may be a number, which sorts with no text
    if unknown:
        raise RealnetError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(raw))
    if missing:
        raise RealnetError(f"{where}: missing key(s) {', '.join(missing)}")


def _list(raw: Any, where: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise RealnetError(f"{where}: expected a non-empty list")
    return raw


def _name(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _NAME.match(raw) or raw in (".", ".."):  # names become folders
        raise RealnetError(f"{where}: '{raw}' must be a name of letters, digits, '_', '.', '+' or '-'")
    return raw


def _unique(names: list[str], where: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RealnetError(f"{where}: repeated {', '.join(repeated)}")
