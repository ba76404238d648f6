"""A trial of a study in cloud storage (``--storage-path s3://…``): checkpoints registered with Ray Tune.

Each validation's checkpoint folder (``best.pt``, ``last.pt``, plus ``history.jsonl``: the metrics of every
checkpointed epoch, and ``manifest.json``: the epoch and each file's size) is uploaded by the trial to the
folder Ray's report is about to register, ``<study>/<ray trial dir>/checkpoint_NNNNNN/``, and then registered
with ``tune.report(metrics, checkpoint=…)`` (handing Ray an empty folder: it copies nothing, the files are
already there). With ``CheckpointConfig(num_to_keep=1)`` Ray deletes the one before: one best + last pair per
trial in the bucket. The trial uploads before reporting so that the epoch's mark (below) is written only once
its checkpoint is complete in the bucket: inside ``tune.report`` nothing of the trial runs after the upload
(a trial's last report never returns).

Resuming does not trust ``tune.get_checkpoint()`` alone. It comes from Ray's experiment snapshot, which is
uploaded asynchronously after a trial's checkpoint: a driver killed in between restores a snapshot that
names an older checkpoint (or one already deleted). The trial therefore lists its own folder in the bucket
and resumes from the *complete* checkpoint (every file of its manifest present, at its size: an upload cut
by a lost node is skipped) of the highest epoch, whichever Ray named; and it moves Ray's checkpoint counter
past every folder there, so a new checkpoint never overwrites the one it resumed from. No finished epoch is
redone after a retry, a lost node or a killed driver.

``<study>/trials/<id>/epochs_trained/<epoch>-<attempt>`` is written (one small object) once each epoch's
checkpoint is complete in the bucket, before it is reported: an epoch trained twice after it was stored
leaves two objects, which is how the tests prove no stored epoch is redone. (An epoch cut off before its
checkpoint was complete is trained again, and marked once: its first training was lost.)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

__all__ = ["CloudReporter", "run_cloud_trial", "store", "complete_checkpoints", "newest_checkpoint", "keep_only_newest",
           "MANIFEST", "HISTORY", "upload", "fetch"]

MANIFEST, HISTORY = "manifest.json", "history.jsonl"


def _seal(ckpt_dir: str, epoch: float, history: list[dict[str, Any]]) -> None:
    """Write the history and the manifest (last: it lists the sizes of the files beside it)."""
    d = Path(ckpt_dir)
    (d / HISTORY).write_text("".join(json.dumps(m) + "\n" for m in history))
    files = {p.name: p.stat().st_size for p in d.iterdir() if p.is_file() and p.name != MANIFEST}
    (d / MANIFEST).write_text(json.dumps({"epoch": epoch, "files": files}))


def store(fs, checkpoint_dir: str, dest: str) -> None:
    """Upload the checkpoint folder ``checkpoint_dir`` to ``dest`` on ``fs``; complete when it returns."""
    import pyarrow.fs as pafs

    fs.create_dir(dest)
    # one file at a time: pyarrow's threaded upload to S3 is unsafe (apache/arrow#32372; Ray's own upload of
    # checkpoints avoids it the same way)
    pafs.copy_files(checkpoint_dir, dest, destination_filesystem=fs, use_threads=False, chunk_size=64 << 20)


def complete_checkpoints(fs, trial_path: str) -> list[tuple[float, int, str]]:
    """``(epoch, index, path)`` of the checkpoints under ``trial_path`` whose every manifest file is there at
    its size, oldest first."""
    import pyarrow.fs as pafs

    out = []
    for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or not name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{MANIFEST}") as f:
                manifest = json.loads(f.read())
            sizes = {i.path.rsplit("/", 1)[-1]: i.size for i in fs.get_file_info(pafs.FileSelector(info.path))}
        except (OSError, ValueError):
            continue  # no manifest yet: an upload that did not finish
        if all(sizes.get(k) == v for k, v in manifest["files"].items()):
            out.append((float(manifest["epoch"]), int(name.split("_")[-1]), info.path))
    return sorted(out)


def newest_checkpoint(fs, trial_path: str) -> tuple[float, int, str] | None:
    found = complete_checkpoints(fs, trial_path)
    return found[-1] if found else None


def _checkpoint_indices(fs, trial_path: str) -> list[int]:
    import pyarrow.fs as pafs

    names = [i.path.rstrip("/").rsplit("/", 1)[-1] for i in
             fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))]
    return [int(n.split("_")[-1]) for n in names if n.startswith("checkpoint_") and n.split("_")[-1].isdigit()]


def fill_placeholders(fs, trial_path: str) -> int:
    """Before a study is restored: Ray's snapshot may name a checkpoint it deleted after the snapshot was
    taken (a newer one replaced it); Ray refuses to restore a trial from a path that is gone. An empty
    folder stands in for each missing index below the newest (the trial resumes from the newest complete
    checkpoint anyway). Returns how many were made."""
    indices = _checkpoint_indices(fs, trial_path)
    missing = sorted(set(range(max(indices, default=0))) - set(indices))
    for i in missing:
        fs.create_dir(f"{trial_path}/checkpoint_{i:06d}")
    return len(missing)


def _empty_others(fs, trial_path: str, keep: str | None) -> None:
    """Leave the checkpoint ``keep`` the only one with files in the trial's folder.

    Ray deletes the checkpoint it registered before once a newer one registers, but not every older one:
    a checkpoint from before a lost node (the retry's checkpoint manager starts afresh) or one uploaded
    just before the driver was killed stays in the bucket for good. So the trial empties every other
    checkpoint folder itself — at its start (``keep``: the one it resumes from) and after each upload
    (``keep``: the one just uploaded, complete before ``tune.report`` returns). The folders stay, empty:
    Ray deletes the one it tracks itself when the next checkpoint registers, and fails if it is gone."""
    import pyarrow.fs as pafs

    strip = lambda p: (p or "").strip("/")  # noqa: E731
    for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or not name.startswith("checkpoint_") or \
                strip(info.path) == strip(keep):
            continue
        if fs.get_file_info(pafs.FileSelector(info.path, recursive=True)):
            fs.delete_dir_contents(info.path, missing_dir_ok=True)
        if fs.get_file_info(info.path).type == pafs.FileType.NotFound:  # S3 drops a prefix with its objects
            fs.create_dir(info.path)


def keep_only_newest(fs, trial_path: str) -> tuple[float, int, str] | None:
    """Empty every checkpoint folder of the trial but its newest complete one, and return that one (None:
    no complete checkpoint, every folder emptied). Run by the trial at its start and by the driver when the
    search has ended: a trial's last report never returns (Tune stops the trial there), so the trial's own
    cleanup after that upload never runs."""
    newest = newest_checkpoint(fs, trial_path)
    _empty_others(fs, trial_path, newest[2] if newest is not None else None)
    return newest


class CloudReporter:
    """Uploads each checkpoint folder to the bucket, registers it with Ray Tune, and keeps the trial's history."""

    def __init__(self, storage, trial_id: str, history: list[dict[str, Any]]) -> None:
        self.storage, self.fs, self.history = storage, storage.storage_filesystem, history
        study_path = storage.experiment_fs_path
        self.marks = f"{study_path}/trials/{trial_id}/epochs_trained"
        self.attempt = uuid.uuid4().hex[:8]
        self.trial_id, self.saved = trial_id, False  # saved: Ray Tune's saved state names the trial

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray
        import torch
        from ray import tune

        metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id(), "torch_threads": torch.get_num_threads()}
        if checkpoint_dir is None:
            tune.report(metrics)
            return
        if not self.saved:  # no checkpoint in the bucket before a resume would know the trial
            from .tune_adapter import wait_until_saved

            self.saved = wait_until_saved(self.trial_id)
        self.history.append(metrics)
        _seal(checkpoint_dir, metrics["epoch"], self.history)
        # Ray's report moves the trial's checkpoint index on by one and registers the folder of the new index
        dest = f"{self.storage.trial_fs_path}/checkpoint_{self.storage.current_checkpoint_index + 1:06d}"
        nothing = tempfile.mkdtemp(prefix="advtune-registered-")
        try:
            store(self.fs, checkpoint_dir, dest)
            with self.fs.open_output_stream(f"{self.marks}/{metrics['epoch']:g}-{self.attempt}") as f:
                f.write(json.dumps({"epoch": metrics["epoch"], "node_id": metrics["node_id"]}).encode())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(nothing))  # registers dest
        finally:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            shutil.rmtree(nothing, ignore_errors=True)
        if self.storage.checkpoint_fs_path.strip("/") != dest.strip("/"):
            raise RuntimeError(f"Ray registered the checkpoint as {self.storage.checkpoint_fs_path}, not {dest} where "
                               "advtune uploaded it: this Ray version numbers checkpoints unlike Ray 2.60, which advtune "
                               "is tested with; install ray[tune]==2.60.*")
        _empty_others(self.fs, self.storage.trial_fs_path, dest)


