"""Typed configuration of a RealNet detector, built from a preset, an optional YAML file and
command-line overrides (in that order of precedence, lowest first)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from importlib import resources
import math
from pathlib import Path
import re
import types
import typing
from typing import Any

import yaml

from realnet.errors import RealnetError
from realnet.files import read_utf8_text

PRESETS = ("paper", "cpu", "tiny")
MAX_SEED = 2**32 - 1  # every generator takes it (torch.manual_seed overflows at 2**64; derived seeds add to it)
MAX_DENSITY_REGULARIZATION = 1e6
# Opacity delta ~ U(low, high) of each texture source in Eq. 3, as in the authors' code; the one
# definition behind both the config default and `realnet.synthesis.SynthesisConfig`'s.
AUTHORS_DELTA_RANGES = {"dtd": (0.2, 1.0), "sia": (0.5, 1.0)}


def is_opacity_range(low: float, high: float) -> bool:
    """Whether delta ~ U(low, high) is usable in Eq. 3: ordered, within [0, 1], and not [0, 0], whose
    opacity 0 would label an unchanged image anomalous."""
    return 0 <= low <= high <= 1 and high > 0
# Training-time anomaly sources: the paper's four, then ours.
SOURCE_NAMES = ("dtd", "sia", "cutpaste", "nsa", "shade", "crack", "feature_noise")


@dataclass
class BackboneConfig:
    name: str = "wide_resnet50_2"
    layers: list[int] | None = None  # None: the backbone's default feature layers
    weights: str = "auto"  # "auto" | "timm" | "torchvision" | "random" | path to a file
    frozen_graph: bool = True  # run inference through a frozen TorchScript trace (model.backbone.Backbone)


@dataclass
class SelectionConfig:
    """Feature selection before reconstruction (paper Sec. 3.2, ablation Tab. 5a)."""

    method: str = "afs"  # "afs" | "rdr" (random subset) | "rlpr" (random linear projection)
    channels: list[int] | None = None  # m_k per layer; None keeps every channel
    batches: int = 64
    batch_size: int = 16


@dataclass
class ReconstructionConfig:
    arch: str = "A"  # "A" | "B" | "C" (paper Fig. S2)
    width_factor: float = 0.5
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    attention: bool = True


@dataclass
class RRSConfig:
    """Reconstruction residual selection (paper Sec. 3.3, Fig. 5)."""

    mode: str = "max_avg"  # "max" | "avg" | "max_avg" | "all" (no RRS: every residual, Tab. 5a)
    ratio: float = 1 / 3  # retention ratio P = r / sum(m_k); 1.0 keeps every residual with max or avg, while
    # max_avg then takes r/2 by max and r/2 by mean, rankings that overlap: some channels twice, others never
    # 0: inference ranks channels with the BatchNorm's running statistics, which momentum 0.9 makes
    # almost those of the last training batch (the authors'). N > 0 (ours): after training, they
    # are recomputed as the average over N training batches (see ResidualSelection.recalibrate).
    recalibration_batches: int = 0


@dataclass
class DiscriminatorConfig:
    hidden: list[int] = field(default_factory=lambda: [128, 32, 8, 4])
    residual_units: int = 2


@dataclass
class SynthesisConfig:
    sources: dict[str, float] = field(default_factory=lambda: {"dtd": 1.0})
    normal_probability: float = 0.5
    dtd_root: str | None = None  # the DTD folder (dtd/ or dtd/images/); every image below it is a texture
    sia_root: str | None = None  # SDAS image bank: <sia_root>/<category>/*.png
    foreground: str = "rule"  # "rule" (per-category table, auto for unknown) | "auto" | "none"
    match_gray: bool = True  # grayscale textures on grayscale images (ours); false = the paper
    # redraw an empty Perlin mask (ours); false = the authors' code: one draw, an empty one leaves the sample normal
    retry_empty_masks: bool = True
    # opacity delta ~ U(low, high) of each texture source in Eq. 3
    delta_ranges: dict[str, list[float]] = field(
        default_factory=lambda: {name: list(bounds) for name, bounds in AUTHORS_DELTA_RANGES.items()})


@dataclass
class DensityConfig:
    """Fusion of the discriminator's map with a per-position Gaussian density of the backbone
    features (ours; see realnet.model.density). weight 0 is the paper: the discriminator alone."""

    weight: float = 0.0  # w_d in fused = (1 - w_d - w_k) p / b_p + w_d d / b_d + w_k k / b_k (memory.weight)
    channels: int | None = None  # a seeded random subset of the backbone channels (PaDiM); None: all
    # the backbone.layers whose features the density reads, so that the detector may add a layer the
    # per-position covariances could not afford; None: all of them
    layers: list[int] | None = None
    regularization: float = 0.01  # added to the diagonal of every covariance
    # each layer's features averaged over n x n positions before the Gaussian (PatchCore's local
    # aggregation); 1: none, as PaDiM
    neighbourhood: int = 1
    # the image score's own w_d (the pixel map keeps `weight`); None: the same as `weight`. The painted
    # validation has ranked the density above the fused map for image decisions since the eighth session
    image_weight: float | None = None


@dataclass
class MemoryConfig:
    """Fusion with the nearest-neighbour distance to a memory bank of normal patch embeddings
    (ours, after PatchCore; see realnet.model.memory). weight 0: no memory branch."""

    weight: float = 0.0  # w_k in fused = (1 - w_d - w_k) p / b_p + w_d d / b_d + w_k k / b_k
    coreset_ratio: float = 0.01  # the bank keeps this fraction of the fit images' positions
    projection_dim: int | None = 128  # the coreset's random projection; None: the full embedding
    neighbourhood: int = 3  # local aggregation window of each layer's features (PatchCore's 3)


@dataclass
class TrainConfig:
    image_size: int = 256
    batch_size: int = 16
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"  # "constant" (the paper) | "cosine": half a cosine from the base rate towards 0 (ours)
    steps: int | None = None  # when set, overrides epochs
    epochs: int = 1000
    seed: int = 100
    holdout_fraction: float = 0.1  # normal training images kept out of fit, for calibration
    # seeds which images are held out and the painted defects drawn on them (null: `seed`); fixing it
    # while `seed` varies compares training seeds on one and the same validation set
    validation_seed: int | None = None
    threshold_quantile: float = 0.99  # of held-out normal scores; sets is_anomalous
    checkpoint_every: int = 200  # steps
    feature_cache_gb: float = 4.0  # cache the normal images' backbone features when they fit
    bf16: bool = False  # autocast of the trainable part, on CUDA and on CPUs with native bf16
    score_kernel: int = 16  # image score = max of the k x k mean-filtered anomaly map
    # the discriminator's loss: null, the paper's cross-entropy | gamma, the focal loss (ours)
    focal_gamma: float | None = None
    # exponential moving average of the trainable weights, calibrated and saved instead of the last
    # step's (ours; null: the paper's final weights); needs rrs.recalibration_batches > 0 so that the
    # RRS statistics are recomputed for the averaged weights
    ema_decay: float | None = None
    # "none": the discriminator's probability map (the paper) | "position": that map standardised
    # per pixel position against normal fit images (ours; see model.discriminator.PositionNormalization)
    map_normalization: str = "none"

    @property
    def holdout_seed(self) -> int:
        """The seed of the held-out split and of its painted defects."""
        return self.seed if self.validation_seed is None else self.validation_seed


# settings older runs may record that no longer exist (train.num_workers never had an effect:
# synthesis runs in the training process)
RETIRED_SETTINGS = frozenset({"train.num_workers"})


@dataclass
class RealNetConfig:
    preset: str = "paper"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    rrs: RRSConfig = field(default_factory=RRSConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], saved: bool = False) -> "RealNetConfig":
        """`saved`: values a run recorded, where settings realnet no longer has are dropped."""
        if saved:
            values = copy.deepcopy(values)
            for name in RETIRED_SETTINGS:
                section, key = name.split(".")
                values.get(section, {}).pop(key, None)
        return _merge(cls(), values, "")


def _merge(target: Any, values: dict[str, Any], where: str) -> Any:
    """Overlay `values` on a dataclass instance, rejecting unknown keys by name and values of the
    wrong type (so that a typo fails here in one line, not as a traceback hours into a fit)."""
    if not isinstance(values, dict):
        raise RealnetError(f"{where or 'the config'}: expected a mapping, got {type(values).__name__}")
    hints = _field_types(type(target))
    for key, value in values.items():
        name = f"{where}.{key}" if where else key  # as a user writes it in --set or a config file
        if key not in hints:
            raise RealnetError(f"unknown config key '{name}' (known: {', '.join(hints)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            _merge(current, {} if value is None else value, name)  # `train:` with every key commented out
        else:
            setattr(target, key, _typed(value, hints[key], name))
    return target


@functools.cache
def _field_types(section: type) -> dict[str, Any]:
    """A config dataclass's field names, in order, and their resolved type annotations."""
    hints = typing.get_type_hints(section)
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def _typed(value: Any, hint: Any, name: str) -> Any:
    """`value` as the field type `hint` (bool, int, float, str, list[T], dict[str, T], T | None):
    ints are accepted for floats, and strings YAML 1.1 leaves unparsed such as '1e-3' too."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    (kind,) = [option for option in options if option is not type(None)]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list and isinstance(value, (list, tuple)):
        return [_typed(item, args[0], f"{name}[{i}]") for i, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {_typed(k, args[0], name): _typed(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        # no setting means anything at infinity, and NaN passes no range check by failing them all
        raise RealnetError(f"{name} must be a finite number, got {value!r}")
    if origin is None and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, "a list" if origin is list else "a mapping")
    raise RealnetError(f"{name} must be {wanted}{' or null' if type(None) in options else ''}, got {value!r}")


class _ConfigLoader(yaml.SafeLoader):
    """YAML read as a config file or a --set value: a key given twice in one mapping is refused,
    where PyYAML keeps the last one and silently drops the first (a second `train:` section); and
    numbers are YAML 1.2's decimal ones, where YAML 1.1 reads 010 as 8 (octal) and 1:30 as 90 (base 60)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise RealnetError(f"key '{key}' is given twice (line {key_node.start_mark.line + 1}); give it once")
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_decimal_int(self, node: yaml.ScalarNode) -> int:
        value = self.construct_scalar(node)
        try:
            return int(value)  # 010 is ten
        except ValueError:  # an explicit !!int 0x10
            raise RealnetError(f"{value!r} is not a decimal integer") from None


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
# YAML 1.1's floats less the base-60 ones (1:30.5); exponents without a point (1e-3) stay text, which _typed reads
_ConfigLoader.add_implicit_resolver(_FLOAT_TAG, re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
_ConfigLoader.add_constructor(_INT_TAG, _ConfigLoader.construct_decimal_int)


def read_config_yaml(text: str) -> Any:
    """YAML text as a config file, a --set value or a bench suite is read (see `_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong, in a few words (PyYAML's own message spans lines and quotes the text)."""
    return getattr(error, "problem", None) or error.__class__.__name__


def yaml_error_text(error: yaml.YAMLError) -> str:
    """One line for a file's YAML error: where it is and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where} ({yaml_problem(error)})"


def load_config(
    preset: str = "paper", config_file: str | Path | None = None, overrides: list[str] = ()
) -> RealNetConfig:
    """Preset, then YAML file, then `section.key=value` overrides."""
    if preset not in PRESETS:
        raise RealnetError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    text = resources.files("realnet.presets").joinpath(f"{preset}.yaml").read_text()
    config = RealNetConfig.from_dict(read_config_yaml(text) or {})
    config.preset = preset
    if config_file is not None:
        path = Path(config_file)
        if path.is_dir():
            raise RealnetError(f"config file {path} is a folder; give a YAML file")
        if not path.is_file():
            raise RealnetError(f"config file {path} not found")
        text = read_utf8_text(path)
        try:
            values = read_config_yaml(text) or {}
        except yaml.YAMLError as error:
            raise RealnetError(f"{path}: {yaml_error_text(error)}") from None
        except RealnetError as error:
            raise RealnetError(f"{path}: {error}") from None
        if isinstance(values, dict) and "preset" in values:
            raise RealnetError(f"{path}: a config file cannot set 'preset' (it would relabel the run); "
                               "give the preset with --preset")
        try:
            _merge(config, values, "")
        except RealnetError as error:
            raise RealnetError(f"{path}: {error}") from None
    return apply_overrides(config, overrides)


def apply_overrides(config: RealNetConfig, overrides: list[str]) -> RealNetConfig:
    """`section.key=value` overrides applied to `config` in place, then the whole config validated.
    `section.key.entry=value` changes one entry of a mapping (synthesis.sources.shade=0.2) and
    keeps the others; `section.key={...}` replaces the mapping."""
    for override in overrides:
        key, parsed = parse_override(override)
        section, field_name, *entries = key.split(".")
        current = getattr(getattr(config, section, None), field_name, _UNKNOWN)
        if entries and current is not _UNKNOWN:  # else _merge names the unknown key
            parsed = _with_entry(current, entries, parsed, f"{section}.{field_name}", key)
        _merge(config, {section: {field_name: parsed}}, "")
    validate_config(config)
    return config


def setting_covers(key: str, other: str) -> bool:
    """Whether setting `key` includes `other`: the same setting, or one entry of its mapping
    (synthesis.sources covers synthesis.sources.shade)."""
    return other == key or other.startswith(f"{key}.")


def refuse_lost_overrides(overrides: list[str]) -> None:
    """One line when one command line's --set options would drop a value: the same key given twice,
    or a mapping given whole after one of its entries (the entry would be lost). Settings given in
    a deliberate order (a bench suite, then its variant) go to `apply_overrides` directly."""
    given: dict[str, str] = {}
    for override in overrides:
        key = parse_override(override)[0]
        if key in given:
            raise RealnetError(f"--set {key} is given twice ({given[key]!r} and {override!r}); give it once")
        for earlier_key, earlier in given.items():
            if setting_covers(key, earlier_key):
                raise RealnetError(f"--set {override} replaces {key} after --set {earlier} set one of its "
                                   f"entries, which would be lost; give {key} first or in one value")
        given[key] = override


def parse_override(override: str) -> tuple[str, Any]:
    """'section.key=value' -> ("section.key", the value read as YAML), or one line naming the override."""
    key, sep, value = override.partition("=")
    if not sep or "." not in key:
        raise RealnetError(f"override '{override}' must look like section.key=value")
    if not value.strip():  # an unset shell variable; YAML would read it as null
        raise RealnetError(f"--set {override}: empty value; write null for none")
    try:
        return key.strip(), read_config_yaml(value)
    except yaml.YAMLError as error:
        raise RealnetError(f"--set {override}: not a valid YAML value ({yaml_problem(error)})") from None
    except RealnetError as error:
        raise RealnetError(f"--set {override}: {error}") from None


_UNKNOWN = object()


def _with_entry(mapping: Any, entries: list[str], value: Any, name: str, key: str) -> dict[str, Any]:
    """A copy of the mapping setting `name` with the entry at the path `entries` set to `value`."""
    if not isinstance(mapping, dict):
        raise RealnetError(f"{key}: {name} is not a mapping")
    updated = copy.deepcopy(mapping)
    cursor = updated
    for entry in entries[:-1]:
        cursor = cursor.setdefault(entry, {})
        if not isinstance(cursor, dict):
            raise RealnetError(f"{key}: {name}.{entry} is not a mapping")
    cursor[entries[-1]] = value
    return updated


def map_kind(config: dict[str, Any]) -> str:
    """What a run's anomaly maps hold, from its recorded config: "probability" (the paper),
    "position" (standardised per position) or "fused" (with the feature density or memory)."""
    if config.get("density", {}).get("weight", 0) > 0 or config.get("memory", {}).get("weight", 0) > 0:
        return "fused"
    return "probability" if config["train"].get("map_normalization", "none") == "none" else "position"


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """{"rrs": {"mode": "max"}} -> {"rrs.mode": "max"}."""
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


# settings that change how a run is carried out, not what it computes: a resume may change them and a
# finished bench cell keeps its figures (--select-on-test's evaluation steps, which checkpoint_every sets
# without --eval-every, are checked apart). train.feature_cache_gb decides whether the normal images'
# features come from a cache filled in chunks or per training batch, which round differently in the
# last bits: `fit` says so when a resume changes it
# synthesis.dtd_root: --dtd, $REALNET_DTD and <data root>/dtd find the same folder three ways; the
# folder found is what a resume checks (fit's run inputs), so the way it was given may change
RESUME_FREE_SETTINGS = frozenset({"train.feature_cache_gb", "train.checkpoint_every", "synthesis.dtd_root"})


def setting_changes(before: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.key, value before, value now) for each setting whose value differs between two
    configs (as to_dict gives them), sorted, leaving out those that cannot change a run's results.
    A setting one of them lacks (a run recorded before the setting existed) counts as its default,
    which is the behaviour it had."""
    defaults = flat_config(RealNetConfig().to_dict())
    old, new = {**defaults, **flat_config(before)}, {**defaults, **flat_config(now)}
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in RESUME_FREE_SETTINGS | RETIRED_SETTINGS and old.get(k) != new.get(k)]


