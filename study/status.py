"""``advtune status``: a study's trials in the study's one ranking (``objectives.rank_trials``), as a
table with a legend of exactly the columns it prints, as JSON or as CSV.

Accuracies are fractions in [0, 1] in JSON and CSV, percentages in the table. Trials without a
finished validation come last, unranked (``rank`` null / empty).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from .objectives import Objective, rank_trials
from .records import TrialRecord

__all__ = ["status_rows", "status_table", "status_legend", "status_json", "status_csv", "FORMATS"]

FORMATS = ("table", "json", "csv")
_CSV_FIELDS = ("rank", "trial_id", "state", "epochs_run", "best_epoch", "robust_acc", "strong_robust_acc",
               "strong_gap", "flag", "clean_acc", "meets_clean_floor", "grad_passes", "stop_reason")


def status_rows(records: list[TrialRecord], final: dict[str, Any] | None,
                objective: Objective | None) -> list[dict[str, Any]]:
    """One dict per trial, best first: what the table shows, with the searched values (``params``).
    ``meets_clean_floor`` is None unless the objective has a clean-accuracy floor."""
    from .final_eval import strong_of

    final = final or {}
    ranked = rank_trials(records, final, objective)
    rows = []
    for i, r in enumerate(ranked + [r for r in records if not r.best], 1):
        best, strong = r.best or {}, strong_of(final, r.trial_id) or {}
        floor = objective is not None and objective.min_clean is not None
        rows.append({"rank": i if r.best else None, "trial_id": r.trial_id, "state": r.state,
                     "epochs_run": r.epochs_run, "best_epoch": best.get("epoch"),
                     "robust_acc": best.get("robust_acc"), "strong_robust_acc": strong.get("robust_acc"),
                     "strong_gap": strong.get("gap"), "flag": bool(strong.get("flag")),
                     "clean_acc": best.get("clean_acc"),
                     "meets_clean_floor": (objective.feasible(r) if r.best else None) if floor else None,
                     "grad_passes": r.grad_passes, "stop_reason": r.stop_reason, "params": dict(r.params)})
    return rows


def _pct(v: Any) -> str:
    return f"{100 * v:5.1f}" if isinstance(v, (int, float)) else "  -  "


def _has_strong(final: dict[str, Any] | None) -> bool:
    return bool((final or {}).get("trials"))


def _floor_label(objective: Objective | None) -> str | None:
    if objective is None or objective.min_clean is None:
        return None
    return f"clean>={100 * objective.min_clean:g}%"


def status_table(records: list[TrialRecord], final: dict[str, Any] | None = None,
                 objective: Objective | None = None) -> str:
    """The table: strong% only when the study has a strong evaluation, a clean-floor column only under
    ``robust:clean>=X``; flagged trials say why at the end of their row."""
    from .final_eval import GAP_WARNING

    strong, floor = _has_strong(final), _floor_label(objective)
    head = (f"{'trial':<20} {'state':<25} {'epochs':>6} {'robust%':>8} " + (f"{'strong%':>8} " if strong else "")
            + f"{'clean%':>7} " + (f"{floor:>{max(len(floor), 4)}} " if floor else "")
            + f"{'grad passes':>12}  why stopped")
    lines = [head, "-" * len(head)]
    for row in status_rows(records, final, objective):
        flag = (f"  ! strong {100 * row['strong_gap']:.1f} points below: {GAP_WARNING}" if row["flag"] else "")
        meets = {True: "yes", False: "no", None: "-"}[row["meets_clean_floor"]]
        lines.append(f"{row['trial_id']:<20} {row['state']:<25} {row['epochs_run']:>6g} {_pct(row['robust_acc']):>8} "
                     + (f"{_pct(row['strong_robust_acc']):>8} " if strong else "")
                     + f"{_pct(row['clean_acc']):>7} " + (f"{meets:>{max(len(floor), 4)}} " if floor else "")
                     + f"{row['grad_passes']:>12,}  {row['stop_reason']}{flag}")
    return "\n".join(lines)


def status_legend(final: dict[str, Any] | None, objective: Objective | None) -> list[str]:
    """One line per printed column that needs one, nothing about columns the table does not show."""
    from .final_eval import describe

    lines = ["robust% = the selection figure: the validation attack's best robust accuracy (what ASHA and Optuna "
             "ranked on); clean% = clean validation accuracy at that epoch; epochs = epochs run; grad passes = "
             "forward+backward passes over single images, cumulative"]
    if _has_strong(final):
        lines.append(f"strong% = the final strong evaluation's robust accuracy; {describe(final)}")
        from .strong_flags import agreement_lines  # rank agreement, the shared offset once, each flag's evidence

        lines += agreement_lines(final) + [f"  {t}: {e['flag_reason']}" for t, e in (final.get("trials") or {}).items()
                                           if e.get("flag_reason")]
    floor = _floor_label(objective)
    if floor:
        lines.append(f"{floor} = whether the trial keeps the objective's clean-accuracy floor ({objective.text}); "
                     "trials that do rank first")
    lines.append("ranked: " + ("trials meeting the clean floor first, then " if floor else "")
                 + ("by strong%, then trials without one by robust%" if _has_strong(final) else "by robust%"))
    return lines


def status_json(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    return json.dumps({**header, "trials": rows}, indent=2, default=str)


def status_csv(rows: list[dict[str, Any]]) -> str:
    """One line per trial; searched values as ``param.NAME`` columns; no value: an empty cell."""
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*_CSV_FIELDS, *(f"param.{n}" for n in names)])
    for r in rows:
        w.writerow([("" if r[f] is None else r[f]) for f in _CSV_FIELDS]
                   + [("" if r["params"].get(n) is None else r["params"][n]) for n in names])
    return buf.getvalue()
