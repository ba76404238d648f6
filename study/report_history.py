"""The report's optimization history: the best selection figure found so far against the trials finished and
against the compute spent (grad passes), with each evaluated trial's strong figure where the study has one.

Trials are taken in the order they finished (the wall-clock ``timestamp`` of their last validation); the
compute axis adds each trial's grad passes in that order, so it is the study's spend when that trial ended
(trials running side by side make it an upper bound at that moment).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .final_eval import strong_of
from .records import TrialRecord

__all__ = ["history_plot", "NAME"]

NAME = "history.png"


def _finish_order(records: list[TrialRecord]) -> list[TrialRecord]:
    done = [r for r in records if r.best]
    return sorted(done, key=lambda r: (r.metrics[-1].get("timestamp", float("inf")), r.trial_id))


def history_plot(out_dir: Path, records: list[TrialRecord], final: dict[str, Any]) -> str | None:
    """Write ``history.png`` (accuracies in %); None when no trial has a validation."""
    from .report import _figure, _save, _short_num

    trials = _finish_order(records)
    if not trials:
        return None
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    sel = [100 * r.best["robust_acc"] for r in trials]
    best_so_far = [max(sel[:i + 1]) for i in range(len(sel))]
    spent, total = [], 0
    for r in trials:
        total += r.grad_passes
        spent.append(total)
    strong = [(i, 100 * s["robust_acc"]) for i, r in enumerate(trials) if (s := strong_of(final, r.trial_id))]
    fig = _figure(12, 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, xs, label in ((axes[0], list(range(1, len(trials) + 1)), "trials finished"),
                          (axes[1], spent, "grad passes spent (cumulative, in finishing order)")):
        ax.scatter(xs, sel, s=18, color="#999999", zorder=2, label="a trial's selection figure")
        ax.step(xs, best_so_far, where="post", color="#0072B2", lw=2, zorder=3, label="best selection figure so far")
        if strong:
            ax.scatter([xs[i] for i, _ in strong], [v for _, v in strong], s=40, marker="D", color="#D55E00",
                       zorder=4, label="strong figure (final evaluation)")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].xaxis.set_major_formatter(FuncFormatter(_short_num))
    axes[0].set_ylabel("robust validation accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(f"Optimization history: the best robust validation accuracy found after each of {len(trials)} "
                 "trials, and after the compute spent")
    _save(fig, out_dir, NAME)
    return NAME
