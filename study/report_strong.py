"""The report's strong-evaluation panel: per evaluated trial, the figure that selected it (the
validation attack's robust accuracy, on the images the strong attack used) against the figure that
holds (the final strong attack's), with y = x and the 3-point band below it. Ringed points are flagged (their gap
stands out from the others', study/strong_flags.py); labels are moved apart where figures are close.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .final_eval import GAP_FLAG, GAP_WARNING, describe, rank, strong_of  # noqa: F401
from .records import TrialRecord
from .strong_flags import gap_threshold

__all__ = ["strong_plot", "strong_figure", "separate_labels", "NAME"]

NAME = "strong.png"


def strong_plot(out_dir: Path, records: list[TrialRecord], final: dict[str, Any]) -> str | None:
    """Write ``strong.png`` (accuracies in %); None when the study has no strong evaluation."""
    from .report import _save

    fig = strong_figure(records, final)
    if fig is None:
        return None
    _save(fig, out_dir, NAME)
    return NAME


def separate_labels(fig, texts, step_px: float = 2.0) -> None:
    """Move annotation ``texts`` down (in their offset) until no two overlap: trials with close figures put
    their labels on one spot ("3." printed over "4."). Each label keeps a leader line to its point."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    extent = lambda t: Text.get_window_extent(t, renderer)  # noqa: E731 - the text alone, not its leader line
    placed = []
    for t in sorted(texts, key=lambda t: -extent(t).y0):
        box, shift = extent(t), 0.0
        while any(box.translated(0, -shift).overlaps(p) for p in placed):
            shift += step_px
        if shift:
            x, y = t.xyann
            t.xyann = (x, y - shift * 72.0 / fig.dpi)  # offsets are in points
        placed.append(box.translated(0, -shift))


def strong_figure(records: list[TrialRecord], final: dict[str, Any], separate: bool = True):
    """The strong-evaluation figure (None without a strong evaluation); labels separated unless told not to."""
    from .report import STATE_COLORS, _figure

    rows = [(r, strong_of(final, r.trial_id)) for r in rank(records, final) if strong_of(final, r.trial_id)]
    if not rows:
        return None
    # across: the validation attack on the strong attack's own images (the selection figure when they are the
    # whole validation split), so the band and the flag measure the same paired gap: the band is the flag's
    # threshold (study/strong_flags.py: median gap + max(3 points, 3 robust SDs); 3 points under 3 trials)
    xs = [100 * s["val_attack_acc"] for _, s in rows]
    ys = [100 * s["robust_acc"] for _, s in rows]
    band = 100 * gap_threshold([(x - y) / 100 for x, y in zip(xs, ys)])[0]
    lo = max(0.0, min(xs + ys) - band - 2)
    hi = min(100.0, max(xs + ys) + 2)
    fig = _figure(8, 8.5)
    ax = fig.subplots()
    line = [lo, hi]
    ax.fill_between(line, [v - band for v in line], line, color="#56B4E9", alpha=0.25, lw=0, zorder=1,
                    label=f"within the flag threshold: {band:.1f} points below the selection figure")
    ax.plot(line, line, color="black", lw=1, zorder=2, label="strong = selection (y = x)")
    ax.plot(line, [v - band for v in line], color="#56B4E9", lw=1, ls="--", zorder=2)
    for state in STATE_COLORS:
        mine = [(x, y) for (r, _), x, y in zip(rows, xs, ys) if r.state == state]
        if mine:
            ax.scatter(*zip(*mine), s=55, color=STATE_COLORS[state], edgecolor="white", lw=0.6, zorder=4,
                       label=state.replace("_", " "))
    flagged = [(x, y) for (_, s), x, y in zip(rows, xs, ys) if s["flag"]]
    if flagged:
        ax.scatter(*zip(*flagged), s=170, facecolor="none", edgecolor="#D55E00", lw=1.5, zorder=5,
                   label=f"flagged: {GAP_WARNING}")
    left = lambda x: (x - lo) / max(hi - lo, 1e-9) > 0.75  # noqa: E731 - near the right edge: label on the left
    notes = [ax.annotate(f"{j + 1}. {r.trial_id}", (x, y), xytext=(-8 if left(x) else 8, -4),
                         textcoords="offset points", fontsize=8, ha="right" if left(x) else "left",
                         arrowprops=dict(arrowstyle="-", lw=0.5, color="grey", shrinkA=0, shrinkB=3))
             for j, ((r, _), x, y) in enumerate(zip(rows, xs, ys))]
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"selection figure: {rows[0][1]['val_attack'].upper()} robust accuracy (%)")
    ax.set_ylabel("strong figure: final attack's robust accuracy (%)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    n_flag = len(flagged)
    fig.suptitle(f"Does the pick hold? {len(rows)} trials attacked again; {n_flag} flagged (gap far above the "
                 "others')", fontsize=11)
    ax.set_title(textwrap.fill(describe(final).split(";")[0] + "; numbers: rank by the strong figure", 90),
                 fontsize=8, color="dimgrey")
    if separate:
        separate_labels(fig, notes)
    return fig
