"""Parameter importance and the strongest interaction, for ``advtune report``.

Optuna's fANOVA evaluator (a random forest fitted to the trials, its variance decomposed per
parameter) is run on a *derived* in-memory Optuna study built from the study's own records, not on
``optuna.db``: there, trials ASHA stopped are PRUNED and carry no value, so an importance over the
completed trials alone sees the few that survived (3 of 12 in a typical study), all of them good.
In the derived study every trial that reported a validation is COMPLETE with the best robust
accuracy it reached before it stopped: a pruned trial at its last rung, a finished one at its end.
Those values come from different numbers of epochs; that is the same bet ASHA makes when it prunes
(a trial behind at a rung stays behind), so the importance ranks parameters by the figure the
search itself acted on. (The alternative, every trial's value at the first rung they all reached,
compares equal budgets but measures the first epochs only, where e.g. a slow decay looks bad.)

fANOVA over PED-ANOVA: PED-ANOVA compares the top quantile of trials with all of them and needs
enough trials in that quantile; with the 12-30 trials of a study the top 10% is one to three trials.

The caveat (``caveat(n)``): measured by ``bench/importance_reliability.py`` on a synthetic problem
shaped like the ``sfd`` space (one dominant parameter, a weaker second, one without effect, 1 point
of noise), 25 random studies per size: fANOVA named the dominant parameter first in 48% of the
studies of 8 trials, 68% of 12, 80% of 20 and 100% of 30, and the top two in order in 32%, 32%,
48% and 96%. Below ``MIN_TRUSTED`` = 20 trials the ranking is a hint only; from 20 to 29 the first
parameter is usually right and the order of the rest is not yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import TrialRecord

__all__ = ["derived_study", "importances", "plot_importance", "plot_interaction", "MIN_TRUSTED", "caveat"]

MIN_TRUSTED = 20  # trials; below it the report prints the caveat on the plot and the page
ORDER_TRUSTED = 30  # trials from which the order beyond the first parameter held in the measurement


def caveat(n: int) -> str:
    """The warning printed with the importance of ``n`` trials ('' when there is nothing to warn of)."""
    if n < MIN_TRUSTED:
        return (f"only {n} trials, fewer than {MIN_TRUSTED}: a rough hint only (with 12 random trials fANOVA "
                "named the most important parameter right 2 times in 3 on a test problem)")
    if n < ORDER_TRUSTED:
        return f"{n} trials: the first parameter is likely right, the order of the others needs ~{ORDER_TRUSTED}"
    return ""


_STATES = ("completed", "pruned", "diverged", "catastrophic_overfitting")


def derived_study(records: list[TrialRecord], dists: dict[str, Any]):
    """An in-memory maximising Optuna study: one COMPLETE trial per trial that reported a validation
    (errored and unfinished ones left out), value = best robust accuracy it reached, clean accuracy
    at that epoch in ``user_attrs['clean_acc']``."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line in the report
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(level)
    for r in records:
        if r.state not in _STATES or r.best is None:
            continue
        params = {k: v for k, v in r.params.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=float(r.best["robust_acc"]),
            user_attrs={"clean_acc": float(r.best["clean_acc"]), "state": r.state, "trial_id": r.trial_id}))
    return study


def importances(study, target: str = "robust") -> tuple[dict[str, float] | None, str, list[str]]:
    """fANOVA importances (sum to 1) of the parameters every trial has and that vary, or (None, why
    not, []); the third item lists the parameters left out because they did not vary."""
    import optuna

    trials = study.trials
    if len(trials) < 3:
        return None, f"it needs at least 3 trials with a validation, the study has {len(trials)}", []
    common = [p for p in trials[0].params if all(p in t.params for t in trials)]
    varying = [p for p in common if len({repr(t.params[p]) for t in trials}) > 1]
    fixed = [p for p in common if p not in varying]
    if not varying:
        return None, "the trials all tried the same parameter values", fixed
    get = (lambda t: t.value) if target == "robust" else (lambda t: t.user_attrs["clean_acc"])  # noqa: E731
    if len({get(t) for t in trials}) < 2:
        return None, f"every trial reached the same {target} accuracy", fixed
    try:
        ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=ev, params=varying, target=get)), "", fixed
    except Exception as exc:  # noqa: BLE001 - optuna refuses some spaces; say so instead of failing the report
        return None, f"Optuna could not compute it ({type(exc).__name__}: {str(exc)[:200]})", fixed


