import pytest

from realnet.config import PRESETS, load_config
from realnet.errors import RealnetError


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    config = load_config(preset)
    assert config.preset == preset
    assert config.train.image_size % 32 == 0


def test_paper_preset_matches_the_paper():
    config = load_config("paper")
    assert config.backbone.name == "wide_resnet50_2"
    assert config.selection.channels == [256, 512, 512, 256]
    assert config.selection.batches == 64 and config.selection.batch_size == 16
    assert config.rrs.mode == "max_avg" and abs(config.rrs.ratio - 1 / 3) < 1e-9
    assert (config.train.image_size, config.train.batch_size, config.train.learning_rate) == (256, 16, 1e-4)
    assert config.train.epochs == 1000 and config.reconstruction.arch == "A"
    assert config.train.lr_schedule == "constant"
    assert config.train.score_kernel == 16


def test_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 7, learning_rate: 0.01}\nrrs: {mode: max}\n")
    config = load_config("cpu", path, ["train.steps=9", "rrs.ratio=0.5"])
    assert config.train.steps == 9 and config.train.learning_rate == 0.01
    assert config.rrs.mode == "max" and config.rrs.ratio == 0.5


@pytest.mark.parametrize("override, needle", [
    ("train.nope=1", "train.nope"),
    ("rrs.mode=median", "rrs.mode"),
    ("notakey", "section.key=value"),
    ("synthesis.match_gray=maybe", "synthesis.match_gray must be true or false"),  # was accepted as truthy
    ("reconstruction.attention=1", "reconstruction.attention must be true or false"),
    ("train.lr_schedule=linear", "train.lr_schedule must be constant or cosine"),
    ("synthesis.delta_ranges.dtd=[0.9, 0.1]", r"synthesis.delta_ranges.dtd must be \[low, high\]"),
    ("synthesis.delta_ranges.dtd=0.5", r"synthesis.delta_ranges.dtd must be a list, got 0.5"),
    ("synthesis.delta_ranges.dtd=[0.5]", r"synthesis.delta_ranges.dtd must be \[low, high\]"),
    # regressions: each of these passed validation and failed later with a traceback
    ("train.learning_rate=-1", "train.learning_rate must be a positive number"),
    ("train.seed=1e3", r"train.seed must be an integer, got '1e3'"),
    ("train.steps=true", "train.steps must be an integer or null, got True"),
    ("train.steps=2.5", "train.steps must be an integer or null, got 2.5"),
    ("synthesis.sources=5", "synthesis.sources must be a mapping, got 5"),
    ("synthesis.sources={dtd: x}", "synthesis.sources.dtd must be a number, got 'x'"),
    ("train.image_size=0", "train.image_size must be a positive multiple of 32"),
    ("train.score_kernel=0", "train.score_kernel must be between 1 and train.image_size"),
    ("train.score_kernel=1000", "train.score_kernel must be between 1 and train.image_size"),
    ("selection.batches=0", "selection.batches and selection.batch_size must be >= 1"),
    ("reconstruction.channel_mults=5", "reconstruction.channel_mults must be a list, got 5"),
    ("reconstruction.width_factor=0", "reconstruction.width_factor must be > 0"),
    ("discriminator.hidden=[]", "discriminator.hidden must be four positive widths"),
    ("synthesis.sources={perlin: 1.0}", "unknown synthesis source.*perlin; choose from dtd, sia, cutpaste, nsa, shade, crack"),
    # regression: a misspelt opacity range was accepted and ignored
    ("synthesis.delta_ranges.dttd=[0.1, 0.5]", r"unknown synthesis source\(s\) in synthesis.delta_ranges: dttd; choose"),
    ("synthesis.delta_ranges.dtd=[0, 0]", r"synthesis.delta_ranges.dtd must be \[low, high\] .* and high > 0"),  # regression
    # these four were accepted: -1 steps wrote an untrained run, 0 fell back to epochs silently,
    # checkpoint_every 0 divided by zero and a negative seed failed deep in numpy
    # a NaN or infinite weight passed and crashed the first training sample
    ("synthesis.sources={cutpaste: .nan}", "synthesis.sources.cutpaste must be a finite number"),
    ("synthesis.sources={cutpaste: .inf, nsa: 1}", "synthesis.sources.cutpaste must be a finite number"),
    ("train.steps=-1", "train.steps must be >= 1"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1"),
    ("train.seed=-1", "train.seed must be >= 0"),
    # regressions: each passed validation and ended in a traceback (the first only at the first step)
    ("discriminator.hidden=[4]", r"discriminator.hidden must be four positive widths"),
    ("train.seed=18446744073709551616", r"train.seed must be in \[0, 4294967295\]"),
    ("train.validation_seed=4294967296", r"train.validation_seed must be in \[0, 4294967295\] or null"),
    # an unset shell variable (train.steps=$N) made steps null: a 1000-epoch fit without a word
    ("train.steps=", r"--set train.steps=: empty value; write null for none"),
    ("synthesis.sources={cutpaste: 0}", "synthesis.sources must give at least one source a positive weight"),
    # regression: AFS silently kept channels 0..m_k-1, every channel's loss tied
    ("synthesis.sources={feature_noise: 1}", r"selection.method=afs ranks channels on synthetic anomalous images, "
                                             r"and feature_noise, the only source, changes no image"),
])
def test_bad_overrides_name_the_option(override, needle):
    with pytest.raises(RealnetError, match=needle):
        load_config("tiny", overrides=[override])


def test_every_source_name_is_accepted():
    config = load_config("tiny", overrides=["synthesis.sources={dtd: 1, sia: 1, cutpaste: 1, nsa: 1, shade: 1, crack: 1}"])
    assert set(config.synthesis.sources) == {"dtd", "sia", "cutpaste", "nsa", "shade", "crack"}


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(RealnetError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(RealnetError, match=str(tmp_path / "missing.yaml")):
        load_config("tiny", tmp_path / "missing.yaml")


def test_a_config_file_cannot_relabel_the_preset_and_yaml_1_1_exponents_are_numbers(tmp_path):
    """Regressions: 'preset: paper' in a file relabelled a tiny run as the paper preset; YAML 1.1
    reads 1e-3 as a string, which Adam rejected with a traceback at the first step."""
    path = tmp_path / "c.yaml"
    path.write_text("preset: paper\n")
    with pytest.raises(RealnetError, match="cannot set 'preset'"):
        load_config("tiny", path)
    path.write_text("train: {learning_rate: 1e-3}\n")
    assert load_config("tiny", path).train.learning_rate == 0.001


def test_a_key_given_twice_is_refused_naming_it_and_the_file(tmp_path):
    """Regression: PyYAML keeps the last of two `train:` sections (or two entries of a --set mapping)
    and drops the first without a word."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 100\nrrs: {mode: max}\ntrain:\n  seed: 7\n")
    with pytest.raises(RealnetError, match=f"^{path}: key 'train' is given twice \\(line 4\\)"):
        load_config("tiny", path)
    path.write_text("train: {steps: 100, seed: 3, steps: 5}\n")
    with pytest.raises(RealnetError, match=f"^{path}: key 'steps' is given twice"):
        load_config("tiny", path)
    with pytest.raises(RealnetError, match=r"^--set synthesis.sources=\{dtd: 1, dtd: 2\}: key 'dtd' is given twice"):
        load_config("tiny", overrides=["synthesis.sources={dtd: 1, dtd: 2}"])


def test_integers_are_decimal_as_in_yaml_1_2(tmp_path):
    """Regression: YAML 1.1 read --set train.seed=010 as 8 (octal), 0500 as 320 and 1:30 as 90 (base 60)."""
    config = load_config("tiny", overrides=["train.seed=010", "train.steps=0500", "train.learning_rate=1e-3"])
    assert (config.train.seed, config.train.steps, config.train.learning_rate) == (10, 500, 0.001)
    path = tmp_path / "c.yaml"
    path.write_text("train: {seed: 010, steps: 0x10}\n")
    with pytest.raises(RealnetError, match=f"{path}: train.steps must be an integer or null, got '0x10'"):
        load_config("tiny", path)
    for override in ("train.seed=1:30", "train.learning_rate=1:30.5"):
        with pytest.raises(RealnetError, match=f"{override.split('=')[0]} must be .*, got '1:30"):
            load_config("tiny", overrides=[override])


def test_an_empty_section_in_a_config_file_changes_nothing(tmp_path):
    """Regression: a `train:` section whose keys were all commented out (None to YAML) was refused
    with 'expected a mapping, got NoneType'."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  # steps: 100\nrrs: {mode: max}\n")
    config = load_config("tiny", path)
    assert config.train == load_config("tiny").train and config.rrs.mode == "max"


def test_delta_ranges_reach_the_synthesizer(tmp_path):
    """`synthesis.delta_ranges` sets the opacity range of Eq. 3 that fit's synthesizer draws from."""
    import numpy as np

    from realnet.engine.fit import build_synthesizer
    from realnet.synthesis.foreground import ForegroundRule

    config = load_config("tiny", overrides=["synthesis.delta_ranges.dtd=[0.05, 0.3]"])
    assert config.synthesis.delta_ranges == {"dtd": [0.05, 0.3], "sia": [0.5, 1.0]}
    config.synthesis.sources = {"cutpaste": 1.0}  # no DTD folder needed to build it
    synthesizer = build_synthesizer(config, ForegroundRule("none"), tmp_path, "widget",
                                    np.zeros((2, 64, 64, 3), np.uint8))
    assert synthesizer.config.delta_ranges["dtd"] == (0.05, 0.3)
    assert load_config("paper").synthesis.delta_ranges == {"dtd": [0.2, 1.0], "sia": [0.5, 1.0]}


def test_the_authors_empty_mask_behaviour_is_one_setting_away(tmp_path):
    import numpy as np

    from realnet.engine.fit import build_synthesizer
    from realnet.synthesis.foreground import ForegroundRule

    for overrides, retry in (([], True), (["synthesis.retry_empty_masks=false"], False)):
        config = load_config("tiny", overrides=overrides)
        config.synthesis.sources = {"cutpaste": 1.0}
        synthesizer = build_synthesizer(config, ForegroundRule("none"), tmp_path, "widget",
                                        np.zeros((2, 64, 64, 3), np.uint8))
        assert synthesizer.config.retry_empty_masks is retry


@pytest.mark.parametrize("command", [["fit", "--data", "d", "--category", "c", "--out", "o"],
                                     ["sdas", "train", "--data", "d", "--categories", "c", "--out", "o"],
                                     ["sdas", "generate", "--model", "m", "--category", "c", "--count", "1",
                                      "--out", "o"]])
@pytest.mark.parametrize("seed", ["-1", "18446744073709551616"])
def test_seeds_out_of_range_are_refused_by_the_command_line(command, seed, tmp_path, monkeypatch, capsys):
    """`sdas generate --seed -1` wrote its settings file, then failed with numpy's traceback; a
    seed of 2**64 failed in torch.manual_seed with a traceback."""
    from realnet.cli.main import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--seed", seed])
    assert exit_.value.code == 2
    assert f"argument --seed: must be in [0, 4294967295], got {seed}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["sdas", "train", "--data", "d", "--categories", "c", "--out", "o"],
                                     ["sdas", "generate", "--model", "m", "--category", "c", "--count", "1",
                                      "--out", "o"],
                                     ["sdas", "quality", "--real", "r", "--fake", "f"]])
