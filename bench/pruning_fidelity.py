"""Pruning fidelity: does what ASHA decides on predict the final strong figure?

Replays pruning rules offline on the full, unpruned learning curves and final strong figures that
``bench/pruning_record.py`` recorded (``docs/data/pruning-*.json``), so a rule is judged without
re-training anything. The scheduler replayed is the one studies use: Ray Tune's ASHA inside
``study.tune_backend.ScheduleAwareASHA`` (fed the recorded results through its ``on_trial_result``,
as Tune's controller would), with the pruning rule's time attribute (``study.pruning``).

Per replayed seed, the recorded configurations arrive in a random order and run two at a time (the
default study's concurrency), each epoch taking its recorded wall time; ASHA sees every result in
the order the events happen and stops trials as it would in a study. Per rule it prints:

- ``spearman`` / ``kendall``: rank agreement, over all recorded configurations, between the figure
  the rule decides on at its first rung (robust validation accuracy, PGD-k, at the trial's first rung
  time) and the final strong figure (APGD-CE + APGD-T on the best checkpoint of the unpruned run);
- ``best_survives``: share of seeds in which the configuration with the best final strong figure is
  not stopped;
- ``regret``: mean over seeds of (best final strong figure of all configurations) minus (best final
  strong figure among the trials that ran to the end: the study's final evaluation ranks those, so
  this bounds the pick's regret from above), in points and in validation images;
- ``compute``: grad passes spent as a share of running every configuration to the end (mean).

    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-digits-sfd.json [more.json] --seeds 200
    .venv/bin/python bench/pruning_fidelity.py --quick      # records 3 tiny configurations first (~1 min)
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --grid --seeds 40   # 72 rules (~2 min)
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --grid --seeds 40 --tolerance 0.01

Prints ``RATIO data=<name> rule=<rule> spearman=… kendall=… best_survives=… regret_pts=… compute=…`` per
rule, and writes a plot (``--plot``).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, rule name, first rung in the rule's unit, reduction factor); the epoch rule's first rung is
# the first rung the old default placed after the space's longest warmup/ramp.
CANDIDATES = [
    ("epoch (old default)", "epoch", None, 2),
    ("epoch rf3", "epoch", None, 3),
    ("full_strength g1 rf2", "full_strength", 1, 2),
    ("full_strength g1 rf3", "full_strength", 1, 3),
    ("full_strength g1.25 rf4", "full_strength", 1.25, 4),
    ("full_strength g1.75 rf4 (default)", "full_strength", 1.75, 4),
    ("full_strength g1.5 rf2", "full_strength", 1.5, 2),
    ("full_strength g2 rf3", "full_strength", 2, 3),
    ("decay_progress g1 rf3", "decay_progress", 1, 3),
    ("decay_progress g2 rf2", "decay_progress", 2, 2),
]
OLD, NEW = CANDIDATES[0][0], CANDIDATES[5][0]
# --grid: both clocks, first rung 0.5-2.5 epochs, reduction factor 2-5 (the search for a rule within the compute
# target, benchmarks §9); TARGETS: the fidelity targets of the pruning issue, on every problem
GRID = [(f"{rule} g{g:g} rf{rf}", rule, g, rf) for rule in ("full_strength", "decay_progress")
        for g in (0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5) for rf in (2, 3, 4, 5)]
TARGETS = {"spearman": 0.85, "best_survives": 0.9, "regret_pts": 1.0, "compute": 0.6}


def grid_summary(analyses: list[dict]) -> None:
    """One GRID line per rule: its figures on every problem, and whether it meets the fidelity targets on all
    of them and the compute target on all of them."""
    for label, *_ in GRID:
        res = [a["results"][label] for a in analyses]
        fidelity = all(r["spearman"] >= TARGETS["spearman"] and r["best_survives"] >= TARGETS["best_survives"]
                       and r["regret_pts"] <= TARGETS["regret_pts"] for r in res)
        cheap = all(r["compute"] <= TARGETS["compute"] for r in res)
        cells = " ".join(f"{k}={'/'.join(f'{r[k]:.2f}' for r in res)}"
                         for k in ("spearman", "best_survives", "regret_pts", "compute"))
        print(f"GRID rule=\"{label}\" fidelity_targets={'met' if fidelity else 'missed'} "
              f"compute_target={'met' if cheap else 'missed'} {cells}", flush=True)


@dataclass
class Run:
    idx: int
    params: dict
    point: float  # full-strength point (fraction)
    history: list  # per-epoch metrics
    strong: float  # final strong figure of the unpruned run's best checkpoint


def load(path: Path) -> tuple[dict, list[Run]]:
    from advtune.study.pruning import full_strength_point

    data = json.loads(path.read_text())
    base = data["base"]
    runs = []
    for r in data["runs"]:
        if not r.get("strong"):
            continue
        runs.append(Run(r["index"], r["params"], full_strength_point({**base, **r["params"]}), r["history"],
                        r["strong"]["robust_acc"]))
    return data, runs


def first_rung_value(run: Run, rule, epochs: int) -> float:
    """The figure ASHA compares at the rule's first rung for this trial (its last if it never gets there)."""
    from advtune.study.pruning import rung_time

    first = rule.rungs()[0] if rule.rungs() else rule.max_t
    for h in run.history:
        if rung_time(rule.name, h["epoch"], run.point, epochs) >= first:
            return h["robust_acc"]
    return run.history[-1]["robust_acc"]