def plot_importance(out_dir: Path, study, targets: list[str], figure, save) -> tuple[str, str]:
    """``importance.png``: one bar per parameter and target (robust, and clean when the objective
    involves it). Returns (file name, caveat text or '')."""
    import numpy as np

    n = len(study.trials)
    results = {t: importances(study, t) for t in targets}
    warning = caveat(n)
    fig = figure(8, 4.8)
    ax = fig.subplots()
    title = "Parameter importance (Optuna fANOVA) over all trials, pruned ones at their last rung"
    good = {t: r[0] for t, r in results.items() if r[0] is not None}
    if not good:
        ax.set_axis_off()
        why = results[targets[0]][1]
        ax.text(0.5, 0.5, f"Not computed: {why}.", ha="center", va="center", wrap=True, fontsize=11,
                transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
    else:
        first = good.get("robust") or next(iter(good.values()))
        names = sorted(first, key=first.get)
        h = 0.8 / len(good)
        colors = {"robust": "#0072B2", "clean": "#E69F00"}
        for i, (t, imp) in enumerate(good.items()):
            ys = np.arange(len(names)) + (i - (len(good) - 1) / 2) * h
            vals = [imp.get(k, 0.0) for k in names]
            ax.barh(ys, vals, height=h, color=colors.get(t, "grey"), label=f"{t} val accuracy")
            for y, v in zip(ys, vals):
                ax.annotate(f"{v:.2f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlim(0, 1.15 * max(max(v.values()) for v in good.values()) + 1e-9)
        ax.set_xlabel("importance (share of the variance explained; sums to 1 per target)")
        ax.grid(axis="x", alpha=0.3)
        if len(good) > 1:
            ax.legend(fontsize=8, loc="lower right", frameon=False)
        fixed = results[targets[0]][2]
        extra = f"; not varied: {', '.join(fixed)}" if fixed else ""
        ax.set_title(f"{title}\nfrom {n} trials{extra}", fontsize=10)
    if warning:
        fig.supxlabel(f"Caveat: {warning}.", fontsize=9, color="#D55E00", wrap=True)
    save(fig, out_dir, "importance.png")
    return "importance.png", warning


def plot_interaction(out_dir: Path, study, dists: dict[str, Any], figure, save, state_colors: dict) -> tuple[str, str]:
    """``interaction.png``: the two most important parameters against each other, every trial a
    point coloured by its best robust accuracy (ringed: stopped by ASHA). A pattern along a diagonal
    or in one corner says the two act together; stripes along one axis say they do not. Returns
    (file name, the pair shown as text)."""
    from matplotlib.lines import Line2D

    imp, why, _ = importances(study, "robust")
    fig = figure(7.5, 5.6)
    ax = fig.subplots()
    pair = list(imp)[:2] if imp else []
    if len(pair) < 2:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"Not drawn: {why or 'fewer than two parameters varied'}.", ha="center", va="center",
                wrap=True, fontsize=11, transform=ax.transAxes)
        save(fig, out_dir, "interaction.png")
        return "interaction.png", ""
    trials = study.trials

    def axis(name: str, set_scale, set_ticks):
        d = dists.get(name)
        choices = getattr(d, "choices", None)
        if choices is not None:
            cats = [repr(c) for c in choices]
            set_ticks(range(len(cats)), [c.strip("'") for c in cats])
            return [cats.index(repr(t.params[name])) for t in trials]
        if getattr(d, "log", False):
            set_scale("log")
        return [float(t.params[name]) for t in trials]

    xs = axis(pair[0], ax.set_xscale, ax.set_xticks)
    ys = axis(pair[1], ax.set_yscale, ax.set_yticks)
    vals = [100 * t.value for t in trials]
    pruned = [t.user_attrs.get("state") == "pruned" for t in trials]
    sc = ax.scatter(xs, ys, c=vals, cmap="viridis", s=70, edgecolor=["black" if p else "white" for p in pruned],
                    lw=[1.4 if p else 0.5 for p in pruned], zorder=3)
    best = max(range(len(trials)), key=lambda i: vals[i])
    ax.scatter([xs[best]], [ys[best]], s=260, facecolor="none", edgecolor=state_colors.get("completed", "green"),
               lw=1.6, zorder=4)
    fig.colorbar(sc, ax=ax, label="best robust val accuracy reached (%)")
    ax.set_xlabel(f"{pair[0]} (importance {imp[pair[0]]:.2f})")
    ax.set_ylabel(f"{pair[1]} (importance {imp[pair[1]]:.2f})")
    ax.grid(alpha=0.3)
    ax.legend(handles=[Line2D([], [], ls="", marker="o", mfc="white", mec="black", mew=1.4, label="stopped by ASHA"),
                       Line2D([], [], ls="", marker="o", ms=13, mfc="none", mec=state_colors.get("completed", "green"),
                              label="best trial")], fontsize=8, loc="best", frameon=True)
    ax.set_title(f"The two most important parameters together ({len(trials)} trials)", fontsize=10)
    save(fig, out_dir, "interaction.png")
    return "interaction.png", f"{pair[0]} × {pair[1]}"
