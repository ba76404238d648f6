"""The Python API (advtune.run_study, load_study, train, evaluate): the CLI's options and defaults, a study read
into pandas, one trial trained and evaluated, typed errors."""
from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import pytest

import advtune
from advtune.study.cli import build_parser
from advtune.study.errors import StudyError
from advtune.trainables.checkpoints import CheckpointError
from advtune.trainables.config import ConfigError


def _cli_options(command: str, skip=()) -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.default for a in sub._actions if a.option_strings and a.dest not in ("help", *skip)}


def test_run_study_takes_every_option_of_advtune_run_with_its_default():
    cli = _cli_options("run")
    assert len(cli) >= 25 and "num_samples" in cli and "tracker" in cli
    params = inspect.signature(advtune.run_study).parameters
    assert {k: p.default for k, p in params.items() if k != "base"} == cli
    assert advtune.run_options() == cli
    ev = inspect.signature(advtune.evaluate).parameters
    assert set(ev) - {"checkpoint"} == set(_cli_options("eval", skip=("checkpoint",)))
    assert ev["steps"].default == 50 and ev["restarts"].default == 10 and ev["split"].default == "test"


def test_run_study_refuses_what_the_cli_refuses_with_typed_errors(tmp_path, capsys):
    with pytest.raises(StudyError, match="num_sample: not an option of advtune run"):
        advtune.run_study(num_sample=3)
    with pytest.raises(StudyError, match="sampler='grid' is not one of tpe, random"):
        advtune.run_study(sampler="grid", dry_run=True)
    with pytest.raises(StudyError, match="cpus_per_trial='two'"):
        advtune.run_study(cpus_per_trial="two", dry_run=True)
    with pytest.raises(StudyError, match="--num-samples 0 is out of range"):
        advtune.run_study(num_samples=0, dry_run=True, storage_path=str(tmp_path))
    with pytest.raises(ConfigError, match="peak_lr"):
        advtune.run_study(set=["peak_lr=-1"], dry_run=True, storage_path=str(tmp_path))
    # a dry run resolves the study exactly as `advtune run --dry-run` does, from a TrialConfig base
    from advtune.trainables.config import TrialConfig

    assert advtune.run_study(TrialConfig(dataset="digits", val_steps=4), set={"seed": 3}, num_samples=3,
                             cpus_per_trial="auto", dry_run=True, name="py", storage_path=str(tmp_path)) is None
    out = capsys.readouterr().out
    assert "trials     3 (TPE, seed 0)" in out and "validation PGD-4" in out and "auto CPUs" in out
    assert not (tmp_path / "py").exists()


def test_load_study_reads_the_shared_small_study_into_pandas(small_study):
    from advtune.study.export import load_study as records_of
    from advtune.study.final_eval import load_final

    study = advtune.load_study(small_study)
    marker, records = records_of(small_study)
    final = load_final(small_study)["trials"]
    df = study.trials
    assert len(df) == len(records) == 6 and df["trial_id"].is_unique
    for rec in records:
        row = df.set_index("trial_id").loc[rec.trial_id]
        assert row["state"] == rec.state and row["grad_passes"] == rec.grad_passes
        if rec.best is None:  # no validation to rank it by (a diverged or collapsed trial)
            assert row["robust_acc"] is None or row["robust_acc"] != row["robust_acc"]  # None or NaN
        else:
            assert row["robust_acc"] == pytest.approx(rec.best["robust_acc"])
            assert row["clean_acc"] == pytest.approx(rec.best["clean_acc"])
        assert row["checkpoint"] == str(rec.directory / "best.pt")
        for name, value in rec.params.items():
            assert row[f"params_{name}"] == (pytest.approx(value) if isinstance(value, float) else value)
        if rec.trial_id in final:
            assert row["strong_robust_acc"] == pytest.approx(final[rec.trial_id]["robust_acc"])
        else:
            assert row["strong_robust_acc"] is None or row["strong_robust_acc"] != row["strong_robust_acc"]  # NaN
    # best = what `advtune export` puts first; the rows are in that ranking
    paths = study.export(top_k=6, format="json", out=small_study.parent / "api-export")  # `advtune export`'s files
    entries = json.loads(paths[0].read_text())
    assert len(paths) == 1 + len(entries["entries"]) and all(p.exists() for p in paths)
    assert study.best.trial_id == entries["entries"][0]["trial_id"]
    assert list(df["trial_id"][: len(entries["entries"])]) == [e["trial_id"] for e in entries["entries"]]
    assert study.best.config == advtune.Study(small_study).trial(study.best.trial_id).config
    mine, exported = study.best.config.to_dict(), entries["entries"][0]["config"]
    assert {k: v for k, v in mine.items() if k != "pretrained"} == {k: v for k, v in exported.items() if k != "pretrained"}
    # the starting point: an absolute path here (reruns from anywhere), the same file as the export names
    assert Path(mine["pretrained"]).is_absolute()
    assert (paths[0].parent / exported["pretrained"]).resolve() == Path(mine["pretrained"]).resolve()
    # history: the trial's metrics.jsonl, one row per validation
    hist = study.history(study.best.trial_id)
    assert list(hist["epoch"]) == [m["epoch"] for m in next(r for r in records if r.trial_id == study.best.trial_id).metrics]
    # the Pareto set: no trial beats a member on both clean and robust accuracy
    front = study.pareto()
    assert front
    for t in front:
        assert not any(o.best["clean_acc"] >= t.best["clean_acc"] and o.best["robust_acc"] >= t.best["robust_acc"]
                       and (o.best["clean_acc"], o.best["robust_acc"]) != (t.best["clean_acc"], t.best["robust_acc"])
                       for o in study.trial_list() if o.best)
    with pytest.raises(StudyError, match="has no trial 'nope'"):
        study.history("nope")


def test_a_moved_studys_best_config_names_its_starting_point_where_the_study_is_now(small_study, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(small_study, moved, ignore=shutil.ignore_patterns("tensorboard", "last.pt"))
    best = advtune.load_study(moved).best
    assert best.config.pretrained == str(moved.resolve() / "pretrained" / "best.pt")  # not the old folder's
    assert best.checkpoint == str(moved / "trials" / best.trial_id / "best.pt")


def test_load_study_refuses_a_folder_that_is_not_a_study(tmp_path):
    with pytest.raises(StudyError, match="is not an advtune study directory"):
        advtune.load_study(tmp_path)


def test_train_and_evaluate_return_results(tmp_path, tiny_config):
    res = advtune.train(tiny_config.replace(epochs=1), tmp_path / "run")
    assert isinstance(res, advtune.TrainResult) and res.status == "completed"
    assert res.checkpoint.exists() and res.grad_passes > 0 and 0 <= res.best["robust_acc"] <= 1
    assert list(res.history["epoch"]) == [1]
    with pytest.raises(ConfigError, match="already holds a run"):
        advtune.train(tiny_config, tmp_path / "run")
    ev = advtune.evaluate(res.checkpoint, attack="pgd", steps=2, restarts=1, limit=40, no_sanity=True, split="val")
    assert isinstance(ev, advtune.EvalResult) and ev.images == 40 and ev.split == "val"
    assert ev.results[0]["n"] == 40 and ev.robust_acc <= ev.clean_acc
    with pytest.raises(CheckpointError):
        advtune.evaluate(tmp_path / "missing.pt", no_sanity=True)