@pytest.mark.parametrize("threads", ["0", "1025", "1000000000000"])
def test_thread_counts_out_of_range_are_refused_by_the_command_line(command, threads, tmp_path, monkeypatch, capsys):
    """`--threads 1000000000000` was an overflow traceback from torch.set_num_threads; 100000 passed
    it and crashed OpenMP."""
    from realnet.cli.main import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--threads", threads])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --threads: must be in [1, 1024], got {threads}" in error and "Traceback" not in error
    assert list(tmp_path.iterdir()) == []


def test_a_run_recorded_with_a_retired_setting_still_loads_but_nobody_can_set_it():
    """train.num_workers was accepted and never used (synthesis runs in the training process)."""
    from realnet.config import RealNetConfig

    recorded = load_config("tiny").to_dict()
    recorded["train"]["num_workers"] = 4
    assert RealNetConfig.from_dict(recorded, saved=True).to_dict() == load_config("tiny").to_dict()
    assert recorded["train"]["num_workers"] == 4  # the caller's mapping is left alone
    with pytest.raises(RealnetError, match=r"unknown config key 'train\.num_workers'"):
        RealNetConfig.from_dict(recorded)
    with pytest.raises(RealnetError, match=r"unknown config key 'train\.num_workers'"):
        load_config("tiny", overrides=["train.num_workers=2"])
    with pytest.raises(RealnetError, match=r"unknown config key 'trian' \(known: preset, backbone"):
        load_config("tiny", overrides=["trian.steps=2"])


