"""Orchestration overhead: one trial standalone vs the same trial as a one-trial Ray Tune study.

The trial is advtune's default fine-tuning config on digits (PGD-7, sfd), starting from one naturally
pretrained model made before any timing starts, so pretraining is in no figure. Two measurements:

A. What a user waits for (the target): the command ``advtune train`` against the command
   ``advtune run --num-samples 1 --max-epochs E --grace-period E`` (default ``--cpus-per-trial auto``:
   2 CPUs for the lone trial here), each a fresh process from start to exit (Python and torch
   imports, data loading, Ray start and stop, export all included), interleaved over ``--rounds``
   rounds. Each wall splits into the run's epochs (the sum of its ``epoch_seconds``) and the rest, the
   fixed cost; epoch times swing with the machine's load, so the target is judged on
   (epochs + the study's fixed cost) / (epochs + ``advtune train``'s fixed cost) at the standalone
   median epochs, next to the plain ratio of wall medians. The ``sfd`` preset's first starting point
   is exactly the standalone config.
B. Where the time goes, in this process (torch already imported): ``finetune.run(cfg, reporter)``
   (the ``advtune train`` path) against ``study.cli.main(["run", ...])`` with auto CPUs and with
   ``--cpus-per-trial 1``; then 2 trials in 2 slots; then 4 trials with E/5 epochs in 2 slots (to
   time a trial's end to the next trial's first step). Inside a study a driver-side Tune callback
   (advtune's own ``StudyCallback``, subclassed here to stamp each event with ``time.time()``) gives
   a trial's launch, and its first step is ``time its first result arrived − that result's
   epoch_seconds``.

    .venv/bin/python bench/overhead.py            # full: a 35-epoch trial (about a minute), ~14 min
    .venv/bin/python bench/overhead.py --quick    # 2-epoch trials, PGD-2 validation, 1 round, ~2 min

Prints:
    RATIO wall_cli_study1_vs_cli_train=<x> rounds=<n>   (A: wall medians)
    RATIO at_equal_epochs_cli_study1_vs_cli_train=<x> fixed_s_train=<s> fixed_s_study=<s> epochs_s=<s>
                                                        (A: the target; fixed costs added to the same epochs)
    RATIO wall_study1_vs_standalone=<x>                 (B: advtune run, 1 trial, auto CPUs)
    RATIO wall_study1_cpus1_vs_standalone=<x>           (B: same with --cpus-per-trial 1)
    RATIO wall_studyN_vs_standalone=<x> n=2             (B: 2 trials in 2 slots vs 1 trial standalone)
    RATIO startup_s standalone=<s> study1=<s> study1_from_cli=<s>
    RATIO next_trial_gap_s median=<s> max=<s>           (4 trials, 2 slots)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVENTS: dict[str, dict] = {}


def _install_timing_callback() -> None:
    """Subclass advtune's driver-side callback so every trial event carries a wall-clock stamp."""
    import advtune.study.tune_backend as tb

    base = tb.StudyCallback

    class TimedStudyCallback(base):
        def on_trial_start(self, iteration, trials, trial, **info):
            EVENTS.setdefault(trial.trial_id, {"results": []})["start"] = time.time()
            super().on_trial_start(iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            EVENTS.setdefault(trial.trial_id, {"results": []})["results"].append(
                (time.time(), float(result["epoch_seconds"]), result["epoch"], result.get("grad_passes")))
            super().on_trial_result(iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration, trials, trial, **info):
            EVENTS.setdefault(trial.trial_id, {"results": []})["end"] = time.time()
            super().on_trial_complete(iteration, trials, trial, **info)

    tb.StudyCallback = TimedStudyCallback


class _TimedReporter:
    def __init__(self) -> None:
        self.results: list[tuple[float, dict]] = []

    def report(self, metrics, checkpoint_dir):
        import shutil

        self.results.append((time.time(), dict(metrics)))
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def standalone(cfg) -> dict:
    from advtune.trainables import finetune

    rep = _TimedReporter()
    t0 = time.time()
    finetune.run(cfg, rep)
    wall = time.time() - t0
    first_t, first = rep.results[0]
    return {"wall": wall, "startup": first_t - first["epoch_seconds"] - t0,
            "train_s": sum(m["epoch_seconds"] for _, m in rep.results), "grad_passes": rep.results[-1][1]["grad_passes"],
            "best": max(m["robust_acc"] for _, m in rep.results)}


def _set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def _study_argv(root: Path, name: str, n: int, slots: int, epochs: int, sets: list[str], cpus: str = "auto") -> list[str]:
    return ["run", "--name", name, "--storage-path", str(root), "--num-samples", str(n), "--max-epochs", str(epochs),
            "--grace-period", str(epochs), "--concurrency", str(slots), "--cpus-per-trial", cpus,
            "--final-attack", "none", *_set_args(sets)]  # the orchestration, not the strong evaluation (see §7)


def epoch_seconds(metrics: Path) -> float:
    """Training + validation seconds of a run: the sum of its epochs' ``epoch_seconds``."""
    from advtune.study.records import read_jsonl

    return sum(m["epoch_seconds"] for m in read_jsonl(metrics))


def cli_wall(argv: list[str], cwd: Path) -> float:
    """Wall seconds of ``advtune ARGV`` as a fresh process, start to exit."""
    exe = Path(sys.executable).with_name("advtune")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from advtune.study.cli import main; sys.exit(main())"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"advtune {' '.join(argv)} failed with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def study(root: Path, name: str, n: int, slots: int, epochs: int, sets: list[str], cpus: str = "auto") -> dict:
    from advtune.study.cli import main as advtune

    EVENTS.clear()
    argv = _study_argv(root, name, n, slots, epochs, sets, cpus)
    t0 = time.time()
    rc = advtune(argv)
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"advtune run failed with {rc}")
    trials = []
    for tid, ev in EVENTS.items():
        t_res, es, _, _ = ev["results"][0]
        trials.append({"id": tid, "launch": ev["start"], "first_step": t_res - es, "end": ev["end"],
                       "train_s": sum(r[1] for r in ev["results"]), "grad_passes": ev["results"][-1][3]})
    trials.sort(key=lambda t: t["launch"])
    return {"wall": wall, "t0": t0, "trials": trials}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2-epoch trials with PGD-2 validation")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the trial (default 35, quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of measurement A (default 3, quick 1)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path(tempfile.mkdtemp(prefix="advtune-overhead-"))
    os.environ.setdefault("ADVTUNE_CACHE", str(tmp / "cache"))
    _install_timing_callback()

    from advtune.trainables.config import TrialConfig
    from advtune.trainables.pretrain import ensure_pretrained

    epochs = args.epochs or (2 if args.quick else 35)
    rounds = args.rounds or (1 if args.quick else 3)
    overrides = {"val_steps": 2, "pretrain_epochs": 3} if args.quick else {}
    base = TrialConfig().replace(**overrides)
    pre = ensure_pretrained(base)  # once, before any timing
    cfg = base.replace(pretrained=str(pre), epochs=epochs)
    sets = [f"pretrained={pre}"] + [f"{k}={v}" for k, v in overrides.items()]

    print(f"trial: digits, small CNN, PGD-{cfg.train_steps} training, sfd, {epochs} epochs, validation PGD-{cfg.val_steps}; "
          f"{os.cpu_count()} CPUs", flush=True)

    # A: the two commands as a user runs them, interleaved
    cli_train, cli_run = [], []
    for k in range(rounds):
        out = tmp / f"train-{k}"
        wall = cli_wall(["train", "--quiet", "--out", str(out), *_set_args(sets), "--set", f"epochs={epochs}"], tmp)
        cli_train.append((wall, epoch_seconds(out / "metrics.jsonl")))
        wall = cli_wall(_study_argv(tmp / "cli", f"cli-{k}", 1, 2, epochs, sets), tmp)
        cli_run.append((wall, epoch_seconds(next((tmp / "cli" / f"cli-{k}" / "trials").glob("*/metrics.jsonl")))))
        (tw, tt), (rw, rt) = cli_train[-1], cli_run[-1]
        print(f"round {k + 1}: advtune train {tw:.1f} s ({tt:.1f} s of epochs, {tw - tt:.1f} s else), advtune run "
              f"(1 trial) {rw:.1f} s ({rt:.1f} s of epochs, {rw - rt:.1f} s else), wall ratio {rw / tw:.3f}", flush=True)
    cli_ratio = statistics.median(r[0] for r in cli_run) / statistics.median(t[0] for t in cli_train)
    # Epoch times swing by +-20% with the machine's load, which a handful of rounds does not average out;
    # the fixed costs (wall minus epochs: start-up, Ray, checkpoints, export, shutdown) are what orchestration
    # adds, so the target is judged on them, for the same training time (the standalone median)
    fixed_train = statistics.median(w - e for w, e in cli_train)
    fixed_run = statistics.median(w - e for w, e in cli_run)
    train_s = statistics.median(e for _, e in cli_train)
    cli_ratio_fixed = (train_s + fixed_run) / (train_s + fixed_train)

    # B: the breakdown, in this process
    alone = standalone(cfg)
    print(f"standalone: wall {alone['wall']:.1f} s, first step after {alone['startup']:.2f} s, "
          f"grad passes {alone['grad_passes']:,}", flush=True)
    one = study(tmp / "s", "one", 1, 1, epochs, sets)
    one1 = study(tmp / "s", "one-cpus1", 1, 1, epochs, sets, cpus="1")
    pair = study(tmp / "s", "pair", 2, 2, epochs, sets)  # auto: 1 CPU each
    four = study(tmp / "s", "four", 4, 2, max(2, epochs // 5), sets)  # only the hand-over gaps matter here

    def row(label: str, s: dict) -> None:
        t = s["trials"][0]
        print(f"{label:<34} {s['wall']:8.1f} {s['wall'] / alone['wall']:8.2f}x {t['launch'] - s['t0']:9.2f} "
              f"{t['first_step'] - t['launch']:9.2f} {t['first_step'] - s['t0']:10.2f} {t['train_s']:9.1f}")

    print(f"\n{'run':<34} {'wall s':>8} {'x alone':>9} {'launch s':>9} {'start s':>9} {'1st step':>10} {'train s':>9}")
    print(f"{'standalone (advtune train path)':<34} {alone['wall']:8.1f} {1:8.2f}x {0:9.2f} {alone['startup']:9.2f} "
          f"{alone['startup']:10.2f} {alone['train_s']:9.1f}")
    row("advtune run, 1 trial, auto CPUs", one)
    row("advtune run, 1 trial, 1 CPU/trial", one1)
    row("advtune run, 2 trials, 2 slots", pair)
    row("advtune run, 4 trials, 2 slots", four)
    print("(launch: study start -> Tune starts the trial; start: trial launch -> its first step; 1st step: study start -> "
          "first step; train s: sum of the trial's epoch_seconds, i.e. training + validation)")

    gaps = []
    ends = sorted(t["end"] for t in four["trials"])
    for t in four["trials"][2:]:  # trials launched into a slot another trial freed
        freed = max((e for e in ends if e <= t["first_step"]), default=None)
        if freed is not None:
            gaps.append(t["first_step"] - freed)
    print("\n4 trials in 2 slots: trial end -> next trial's first step: " + ", ".join(f"{g:.2f} s" for g in gaps))
    if not gaps:
        gaps = [float("nan")]
    pair_trial_s = statistics.mean(t["train_s"] for t in pair["trials"])
    print(f"2 trials in 2 slots: each trial's train s {pair_trial_s:.1f} vs standalone {alone['train_s']:.1f} "
          f"(1 thread each vs 2 threads)")
    print(f"\nA (medians of {rounds} rounds): advtune train {statistics.median(t[0] for t in cli_train):.1f} s wall, "
          f"{fixed_train:.1f} s of it not epochs; advtune run (1 trial) {statistics.median(r[0] for r in cli_run):.1f} s "
          f"wall, {fixed_run:.1f} s of it not epochs; for {train_s:.1f} s of epochs the study takes "
          f"{train_s + fixed_run:.1f} s against {train_s + fixed_train:.1f} s")
    print(f"\nRATIO wall_cli_study1_vs_cli_train={cli_ratio:.3f} rounds={rounds}")
    print(f"RATIO at_equal_epochs_cli_study1_vs_cli_train={cli_ratio_fixed:.3f} fixed_s_train={fixed_train:.2f} "
          f"fixed_s_study={fixed_run:.2f} epochs_s={train_s:.1f}")
    print(f"RATIO wall_study1_vs_standalone={one['wall'] / alone['wall']:.3f}")
    print(f"RATIO wall_study1_cpus1_vs_standalone={one1['wall'] / alone['wall']:.3f}")
    print(f"RATIO wall_studyN_vs_standalone={pair['wall'] / alone['wall']:.3f} n=2 "
          f"throughput={2 * alone['wall'] / pair['wall']:.3f}")
    print(f"RATIO startup_s standalone={alone['startup']:.3f} study1={one['trials'][0]['first_step'] - one['trials'][0]['launch']:.3f} "
          f"study1_from_cli={one['trials'][0]['first_step'] - one['t0']:.3f}")
    print(f"RATIO next_trial_gap_s median={statistics.median(gaps):.3f} max={max(gaps):.3f}")
    print(f"RATIO tune_part_vs_standalone={(one['trials'][0]['end'] - one['trials'][0]['launch']) / alone['wall']:.3f} "
          f"(trial launch -> trial complete, auto CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
