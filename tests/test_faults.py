"""Faults a study survives: an exception in a trial (retried from its checkpoint, or failed after
the configured retries), divergence, catastrophic overfitting, a lost worker node; checkpoints stay
bounded; no Ray process outlives `advtune run`. Studies run through the CLI, as a user runs them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest

from advtune.study.records import StudyRecords

ADVTUNE = [sys.executable, "-m", "advtune.study.cli"]
# little data (256 training images, 10 natural epochs pretrain them to ~95% clean; 64 validation images), in
# batches of 32: 8 steps an epoch, as the whole split made in batches of 128, so that peak_lr=5000 diverges
# within its first epoch (with 2 steps it only collapsed, and was stopped after the second)
TINY = ["--set", "train_steps=2", "--set", "val_steps=3", "--set", "pretrain_epochs=10", "--set", "eps_ramp=0",
        "--set", "train_size=256", "--set", "val_size=64", "--set", "batch_size=32",
        "--final-attack", "none"]  # the final strong evaluation is tested in test_study.py

FAULT_SPACE = """
name: faults
params:
  peak_lr: {loguniform: [0.001, 10000]}
  attack: {categorical: [pgd, fgsm_rs]}
  co_gap: {uniform: [0.0, 1.0]}
starting_points:
  - {peak_lr: 0.011, attack: pgd, co_gap: 0.3}      # raises once after epoch 2: retried, completes
  - {peak_lr: 0.012, attack: pgd, co_gap: 0.3}      # raises on every attempt: fails after the retries
  - {peak_lr: 5000, attack: pgd, co_gap: 0.3}       # diverges
  - {peak_lr: 0.013, attack: fgsm_rs, co_gap: 0.0}  # overfitting guard at its most sensitive: trips
  - {peak_lr: 0.014, attack: pgd, co_gap: 0.3}      # a healthy trial
"""


def _env(tmp: Path, **extra: str) -> dict:
    """The session's isolated cache (conftest): this module's studies share one pretraining config, pretrained once."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


class Watched:
    """A CLI run whose descendant processes (Ray's) are tracked, to prove they all end with it."""

    def __init__(self, cmd: list[str], env: dict, log: Path) -> None:
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop:
            try:
                for c in self.ps.children(recursive=True):
                    self.seen.setdefault(c.pid, c)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._stop = True
            self._thread.join()
            self.log.close()
        return rc

    def leftovers(self, grace: float = 15.0) -> list[str]:
        deadline = time.time() + grace
        alive = []
        while time.time() < deadline:
            alive = [p for p in self.seen.values() if _alive(p)]
            if not alive:
                return []
            time.sleep(0.5)
        names = [f"{p.pid}:{p.name()}" for p in alive]
        for p in alive:  # leave the machine clean even when the assertion fails
            p.kill()
        return names


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def fault_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "space.yaml").write_text(FAULT_SPACE)
    faults = "2:1:peak_lr=0.011;2:99:peak_lr=0.012"
    run = Watched([*ADVTUNE, "run", "--space", str(tmp / "space.yaml"), "--name", "f", "--storage-path",
                   str(tmp / "s"), "--num-samples", "5", "--max-epochs", "3", "--grace-period", "3",
                   "--concurrency", "2", "--max-failures", "2", *TINY],
                  _env(tmp, ADVTUNE_INJECT_FAULT=faults), tmp / "run.log")
    rc = run.wait(600)
    assert rc == 0, (tmp / "run.log").read_text()[-4000:]
    records = {r.params["peak_lr"]: r for r in StudyRecords(tmp / "s" / "f", tensorboard=False).load()}
    return tmp, tmp / "s" / "f", records, run


