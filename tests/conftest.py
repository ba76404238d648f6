"""Shared fixtures: an isolated cache, a tiny fast trial config, a reporter that records."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from advtune.trainables.config import TrialConfig

# digits with the default val_size=0.2: 1797 images → 359 test, 288 val, 1150 train.
DIGITS_N_TRAIN = 1150
DIGITS_N_VAL = 288
DIGITS_N_TEST = 359

TINY = dict(dataset="digits", model="small_cnn", pretrained="none", epochs=2, train_steps=2, val_steps=3,
            batch_size=128, device="cpu")


# The processes the tests start (the CLI, Ray's nodes and workers) inherit one OpenMP thread too, as this process
# gets in _one_torch_thread: the tiny models gain nothing from more, and two spinning threads per process on a shared
# 2-core machine made a CLI run twice as slow (measured: `advtune pretrain`, 2 epochs, 82 s vs 45 s; an epoch 27.6 s vs
# 4.5 s). A trial still runs as many torch threads as the CPUs Ray gives it (trial_fn sets them).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, os.environ.get("ADVTUNE_TEST_THREADS", "1"))

# A trial stores no checkpoint before the experiment state Ray Tune saved names it (trainables.tune_adapter.
# wait_until_saved). Ray saves that state every 10 s at least (and after trial checkpoints): a study's epochs of
# minutes never wait, the tests' epochs of a second would, up to 10 s per trial. The studies the tests run (and the
# drivers they start, which inherit this) save it every second; test_study_resume's test of the wait runs Ray's default.
SAVED_STATE_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S"
os.environ.setdefault(SAVED_STATE_PERIOD, "1")


# `make test` runs the suite on two pytest-xdist workers (`-n 2`): every test here runs one torch thread, so one
# process left the second core idle through every unit test. Each worker builds the session fixtures it needs, so
# the scheduler below hands out whole modules (a module's fixtures are built once), and modules that read the
# same session-scoped study or server go to one worker together (it is built once). xdist's own `--dist
# loadgroup` would say the same with marks, but it groups through the test's node id, which pytest 9.2 no longer
# lets it change (pytest-dev/pytest-xdist#1386): its groups are silently ignored there.
_SHARED_SESSION_FIXTURES = ("small_study", "s3_server")
# Modules started first (the longest: a module that starts last should be a short one); order only, not grouping
_LONG_MODULES = ("test_faults", "test_study_resume", "test_cloud_storage", "test_api", "test_docs", "test_trackers",
                 "test_autoscaling", "test_objectives", "test_cluster", "test_own_code")


def _module_groups(tests_dir: Path) -> dict[str, str]:
    """Module name -> its group: the modules that name one of the shared session fixtures share a group (a module
    naming two of them joins the first's group; at worst a fixture is then built on both workers)."""
    groups: dict[str, str] = {}
    for fixture in _SHARED_SESSION_FIXTURES:
        users = sorted(p.stem for p in tests_dir.glob("test_*.py") if fixture in p.read_text())
        for m in users:
            groups[m] = groups.get(m) or groups.get(users[0]) or users[0]
    return groups


@pytest.hookimpl(trylast=True)  # after pytest's own reordering
def pytest_collection_modifyitems(config, items):
    """Longest modules first (a stable sort: pytest's order within a module is kept)."""
    rank = {m: i for i, m in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))


if importlib.util.find_spec("xdist") is not None:  # an unknown hook would be an error without xdist
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        groups = _module_groups(Path(__file__).parent)

        class ModuleGroups(LoadScopeScheduling):
            """Work units are modules, or groups of modules sharing a session fixture, in collection order."""

            def _split_scope(self, nodeid: str) -> str:
                module = Path(nodeid.split("::", 1)[0]).stem
                return groups.get(module, module)

        config.option.loadscopereorder = False  # keep the longest-first order of the collection
        return ModuleGroups(config, log)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ADVTUNE_CACHE at a session tmp dir: tests never write to ~/.cache."""
    old = os.environ.get("ADVTUNE_CACHE")
    os.environ["ADVTUNE_CACHE"] = str(tmp_path_factory.mktemp("advtune-cache"))
    yield
    if old is None:
        os.environ.pop("ADVTUNE_CACHE", None)
    else:
        os.environ["ADVTUNE_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: the tiny models here gain nothing from more, and on a shared, busy CPU
    spinning OpenMP threads make a run several times slower (measured: 10 s vs 1.6 s an epoch).
    Set ADVTUNE_TEST_THREADS to override."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ADVTUNE_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _restore_rng():
    """Keep torch's global RNG state from leaking between tests."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.fixture
