"""Search efficiency: compute each strategy needs to find a robust configuration of the `sfd` space.

Three strategies over the same space (``search_spaces/presets/sfd.yaml``), the same base config and
the same naturally pretrained starting point (made once, before any study), per seed:

(a) random search, every trial run to completion (Optuna RandomSampler, Tune's FIFO scheduler);
(b) random search + ASHA (advtune's ASHA settings: time attribute epoch, robust_acc, its rungs);
(c) advtune's default: ``study.tune_backend.make_tuner`` as ``advtune run`` builds it (TPE with the
    space's starting points first + ASHA, PRUNED trials reported to Optuna as such); ``--objective``
    and ``--sampler`` run (c) as ``advtune run --objective/--sampler`` would, to compare other defaults.

(a) and (b) are built from the same ``study.tune_backend`` pieces as (c) (``_trainable``,
``PruningAwareOptunaSearch``, ``StudyCallback``), only the sampler / scheduler differ; all run on one
local Ray with 2 trial slots. Compute is ``grad_passes`` (forward+backward passes over single
images, validation not counted), summed over trials in the order they finished. For each seed the
target is the best robust validation accuracy (a) found, minus 1 point; the script prints the
compute each strategy spent when its best-so-far first reached the target, as a fraction of (a)'s
total compute, and plots best-so-far against compute into ``docs/img/bench-search.png``.

    .venv/bin/python bench/search_efficiency.py            # full: Fashion-MNIST subset, 12 trials x 4 epochs, seeds 0 1 2 (~60 min)
    .venv/bin/python bench/search_efficiency.py --quick    # digits, 4 trials x 2 epochs, PGD-2 validation, seed 0 (~1 min)

Full mode's problem (``FULL_SETS``): Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package,
a fixed class-stratified subset of 2,000 training images (``train_size``), 1,000 validation images
carved from the training split, the test split untouched; ``small_cnn-16``; linf eps 0.1; FGSM-RS
fine-tuning (the fast-AT attack of Wong et al.); PGD-5 validation; natural pretraining for 10
epochs. ``--dataset digits`` runs the previous problem (digits, small CNN, PGD-7, linf 0.2).

Prints, per seed and strategy, and the median over seeds:
    RATIO seed=<s> method=<a|b|c> best=<acc> total_gp=<n> reach_gp=<n|nan> reach_frac_of_a=<x|nan>
    RATIO median method=<m> reach_frac_of_a=<x> total_frac_of_a=<x>
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"a": "random, no pruning", "b": "random + ASHA", "c": "advtune default (TPE + ASHA)"}
COMPLETED: dict[str, float] = {}
FULL_SETS = {
    "fashion-mnist": ["dataset=fashion-mnist", "train_size=2000", "val_size=1000", "model=small_cnn-16", "eval_eps=0.1",
                      "attack=fgsm_rs", "val_steps=5", "pretrain_epochs=10"],
    "digits": [],
}
TITLES = {
    "fashion-mnist": "Fashion-MNIST (2,000 train / 1,000 val images, small_cnn-16, FGSM-RS fine-tuning, linf 0.1, PGD-5 val)",
    "digits": "digits (small CNN, PGD-7 fine-tuning, linf 0.2)",
}


def _install_completion_stamps() -> None:
    """advtune's driver-side callback, subclassed to note when each trial finished."""
    import advtune.study.tune_backend as tb

    base = tb.StudyCallback

    class StampedStudyCallback(base):
        def on_trial_complete(self, iteration, trials, trial, **info):
            COMPLETED[trial.trial_id] = time.time()
            super().on_trial_complete(iteration, trials, trial, **info)

        def on_trial_error(self, iteration, trials, trial, **info):
            COMPLETED[trial.trial_id] = time.time()
            super().on_trial_error(iteration, trials, trial, **info)

    tb.StudyCallback = StampedStudyCallback


