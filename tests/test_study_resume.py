"""The driver is killed with SIGKILL mid-study; `advtune resume` completes the study without
losing a trial or redoing an epoch. Runs the CLI in subprocesses, as a user would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from study.records import StudyRecords

N_TRIALS, EPOCHS = 4, 4
ADVTUNE = [sys.executable, "-m", "study.cli"]


def _env(cache: Path) -> dict:
    return {**os.environ, "ADVTUNE_CACHE": str(cache), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _kill_tree(proc: psutil.Process, descendants: list[psutil.Process]) -> None:
    for p in [proc, *descendants]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs([proc, *descendants], timeout=30)


def test_sigkilled_driver_resumes_without_losing_trials_or_redoing_epochs(tmp_path):
    storage, name = tmp_path / "studies", "killed"
    study = storage / name
    cmd = [*ADVTUNE, "run", "--name", name, "--storage-path", str(storage), "--num-samples", str(N_TRIALS),
           "--max-epochs", str(EPOCHS), "--concurrency", "2", "--grace-period", str(EPOCHS),  # no pruning here
           "--set", "train_steps=2", "--set", "val_steps=5", "--set", "pretrain_epochs=3"]
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cmd, env=_env(tmp_path / "cache"), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    driver = psutil.Process(proc.pid)
    deadline = time.time() + 240
    descendants: list[psutil.Process] = []
    try:
        while time.time() < deadline:  # wait until trials are mid-way: some epochs done, not all
            descendants = driver.children(recursive=True) or descendants
            recs = StudyRecords(study, tensorboard=False).load() if study.exists() else []
            if sum(len(r.metrics) >= 1 for r in recs) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("study made no progress: " + (tmp_path / "run.log").read_text())
        descendants = driver.children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _kill_tree(driver, descendants)  # the Ray processes that driver started: ours to end, nobody else's
        log.close()
    before = StudyRecords(study, tensorboard=False).load()
    assert 0 < sum(len(r.metrics) for r in before) < N_TRIALS * EPOCHS, "the kill came too late to test anything"

    res = subprocess.run([*ADVTUNE, "resume", str(study)], env=_env(tmp_path / "cache"), capture_output=True,
                         text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best trial" in res.stdout

    records = StudyRecords(study, tensorboard=False).load()
    assert len(records) == N_TRIALS
    for rec in records:
        assert rec.state == "completed", (rec.trial_id, rec.state, rec.error)
        assert [m["epoch"] for m in rec.metrics] == list(range(1, EPOCHS + 1))
        trained = [int(x) for x in (rec.directory / "epochs_trained.log").read_text().split()]
        assert sorted(trained) == list(range(1, EPOCHS + 1)), f"{rec.trial_id} trained epochs {trained}"
    # the trials resumed mid-way kept the epochs they had already finished
    for old in before:
        if old.metrics:
            new = next(r for r in records if r.trial_id == old.trial_id)
            assert new.metrics[: len(old.metrics)] == old.metrics


def test_resume_refuses_a_directory_advtune_did_not_write(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(b"not ours")
    res = subprocess.run([*ADVTUNE, "resume", str(tmp_path)], env=_env(tmp_path / "cache"), capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert "not an advtune study directory" in res.stderr and "Traceback" not in res.stderr
