"""What a researcher reads after a study, and what the CLI says on the way: status (table, JSON, CSV,
--watch), export (ranking, --as-stopped, --pareto, --top-k), resume of a finished study, warm-start
compatibility, CLI hints. Studies here are written file by file as advtune writes them (no Ray, no
training: milliseconds), so every ranking and message can be checked against known numbers."""
from __future__ import annotations

import csv
import io
import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from advtune.study.cli import main
from advtune.study.records import MARKER, StudyRecords

# (trial id, state, epochs run, best robust, best clean, strong robust or None)
TRIALS = (("t_infeasible", "completed", 4, 0.50, 0.80, 0.45),
          ("t_kept", "completed", 4, 0.40, 0.95, 0.38),
          ("t_pruned", "pruned", 1, 0.30, 0.97, None),
          ("t_best_sel", "completed", 4, 0.42, 0.93, 0.30))


def write_study(root: Path, name: str = "s", objective: str = "robust", trials=TRIALS, num_samples: int | None = None,
                final: bool = True, base_config: dict | None = None) -> Path:
    """A study's files as advtune leaves them: marker, per-trial params/metrics/state, final_eval.json."""
    d = root / name
    rec = StudyRecords(d, tensorboard=False)
    for tid, state, epochs, robust, clean, _ in trials:
        rec.on_start(tid, {"peak_lr": 0.02, "warmup": 0.1})
        for e in range(1, epochs + 1):
            rec.on_result(tid, {"epoch": e, "robust_acc": robust - 0.01 * (epochs - e), "clean_acc": clean,
                                "grad_passes": 100 * e, "epoch_seconds": 1.0})
        if state != "running":
            rec.on_end(tid, state)
    spec = {"name": name, "space": "sfd", "base_config": {"epochs": 4, **(base_config or {})}, "max_epochs": 4,
            "num_samples": num_samples or len(trials), "objective": objective, "grace_period": 1,
            "reduction_factor": 2, "final_attack": "pgd", "final_images": 64, "final_top_k": None,
            "storage_path": str(root), "requested_grace": 1, "concurrency": 1, "cpus_per_trial": 1,
            "gpus_per_trial": 0, "address": None, "seed": 0, "max_failures": 0}
    (d / MARKER).write_text(json.dumps({"advtune_study": 1, "spec": spec, "space_base": {}}))
    if final:
        entries = {tid: {"attack": "pgd-50-5", "n": 64, "clean_acc": clean, "robust_acc": strong,
                         "selection_robust_acc": robust, "selection_epoch": epochs, "val_attack": "pgd-10-1",
                         "val_attack_acc": robust, "gap": robust - strong, "flag": False}
                   for tid, _, epochs, robust, clean, strong in trials if strong is not None}
        (d / "final_eval.json").write_text(json.dumps({"settings": {"attack": "pgd", "images": 64}, "trials": entries}))
    return d


