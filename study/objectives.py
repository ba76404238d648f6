"""What a study optimises: ``--objective robust | robust+clean | robust:clean>=X``.

- ``robust`` (default): maximise the trial's best robust validation accuracy (``best_robust_acc``).
- ``robust+clean``: two objectives, robust accuracy at the trial's best (robust) epoch and clean
  accuracy at that same epoch (``best_clean_acc``): the point the trial's ``best.pt`` holds, so an
  exported point reruns to it. Optuna's TPE proposes in its multi-objective mode (MOTPE): with the
  12-30 trials a study runs, TPE models the front from the first finished trials on, where NSGA-II
  evolves populations (50 by default) and stays close to random search for several generations.
- ``robust:clean>=X``: one objective, robust accuracy, subject to clean accuracy >= X (a fraction,
  or a percentage ``85%``). The constraint goes to Optuna as a constraint value (``clean >= X`` is
  feasible), which TPE honours by ranking infeasible trials below every feasible one: the values it
  stores stay real accuracies (a penalty would write made-up numbers into the study, its export and
  its importances), and the study's best is the most robust *feasible* trial.

ASHA prunes on robust accuracy in every form: it is the quantity that needs the epochs, and clean
accuracy only falls under adversarial fine-tuning, so a trial pruned for low robust accuracy early
seldom becomes a useful trade-off point later.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StudyError
from .records import TrialRecord

__all__ = ["Objective", "parse_objective", "objective_of", "non_dominated", "search_front", "rank_trials",
           "CONSTRAINT_KEY"]

CONSTRAINT_KEY = "clean_acc"  # name of the Optuna constraint: min_clean - clean (<= 0 is feasible)
TRIAL_ID_ATTR = "advtune_trial_id"  # Optuna user attribute: the Tune trial id (= trials/<id>/)
WARM_ATTR = "warm_start_from"  # Optuna user attribute of a trial copied from an earlier study
_CONSTRAINED = re.compile(r"^robust\s*:\s*clean\s*>=\s*([0-9.]+)\s*(%?)$")


@dataclass(frozen=True)
class Objective:
    text: str  # canonical form, as stored in the study's spec
    kind: str  # robust | pareto | constrained
    min_clean: float | None = None  # constrained: the least clean accuracy (fraction) a trial must keep

    @property
    def multi(self) -> bool:
        return self.kind == "pareto"

    @property
    def metrics(self) -> list[str]:
        """Result keys the sampler is told, in Optuna's order of values."""
        return ["best_robust_acc", "best_clean_acc"] if self.multi else ["best_robust_acc"]

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * len(self.metrics)

    def values(self, robust: float, clean: float) -> list[float]:
        return [robust, clean] if self.multi else [robust]

    def violation(self, clean: float) -> float | None:
        """Optuna constraint value of a trial with this clean accuracy (<= 0: feasible); None if unconstrained."""
        return None if self.min_clean is None else self.min_clean - clean

    def feasible(self, rec: TrialRecord) -> bool:
        return self.min_clean is None or (rec.best is not None and rec.best["clean_acc"] >= self.min_clean - 1e-12)

    def describe(self) -> str:
        if self.kind == "pareto":
            return ("robust+clean: two objectives, robust and clean val accuracy at a trial's best epoch "
                    "(multi-objective TPE; export and report show the Pareto front)")
        if self.kind == "constrained":
            return f"robust accuracy subject to clean val accuracy >= {100 * self.min_clean:g}%"
        return "best robust val accuracy"


def parse_objective(text: str | None) -> Objective:
    """``robust`` | ``robust+clean`` | ``robust:clean>=X`` (X a fraction in (0, 1] or a percentage)."""
    raw = (text or "robust").strip()
    compact = raw.replace(" ", "").lower()
    if compact == "robust":
        return Objective("robust", "robust")
    if compact in ("robust+clean", "clean+robust"):
        return Objective("robust+clean", "pareto")
    m = _CONSTRAINED.match(compact)
    if m:
        try:
            x = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
        except ValueError:
            x = -1.0
        if not 0.0 < x <= 1.0:
            raise StudyError(f"--objective {raw!r}: the clean-accuracy floor must be a fraction in (0, 1] or a "
                             "percentage, e.g. robust:clean>=0.85 or robust:clean>=85%")
        return Objective(f"robust:clean>={x:g}", "constrained", x)
    raise StudyError(f"--objective {raw!r} is not an objective advtune knows; write robust (default), robust+clean "
                     "(the clean-robust Pareto front) or robust:clean>=0.85 (most robust with clean accuracy >= 85%)")