def run_cloud_trial(cfg, trial_id: str) -> None:
    """Resume from the newest complete checkpoint in the bucket (see the module docstring), then train."""
    from ray import tune

    from . import finetune

    storage = tune.get_context().get_storage()
    fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
    # past every folder there (complete or not): the next checkpoint never lands on an existing one
    storage.current_checkpoint_index = max([storage.current_checkpoint_index, *_checkpoint_indices(fs, trial_path)])
    newest = keep_only_newest(fs, trial_path)
    resume, history = None, []
    if newest is not None:
        resume = Path(tempfile.mkdtemp(prefix="advtune-resume-"))
        import pyarrow.fs as pafs

        pafs.copy_files(newest[2], str(resume), source_filesystem=fs)
        history = [json.loads(ln) for ln in (resume / HISTORY).read_text().splitlines() if ln.strip()]
    reporter = CloudReporter(storage, trial_id, history)
    try:
        finetune.run(cfg, reporter, resume_from=resume)
    finally:
        if resume is not None:
            shutil.rmtree(resume, ignore_errors=True)


def upload(path: str | Path, uri: str) -> None:
    """Copy the local file ``path`` to ``uri``."""
    import pyarrow.fs as pafs

    fs, dest = pafs.FileSystem.from_uri(uri)
    with open(path, "rb") as src, fs.open_output_stream(dest) as dst:
        shutil.copyfileobj(src, dst, 8 << 20)


def fetch(uri: str) -> str:
    """A local copy of the file at ``uri`` (a study's starting point in the bucket), cached by URI on this node."""
    import fcntl
    import hashlib

    import pyarrow.fs as pafs

    from .cache import cache_dir

    dest = cache_dir() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16] / uri.rsplit("/", 1)[-1]
    if dest.exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.exists():
            fs, path = pafs.FileSystem.from_uri(uri)
            fd, tmp = tempfile.mkstemp(dir=dest.parent)
            os.close(fd)
            try:
                with fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return str(dest)
