"""Search-space schema, presets and the define-by-run space: no Ray, no training, milliseconds."""
from __future__ import annotations

import optuna
import pytest

from advtune.search_spaces import PRESETS, SpaceError, define_by_run, load_space, trial_config
from advtune.study.spec import asha_rungs, min_grace
from advtune.trainables.config import TrialConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", ["sfd", "cyclic", "sat", "scope", "attack"])
def test_every_preset_loads_and_its_starting_points_make_valid_configs(name):
    assert name in PRESETS
    space = load_space(name)
    assert space.params and space.starting_points
    base = TrialConfig()
    for point in space.starting_points:
        cfg = trial_config(base, space, point)
        for k, v in point.items():
            assert getattr(cfg, k) == v


def test_scale_eval_eps_makes_ranges_relative_to_the_threat_model():
    space = load_space("sfd", TrialConfig(eval_eps="8/255"))
    p = space.param("train_eps")
    assert p.low == pytest.approx(0.75 * 8 / 255) and p.high == pytest.approx(1.25 * 8 / 255)
    assert space.starting_points[0]["train_eps"] == pytest.approx(8 / 255)


def _write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


BAD = [
    ("unknown top-level key", "parms:\n  peak_lr: {uniform: [0.1, 0.2]}\n", ["parms", "did you mean 'params'"]),
    ("unknown parameter", "params:\n  peak_lrr: {uniform: [0.1, 0.2]}\n", ["params.peak_lrr", "peak_lr"]),
    ("unknown option", "params:\n  peak_lr: {uniform: [0.1, 0.2], whn: {a: b}}\n", ["params.peak_lr.whn"]),
    ("two distributions", "params:\n  peak_lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}\n", ["params.peak_lr"]),
    ("inverted range", "params:\n  peak_lr: {uniform: [0.2, 0.1]}\n", ["params.peak_lr.uniform", "low must be below"]),
    ("loguniform from zero", "params:\n  peak_lr: {loguniform: [0.0, 0.1]}\n", ["params.peak_lr.loguniform", "low > 0"]),
    ("range outside the config's", "params:\n  warmup: {uniform: [0.0, 1.5]}\n", ["params.warmup", "warmup"]),
    ("bad type", "params:\n  peak_lr: {uniform: [fast, 0.1]}\n", ["params.peak_lr.uniform", "not a number"]),
    ("bad categorical", "params:\n  attack: {categorical: [pgd, pgdd]}\n", ["params.attack", "pgdd"]),
    ("int with float bounds", "params:\n  train_steps: {int: [1.5, 4]}\n", ["params.train_steps.int", "whole"]),
    ("condition on unknown", "params:\n  warmup: {uniform: [0, 0.3], when: {sched: sfd}}\n", ["when.sched"]),
    ("condition on later param", "params:\n  warmup: {uniform: [0, 0.3], when: {schedule: sfd}}\n"
     "  schedule: {categorical: [sfd, cyclic]}\n", ["params.warmup.when.schedule", "defined above"]),
    ("condition value not a choice", "params:\n  schedule: {categorical: [sfd, cyclic]}\n"
     "  warmup: {uniform: [0, 0.3], when: {schedule: cosine}}\n", ["params.warmup.when.schedule", "'cosine'"]),
    ("condition on a continuous param", "params:\n  peak_lr: {uniform: [0.1, 0.2]}\n"
     "  warmup: {uniform: [0, 0.3], when: {peak_lr: 0.1}}\n", ["when.peak_lr", "categorical"]),
    ("starting point out of range", "params:\n  peak_lr: {uniform: [0.1, 0.2]}\nstarting_points:\n  - {peak_lr: 0.5}\n",
     ["starting_points[0].peak_lr", "outside"]),
    ("starting point unknown param", "params:\n  peak_lr: {uniform: [0.1, 0.2]}\nstarting_points:\n  - {warmup: 0.1}\n",
     ["starting_points[0].warmup"]),
    ("bad base value", "base:\n  eval_eps: 3\nparams:\n  peak_lr: {uniform: [0.1, 0.2]}\n", ["base", "eval_eps"]),
    ("not a mapping", "- peak_lr\n", ["expected a mapping"]),
    ("eps range without scale", "params:\n  train_eps: {uniform: [0.75, 1.25]}\n",
     ["params.train_eps", "out of range", "add `scale: eval_eps`", "0.15 to 0.25"]),
    ("invalid YAML", "params: {peak_lr: [\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("label,text,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_space_files_fail_naming_key_and_file(tmp_path, label, text, needles):
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError) as exc:
        load_space(path)
    msg = str(exc.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, (label, msg)


def test_missing_space_names_the_presets():
    with pytest.raises(SpaceError, match="neither a preset"):
        load_space("no-such-space")
    with pytest.raises(SpaceError, match="did you mean 'sfd'"):  # a typo of a preset's name
        load_space("sdf")


@pytest.mark.parametrize("key, dist", [("eval_eps", "uniform: [0.1, 0.3]"), ("norm", "categorical: [linf, l2]"),
                                       ("split_seed", "int: [0, 3]"), ("val_size", "uniform: [0.1, 0.3]"),
                                       ("val_steps", "int: [5, 20]"), ("val_step_size", "uniform: [0.01, 0.05]"),
                                       ("val_restarts", "int: [1, 3]")])
def test_the_threat_model_and_validation_set_cannot_be_searched(tmp_path, key, dist):
    """Trials validated under different attacks or on different images do not rank together."""
    path = _write(tmp_path, f"params:\n  peak_lr: {{loguniform: [0.01, 0.1]}}\n  {key}: {{{dist}}}\n")
    with pytest.raises(SpaceError) as exc:
        load_space(path)
    msg = str(exc.value)
    assert str(path) in msg and f"params.{key}" in msg and "cannot be searched" in msg and f"--set {key}=" in msg
    fixed = _write(tmp_path, f"base:\n  {key}: {TrialConfig().to_dict()[key]!r}\nparams:\n  peak_lr: {{loguniform: [0.01, 0.1]}}\n"
                   if key != "val_step_size" else "base:\n  val_step_size: 0.05\nparams:\n  peak_lr: {loguniform: [0.01, 0.1]}\n")
    assert load_space(fixed).base  # fixing it for the whole study is fine


CONDITIONAL = """
params:
  schedule: {categorical: [sfd, cyclic]}
  warmup: {uniform: [0.0, 0.3], when: {schedule: sfd}}
  decay_rate: {uniform: [1.0, 6.0], when: {schedule: sfd}}
  peak_at: {uniform: [0.2, 0.5], when: {schedule: cyclic}}
  peak_lr: {loguniform: [0.001, 0.1]}
starting_points:
  - {schedule: cyclic, peak_at: 0.4, peak_lr: 0.05}
"""


def test_define_by_run_yields_conditional_parameters(tmp_path):
    space = load_space(_write(tmp_path, CONDITIONAL))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    define = define_by_run(space)
    seen = set()
    for _ in range(30):
        trial = study.ask()
        define(trial)
        params = trial.params
        seen.add(params["schedule"])
        if params["schedule"] == "sfd":
            assert {"warmup", "decay_rate"} <= set(params) and "peak_at" not in params
        else:
            assert "peak_at" in params and not {"warmup", "decay_rate"} & set(params)
        cfg = trial_config(TrialConfig(), space, params)  # every suggestion is a valid trial config
        assert cfg.schedule == params["schedule"]
        study.tell(trial, 0.0)
    assert seen == {"sfd", "cyclic"}


def test_starting_point_missing_an_active_parameter_is_rejected(tmp_path):
    text = CONDITIONAL.replace("{schedule: cyclic, peak_at: 0.4, peak_lr: 0.05}", "{schedule: cyclic, peak_lr: 0.05}")
    with pytest.raises(SpaceError, match="peak_at"):
        load_space(_write(tmp_path, text))


def test_asha_first_rung_waits_for_the_longest_warmup():
    space = load_space("sfd")  # warmup up to 0.3, eps_ramp up to 0.3 of training
    grace, peak = min_grace(space, TrialConfig(), 10)
    assert peak == pytest.approx(3.0) and grace == 3
    grace, _ = min_grace(load_space("cyclic"), TrialConfig(), 10)  # cyclic peaks at up to 0.5
    assert grace == 5
    assert asha_rungs(3, 2, 10) == [3, 6]
    assert asha_rungs(8, 2, 8) == []