def tiny_config() -> TrialConfig:
    """A trial that trains in about a second: digits, small_cnn from scratch, PGD-2, 2 epochs."""
    return TrialConfig(**TINY)


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny config as ``--set`` arguments for the CLI."""
    out: list[str] = []
    for key, value in TINY.items():
        out += ["--set", f"{key}={value}"]
    return out


class RecordingReporter:
    """Records every report; keeps a copy of each checkpoint folder under ``root/ckpt-<i>``.

    Like the real reporters it owns (and removes) the folder it is handed. ``stop_after`` raises
    :class:`Interrupted` right after that many reports, as a crash would.
    """

    def __init__(self, root: Path, stop_after: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics: list[dict[str, Any]] = []
        self.checkpoints: list[Path | None] = []
        self.stop_after = stop_after

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint_dir is None:
            self.checkpoints.append(None)
        else:
            dest = self.root / f"ckpt-{len(self.metrics)}"
            shutil.copytree(checkpoint_dir, dest)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            self.checkpoints.append(dest)
        if self.stop_after is not None and len(self.metrics) >= self.stop_after:
            raise Interrupted(f"interrupted after {len(self.metrics)} reports")


class Interrupted(Exception):
    """Raised by RecordingReporter(stop_after=n) to simulate a crash."""


@pytest.fixture
def recorder(tmp_path: Path):
    """Factory of RecordingReporters, each with its own folder under ``tmp_path``."""
    count = 0

    def make(stop_after: int | None = None) -> RecordingReporter:
        nonlocal count
        count += 1
        return RecordingReporter(tmp_path / f"reporter-{count}", stop_after)

    make.Interrupted = Interrupted  # type: ignore[attr-defined]
    return make


# Real Ray Tune, Optuna, ASHA and final evaluation on little data: 256 training images (a fixed stratified subset;
# 10 natural epochs pretrain to ~95% clean), 96 validation images, the final PGD-50-5 on 32 of them (it was the
# study's largest cost: 4 trials x 64 images x 51 x 5 passes, as much as every trial's training together)
# --grace-period 0.5: under the default full_strength rule the first rung is half an epoch after each trial's own
# warmup and eps ramp (the default 1.75 lies past this 3-epoch study's end, and the tests need ASHA to stop trials)
SMALL_STUDY = ["--num-samples", "6", "--max-epochs", "3", "--grace-period", "0.5", "--reduction-factor", "3",
               "--concurrency", "2", "--seed", "1",
               "--set", "train_steps=2", "--set", "val_steps=5", "--set", "pretrain_epochs=10",
               "--set", "train_size=256", "--set", "val_size=96",
               "--final-attack", "pgd", "--final-images", "32", "--final-top-k", "4"]  # PGD-50-5: no extra needed


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> Path:
    """One small finished study (6 trials, ASHA, final strong evaluation of the top 4) that the study and
    report tests share: `advtune run` in a subprocess (its own local Ray, ended with it)."""
    import subprocess
    import sys

    storage = tmp_path_factory.mktemp("studies")
    res = subprocess.run([sys.executable, "-m", "advtune.study.cli", "run", "--name", "small", "--storage-path", str(storage),
                          *SMALL_STUDY], env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                         text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return storage / "small"


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine for one test module (never a bare ray.init(): it would join any cluster running
    here), shut down after the module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Two S3-compatible servers on loopback (moto in server mode, real HTTP, pyarrow's real S3 client):
    ``endpoint`` accepts the fake credentials and holds the bucket ``advtune``; ``denied`` enforces IAM
    authentication from the first request, so it answers 403 to the same credentials. The AWS_* variables
    (fake credentials, the endpoint) are set for this process and the Ray nodes it starts, and removed after."""
    import subprocess
    import sys
    import time
    import urllib.request

    moto = str(Path(sys.executable).with_name("moto_server"))
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    ports, procs = (_free_port(), _free_port()), []
    for port, extra in zip(ports, ({}, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})):
        procs.append(subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log,
                                      env={**os.environ, **extra}, stdin=subprocess.DEVNULL))
    deadline = time.time() + 60
    for port in ports:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports[0]}", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    pafs.FileSystem.from_uri("s3://advtune?allow_bucket_creation=true")[0].create_dir("advtune")
    yield {"endpoint": env["AWS_ENDPOINT_URL"], "denied": f"127.0.0.1:{ports[1]}"}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for p in procs:
        p.terminate()
        p.wait(timeout=30)
    log.close()


@contextlib.contextmanager
def lossy_cluster(n_workers: int = 2):
    """A simulated cluster whose lost nodes Ray notices within seconds: a head without CPUs (no trial runs
    there) and ``n_workers`` worker nodes of 1 CPU each. Shut down on leaving the block."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}})
    try:
        workers = [c.add_node(num_cpus=1) for _ in range(n_workers)]
        c.wait_for_nodes()
        yield c, workers
    finally:
        c.shutdown()
