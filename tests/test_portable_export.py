"""A study's exports survive the study being copied or moved: the files of the study they name (the trial's
best.pt, the study's pretrained starting point) are written relative to the export, and `advtune train
--config` resolves them there."""
from __future__ import annotations

import shutil

import yaml

from advtune.study.cli import main


def test_a_moved_study_exports_and_reruns_its_best_config(small_study, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "small"
    shutil.copytree(small_study, moved, ignore=shutil.ignore_patterns("export", "report"))
    # the study ran at a place that no longer exists (a cluster's shared disk, a bucket's mount)
    marker = moved / "advtune_study.json"
    marker.write_text(marker.read_text().replace(str(small_study.parent), "/nonexistent/cluster-disk"))
    assert main(["export", str(moved), "--top-k", "1"]) == 0
    entry_file = next((moved / "export").glob("01-*.yaml"))
    entry = yaml.safe_load(entry_file.read_text())
    assert entry["checkpoint"].startswith("../trials/") and (entry_file.parent / entry["checkpoint"]).is_file()
    pretrained = entry["config"]["pretrained"]
    assert pretrained == "../pretrained/best.pt", pretrained
    capsys.readouterr()
    out = tmp_path / "rerun"
    assert main(["train", "--config", str(entry_file), "--set", "epochs=1", "--set", "train_steps=1",
                 "--set", "val_steps=1", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert ran["pretrained"] == str((moved / "pretrained" / "best.pt").resolve())
