"""config.setting_changes and bench's recorded_config_changes: sorted (setting, before, now)
triples; settings that cannot change results (resume-free) and retired ones are left out; a
cell.json without a recorded config differs in every setting, also from a config that equals
the dataclass defaults (a defaults-filling comparison would read it as current)."""

from realnet.config import RealNetConfig, flat_config, load_config, setting_changes


def test_setting_changes_are_sorted_and_carry_both_values():
    before = load_config("tiny").to_dict()
    now = load_config("tiny", overrides=["train.seed=3", "rrs.ratio=0.5", "backbone.layers=[1, 3]",
                                         "train.learning_rate=0.01"]).to_dict()
    changes = setting_changes(before, now)
    names = [name for name, _, _ in changes]
    assert names == sorted(names) == ["backbone.layers", "rrs.ratio", "train.learning_rate", "train.seed"]
    assert dict((name, (old, new)) for name, old, new in changes)["train.seed"] == (0, 3)


def test_resume_free_and_retired_settings_are_never_changes():
    before = load_config("tiny").to_dict()
    now = load_config("tiny", overrides=["train.checkpoint_every=3", "train.feature_cache_gb=1.0"]).to_dict()
    assert setting_changes(before, now) == []
    recorded = load_config("tiny").to_dict()
    recorded["train"]["num_workers"] = 4  # retired: runs that recorded it are the same run
    assert setting_changes(recorded, before) == [] and setting_changes(before, recorded) == []


def test_a_cell_json_without_a_config_differs_in_every_setting_even_from_the_defaults():
    from realnet.bench.runner import recorded_config_changes

    defaults = RealNetConfig().to_dict()
    for status in ({"status": "complete"}, {"status": "complete", "config": {}}):
        changes = recorded_config_changes(status, defaults)
        assert [name for name, _, _ in changes] == sorted(flat_config(defaults))
        assert all(before is None for _, before, _ in changes)
    assert recorded_config_changes({"status": "complete", "config": defaults}, defaults) == []
