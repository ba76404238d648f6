"""The HTML page of `advtune report`: one file, images embedded as data URIs, one inline script (sorting the
all-trials table by a click on a column), nothing fetched from the network (it opens offline, from any folder,
and can be mailed as is)."""
from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import Any

from .records import TrialRecord

__all__ = ["render", "front_section", "all_trials_section", "data_uri", "CAPTIONS"]

# file -> (alt text, one-line caption saying how to read the plot)
CAPTIONS = {
    "schedules.png": ("learning-rate schedules and epsilon ramps of the top trials",
                      "Top: each top trial's learning rate over training (bottom axis: fraction of steps, top axis: "
                      "epochs); bottom: its training epsilon ramp against the evaluation epsilon. Dotted parts were "
                      "never run (the trial was stopped early)."),
    "pareto.png": ("clean versus robust validation accuracy with the Pareto front",
                   "One point per trial at its best (robust) epoch; ringed points are on the Pareto front (no other "
                   "trial beats them on both clean and robust accuracy); up and right is better."),
    "curves.png": ("robust validation accuracy per epoch of every trial with ASHA rungs",
                   "One line per trial, coloured by its final state; dotted verticals are ASHA's rungs, where a trial "
                   "below the top 1/reduction-factor stops; an X marks where ASHA stopped a trial."),
    "importance.png": ("parameter importance from Optuna's fANOVA evaluator",
                       "A longer bar means that parameter explains more of the variation in best robust accuracy "
                       "(and clean accuracy, when the objective involves it) across all trials, each at the best "
                       "robust accuracy it reached before it stopped: pruned trials count at their last rung "
                       "(Optuna fANOVA on a study derived from the trials' records)."),
    "interaction.png": ("the two most important parameters against each other",
                        "Each trial at the values it tried of the two most important parameters, coloured by the "
                        "best robust accuracy it reached; black rings: stopped by ASHA; the large ring is the best "
                        "trial. A good region in one corner or along a diagonal means the two act together; "
                        "colour stripes along one axis mean they act apart."),
    "params.png": ("best robust accuracy against each searched parameter",
                   "One panel per searched parameter: each point is a trial's best robust accuracy at the value it "
                   "tried; the ringed point is the best trial. Pruned trials ran fewer epochs, so tend to sit lower."),
    "strong.png": ("selection figure against the final strong attack's figure per trial, with the 3-point band",
                   "One point per trial the study attacked again after the search: across, the best robust accuracy "
                   "under the validation attack that selected it; up, its robust accuracy under the final strong "
                   "attack on validation images. On the line the pick holds; in the shaded band it lost at most 3 "
                   "points; ringed points are flagged: their gap stands out from the other trials' (possible gradient masking)."),
    "history.png": ("best robust validation accuracy found so far against trials and against compute",
                    "Left: each trial's selection figure (grey) and the best so far (blue steps) in the order the "
                    "trials finished; right: the same against the grad passes spent by then. Diamonds: the strong "
                    "figure of the trials the final evaluation attacked. A curve still rising at the right end means "
                    "more trials would likely find better."),
    "compute.png": ("grad passes spent per trial and in total against the no-pruning cost",
                    "Coloured bars: grad passes each trial spent; hatched bars: what it would have cost run to the "
                    "last epoch. Right: the study's total against running every trial to the end."),
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1360px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
ul.summary { padding-left: 1.2em; } ul.summary li { margin: 0.15em 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.3em; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.95em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; } section.trial { margin: 1.5em 0 2.5em; }
.state { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 50%; margin-right: 0.35em; }
th, td { white-space: nowrap; } .wide { overflow-x: auto; max-width: 100%; }
table.sortable th { cursor: pointer; } table.sortable th:hover { background: #e4e4e4; }
"""

# Sorts the all-trials table by the clicked column (numbers as numbers, "-" last); a second click reverses.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1;
      th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      var key = function (r) { var t = r.cells[col].textContent.trim(), n = parseFloat(t.replace(/,/g, ''));
                               return t === '-' || t === '' ? null : (isNaN(n) ? t : n); };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null) return 1; if (y === null) return -1;
        return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1)) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _summary(marker: dict[str, Any], records: list[TrialRecord], top: list[TrialRecord],
             summary: dict[str, float]) -> list[str]:
    from .spec import asha_rungs

    spec, b = marker["spec"], marker["spec"].get("base_config", {})
    states: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    best = top[0]
    clean = max((r for r in records if r.best), key=lambda r: r.best["clean_acc"])
    spent, full = summary["grad_passes"], summary["grad_passes_no_pruning"]
    share = f" ({100 * spent / full:.0f}%)" if full else ""
    rungs = asha_rungs(spec["grace_period"], spec["reduction_factor"], spec["max_epochs"])
    return [
        f"<b>{len(records)}</b> trials recorded of {spec.get('num_samples', '?')} planned: "
        + ", ".join(f"{n} {_e(s.replace('_', ' '))}" for s, n in sorted(states.items(), key=lambda kv: -kv[1])),
        f"<b>{summary['pruned']}</b> stopped early by ASHA ({_rungs_text(spec, rungs)}; up to {spec['max_epochs']} "
        f"epochs a trial)",
        f"best robust validation accuracy <b>{_pct(best.best['robust_acc'])}%</b> "
        f"(clean {_pct(best.best['clean_acc'])}%)"
        f" — trial <code>{_e(best.trial_id)}</code> ({_e(best.state)}) at epoch {_fmt(best.best['epoch'])}",
        f"highest clean validation accuracy at a trial's best epoch {_pct(clean.best['clean_acc'])}% — trial "
        f"<code>{_e(clean.trial_id)}</code> (robust {_pct(clean.best['robust_acc'])}%)",
        f"compute: <b>{spent:,.0f}</b> grad passes spent, against {full:,.0f} without pruning{share}; "
        f"{summary['trial_seconds']:,.0f} trial-seconds",
        f"threat model: {_e(b.get('norm', '?'))} eval ε {_fmt(float(b.get('eval_eps', 0)))} (pixel units), "
        f"validation PGD-{_e(b.get('val_steps', '?'))}; data {_e(b.get('dataset', '?'))}, model "
        f"{_e(b.get('model', '?'))}",
    ]


def _table(top: list[TrialRecord], names: list[str], final: dict[str, Any] | None = None) -> str:
    from .final_eval import strong_of
    from .report import STATE_COLORS

    head = ["rank", "trial", "state", "best robust %", "strong robust %", "gap", "clean %", "epoch", "epochs run"] + names
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for rank, r in enumerate(top, 1):
        dot = f'<span class="state" style="background:{STATE_COLORS.get(r.state, "grey")}"></span>'
        cells = [f'<td class="num">{rank}</td>', f"<td><code>{_e(r.trial_id)}</code></td>",
                 f"<td>{dot}{_e(r.state.replace('_', ' '))}</td>",
                 f'<td class="num">{_pct(r.best["robust_acc"])}</td>', _strong_cells(strong_of(final or {}, r.trial_id)),
                 f'<td class="num">{_pct(r.best["clean_acc"])}</td>',
                 f'<td class="num">{_fmt(r.best["epoch"])}</td>', f'<td class="num">{_fmt(r.epochs_run)}</td>']
        cells += [f'<td class="num">{_e(_fmt(r.params[n])) if n in r.params else "-"}</td>' for n in names]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def all_trials_section(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Every trial (``rows``: study.status.status_rows, ranked as everywhere), sortable by a click on a column;
    the same rows are in ``trials.csv`` beside the page."""
    head = ["rank", "trial", "state", "selection %", "strong %", "gap", "clean %", "epochs", "grad passes"] + names + \
        ["why stopped"]  # last: a long reason must not push the figures out of view
    out = ["<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        gap = "-" if r["strong_gap"] is None else f"{100 * r['strong_gap']:+.1f}{' !' if r['flag'] else ''}"
        cells = [_fmt(r["rank"]) if r["rank"] is not None else "-", r["trial_id"], r["state"].replace("_", " "),
                 _pct(r["robust_acc"]), _pct(r["strong_robust_acc"]), gap, _pct(r["clean_acc"]),
                 _fmt(r["epochs_run"]), f"{r['grad_passes']:,}"]
        cells += [_fmt(r["params"][n]) if n in r["params"] else "-" for n in names] + [r["stop_reason"] or "-"]
        text = (1, 2, len(cells) - 1)
        out.append("<tr>" + "".join(f'<td{"" if i in text else " class=num"}>{_e(c)}</td>'
                                    for i, c in enumerate(cells)) + "</tr>")
    return (f"<h2>All {len(rows)} trials</h2>\n<p class=\"meta\">Click a column to sort by it; the same table is "
            "<code>trials.csv</code> beside this page. selection % = the validation attack's best robust accuracy "
            "(what the search ranked on); strong % = the final strong attack's.</p>\n<div class=\"wide\">"
            "<table class=\"sortable\" id=\"all-trials\">\n" + "\n".join(out) + "\n</tbody></table></div>")


def front_section(front: list[TrialRecord], study_dir: Path) -> str:
    """The Pareto front a robust+clean search found, one row per point with the command that reruns it
    (``advtune export --pareto`` writes the configs under these names, in this order)."""
    from .export import entry_name, pareto_dir

    rows = ["<tr><th>#</th><th>trial</th><th>robust %</th><th>clean %</th><th>epoch</th><th>rerun</th></tr>"]
    for rank, r in enumerate(front, 1):
        cmd = f"advtune train --config {pareto_dir(study_dir) / entry_name(rank, r.trial_id)}"
        rows.append(f'<tr><td class="num">{rank}</td><td><code>{_e(r.trial_id)}</code></td>'
                    f'<td class="num">{_pct(r.best["robust_acc"])}</td><td class="num">{_pct(r.best["clean_acc"])}</td>'
                    f'<td class="num">{_fmt(r.best["epoch"])}</td><td><code>{_e(cmd)}</code></td></tr>')
    return (f"<h2>Pareto front the search found ({len(front)} trials)</h2>\n<p class=\"meta\">Robust and clean "
            "validation accuracy at each trial's best epoch; no other finished trial of the study beats a point on "
            "both. The configs are written by <code>" + _e(f"advtune export {study_dir} --pareto") +
            "</code> (which <code>advtune run</code> already did).</p>\n<table>\n" + "\n".join(rows) + "\n</table>")


def _strong_cells(strong: dict[str, Any] | None) -> str:
    if strong is None:
        return '<td class="num">-</td><td class="num">-</td>'
    from .final_eval import GAP_WARNING

    warn = (f' title="{_e(GAP_WARNING + ": " + strong.get("flag_reason", ""))}" style="color:#D55E00"'
            if strong["flag"] else "")
    return (f'<td class="num">{_pct(strong["robust_acc"])}</td>'
            f'<td class="num"{warn}>{100 * strong["gap"]:+.1f}{" !" if strong["flag"] else ""}</td>')


def render(marker: dict[str, Any], records: list[TrialRecord], top: list[TrialRecord], names: list[str],
           summary: dict[str, float], plots: list[str], out_dir: Path, study_dir: Path,
           final: dict[str, Any] | None = None, *, notes: dict[str, str] | None = None,
           sections: list[str] | None = None) -> str:
    """The whole page as a string; ``plots`` are PNG file names already written in ``out_dir``;
    ``notes`` extend a plot's caption (plain text), ``sections`` are HTML blocks put before the plots."""
    name = marker["spec"]["name"]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    notes = notes or {}
    figures = "\n".join(
        f'<figure id="{_e(Path(p).stem)}">\n<img src="{data_uri(out_dir / p)}" alt="{_e(CAPTIONS[p][0])}" '
        f'data-file="{_e(p)}">\n<figcaption><b>{_e(p)}</b> — {_e(CAPTIONS[p][1] + notes.get(p, ""))}</figcaption>'
        '\n</figure>' for p in plots)
    items = "\n".join(f"<li>{line}</li>" for line in _summary(marker, records, top, summary))
    rerun = f"advtune export {study_dir} --top-k {len(top)}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>advtune report: {_e(name)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>advtune report: {_e(name)}</h1>
<p class="meta">written {stamp} by <code>advtune report</code>; accuracies are on the validation split (selection
never touches the test set); the PNG files beside this page are the same plots.</p>
<h2>Summary</h2>
<ul class="summary">
{items}
</ul>
<h2>Top {len(top)} trials by {"the final strong attack's robust accuracy" if (final or {}).get("trials")
                             else "best robust validation accuracy"}</h2>
<div class="wide">{_table(top, names, final)}</div>
<p class="meta">Export them as configs that <code>advtune train --config</code> reruns:
<code>{_e(rerun)}</code></p>
{chr(10).join(sections or [])}
<h2>Plots</h2>
{figures}
<script>{_SORT_JS}</script>
</body>
</html>
"""


def _rungs_text(spec: dict[str, Any], rungs: list) -> str:
    """Where ASHA compared trials, in the study's pruning rule's unit (study/pruning.py)."""
    if spec.get("pruning", "epoch") == "full_strength":
        from .pruning import rule_of

        return f"rule full_strength: {rule_of(spec).describe_rungs()}, after each trial's own warmup and eps ramp"
    return f"rungs at epoch {', '.join(str(r) for r in rungs) or 'none'}"
