"""A worker node dies mid-study (removed without grace): its trials resume from their latest
checkpoint on the other node and finish; every trial is accounted for, its epochs continuous."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from advtune.study.records import StudyRecords

from conftest import lossy_cluster

ADVTUNE = [sys.executable, "-m", "advtune.study.cli"]
N_TRIALS, EPOCHS = 4, 5


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with lossy_cluster() as (c, workers):
        yield c, workers


def test_trials_of_a_dead_node_resume_elsewhere_and_finish(cluster, tmp_path):
    c, (keep, doomed) = cluster
    study = tmp_path / "s" / "nodes"
    env = {**os.environ, "ADVTUNE_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([*ADVTUNE, "run", "--address", c.address, "--assume-shared-storage", "--name", "nodes",
                             "--storage-path", str(tmp_path / "s"), "--num-samples", str(N_TRIALS), "--max-epochs",
                             str(EPOCHS), "--pruning", "epoch", "--grace-period", str(EPOCHS),  # nothing is pruned here
                             "--concurrency", "2", "--max-failures", "3",
                             "--set", "train_steps=3", "--set", "val_steps=3", "--set", "pretrain_epochs=10",
                             "--set", "train_size=256", "--set", "val_size=64",  # little data: cheap epochs
                             "--final-attack", "none"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        victim = None
        while time.time() < deadline and victim is None:  # a trial on the doomed node, part-way through
            for rec in StudyRecords(study, tensorboard=False).load() if study.exists() else []:
                if rec.metrics and rec.metrics[-1].get("node_id") == doomed.node_id and len(rec.metrics) < EPOCHS - 1:
                    victim = rec
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.3)
        assert victim is not None, "no trial ran on the second node"
        c.remove_node(doomed, allow_graceful=False)
        rc = proc.wait(timeout=480)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert rc == 0, (tmp_path / "run.log").read_text()[-4000:]

    records = StudyRecords(study, tensorboard=False).load()
    assert len(records) == N_TRIALS
    for rec in records:
        assert rec.state == "completed", (rec.trial_id, rec.state, rec.error)
        assert [m["epoch"] for m in rec.metrics] == list(range(1, EPOCHS + 1))
        trained = (rec.directory / "epochs_trained.log").read_text().split()
        assert trained == [str(e) for e in range(1, EPOCHS + 1)], (rec.trial_id, trained)
    moved = next(r for r in records if r.trial_id == victim.trial_id)
    nodes = [m["node_id"] for m in moved.metrics]
    assert nodes[0] == doomed.node_id and nodes[-1] == keep.node_id, "the trial must finish on the surviving node"
    assert moved.metrics[: len(victim.metrics)] == victim.metrics  # its finished epochs were kept, not redone
