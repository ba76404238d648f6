"""One namespace: what `pip install .` puts on the import path is `advtune` (and its dist-info and console
script) only, presets included; a user's own trainables.py, study.py or search_spaces.py in the working folder
breaks nothing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "advtune", "study", "trainables", "search_spaces")


def test_pip_install_puts_only_advtune_on_the_import_path(tmp_path):
    src = tmp_path / "src"  # a copy: an in-tree build would leave build/ and egg-info in the repository
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(REPO / name, src / name)
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(src)], capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    top = {p.name for p in target.iterdir()}
    assert top - {"bin"} == {"advtune", "advtune-0.1.0.dist-info"}, top
    assert (target / "bin" / "advtune").exists()  # the console script
    presets = sorted(p.name for p in (target / "advtune" / "search_spaces" / "presets").glob("*.yaml"))
    assert presets == sorted(p.name for p in (REPO / "search_spaces" / "presets").glob("*.yaml")) and presets
    # imported from the install, in a folder outside the repository: advtune and its presets load; no bare names
    probe = ("import importlib.util, advtune, advtune.study.cli\n"
             "from advtune.search_spaces import load_space\n"
             "from advtune.trainables.config import TrialConfig\n"
             f"assert advtune.__file__.startswith({str(target)!r}), advtune.__file__\n"
             "assert load_space('sfd', TrialConfig()).params\n"
             "print([n for n in ('study', 'trainables', 'search_spaces') if importlib.util.find_spec(n)])\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(target)}, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


USER_MODEL = '''from torch import nn


def build(num_classes, input_shape):
    """The user's own model, in the user's own trainables.py."""
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))
'''


def test_a_users_trainables_study_and_search_spaces_modules_break_nothing(tmp_path):
    (tmp_path / "trainables.py").write_text(USER_MODEL)
    for name in ("study", "search_spaces"):  # advtune must never import these
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('advtune imported the user\\'s own {name}.py')\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "ADVTUNE_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "advtune.study.cli"]
    dry = subprocess.run([*cli, "run", "--dry-run", "--num-samples", "2"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "trials     2" in dry.stdout
    train = subprocess.run([*cli, "train", "--out", "runs/own", "--set", "model=trainables:build", "--set",
                            "pretrained=none", "--set", "epochs=1", "--set", "attack=none", "--set", "peak_lr=0.5",
                            "--set", "val_steps=1", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert (tmp_path / "runs" / "own" / "best.pt").exists()