# --- one ranking (study/objectives.py) -----------------------------------------------------------------
def test_rank_trials_puts_feasible_first_then_strong_then_selection(tmp_path):
    from advtune.study.export import load_study
    from advtune.study.final_eval import load_final
    from advtune.study.objectives import parse_objective, rank_trials

    d = write_study(tmp_path)
    _, records = load_study(d)
    final = load_final(d)
    ids = lambda rs: [r.trial_id for r in rs]  # noqa: E731
    # robust: the strong figure first (t_best_sel's 42% selection is only 30% strong), then by selection
    assert ids(rank_trials(records, final, parse_objective("robust"))) == ["t_infeasible", "t_kept", "t_best_sel",
                                                                           "t_pruned"]
    # a clean floor of 90%: t_infeasible (clean 80%) goes last although its strong figure is the best
    assert ids(rank_trials(records, final, parse_objective("robust:clean>=0.9"))) == ["t_kept", "t_best_sel",
                                                                                      "t_pruned", "t_infeasible"]
    assert ids(rank_trials(records, {}, None)) == ["t_infeasible", "t_best_sel", "t_kept", "t_pruned"]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_status_ranks_with_the_studys_clean_floor(tmp_path, capsys, fmt):
    d = write_study(tmp_path, objective="robust:clean>=0.9")
    assert main(["status", str(d), "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "table":
        rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith("t_")]
    elif fmt == "json":
        rows = [t["trial_id"] for t in json.loads(out)["trials"]]
    else:
        rows = [r["trial_id"] for r in csv.DictReader(io.StringIO(out))]
    assert rows == ["t_kept", "t_best_sel", "t_pruned", "t_infeasible"]


def test_end_of_run_strong_table_ranks_with_the_clean_floor(tmp_path):
    from advtune.study.export import load_study
    from advtune.study.final_eval import load_final, strong_table
    from advtune.study.objectives import parse_objective

    d = write_study(tmp_path, objective="robust:clean>=0.9")
    _, records = load_study(d)
    table = strong_table(records, load_final(d), parse_objective("robust:clean>=0.9"))
    rows = [ln.split()[0] for ln in table.splitlines() if ln.startswith("t_")]
    assert rows == ["t_kept", "t_best_sel", "t_infeasible"]


# --- status ---------------------------------------------------------------------------------------------
def test_status_json_and_csv_hold_every_trial_with_both_figures(tmp_path, capsys):
    d = write_study(tmp_path)
    assert main(["status", str(d), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["study"] == "s" and data["state"] == "complete" and data["objective"] == "robust"
    by_id = {t["trial_id"]: t for t in data["trials"]}
    assert by_id["t_kept"]["robust_acc"] == pytest.approx(0.40) and by_id["t_kept"]["strong_robust_acc"] == 0.38
    assert by_id["t_pruned"]["strong_robust_acc"] is None and by_id["t_pruned"]["state"] == "pruned"
    assert by_id["t_pruned"]["epochs_run"] == 1 and "ASHA" in by_id["t_pruned"]["stop_reason"]
    assert [t["rank"] for t in data["trials"]] == [1, 2, 3, 4]
    assert by_id["t_kept"]["params"] == {"peak_lr": 0.02, "warmup": 0.1}
    assert main(["status", str(d), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and rows[0]["trial_id"] == "t_infeasible"
    assert float(rows[0]["strong_robust_acc"]) == pytest.approx(0.45) and rows[0]["param.peak_lr"] == "0.02"
    assert rows[-1]["strong_robust_acc"] == ""  # no strong figure: an empty cell, not a number


def test_status_legend_explains_only_the_printed_columns(tmp_path, capsys):
    d = write_study(tmp_path / "a", final=False)
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("trial"))
    assert "strong%" not in header and "strong%" not in out  # no strong evaluation: no column, no legend for it
    assert "robust% =" in out and "clean% =" in out
    d = write_study(tmp_path / "b")
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    assert "strong%" in next(ln for ln in out.splitlines() if ln.startswith("trial")) and "strong% =" in out
    assert "clean>=" not in out  # no floor: no feasibility column
    d = write_study(tmp_path / "c", objective="robust:clean>=0.9")
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    assert "clean>=90%" in next(ln for ln in out.splitlines() if ln.startswith("trial")) and "clean>=90% =" in out


def test_status_of_a_running_study_does_not_advise_resume_and_watch_follows_it(tmp_path, capsys):
    from advtune.study import liveness

    trials = TRIALS[:2] + (("t_run", "running", 2, 0.2, 0.9, None),)
    d = write_study(tmp_path, trials=trials, num_samples=6, final=False)
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out  # no driver: an interrupted study, which resume continues
    assert "interrupted" in out and f"advtune resume {d}" in out
    liveness.driver_started(d)  # this process plays the study's driver
    try:
        assert main(["status", str(d)]) == 0
        out = capsys.readouterr().out
        assert "running" in out and "advtune resume" not in out
        timer = threading.Timer(0.6, liveness.driver_ended, args=(d,))
        timer.start()
        assert main(["status", str(d), "--watch", "0.2"]) == 0  # returns once the driver has ended
        timer.join()
    finally:
        liveness.driver_ended(d)
    out = capsys.readouterr().out
    assert out.count("trial ") >= 2  # redrawn while it ran
    assert "no longer running" in out


def test_status_of_a_path_that_does_not_exist_lists_the_studies(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "advtune_runs", name="first")
    write_study(tmp_path / "advtune_runs", name="second")
    rc = main(["status", "advtune_runs/frist"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "advtune_runs/frist does not exist" in line and "advtune_runs/first" in line and "advtune_runs/second" in line


# --- export ---------------------------------------------------------------------------------------------
def test_export_of_a_pruned_trial_says_the_rerun_trains_the_full_schedule(tmp_path, capsys):
    d = write_study(tmp_path)
    assert main(["export", str(d), "--top-k", "4"]) == 0
    pruned = next((d / "export").glob("*-t_pruned.yaml"))
    text = pruned.read_text()
    entry = yaml.safe_load(text)
    assert entry["config"]["epochs"] == 4  # the configuration, as searched
    assert "stopped by ASHA at epoch 1 of 4" in entry["rerun"] and "full 4-epoch schedule" in entry["rerun"]
    assert "--as-stopped" in entry["rerun"] and entry["checkpoint"] in entry["rerun"]
    assert text.startswith("#") and "full 4-epoch schedule" in text.splitlines()[0] + text.splitlines()[1]
    done = yaml.safe_load(next((d / "export").glob("*-t_kept.yaml")).read_text())
    assert "stopped" not in done["rerun"]
    assert main(["export", str(d), "--top-k", "4", "--as-stopped", "--out", str(tmp_path / "stopped")]) == 0
    entry = yaml.safe_load(next((tmp_path / "stopped").glob("*-t_pruned.yaml")).read_text())
    assert entry["config"]["epochs"] == 1  # the length it ran
    assert "compresses the whole 4-epoch schedule" in entry["rerun"] and "not the same run" in entry["rerun"]
    assert yaml.safe_load(next((tmp_path / "stopped").glob("*-t_kept.yaml")).read_text())["config"]["epochs"] == 4


def test_export_top_k_0_is_refused(tmp_path, capsys):
    d = write_study(tmp_path)
    assert main(["export", str(d), "--top-k", "0"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert "--top-k 0" in line and "at least 1" in line
    assert not (d / "export").exists()


def test_pareto_export_writes_its_own_folder_and_names_its_figures(tmp_path, capsys):
    d = write_study(tmp_path)
    assert main(["export", str(d), "--top-k", "3"]) == 0
    assert main(["export", str(d), "--pareto"]) == 0
    out = capsys.readouterr().out
    top = sorted(p.name for p in (d / "export").glob("*.yaml"))
    assert len(top) == 4 and "best.yaml" in top  # --top-k's files untouched, no second 02-*
    front = sorted(p.name for p in (d / "export" / "pareto").glob("*.yaml"))
    assert "pareto.yaml" in front and len(front) >= 2
    index = yaml.safe_load((d / "export" / "pareto" / "pareto.yaml").read_text())
    assert "robust_acc" in index["figures"] and "clean_acc" in index["figures"]
    assert "figures" in out and "clean" in out


def test_export_of_a_running_study_warns_on_stderr(tmp_path, capsys):
    from advtune.study import liveness

    d = write_study(tmp_path, num_samples=8)
    liveness.driver_started(d)
    try:
        assert main(["export", str(d)]) == 0
    finally:
        liveness.driver_ended(d)
    out, err = capsys.readouterr()
    assert "warning:" in err and "still running" in err and "warning" not in out


# --- resume of a finished study --------------------------------------------------------------------------
def test_resume_of_a_running_study_is_refused_and_touches_nothing(tmp_path, capsys):
    # a second driver would run the study's trials twice (commands._refuse_running); refused before Ray starts
    import sys

    from advtune.study import liveness

    d = write_study(tmp_path, num_samples=8)  # 8 asked, fewer ended: resumable
    (d / "experiment_state-2026.json").write_text("{}")
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    ray_loaded = "ray" in sys.modules
    liveness.driver_started(d)  # this process plays the running driver
    try:
        assert main(["resume", str(d)]) == 2
    finally:
        liveness.driver_ended(d)
    out, err = capsys.readouterr()
    assert "study s is running" in err and "on this machine" in err and "twice" in err
    assert f"advtune status {d} --watch" in err and "resuming" not in out
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    if not ray_loaded:
        assert "ray" not in sys.modules


def test_resume_of_a_finished_study_says_complete_without_starting_ray(tmp_path, capsys):
    import sys

    d = write_study(tmp_path, trials=[t for t in TRIALS if t[5] is not None])
    (d / "experiment_state-2026.json").write_text("{}")
    for t in ("t_infeasible", "t_kept", "t_best_sel"):
        (d / "trials" / t / "best.pt").write_bytes(b"weights")
    ray_loaded = "ray" in sys.modules
    assert main(["resume", str(d)]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "nothing to resume" in out and "resuming" not in out
    if not ray_loaded:
        assert "ray" not in sys.modules


# --- warm start: the validation attack and images must match -------------------------------------------------
@pytest.mark.parametrize("key, there, here", [("val_step_size", 0.002, None),
                                              ("data_root", "/data/a", "/data/b"),
                                              ("image_size", 64, 96)])
def test_warm_start_refuses_a_study_validated_with_another_attack_or_images(tmp_path, capsys, key, there, here):
    data = {"dataset": "imagefolder"} if key != "val_step_size" else {}
    base = {**data, key: there, **({"data_root": "/data/a"} if key == "image_size" else {})}
    old = write_study(tmp_path, name="old", base_config=base)
    argv = ["run", "--dry-run", "--warm-start", str(old), "--storage-path", str(tmp_path / "new")]
    for k, v in {**base, key: here}.items():
        argv += ["--set", f"{k}={'null' if v is None else v}"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "--warm-start" in line and key in line and "not comparable" in line


def test_warm_start_takes_an_unset_val_step_size_as_its_default_value(tmp_path):
    from advtune.study.warm_start import _check_threat
    from advtune.trainables.config import TrialConfig

    cfg = TrialConfig()
    _check_threat("old", cfg, cfg.replace(val_step_size=2.5 * cfg.eval_eps / cfg.val_steps))  # the same attack


# --- CLI hints ------------------------------------------------------------------------------------------
def test_set_with_a_space_gets_a_hint(capsys):
    rc = main(["train", "--set", "peak_lr", "0.1"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "--set peak_lr=0.1" in line and "KEY=VALUE" in line


def test_eval_convergence_message_agrees_with_its_verdict():
    from advtune.trainables.sanity import converged_check

    c = converged_check(base_correct=100, stronger_correct=97, n=303, steps=50, restarts=10)  # 0.99 points
    assert c.passed and "< 1" in c.line and "1.0 points" not in c.line
    c = converged_check(base_correct=100, stronger_correct=97, n=300, steps=50, restarts=10)  # exactly 1 point
    assert not c.passed and "≥ 1" in c.line
    c = converged_check(base_correct=100, stronger_correct=100, n=300, steps=50, restarts=10)
    assert c.passed and "0 points" in c.line or "0.0 points" in c.line


def test_autoattack_reports_progress_per_attack_and_chunk():
    """`advtune eval`'s AutoAttack ran ~25 minutes without a line; now each attack and chunk says so."""
    pytest.importorskip("pyautoattack")
    import torch
    from torch.utils.data import TensorDataset

    from advtune.trainables.data import load_splits
    from advtune.trainables.evaluate import evaluate_autoattack
    from advtune.trainables.models import build_model

    s = load_splits("digits", None, 0.2, 0)
    torch.manual_seed(0)
    model = build_model("small_cnn", s.input_shape, s.num_classes, s.mean, s.std).eval()
    x, y = s.test.tensors
    keep = model(x).argmax(1) == y  # images it gets right, so there is something to attack
    if int(keep.sum()) < 4:
        keep[:20] = True
    split = TensorDataset(x[keep][:20], y[keep][:20])
    lines: list[str] = []
    res = evaluate_autoattack(model, split, "linf", 0.1, batch_size=8, attacks=("apgd-ce",), progress=lines.append)
    assert res.n == 20
    assert any(ln.startswith("AutoAttack: running apgd-ce") for ln in lines), lines
    assert any("apgd-ce - 1/" in ln for ln in lines) or any("no robust datapoints" in ln for ln in lines)
    assert any("robust accuracy after APGD-CE" in ln for ln in lines) or any("no robust" in ln for ln in lines)
    import logging

    logger = logging.getLogger("auto-attack")  # left as it was found
    assert logger.propagate and not logger.handlers


def test_a_driver_on_another_machine_runs_while_its_heartbeat_is_fresh(tmp_path, capsys):
    """A cloud study's driver record (pulled from the bucket) names another machine, whose process a reader cannot
    check: the study is running while the record's heartbeat is fresh, interrupted once STALE_BEATS beats are
    missing (a driver killed there, or its machine lost), instead of running for ever."""
    import json
    import time

    from advtune.study import liveness

    d = write_study(tmp_path, trials=TRIALS[:2] + (("t_run", "running", 2, 0.2, 0.9, None),), num_samples=6, final=False)
    record = {"pid": 4242, "host": "head-node-elsewhere", "started": time.time() - 600, "period": 30}
    (d / liveness.FILE).write_text(json.dumps({**record, "beat": time.time() - 20}))
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "head-node-elsewhere, last heartbeat 2" in out and "advtune resume" not in out
    (d / liveness.FILE).write_text(json.dumps({**record, "beat": time.time() - (liveness.STALE_BEATS * 30 + 5)}))
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and f"advtune resume {d}" in out
    (d / liveness.FILE).write_text(json.dumps(record))  # a record without a heartbeat (a shared-path study): running
    assert main(["status", str(d)]) == 0
    assert "not checked from here" in capsys.readouterr().out


def test_a_readers_copy_of_a_cloud_drivers_record_does_not_stop_it_pulling(tmp_path):
    """On the driver's machine `advtune status URI` reads the driver's staging folder as it is (a pull would replace
    it under the running driver); a reader with a folder of its own (another ADVTUNE_CACHE) holds a copy of the
    record pulled from the bucket, which must not stop it pulling fresh records (storage.open_study asks this)."""
    import shutil

    from advtune.study import liveness

    driver_dir, reader_dir = tmp_path / "staging", tmp_path / "reader"
    driver_dir.mkdir()
    reader_dir.mkdir()
    liveness.driver_started(driver_dir, period=30)
    shutil.copy(driver_dir / liveness.FILE, reader_dir / liveness.FILE)  # what a pull brings
    try:
        assert liveness.driver_of(reader_dir).local  # this process, alive, on this machine
        assert liveness.driven_here(driver_dir) and not liveness.driven_here(reader_dir)
    finally:
        liveness.driver_ended(driver_dir)
    assert not liveness.driven_here(driver_dir)