def build_spec(root: Path, name: str, args, seed: int, sets: list[str]):
    from advtune.study.spec import build_spec as _build
    from advtune.trainables.config import TrialConfig

    ns = SimpleNamespace(space="sfd", num_samples=args.trials, max_epochs=args.epochs, grace_period=1,
                         reduction_factor=2, concurrency=2, cpus_per_trial=1.0, gpus_per_trial=0.0, address=None,
                         storage_path=str(root), name=name, seed=seed, max_failures=0, verbose=False,
                         assume_shared_storage=False, objective=args.objective, sampler=args.sampler)
    return _build(ns, TrialConfig().with_overrides(sets))


def make_tuner(method: str, spec, space, study_dir: Path):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    import advtune.study.tune_backend as tb
    from advtune.search_spaces import define_by_run

    if method == "c":
        return tb.make_tuner(spec, space, study_dir)  # exactly what `advtune run` builds
    searcher = tb.PruningAwareOptunaSearch(
        space=define_by_run(space, spec.base_config), metric="best_robust_acc", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=spec.seed), study_name=spec.name)
    scheduler = FIFOScheduler() if method == "a" else ASHAScheduler(
        time_attr="epoch", metric="robust_acc", mode="max", max_t=spec.max_epochs, grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor)
    return tune.Tuner(
        tb._trainable(spec, study_dir),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(spec.storage_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[tb.StudyCallback(str(study_dir), spec.num_samples)],
                                  progress_reporter=tb._Silent()))


def run_study(method: str, root: Path, args, seed: int, sets: list[str]) -> dict:
    from advtune.study.records import StudyRecords

    spec, space = build_spec(root, f"{method}-seed{seed}", args, seed, sets)
    study_dir = spec.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    COMPLETED.clear()
    t0 = time.time()
    make_tuner(method, spec, space, study_dir).fit()
    wall = time.time() - t0
    records = {r.trial_id: r for r in StudyRecords(study_dir, tensorboard=False).load()}
    order = sorted((tid for tid in records if tid in COMPLETED), key=COMPLETED.get)
    curve, spent, best = [], 0, 0.0
    for tid in order:
        r = records[tid]
        spent += r.grad_passes
        best = max(best, r.best["robust_acc"] if r.best else 0.0)
        curve.append((spent, best, r.state))
    top = max((r for r in records.values() if r.best), key=lambda r: r.best["robust_acc"], default=None)
    return {"curve": curve, "wall": wall, "grace": spec.grace_period, "best_params": top.params if top else None,
            "pruned": sum(r.state == "pruned" for r in records.values()), "trials": len(records)}


def reach(curve: list, target: float) -> float:
    return next((gp for gp, best, _ in curve if best >= target - 1e-9), float("nan"))


