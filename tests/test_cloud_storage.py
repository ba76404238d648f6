"""A study in cloud storage (an S3 bucket on a loopback moto server, pyarrow's real S3 client) on a
multi-node Ray cluster with no shared path: a worker node is removed mid-study, the driver is SIGKILLed,
the study is resumed from a new local folder holding nothing but the URI, then status, export and report
run from the URI. One study serves every assertion (it is the expensive part)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from advtune.study.records import StudyRecords

from conftest import lossy_cluster

ADVTUNE = [sys.executable, "-m", "advtune.study.cli"]
N_TRIALS, EPOCHS = 3, 3
URI = "s3://advtune/studies"


def _bucket_files(prefix: str) -> dict[str, int]:
    fs, path = pafs.FileSystem.from_uri(prefix)
    return {i.path[len(path) + 1:]: i.size for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True,
                                                                                       recursive=True))
            if i.type == pafs.FileType.File}


@pytest.fixture(scope="module")
def cluster(s3_server):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    with lossy_cluster() as (c, workers):  # started after s3_server: the nodes see the endpoint
        yield c, workers


def _env(home: Path) -> dict:
    return {**os.environ, "ADVTUNE_CACHE": str(home / "cache"), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _wait(pred, proc, log: Path, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        assert proc.poll() is None, f"driver exited while waiting for {what}:\n" + log.read_text()[-3000:]
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    """Run, lose a node, kill the driver, resume from a new folder. Returns what the checks need."""
    c, (keep, doomed) = cluster
    first, second = tmp_path_factory.mktemp("machine-a"), tmp_path_factory.mktemp("machine-b")
    staging = first / "cache" / "studies" / "s3" / "advtune" / "studies" / "cloud"
    log_path = first / "run.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([*ADVTUNE, "run", "--address", c.address, "--storage-path", URI, "--name", "cloud",
                             "--num-samples", str(N_TRIALS), "--max-epochs", str(EPOCHS), "--pruning", "epoch",
                             "--grace-period", str(EPOCHS),  # nothing is pruned here
                             "--concurrency", "2", "--max-failures", "3", "--set", "train_steps=1",
                             "--set", "val_steps=3", "--set", "pretrain_epochs=10",
                             "--set", "train_size=256", "--set", "val_size=64",  # little data: cheap epochs
                             # the final strong evaluation runs on resume: cheap settings (its attacks are
                             # tested in tests/test_final_eval.py; here: that it reads the bucket's best.pt)
                             "--final-attack", "pgd", "--final-images", "32"],
                            cwd=first, env=_env(first), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    records = lambda: StudyRecords(staging, tensorboard=False).load() if staging.exists() else []  # noqa: E731
    try:
        victim = _wait(lambda: next((r for r in records() if r.metrics and r.metrics[-1].get("node_id") ==
                                     doomed.node_id and len(r.metrics) < EPOCHS - 1), None),
                       proc, log_path, "a trial part-way through on the doomed node")
        # while it runs: status on the driver's machine (its cache: the driver's own staging folder) and a
        # second driver's resume from elsewhere, side by side with the study (collected after the kill)
        third = tmp_path_factory.mktemp("machine-c")
        readers = {"status": subprocess.Popen([*ADVTUNE, "status", f"{URI}/cloud"], cwd=first, env=_env(first),
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              stdin=subprocess.DEVNULL),
                   "resume": subprocess.Popen([*ADVTUNE, "resume", f"{URI}/cloud", "--address", c.address], cwd=third,
                                              env=_env(third), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, stdin=subprocess.DEVNULL)}
        c.remove_node(doomed, allow_graceful=False)
        lines = lambda: sum(len(r.metrics) for r in records())  # noqa: E731
        at_removal = lines()
        _wait(lambda: lines() >= at_removal + 2, proc, log_path, "progress after the node loss")
        said = {k: r.communicate(timeout=300) for k, r in readers.items()}  # before the kill: they saw it run
        said = {k: (readers[k].returncode, out) for k, (out, _) in said.items()}
        before_kill = records()
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: the cluster is not its to stop
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert sum(len(r.metrics) for r in before_kill) < N_TRIALS * EPOCHS, "the kill came too late to test anything"
    res = subprocess.run([*ADVTUNE, "resume", f"{URI}/cloud", "--address", c.address], cwd=second, env=_env(second),
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"victim": victim, "before_kill": before_kill, "keep": keep, "doomed": doomed, "first": first,
            "second": second, "resume_out": res.stdout, "readers": said}


def test_a_running_cloud_study_is_seen_running_and_not_driven_twice(study):
    """`advtune status URI` on the driver's machine read the driver's staging folder as it was (a pull there
    replaced the folder under the running driver, and said "interrupted": no driver record for a cloud study), and
    `advtune resume URI` from another folder saw the driver's heartbeat in the bucket and refused to drive the study
    a second time. When the resumed study ended, its driver took its record out of the bucket."""
    rc, out = study["readers"]["status"]
    assert rc == 0 and "running (driver pid" in out and "on this machine" in out, out[-2000:]
    rc, out = study["readers"]["resume"]
    assert rc == 2 and "is running (driver pid" in out and "a second driver would run its trials twice" in out, \
        out[-2000:]
    assert "Traceback" not in out
    assert "driver.json" not in _bucket_files(f"{URI}/cloud")


def test_every_trial_completes_each_epoch_trained_once(study, tmp_path):
    files = _bucket_files(f"{URI}/cloud")
    staged = tmp_path / "records"
    from advtune.study.storage import Remote

    remote = Remote(f"{URI}/cloud", staged)
    remote.pull()  # what a third machine sees
    records = StudyRecords(staged, tensorboard=False).load()
    assert len(records) == N_TRIALS
    for rec in records:
        assert rec.state == "completed", (rec.trial_id, rec.state, rec.error)
        assert [m["epoch"] for m in rec.metrics] == list(range(1, EPOCHS + 1)), rec.trial_id
        trained = sorted(int(k.split("/")[-1].split("-")[0]) for k in files
                         if k.startswith(f"trials/{rec.trial_id}/epochs_trained/"))
        # each epoch marked at most once (a repeat = a stored epoch redone); a kill in the few milliseconds between
        # an upload's end and its mark leaves that one epoch stored and unmarked, never marked twice
        assert len(set(trained)) == len(trained), f"{rec.trial_id} trained epochs {trained} (a repeat = redone)"
        assert set(trained) <= set(range(1, EPOCHS + 1)) and len(trained) >= EPOCHS - 1, (rec.trial_id, trained)
    # the epochs finished before the kill were kept, not redone (lines the killed driver never pushed come back
    # from the trial's checkpoint, without Ray's own timestamp fields)
    ray_own = ("timestamp", "time_total_s")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ray_own} for m in ms]  # noqa: E731
    for old in study["before_kill"]:
        new = next(r for r in records if r.trial_id == old.trial_id)
        assert strip(new.metrics[: len(old.metrics)]) == strip(old.metrics)
    moved = next(r for r in records if r.trial_id == study["victim"].trial_id)
    nodes = [m["node_id"] for m in moved.metrics]
    assert nodes[0] == study["doomed"].node_id and nodes[-1] == study["keep"].node_id


def test_checkpoints_live_only_in_the_bucket_one_pair_per_trial(study):
    files = _bucket_files(f"{URI}/cloud")
    pairs = {}
    for key in files:
        parts = key.split("/")
        if len(parts) == 3 and parts[1].startswith("checkpoint_") and parts[2] in ("best.pt", "last.pt"):
            pairs.setdefault(parts[0], set()).add((parts[1], parts[2]))
    assert len(pairs) == N_TRIALS
    for trial_dir, found in pairs.items():
        assert len({c for c, _ in found}) == 1 and len(found) == 2, (trial_dir, found)  # best + last, one folder
    assert "pretrained/best.pt" in files, "pretrained: auto must put the starting point in the bucket"
    for machine in (study["first"], study["second"]):  # the drivers' disks never held a trial checkpoint
        assert not [p for p in machine.rglob("*.pt")], list(machine.rglob("*.pt"))


def test_status_export_and_report_from_the_uri_alone(study, tmp_path):
    env = _env(tmp_path)
    status = subprocess.run([*ADVTUNE, "status", f"{URI}/cloud"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert status.returncode == 0 and f"{N_TRIALS} of {N_TRIALS} trials" in status.stdout, status.stderr[-2000:]
    for cmd in ("export", "report"):
        res = subprocess.run([*ADVTUNE, cmd, f"{URI}/cloud"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    files = _bucket_files(f"{URI}/cloud")
    assert "report/index.html" in files and "export/best.yaml" in files
    # the final strong evaluation read each trial's best.pt from the bucket (the staging folder holds none)
    fs, path = pafs.FileSystem.from_uri(f"{URI}/cloud/final_eval.json")
    with fs.open_input_stream(path) as f:
        final = json.loads(f.read())
    assert len(final["trials"]) == N_TRIALS and "strong attack" in study["resume_out"]
    assert all(0 <= t["robust_acc"] <= t["clean_acc"] for t in final["trials"].values())
    import yaml

    staged = tmp_path / "cache" / "studies" / "s3" / "advtune" / "studies" / "cloud"
    best = yaml.safe_load((staged / "export" / "best.yaml").read_text())["entries"][0]
    assert best["checkpoint"].startswith(f"{URI}/cloud/") and best["checkpoint"].endswith("/best.pt")
    fs, path = pafs.FileSystem.from_uri(best["checkpoint"])
    with fs.open_input_stream(path) as f:
        local = tmp_path / "best.pt"
        local.write_bytes(f.read())
    payload = torch.load(local, weights_only=True)
    assert payload["metrics"]["epoch"] == best["metrics"]["epoch"]  # best.pt is the best robust-accuracy epoch
    assert payload["metrics"]["robust_acc"] == pytest.approx(best["metrics"]["robust_acc"])


def test_a_restarted_trial_whose_records_never_reached_the_bucket_gets_its_epochs_back(s3_server, tmp_path, capsys):
    """A driver killed within seconds of a trial's start can leave the trial's epochs in its bucket checkpoint but
    nothing in the bucket's records (they are pushed every SYNC_PERIOD_S): the resumed driver's staging folder has
    no folder for the trial, so complete_records passes it by, and Tune restarts it from its checkpoint, which
    reports only the epochs after it (CI saw a trial recorded as [3] of 3 epochs). When Tune starts a trial the
    cloud callback puts back the epochs its newest complete checkpoint holds and its records lack."""
    from types import SimpleNamespace

    from advtune.study.cloud_study import CloudStudyCallback
    from advtune.trainables.cloud_adapter import _seal, store

    uri = f"{URI}/restarted"
    fs, root = pafs.FileSystem.from_uri(uri)
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "last.pt").write_bytes(b"l" * 10)
    history = [{"epoch": e, "robust_acc": 0.1 * e, "clean_acc": 0.5, "status": "running"} for e in (1, 2)]
    _seal(str(local), 2, history)
    store(fs, str(local), f"{root}/trial_fn_ab12cd34_00002_2_peak_lr=0.1/checkpoint_000001")
    staging = tmp_path / "staging"
    callback = CloudStudyCallback(str(staging), 3, uri, None)
    callback.on_trial_start(0, [], SimpleNamespace(trial_id="ab12cd34", config={"peak_lr": 0.1}))
    callback.on_trial_start(0, [], SimpleNamespace(trial_id="ef56ab78", config={"peak_lr": 0.2}))  # a new trial
    records = StudyRecords(staging, tensorboard=False)
    assert [m["epoch"] for m in records.load_trial("ab12cd34").metrics] == [1, 2]
    assert records.load_trial("ef56ab78").metrics == []
    callback.on_trial_result(0, [], SimpleNamespace(trial_id="ab12cd34", config={"peak_lr": 0.1}),
                             {**history[-1], "epoch": 3, "status": "completed"})
    assert [m["epoch"] for m in records.load_trial("ab12cd34").metrics] == [1, 2, 3]
    # a trial whose records lag its checkpoint (an upload the killed driver's trial finished after resume's
    # complete_records looked): the missing epochs come back when Tune starts it, and nothing doubles
    behind = SimpleNamespace(trial_id="cd34ef56", config={"peak_lr": 0.3})
    callback.on_trial_start(0, [], behind)
    callback.on_trial_result(0, [], behind, history[0])
    store(fs, str(local), f"{root}/trial_fn_cd34ef56_00003_3_peak_lr=0.3/checkpoint_000001")
    callback.on_trial_start(0, [], behind)
    callback.on_trial_start(0, [], behind)
    assert [m["epoch"] for m in records.load_trial("cd34ef56").metrics] == [1, 2]
    # a bucket that refuses for a moment does not stop the study: a warning, and the trial starts
    refused = CloudStudyCallback(str(tmp_path / "refused"), 3,
                                 f"s3://advtune/studies?endpoint_override={s3_server['denied']}&scheme=http", None)
    refused.on_trial_start(0, [], SimpleNamespace(trial_id="ab12cd34", config={"peak_lr": 0.1}))
    assert "warning: could not read trial ab12cd34's checkpoint history" in capsys.readouterr().err


def test_resume_point_is_the_newest_complete_checkpoint_whatever_ray_names(s3_server):
    """Ray's snapshot can name an older checkpoint than the bucket holds, and a lost node can leave an upload
    half done: the trial resumes from the complete checkpoint of the highest epoch, and only that one keeps
    its files (Ray leaves a checkpoint from before a lost node or a killed driver in the bucket for good)."""
    from advtune.trainables.cloud_adapter import _checkpoint_indices, _empty_others, _seal, newest_checkpoint

    fs, root = pafs.FileSystem.from_uri(f"{URI}/unit/trial_fn_x_00000")
    local = Path(os.environ["ADVTUNE_CACHE"]) / "unit-ckpt"
    for index, epoch, drop in ((0, 1, None), (3, 2, None), (4, 3, "last.pt")):  # index 3: after a resume
        local.mkdir(parents=True, exist_ok=True)
        (local / "best.pt").write_bytes(b"b" * epoch)
        (local / "last.pt").write_bytes(b"l" * 10 * epoch)
        _seal(str(local), epoch, [{"epoch": e} for e in range(1, epoch + 1)])
        for p in local.iterdir():
            if p.name != drop:  # epoch 3's last.pt never arrived: the node died mid-upload
                with open(p, "rb") as src, fs.open_output_stream(f"{root}/checkpoint_{index:06d}/{p.name}") as dst:
                    dst.write(src.read())
    epoch, index, path = newest_checkpoint(fs, root)
    assert (epoch, index) == (2.0, 3)
    assert max(_checkpoint_indices(fs, root)) == 4  # the next checkpoint goes past the incomplete one
    with fs.open_input_stream(f"{path}/manifest.json") as f:
        assert json.loads(f.read())["files"]["last.pt"] == 20
    _empty_others(fs, root, path)
    left = _bucket_files(f"{URI}/unit/trial_fn_x_00000")
    assert sorted(left) == ["checkpoint_000003/best.pt", "checkpoint_000003/history.jsonl",
                            "checkpoint_000003/last.pt", "checkpoint_000003/manifest.json"]
    for index in (0, 4):  # emptied, the folders kept: Ray deletes the one it tracks itself, and fails if it is gone
        assert fs.get_file_info(f"{root}/checkpoint_{index:06d}").type == pafs.FileType.Directory
