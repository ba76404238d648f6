"""Multi-objective and constrained studies, warm starts, and the report's importance over all trials.

One small real robust+clean study (real Ray Tune, Optuna multi-objective TPE, ASHA) is shared by the
tests of this module, and a second, warm-started from it; the searcher's bookkeeping and the
sampler's use of warm-start trials are also tested directly, without Ray (milliseconds).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from advtune.study.cli import main
from advtune.study.objectives import TRIAL_ID_ATTR, WARM_ATTR, non_dominated, parse_objective
from advtune.study.records import StudyRecords

# little data (the pretraining config of test_study_resume and test_cluster: pretrained once for the session)
SETS = ["--set", "train_steps=2", "--set", "val_steps=3", "--set", "pretrain_epochs=10", "--set", "train_size=256",
        "--set", "val_size=64"]
FINISHED = ("completed", "diverged", "catastrophic_overfitting")


# --- objectives, no Ray ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, floor", [("robust", "robust", None), ("robust+clean", "pareto", None),
                                               ("robust:clean>=0.8", "constrained", 0.8),
                                               ("robust : clean >= 85%", "constrained", 0.85)])
def test_objective_forms(text, kind, floor):
    o = parse_objective(text)
    assert o.kind == kind and o.min_clean == (pytest.approx(floor) if floor else None)
    assert parse_objective(o.text) == o  # the canonical text stored in the spec parses back to the same


def test_non_dominated_keeps_exactly_the_front():
    pts = {"a": (0.5, 0.9), "b": (0.6, 0.8), "c": (0.5, 0.8), "d": (0.6, 0.8), "e": (0.4, 0.95)}
    assert sorted(non_dominated(pts)) == ["a", "b", "d", "e"]  # c is beaten by a; equal points both stay


def _searcher(metric, mode, min_clean=None):
    from advtune.search_spaces import define_by_run, load_space
    from advtune.study.tune_backend import PruningAwareOptunaSearch, make_sampler

    return PruningAwareOptunaSearch(space=define_by_run(load_space("sfd")), metric=metric, mode=mode,
                                    sampler=make_sampler("tpe", 0, 3), min_clean=min_clean)


def _result(status, robust, clean, it):
    return {"status": status, "best_robust_acc": robust, "best_clean_acc": clean, "robust_acc": robust,
            "training_iteration": it, "epoch": it}


def test_multi_objective_searcher_tells_pruned_trials_as_pruned_without_values():
    s = _searcher(["best_robust_acc", "best_clean_acc"], ["max", "max"])
    for tid in ("t1", "t2"):
        assert s.suggest(tid)
        s.on_trial_result(tid, _result("running", 0.3, 0.9, 1))  # Optuna keeps no intermediate values here
    s.on_trial_complete("t1", _result("running", 0.3, 0.9, 1))  # stopped by ASHA
    s.on_trial_complete("t2", _result("completed", 0.4, 0.8, 3))
    t1, t2 = s._ot_study.trials
    assert t1.state == optuna.trial.TrialState.PRUNED and t1.values is None and not t1.intermediate_values
    assert t2.state == optuna.trial.TrialState.COMPLETE and t2.values == [0.4, 0.8]
    assert (t1.user_attrs[TRIAL_ID_ATTR], t2.user_attrs[TRIAL_ID_ATTR]) == ("t1", "t2")


def test_constrained_searcher_records_the_clean_floor_as_an_optuna_constraint():
    s = _searcher("best_robust_acc", "max", min_clean=0.85)
    for tid, clean, status in (("ok", 0.9, "completed"), ("low", 0.7, "completed"), ("cut", 0.6, "running")):
        s.suggest(tid)
        s.on_trial_complete(tid, _result(status, 0.4, clean, 2))
    ok, low, cut = s._ot_study.trials
    assert ok.constraints["clean_acc"] == pytest.approx(-0.05)  # feasible: <= 0
    assert low.constraints["clean_acc"] == pytest.approx(0.15) and cut.constraints["clean_acc"] == pytest.approx(0.25)
    assert cut.state == optuna.trial.TrialState.PRUNED and cut.intermediate_values == {2: 0.4}
    assert s._ot_study.best_trial.number == ok.number  # Optuna's best is the feasible one


# --- a real two-objective study ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mo_study(local_ray, tmp_path_factory):
    storage = tmp_path_factory.mktemp("studies")
    rc = main(["run", "--name", "mo", "--storage-path", str(storage), "--num-samples", "5", "--max-epochs", "3",
               "--reduction-factor", "3", "--pruning", "epoch",  # rungs at epoch 1: ASHA stops trials in 3 epochs
               "--concurrency", "2", "--seed", "1", "--objective", "robust+clean",
               "--final-attack", "none", *SETS])  # the final strong evaluation is tested in test_study.py
    assert rc == 0
    return storage / "mo"


def test_two_objective_study_exports_only_non_dominated_trials(mo_study):
    records = StudyRecords(mo_study, tensorboard=False).load()
    ot = optuna.load_study(study_name="mo", storage=f"sqlite:///{mo_study / 'optuna.db'}")
    assert len(ot.directions) == 2
    pruned = [r for r in records if r.state == "pruned"]
    assert pruned, "ASHA stopped no trial: the study does not test the multi-objective PRUNED bookkeeping"
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in ot.trials) == len(pruned)
    assert main(["export", str(mo_study), "--out", str(mo_study / "default")]) == 0  # no flag: the front
    index = yaml.safe_load((mo_study / "default" / "pareto.yaml").read_text())
    front = {e["trial_id"]: (e["metrics"]["robust_acc"], e["metrics"]["clean_acc"]) for e in index["entries"]}
    finished = {r.trial_id: (r.best["robust_acc"], r.best["clean_acc"]) for r in records if r.state in FINISHED}
    assert front and set(front) <= set(finished)
    for tid, (rob, cln) in front.items():  # nothing the search finished beats an exported point on both
        assert not any(o[0] >= rob and o[1] >= cln and o != (rob, cln) for o in finished.values()), tid
    assert set(front) == set(non_dominated(finished))  # and every non-dominated finished trial is there
    assert {t.user_attrs[TRIAL_ID_ATTR] for t in ot.best_trials} == set(front)  # Optuna's own front, mapped
    for e in index["entries"]:
        assert Path(e["command"].split("--config ")[1].split()[0]).exists()


def test_report_shows_the_front_and_importance_over_every_trial(mo_study):
    out = mo_study / "report-test"
    assert main(["report", str(mo_study), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "Pareto front the search found" in page
    records = StudyRecords(mo_study, tensorboard=False).load()
    ot = optuna.load_study(study_name="mo", storage=f"sqlite:///{mo_study / 'optuna.db'}")
    for t in ot.best_trials:
        assert f"export/01-{t.user_attrs[TRIAL_ID_ATTR]}.yaml" in page or \
            f"-{t.user_attrs[TRIAL_ID_ATTR]}.yaml" in page  # its rerun command
    assert (out / "interaction.png").stat().st_size > 10_000
    from advtune.study.importance import derived_study

    derived = derived_study(records, {**{k: v for t in ot.trials for k, v in t.distributions.items()}})
    assert len(derived.trials) == sum(r.best is not None for r in records)  # pruned ones included
    assert "Caveat: only 5 trials, fewer than 20" in page


# --- warm starts ------------------------------------------------------------------------------------------
def _spec(tmp_path, warm, **kw):
    from advtune.study.spec import build_spec
    from advtune.trainables.config import TrialConfig

    args = dict(space="sfd", num_samples=4, max_epochs=3, grace_period=1, reduction_factor=3, concurrency=2,
                cpus_per_trial=1.0, gpus_per_trial=0.0, address=None, storage_path=str(tmp_path), name="w",
                seed=1, max_failures=0, verbose=False, assume_shared_storage=False, warm_start=warm, objective="robust")
    return build_spec(SimpleNamespace(**{**args, **kw}), TrialConfig().with_overrides(["val_steps=3", "val_size=64"]))


def test_warm_start_sampler_holds_the_earlier_trials_and_proposes_otherwise(mo_study, tmp_path):
    from advtune.search_spaces import define_by_run
    from advtune.study.tune_backend import make_sampler
    from advtune.study.warm_start import collect

    spec, space = _spec(tmp_path, [str(mo_study)])
    ws = collect(spec, space)
    records = StudyRecords(mo_study, tensorboard=False).load()
    assert len(ws.trials) == sum(r.state in FINISHED + ("pruned",) for r in records)
    by_id = {r.trial_id: r for r in records}
    for t in ws.trials:  # the new (single) objective's value, from the trial's own records
        rec = by_id[t.user_attrs[WARM_ATTR].rsplit("/", 1)[1]]
        assert t.params == rec.params
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(rec.best["robust_acc"])
        else:
            assert rec.state == "pruned" and t.intermediate_values
    proposals = []
    for trials in ([], ws.trials):  # the same seed, cold and warm
        study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", spec.seed, 3))
        study.add_trials(trials)
        trial = study.ask()
        define_by_run(space, spec.base_config)(trial)
        proposals.append(trial.params)
        assert len(study.trials) == len(trials) + 1
    assert proposals[0] != proposals[1]


def test_a_warm_started_study_seeds_its_sampler_and_says_what_it_took(mo_study, tmp_path, capsys):
    storage = tmp_path / "studies"
    rc = main(["run", "--name", "warm", "--storage-path", str(storage), "--num-samples", "2", "--max-epochs", "1",
               "--concurrency", "2", "--seed", "1", "--warm-start", str(mo_study), "--final-attack", "none", *SETS])
    assert rc == 0
    out = capsys.readouterr().out
    n_warm = sum(r.state in FINISHED + ("pruned",) for r in StudyRecords(mo_study, tensorboard=False).load())
    assert f"warm start from {mo_study}: {n_warm} trials taken" in out
    assert "starting points: none (the warm-start trials take their place)" in out
    ot = optuna.load_study(study_name="warm", storage=f"sqlite:///{storage / 'warm' / 'optuna.db'}")
    warm = [t for t in ot.trials if WARM_ATTR in t.user_attrs]
    own = [t for t in ot.trials if TRIAL_ID_ATTR in t.user_attrs]
    assert len(warm) == n_warm and len(own) == 2
    assert min(t.number for t in own) > max(t.number for t in warm)  # seeded before Tune started
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in own)
    sfd_start = {"peak_lr": 0.02, "warmup": 0.1}
    assert not any(all(t.params[k] == pytest.approx(v) for k, v in sfd_start.items()) for t in own)
    marker = json.loads((storage / "warm" / "advtune_study.json").read_text())
    assert marker["spec"]["warm_start"] == [str(mo_study)]


def test_constrained_export_puts_the_trials_above_the_clean_floor_first(tmp_path):
    """A study's files as advtune writes them (no Ray): the most robust trial misses the floor."""
    from advtune.study.records import MARKER, StudyRecords as Records

    d = tmp_path / "c"
    rec = Records(d, tensorboard=False)
    for tid, robust, clean in (("strong", 0.5, 0.85), ("kept", 0.4, 0.95), ("weak", 0.3, 0.97)):
        rec.on_start(tid, {"peak_lr": 0.02})
        rec.on_result(tid, {"epoch": 1, "robust_acc": robust, "clean_acc": clean, "grad_passes": 10})
        rec.on_end(tid, "completed")
    spec = {"name": "c", "space": "sfd", "base_config": {}, "max_epochs": 1, "objective": "robust:clean>=0.9"}
    (d / MARKER).write_text(json.dumps({"advtune_study": 1, "spec": spec, "space_base": {}}))
    assert main(["export", str(d), "--top-k", "2", "--format", "json"]) == 0
    index = json.loads((d / "export" / "best.json").read_text())
    assert [e["trial_id"] for e in index["entries"]] == ["kept", "weak"]
    assert index["objective"] == "robust:clean>=0.9"