def plot(results: dict, seeds: list[int], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"a": "tab:gray", "b": "tab:blue", "c": "tab:red"}
    fig, axes = plt.subplots(1, len(seeds), figsize=(max(4.6 * len(seeds), 9.5), 3.9), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        a_best = results[(seed, "a")]["curve"][-1][1]
        for m in "abc":
            curve = results[(seed, m)]["curve"]
            xs = [0.0] + [gp / 1e6 for gp, _, _ in curve]
            ys = [0.0] + [100 * b for _, b, _ in curve]
            ax.step(xs, ys, where="post", color=colors[m], lw=2, label=f"({m}) {METHODS[m]}")
            ax.plot(xs[1:], ys[1:], "o", color=colors[m], ms=3)
            r = reach(curve, a_best - 0.01)
            if not math.isnan(r):
                ax.axvline(r / 1e6, color=colors[m], ls=":", lw=1)
        ax.axhline(100 * (a_best - 0.01), color="k", ls="--", lw=0.8, label="best of (a) − 1 point")
        ax.axvline(0.3 * results[(seed, "a")]["curve"][-1][0] / 1e6, color="k", ls="-.", lw=0.8,
                   label="30% of (a)'s compute")
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("compute spent: cumulative grad passes (millions)")
        ax.grid(alpha=0.3)
        ax.set_ylim(max(0, 100 * a_best - 20), 100 * a_best + 4)  # the region where the strategies differ
    axes[0][0].set_ylabel("best robust val accuracy so far (%)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def analyse(results: dict, args, tmp: Path) -> None:
    objective, sampler = getattr(args, "objective", "robust"), getattr(args, "sampler", "tpe")
    if (objective, sampler) != ("robust", "tpe"):
        METHODS["c"] = f"advtune ({sampler}, --objective {objective}) + ASHA"
    print(f"\n{TITLES[args.dataset]}, sfd space, {args.trials} trials x {args.epochs} epochs, 2 slots; "
          "compute = grad passes in trial completion order; target = best of (a) - 1 point")
    print(f"{'seed':>4} {'method':<32} {'best':>6} {'total gp':>11} {'x (a)':>6} {'gp to target':>13} {'x (a) total':>12}")
    fracs: dict[str, list[float]] = {m: [] for m in "abc"}
    totals: dict[str, list[float]] = {m: [] for m in "abc"}
    for seed in args.seeds:
        a_curve = results[(seed, "a")]["curve"]
        target, a_total = a_curve[-1][1] - 0.01, a_curve[-1][0]
        for m in "abc":
            c = results[(seed, m)]["curve"]
            r = reach(c, target)
            frac = r / a_total
            fracs[m].append(frac)
            totals[m].append(c[-1][0] / a_total)
            rs = "not reached" if math.isnan(r) else f"{r:,.0f}"
            print(f"{seed:>4} ({m}) {METHODS[m]:<28} {100 * c[-1][1]:5.1f}% {c[-1][0]:>11,} {c[-1][0] / a_total:5.2f}x "
                  f"{rs:>13} {frac:11.2f}x")
            print(f"RATIO seed={seed} method={m} best={c[-1][1]:.4f} total_gp={c[-1][0]} reach_gp={r:.0f} "
                  f"reach_frac_of_a={frac:.3f}")
    at30: dict[str, list[float]] = {m: [] for m in "abc"}
    for seed in args.seeds:
        a_total = results[(seed, "a")]["curve"][-1][0]
        for m in "abc":  # best found with 30% of (a)'s compute: less sensitive to (a)'s lucky maximum
            at30[m].append(max((b for gp, b, _ in results[(seed, m)]["curve"] if gp <= 0.3 * a_total), default=0.0))
    for m in "abc":
        # a strategy that never reached the target counts as infinitely expensive for the median
        med = statistics.median([f if not math.isnan(f) else math.inf for f in fracs[m]])
        print(f"RATIO median method={m} reach_frac_of_a={med:.3f} total_frac_of_a={statistics.median(totals[m]):.3f} "
              f"reached={sum(not math.isnan(f) for f in fracs[m])}/{len(fracs[m])}")
        print(f"RATIO method={m} best_within_30pct_of_a_compute=" + ",".join(f"{b:.4f}" for b in at30[m])
              + f" mean={statistics.mean(at30[m]):.4f}")
    out = Path(args.plot) if args.plot else (tmp / "bench-search.png" if args.quick else ROOT / "docs/img/bench-search.png")
    plot(results, args.seeds, out, f"sfd space on {TITLES[args.dataset]}:\n{args.trials} trials "
         f"x {args.epochs} epochs, 2 slots; best robust val acc vs compute, per seed")
    print(f"plot: {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 trials x 2 epochs, PGD-2 validation, seed 0")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--dataset", choices=sorted(FULL_SETS), default=None,
                    help="problem of the full mode (default fashion-mnist; --quick always uses digits)")
    ap.add_argument("--objective", default="robust", help="(c)'s `advtune run --objective` (robust, robust+clean, "
                    "robust:clean>=X); (a) and (b) always search robust accuracy. Curves compare best robust accuracy")
    ap.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="(c)'s `advtune run --sampler`")
    ap.add_argument("--plot", default=None, help="PNG path (default docs/img/bench-search.png; quick: a temp file)")
    ap.add_argument("--from-json", metavar="RESULTS", nargs="+", default=None,
                    help="analyse and plot the curves previous runs saved (their results.json; runs of other seeds "
                    "with the same settings are merged) instead of running")
    args = ap.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.dataset = "digits" if args.quick else (args.dataset or "fashion-mnist")
    args.trials = args.trials or (4 if args.quick else 12 if args.dataset == "fashion-mnist" else 10)
    args.epochs = args.epochs or (2 if args.quick else 4 if args.dataset == "fashion-mnist" else 6)
    tmp = Path(tempfile.mkdtemp(prefix="advtune-search-"))
    if args.from_json:
        merged: dict = {"args": None, "results": {}}
        for path in args.from_json:  # runs of other seeds (same settings) are merged: seeds can run in sessions
            saved = json.loads(Path(path).read_text())
            if "results" not in saved:  # the first format: the results alone (full mode's defaults)
                saved = {"args": {"dataset": args.dataset, "trials": args.trials, "epochs": args.epochs,
                                  "seeds": sorted({int(k.split("-")[0]) for k in saved})}, "results": saved}
            if merged["args"] is not None:
                settings = [{k: v for k, v in a.items() if k != "seeds"} for a in (saved["args"], merged["args"])]
                if settings[0] != settings[1]:
                    raise SystemExit(f"{path} was run with other settings ({settings[0]}); merge only runs of one setting")
                saved["args"]["seeds"] = sorted(set(merged["args"]["seeds"]) | set(saved["args"]["seeds"]))
            merged["args"] = saved["args"]
            merged["results"].update(saved["results"])
        for k, v in merged["args"].items():
            setattr(args, k, v)
        # an interrupted run (results are saved after every study): analyse the seeds it finished
        args.seeds = [s for s in args.seeds if all(f"{s}-{m}" in merged["results"] for m in "abc")]
        analyse({(int(k.split("-")[0]), k.split("-")[1]): v for k, v in merged["results"].items()}, args, tmp)
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("ADVTUNE_CACHE", str(tmp / "cache"))
    _install_completion_stamps()

    import ray

    import advtune.study.tune_backend as tb
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.pretrain import ensure_pretrained

    sets = ["val_steps=2", "pretrain_epochs=3"] if args.quick else list(FULL_SETS[args.dataset])
    pre = ensure_pretrained(TrialConfig().with_overrides(sets))  # one starting point for every study
    sets.append(f"pretrained={pre}")
    tb.init_ray(None, num_cpus=2)
    results: dict = {}

    def save() -> None:  # after every study, so an interrupted run keeps what it measured (--from-json reads it)
        saved = {"args": {k: getattr(args, k) for k in ("dataset", "trials", "epochs", "seeds", "objective", "sampler")},
                 "results": {f"{s}-{m}": r for (s, m), r in results.items()}}
        (tmp / "results.json").write_text(json.dumps(saved, indent=1))

    print(f"curves (written after every study): {tmp / 'results.json'}", flush=True)
    try:
        for seed in args.seeds:
            for m in "abc":
                res = run_study(m, tmp / "studies", args, seed, sets)
                results[(seed, m)] = res
                save()
                c = res["curve"]
                print(f"seed {seed} ({m}) {METHODS[m]:<30} {res['trials']} trials, {res['pruned']} pruned "
                      f"(first rung epoch {res['grace'] if m != 'a' else '-'}), best robust {100 * c[-1][1]:.1f}%, "
                      f"{c[-1][0]:,} grad passes, {res['wall']:.0f} s", flush=True)
    finally:
        ray.shutdown()

    analyse(results, args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