def replay(runs: list[Run], rule, base: dict, epochs: int, seed: int, slots: int = 2) -> dict:
    """One simulated study with the configurations in a random order (``seed``)."""
    order = runs[:]
    random.Random(seed).shuffle(order)
    return replay_in_order(order, rule, base, epochs, slots)


def replay_in_order(order: list[Run], rule, base: dict, epochs: int, slots: int = 2) -> dict:
    """One simulated study, trials started in ``order`` on ``slots`` slots, each epoch taking its recorded
    wall time, every result fed to the study's ASHA as it happens. Returns {idx: (epochs run, ran to the end)}."""
    from advtune.study.tune_backend import make_scheduler

    sched = make_scheduler(rule, base)
    events = []  # (time, seq, run, epoch index)
    seq, queue, ran = 0, list(order), {}
    trials = {}

    def start(slot: int, t: float) -> None:
        nonlocal seq
        if not queue:
            return
        run = queue.pop(0)
        trial = SimpleNamespace(trial_id=f"t{run.idx}", config=run.params)
        trials[run.idx] = trial
        sched.on_trial_add(None, trial)
        events.append((t + run.history[0]["epoch_seconds"], seq, slot, run, 0))
        seq += 1

    for s in range(slots):
        start(s, 0.0)
    while events:
        events.sort(key=lambda e: (e[0], e[1]))
        t, _, slot, run, i = events.pop(0)
        h = run.history[i]
        trial = trials[run.idx]
        result = {"epoch": h["epoch"], "robust_acc": h["robust_acc"], "best_robust_acc": h["best_robust_acc"]}
        last = i == len(run.history) - 1
        action = "STOP" if last else sched.on_trial_result(None, trial, result)
        ran[run.idx] = (i + 1, last)
        if last or action == "STOP":
            sched.on_trial_complete(None, trial, result)
            start(slot, t)
        else:
            events.append((t + run.history[i + 1]["epoch_seconds"], seq, slot, run, i + 1))
            seq += 1
    return ran


def evaluate_rule(runs: list[Run], rule, base: dict, epochs: int, seeds: int, n_images: int) -> dict:
    from scipy.stats import kendalltau, spearmanr

    decide = [first_rung_value(r, rule, epochs) for r in runs]
    strong = [r.strong for r in runs]
    best = max(runs, key=lambda r: r.strong)
    full_cost = sum(r.history[-1]["grad_passes"] for r in runs)
    survives, regrets, costs = 0, [], []
    for seed in range(seeds):
        ran = replay(runs, rule, base, epochs, seed)
        survives += ran[best.idx][1]
        finished = [r for r in runs if ran[r.idx][1]]
        regrets.append(best.strong - max(r.strong for r in finished))
        costs.append(sum(r.history[ran[r.idx][0] - 1]["grad_passes"] for r in runs) / full_cost)
    return {"spearman": spearmanr(decide, strong).statistic, "kendall": kendalltau(decide, strong).statistic,
            "best_survives": survives / seeds, "regret_pts": 100 * statistics.mean(regrets),
            "regret_images": n_images * statistics.mean(regrets), "worst_regret_pts": 100 * max(regrets),
            "compute": statistics.mean(costs), "decide": decide}


