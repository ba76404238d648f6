"""The thin Ray adapter: runs ``finetune.run`` as a Ray Tune function trainable.

The trial writes its checkpoint files (``best.pt``, ``last.pt``) itself, atomically, into
``<study>/trials/<trial_id>/`` *before* it reports the epoch to Tune, and resumes from there.
Whatever interrupts it — a retry after an exception, a node lost, a driver killed and the study
resumed — it therefore restarts from its newest finished epoch: no finished epoch is ever redone,
and only two checkpoint files per trial ever exist. (Ray's own experiment snapshot is written
periodically and can lag a trial by an epoch; that is why advtune does not rely on it for trial
state.) The study directory must be a filesystem path every node sees (NFS, a mounted bucket); a study in
cloud storage (a URI) hands its checkpoints to Ray instead: ``trainables/cloud_adapter.py``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .config import TrialConfig

__all__ = ["trial_fn", "TuneReporter", "FAULT_ENV", "release_freed_memory", "wait_until_saved"]

# Fault injection for the reliability tests: "EPOCH[:ATTEMPTS[:KEY=VALUE]]" (several joined by ";")
# raises after that epoch is reported — and again when a retry resumes past it — on at most ATTEMPTS
# attempts, only in trials whose config has KEY=VALUE. Off unless the variable is set.
FAULT_ENV = "ADVTUNE_INJECT_FAULT"


# How long a trial's first checkpoint waits for Ray Tune's saved state to name the trial (wait_until_saved)
SAVED_STATE_WAIT_S = 300.0


def wait_until_saved(trial_id: str, timeout: float = SAVED_STATE_WAIT_S, poll: float = 0.2) -> bool:
    """Block until the experiment state that a resume would restore (the newest ``experiment_state-*.json`` Ray
    Tune saved in the study's storage) names ``trial_id``; True once it does, False after ``timeout`` seconds.

    Ray Tune saves that state periodically (every 10 s or more) and after trial checkpoints, not when it
    starts a trial. A trial whose first epoch is shorter than that stored its first checkpoint while the saved
    state did not know it: a driver killed then was resumed without the trial, whose finished epochs were lost
    and whose place the search gave to a new trial (the orphan's checkpoints left beside it). A trial therefore
    stores no checkpoint before the saved state names it; a killed driver can then lose only the epoch in
    flight. An epoch longer than Ray's saving period never waits: the state was saved while it trained."""
    import time

    from ray import tune
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    storage = tune.get_context().get_storage()
    fs, path = storage.storage_filesystem, storage.experiment_fs_path
    deadline, needle = time.monotonic() + timeout, trial_id.encode()
    while True:
        newest = _find_newest_experiment_checkpoint(path, fs=fs)
        if newest is not None:
            try:
                with fs.open_input_stream(newest) as f:
                    if needle in f.read():
                        return True
            except OSError:  # replaced while read: read the new one next time
                pass
        if time.monotonic() > deadline:
            print(f"advtune: Ray Tune's saved state still does not name trial {trial_id} after {timeout:g} s; "
                  "training on (a driver killed now would be resumed without this trial)", flush=True)
            return False
        time.sleep(poll)


class TuneReporter:
    def __init__(self, trial_dir: Path) -> None:
        self.trial_dir = trial_dir
        self.saved = False  # whether Ray Tune's saved state is known to name this trial (wait_until_saved)

    def on_load_report(self, report) -> None:
        """Printed to the trial's stdout and stored as ``<study>/trials/<id>/load_report.json``."""
        from .load_report import write_report

        write_report(report, self.trial_dir)
        print(f"starting point: {report.summary()}", flush=True)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray
        import torch
        from ray import tune

        from .checkpoints import copy_atomic

        metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id(), "torch_threads": torch.get_num_threads()}
        if checkpoint_dir is not None:
            if not self.saved:
                self.saved = wait_until_saved(self.trial_dir.name)
            # before the checkpoint: every epoch a resume starts after is in it (a killed driver may not have
            # recorded the epoch; `advtune resume` puts it back from here). A kill between the two leaves
            # the history one epoch ahead; the epoch is then trained again and its new line replaces that one.
            with open(self.trial_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            for name in ("best.pt", "last.pt"):  # best first: a kill in between leaves a consistent pair
                src = os.path.join(checkpoint_dir, name)
                if os.path.exists(src):
                    copy_atomic(src, self.trial_dir / name)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            # after the checkpoint (an epoch cut off before it was stored is trained again, and logged once):
            # append-only, it proves that no stored epoch is redone
            with open(self.trial_dir / "epochs_trained.log", "a") as log:
                log.write(f"{metrics['epoch']}\n")
        tune.report(metrics)


def _maybe_inject_fault(trial_dir: Path, epoch_done: int, cfg: TrialConfig) -> None:
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        epoch, _, rest = spec.partition(":")
        attempts, _, match = rest.partition(":")
        if match:
            key, _, value = match.partition("=")
            if str(getattr(cfg, key)) != value:
                continue
        marker = trial_dir / ".injected_faults"
        count = int(marker.read_text()) if marker.exists() else 0
        if epoch_done == int(epoch) and count < int(attempts or 1_000_000):
            marker.write_text(str(count + 1))
            raise RuntimeError(f"injected fault after epoch {epoch} (attempt {count + 1})")


class _FaultingReporter(TuneReporter):
    def __init__(self, trial_dir: Path, cfg: TrialConfig) -> None:
        super().__init__(trial_dir)
        self.cfg = cfg

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            _maybe_inject_fault(self.trial_dir, int(metrics["epoch"]), self.cfg)


def release_freed_memory() -> None:
    """Hand the memory of the worker's previous trial back to the operating system.

    A study reuses trial actors (``reuse_actors=True``), and Ray runs each trial in a new thread.
    glibc keeps what a finished trial freed in that thread's malloc arena, fragmented, so a reused
    worker's memory grew with every trial (Fashion-MNIST benchmark: ~5.5 GB per worker after 8
    trials). ``malloc_trim`` returns the free pages; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()  # a stopped trial's frames (model, data, optimizer) may sit in reference cycles
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # macOS, musl: no malloc_trim
        return
    trim(0)


def trial_fn(params: dict[str, Any], base: dict[str, Any], study_dir: str) -> None:
    """Ray Tune function trainable: ``params`` are the trial's searched values, ``base`` the
    study's fixed trial config, ``study_dir`` the study directory (a path every node sees)."""
    import ray
    import torch
    from ray import tune

    from . import finetune

    release_freed_memory()  # what this reused worker's previous trial freed
    # torch's threads = the CPUs Ray gave this trial (at least 1): trials sharing a node do not
    # oversubscribe it, and one trial given a whole node uses all of it
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    cfg = TrialConfig.from_dict({**base, **params})
    if "://" in study_dir:  # cloud storage: no shared directory; Ray uploads the checkpoints
        from .cloud_adapter import run_cloud_trial

        run_cloud_trial(cfg, tune.get_context().get_trial_id())
        return
    trial_dir = Path(study_dir) / "trials" / tune.get_context().get_trial_id()
    trial_dir.mkdir(parents=True, exist_ok=True)
    resume = trial_dir if (trial_dir / "last.pt").exists() else None
    reporter = TuneReporter(trial_dir)
    if os.environ.get(FAULT_ENV):
        reporter = _FaultingReporter(trial_dir, cfg)
        done = trial_dir / "epochs_trained.log"
        if done.exists() and done.read_text().split():
            # a retried trial crashes again where it crashed before, until its attempts are used up
            _maybe_inject_fault(trial_dir, int(float(done.read_text().split()[-1])), cfg)
    finetune.run(cfg, reporter, resume_from=resume)
