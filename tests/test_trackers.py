"""`advtune run --tracker mlflow[:URI] / wandb`: Ray Tune's logger callbacks feed a real MLflow store (read back
with MLflow's own client) and W&B in offline mode; the final strong figures reach each trial's MLflow run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advtune.study.errors import StudyError
from advtune.study.trackers import mlflow_uri, parse_trackers

TINY_STUDY = ["--num-samples", "2", "--max-epochs", "2", "--concurrency", "2", "--cpus-per-trial", "1",
              "--set", "pretrained=none", "--set", "train_steps=2", "--set", "val_steps=3", "--set", "train_size=256",
              "--set", "val_size=64",
              "--final-attack", "pgd", "--final-images", "32"]


def test_unknown_tracker_and_missing_extra_are_refused_naming_the_fix(monkeypatch, capsys):
    with pytest.raises(StudyError, match="unknown tracker 'neptune'"):
        parse_trackers(["neptune"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed: import fails
    with pytest.raises(StudyError, match=r"pip install 'advtune\[wandb\]'"):
        parse_trackers(["wandb"])
    from advtune.study.cli import main

    assert main(["run", "--dry-run", "--tracker", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advtune run: error: --tracker wandb needs the wandb package")


def test_mlflow_uri_forms(tmp_path):
    assert mlflow_uri("mlflow") is None  # MLflow's own default
    assert mlflow_uri("mlflow:http://host:5000") == "http://host:5000"
    assert mlflow_uri(f"mlflow:{tmp_path}/runs.db") == f"sqlite:///{tmp_path}/runs.db"
    assert mlflow_uri(f"mlflow:{tmp_path}/mlruns") == (tmp_path / "mlruns").as_uri()


def test_a_tracked_study_is_read_back_from_mlflow_and_wandb_offline(tmp_path):
    pytest.importorskip("mlflow")
    wandb = pytest.importorskip("wandb")
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"),
           "WANDB_SILENT": "true"}
    (tmp_path / "wb").mkdir()
    res = subprocess.run([sys.executable, "-m", "advtune.study.cli", "run", "--name", "tracked", "--storage-path",
                          str(tmp_path / "runs"), *TINY_STUDY, "--tracker", f"mlflow:{db}", "--tracker", "wandb:advtest"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "runs" / "tracked"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = {r.data.tags["advtune_trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    trial_ids = sorted(p.name for p in (study / "trials").iterdir())
    assert sorted(runs) == trial_ids and len(trial_ids) == 2
    final = json.loads((study / "final_eval.json").read_text())["trials"]
    assert final, "the study ran no final evaluation"
    for trial_id, run in runs.items():
        params = json.loads((study / "trials" / trial_id / "params.json").read_text())
        for name, value in params.items():  # the searched values, as MLflow params (strings)
            assert run.data.params[name] == str(value)
        lines = [json.loads(x) for x in (study / "trials" / trial_id / "metrics.jsonl").read_text().splitlines()]
        history = client.get_metric_history(run.info.run_id, "robust_acc")
        assert [m.value for m in history] == pytest.approx([m["robust_acc"] for m in lines])
        assert run.data.metrics["grad_passes"] == lines[-1]["grad_passes"]
        if trial_id in final:  # the strong figures, logged after the final evaluation
            assert run.data.metrics["strong_robust_acc"] == pytest.approx(final[trial_id]["robust_acc"])
            assert run.data.metrics["strong_gap"] == pytest.approx(final[trial_id]["gap"])
            assert run.data.tags["strong_attack"] == final[trial_id]["attack"]
    # W&B, offline: one run per trial, its id the trial id, with the trial's metrics in its history file, and one
    # run of the final evaluation whose table holds each evaluated trial's strong figures
    offline = {p.name.split("-", 3)[-1]: p for p in (tmp_path / "wb").rglob("offline-run-*")}
    assert set(offline) == {*trial_ids, "tracked-final-evaluation"}, offline
    for run_dir in offline.values():
        assert list(run_dir.glob("*.wandb")), f"{run_dir} holds no W&B history"
    tables = list(offline["tracked-final-evaluation"].rglob("final_evaluation_*.table.json"))
    assert len(tables) == 1, tables
    table = json.loads(tables[0].read_text())
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert set(rows) == set(final)
    for trial_id, strong in final.items():
        assert rows[trial_id]["strong_robust_acc"] == pytest.approx(strong["robust_acc"])
        assert rows[trial_id]["strong_gap"] == pytest.approx(strong["gap"])
        assert rows[trial_id]["attack"] == strong["attack"]
