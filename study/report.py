"""`advtune report`: plots of a study and one self-contained HTML page, read from the study's own
files (no Ray, no cluster).

Writes into ``STUDY/report`` (or ``--out``)::

    schedules.png   LR schedule and training-epsilon ramp of the top-k trials over training progress
    pareto.png      clean vs robust accuracy with the Pareto front: the final strong attack's figures (its clean and
                    robust accuracy on the same images) where at least 2 trials have one, else the selection
                    figures (validation, best epoch); the title says which
    curves.png      robust validation accuracy per epoch, ASHA rungs and where trials were stopped
    importance.png  Optuna's fANOVA parameter importance over all trials (pruned ones at their last rung)
    interaction.png the two most important parameters against each other, coloured by robust accuracy
    params.png      best robust accuracy against each searched parameter
    compute.png     grad passes per trial against the cost without pruning
    strong.png      selection figure vs the final strong attack's figure per trial, with the 3-point band
                    (only when the study has a final strong evaluation)
    history.png     best selection figure so far against trials finished and against grad passes spent
    index.html      all of the above (images embedded as data URIs) with a summary and the top-k table
    trials.csv      every trial (searched values, state, why stopped, selection/strong/clean figures, grad passes)
    trial-KK-ID.png each top trial's curves (accuracy, loss, LR with its schedule, epsilon), in its page section

Accuracies are shown in %, epsilons in pixel units (images in [0, 1]), compute in grad passes
(forward+backward passes over images).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import importance
from .errors import StudyError
from .export import compute_summary, load_study, trial_config
from .objectives import objective_of, search_front
from .records import TrialRecord

__all__ = ["write_report", "STATE_COLORS"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
STATE_COLORS = {"completed": "#009E73", "pruned": "#E69F00", "diverged": "#D55E00",
                "catastrophic_overfitting": "#CC79A7", "error": "#000000", "running": "#0072B2"}
DPI = 110


def write_report(study_dir: str | Path, out: str | Path | None = None, top_k: int = 5) -> Path:
    """Write the plots and ``index.html`` of the study in ``study_dir``; returns the HTML path."""
    from . import report_html

    study_dir = Path(study_dir)
    if top_k < 1:
        raise StudyError(f"--top-k {top_k} is out of range: it must be at least 1")
    marker, records = load_study(study_dir)
    spec = marker["spec"]
    from .final_eval import load_final, rank
    from .report_pareto import pareto_plot
    from .report_strong import strong_plot

    objective = objective_of(marker)
    final = load_final(study_dir)
    # by the final strong figure where there is one, then the selection figure (robust:clean>=X: feasible first)
    ranked = rank(records, final, objective)
    if not ranked:
        raise StudyError(f"{study_dir} has no trial with a finished validation yet; nothing to report (run "
                         f"`advtune status {study_dir}` to see its trials)")
    out_dir = Path(out) if out else study_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = searched_params(marker, records)
    ostudy, _ = _optuna_study(study_dir, spec["name"])
    top = ranked[:top_k]
    front = search_front(study_dir, marker, records)  # None unless robust+clean
    dists = {**_distributions(ostudy), **_space_distributions(study_dir, marker)}
    derived = importance.derived_study(records, dists)
    targets = ["robust", "clean"] if objective.kind != "robust" else ["robust"]
    imp_png, caveat = importance.plot_importance(out_dir, derived, targets, _figure, _save)
    int_png, pair = importance.plot_interaction(out_dir, derived, dists, _figure, _save, STATE_COLORS)
    plots = [
        _schedules(out_dir, marker, top),
        pareto_plot(out_dir, records, top, front, final),
        _curves(out_dir, spec, records, top),
        imp_png,
        int_png,
        _params(out_dir, ranked, names, dists),
        _compute(out_dir, ranked + [r for r in records if r.metrics and not r.best], spec["max_epochs"]),
    ]
    from .report_history import history_plot

    plots += [p for p in [strong_plot(out_dir, records, final), history_plot(out_dir, records, final)] if p]
    summary = compute_summary(records, spec["max_epochs"])
    notes = {imp_png: f" Caveat: {caveat}." if caveat else "", int_png: f" Shown: {pair}." if pair else ""}
    from .status import status_rows

    sections = [report_html.front_section(front, study_dir)] if front else []
    sections.append(report_html.all_trials_section(status_rows(records, final, objective), names))
    from .report_trials import trial_sections

    sections.append(trial_sections(out_dir, marker, top, final, study_dir, report_html.data_uri))
    page = report_html.render(marker, records, top, names, summary, plots, out_dir, study_dir, final, notes=notes,
                              sections=sections)
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    _trials_csv(out_dir, records, final, objective)
    return index


def _trials_csv(out_dir: Path, records: list[TrialRecord], final: dict[str, Any], objective) -> Path:
    """``trials.csv``: every trial, ranked as everywhere (searched values, state, why stopped, selection, strong
    and clean figures, grad passes): the table to sort in a spreadsheet."""
    from .status import status_csv, status_rows

    path = out_dir / "trials.csv"
    path.write_text(status_csv(status_rows(records, final, objective)), encoding="utf-8")
    return path


def searched_params(marker: dict[str, Any], records: list[TrialRecord]) -> list[str]:
    names = list(marker.get("space_params") or [])
    for r in records:
        names += [k for k in r.params if k not in names]
    return names


# --- figure helpers --------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly; pyplot (and its global backend state) is never touched
    return fig


def _save(fig, out_dir: Path, name: str) -> None:
    fig.savefig(out_dir / name, dpi=DPI, facecolor="white")


def _state_handles(states) -> list:
    from matplotlib.lines import Line2D

    present = set(states)
    return [Line2D([], [], ls="", marker="o", color=STATE_COLORS[s], label=s.replace("_", " "))
            for s in STATE_COLORS if s in present]


def _pct(v: float) -> float:
    return 100.0 * v


def _short_num(x: float, _pos=None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


# --- the plots --------------------------------------------------------------------------------------------
def _schedules(out_dir: Path, marker: dict[str, Any], top: list[TrialRecord]) -> str:
    _save(schedules_figure(marker, top), out_dir, "schedules.png")
    return "schedules.png"


def schedules_figure(marker: dict[str, Any], top: list[TrialRecord]):
    """The LR schedules (top) and training-epsilon ramps (bottom) of ``top`` over training progress."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    from advtune.trainables.schedules import eps_at, schedule_from_config

    fig = _figure(10, 6.4)
    ax_lr, ax_eps = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    t = np.linspace(0.0, 1.0, 501)
    colors = [colormaps["tab10"](i % 10) for i in range(len(top))]
    cfg = None
    any_cut = False
    for rank, (rec, color) in enumerate(zip(top, colors), 1):
        cfg = trial_config(marker, rec)
        lr = schedule_from_config(cfg)
        eps = [eps_at(x, cfg.train_eps_value, cfg.eps_ramp, cfg.eps_ramp_start) for x in t]  # 0 until T1
        ran = min(1.0, rec.epochs_run / cfg.epochs) if cfg.epochs else 1.0
        done = t <= ran + 1e-9
        any_cut |= ran < 1.0
        label = f"#{rank} {rec.trial_id} ({_pct(rec.best['robust_acc']):.1f}% robust)"
        for ax, y in ((ax_lr, np.array([lr(x) for x in t])), (ax_eps, np.array(eps))):
            ax.plot(t[done], y[done], color=color, lw=2, label=label)
            if not done.all():
                ax.plot(t[~done], y[~done], color=color, lw=1.2, ls=":")
    ax_eps.axhline(cfg.eval_eps, color="black", lw=0.9, ls=(0, (4, 4)), zorder=5)  # gaps show a trial beneath
    ax_lr.set_ylabel(f"learning rate (SGD, batch {cfg.batch_size})")
    ax_eps.set_ylabel(f"train ε ({cfg.norm}, pixel units)")
    ax_eps.set_xlabel("training progress (fraction of steps)")
    ax_eps.set_xlim(0, 1)
    ax_lr.set_ylim(bottom=0)
    ax_eps.set_ylim(0, 1.12 * max([cfg.eval_eps] + [max(line.get_ydata()) for line in ax_eps.get_lines()]))
    epochs = cfg.epochs
    top_axis = ax_lr.secondary_xaxis("top", functions=(lambda x: x * epochs, lambda e: e / epochs))
    top_axis.set_xlabel("epoch")
    step = max(1, math.ceil(epochs / 12))
    top_axis.set_xticks(range(0, epochs + 1, step))
    for ax in (ax_lr, ax_eps):
        ax.grid(alpha=0.3)
    handles, labels = ax_lr.get_legend_handles_labels()
    if any_cut:
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.2))
        labels.append("not run (stopped early)")
    handles.append(Line2D([], [], color="black", ls=(0, (4, 4)), lw=0.9))
    labels.append(f"eval ε = {cfg.eval_eps:.4g} (threat model)")
    ax_lr.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="top trials",
                 title_fontsize=8, frameon=False)
    fig.suptitle(f"LR schedule and training-ε ramp of the top {len(top)} trials, in the report's ranking")
    return fig


