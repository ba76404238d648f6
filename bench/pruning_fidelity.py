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
- ``spearman_rungs``: the same at each of the rule's rungs (a rule with two cuts decides at both: its first,
  lenient cut drops the bottom half, the second keeps a third of the rest; the fidelity target is asked of the
  deciding rung, the one that keeps the fewest);
- ``best_survives``: share of seeds in which the configuration with the best final strong figure is
  not stopped;
- ``regret``: mean over seeds of (best final strong figure of all configurations) minus (best final
  strong figure among the trials that ran to the end: the study's final evaluation ranks those, so
  this bounds the pick's regret from above), in points and in validation images;
- ``compute``: grad passes spent as a share of running every configuration to the end (mean).

    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-digits-sfd.json [more.json] --seeds 200
    .venv/bin/python bench/pruning_fidelity.py --quick      # records 3 tiny configurations first (~1 min)
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --grid --seeds 40   # 72 rules (~2 min)
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --cuts --seeds 200  # 48 two-cut rules (~2 min)
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --grid --seeds 40 --tolerance 0.01
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --grid --seeds 40 --min-rung 12
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --probes --seeds 200
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --second-rung --seeds 200
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --aligned --seeds 200
    .venv/bin/python bench/pruning_fidelity.py docs/data/pruning-*.json --aligned --grid --seeds 40 --min-rung 16

``--probes`` replays budget-compressed probes (:class:`ProbeRule`, on the probe curves that
``pruning_record.py --probes`` adds to a recording) beside the default rule; ``--second-rung`` the default's
first rung with a second before the end of training (:class:`SecondRungRule`); ``--aligned`` ``full_strength`` rules
with each trial judged at a validation placed at its first rung itself (mid-epoch, the figures
``pruning_record.py --rung-figures`` measured; the extra validation's passes are counted), not at the first
epoch end after it. ``--tolerance`` and
``--min-rung`` are what-ifs of the replay, not rules advtune offers: a band under ASHA's cutoff, and ASHA
without its early over-promotion (a trial reaching the first rung before ``MIN_RUNG`` others is paused
and judged once they have).

Prints ``RATIO data=<name> rule=<rule> spearman=… kendall=… best_survives=… regret_pts=… compute=…`` per
rule, and writes a plot (``--plot``).
"""
from __future__ import annotations

import argparse
import json
import math
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
    ("full_strength g1.75 rf4 (previous default)", "full_strength", 1.75, 4),
    ("full_strength g1.5 rf2", "full_strength", 1.5, 2),
    ("full_strength g2 rf3", "full_strength", 2, 3),
    ("decay_progress g1 rf3", "decay_progress", 1, 3),
    ("decay_progress g2 rf2", "decay_progress", 2, 2),
    ("full_strength 0.75 keep 1/2, 1.75 keep 1/3 (default)", "cuts", ((0.75, 1 / 2), (1.75, 1 / 3)), None),
]
OLD, NEW = CANDIDATES[0][0], CANDIDATES[-1][0]
PREVIOUS = CANDIDATES[5]  # the single cut at 1.75, rf 4: the default before the two cuts, what the what-ifs were measured against
# --cuts: two cuts at consecutive validations (first rung g, then g + 1 epochs at full strength), the share each keeps
# (the neighbourhood of the default: benchmarks §9)
CUTS = [(f"full_strength {g:g} keep {k1:.2f}, {g + 1:g} keep {k2:.2f}", "cuts", ((g, k1), (g + 1, k2)), None)
        for g in (0.5, 0.75, 1, 1.25) for k1 in (0.4, 0.5, 0.6) for k2 in (0.25, 0.3, 1 / 3, 0.375)]
# the probe rule, for recordings with probe curves (pruning_record.py --probes): probe length x reduction factor
PROBES = [(f"probe {b} rf{rf}", "probe", b, rf) for b in (1, 2, 3) for rf in (3, 4, 5, 6)]
# --second-rung: the default's first rung (1.75 epochs at full strength) and a second at 3.5 to 4.5, rf 3 and 4
SECOND_RUNGS = [(f"full_strength g1.75 then {g2:g} rf{rf}", "second", (1.75, g2), rf) for g2 in (3.5, 4, 4.5)
                for rf in (3, 4)]
# --aligned: full_strength judged at a validation placed at the first rung itself, for each first rung the recordings
# hold figures of (pruning_record.py --rung-figures), reduction factors 4 and 5
ALIGNED_RFS = (4, 5)
# --grid: both clocks, first rung 0.5-2.5 epochs, reduction factor 2-5 (the search for a rule within the compute
# target, benchmarks §9); TARGETS: the fidelity targets of the pruning issue, on every problem (Spearman at the deciding
# rung: the one that keeps the fewest, for ASHA's geometric rungs the first)
GRID = [(f"{rule} g{g:g} rf{rf}", rule, g, rf) for rule in ("full_strength", "decay_progress")
        for g in (0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5) for rf in (2, 3, 4, 5)]
TARGETS = {"spearman": 0.85, "best_survives": 0.9, "regret_pts": 1.0, "compute": 0.6}


def grid_summary(analyses: list[dict], grid: list) -> None:
    """One GRID line per rule: its figures on every problem, and whether it meets the fidelity targets on all
    of them and the compute target on all of them."""
    for label, *_ in grid:
        res = [a["results"][label] for a in analyses]
        fidelity = all(r["spearman_deciding"] >= TARGETS["spearman"] and r["best_survives"] >= TARGETS["best_survives"]
                       and r["regret_pts"] <= TARGETS["regret_pts"] for r in res)
        cheap = all(r["compute"] <= TARGETS["compute"] for r in res)
        cells = " ".join(f"{k}={'/'.join(f'{r[k]:.2f}' for r in res)}"
                         for k in ("spearman", "spearman_deciding", "best_survives", "regret_pts", "compute"))
        print(f"GRID rule=\"{label}\" fidelity_targets={'met' if fidelity else 'missed'} "
              f"compute_target={'met' if cheap else 'missed'} {cells}", flush=True)


@dataclass
class Run:
    idx: int
    params: dict
    point: float  # full-strength point (fraction)
    history: list  # per-epoch metrics
    strong: float  # final strong figure of the unpruned run's best checkpoint
    probes: dict  # {epochs: per-epoch metrics of the configuration trained for only that many epochs}
    rung_figures: dict | None = None  # {"G": the figure measured G epochs at full strength in (pruning_record.py)}

    def steps(self, rule) -> list[dict]:
        """The results the trial reports under ``rule``, in order, with cumulative grad passes. Under a
        :class:`ProbeRule`: its probe's one result (the probe's best figure), then the full run's epochs, their
        ``epoch`` already in the probe rule's time (its ``time`` is the identity)."""
        if not isinstance(rule, ProbeRule):
            return self.aligned(rule) if ALIGNED else self.history
        probe = self.probes[rule.probe_epochs]
        spent = probe[-1]["grad_passes"]
        head = {"phase": "probe", "epoch": rule.grace, "robust_acc": probe[-1]["best_robust_acc"],
                "best_robust_acc": probe[-1]["best_robust_acc"], "grad_passes": spent,
                "epoch_seconds": sum(h["epoch_seconds"] for h in probe)}
        return [head, *({**h, "epoch": rule.full_run_time(h["epoch"]), "grad_passes": h["grad_passes"] + spent}
                        for h in self.history)]

    def aligned(self, rule) -> list[dict]:
        """``--aligned``: the history with a validation at the rule's first rung itself (the figure
        ``pruning_record.py --rung-figures`` measured there, mid-epoch), the extra validation's passes (``ALIGNED``,
        in grad passes) counted in every later result; as recorded where the rung falls on an epoch end or no
        figure was measured there."""
        rungs = rule.rungs()
        fig = (self.rung_figures or {}).get(f"{rungs[0]:g}") if rungs and rule.name == "full_strength" else None
        if fig is None or abs(fig["epoch"] - round(fig["epoch"])) < 1e-9:
            return self.history
        k = int(fig["epoch"])  # the epoch it falls in: history[k] ends it
        prev_best = self.history[k - 1]["best_robust_acc"] if k else 0.0
        frac = fig["epoch"] - k
        nxt = self.history[k]
        mid = {"epoch": fig["epoch"], "robust_acc": fig["robust_acc"], "best_robust_acc": max(prev_best, fig["robust_acc"]),
               "grad_passes": fig["grad_passes"], "epoch_seconds": frac * nxt["epoch_seconds"]}
        rest = [{**h, "grad_passes": h["grad_passes"] + ALIGNED} for h in self.history[k:]]
        rest[0]["epoch_seconds"] = (1 - frac) * nxt["epoch_seconds"]
        return [*self.history[:k], mid, *rest]


ALIGNED = 0  # while an "aligned" rule is replayed: grad passes of its extra validation on that problem (else 0)


def validation_passes(base: dict) -> int:
    """Grad passes of one validation of the recording's problem: every validation image attacked for
    ``val_steps`` steps per restart, and its clean figure."""
    from advtune.trainables.data import load_splits

    n = len(load_splits(base["dataset"], base["data_root"], base["val_size"], base["split_seed"]).val)
    return n * (base["val_steps"] * base["val_restarts"] + 1)


@dataclass(frozen=True)
class ProbeRule:
    """A budget-compressed probe (the pruning issue's "budget-aware schedules"), replayed only: each trial first
    trains its whole schedule and epsilon ramp compressed to ``grace`` epochs (schedules are functions of training
    progress, so ``epochs: grace`` is that probe; ``pruning_record.py --probes`` records them); ASHA compares the
    probes' best figures once, and a kept trial then trains its full schedule from the starting point (the probe's
    passes are spent on top). Duck-types ``study.pruning.PruningRule`` for the study's ASHA: the full run's epochs
    are laid between the probe's end (``grace``) and ``max_t = grace·rf``, so Ray's ASHA (rungs ``grace·rf^k``
    below ``max_t``) has exactly one rung, the probe."""

    grace: float
    reduction_factor: int
    max_epochs: int
    name: str = "probe"
    cuts: tuple = ()  # ASHA's geometric rungs (the study's ASHA reads it)

    @property
    def probe_epochs(self) -> int:
        return int(self.grace)

    @property
    def max_t(self) -> float:
        return float(self.grace * self.reduction_factor)

    def rungs(self) -> list[float]:
        return [float(self.grace)]

    def full_run_time(self, epoch: float) -> float:
        return self.grace + float(epoch) / self.max_epochs * (self.max_t - self.grace)

    def time(self, epoch: float, point: float) -> float:  # results carry their time as ``epoch`` (``Run.steps``)
        return float(epoch)


@dataclass(frozen=True)
class SecondRungRule:
    """``full_strength`` with a second rung where the replay asks (``--second-rung``), replayed only: Ray's ASHA
    places its rungs at ``grace·rf^k``, which with the default (1.75 epochs at full strength, rf 4) puts the second
    after the end of training. On the clock ``(epochs at full strength)^p``, with ``p = log rf / log(second /
    first)``, its rungs fall at ``first`` and ``second`` epochs at full strength, keeping the top 1/rf at each.
    Duck-types ``study.pruning.PruningRule``."""

    first: float
    second: float
    reduction_factor: int
    max_epochs: int
    name: str = "full_strength"
    cuts: tuple = ()  # ASHA's geometric rungs, on its own clock

    @property
    def power(self) -> float:
        return math.log(self.reduction_factor) / math.log(self.second / self.first)

    @property
    def grace(self) -> float:
        return self.first ** self.power

    @property
    def max_t(self) -> float:
        return float(self.max_epochs) ** self.power

    def rungs(self) -> list[float]:
        return [r ** self.power for r in (self.first, self.second) if r < self.max_epochs]

    def time(self, epoch: float, point: float) -> float:
        from advtune.study.pruning import rung_time

        return max(rung_time("full_strength", epoch, point, self.max_epochs), 0.0) ** self.power


def load(path: Path) -> tuple[dict, list[Run]]:
    from advtune.study.pruning import full_strength_point

    data = json.loads(path.read_text())
    base = data["base"]
    runs = []
    for r in data["runs"]:
        if not r.get("strong"):
            continue
        runs.append(Run(r["index"], r["params"], full_strength_point({**base, **r["params"]}), r["history"],
                        r["strong"]["robust_acc"], {int(b): h for b, h in r.get("probes", {}).items()},
                        r.get("rung_figures", {})))
    return data, runs


def rung_value(run: Run, rule, k: int = 0) -> float:
    """The figure ASHA compares at the rule's ``k``-th rung for this trial (its last if it never gets there)."""
    rungs = rule.rungs()
    rung = rungs[k] if k < len(rungs) else rule.max_t
    for h in run.steps(rule):
        if rule.time(h["epoch"], run.point) >= rung:
            return h["robust_acc"]
    return run.history[-1]["robust_acc"]


def deciding_rung(rule) -> int:
    """The rung that keeps the fewest (a rule with cuts: its strictest; ASHA's geometric rungs: the first)."""
    keeps = rule.keeps() if hasattr(rule, "keeps") else []
    return min(range(len(keeps)), key=lambda i: (keeps[i], i)) if keeps else 0


MIN_RUNG = 0  # --min-rung (a what-if of the replay)


def replay(runs: list[Run], rule, base: dict, epochs: int, seed: int, slots: int = 2) -> dict:
    """One simulated study with the configurations in a random order (``seed``)."""
    order = runs[:]
    random.Random(seed).shuffle(order)
    return replay_in_order(order, rule, base, epochs, slots, MIN_RUNG)


def replay_in_order(order: list[Run], rule, base: dict, epochs: int, slots: int = 2, min_rung: int = 0) -> dict:
    """One simulated study, trials started in ``order`` on ``slots`` slots, each epoch taking its recorded
    wall time, every result fed to the study's ASHA as it happens. Returns {idx: (results reported, ran to the
    end)} (under ``probe`` the probe is the first result).

    ``min_rung`` (a what-if, ``--min-rung``): a trial that reaches the first rung before ``min_rung`` others have
    is paused there (its slot starts the next trial) and judged once they have, against all of them, instead of
    continuing on ASHA's early, thin cutoff; trials still paused when nothing else can run are judged then."""
    from advtune.study.tune_backend import make_scheduler

    sched = make_scheduler(rule, base)
    events = []  # (time, seq, slot, run, index of the result it ends with)
    seq, queue, ran = 0, [(run, 0) for run in order], {}
    steps_of = {run.idx: run.steps(rule) for run in order}  # the results each trial reports, built once
    trials, brackets, paused = {}, {}, []  # paused: (run, index of its rung result)

    def start(slot: int, t: float) -> None:
        nonlocal seq
        if not queue:
            return
        run, i = queue.pop(0)
        if i == 0:
            trial = SimpleNamespace(trial_id=f"t{run.idx}", config=run.params)
            trials[run.idx] = trial
            sched.on_trial_add(None, trial)
            brackets[run.idx] = sched._trial_info[trial.trial_id]  # Ray's bracket (gone from _trial_info at the end)
        events.append((t + steps_of[run.idx][i]["epoch_seconds"], seq, slot, run, i))
        seq += 1

    def first_rung(run: Run) -> dict:
        rungs = brackets[run.idx]._rungs  # Ray's bracket: rungs in reverse order
        return rungs[-1][1] if rungs else {}

    def judge(run: Run, i: int) -> None:
        """A paused trial: continue (first in the queue) if in the top 1/rf of the others recorded, else stop."""
        rung = first_rung(run)
        tid = trials[run.idx].trial_id
        cutoff = brackets[run.idx].cutoff({k: v for k, v in rung.items() if k != tid})
        if cutoff is not None and rung[tid] < cutoff:
            sched.on_trial_complete(None, trials[run.idx], {})
        else:
            queue.insert(0, (run, i + 1))

    for s in range(slots):
        start(s, 0.0)
    while events or paused:
        if not events:  # nothing runs and nothing new can start: judge the paused on what there is
            for run, i in paused:
                judge(run, i)
            paused.clear()
            for s in range(slots):
                start(s, 0.0)
            continue
        events.sort(key=lambda e: (e[0], e[1]))
        t, _, slot, run, i = events.pop(0)
        steps = steps_of[run.idx]
        h = steps[i]
        trial = trials[run.idx]
        result = {k: h[k] for k in ("epoch", "robust_acc", "best_robust_acc", "phase") if k in h}
        last = i == len(steps) - 1
        before = len(first_rung(run)) if min_rung else 0
        action = "STOP" if last else sched.on_trial_result(None, trial, result)
        ran[run.idx] = (i + 1, last)
        newly = min_rung and not last and len(first_rung(run)) > before  # recorded at the first rung just now
        if newly and before < min_rung:
            paused.append((run, i))
            start(slot, t)
        elif last or action == "STOP":
            sched.on_trial_complete(None, trial, result)
            start(slot, t)
        else:
            events.append((t + steps[i + 1]["epoch_seconds"], seq, slot, run, i + 1))
            seq += 1
        if newly and len(first_rung(run)) >= min_rung and paused:
            for p_run, p_i in paused:
                judge(p_run, p_i)
            paused.clear()
            while queue and len(events) < slots:  # free slots take the promoted
                used = {e[2] for e in events}
                start(next(s for s in range(slots) if s not in used), t)
    return ran


def evaluate_rule(runs: list[Run], rule, base: dict, epochs: int, seeds: int, n_images: int) -> dict:
    from scipy.stats import kendalltau, spearmanr

    strong = [r.strong for r in runs]
    # the figure each configuration is compared on at each rung (the first rung's: what ``spearman`` ranks)
    at_rung = [[rung_value(r, rule, k) for r in runs] for k in range(max(1, len(rule.rungs())))]
    per_rung = [spearmanr(values, strong).statistic for values in at_rung]
    deciding = min(deciding_rung(rule), len(at_rung) - 1)
    best = max(runs, key=lambda r: r.strong)
    full_cost = sum(r.history[-1]["grad_passes"] for r in runs)  # every configuration run once, unpruned
    spent_after = {r.idx: [h["grad_passes"] for h in r.steps(rule)] for r in runs}  # passes after each result
    survives, regrets, costs = 0, [], []
    for seed in range(seeds):
        ran = replay(runs, rule, base, epochs, seed)
        survives += ran[best.idx][1]
        finished = [r for r in runs if ran[r.idx][1]]
        regrets.append(best.strong - max(r.strong for r in finished))
        costs.append(sum(spent_after[r.idx][ran[r.idx][0] - 1] for r in runs) / full_cost)
    return {"spearman": per_rung[0], "kendall": kendalltau(at_rung[0], strong).statistic,
            "spearman_rungs": per_rung, "spearman_deciding": per_rung[deciding], "deciding": at_rung[deciding],
            "deciding_at": (rule.rungs() or [rule.max_t])[deciding],
            "best_survives": survives / seeds, "regret_pts": 100 * statistics.mean(regrets),
            "regret_images": n_images * statistics.mean(regrets), "worst_regret_pts": 100 * max(regrets),
            "compute": statistics.mean(costs)}


def analyse(path: Path, seeds: int, candidates=CANDIDATES) -> dict:
    from scipy.stats import spearmanr

    from advtune.search_spaces import load_space
    from advtune.study.pruning import make_rule
    from advtune.study.spec import min_grace
    from advtune.trainables.config import TrialConfig

    data, runs = load(path)
    epochs = data["max_epochs"]
    global ALIGNED
    extra_validation = validation_passes(data["base"]) if any(c[1] == "aligned" for c in candidates) else 0
    base_cfg = TrialConfig.from_dict(data["base"])
    old_grace, _ = min_grace(load_space(data["space"], base_cfg), base_cfg, epochs)
    n_images = next(r["strong"]["n"] for r in data["runs"] if r.get("strong"))
    name = path.stem.replace("pruning-", "")
    out = {}
    for label, rule_name, grace, rf in candidates:
        if rule_name == "probe":
            rule = ProbeRule(grace, rf, epochs)
        elif rule_name == "second":
            rule = SecondRungRule(*grace, rf, epochs)
        elif rule_name == "cuts":  # grace: the cuts ((epochs at full strength, share kept), ...)
            rule = make_rule("full_strength", old_grace, grace[0][0], 2, epochs, grace)
        else:
            rule = make_rule("full_strength" if rule_name == "aligned" else rule_name, old_grace, grace or 1, rf, epochs)
        # aligned: the extra validation's passes counted for every trial that trains on after it
        ALIGNED = extra_validation if rule_name == "aligned" else 0
        try:
            res = evaluate_rule(runs, rule, data["base"], epochs, seeds, n_images)
        finally:
            ALIGNED = 0
        out[label] = {**res, "rungs": rule.rungs(), "rule": rule_name, "grace": rule.grace, "rf": rf}
        rungs = [r for r in grace if r < epochs] if rule_name == "second" else rule.rungs()  # epochs at full strength
        print(f"RATIO data={name} rule=\"{label}\" rungs={','.join(f'{r:g}' for r in rungs) or 'none'} spearman={res['spearman']:.3f} "
              f"kendall={res['kendall']:.3f} best_survives={res['best_survives']:.2f} "
              f"regret_pts={res['regret_pts']:.2f} regret_images={res['regret_images']:.1f} "
              f"worst_regret_pts={res['worst_regret_pts']:.2f} compute={res['compute']:.3f} "
              f"spearman_rungs={','.join(f'{v:.3f}' for v in res['spearman_rungs'])}", flush=True)
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
            sc = ax.scatter([100 * v for v in res["deciding"]], [100 * r.strong for r in a["runs"]], c=ramp,
                            cmap="viridis", vmin=0, vmax=0.5)
            ax.set_xlabel(f"robust val acc at the deciding rung, {res['deciding_at']:g} "
                          f"{'epochs' if res['rule'] == 'epoch' else 'epochs at full strength'} (PGD, %)")
            ax.set_ylabel("final strong figure (APGD-CE+T, %)")
            ax.set_title(f"{a['name']}: {label}\nSpearman {res['spearman_deciding']:.2f}, best survives "
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
    ap.add_argument("--quick", action="store_true", help="record 3 tiny configurations (their 1-epoch probes and "
                    "their figure 1 epoch at full strength in), replay every mode on 5 seeds")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="replay ASHA with its cutoff lowered by this much (a trial within TOLERANCE of the cutoff "
                         "continues: a band against validation noise). A what-if of the replay, not a rule advtune "
                         "offers; it changes survival, regret and compute, not the rung figure's Spearman/Kendall")
    ap.add_argument("--min-rung", type=int, default=0,
                    help="replay a trial that reaches the first rung before MIN_RUNG others have as paused until they "
                         "have (then judged against all of them): ASHA without its early over-promotion, a what-if")
    ap.add_argument("--probes", action="store_true", help="replay budget-compressed probes (PROBES, for the probe "
                    "lengths the recordings hold: pruning_record.py --probes) beside the default rule")
    ap.add_argument("--second-rung", action="store_true", help="replay the default's first rung with a second one "
                    "before the end of training (SECOND_RUNGS, SecondRungRule) beside the default rule")
    ap.add_argument("--aligned", action="store_true",
                    help="replay full_strength rules with each trial judged at its first rung itself (rf ALIGNED_RFS): a "
                         "validation placed there mid-epoch (the figures pruning_record.py --rung-figures measured, its "
                         "passes counted), not the first epoch end after it; with --grid, the grid's full_strength rules so judged. A "
                         "what-if of the replay, not a rule advtune offers")
    ap.add_argument("--cuts", action="store_true", help="replay two cuts at consecutive validations (CUTS: the "
                    "default's neighbourhood, first rung 0.5-1.25 epochs at full strength, shares kept 0.4-0.6 then "
                    "0.25-0.375) and print one GRID line per rule over all the data given")
    ap.add_argument("--grid", action="store_true", help="replay the GRID of rules instead of the table's candidates "
                    "and print one GRID line per rule over all the data given")
    args = ap.parse_args(argv)
    if args.quick:
        from pruning_record import main as record

        tmp = Path(tempfile.mkdtemp()) / "pruning-quick.json"
        record(["--quick", "--out", str(tmp)])
        record(["--probes", "1", "--out", str(tmp)])  # and one-epoch probes of them: the probe replay runs too
        record(["--rung-figures", "1", "--out", str(tmp)])  # and one epoch at full strength in: --aligned too
        args.data, args.seeds, args.probes, args.second_rung, args.aligned = [tmp], 5, True, True, True
    if not args.data:
        ap.error("give recorded curves (docs/data/pruning-*.json) or --quick")
    if args.tolerance:
        from ray.tune.schedulers import async_hyperband

        cutoff = async_hyperband._Bracket.cutoff  # Ray's ASHA: the rung's (1 - 1/rf) quantile of recorded figures
        async_hyperband._Bracket.cutoff = lambda self, recorded: (
            None if not recorded else cutoff(self, recorded) - args.tolerance)
    global MIN_RUNG
    MIN_RUNG = args.min_rung
    if args.aligned:
        measured = set.intersection(*({g for r in json.loads(p.read_text())["runs"] for g in r.get("rung_figures", {})}
                                      for p in args.data))
        if not measured:
            ap.error("the recordings hold no rung figures: record them first (pruning_record.py --rung-figures "
                     "1.5,1.75,2,2.25 --out FILE)")
        if args.grid:  # the grid's full_strength rules whose first rung has measured figures, judged there
            GRID[:] = [(f"{label} at the rung", "aligned", g, rf) for label, rule, g, rf in GRID
                       if rule == "full_strength" and f"{g:g}" in measured]
    if args.grid:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the per-rule RATIO lines: GRID lines say it shorter
            analyses = [analyse(p, args.seeds, GRID) for p in args.data]
        grid_summary(analyses, GRID)
        return 0
    if args.cuts:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            analyses = [analyse(p, args.seeds, CUTS) for p in args.data]
        grid_summary(analyses, CUTS)
        return 0
    if args.probes:
        for p in args.data:
            data = json.loads(p.read_text())
            have = [b for b in (1, 2, 3) if all(str(b) in r.get("probes", {}) for r in data["runs"])]
            if not have:
                ap.error(f"{p} holds no probe curves: record them first (pruning_record.py --probes 1,2,3 --out {p})")
            analyse(p, args.seeds, [c for c in PROBES if c[2] in have] + [PREVIOUS, CANDIDATES[-1]])
        if not args.quick:
            return 0
    if args.second_rung:
        for p in args.data:
            analyse(p, args.seeds, SECOND_RUNGS + [PREVIOUS, CANDIDATES[-1]])
        if not args.quick:
            return 0
    if args.aligned:
        for p in args.data:
            analyse(p, args.seeds, [(f"full_strength g{g} rf{rf} at the rung", "aligned", float(g), rf)
                                    for g in sorted(measured, key=float) for rf in ALIGNED_RFS] + [PREVIOUS, CANDIDATES[-1]])
        if not args.quick:
            return 0
    analyses = [analyse(p, args.seeds) for p in args.data]
    if args.plot:
        plot(analyses, args.plot)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
