"""Bad inputs, table-driven: each one exits non-zero with one message naming the problem and the
fix, prints no traceback (unless --debug), and loses or overwrites nothing in an existing study."""
from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from advtune.study.cli import main
from advtune.trainables.models import build_model

from test_data import write_cifar, write_idx

importlib.import_module("tests.own_code")  # the user code the cases name, importable whatever the cwd

TINY = ["--set", "epochs=1", "--set", "train_steps=1", "--set", "val_steps=1", "--set", "pretrained=none"]


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _study(root: Path) -> Path:
    """A study directory as advtune leaves it, with results worth protecting."""
    d = root / "studies" / "precious"
    (d / "trials" / "t1").mkdir(parents=True)
    spec = {"name": "precious", "space": "sfd", "base_config": {}, "num_samples": 2, "max_epochs": 2,
            "grace_period": 1, "requested_grace": 1, "reduction_factor": 2, "concurrency": 1, "cpus_per_trial": 1,
            "gpus_per_trial": 0, "address": None, "storage_path": str(root / "studies"), "seed": 0,
            "max_failures": 1}
    (d / "advtune_study.json").write_text(json.dumps({"advtune_study": 1, "spec": spec, "space_base": {}}))
    (d / "trials" / "t1" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "robust_acc": 0.4}) + "\n")
    (d / "trials" / "t1" / "best.pt").write_bytes(b"weights")
    (d / "optuna.db").write_bytes(b"sqlite")
    return d


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _files(tmp: Path) -> dict[str, Path]:
    """Every bad file the table refers to, made fresh in ``tmp``."""
    f: dict[str, Path] = {}
    small = build_model("small_cnn", (1, 8, 8), 10, (0.5,), (0.5,))
    torch.save(small.state_dict(), tmp / "good.pt")
    f["corrupt"] = tmp / "corrupt.pt"
    f["corrupt"].write_bytes(os.urandom(4096))
    data = (tmp / "good.pt").read_bytes()
    f["truncated"] = tmp / "truncated.pt"
    f["truncated"].write_bytes(data[: len(data) // 2])
    f["text"] = tmp / "notes.txt"
    f["text"].write_text("these are my notes, not a checkpoint\n")
    f["arch"] = tmp / "preact.pt"
    torch.save(build_model("preact_resnet18", (3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3).state_dict(), f["arch"])
    f["classes"] = tmp / "three_classes.pt"
    torch.save(build_model("small_cnn", (1, 8, 8), 3, (0.5,), (0.5,)).state_dict(), f["classes"])
    f["evil"] = tmp / "evil.pt"
    torch.save({"model": Evil(tmp / "PWNED")}, f["evil"])
    f["partial"] = tmp / "partial.pt"  # no block2, no fc, one key the model lacks (issue 11)
    torch.save({**{k: v for k, v in small.net.state_dict().items() if not k.startswith(("block2.", "fc."))},
                "projection.weight": torch.zeros(4, 4)}, f["partial"])
    f["digits_cfg"] = tmp / "digits.yaml"
    f["digits_cfg"].write_text("dataset: digits\nmodel: small_cnn\n")
    f["cfg_unknown"] = tmp / "unknown.yaml"
    f["cfg_unknown"].write_text("peak_lrr: 0.1\n")
    f["cfg_python"] = tmp / "python.yaml"
    f["cfg_python"].write_text(f"peak_lr: !!python/object/apply:os.system ['touch {tmp / 'PWNED'}']\n")
    f["space_range"] = tmp / "space_range.yaml"
    f["space_range"].write_text("params:\n  warmup: {uniform: [0.5, 0.1]}\n")
    f["space_cond"] = tmp / "space_cond.yaml"
    f["space_cond"].write_text("params:\n  warmup: {uniform: [0.0, 0.3], when: {sched: sfd}}\n")
    f["space_type"] = tmp / "space_type.yaml"
    f["space_type"].write_text("params:\n  peak_lr: {loguniform: [low, 0.1]}\n")
    f["empty"] = tmp / "empty_root"
    f["empty"].mkdir()
    write_idx(tmp / "idx_trunc", gz=False)
    p = tmp / "idx_trunc" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    f["idx_trunc"] = tmp / "idx_trunc"
    write_idx(tmp / "idx_magic", gz=True)
    p = tmp / "idx_magic" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[2:4] = b"\x09\x99"
    p.write_bytes(gzip.compress(bytes(raw)))
    f["idx_magic"] = tmp / "idx_magic"
    write_cifar(tmp / "cifar_trunc")
    p = tmp / "cifar_trunc" / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:500])
    f["cifar_trunc"] = tmp / "cifar_trunc"
    f["imagefolder_empty"] = tmp / "imgs"
    (f["imagefolder_empty"] / "train").mkdir(parents=True)
    f["empty_study"] = tmp / "studies" / "empty"
    f["empty_study"].mkdir(parents=True)
    (f["empty_study"] / "advtune_study.json").write_text(json.dumps({"spec": {}}))
    f["not_study"] = tmp / "not_a_study"
    f["not_study"].mkdir()
    f["l2_study"] = tmp / "l2_study"  # a study of another threat model (l2, eps 0.5), as advtune writes its marker
    (f["l2_study"] / "trials").mkdir(parents=True)
    spec = {"name": "l2_study", "space": "sfd", "base_config": {"norm": "l2", "eval_eps": 0.5}}
    (f["l2_study"] / "advtune_study.json").write_text(json.dumps({"advtune_study": 1, "spec": spec, "space_base": {}}))
    f["bad_safetensors"] = tmp / "damaged.safetensors"
    f["bad_safetensors"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(64))
    f["converted"] = tmp / "converted"
    f["converted"].mkdir()
    torch.save({"format": "advtune-checkpoint-v1", "kind": "best", "config": {},
                "model": small.state_dict()}, f["converted"] / "best.pt")
    (f["converted"] / "best.safetensors").write_bytes(b"an earlier conversion")
    return f


# (id, argv builder, needles: the problem and the fix, all must appear in the message)
Case = tuple[str, Callable[[dict, Path], list[str]], list[str]]
CASES: list[Case] = [
    # CLI flags
    ("num-samples 0", lambda f, t: ["run", "--num-samples", "0", "--storage-path", str(t / "studies")],
     ["--num-samples 0", "at least 1"]),
    ("fractional GPUs above 1", lambda f, t: ["run", "--gpus-per-trial", "1.5", "--storage-path", str(t / "studies")],
     ["--gpus-per-trial 1.5", "whole GPUs"]),
    ("unknown space", lambda f, t: ["run", "--space", "sdf", "--storage-path", str(t / "studies")],
     ["'sdf'", "preset", "sfd"]),
    ("study name taken", lambda f, t: ["run", "--name", "precious", "--storage-path", str(t / "studies")],
     ["already exists", "advtune resume", "another --name"]),
    ("resume a folder advtune did not write", lambda f, t: ["resume", str(f["not_study"])],
     ["not an advtune study directory", "advtune run"]),
    ("unknown objective", lambda f, t: ["run", "--objective", "clean", "--storage-path", str(t / "studies")],
     ["--objective 'clean'", "robust+clean", "robust:clean>=0.85"]),
    ("warm start from a folder that is not a study", lambda f, t: ["run", "--warm-start", str(f["not_study"]),
                                                                   "--storage-path", str(t / "studies")],
     ["--warm-start", "not_a_study", "not an advtune study directory"]),
    ("warm start from a study of another threat model", lambda f, t: ["run", "--warm-start", str(f["l2_study"]),
                                                                      "--storage-path", str(t / "studies")],
     ["--warm-start", "l2_study", "norm 'l2' there, 'linf' here", "eval_eps", "same norm, eval_eps"]),
    ("export a study with no results", lambda f, t: ["export", str(f["empty_study"])],
     ["no trial with a finished validation", "nothing to export"]),
    # cloud storage (a loopback moto S3 server: see the s3_server fixture)
    ("unknown URI scheme", lambda f, t: ["run", "--storage-path", "ftp://host/studies", "--name", "c"],
     ["ftp://", "unknown URI scheme", "s3://BUCKET/PREFIX"]),
    ("bucket that does not exist", lambda f, t: ["run", "--storage-path", "s3://no-such-bucket/studies", "--name", "c"],
     ["no-such-bucket", "does not exist", "create it"]),
    ("credentials refused (403)", lambda f, t: ["run", "--name", "c", "--storage-path",
                                                f"s3://advtune/studies?endpoint_override={f['s3_denied']}&scheme=http"],
     ["refused these credentials", "403", "role or environment"]),
    ("URI with --assume-shared-storage", lambda f, t: ["run", "--storage-path", "s3://advtune/studies", "--name", "c",
                                                       "--assume-shared-storage"],
     ["cloud URI", "drop --assume-shared-storage"]),
    ("resume a URI holding no study", lambda f, t: ["resume", "s3://advtune/empty/nothing"],
     ["holds no advtune study", "--storage-path URI"]),
    # the final strong evaluation (study/final_eval.py); AutoAttack without its extra: test_autoattack_without…
    ("unknown --final-attack", lambda f, t: ["run", "--final-attack", "aa", "--storage-path", str(t / "studies")],
     ["--final-attack", "invalid choice: 'aa'", "'autoattack'", "'pgd'"]),
    ("--final-top-k 0", lambda f, t: ["run", "--final-top-k", "0", "--storage-path", str(t / "studies")],
     ["--final-top-k 0", "between 1 and the study's 12 trials"]),
    ("--final-top-k above the trials", lambda f, t: ["run", "--num-samples", "4", "--final-top-k", "5",
                                                     "--storage-path", str(t / "studies")],
     ["--final-top-k 5", "between 1 and the study's 4 trials", "leave it out"]),
    ("--final-images 0", lambda f, t: ["run", "--final-images", "0", "--storage-path", str(t / "studies")],
     ["--final-images 0", "at least 1"]),
    # trial configs
    ("unknown --set key", lambda f, t: ["train", "--set", "peak_lrr=0.1"], ["peak_lrr", "did you mean 'peak_lr'"]),
    ("epsilon out of range", lambda f, t: ["train", "--set", "eval_eps=1.5"], ["eval_eps", "out of range", "8/255"]),
    ("epsilon not a number", lambda f, t: ["train", "--set", "eval_eps=eight"], ["eval_eps", "8/255"]),
    ("negative training epsilon", lambda f, t: ["train", "--set", "train_eps=-0.1"], ["train_eps", "out of range"]),
    ("bad choice", lambda f, t: ["train", "--set", "attack=pgdd"], ["attack", "did you mean 'pgd'"]),
    ("wrong type", lambda f, t: ["train", "--set", "batch_size=big"], ["batch_size", "not an integer"]),
    ("bad milestones", lambda f, t: ["train", "--set", "milestones=[0.9,0.5]"], ["milestones", "increasing"]),
    ("malformed --set", lambda f, t: ["train", "--set", "peak_lr"], ["key=value", "--set peak_lr=0.1"]),
    ("missing config file", lambda f, t: ["train", "--config", str(t / "nope.yaml")], ["nope.yaml", "does not exist"]),
    ("unknown key in a config file", lambda f, t: ["train", "--config", str(f["cfg_unknown"])],
     ["unknown.yaml", "peak_lrr", "did you mean"]),
    ("python tag in a config file", lambda f, t: ["train", "--config", str(f["cfg_python"])],
     ["python.yaml", "not valid YAML"]),
    # search-space files
    ("space: inverted range", lambda f, t: ["run", "--space", str(f["space_range"]), "--storage-path", str(t / "studies")],
     ["space_range.yaml", "params.warmup.uniform", "low must be below high"]),
    ("space: bad condition", lambda f, t: ["run", "--space", str(f["space_cond"]), "--storage-path", str(t / "studies")],
     ["space_cond.yaml", "when.sched", "defined above"]),
    ("space: bad type", lambda f, t: ["run", "--space", str(f["space_type"]), "--storage-path", str(t / "studies")],
     ["space_type.yaml", "params.peak_lr.loguniform", "not a number"]),
    # dataset roots
    ("train_size larger than the train split", lambda f, t: ["train", *TINY, "--set", "train_size=100000"],
     ["train_size=100000", "after the validation carve", "or less"]),
    ("cpus per trial not a number", lambda f, t: ["run", "--cpus-per-trial", "all", "--storage-path", str(t / "studies")],
     ["--cpus-per-trial", "'all'", "auto"]),
    ("missing dataset root", lambda f, t: ["train", *TINY, "--set", "dataset=mnist", "--set", f"data_root={t / 'nowhere'}"],
     ["nowhere", "does not exist", "data_root"]),
    ("empty dataset root", lambda f, t: ["train", *TINY, "--set", "dataset=fashion-mnist", "--set",
                                          f"data_root={f['empty']}"], ["empty_root", "train-images-idx3-ubyte"]),
    ("truncated IDX file", lambda f, t: ["train", *TINY, "--set", "dataset=mnist", "--set", f"data_root={f['idx_trunc']}"],
     ["train-images-idx3-ubyte", "truncated"]),
    ("IDX file of the wrong format", lambda f, t: ["train", *TINY, "--set", "dataset=mnist", "--set",
                                                    f"data_root={f['idx_magic']}"], ["train-labels-idx1-ubyte", "magic"]),
    ("truncated CIFAR batch", lambda f, t: ["train", *TINY, "--set", "dataset=cifar10", "--set",
                                             f"data_root={f['cifar_trunc']}"], ["data_batch_3"]),
    ("CIFAR not there, download not asked", lambda f, t: ["train", *TINY, "--set", "dataset=cifar10", "--set",
                                                           f"data_root={f['empty']}"], ["download=true"]),
    ("empty image folder", lambda f, t: ["train", *TINY, "--set", "dataset=imagefolder", "--set",
                                          f"data_root={f['imagefolder_empty']}"], ["imgs"]),
    # checkpoints
    ("corrupt checkpoint", lambda f, t: ["eval", "--checkpoint", str(f["corrupt"]), "--config", str(f["digits_cfg"])],
     ["corrupt.pt", "corrupt", "another copy"]),
    ("truncated checkpoint", lambda f, t: ["eval", "--checkpoint", str(f["truncated"]), "--config", str(f["digits_cfg"])],
     ["truncated.pt", "another copy"]),
    ("not a checkpoint at all", lambda f, t: ["eval", "--checkpoint", str(f["text"]), "--config", str(f["digits_cfg"])],
     ["notes.txt", "not a PyTorch checkpoint"]),
    ("missing checkpoint", lambda f, t: ["eval", "--checkpoint", str(t / "gone.pt")], ["gone.pt", "does not exist"]),
    ("checkpoint of another architecture", lambda f, t: ["train", "--set", f"pretrained={f['arch']}", *TINY[:-2]],
     ["preact.pt", "does not fit this model", "--set model="]),
    ("checkpoint with another class count", lambda f, t: ["eval", "--checkpoint", str(f["classes"]), "--config",
                                                          str(f["digits_cfg"])], ["three_classes.pt", "class count"]),
    ("checkpoint that runs code when unpickled", lambda f, t: ["eval", "--checkpoint", str(f["evil"]), "--config",
                                                               str(f["digits_cfg"])], ["evil.pt", "--trust-checkpoint"]),
    ("partial checkpoint below min_loaded_fraction", lambda f, t: ["train", "--set", f"pretrained={f['partial']}",
                                                                    *TINY[:-2]],
     ["partial.pt", "71%", "min_loaded_fraction=0.75", "--set min_loaded_fraction="]),
    ("unknown normalization", lambda f, t: ["train", *TINY, "--set", "normalization=imagnet"],
     ["normalization", "imagenet", "m1,m2,m3/s1,s2,s3"]),
    ("ImageNet normalization on 1-channel data", lambda f, t: ["train", "--set", f"pretrained={t / 'good.pt'}",
                                                               "--set", "normalization=imagenet", *TINY[:-2]],
     ["3 channels", "data has 1", "normalization=data"]),
    ("eval --limit 0", lambda f, t: ["eval", "--checkpoint", str(t / "good.pt"), "--config", str(f["digits_cfg"]),
                                     "--limit", "0"], ["--limit 0", "at least 1"]),
    ("foreign checkpoint without a config", lambda f, t: ["eval", "--checkpoint", str(t / "good.pt")],
     ["good.pt", "--config"]),
    ("damaged safetensors file", lambda f, t: ["train", *TINY[:-2], "--set", f"pretrained={f['bad_safetensors']}"],
     ["damaged.safetensors", "not a safetensors file", "another copy"]),
    ("timm weights to download", lambda f, t: ["train", *TINY[:-2], "--set", "model=timm:test_resnet", "--set",
                                               "pretrained=timm:DEFAULT"], ["downloads nothing", "pretrained=PATH"]),
    ("convert a checkpoint that is not advtune's", lambda f, t: ["convert", str(t / "good.pt")],
     ["good.pt", "not an advtune checkpoint"]),
    ("convert over an earlier conversion", lambda f, t: ["convert", str(f["converted"] / "best.pt")],
     ["best.safetensors", "--force"]),
    # your own model, data and optimizer
    ("model path that does not import", lambda f, t: ["train", *TINY, "--set", "model=no_such_pkg.nets:build"],
     ["no_such_pkg", "PYTHONPATH"]),
    ("model path naming no function", lambda f, t: ["train", *TINY, "--set", "model=tests.own_code:buid"],
     ["'buid'", "did you mean 'build'"]),
    ("model builder that returns no nn.Module", lambda f, t: ["train", *TINY, "--set",
                                                              "model=tests.own_code:not_a_module"],
     ["not_a_module", "not a torch.nn.Module"]),
    ("model with the wrong number of outputs", lambda f, t: ["train", *TINY, "--set", "model=tests.own_code:wrong_columns"],
     ["(2, 11)", "(2, 10)", "num_classes"]),
    ("model without nn.Linear and no head_module", lambda f, t: ["train", *TINY, "--set",
                                                                 "model=tests.own_code:build_conv_head"],
     ["ConvHead", "--set head_module="]),
    ("head_module naming no submodule", lambda f, t: ["train", *TINY, "--set", "head_module=classifer"],
     ["head_module", "'classifer'", "fc"]),
    ("not an import path", lambda f, t: ["train", "--set", "model=mypkg/nets.py:build"],
     ["mypkg/nets.py:build", "package.module:function"]),
    ("unknown timm model", lambda f, t: ["train", *TINY, "--set", "model=timm:test_resnett"],
     ["timm:test_resnett", "did you mean 'timm:test_resnet'"]),
    ("dataset path that does not import", lambda f, t: ["train", *TINY, "--set", "dataset=no_such_pkg.data:splits"],
     ["no_such_pkg", "PYTHONPATH"]),
    ("dataset factory with pixels outside [0, 1]", lambda f, t: ["train", *TINY, "--set",
                                                                 "dataset=tests.own_code:pixels_0_to_16"],
     ["train[0]", "[0, 15]", "[0, 1]"]),
    ("dataset factory with labels beyond its class count", lambda f, t: ["train", *TINY, "--set",
                                                                         "dataset=tests.own_code:too_few_classes"],
     ["labels", "[0, 5)"]),
    ("dataset factory returning one value", lambda f, t: ["train", *TINY, "--set", "dataset=tests.own_code:only_train"],
     ["(train, test, num_classes)"]),
    ("unknown optimizer", lambda f, t: ["train", "--set", "optimizer=adam"], ["optimizer", "did you mean 'adamw'"]),
    ("betas out of range", lambda f, t: ["train", "--set", "betas=[0.9,1.5]"], ["betas", "[0,1)", "[0.9, 0.999]"]),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, s3_server):
    tmp = tmp_path_factory.mktemp("bad")
    files = _files(tmp)
    files["s3_denied"] = s3_server["denied"]
    study = _study(tmp)
    return tmp, files, study, _digest(study)


@pytest.mark.parametrize("case_id,argv,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_loses_nothing(workspace, capsys, monkeypatch, case_id, argv, needles):
    tmp, files, study, before = workspace
    monkeypatch.chdir(tmp)  # `advtune train` writes under ./runs: keep it in the sandbox
    bucket = _bucket_keys()  # what other tests' studies left there (the cloud tests share this server)
    try:
        rc = main(argv(files, tmp))
    except SystemExit as stop:  # argparse's own errors (a flag's value of the wrong type)
        rc = stop.code
    out, err = capsys.readouterr()
    assert rc != 0
    assert "Traceback" not in err + out
    message = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(message) == 1, err
    for needle in needles:
        assert needle in message[0], (case_id, message[0])
    assert _digest(study) == before, "a bad input changed an existing study"
    assert _bucket_keys() == bucket, "a bad input wrote to the bucket"
    assert not (tmp / "PWNED").exists(), "code in an input file ran"


def _bucket_keys() -> set[str]:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri("s3://advtune/")
    return {i.path for i in fs.get_file_info(pafs.FileSelector("advtune", allow_not_found=True, recursive=True))}


# pyautoattack made unimportable in a fresh interpreter: a None in sys.modules makes `import pyautoattack`
# raise ImportError, exactly as when the extra is not installed (advtune's own code is untouched)
_NO_EXTRA = "import sys; sys.modules['pyautoattack'] = None; from advtune.study.cli import main; sys.exit(main(sys.argv[1:]))"


def _without_autoattack(argv: list[str], cwd: Path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _NO_EXTRA, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_autoattack_without_the_extra_is_refused_before_anything_is_written(workspace, tmp_path):
    tmp, files, study, before = workspace
    spec = json.loads((study / "advtune_study.json").read_text())
    aa_study = tmp_path / "aa"
    shutil.copytree(study, aa_study)
    spec["spec"]["final_attack"] = "autoattack"
    (aa_study / "advtune_study.json").write_text(json.dumps(spec))
    (aa_study / "experiment_state-2026.json").write_text("{}")  # a study that ran, so resume gets that far
    aa_before = _digest(aa_study)
    for attack in ("autoattack", "apgd"):
        res = _without_autoattack(["run", "--final-attack", attack, "--name", "new", "--storage-path",
                                   str(tmp_path / "studies")], tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        (line,) = [ln for ln in res.stderr.splitlines() if "error:" in ln]
        for needle in (f"--final-attack {attack}", "not installed", "pip install 'advtune[autoattack]'",
                       "--final-attack pgd"):
            assert needle in line, line
        assert not (tmp_path / "studies").exists()
    res = _without_autoattack(["resume", str(aa_study)], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert "--final-attack autoattack" in line and "pip install" in line
    assert _digest(aa_study) == aa_before and "resuming" not in res.stdout  # refused before Ray started
    # the default, auto, falls back to PGD-50 with 5 restarts and says so
    res = _without_autoattack(["run", "--dry-run", "--storage-path", str(tmp_path / "studies")], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "PGD-50 with 5 restarts" in res.stdout


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


def test_debug_shows_the_traceback_instead(workspace):
    from advtune.trainables.config import ConfigError

    with pytest.raises(ConfigError, match="peak_lrr"):
        main(["--debug", "train", "--set", "peak_lrr=0.1"])


def test_trust_checkpoint_is_what_unlocks_full_unpickling(workspace, capsys):
    tmp, files, *_ = workspace
    marker = tmp / "TRUSTED_RAN"
    evil = tmp / "evil_trusted.pt"
    torch.save({"model": Evil(marker)}, evil)
    main(["eval", "--checkpoint", str(evil), "--config", str(files["digits_cfg"])])
    assert not marker.exists()
    main(["eval", "--checkpoint", str(evil), "--config", str(files["digits_cfg"]), "--trust-checkpoint"])
    assert marker.exists(), "with --trust-checkpoint the file is fully unpickled (documented as running its code)"
    shutil.rmtree(tmp / "runs", ignore_errors=True)
    capsys.readouterr()