def test_fit_takes_several_sources_after_one_flag_as_preview_does():
    """Regression: `fit --source dtd shade`, the form `synth preview` and the README use, failed
    with 'unrecognized arguments: shade'."""
    from realnet.cli.detector import config_from_args
    from realnet.cli.main import build_parser

    args = build_parser().parse_args(["fit", "--data", "d", "--category", "c", "--out", "o", "--preset", "tiny",
                                      "--source", "cutpaste", "shade:0.5", "--source", "nsa"])
    assert config_from_args(args).synthesis.sources == {"cutpaste": 1.0, "shade": 0.5, "nsa": 1.0}


def test_a_backbone_weights_file_from_set_or_config_is_recorded_absolute(tmp_path, monkeypatch):
    """Regression: only --backbone-weights was made absolute; a relative file given with --set or
    in a --config YAML was recorded as given, so test, predict and export run from another folder
    did not find it."""
    from realnet.cli.detector import config_from_args
    from realnet.cli.main import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.yaml").write_text("backbone:\n  weights: from_yaml.pth\n")
    fit = ["fit", "--data", "d", "--category", "c", "--out", "o", "--preset", "tiny"]
    for given, recorded in ((["--set", "backbone.weights=from_set.pth"], "from_set.pth"),
                            (["--config", "weights.yaml"], "from_yaml.pth"),
                            (["--backbone-weights", "from_flag.pth"], "from_flag.pth"),
                            (["--set", "backbone.weights=random"], "random")):
        config = config_from_args(build_parser().parse_args(fit + given))
        assert config.backbone.weights == (recorded if recorded == "random" else str(tmp_path / recorded))