def _curves(out_dir: Path, spec: dict[str, Any], records: list[TrialRecord], top: list[TrialRecord] = ()) -> str:
    """``top``: the report's top trials, drawn thicker and named at their last validation ("#1 id")."""
    from matplotlib.lines import Line2D

    from .report_strong import separate_labels

    from .pruning import trial_rung_epochs
    from .spec import asha_rungs

    fig = _figure(10, 6)
    ax = fig.subplots()
    # the full_strength rule meets each trial's rungs at its own epochs (after its warmup and eps ramp):
    # marked on each curve instead of as lines shared by all
    own_rungs = spec.get("pruning", "epoch") == "full_strength"
    rungs = [] if own_rungs else asha_rungs(spec["grace_period"], spec["reduction_factor"], spec["max_epochs"])
    for rung in rungs:
        ax.axvline(rung, color="grey", ls=":", lw=1.2, zorder=1)
    if rungs:  # named on a top axis, where no curve can run over the labels
        top_axis = ax.secondary_xaxis("top")
        top_axis.set_xticks(rungs, [f"rung {r:g}" for r in rungs], fontsize=8, color="dimgrey")
    stopped_other, names = False, []
    for r in records:
        pts = [(m["epoch"], _pct(m["robust_acc"])) for m in r.metrics if isinstance(m.get("robust_acc"), (int, float))]
        if not pts:
            continue
        color = STATE_COLORS.get(r.state, "grey")
        rank = next((i for i, t in enumerate(top, 1) if t.trial_id == r.trial_id), None)
        ax.plot(*zip(*pts), color=color, lw=2.6 if rank else 1.2, alpha=1.0 if rank else 0.55, marker="o",
                ms=4 if rank else 3, zorder=3 if rank else 2)
        if rank:
            names.append(ax.annotate(f"#{rank} {r.trial_id}", pts[-1], xytext=(6, 0), textcoords="offset points",
                                     fontsize=8, va="center", fontweight="bold",
                                     arrowprops=dict(arrowstyle="-", lw=0.5, color="grey", shrinkA=0, shrinkB=3)))
        if own_rungs:  # where ASHA compared this trial: its first validation at or after each of its rungs
            met = [next((p for p in pts if p[0] >= e - 1e-9), None) for e in trial_rung_epochs(spec, r.params)]
            met = [p for p in met if p is not None]
            if met:
                ax.plot(*zip(*met), ls="", marker="D", ms=6, mfc="none", mec=color, mew=1.3, zorder=3)
        if r.state == "pruned":
            ax.plot(*pts[-1], ls="", marker="X", ms=10, color=color, mec="black", mew=0.8, zorder=4)
        elif r.state in ("diverged", "catastrophic_overfitting", "error"):
            ax.plot(*pts[-1], ls="", marker="v", ms=9, color=color, mec="black", mew=0.8, zorder=4)
            stopped_other = True
    handles = _state_handles(r.state for r in records if r.metrics)
    handles = [Line2D([], [], color=h.get_color(), lw=1.5, marker="o", ms=3, label=h.get_label()) for h in handles]
    if any(r.state == "pruned" for r in records):
        handles.append(Line2D([], [], ls="", marker="X", ms=9, color="white", mec="black", label="stopped by ASHA"))
    if stopped_other:
        handles.append(Line2D([], [], ls="", marker="v", ms=8, color="white", mec="black",
                              label="stopped (diverged / overfit / error)"))
    if rungs:
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.2, label="ASHA rung"))
    if own_rungs:
        handles.append(Line2D([], [], ls="", marker="D", ms=6, mfc="none", mec="black",
                              label="ASHA rung of that trial\n(epochs at full strength)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel("robust validation accuracy (%)")
    ax.set_xlim(0, spec["max_epochs"] + (0.3 + 0.12 * spec["max_epochs"] if top else 0.3))  # room for the names
    ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    ax.set_xticks(range(0, spec["max_epochs"] + 1, max(1, math.ceil(spec["max_epochs"] / 12))))
    ax.grid(alpha=0.3)
    from .pruning import rule_of

    ax.set_title(f"Robust validation accuracy per epoch ({_threat(spec)})\nASHA keeps "  # two lines: fits
                 f"{rule_of(spec).describe_keeps()} (rule: {spec.get('pruning', 'epoch')})"
                 + (f"; the top {len(top)} trials named" if top else ""))
    if names:
        separate_labels(fig, names)
    _save(fig, out_dir, "curves.png")
    return "curves.png"


def _threat(spec: dict[str, Any]) -> str:
    b = spec.get("base_config", {})
    return f"PGD-{b.get('val_steps', '?')} {b.get('norm', '')} ε={float(b.get('eval_eps', 0)):.4g}"


def _optuna_study(study_dir: Path, name: str):
    """The study's Optuna study from its SQLite storage, or (None, why not)."""
    db = study_dir / "optuna.db"
    if not db.exists():
        return None, f"the study has no Optuna storage ({db.name} is missing)"
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db}"), ""
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign database must not stop the report
        return None, f"the Optuna storage could not be read ({type(exc).__name__}: {str(exc)[:200]})"


def _distributions(study) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in study.trials if study is not None else []:
        out.update({k: v for k, v in t.distributions.items() if k not in out})
    return out


def _space_distributions(study_dir: Path, marker: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters' distributions from the study's copy of its space ({} if unreadable)."""
    from advtune.search_spaces import load_space

    from .warm_start import space_distributions

    try:
        base = trial_config_base(marker)
        return space_distributions(load_space(study_dir / "space.yaml", base))
    except Exception:  # noqa: BLE001 - an old or hand-edited study: Optuna's own record is used instead
        return {}


def trial_config_base(marker: dict[str, Any]):
    from advtune.trainables.config import TrialConfig

    return TrialConfig.from_dict(marker["spec"]["base_config"])


def _params(out_dir: Path, ranked: list[TrialRecord], names: list[str], dists: dict[str, Any]) -> str:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    n = max(1, len(names))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(max(8.0, 3.6 * cols), 3.0 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        pts = [(r.params[name], _pct(r.best["robust_acc"]), r) for r in ranked if name in r.params]
        dist = dists.get(name)
        choices = getattr(dist, "choices", None)
        if choices is not None or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _, _ in pts):
            # categorical: one column per choice, points spread sideways so that equal values stay visible
            cats = [repr(c) for c in choices] if choices is not None else sorted({repr(v) for v, _, _ in pts})
            seen: dict[str, int] = {}
            xs = []
            for v, _, _ in pts:
                k = seen[repr(v)] = seen.get(repr(v), -1) + 1
                xs.append(cats.index(repr(v)) + (((k * 0.618) % 1.0) - 0.5) * 0.35)
            ax.set_xticks(range(len(cats)), [c.strip("'") for c in cats], fontsize=9)
            ax.set_xlim(-0.6, len(cats) - 0.4)
        else:
            xs = [float(v) for v, _, _ in pts]
            log = getattr(dist, "log", None)
            if log or (log is None and xs and min(xs) > 0 and max(xs) / min(xs) > 20):
                ax.set_xscale("log")  # ticks at 1, 2, 5 x 10^k in plain numbers: short labels that never collide
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.margins(x=0.08)
        ax.scatter(xs, [y for _, y, _ in pts], c=[STATE_COLORS.get(r.state, "grey") for _, _, r in pts], s=30,
                   edgecolor="white", lw=0.5, zorder=3)
        if pts and pts[0][2] is ranked[0]:
            ax.scatter(xs[:1], [pts[0][1]], s=120, facecolor="none", edgecolor="black", lw=1.2, zorder=4)
        kind = " (categorical)" if choices is not None else (" (log scale)" if ax.get_xscale() == "log" else "")
        ax.set_xlabel(name + kind)
        ax.set_ylabel("best robust acc (%)")
        ax.margins(y=0.12)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    if not names:
        axes[0].text(0.5, 0.5, "This study searched no parameter.", ha="center", va="center",
                     transform=axes[0].transAxes)
    handles = _state_handles(r.state for r in ranked)
    handles.append(Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec="black", label="best trial"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.suptitle("Best robust validation accuracy against each searched parameter (one point per trial)")
    _save(fig, out_dir, "params.png")
    return "params.png"


def _compute(out_dir: Path, ranked: list[TrialRecord], max_epochs: int) -> str:
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    s = compute_summary(ranked, max_epochs)
    n = len(ranked)
    fig = _figure(11, max(4.0, 0.28 * n + 2.0))
    ax, ax_tot = fig.subplots(1, 2, width_ratios=[3, 1])
    ys = list(range(n))[::-1]  # best trial on top
    full = [r.grad_passes / r.epochs_run * max_epochs if r.epochs_run else 0 for r in ranked]
    ax.barh(ys, full, color="white", edgecolor="grey", hatch="///", lw=0.8, zorder=2)
    ax.barh(ys, [r.grad_passes for r in ranked], color=[STATE_COLORS.get(r.state, "grey") for r in ranked], zorder=3)
    ax.set_yticks(ys, [f"{r.trial_id} ({_pct(r.best['robust_acc']):.1f}%)" if r.best else f"{r.trial_id} (-)"
                       for r in ranked],
                  fontsize=8 if n <= 40 else 6)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("grad passes (forward+backward passes over images)")
    ax.set_ylabel("trial (best robust acc), best on top")
    ax.xaxis.set_major_formatter(FuncFormatter(_short_num))
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=STATE_COLORS[st], label=f"spent, {st.replace('_', ' ')}")
               for st in STATE_COLORS if any(r.state == st for r in ranked)]
    handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///", label=f"cost at {max_epochs} epochs"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=9, frameon=False)
    spent, nopr = s["grad_passes"], s["grad_passes_no_pruning"]
    bars = ax_tot.bar([0, 1], [spent, nopr], color=["#0072B2", "white"], edgecolor=["#0072B2", "grey"],
                      hatch=["", "///"], width=0.6)
    for b, v in zip(bars, (spent, nopr)):
        ax_tot.annotate(_short_num(v), (b.get_x() + b.get_width() / 2, v), xytext=(0, 3), textcoords="offset points",
                        ha="center", fontsize=9)
    ax_tot.set_xticks([0, 1], ["spent", "no pruning"])
    ax_tot.set_ylabel("total grad passes")
    ax_tot.set_ylim(0, max(nopr, spent) * 1.15 + 1)
    ax_tot.yaxis.set_major_formatter(FuncFormatter(_short_num))
    ax_tot.grid(axis="y", alpha=0.3)
    ax_tot.set_title("all trials", fontsize=10)
    pct = 100 * spent / nopr if nopr else 100.0
    fig.suptitle(f"Compute: {spent:,.0f} grad passes spent, {pct:.0f}% of the {nopr:,.0f} the same trials would "
                 f"cost without pruning")
    _save(fig, out_dir, "compute.png")
    return "compute.png"