def validate_config(config: RealNetConfig) -> None:
    checks = [
        (config.selection.method in ("afs", "rdr", "rlpr"), "selection.method must be afs, rdr or rlpr"),
        # AFS ranks channels by how the synthetic images change them; feature noise changes no image
        (not (config.selection.method == "afs" and config.selection.channels is not None
              and {n for n, w in config.synthesis.sources.items() if w > 0} == {"feature_noise"}),
         "selection.method=afs ranks channels on synthetic anomalous images, and feature_noise, the only source, "
         "changes no image (every channel would tie and the first m_k be kept); add an image source or use "
         "selection.method=rdr"),
        (config.reconstruction.arch in ("A", "B", "C"), "reconstruction.arch must be A, B or C"),
        (config.rrs.mode in ("max", "avg", "max_avg", "all"), "rrs.mode must be max, avg, max_avg or all"),
        (0 < config.rrs.ratio <= 1, "rrs.ratio (P) must be in (0, 1]"),
        (config.rrs.recalibration_batches >= 0, "rrs.recalibration_batches must be >= 0"),
        (0 <= config.synthesis.normal_probability < 1, "synthesis.normal_probability must be in [0, 1)"),
        (config.synthesis.foreground in ("rule", "auto", "none"), "synthesis.foreground must be rule, auto or none"),
        (config.train.image_size >= 32 and config.train.image_size % 32 == 0,
         "train.image_size must be a positive multiple of 32"),
        (1 <= config.train.score_kernel <= config.train.image_size,
         "train.score_kernel must be between 1 and train.image_size (pixels)"),
        (math.isfinite(config.train.learning_rate) and config.train.learning_rate > 0,
         "train.learning_rate must be a positive number"),
        (config.train.feature_cache_gb >= 0, "train.feature_cache_gb must be >= 0"),
        (config.selection.batches >= 1 and config.selection.batch_size >= 1,
         "selection.batches and selection.batch_size must be >= 1"),
        (config.selection.channels is None or all(m >= 1 for m in config.selection.channels),
         "selection.channels must be positive channel counts or null"),
        (config.reconstruction.width_factor > 0, "reconstruction.width_factor must be > 0"),
        (bool(config.reconstruction.channel_mults) and all(m >= 1 for m in config.reconstruction.channel_mults),
         "reconstruction.channel_mults must be a non-empty list of positive integers"),
        (config.reconstruction.num_res_blocks >= 1, "reconstruction.num_res_blocks must be >= 1"),
        (len(config.discriminator.hidden) == 4 and all(h >= 1 for h in config.discriminator.hidden),
         "discriminator.hidden must be four positive widths (the paper's [128, 32, 8, 4])"),
        (config.discriminator.residual_units >= 0, "discriminator.residual_units must be >= 0"),
        (0 <= config.train.holdout_fraction < 1, "train.holdout_fraction must be in [0, 1)"),
        (0 < config.train.threshold_quantile <= 1, "train.threshold_quantile must be in (0, 1]"),
        (config.train.lr_schedule in ("constant", "cosine"), "train.lr_schedule must be constant or cosine"),
        (config.train.map_normalization in ("none", "position"), "train.map_normalization must be none or position"),
        (config.train.batch_size >= 2, "train.batch_size must be at least 2 (BatchNorm in RRS)"),
        (config.train.steps is None or config.train.steps >= 1, "train.steps must be >= 1 or null (then train.epochs)"),
        (config.train.epochs >= 1, "train.epochs must be >= 1"),
        (config.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1 (steps)"),
        (config.train.seed >= 0, "train.seed must be >= 0"),
        (config.train.seed <= MAX_SEED, f"train.seed must be in [0, {MAX_SEED}]"),
        (config.train.validation_seed is None or 0 <= config.train.validation_seed <= MAX_SEED,
         f"train.validation_seed must be in [0, {MAX_SEED}] or null"),
        (config.train.ema_decay is None or 0 < config.train.ema_decay < 1, "train.ema_decay must be in (0, 1) or null"),
        (config.train.focal_gamma is None or 0 <= config.train.focal_gamma <= 10,
         "train.focal_gamma must be in [0, 10] or null"),
        (config.train.ema_decay is None or config.rrs.recalibration_batches > 0,
         "train.ema_decay needs rrs.recalibration_batches > 0 (the RRS statistics must be the averaged weights' own)"),
        (config.memory.weight == 0 or config.train.holdout_fraction > 0,
         "memory.weight > 0 needs train.holdout_fraction > 0 (on its own fit images the memory map reads about 0, "
         "so its scale needs held-out images)"),
        (0 <= config.density.weight <= 1, "density.weight must be in [0, 1]"),
        (config.density.image_weight is None or 0 <= config.density.image_weight <= 1,
         "density.image_weight must be in [0, 1] or null"),
        (config.density.image_weight is None or (config.density.weight > 0 and config.memory.weight == 0),
         f"density.image_weight={config.density.image_weight} needs density.weight > 0 and memory.weight = 0 "
         "(add --set density.image_weight=null to score images from the pixel map)"),
        (config.density.channels is None or config.density.channels >= 1, "density.channels must be >= 1 or null"),
        (config.density.layers is None or (len(config.density.layers) >= 1
                                           and len(set(config.density.layers)) == len(config.density.layers)),
         "density.layers must name each layer once, or be null (all of backbone.layers)"),
        # far above any useful value (the features' variances are of order 1), and far below where
        # the float32 precision would underflow to zero
        (0 < config.density.regularization <= MAX_DENSITY_REGULARIZATION,
         f"density.regularization must be in (0, {MAX_DENSITY_REGULARIZATION:g}]"),
        (0 <= config.memory.weight <= 1, "memory.weight must be in [0, 1]"),
        (config.density.weight + config.memory.weight <= 1, "density.weight + memory.weight must be at most 1"),
        (0 < config.memory.coreset_ratio <= 1, "memory.coreset_ratio must be in (0, 1]"),
        (config.memory.projection_dim is None or config.memory.projection_dim >= 1,
         "memory.projection_dim must be >= 1 or null"),
        (config.memory.neighbourhood >= 1 and config.memory.neighbourhood % 2 == 1,
         "memory.neighbourhood must be an odd number >= 1"),
        (config.density.neighbourhood >= 1 and config.density.neighbourhood % 2 == 1,
         "density.neighbourhood must be an odd number >= 1"),
        (config.density.weight + config.memory.weight == 0 or config.train.map_normalization == "none",
         "density.weight or memory.weight > 0 needs train.map_normalization: none (the fusion scales a "
         "probability map)"),
    ]
    for ok, message in checks:
        if not ok:
            raise RealnetError(message)
    if not config.synthesis.sources or any(not math.isfinite(w) or w < 0 for w in config.synthesis.sources.values()):
        raise RealnetError("synthesis.sources must map source names to finite, non-negative weights")
    if sum(config.synthesis.sources.values()) <= 0:
        raise RealnetError("synthesis.sources must give at least one source a positive weight")
    if not math.isfinite(sum(config.synthesis.sources.values())):  # each finite, their sum beyond float's range
        raise RealnetError("synthesis.sources: the weights sum to more than a float holds; give smaller weights "
                           "(only their ratios matter)")
    for name, bounds in config.synthesis.delta_ranges.items():
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) for b in bounds) or not is_opacity_range(*bounds)):
            raise RealnetError(f"synthesis.delta_ranges.{name} must be [low, high] with 0 <= low <= high <= 1 and "
                               f"high > 0, got {bounds!r}")
    for setting in ("sources", "delta_ranges"):  # a misspelt delta_ranges entry would be ignored
        unknown = set(getattr(config.synthesis, setting)) - set(SOURCE_NAMES)
        if unknown:
            raise RealnetError(f"unknown synthesis source(s) in synthesis.{setting}: {', '.join(sorted(unknown))}; "
                               f"choose from {', '.join(SOURCE_NAMES)}")
