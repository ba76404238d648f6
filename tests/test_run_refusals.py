"""`advtune run` writes nothing before every check has passed: each refusal leaves no study directory behind,
an `--address` nothing answers at is refused in seconds, and a folder left by a study that never started is
reported as such and its name reused. Resource checks against an autoscaler's node types are unit-tested here
(the live study on Ray's autoscaling simulator is tests/test_autoscaling.py)."""
from __future__ import annotations

import socket
import time

import pytest

from advtune.study.cli import main
from advtune.study.cluster import NodeType
from advtune.study.errors import StudyError
from advtune.study.spec import check_resources, describe_cluster, resolve_cpus

TINY = ["--num-samples", "1", "--max-epochs", "2", "--set", "train_steps=1", "--set", "val_steps=2",
        "--set", "pretrained=none", "--final-attack", "none"]


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a connect is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, *extra: str) -> int:
    return main(["run", "--name", "x", "--storage-path", str(tmp_path / "s"), *TINY, *extra])


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_address_that_does_not_answer_is_refused_in_seconds_writing_nothing(tmp_path, capsys, address):
    address = address.format(port=_closed_port())
    t0 = time.monotonic()
    assert _run(tmp_path, "--address", address) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and address in err and "nothing answers" in err and "firewall" in err, err
    assert "Failed to connect to GCS" not in err
    assert not (tmp_path / "s" / "x").exists()


REFUSALS = {  # arguments -> what the one error line must say
    "gpu on a cpu-only cluster": (["--gpus-per-trial", "1"], "drop --gpus-per-trial"),
    "more cpus than any node": (["--cpus-per-trial", "64"], "64 CPU (the largest node has 2)"),
    "warm start from nothing": (["--warm-start", "/nonexistent/study"], "/nonexistent/study"),
    "bad objective": (["--objective", "clean"], "clean"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_refusal_leaves_no_study_directory(local_ray, tmp_path, capsys, case):
    extra, says = REFUSALS[case]
    assert _run(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert "error:" in err and says in err, err
    assert not (tmp_path / "s" / "x").exists(), f"{case}: the refused study left {list((tmp_path / 's').rglob('*'))}"


def test_a_never_started_study_is_reported_and_its_name_reused(local_ray, tmp_path, capsys):
    study = tmp_path / "s" / "x"
    study.mkdir(parents=True)
    (study / "advtune_study.json").write_text('{"advtune_study": 1, "spec": {}}')
    (study / "space.yaml").write_text("params: {}\n")
    assert main(["resume", str(study)]) == 2
    err = capsys.readouterr().err
    assert "never started" in err and f"advtune run --name x --storage-path {study.parent}" in err, err
    # run may reuse the name: the refusal that follows is the resources', not "already exists"
    assert _run(tmp_path, "--gpus-per-trial", "1") == 2
    out, err = capsys.readouterr()
    assert "never started" in out and "already exists" not in err and "drop --gpus-per-trial" in err, (out, err)
    (study / "notes.txt").write_text("mine")  # a folder holding anything else is not advtune's to reuse
    assert _run(tmp_path) == 2
    assert "already exists" in capsys.readouterr().err and (study / "notes.txt").exists()


# --- resources against the autoscaler's node types (no Ray needed) -------------------------------------------
class _Spec:  # the fields check_resources / resolve_cpus read
    def __init__(self, cpus, gpus, slots=2):
        self.cpus_per_trial, self.gpus_per_trial, self.slots = cpus, gpus, slots


HEAD = [{"id": "head", "resources": {"CPU": 4.0}}]
GPU_TYPE = NodeType("gpu_worker", {"CPU": 8.0, "GPU": 1.0}, 0, 3)


def test_a_trial_that_fits_a_node_type_waits_for_the_autoscaler():
    line = check_resources(_Spec(2, 0.5), HEAD, [NodeType("head", {"CPU": 4.0}, 0, 0), GPU_TYPE], autoscaling=True)
    assert line and "gpu_worker" in line and "wait" in line
    assert check_resources(_Spec(2, 0), HEAD, [GPU_TYPE], autoscaling=True) is None  # the head hosts it now


def test_no_node_type_can_host_a_trial_is_refused_with_a_fitting_message():
    with pytest.raises(StudyError, match=r"2 GPU \(the largest node or node type has 1\)"):
        check_resources(_Spec(1, 2), HEAD, [GPU_TYPE], autoscaling=True)
    with pytest.raises(StudyError, match="nor node type its autoscaler can launch has a GPU.*drop --gpus-per-trial"):
        check_resources(_Spec(1, 1), HEAD, [NodeType("cpu_worker", {"CPU": 16.0}, 0, 4)], autoscaling=True)
    with pytest.raises(StudyError, match="no node of the cluster has a GPU"):  # no autoscaler: live nodes only
        check_resources(_Spec(1, 1), HEAD)


def test_node_types_the_driver_cannot_see_do_not_refuse_an_autoscaling_cluster():
    line = check_resources(_Spec(1, 1), HEAD, [], autoscaling=True)
    assert line and "not visible" in line and "ray status" in line
    line = check_resources(_Spec(1, 1), HEAD, [NodeType("gpu", {}, 0, 4)], autoscaling=True)
    assert line and "gpu" in line and "cloud provider" in line


def test_auto_cpus_count_the_node_types_the_cluster_grows_to():
    from advtune.study.spec import StudySpec
    from advtune.trainables.config import TrialConfig

    spec = StudySpec(name="x", space="sfd", base_config=TrialConfig(), num_samples=8, max_epochs=2, grace_period=1,
                     requested_grace=1, reduction_factor=2, concurrency=4, cpus_per_trial=None, gpus_per_trial=0.5,
                     address=None, storage_path="/tmp", seed=0, max_failures=0)
    # the CPU-only head hosts no GPU trial; 3 gpu_workers of 8 CPUs shared by 4 trials: 6, capped at a node's 8
    assert resolve_cpus(spec, HEAD, [GPU_TYPE]).cpus_per_trial == 6
    assert resolve_cpus(spec, HEAD, []).cpus_per_trial == 1  # nothing hosts: check_resources says what is missing
    lines = describe_cluster(resolve_cpus(spec, HEAD, [GPU_TYPE]), HEAD, [GPU_TYPE], "the autoscaler's config f")
    assert "0 of them can host a trial" in lines[0] and "gpu_worker (8 CPU, 1 GPU; 0-3 nodes): can host a trial" in lines[2]
