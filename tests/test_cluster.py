"""A simulated multi-node cluster (head + 2 nodes with fake GPUs): trials run concurrently on both
nodes with fractional GPUs; a head-local storage path and unmeetable resources are refused up front."""
from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from advtune.study.cli import main
from advtune.study.records import StudyRecords

# little data (the pretraining config of test_objectives and test_study_resume: pretrained once for the session)
TINY = ["--set", "train_steps=1", "--set", "val_steps=3", "--set", "pretrain_epochs=10", "--set", "train_size=256",
        "--set", "val_size=64", "--final-attack", "none"]  # the final strong evaluation is tested in test_study.py


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c, [w.node_id for w in workers]
    ray.shutdown()
    c.shutdown()


def test_head_local_storage_is_rejected_before_the_study_starts(cluster, tmp_path, capsys):
    rc = main(["run", "--name", "local", "--storage-path", str(tmp_path / "s"), "--gpus-per-trial", "0.5",
               "--cpus-per-trial", "0.5", "--num-samples", "2", "--max-epochs", "2", *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "local disk" in err and "3 nodes" in err and "shared storage" in err and "Traceback" not in err
    assert not (tmp_path / "s" / "local").exists()  # nothing written before every check passed


def test_unmeetable_resources_are_refused_naming_what_is_missing(cluster, tmp_path, capsys):
    rc = main(["run", "--name", "big", "--storage-path", str(tmp_path / "s"), "--gpus-per-trial", "2",
               "--assume-shared-storage", "--num-samples", "1", "--max-epochs", "2", *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "2 GPU" in err and "largest node has 1" in err


def test_fractional_gpu_trials_run_concurrently_on_both_nodes(cluster, tmp_path):
    _, worker_ids = cluster
    storage = tmp_path / "s"
    rc = main(["run", "--name", "multi", "--storage-path", str(storage), "--assume-shared-storage",
               "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--concurrency", "4", "--num-samples", "4",
               "--max-epochs", "2", "--grace-period", "2", *TINY])
    assert rc == 0
    records = StudyRecords(storage / "multi", tensorboard=False).load()
    assert len(records) == 4
    nodes = {r.metrics[0]["node_id"] for r in records}
    assert nodes == set(worker_ids), "trials must run on both GPU nodes (the head has no GPU)"

    def span(r):  # wall-clock interval during which the trial trained
        start = r.metrics[0]["timestamp"] - r.metrics[0]["epoch_seconds"] - 1
        return start, r.metrics[-1]["timestamp"]

    overlaps = [(a, b) for a in records for b in records if a.metrics[0]["node_id"] != b.metrics[0]["node_id"]
                and span(a)[0] < span(b)[1] and span(b)[0] < span(a)[1]]
    assert overlaps, "trials on the two nodes never ran at the same time"