def test_image_bank_folders_from_set_or_config_are_recorded_absolute(tmp_path, monkeypatch):
    """Regression: a relative synthesis.sia_root or dtd_root given with --set or in a --config YAML was
    recorded as given, so `fit --resume` from another folder read another image bank without a word."""
    from realnet.cli.detector import config_from_args
    from realnet.cli.main import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "banks.yaml").write_text("synthesis:\n  dtd_root: textures\n  sia_root: bank\n")
    fit = ["fit", "--data", "d", "--category", "c", "--out", "o", "--preset", "tiny", "--set",
           "synthesis.sources={dtd: 1, sia: 1}"]  # sources that read both folders
    for given in (["--config", "banks.yaml"], ["--set", "synthesis.dtd_root=textures", "--set", "synthesis.sia_root=bank"],
                  ["--dtd", "textures", "--sia", "bank"]):
        synthesis = config_from_args(build_parser().parse_args(fit + given)).synthesis
        assert (synthesis.dtd_root, synthesis.sia_root) == (str(tmp_path / "textures"), str(tmp_path / "bank"))
    synthesis = config_from_args(build_parser().parse_args(fit)).synthesis
    assert (synthesis.dtd_root, synthesis.sia_root) == (None, None)  # unset: DTD is still looked up where fit runs


@pytest.mark.parametrize("flag, override, setting", [
    (["--steps", "20"], "train.steps=500", "train.steps"),
    (["--seed", "0"], "train.seed=3", "train.seed"),
    (["--source", "dtd"], "synthesis.sources.shade=0.2", "synthesis.sources"),
    (["--source", "dtd"], "synthesis.sources={crack: 1}", "synthesis.sources"),
    (["--dtd", "textures"], "synthesis.dtd_root=other", "synthesis.dtd_root"),
    (["--sia", "bank"], "synthesis.sia_root=other", "synthesis.sia_root"),
    (["--backbone-weights", "a.pth"], "backbone.weights=b.pth", "backbone.weights"),
    (["--bf16"], "train.bf16=false", "train.bf16"),
])
def test_a_flag_and_a_set_override_of_one_setting_are_refused(flag, override, setting, tmp_path, capsys):
    """Regression: `fit --set synthesis.sources.shade=0.2 --source dtd` and `--set train.steps=500
    --steps 20` ended with the flags' values without a word."""
    from realnet.cli.main import main

    assert main(["fit", "--data", str(tmp_path), "--category", "c", "--preset", "cpu", "--out", str(tmp_path / "run"),
                 "--set", override, *flag]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"realnet: error: {flag[0]} and --set {setting}") and error.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, overrides, needle", [
    ("fit", ["train.steps=500", "train.steps=20"], "--set train.steps is given twice ('train.steps=500' and "
                                                   "'train.steps=20')"),
    ("fit", ["synthesis.sources.shade=0.2", "synthesis.sources={dtd: 1}"],
     "--set synthesis.sources={dtd: 1} replaces synthesis.sources after --set synthesis.sources.shade=0.2"),
    ("bench", ["train.steps=5", "train.steps=7"], "--set train.steps is given twice"),
])
def test_a_set_override_whose_value_would_be_lost_is_refused(command, overrides, needle, tmp_path, capsys):
    """Regression: `--set train.steps=500 --set train.steps=20` trained 20 steps without a word, and a
    whole mapping given after one of its entries dropped that entry."""
    from realnet.cli.main import main

    given = [arg for override in overrides for arg in ("--set", override)]
    out = tmp_path / "out"
    if command == "fit":
        args = ["fit", "--data", str(tmp_path), "--category", "c", "--preset", "tiny", "--out", str(out), *given]
    else:
        args = ["bench", "--suite", "tiny", "--out", str(out), "--tables-only", *given]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"realnet: error: {needle}") and error.count("\n") == 1
    assert not out.exists()


