"""The driver's side of a study in cloud storage: records staged locally and pushed to the bucket, the
Optuna study kept where a driver on another machine can restore it, and records completed on resume.

- The Optuna study lives in Optuna's in-memory storage inside the searcher, which Ray Tune pickles into its
  experiment state in the bucket; an sqlite file would be named by an absolute path that does not exist on
  the machine that resumes. ``optuna.db`` is *exported* from it into the staging folder at every trial's end
  and at the study's end (``advtune report`` and optuna-dashboard read that file). ``--optuna-storage URL``
  keeps the study in that database instead (any URL Optuna accepts), so optuna-dashboard can watch it live.
- The records (``study.records``) are pushed at every trial's end, every ``SYNC_PERIOD_S`` seconds of
  results, and at the study's end. A driver killed between two pushes loses at most those seconds of
  metrics lines — never an epoch: every checkpoint in the bucket carries its trial's history
  (``trainables.cloud_adapter``), and :func:`complete_records` puts back the lines a push did not carry (for a
  trial whose records never reached the bucket, the callback does when Tune restarts it: :func:`complete_trial`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .records import FINAL_STATES, StudyRecords
from .storage import Remote
from .tune_backend import StudyCallback

__all__ = ["CloudStudyCallback", "DriverHeartbeat", "optuna_storage", "export_optuna", "drop_never_started",
           "complete_records", "complete_trial", "best_checkpoint_uri"]


def optuna_storage(spec):
    """The Optuna storage of a cloud study: the user's database URL, else in memory (pickled by Ray)."""
    import optuna

    if getattr(spec, "optuna_storage", None):
        return optuna.storages.RDBStorage(spec.optuna_storage)
    return None  # OptunaSearch keeps the study in memory


def export_optuna(searcher, path: Path) -> None:
    """Write the searcher's Optuna study to ``path`` (sqlite), replacing it atomically."""
    import optuna

    study = getattr(searcher, "_ot_study", None)
    if study is None:
        return
    tmp = path.with_name(".optuna.db.tmp")
    tmp.unlink(missing_ok=True)
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage,
                      to_storage=f"sqlite:///{tmp}", to_study_name=study.study_name)
    os.replace(tmp, path)


class DriverHeartbeat:
    """The driver's record of a cloud study (``study.liveness``), with a heartbeat: written into the staging folder
    (readers on this machine check the process) and to ``<URI>/<name>/driver.json`` (readers elsewhere, and
    ``advtune resume`` there, take the study as running until ``STALE_BEATS`` beats are missing), rewritten every
    ``heartbeat_period()`` seconds by a daemon thread, removed by :meth:`stop` if still this driver's."""

    def __init__(self, remote: Remote, study_dir: Path) -> None:
        import threading

        from .liveness import heartbeat_period

        self.remote, self.study_dir, self.period = remote, Path(study_dir), heartbeat_period()
        self._stop, self._started = threading.Event(), None
        self._thread = threading.Thread(target=self._run, name="advtune-driver-heartbeat", daemon=True)

    def _beat(self) -> None:
        from .liveness import FILE, driver_started

        record = driver_started(self.study_dir, self.period, self._started)
        self._started = record["started"]
        self.remote.write_bytes(FILE, json.dumps(record).encode())

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._beat()
            except OSError:  # the bucket unreachable for a moment: the next beat tries again
                pass

    def start(self) -> "DriverHeartbeat":
        self._beat()  # before anything else runs: a reader right after the start sees the driver
        self._thread.start()
        return self

    def stop(self) -> None:
        from .liveness import FILE, driver_ended

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            theirs = json.loads(self.remote.read_bytes(FILE))
            if (theirs.get("started"), theirs.get("pid"), theirs.get("host")) == (self._started, os.getpid(),
                                                                                 socket.gethostname()):
                self.remote.fs.delete_file(self.remote.remote_path(FILE))
        except (OSError, ValueError):
            pass
        driver_ended(self.study_dir)