def analyse(path: Path, seeds: int, candidates=CANDIDATES) -> dict:
    from scipy.stats import spearmanr

    from advtune.search_spaces import load_space
    from advtune.study.pruning import make_rule
    from advtune.study.spec import min_grace
    from advtune.trainables.config import TrialConfig

    data, runs = load(path)
    epochs = data["max_epochs"]
    base_cfg = TrialConfig.from_dict(data["base"])
    old_grace, _ = min_grace(load_space(data["space"], base_cfg), base_cfg, epochs)
    n_images = next(r["strong"]["n"] for r in data["runs"] if r.get("strong"))
    name = path.stem.replace("pruning-", "")
    out = {}
    for label, rule_name, grace, rf in candidates:
        rule = make_rule(rule_name, old_grace, grace or 1, rf, epochs)
        res = evaluate_rule(runs, rule, data["base"], epochs, seeds, n_images)
        out[label] = {**res, "rungs": rule.rungs(), "rule": rule_name, "grace": rule.grace, "rf": rf}
        print(f"RATIO data={name} rule=\"{label}\" rungs={','.join(f'{r:g}' for r in rule.rungs()) or 'none'} spearman={res['spearman']:.3f} "
              f"kendall={res['kendall']:.3f} best_survives={res['best_survives']:.2f} "
              f"regret_pts={res['regret_pts']:.2f} regret_images={res['regret_images']:.1f} "
              f"worst_regret_pts={res['worst_regret_pts']:.2f} compute={res['compute']:.2f}", flush=True)
    best = max(runs, key=lambda r: r.strong)
    print(f"  {name}: {len(runs)} configurations, {epochs} epochs, strong figure on {n_images} images; best "
          f"final strong {100 * best.strong:.1f}% ({best.params}); final strong vs final selection figure: "
          f"spearman {spearmanr([r.history[-1]['best_robust_acc'] for r in runs], [r.strong for r in runs]).statistic:.3f}")
    return {"runs": runs, "results": out, "epochs": epochs, "name": name, "old_grace": old_grace}


def plot(analyses: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(analyses), figsize=(6.5 * 2 * len(analyses), 4.8))
    for k, a in enumerate(analyses):
        for j, label in enumerate([OLD, NEW]):
            ax = axes[2 * k + j]
            res = a["results"][label]
            ramp = [r.point for r in a["runs"]]
            sc = ax.scatter([100 * v for v in res["decide"]], [100 * r.strong for r in a["runs"]], c=ramp,
                            cmap="viridis", vmin=0, vmax=0.5)
            ax.set_xlabel("robust val acc at the first rung (PGD, %)")
            ax.set_ylabel("final strong figure (APGD-CE+T, %)")
            ax.set_title(f"{a['name']}: {label}\nSpearman {res['spearman']:.2f}, best survives "
                         f"{100 * res['best_survives']:.0f}%, compute {100 * res['compute']:.0f}%", fontsize=9)
            fig.colorbar(sc, ax=ax, label="full-strength point (fraction of training)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="*", type=Path)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--quick", action="store_true", help="record 3 tiny configurations, replay 5 seeds")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="replay ASHA with its cutoff lowered by this much (a trial within TOLERANCE of the cutoff "
                         "continues: a band against validation noise). A what-if of the replay, not a rule advtune "
                         "offers; it changes survival, regret and compute, not the rung figure's Spearman/Kendall")
    ap.add_argument("--grid", action="store_true", help="replay the GRID of rules instead of the table's candidates "
                    "and print one GRID line per rule over all the data given")
    args = ap.parse_args(argv)
    if args.quick:
        from pruning_record import main as record

        tmp = Path(tempfile.mkdtemp()) / "pruning-quick.json"
        record(["--quick", "--out", str(tmp)])
        args.data, args.seeds = [tmp], 5
    if not args.data:
        ap.error("give recorded curves (docs/data/pruning-*.json) or --quick")
    if args.tolerance:
        from ray.tune.schedulers import async_hyperband

        cutoff = async_hyperband._Bracket.cutoff  # Ray's ASHA: the rung's (1 - 1/rf) quantile of recorded figures
        async_hyperband._Bracket.cutoff = lambda self, recorded: (
            None if not recorded else cutoff(self, recorded) - args.tolerance)
    if args.grid:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the per-rule RATIO lines: GRID lines say it shorter
            analyses = [analyse(p, args.seeds, GRID) for p in args.data]
        grid_summary(analyses)
        return 0
    analyses = [analyse(p, args.seeds) for p in args.data]
    if args.plot:
        plot(analyses, args.plot)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