def objective_of(marker: dict[str, Any]) -> Objective:
    """The objective a study was run with (studies written before objectives existed: robust)."""
    return parse_objective(marker.get("spec", {}).get("objective") or "robust")


def rank_trials(records: list[TrialRecord], final: dict[str, Any] | None = None,
                objective: Objective | None = None) -> list[TrialRecord]:
    """THE ranking of a study's trials, best first: every place that orders trials uses it (``advtune
    status``, export, the end-of-run strong table, the report's ``strong.png``, the final evaluation's
    choice of candidates), so a trial is never first in one and third in another.

    Only trials with a finished validation (``rec.best``) are ranked. The order:

    1. feasible before infeasible under a ``robust:clean>=X`` objective (clean accuracy at the best
       epoch >= X; every trial is feasible under the other objectives or ``objective`` None);
    2. trials with a strong figure (``final``: the study's ``final_eval.json`` as
       ``study.final_eval.load_final`` returns it; {} or None when there is none) before those
       without, by strong robust accuracy;
    3. then by the selection figure (the validation attack's best robust accuracy), then trial id.

    Accuracies are fractions in [0, 1]."""
    trials = (final or {}).get("trials") or {}

    def strong(r: TrialRecord) -> float | None:
        e = trials.get(r.trial_id)
        return e["robust_acc"] if e and isinstance(e.get("robust_acc"), (int, float)) else None

    def key(r: TrialRecord) -> tuple:
        s = strong(r)
        infeasible = objective is not None and not objective.feasible(r)
        return (infeasible, s is None, -(s if s is not None else 0.0), -r.best["robust_acc"], r.trial_id)

    return sorted((r for r in records if r.best), key=key)


def non_dominated(points: dict[str, tuple[float, ...]]) -> list[str]:
    """Keys whose point no other point beats on every coordinate (larger is better), at least one strictly."""
    return [k for k, p in points.items()
            if not any(all(o >= v for o, v in zip(q, p)) and any(o > v for o, v in zip(q, p))
                       for j, q in points.items() if j != k)]


def search_front(study_dir: str | Path, marker: dict[str, Any], records: list[TrialRecord],
                 objective: Objective | None = None) -> list[TrialRecord] | None:
    """The Pareto front the search found: this study's trials that Optuna holds as COMPLETE (pruned
    trials stopped before their end are not candidates; warm-start trials belong to other studies),
    non-dominated on the values the sampler was told, mapped to their Tune trial ids. Sorted by
    robust accuracy, best first. None when the study is not multi-objective or its Optuna storage
    cannot be read (the caller then falls back to a filter over the records). ``objective``: the study's, where
    the caller holds it parsed (default: read from ``marker``)."""
    if not (objective or objective_of(marker)).multi:
        return None
    db = Path(study_dir) / "optuna.db"
    if not db.exists():
        return None
    import optuna

    try:
        study = optuna.load_study(study_name=marker["spec"]["name"], storage=f"sqlite:///{db}")
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    except Exception:  # noqa: BLE001 - a damaged or foreign database: the caller falls back to the records
        return None
    by_id = {r.trial_id: r for r in records}
    by_params = {_key(r.params): r for r in records}
    points: dict[str, tuple[float, ...]] = {}
    for t in trials:
        if WARM_ATTR in t.user_attrs or t.values is None:
            continue
        rec = by_id.get(t.user_attrs.get(TRIAL_ID_ATTR, "")) or by_params.get(_key(t.params))
        if rec is not None and rec.best is not None:
            points[rec.trial_id] = tuple(t.values)
    front = [by_id[k] for k in non_dominated(points)]
    return sorted(front, key=lambda r: (-r.best["robust_acc"], -r.best["clean_acc"], r.trial_id))


def _key(params: dict[str, Any]) -> str:
    return repr(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))
