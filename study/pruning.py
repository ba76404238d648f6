"""When ASHA may judge a trial: pruning rules that are fair to the schedule's shape.

A schedule is a function of training progress, so at a fixed epoch a trial with a slow start (a
long LR warmup, a late cyclic peak) or an epsilon ramp has trained less at full LR and full epsilon
than one without, and reads weaker for that reason alone (short-horizon bias). Two rules:

``epoch``          ASHA's time is the epoch (rungs at ``grace·rf^k`` epochs), the first rung placed
                   after the longest warmup / ramp / peak the space allows. The old default.
``full_strength``  ASHA's time is each trial's *epochs at full strength*: epochs trained after its own
                   LR warmup (or cyclic peak) and epsilon ramp have ended,
                   ``epoch − full_strength_point(config)·epochs``. A trial with a 30% epsilon ramp
                   is compared at the same distance past its ramp as one without a ramp is past its
                   warmup, so it meets each rung a little later and is not judged on its ramp.

Under ``full_strength`` the default cuts twice, at two consecutive validations: at the first at least
0.75 epochs at full strength in, a trial stops unless it is in the top half of the trials recorded there;
at the next (1.75 epochs in) unless it is in the top third of those (``DEFAULT_CUTS``). The first cut only
drops clear losers (an early figure ranks configurations poorly but rarely puts the best in the bottom
half), the second is the decision that ranks like the final strong figure. A ``--grace-period`` or
``--reduction-factor`` given explicitly asks for ASHA's own geometric rungs instead (``grace·rf^k``,
keeping the top 1/rf at each; ``--reduction-factor 4`` is the previous default).

Which rule is the default was decided by measurement, not assumed: ``bench/pruning_fidelity.py``
replays Ray Tune's own ASHA on recorded, unpruned learning curves and final strong figures
(docs/benchmarks.md, "Pruning fidelity"). This module is pure (no Ray): the scheduler that applies a
rule is ``study.tune_backend.make_scheduler``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from advtune.trainables.config import TrialConfig

__all__ = ["RULES", "DEFAULT_RULE", "PruningRule", "full_strength_point", "rung_time", "default_rule_for",
           "make_rule", "rule_of", "DEFAULT_CUTS", "DEFAULT_FULL_STRENGTH_GRACE", "DEFAULT_REDUCTION_FACTOR", "trial_rung_epochs", "asha_rungs"]


def asha_rungs(grace: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The epochs at which ASHA compares trials (``grace·rf^k < max_epochs``)."""
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r *= reduction_factor
    return rungs


RULES = {
    "epoch": "rungs at raw epochs, the first after the longest warmup/ramp the space allows",
    "full_strength": "rungs at epochs trained at full strength (after each trial's own warmup/peak and eps ramp)",
    "decay_progress": "rungs at the same progress through each trial's post-warmup/ramp phase, in epochs of a "
                      "schedule without warmup",
}
# The rule for spaces that search the schedule's shape (warmup, eps ramp, cyclic peak); chosen by
# bench/pruning_fidelity.py's replay on recorded curves (docs/benchmarks.md).
DEFAULT_RULE = "full_strength"
DEFAULT_FULL_STRENGTH_GRACE = 1.75  # the first rung of full_strength's geometric rungs (--grace-period / --reduction-factor)
# full_strength's default rungs and the share each keeps: (epochs at full strength, share of the trials recorded
# there that continue). One epoch apart, so every trial meets them at consecutive validations: a lenient cut, then
# the decision (the replay's pick, docs/benchmarks.md section 9)
DEFAULT_CUTS: tuple[tuple[float, float], ...] = ((0.75, 1 / 2), (1.75, 1 / 3))
# ASHA keeps the top 1/R at each rung; the old rule keeps its old R
DEFAULT_REDUCTION_FACTOR = {"epoch": 2, "full_strength": 4, "decay_progress": 4}
SHAPE_KEYS = ("warmup", "eps_ramp", "eps_ramp_start", "peak_at")


