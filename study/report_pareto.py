"""The report's Pareto plot (``pareto.png``): clean vs robust accuracy of the trials with the Pareto front
marked, on the figure the ranking uses — the final strong attack's (its robust accuracy and the clean accuracy
of the same images) over the trials it evaluated, where at least two have one; else the selection figures
(validation attack, best epoch), with the reason in the title. Accuracies in %.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import TrialRecord

__all__ = ["pareto_plot", "pareto_figure"]


def pareto_plot(out_dir: Path, records: list[TrialRecord], top: list[TrialRecord],
                search: list[TrialRecord] | None = None, final: dict[str, Any] | None = None) -> str:
    """Write ``pareto.png``; returns its name."""
    from .report import _save

    fig, _, _ = pareto_figure(records, top, search, final)
    _save(fig, out_dir, "pareto.png")
    return "pareto.png"


def pareto_figure(records: list[TrialRecord], top: list[TrialRecord], search: list[TrialRecord] | None = None,
                  final: dict[str, Any] | None = None):
    """Clean vs robust accuracy with the Pareto front; returns (figure, front, basis). ``basis`` "strong": the
    final strong attack's robust accuracy and the clean accuracy of the same images, over the trials it evaluated
    (the figure the ranking uses), when there are at least 2; else "selection": the validation figures at each
    trial's best epoch, with ``search`` (the front a robust+clean search found) as the front where given."""
    from matplotlib.patches import Rectangle

    from .final_eval import strong_of
    from .report import STATE_COLORS, _figure, _pct

    strong = {r.trial_id: strong_of(final or {}, r.trial_id) for r in records if r.best}
    fig_of = {tid: s for tid, s in strong.items() if s is not None}
    basis = "strong" if len(fig_of) >= 2 else "selection"
    if basis == "selection":
        fig_of = {r.trial_id: r.best for r in records if r.best}
    pts = [r for r in records if r.trial_id in fig_of]
    acc = lambda r, key: fig_of[r.trial_id][key]  # noqa: E731
    front = [r for r in pts if not any(acc(o, "clean_acc") >= acc(r, "clean_acc") and acc(o, "robust_acc") >=
                                       acc(r, "robust_acc") and (acc(o, "clean_acc"), acc(o, "robust_acc")) !=
                                       (acc(r, "clean_acc"), acc(r, "robust_acc")) for o in pts)]
    if basis == "selection" and search:
        front = list(search)
    front = sorted(front, key=lambda r: acc(r, "clean_acc"))
    top = [r for r in top if r.trial_id in fig_of]
    xy = lambda rs: ([_pct(acc(r, "clean_acc")) for r in rs], [_pct(acc(r, "robust_acc")) for r in rs])  # noqa: E731
    (ax_, ay_), (zx, zy) = xy(pts), xy(front + top)
    # Zoom on the front and the top trials when a few bad trials would squash them into a corner.
    pad_x, pad_y = max(1.0, 0.12 * (max(zx) - min(zx))), max(1.0, 0.12 * (max(zy) - min(zy)))
    box = (min(zx) - pad_x, min(100.0, max(zx) + pad_x), min(zy) - pad_y, min(100.0, max(zy) + pad_y))
    zoom = (box[1] - box[0]) < 0.5 * (max(ax_) - min(ax_)) or (box[3] - box[2]) < 0.5 * (max(ay_) - min(ay_))
    fig = _figure(13 if zoom else 9, 6)
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        for state in STATE_COLORS:
            mine = [r for r in pts if r.state == state]
            if mine:
                ax.scatter(*xy(mine), s=40, color=STATE_COLORS[state], edgecolor="white", lw=0.5, zorder=3,
                           label=state.replace("_", " "))
        fx, fy = xy(front)
        ax.plot(fx, fy, color="black", lw=1, ls="--", zorder=2)
        ax.scatter(fx, fy, s=150, facecolor="none", edgecolor="black", lw=1.3, zorder=4,
                   label="Pareto front the search found" if search and basis == "selection" else "Pareto front")
        ax.set_xlabel("clean accuracy on the strong attack's images (%)" if basis == "strong" else
                      "clean validation accuracy at the best epoch (%)")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set_ylabel("strong attack's robust accuracy (%)" if basis == "strong" else
                      "robust validation accuracy at the best epoch (%)")
    axes[0].margins(0.08)
    lo, hi = axes[0].get_xlim()
    axes[0].set_xlim(lo, min(hi, 101.0))
    if zoom:
        axes[1].set_xlim(*box[:2])
        axes[1].set_ylim(*box[2:])
        axes[0].add_patch(Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False, ls=":",
                                    ec="dimgrey", lw=1, zorder=1))
        axes[0].set_title("all trials (dotted box: zoomed on the right)", fontsize=10)
        axes[1].set_title("zoom: the Pareto front and the top trials", fontsize=10)
    ax = axes[-1]  # ids only where the points are spread out enough to read them, on the side with room
    x0, x1 = ax.get_xlim()
    for j, (r, x, y) in enumerate(zip(*[front] + list(xy(front)))):
        left = (x - x0) / (x1 - x0) > 0.6
        ax.annotate(r.trial_id, (x, y), xytext=(-10 if left else 10, 6 if j % 2 == 0 else -12),
                    textcoords="offset points", ha="right" if left else "left", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, title="trial state")
    if basis == "strong":
        fig.suptitle(f"Clean vs robust accuracy under the final strong attack (the ranking's figure)\n"
                     f"the {len(pts)} trials it evaluated; {len(front)} on the Pareto front")
    else:
        n_strong = sum(s is not None for s in strong.values())
        why = "no strong evaluation" if not n_strong else "only 1 trial has a strong figure"
        fig.suptitle(f"Clean vs robust accuracy by the selection figure (validation attack, best epoch): {why}\n"
                     f"{len(pts)} trials; {len(front)} on the Pareto front")
    return fig, front, basis
