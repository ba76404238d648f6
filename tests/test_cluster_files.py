"""The cluster files docs/cluster.md links are real and valid: the `ray up` file against Ray's own cluster-config
schema (what `ray up` validates with), the KubeRay RayJob for the fields advtune relies on, and the commands and
base config they ship parse with advtune's own parser and config class."""
from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from advtune.study.cli import build_parser
from advtune.trainables.config import TrialConfig

CLUSTER = Path(__file__).resolve().parents[1] / "docs" / "cluster"


def _run_args(command: str):
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["advtune", "run"], words
    return build_parser().parse_args(words[1:])


def test_ray_up_file_passes_rays_cluster_config_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-up-aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before it launches anything
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo the schema must catch
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_ray_up_file_autoscales_gpu_workers_without_the_guides_old_mistakes():
    text = (CLUSTER / "ray-up-aws.yaml").read_text()
    config = yaml.safe_load(text)
    types = config["available_node_types"]
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] > 0 and gpu["resources"]["GPU"] >= 1
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert not any("IamInstanceProfile" in t["node_config"] for t in types.values())  # Ray's own profile stays
    assert not any("git clone" in c for c in config["setup_commands"])  # a second `ray up` must work
    assert any("cifar-10-batches-py" in c for c in config["setup_commands"])  # the dataset is put on the nodes
    # the study command in the file's header: in tmux, valid advtune options, its --config shipped by file_mounts
    header = "\n".join(line.lstrip("#") for line in text.splitlines() if line.startswith("#"))
    command = header.split("--tmux ", 1)[1].split('"')[1]
    args = _run_args(command)
    assert "~/advtune-job" in config["file_mounts"] and args.config.startswith("~/advtune-job/")
    shipped = CLUSTER / Path(config["file_mounts"]["~/advtune-job"]).relative_to("docs/cluster") / Path(args.config).name
    assert TrialConfig.from_yaml(shipped).dataset == "cifar10"
    assert args.gpus_per_trial <= gpu["resources"]["GPU"]


def test_kuberay_rayjob_has_what_advtune_relies_on():
    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text())}
    job, config_map = docs["RayJob"]["spec"], docs["ConfigMap"]
    cluster = job["rayClusterSpec"]
    # KubeRay's submitter reaches the dashboard through the head's Service, not the pod's loopback
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert cluster["authOptions"] == {"mode": "token"}
    assert tuple(int(x) for x in cluster["rayVersion"].split(".")[:2]) >= (2, 52)  # token auth needs 2.52+
    assert cluster["enableInTreeAutoscaling"] is True
    args = _run_args(job["entrypoint"])
    assert args.address == "auto" and args.storage_path.startswith("s3://")
    # --config is the ConfigMap's file, mounted on the head where the driver runs, and loads as a base config
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volume = next(v for v in head["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    key = Path(args.config).name
    assert args.config == f"{mounts[volume['name']]}/{key}"
    base = TrialConfig.from_dict(yaml.safe_load(config_map["data"][key]))
    for group in cluster["workerGroupSpecs"]:  # GPU workers autoscaled from zero, each with the data and a GPU
        spec = group["template"]["spec"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0
        limits = spec["containers"][0]["resources"]["limits"]
        assert args.gpus_per_trial <= int(limits["nvidia.com/gpu"])
        data = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert base.data_root in data and spec["initContainers"], "the dataset must be put on every worker"