def full_strength_point(cfg: TrialConfig | Mapping[str, Any]) -> float:
    """Fraction of training (in [0, 1)) at which ``cfg`` first trains at its peak LR and full epsilon:
    the end of its LR warmup (``sfd``, ``cosine``) or its cyclic peak (``peak_at``), and of its
    epsilon ramp (``eps_ramp``, the ramp's end), whichever is later. 0 for natural training's epsilon
    and for schedules that start at their peak (``piecewise``, ``constant``)."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    lr_end = {"sfd": get("warmup", 0.0), "cosine": get("warmup", 0.0),
              "cyclic": get("peak_at", 0.0)}.get(get("schedule", "sfd"), 0.0)
    eps_end = 0.0 if get("attack", "pgd") == "none" else (get("eps_ramp", 0.0) or 0.0)
    return float(min(max(lr_end or 0.0, eps_end), 0.999))


def rung_time(rule: str, epoch: float, point: float, epochs: int) -> float:
    """ASHA's time of a result at ``epoch`` for a trial whose full-strength point is ``point`` (a
    fraction of its ``epochs``): the epoch itself, or the epochs trained since full strength."""
    if rule == "epoch":
        return float(epoch)
    if rule == "decay_progress":  # (t - point) / (1 - point), scaled to epochs: 0 at full strength, epochs at the end
        return (float(epoch) / epochs - point) / (1.0 - point) * epochs
    return float(epoch) - point * epochs


@dataclass(frozen=True)
class PruningRule:
    """A rule with its ASHA settings, in the rule's own time unit (epochs, or epochs at full strength)."""

    name: str
    grace: float  # the first rung, in the rule's time unit
    reduction_factor: int
    max_epochs: int
    # explicit rungs, each with the share of the trials recorded there that continue (DEFAULT_CUTS); () for ASHA's
    # geometric rungs grace·rf^k, each keeping the top 1/rf
    cuts: tuple[tuple[float, float], ...] = ()

    @property
    def max_t(self) -> float:
        """ASHA's ``max_t``: the longest a trial can run in this time unit (a trial that reaches it is done)."""
        return float(self.max_epochs)

    def rungs(self) -> list[float]:
        """The times at which ASHA compares trials: the cuts' times, or as Ray's ASHA builds them (``grace·rf^k``),
        below max_t."""
        if self.cuts:
            return [float(t) for t, _ in self.cuts if t < self.max_epochs]
        return [float(r) for r in asha_rungs(self.grace, self.reduction_factor, self.max_epochs)]

    def keeps(self) -> list[float]:
        """The share of the trials recorded at each of :meth:`rungs` that continues."""
        if self.cuts:
            return [float(k) for t, k in self.cuts if t < self.max_epochs]
        return [1.0 / self.reduction_factor] * len(self.rungs())

    def time(self, epoch: float, point: float) -> float:
        """ASHA's time of a result at ``epoch`` for a trial whose full-strength point is ``point``."""
        return rung_time(self.name, epoch, point, self.max_epochs)

    def describe(self) -> str:
        return f"{self.name} ({RULES[self.name]}): {self.describe_rungs()}"

    def describe_rungs(self) -> str:
        """The rungs in the rule's unit and what each keeps, e.g. "rungs at epochs at full strength 0.75, 1.75,
        keeping the top 1/2, then the top 1/3 of the trials recorded at each"."""
        unit = "epochs" if self.name == "epoch" else "epochs at full strength"
        rungs = ", ".join(f"{r:g}" for r in self.rungs()) or "none"
        return f"rungs at {unit} {rungs}, keeping {self.describe_keeps()}"

    def describe_keeps(self) -> str:
        """What ASHA keeps: "the top 1/4 at each rung", or per cut "the top 1/2, then the top 1/3 of the trials
        recorded at each"."""
        if not self.cuts:
            return f"the top 1/{self.reduction_factor} at each rung"
        return ", then ".join(f"the top {_share(k)}" for k in self.keeps()) + " of the trials recorded at each"


def _share(keep: float) -> str:
    """A share as a user reads it: 1/2, 1/3, or 40%."""
    inv = 1.0 / keep
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-6 else f"{100 * keep:g}%"


def rule_of(spec: Mapping[str, Any]) -> PruningRule:
    """The pruning rule of a study from its JSON form (the marker's ``spec``; studies from before the rule was a
    setting pruned on raw epochs)."""
    return make_rule(spec.get("pruning", "epoch"), spec["grace_period"],
                     spec.get("full_strength_grace", DEFAULT_FULL_STRENGTH_GRACE), spec["reduction_factor"],
                     spec["max_epochs"], tuple(tuple(c) for c in spec.get("cuts") or ()))


def trial_rung_epochs(spec: Mapping[str, Any], params: Mapping[str, Any]) -> list[float]:
    """The epochs at which a trial of the study ``spec`` (its JSON form) with searched ``params`` meets
    ASHA's rungs (it is compared at its first validation at or after each): what the report draws."""
    rule = rule_of(spec)
    if rule.name == "epoch":
        return rule.rungs()
    point = full_strength_point({**spec.get("base_config", {}), **params})
    return [point * spec["max_epochs"] + r for r in rule.rungs() if point * spec["max_epochs"] + r < spec["max_epochs"]]


def default_rule_for(searched: set[str]) -> str:
    """``full_strength`` when the space searches the schedule's shape, else ``epoch`` (the same thing
    when every trial reaches full strength at the same time)."""
    return DEFAULT_RULE if searched & set(SHAPE_KEYS) else "epoch"


def make_rule(name: str, grace_epochs: int, full_strength_grace: float, reduction_factor: int,
              max_epochs: int, cuts: tuple[tuple[float, float], ...] = ()) -> PruningRule:
    """The rule ``name`` with its first rung: ``grace_epochs`` for ``epoch`` (already placed after
    the space's longest warmup), ``full_strength_grace`` epochs at full strength otherwise; with ``cuts``
    (not under ``epoch``) its rungs are those, each keeping its share, instead of ASHA's ``grace·rf^k``."""
    if name not in RULES:
        raise ValueError(f"unknown pruning rule {name!r}; one of {', '.join(RULES)}")
    if cuts:
        if name == "epoch":
            raise ValueError("the epoch rule's rungs are ASHA's grace*rf^k: explicit cuts need full_strength or "
                             "decay_progress")
        times = [float(t) for t, _ in cuts]
        if times != sorted(set(times)) or times[0] <= 0 or any(not 0 < k < 1 for _, k in cuts):
            raise ValueError(f"pruning cuts {cuts!r}: rung times must rise from above 0 and each share kept must lie "
                             "in (0, 1)")
        full_strength_grace = times[0]
    grace = grace_epochs if name == "epoch" else full_strength_grace
    # Ray's ASHA wants grace <= max_t; a first rung at or past the last epoch means no rung (nothing pruned)
    return PruningRule(name, float(min(grace, max_epochs)), reduction_factor, max_epochs, tuple(cuts))
