"""Orchestration overhead: one trial standalone vs the same trial as a one-trial Ray Tune study.

The trial is advtune's default fine-tuning config on digits (PGD-7, sfd), starting from one naturally
pretrained model made before any timing starts, so pretraining is in no figure. Runs, one after the
other:

1. standalone: ``finetune.run(cfg, reporter)`` in this process (the ``advtune train`` path);
2. ``advtune run --num-samples 1 --max-epochs E --grace-period E --concurrency 1`` (the default
   ``--cpus-per-trial 1``), then the same with ``--cpus-per-trial 2`` — its first starting point is
   exactly the standalone config;
3. ``advtune run --num-samples 2 --concurrency 2`` (N trials in N = 2 slots);
4. ``advtune run --num-samples 4 --concurrency 2`` with E/5 epochs per trial (to time a trial's end
   to the next trial's first step).

Every study is timed from ``study.cli.main`` being called (Ray start and stop included) and, inside
it, with a driver-side Tune callback (advtune's own ``StudyCallback``, subclassed here to stamp each
event with ``time.time()``): a trial's first step is ``time its first result arrived − that
result's epoch_seconds``.

    .venv/bin/python bench/overhead.py            # full: a trial of 25 epochs (about a minute standalone), ~6 min
    .venv/bin/python bench/overhead.py --quick    # 2-epoch trials, PGD-2 validation, ~1.5 min

Prints:
    RATIO wall_study1_vs_standalone=<x>              (advtune run, 1 trial, default 1 CPU per trial)
    RATIO wall_study1_cpus2_vs_standalone=<x>        (same with --cpus-per-trial 2)
    RATIO wall_studyN_vs_standalone=<x> n=2          (2 trials in 2 slots vs 1 trial standalone)
    RATIO startup_s standalone=<s> study1=<s> study1_from_cli=<s>
    RATIO next_trial_gap_s median=<s> max=<s>       (4 trials, 2 slots)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVENTS: dict[str, dict] = {}


def _install_timing_callback() -> None:
    """Subclass advtune's driver-side callback so every trial event carries a wall-clock stamp."""
    import study.tune_backend as tb

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
    from trainables import finetune

    rep = _TimedReporter()
    t0 = time.time()
    finetune.run(cfg, rep)
    wall = time.time() - t0
    first_t, first = rep.results[0]
    return {"wall": wall, "startup": first_t - first["epoch_seconds"] - t0,
            "train_s": sum(m["epoch_seconds"] for _, m in rep.results), "grad_passes": rep.results[-1][1]["grad_passes"],
            "best": max(m["robust_acc"] for _, m in rep.results)}


def study(root: Path, name: str, n: int, slots: int, epochs: int, sets: list[str], cpus: float = 1.0) -> dict:
    from study.cli import main as advtune

    EVENTS.clear()
    argv = ["run", "--name", name, "--storage-path", str(root), "--num-samples", str(n), "--max-epochs", str(epochs),
            "--grace-period", str(epochs), "--concurrency", str(slots), "--cpus-per-trial", f"{cpus:g}"]
    for s in sets:
        argv += ["--set", s]
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
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the trial (default 25, quick 2)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path(tempfile.mkdtemp(prefix="advtune-overhead-"))
    os.environ.setdefault("ADVTUNE_CACHE", str(tmp / "cache"))
    _install_timing_callback()

    from trainables.config import TrialConfig
    from trainables.pretrain import ensure_pretrained

    epochs = args.epochs or (2 if args.quick else 25)
    overrides = {"val_steps": 2, "pretrain_epochs": 3} if args.quick else {}
    base = TrialConfig().replace(**overrides)
    pre = ensure_pretrained(base)  # once, before any timing
    cfg = base.replace(pretrained=str(pre), epochs=epochs)
    sets = [f"pretrained={pre}"] + [f"{k}={v}" for k, v in overrides.items()]

    print(f"trial: digits, small CNN, PGD-{cfg.train_steps} training, sfd, {epochs} epochs, validation PGD-{cfg.val_steps}; "
          f"{os.cpu_count()} CPUs", flush=True)
    alone = standalone(cfg)
    print(f"standalone: wall {alone['wall']:.1f} s, first step after {alone['startup']:.2f} s, "
          f"grad passes {alone['grad_passes']:,}", flush=True)
    one = study(tmp / "s", "one", 1, 1, epochs, sets)
    one2 = study(tmp / "s", "one-cpus2", 1, 1, epochs, sets, cpus=2.0)
    pair = study(tmp / "s", "pair", 2, 2, epochs, sets)
    four = study(tmp / "s", "four", 4, 2, max(2, epochs // 5), sets)  # only the hand-over gaps matter here

    def row(label: str, s: dict) -> None:
        t = s["trials"][0]
        print(f"{label:<34} {s['wall']:8.1f} {s['wall'] / alone['wall']:8.2f}x {t['launch'] - s['t0']:9.2f} "
              f"{t['first_step'] - t['launch']:9.2f} {t['first_step'] - s['t0']:10.2f} {t['train_s']:9.1f}")

    print(f"\n{'run':<34} {'wall s':>8} {'x alone':>9} {'launch s':>9} {'start s':>9} {'1st step':>10} {'train s':>9}")
    print(f"{'standalone (advtune train path)':<34} {alone['wall']:8.1f} {1:8.2f}x {0:9.2f} {alone['startup']:9.2f} "
          f"{alone['startup']:10.2f} {alone['train_s']:9.1f}")
    row("advtune run, 1 trial, 1 CPU/trial", one)
    row("advtune run, 1 trial, 2 CPU/trial", one2)
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
    print(f"\nRATIO wall_study1_vs_standalone={one['wall'] / alone['wall']:.3f}")
    print(f"RATIO wall_study1_cpus2_vs_standalone={one2['wall'] / alone['wall']:.3f}")
    print(f"RATIO wall_studyN_vs_standalone={pair['wall'] / alone['wall']:.3f} n=2 "
          f"throughput={2 * alone['wall'] / pair['wall']:.3f}")
    print(f"RATIO startup_s standalone={alone['startup']:.3f} study1={one['trials'][0]['first_step'] - one['trials'][0]['launch']:.3f} "
          f"study1_from_cli={one['trials'][0]['first_step'] - one['t0']:.3f}")
    print(f"RATIO next_trial_gap_s median={statistics.median(gaps):.3f} max={max(gaps):.3f}")
    print(f"RATIO tune_part_vs_standalone={(one['trials'][0]['end'] - one['trials'][0]['launch']) / alone['wall']:.3f} "
          f"(trial launch -> trial complete, 1 CPU/trial)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
