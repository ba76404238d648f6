"""Tests for trainables.config: validation names the field, epsilons parse as fractions, YAML is safe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from advtune.trainables.config import ConfigError, TrialConfig, parse_eps, parse_overrides


def write_yaml(tmp_path: Path, text: str, name: str = "trial.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- defaults and parsing

def test_defaults_validate_and_are_the_embedded_default():
    cfg = TrialConfig()
    assert (cfg.dataset, cfg.model, cfg.pretrained, cfg.attack, cfg.norm) == ("digits", "small_cnn", "auto", "pgd", "linf")
    assert cfg.train_eps is None and cfg.train_eps_value == cfg.eval_eps == 0.2
    assert cfg.val_step_value == pytest.approx(2.5 * 0.2 / 10)
    assert cfg.milestones == (0.5, 0.75)
    # every field's default survives validation again (no default that its own validator rejects)
    assert TrialConfig(**{f.name: f.default for f in dataclasses.fields(TrialConfig)}) == cfg


@pytest.mark.parametrize("text, expected", [("8/255", 8 / 255), (" 2/255 ", 2 / 255), ("0.5", 0.5), (0.1, 0.1), (1, 1.0)])
def test_parse_eps_accepts_numbers_and_fractions(text, expected):
    assert parse_eps(text) == pytest.approx(expected, rel=0, abs=1e-15)


@pytest.mark.parametrize("bad", ["abc", "1/0", "__import__('os')", True, [1], None])
def test_parse_eps_rejects_everything_else(bad):
    with pytest.raises(ConfigError, match="eps"):
        parse_eps(bad, "eps")


def test_fraction_eps_from_yaml_file(tmp_path):
    cfg = TrialConfig.from_yaml(write_yaml(tmp_path, "eval_eps: 8/255\ntrain_eps: 4/255\nval_size: 0.25\n"))
    assert cfg.eval_eps == pytest.approx(8 / 255, abs=1e-15)
    assert cfg.train_eps == pytest.approx(4 / 255, abs=1e-15)
    assert isinstance(cfg.eval_eps, float) and isinstance(cfg.train_eps, float)
    assert cfg.train_eps_value == cfg.train_eps


def test_fraction_eps_from_set_overrides():
    assert parse_overrides(["eval_eps=8/255", "peak_lr=0.1"]) == {"eval_eps": "8/255", "peak_lr": 0.1}
    cfg = TrialConfig().with_overrides(["eval_eps=8/255", "train_eps=10/255"])
    assert cfg.eval_eps == pytest.approx(8 / 255, abs=1e-15)
    assert cfg.train_eps == pytest.approx(10 / 255, abs=1e-15)
    assert cfg.val_step_value == pytest.approx(2.5 * (8 / 255) / cfg.val_steps)


def test_overrides_coerce_scalars_to_field_types():
    cfg = TrialConfig().with_overrides(["epochs=3", "batch_size=64.0", "nesterov=yes", "pretrained=none",
                                        "milestones=[0.3, 0.6]", "val_size=500"])
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.batch_size == 64 and isinstance(cfg.batch_size, int)
    assert cfg.nesterov is True
    assert cfg.milestones == (0.3, 0.6)
    assert cfg.val_size == 500


def test_set_without_equals_sign_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        TrialConfig().with_overrides(["peak_lr"])


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrialConfig().peak_lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------- bad values name the field

def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = write_yaml(tmp_path, "peak_lr: 0.1\npeak_rl: 0.2\n")
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_yaml(path)
    msg = str(err.value)
    assert "peak_rl" in msg and str(path) in msg and "did you mean 'peak_lr'" in msg


def test_unknown_key_in_set_names_key_and_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'eval_esp' in --set; did you mean 'eval_eps'"):
        TrialConfig().with_overrides(["eval_esp=0.1"])


@pytest.mark.parametrize("field, value, pattern", [
    ("eval_eps", 1.5, r"'eval_eps' = 1\.5 is out of range.*8/255"),
    ("eval_eps", -0.1, r"'eval_eps' = -0\.1 is out of range"),
    ("eval_eps", 0, r"'eval_eps' = 0\.0 is out of range"),
    ("eval_eps", "abc", r"eval_eps='abc' is not a number"),
    ("eval_eps", float("nan"), r"'eval_eps' = nan is out of range"),
    ("train_eps", 2.0, r"'train_eps' = 2\.0 is out of range"),
    ("batch_size", "big", r"'batch_size' = 'big' is not an integer"),
    ("batch_size", 0, r"'batch_size' = 0 is out of range"),
    ("batch_size", True, r"'batch_size' = True is not an integer"),
    ("epochs", 2.5, r"'epochs' = 2\.5 is not an integer"),
    ("peak_lr", "fast", r"'peak_lr' = 'fast' is not a number"),
    ("nesterov", "maybe", r"'nesterov' = 'maybe' is not a boolean"),
    ("attack", "pgdd", r"'attack' = 'pgdd' is not allowed: choose one of .*pgd.*did you mean 'pgd'"),
    ("schedule", "onecycle", r"'schedule' = 'onecycle' is not allowed"),
    ("norm", "l1", r"'norm' = 'l1' is not allowed"),
    ("milestones", [0.75, 0.5], r"'milestones' = \[0\.75, 0\.5\] must be increasing"),
    ("milestones", [0.5, 1.5], r"'milestones' = \[0\.5, 1\.5\] must be increasing"),
    ("milestones", ["soon"], r"'milestones'"),
    ("milestones", "abc", r"'milestones'"),
    ("val_size", 0, r"'val_size' = 0\.0 is out of range"),
    ("val_size", -3, r"'val_size'"),
    ("val_size", 1.5, r"'val_size' = 1\.5 is out of range"),
    ("warmup", 1.0, r"'warmup' = 1\.0 is out of range"),
    ("train_size", 0, r"'train_size' = 0 is out of range"),
    ("train_size", 0.5, r"'train_size' = 0\.5 is not an integer"),
    ("device", "tpu", r"'device' = 'tpu' is not allowed"),
    ("dataset", None, r"'dataset' must not be empty"),
])
def test_bad_value_raises_config_error_naming_the_field(field, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrialConfig(**{field: value})


def test_min_lr_above_peak_lr_is_rejected_with_the_range():
    with pytest.raises(ConfigError, match=r"'min_lr' = 0\.5 is out of range: expected 0 <= min_lr <= 0\.1"):
        TrialConfig(peak_lr=0.1, min_lr=0.5)
    assert TrialConfig(peak_lr=0.1, min_lr=0.1).min_lr == 0.1


def test_bad_values_from_set_and_yaml_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'batch_size'"):
        TrialConfig().with_overrides(["batch_size=big"])
    with pytest.raises(ConfigError, match="'milestones'"):
        TrialConfig().with_overrides(["milestones=abc"])
    with pytest.raises(ConfigError, match="eval_eps"):
        TrialConfig().with_overrides(["eval_eps=2/0"])
    path = write_yaml(tmp_path, "attack: pgdd\n")
    with pytest.raises(ConfigError, match=rf"{path}.*'attack'"):
        TrialConfig.from_yaml(path)


def test_single_milestone_number_means_one_drop():
    assert TrialConfig().with_overrides(["milestones=0.5"]).milestones == (0.5,)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="data_root"):
        TrialConfig(dataset="imagefolder")
    with pytest.raises(ConfigError, match="trades"):
        TrialConfig(loss="trades", attack="fgsm_rs")
    # l2 epsilons may exceed 1 (they are a Euclidean radius), linf ones may not
    assert TrialConfig(norm="l2", eval_eps=1.5).eval_eps == 1.5


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrialConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrialConfig.from_yaml(write_yaml(tmp_path, "peak_lr: [0.1\n"))
    with pytest.raises(ConfigError, match="mapping"):
        TrialConfig.from_yaml(write_yaml(tmp_path, "- 1\n- 2\n"))
    assert TrialConfig.from_yaml(write_yaml(tmp_path, "")) == TrialConfig()


# ---------------------------------------------------------------- round trips and safety

def test_yaml_round_trip_is_exact(tmp_path):
    cfg = TrialConfig(eval_eps="8/255", train_eps="10/255", peak_lr=0.0731, milestones=[0.3, 0.9], pretrained="none",
                      data_root="/data/x", schedule="piecewise", attack="fgsm_rs", epochs=3, val_size=100,
                      nesterov=True, image_size=32)
    path = tmp_path / "cfg.yaml"
    text = cfg.to_yaml(path)
    assert path.read_text() == text
    again = TrialConfig.from_yaml(path)
    assert again == cfg
    assert again.eval_eps == cfg.eval_eps  # bit-exact, not approximately
    assert TrialConfig.from_yaml(write_yaml(tmp_path, TrialConfig().to_yaml(), "d.yaml")) == TrialConfig()


def test_export_entry_with_config_key_loads(tmp_path):
    import yaml

    cfg = TrialConfig(peak_lr=0.05, epochs=3)
    path = write_yaml(tmp_path, yaml.safe_dump({"config": cfg.to_dict(), "metrics": {"robust_acc": 0.5}}))
    assert TrialConfig.from_yaml(path) == cfg


def test_dict_round_trip_and_replace():
    cfg = TrialConfig(peak_lr=0.05)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    changed = cfg.replace(epochs=3)
    assert changed.epochs == 3 and changed.peak_lr == 0.05 and cfg.epochs == 8
    with pytest.raises(ConfigError, match="epochs"):
        cfg.replace(epochs=0)


def test_yaml_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write_yaml(tmp_path, f"peak_lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrialConfig.from_yaml(path)
    path = write_yaml(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n", "whole.yaml")
    with pytest.raises(ConfigError):
        TrialConfig.from_yaml(path)
    with pytest.raises(ConfigError):
        TrialConfig().with_overrides([f"peak_lr=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_fraction_strings_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        TrialConfig(eval_eps=f"__import__('pathlib').Path('{marker}').touch() or 0.1")
    assert not marker.exists()


@pytest.mark.parametrize("value", [300, 300.0, "300"])
def test_val_size_as_a_count_of_images_reaches_the_loader(value):
    from advtune.trainables.data import load_splits

    cfg = TrialConfig(val_size=value) if value != "300" else TrialConfig().with_overrides(["val_size=300"])
    assert cfg.val_size == 300 and isinstance(cfg.val_size, int)
    assert len(load_splits(cfg.dataset, cfg.data_root, cfg.val_size, cfg.split_seed).val) == 300


def test_train_size_and_model_width_change_the_pretraining_cache_key(tmp_path, monkeypatch):
    """A starting point pretrained on a subset (or another width) must never be reused for another."""
    from advtune.trainables.models import build_net
    from advtune.trainables.pretrain import cached_path

    monkeypatch.setenv("ADVTUNE_CACHE", str(tmp_path))
    base = TrialConfig()
    paths = {cached_path(base.replace(**kw)) for kw in ({}, {"train_size": 500}, {"train_size": 600},
                                                        {"model": "small_cnn-16"})}
    assert len(paths) == 4
    n_params = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert n_params(build_net("small_cnn-16", 1, 10)) < n_params(build_net("small_cnn", 1, 10))
    assert n_params(build_net("small_cnn-32", 1, 10)) == n_params(build_net("small_cnn", 1, 10))
    with pytest.raises(ValueError, match="small_cnn-W"):
        build_net("small_cnn-0", 1, 10)