def _status(study: Path, tmp: Path) -> str:
    res = subprocess.run([*ADVTUNE, "status", str(study)], env=_env(tmp), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_trial_that_raises_once_is_retried_from_its_checkpoint(fault_study):
    _, _, records, _ = fault_study
    rec = records[0.011]
    assert rec.state == "completed"
    assert [m["epoch"] for m in rec.metrics] == [1, 2, 3]
    assert (rec.directory / ".injected_faults").read_text() == "1"
    trained = (rec.directory / "epochs_trained.log").read_text().split()
    assert trained == ["1", "2", "3"], "the retry must resume after epoch 2, not redo it"


def test_trial_that_keeps_raising_fails_after_the_retries_with_its_message(fault_study):
    tmp, study, records, _ = fault_study
    rec = records[0.012]
    assert rec.state == "error"
    assert int((rec.directory / ".injected_faults").read_text()) == 3  # first attempt + max_failures=2 retries
    assert "injected fault after epoch 2" in rec.error
    out = _status(study, tmp)
    line = next(ln for ln in out.splitlines() if rec.trial_id in ln)
    assert "error" in line and "injected fault after epoch 2" in line
    # the rest of the study is unaffected
    assert records[0.014].state == "completed" and len(records[0.014].metrics) == 3


def test_divergence_stops_at_once_is_not_retried_and_scores_zero(fault_study):
    tmp, study, records, _ = fault_study
    rec = records[5000]
    assert rec.state == "diverged"
    assert len(rec.metrics) == 1 and rec.metrics[0]["robust_acc"] == 0.0
    assert "loss became" in rec.metrics[0]["stop_reason"]
    assert not (rec.directory / "epochs_trained.log").exists()  # never checkpointed, never re-run
    ot = optuna.load_study(study_name="f", storage=f"sqlite:///{study / 'optuna.db'}")
    t = next(t for t in ot.trials if t.params["peak_lr"] == 5000)
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.0  # a bad result, not a crash


def test_catastrophic_overfitting_guard_stops_keeps_best_and_says_so(fault_study):
    tmp, study, records, _ = fault_study
    rec = records[0.013]
    assert rec.state == "catastrophic_overfitting"
    assert "catastrophic overfitting" in rec.stop_reason and "FGSM accuracy" in rec.stop_reason
    assert (rec.directory / "best.pt").exists()
    assert "catastrophic overfitting" in _status(study, tmp)
    res = subprocess.run([*ADVTUNE, "export", str(study), "--top-k", "5", "--out", str(tmp / "exp")], env=_env(tmp),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    exported = "".join(p.read_text() for p in (tmp / "exp").glob("0*.yaml"))
    assert "state: catastrophic_overfitting" in exported and "catastrophic overfitting at epoch" in exported


def test_only_best_and_last_checkpoints_are_kept(fault_study):
    _, study, records, _ = fault_study
    pts = sorted(p.relative_to(study) for p in study.rglob("*.pt"))
    allowed = {Path("pretrained/best.pt")} | {Path("trials") / r.trial_id / n for r in records.values()
                                              for n in ("best.pt", "last.pt")}
    assert set(pts) <= allowed, set(pts) - allowed
    assert not list(study.rglob("checkpoint_0*")), "Ray must not keep checkpoint copies of its own"


def test_no_ray_process_outlives_a_finished_run(fault_study):
    *_, run = fault_study
    assert len(run.seen) > 3  # it did start Ray's processes
    assert run.leftovers() == []


def test_no_ray_process_outlives_an_error_or_ctrl_c(tmp_path):
    # error after Ray started: resources no node has
    err = Watched([*ADVTUNE, "run", "--name", "e", "--storage-path", str(tmp_path / "s"), "--gpus-per-trial", "4",
                   "--num-samples", "1", "--max-epochs", "1", *TINY], _env(tmp_path), tmp_path / "err.log")
    assert err.wait(300) == 2
    assert "no node of the cluster has a GPU" in (tmp_path / "err.log").read_text()
    assert err.leftovers() == []
    # Ctrl-C while trials run
    run = Watched([*ADVTUNE, "run", "--name", "c", "--storage-path", str(tmp_path / "s"), "--num-samples", "4",
                   "--max-epochs", "6", *TINY], _env(tmp_path), tmp_path / "ctrlc.log")
    study = tmp_path / "s" / "c"
    deadline = time.time() + 240
    while time.time() < deadline and not list(study.glob("trials/*/metrics.jsonl")):
        time.sleep(0.5)
    assert run.proc.poll() is None, (tmp_path / "ctrlc.log").read_text()
    run.proc.send_signal(signal.SIGINT)
    rc = run.wait(300)
    assert rc in (0, 130), (tmp_path / "ctrlc.log").read_text()[-3000:]
    assert run.leftovers() == []


def test_study_directory_size_is_bounded_as_epochs_grow(local_ray, tmp_path, capsys):
    """Both studies run through `advtune run`'s function in this process, on the module's one local Ray: what is
    measured is the study folder, which does not depend on who started Ray (two CLI runs took 118 s, mostly
    starting interpreters and Ray)."""
    from advtune.study.cli import main

    sizes = {}
    for epochs in (2, 6):
        rc = main(["run", "--name", f"e{epochs}", "--storage-path", str(tmp_path / "s"), "--num-samples", "1",
                   "--max-epochs", str(epochs), *TINY])
        out = capsys.readouterr()
        assert rc == 0, out.out[-2000:] + out.err[-2000:]
        files = [p for p in (tmp_path / "s" / f"e{epochs}").rglob("*") if p.is_file()]
        sizes[epochs] = (sum(p.stat().st_size for p in files if p.suffix == ".pt"), sum(p.stat().st_size for p in files))
    ckpt2, total2 = sizes[2]
    ckpt6, total6 = sizes[6]
    assert abs(ckpt6 - ckpt2) < 0.01 * ckpt2, "checkpoint bytes must not grow with epochs"
    # only logs grow (a few KB an epoch), not checkpoints
    assert total6 - total2 < 0.1 * total2, sizes


def _upload_cut_off():
    """The local disk as a pyarrow filesystem, except that writing into a trial's second checkpoint folder fails:
    an upload cut off (a lost node, a killed driver) after the epoch was trained."""
    import fsspec
    import pyarrow.fs as pafs

    class Handler(pafs.FSSpecHandler):
        def open_output_stream(self, path, metadata):
            if "/checkpoint_000001/" in path:
                raise OSError(f"upload cut off: {path}")
            return super().open_output_stream(path, metadata)

    return pafs.PyFileSystem(Handler(fsspec.filesystem("file", auto_mkdir=True)))  # as S3: no folders to make


def _two_cloud_epochs(config):
    """A trial of a cloud study reduced to its reports: two epochs' checkpoint folders through CloudReporter."""
    import tempfile

    from ray import tune

    from advtune.trainables.cloud_adapter import CloudReporter

    ctx = tune.get_context()
    reporter = CloudReporter(ctx.get_storage(), ctx.get_trial_id(), [])
    for epoch in (1, 2):
        d = Path(tempfile.mkdtemp())
        for name in ("best.pt", "last.pt"):
            (d / name).write_bytes(os.urandom(4096))
        reporter.report({"epoch": epoch}, str(d))


def test_a_cloud_epoch_whose_upload_was_cut_off_is_not_marked_trained(local_ray, tmp_path):
    """The mark `epochs_trained/<epoch>-<attempt>` (how the cloud tests prove no stored epoch is redone) must mean
    the epoch's checkpoint is complete in the bucket: an epoch cut off in its upload is trained again on resume,
    and marking it before the upload made that redo look like a resume bug (a flaky CI failure: [1, 2, 3, 3])."""
    import sys

    import ray.cloudpickle
    from ray import tune

    from advtune.trainables.cloud_adapter import complete_checkpoints

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    fs = _upload_cut_off()
    grid = tune.Tuner(_two_cloud_epochs, run_config=tune.RunConfig(
        name="cut", storage_path=str(tmp_path), storage_filesystem=fs,
        failure_config=tune.FailureConfig(max_failures=0))).fit()
    assert grid.errors and "upload cut off" in str(grid.errors[0])
    trials = list((tmp_path / "cut" / "trials").iterdir())
    assert len(trials) == 1
    marked = sorted(p.name.split("-")[0] for p in (trials[0] / "epochs_trained").iterdir())
    stored = [epoch for epoch, _, _ in complete_checkpoints(fs, str(Path(grid[0].path)))]
    assert stored == [1.0]
    assert marked == ["1"], f"epochs marked trained {marked}, stored {stored}"