class CloudStudyCallback(StudyCallback):
    """StudyCallback that also pushes the staging folder to the study's URI."""

    def __init__(self, study_dir: str, total: int, uri: str, searcher) -> None:
        super().__init__(study_dir, total)
        self.remote = Remote(uri, Path(study_dir))
        self.searcher = searcher

    def __getstate__(self) -> dict:  # Ray pickles callbacks: no filesystem handle, no searcher copy
        return {**super().__getstate__(), "remote": None, "searcher": None}

    def _push(self, optuna_too: bool, force: bool = True) -> None:
        if self.remote is None:
            return
        if optuna_too and self.searcher is not None:
            export_optuna(self.searcher, Path(self.records.study_dir) / "optuna.db")
        self.remote.push(force=force)

    def on_trial_start(self, iteration, trials, trial, **info):
        super().on_trial_start(iteration, trials, trial, **info)
        if self.remote is not None:
            # A trial (re)starts after its newest complete checkpoint, so that checkpoint's epochs go into its
            # records first: resume's complete_records had no folder to complete for a trial whose records never
            # reached the bucket (a driver killed within SYNC_PERIOD_S of its start), and a killed driver's trial
            # can finish an upload after complete_records looked. Adds nothing to a new trial or a complete record.
            try:
                complete_trial(self.remote, self.records, trial.trial_id)
            except OSError as exc:  # the bucket unreachable for a moment: the study goes on, the record may lag
                print(f"warning: could not read trial {trial.trial_id}'s checkpoint history from {self.remote.uri} "
                      f"({exc}); its records may miss epochs trained before a resume", file=sys.stderr, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        self._push(False, force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        super().on_trial_complete(iteration, trials, trial, **info)
        self._push(True)

    def on_trial_error(self, iteration, trials, trial, **info):
        super().on_trial_error(iteration, trials, trial, **info)
        self._push(True)

    def on_experiment_end(self, trials, **info):
        super().on_experiment_end(trials, **info)
        self._push(True)


def _trial_checkpoint(remote: Remote, trial_id: str):
    """The newest complete checkpoint ``(epoch, index, path)`` of ``trial_id`` in the bucket, or None."""
    import pyarrow.fs as pafs

    from advtune.trainables.cloud_adapter import newest_checkpoint

    mine = [i.path for i in remote.fs.get_file_info(pafs.FileSelector(remote.path, allow_not_found=True))
            if i.type == pafs.FileType.Directory and f"_{trial_id}_" in i.path.rsplit("/", 1)[-1]]
    return max((c for c in (newest_checkpoint(remote.fs, d) for d in mine) if c), default=None)


def fill_placeholders(remote: Remote) -> int:
    """Stand-ins for the checkpoints Ray's snapshot may name but already deleted (see
    ``trainables.cloud_adapter.fill_placeholders``), in every Ray trial folder of the study."""
    from advtune.trainables.cloud_adapter import fill_placeholders as fill

    return sum(fill(remote.fs, path) for path in _ray_trial_folders(remote))


def _ray_trial_folders(remote: Remote) -> list[str]:
    import pyarrow.fs as pafs

    return [i.path for i in remote.fs.get_file_info(pafs.FileSelector(remote.path, allow_not_found=True))
            if i.type == pafs.FileType.Directory and i.path.rstrip("/").rsplit("/", 1)[-1]
            not in ("trials", "tensorboard", "export", "report", "pretrained")]


def keep_newest_checkpoints(remote: Remote) -> None:
    """When the search has ended: every trial's newest complete checkpoint is the only one left with files
    (``trainables.cloud_adapter.keep_only_newest``). A checkpoint the driver never registered (uploaded
    just before a driver was killed, or before a lost node) would otherwise outlive the trial."""
    from advtune.trainables.cloud_adapter import keep_only_newest

    for path in _ray_trial_folders(remote):
        keep_only_newest(remote.fs, path)


def best_checkpoint_uri(location: str, trial_id: str) -> str:
    """URI of the best.pt the trial's newest checkpoint holds (its best robust-accuracy epoch so far);
    ``location``: the study's ``<URI>/<name>``."""
    remote = Remote(location, Path("."))
    found = _trial_checkpoint(remote, trial_id)
    if found is None:
        return f"{location}/(no checkpoint of trial {trial_id} in the bucket)"
    return f"{location.split('://')[0]}://{found[2]}/best.pt"


def drop_never_started(remote: Remote, records: StudyRecords) -> None:
    """:meth:`StudyRecords.drop_never_started` for a study in the bucket: the records there lag the trials'
    checkpoints (pushed every ``SYNC_PERIOD_S``), so a trial whose records hold nothing but its start files
    stays when it has a complete checkpoint (:func:`complete_records` then puts back its epochs); the others
    go from the staging folder and from the bucket."""
    for rel in records.drop_never_started(stored=lambda trial_id: _trial_checkpoint(remote, trial_id) is not None):
        try:
            remote.fs.delete_dir(remote.remote_path(rel))
        except FileNotFoundError:
            pass


def complete_records(remote: Remote, records: StudyRecords) -> int:
    """Add to each unfinished trial's ``metrics.jsonl`` (and TensorBoard) the epochs its newest complete
    checkpoint in the bucket holds but the records do not (the driver was killed before pushing them).
    Returns the number of lines added."""
    added = sum(complete_trial(remote, records, rec.trial_id) for rec in records.load()
                if rec.state not in FINAL_STATES)
    records.close()
    return added


def complete_trial(remote: Remote, records: StudyRecords, trial_id: str) -> int:
    """Add to ``trial_id``'s records the epochs its newest complete checkpoint in the bucket holds but they do
    not; the number of lines added (0: no checkpoint)."""
    from advtune.trainables.cloud_adapter import HISTORY

    newest = _trial_checkpoint(remote, trial_id)
    if newest is None:
        return 0
    with remote.fs.open_input_stream(f"{newest[2]}/{HISTORY}") as f:
        history: list[dict[str, Any]] = [json.loads(ln) for ln in f.read().decode().splitlines() if ln.strip()]
    return records.complete(trial_id, history)