def test_an_entry_set_after_its_whole_mapping_is_kept():
    from realnet.cli.detector import config_from_args
    from realnet.cli.main import build_parser

    args = build_parser().parse_args(["fit", "--data", "d", "--category", "c", "--out", "o", "--preset", "tiny",
                                      "--set", "synthesis.sources={dtd: 1}", "--set", "synthesis.sources.shade=0.5"])
    assert config_from_args(args).synthesis.sources == {"dtd": 1.0, "shade": 0.5}


def test_a_flag_that_agrees_with_a_set_override_is_taken():
    from realnet.cli.detector import config_from_args
    from realnet.cli.main import build_parser

    args = build_parser().parse_args(["fit", "--data", "d", "--category", "c", "--out", "o", "--preset", "tiny",
                                      "--bf16", "--set", "train.bf16=true", "--set", "train.checkpoint_every=3",
                                      "--steps", "20", "--source", "cutpaste"])
    config = config_from_args(args)
    assert config.train.bf16 and config.train.steps == 20 and config.synthesis.sources == {"cutpaste": 1.0}


def test_paper_preset_seed_and_synthesis_match_the_notes():
    """Notes: seed 100; SIA is the only anomaly source, applied to half the images."""
    config = load_config("paper")
    assert config.train.seed == 100
    assert config.synthesis.normal_probability == 0.5
    assert config.synthesis.sources == {"sia": 1.0}


@pytest.mark.parametrize("override", ["train.seed=[", "synthesis.sources={dtd: 1", "train.batch_size=*x"])
def test_an_override_that_is_not_valid_yaml_is_one_line_naming_it(override, tmp_path, capsys):
    """Regression: a --set value YAML could not parse ended `realnet fit` with PyYAML's traceback."""
    from realnet.cli.main import main

    assert main(["fit", "--data", str(tmp_path), "--category", "c", "--preset", "tiny",
                 "--out", str(tmp_path / "run"), "--set", override]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"realnet: error: --set {override}: not a valid YAML value") and error.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_dotted_override_into_a_mapping_changes_that_entry_only(tmp_path):
    """Regression: `--set synthesis.sources.shade=0.2` replaced the preset's whole mapping, so its
    DTD half was dropped without a word; a mapping written whole still replaces it."""
    config = load_config("cpu", overrides=["synthesis.sources.shade=0.2"])
    assert config.synthesis.sources == {"dtd": 0.5, "shade": 0.2}
    assert load_config("cpu", overrides=["synthesis.sources={crack: 1}"]).synthesis.sources == {"crack": 1.0}
    with pytest.raises(RealnetError, match="train.steps.x: train.steps is not a mapping"):
        load_config("cpu", overrides=["train.steps.x=1"])
    with pytest.raises(RealnetError, match="unknown config key 'train.nope'"):
        load_config("cpu", overrides=["train.nope.x=1"])


def test_a_config_file_that_is_not_utf8_is_one_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"# r\xe9glages\ntrain: {steps: 3}\n")
    with pytest.raises(RealnetError, match=f"{path}: not UTF-8 text"):
        load_config("tiny", path)


@pytest.mark.parametrize("override", ["reconstruction.width_factor=.inf", "density.regularization=.inf",
                                      "train.learning_rate=-.inf", "density.weight=.nan", "train.learning_rate=inf"])
def test_non_finite_numbers_are_refused_by_name(override):
    """Regression: reconstruction.width_factor=.inf passed validation and failed in the model with an
    OverflowError traceback; density.regularization=.inf with a LinAlgError after training."""
    with pytest.raises(RealnetError, match=f"{override.split('=')[0]} must be a finite number"):
        load_config("tiny", overrides=[override])
