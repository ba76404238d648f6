"""A small real study end to end: real Ray Tune, Optuna (SQLite), ASHA, TensorBoard files, export."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import SMALL_STUDY
from advtune.study.cli import main
from advtune.study.records import StudyRecords

# the small study's data and pretraining: its cached starting point serves the lone trial below
TINY = ["--set", "train_steps=2", "--set", "val_steps=5", "--set", "pretrain_epochs=10", "--set", "train_size=256",
        "--set", "val_size=96"]
N_TRIALS, EPOCHS = 6, 3
FINAL = ["--final-attack", "pgd", "--final-images", "32", "--final-top-k", "4"]  # PGD-50-5: no extra needed


@pytest.fixture(scope="module")
def study(local_ray, small_study):
    """conftest's small study (shared with the report tests): N_TRIALS trials, EPOCHS epochs, FINAL."""
    assert f"--num-samples {N_TRIALS} --max-epochs {EPOCHS}" in " ".join(SMALL_STUDY)
    assert " ".join(FINAL) in " ".join(SMALL_STUDY)
    return small_study


def test_asha_stops_trials_and_optuna_records_them_as_pruned(study):
    records = StudyRecords(study, tensorboard=False).load()
    assert len(records) == N_TRIALS
    pruned = [r for r in records if r.state == "pruned"]
    assert pruned, "ASHA stopped no trial"
    assert all(r.epochs_run < EPOCHS for r in pruned)
    assert all(r.state == "completed" and r.epochs_run == EPOCHS for r in records if r not in pruned)
    ot = optuna.load_study(study_name="small", storage=f"sqlite:///{study / 'optuna.db'}")
    assert len(ot.trials) == N_TRIALS
    states = [t.state for t in ot.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    for t in ot.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.intermediate_values, "pruned trial lost its intermediate values"
            assert t.value is None or t.value == list(t.intermediate_values.values())[-1]
    # the starting points of the preset were evaluated first
    first = sorted(ot.trials, key=lambda t: t.number)[0]
    assert first.params["peak_lr"] == pytest.approx(0.02) and first.params["warmup"] == pytest.approx(0.1)


def test_every_trial_has_continuous_epochs_and_all_metrics(study):
    for rec in StudyRecords(study, tensorboard=False).load():
        epochs = [m["epoch"] for m in rec.metrics]
        assert epochs == list(range(1, len(epochs) + 1))
        for key in ("lr", "train_loss", "train_acc", "clean_acc", "robust_acc", "best_robust_acc", "train_eps",
                    "grad_passes", "epoch_seconds"):
            assert key in rec.metrics[-1]
        assert (rec.directory / "best.pt").exists() and (rec.directory / "last.pt").exists()


def test_tensorboard_holds_every_trials_scalars_and_hparams(study):
    records = StudyRecords(study, tensorboard=False).load()
    for rec in records:
        ea = EventAccumulator(str(StudyRecords(study).tensorboard_run(rec.trial_id)))  # tensorboard/<id> k=v ...
        ea.Reload()
        scalars = ea.Tags()["scalars"]
        for key in ("robust_acc", "clean_acc", "lr", "grad_passes", "best/robust_acc"):
            assert key in scalars, (rec.trial_id, scalars)
        robust = [e.value for e in ea.Scalars("robust_acc")]
        assert robust == pytest.approx([m["robust_acc"] for m in rec.metrics])
        content = ea.PluginTagToContent("hparams")
        start = [plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in content.items()
                 if k.endswith("session_start_info")]
        assert start, f"no HParams session for {rec.trial_id}"
        hp = start[0].session_start_info.hparams
        for name, value in rec.params.items():
            got = hp[name]
            assert (got.number_value == pytest.approx(value) if isinstance(value, float) else got.string_value == str(value))
        assert hp["state"].string_value == rec.state


def test_status_and_export_work_without_a_cluster(study, capsys):
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    assert "pruned" in out and "stopped by ASHA" in out and "strong%" in out
    out_dir = study.parent / "exp"
    assert main(["export", str(study), "--top-k", "2", "--out", str(out_dir)]) == 0
    index = yaml.safe_load((out_dir / "best.yaml").read_text())
    assert len(index["entries"]) == 2
    first = index["entries"][0]
    # ranked by the final strong evaluation's figure, both figures shown
    assert first["metrics"]["strong_robust_acc"] >= index["entries"][1]["metrics"]["strong_robust_acc"]
    assert "robust_acc" in first["metrics"] and "strong_robust_acc" in index["selection"]
    assert (out_dir / first["checkpoint"]).exists() and first["command"].startswith("advtune train --config ")  # relative to the export
    assert main(["export", str(study), "--pareto", "--format", "json", "--out", str(out_dir)]) == 0
    front = json.loads((out_dir / "pareto.json").read_text())["entries"]
    for a in front:  # no exported point is dominated by another trial
        for b in front:
            assert not (b["metrics"]["clean_acc"] > a["metrics"]["clean_acc"] and
                        b["metrics"]["robust_acc"] > a["metrics"]["robust_acc"])


def test_every_trial_stores_its_load_report_and_status_and_export_show_it(study, capsys):
    """Each trial prints and stores what loading its starting point did (issue 11, defect 3)."""
    from advtune.trainables.load_report import read_report

    records = StudyRecords(study, tensorboard=False).load()
    reports = [read_report(r.directory) for r in records]
    assert all(rep is not None for rep in reports)
    for rep in reports:  # the study's naturally pretrained starting point fits completely
        assert rep.source.endswith("best.pt") and rep.format == "advtune" and rep.fraction == 1.0
        assert not rep.missing and not rep.unexpected and rep.normalization == "the checkpoint's own"
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    assert f"starting point (every trial): {reports[0].short()}" in out
    out_dir = study.parent / "exp-load"
    assert main(["export", str(study), "--out", str(out_dir)]) == 0
    entry = yaml.safe_load((out_dir / "best.yaml").read_text())["entries"][0]
    assert entry["load_report"]["fraction"] == 1.0 and entry["load_report"]["loaded"] == reports[0].loaded


def test_exported_config_reruns_to_the_same_robust_accuracy(study, tmp_path):
    out_dir = tmp_path / "exp"
    assert main(["export", str(study), "--out", str(out_dir)]) == 0
    entry_file = sorted(out_dir.glob("01-*.yaml"))[0]
    entry = yaml.safe_load(entry_file.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran: one CPU per trial
    try:
        assert main(["train", "--quiet", "--config", str(entry_file), "--out", str(tmp_path / "rerun")]) == 0
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(x) for x in (tmp_path / "rerun" / "metrics.jsonl").read_text().splitlines()]
    best_epoch = entry["metrics"]["epoch"]
    rerun = next(m for m in lines if m["epoch"] == best_epoch)
    assert abs(rerun["robust_acc"] - entry["metrics"]["robust_acc"]) <= 0.005


def test_dry_run_shows_the_pruning_rule_and_its_rungs(capsys, tmp_path):
    # the sfd space searches warmup and eps_ramp: the full_strength rule, rungs in epochs at full strength
    assert main(["run", "--dry-run", "--max-epochs", "10", "--storage-path", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "rule 'full_strength'" in out and ("rungs at epochs at full strength 0.75, 1.75, keeping the top 1/2, then "
                                              "the top 1/3 of the trials recorded at each") in out
    assert "Why this rule" in out and "--reduction-factor 4: the previous single cut" in out
    assert not (tmp_path / "s").exists()  # a dry run starts nothing and writes nothing
    # the previous default, one flag away: ASHA's geometric rungs on the same clock
    assert main(["run", "--dry-run", "--max-epochs", "10", "--reduction-factor", "4", "--storage-path", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "rule 'full_strength'" in out and "rungs at epochs at full strength 1.75, 7, keeping the top 1/4 at each" in out
    # the old rule, one flag away: rungs after the space's longest warmup/ramp
    assert main(["run", "--dry-run", "--max-epochs", "10", "--pruning", "epoch", "--storage-path", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "rungs at epochs [3, 6]" in out and "ends at epoch 3.00" in out


def _spec(tmp_path, **kw):
    from types import SimpleNamespace

    from advtune.study.spec import build_spec
    from advtune.trainables.config import TrialConfig

    args = dict(space="sfd", num_samples=12, max_epochs=4, grace_period=1, reduction_factor=2, concurrency=2,
                cpus_per_trial=None, gpus_per_trial=0.0, address=None, storage_path=str(tmp_path), name="s",
                seed=0, max_failures=0, verbose=False, assume_shared_storage=False)
    return build_spec(SimpleNamespace(**{**args, **kw}), TrialConfig())[0]


def _node(cpu, gpu=0.0):
    return {"id": "n", "resources": {"CPU": cpu, "GPU": gpu} if gpu else {"CPU": cpu}}


@pytest.mark.parametrize("kw, nodes, expected", [
    ({}, [_node(2)], 1.0),                                      # the default study on this machine: 2 slots
    ({"num_samples": 1}, [_node(2)], 2.0),                      # one trial gets every core
    ({"concurrency": 1}, [_node(16)], 16.0),
    ({"concurrency": 3}, [_node(16)], 5.0),                     # whole CPUs, rounded down
    ({"concurrency": 64}, [_node(16)], 1.0),                    # never below 1
    ({"concurrency": 2}, [_node(16), _node(4)], 4.0),           # at most the smallest host: both nodes take a trial
    ({"concurrency": 4, "gpus_per_trial": 0.5},                 # CPU-only head does not count for GPU trials
     [_node(32), _node(8, 1), _node(8, 1)], 4.0),
    ({"cpus_per_trial": 0.5}, [_node(16)], 0.5),                # an explicit value is kept
])
def test_auto_cpus_per_trial_shares_the_hosts_cpus_among_running_trials(tmp_path, kw, nodes, expected):
    from advtune.study.spec import resolve_cpus

    assert resolve_cpus(_spec(tmp_path, **kw), nodes).cpus_per_trial == expected


def test_a_lone_trial_trains_with_every_cpu_and_the_dry_run_says_auto(local_ray, tmp_path, capsys):
    """--cpus-per-trial auto on the 2-CPU local Ray: one trial at once gets 2 CPUs, and torch in the
    trial really runs 2 threads (recorded per epoch); the study fixture's 2 slots run 1 thread each."""
    assert main(["run", "--dry-run", "--num-samples", "1", "--storage-path", str(tmp_path)]) == 0
    assert "auto CPUs (the cluster's CPUs / 1 trial(s) at once" in capsys.readouterr().out
    rc = main(["run", "--name", "lone", "--storage-path", str(tmp_path), "--num-samples", "1", "--max-epochs", "1",
               *TINY, "--final-attack", "none"])
    assert rc == 0
    assert "cpus per trial: 2 (auto" in capsys.readouterr().out
    (record,) = StudyRecords(tmp_path / "lone", tensorboard=False).load()
    assert {m["torch_threads"] for m in record.metrics} == {2}


def test_two_slots_on_two_cpus_train_with_one_thread_each(study):
    records = StudyRecords(study, tensorboard=False).load()
    assert {m["torch_threads"] for r in records for m in r.metrics} == {1}


def _tb_scalar(run_dir: Path, tag: str) -> float:
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return ea.Scalars(tag)[-1].value


def test_final_strong_evaluation_attacks_the_top_k_and_records_both_figures(study):
    from advtune.study.strong_flags import gap_threshold

    records = {r.trial_id: r for r in StudyRecords(study, tensorboard=False).load()}
    final = json.loads((study / "final_eval.json").read_text())
    by_selection = sorted((r for r in records.values() if r.best), key=lambda r: -r.best["robust_acc"])
    ties = {r.trial_id for r in by_selection if r.best["robust_acc"] >= by_selection[3].best["robust_acc"]}
    assert len(final["trials"]) == 4 and set(final["trials"]) <= ties  # the top 4 by the selection figure
    assert final["settings"] == {"attack": "pgd", "images": 32, "top_k": 4, "seed": 0}
    for tid, e in final["trials"].items():
        assert e["attack"] == "pgd-50-5" and e["n"] == 32 and e["val_attack"] == "pgd-5-1"
        assert 0 <= e["robust_acc"] <= e["clean_acc"] <= 1
        assert e["selection_robust_acc"] == pytest.approx(records[tid].best["robust_acc"])
        assert e["gap"] == pytest.approx(e["val_attack_acc"] - e["robust_acc"])
        assert e["flag"] == (e["gap"] > gap_threshold([g["gap"] for g in final["trials"].values()])[0] + 1e-9)
        # TensorBoard: the strong figure as the HParams metric every trial's session declared
        assert _tb_scalar(StudyRecords(study).tensorboard_run(tid), "final/strong_robust_acc") == pytest.approx(e["robust_acc"])
    ea = EventAccumulator(str(study / "tensorboard" / "_hparams"))  # the study's one HParams experiment
    ea.Reload()
    exp = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert "final/strong_robust_acc" in [m.name.tag for m in exp.experiment.metric_infos]


def test_resume_of_a_finished_study_adds_the_missing_final_evaluation(study, capsys):
    path = study / "final_eval.json"
    before = json.loads(path.read_text())
    path.unlink()
    assert main(["resume", str(study)]) == 0
    out = capsys.readouterr().out
    after = json.loads(path.read_text())
    drop = lambda f: {t: {k: v for k, v in e.items() if k != "seconds"} for t, e in f["trials"].items()}  # noqa: E731
    assert drop(after) == drop(before)  # the same trials, the same figures: the evaluation is deterministic
    table = out[out.index("strong evaluation ("):]
    assert "selection%" in table and "strong%" in table and "gap" in table
    best = min(before["trials"], key=lambda t: (-before["trials"][t]["robust_acc"],
                                                -before["trials"][t]["selection_robust_acc"], t))
    assert f"best trial {best}" in out and "(strong attack" in out
    assert main(["resume", str(study)]) == 0  # complete now: nothing is attacked again
    assert "final strong evaluation of the top" not in capsys.readouterr().out
