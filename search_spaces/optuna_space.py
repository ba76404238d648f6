"""A :class:`~search_spaces.schema.SearchSpace` as an Optuna define-by-run function.

Example (no Ray needed)::

    >>> import optuna
    >>> from search_spaces import load_space, define_by_run
    >>> space = load_space("attack")
    >>> study = optuna.create_study(direction="maximize")
    >>> trial = study.ask()
    >>> params = {**trial.params, **(define_by_run(space)(trial) or {})}  # as Ray's OptunaSearch merges them
    >>> "attack" in params
    True
"""
from __future__ import annotations

from typing import Any, Callable

from advtune.trainables.config import TrialConfig

from .schema import Param, SearchSpace

__all__ = ["define_by_run", "suggest", "trial_config", "ordered"]


def suggest(trial: Any, p: Param) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=p.step or 1, log=p.log)
    return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.kind == "loguniform")


class DefineByRun:
    """Optuna define-by-run function (picklable, so Tune can snapshot the searcher): suggests each
    parameter whose ``when`` holds, in file order. Conditions see the study's fixed values (base
    config + space ``base``) and earlier choices. Returns the values that replace a draw in the trial's
    config (:func:`ordered`; Ray's OptunaSearch merges them over the suggestions), or None."""

    def __init__(self, space: SearchSpace, base_cfg: TrialConfig | None = None) -> None:
        self.space = space
        self.context = (base_cfg or TrialConfig()).replace(**space.base).to_dict()

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        values = dict(self.context)
        for p in self.space.params:
            if p.active(values):
                values[p.name] = suggest(trial, p)
        return ordered(values)


def ordered(values: dict[str, Any]) -> dict[str, Any] | None:
    """The values that must replace a draw for the trial config to be valid, or None. A space searching
    ``eps_ramp_start`` (T1) and ``eps_ramp`` (T2) independently can draw T1 > T2; the trial then runs with
    T1 = T2 (epsilon 0 until T2, then the full training epsilon: the latest start the draw allowed), and its
    config — what Tune passes the trial, ``params.json``, the export — says so; Optuna keeps the value it drew.
    Sampling T1 in [low, T2] instead would change the parameter's range from trial to trial, which multivariate
    TPE cannot model (it would sample T1 on its own, apart from the joint density)."""
    t1, t2 = values.get("eps_ramp_start"), values.get("eps_ramp")
    if isinstance(t1, (int, float)) and isinstance(t2, (int, float)) and t1 > t2:
        return {"eps_ramp_start": t2}
    return None


def define_by_run(space: SearchSpace, base_cfg: TrialConfig | None = None) -> Callable[[Any], None]:
    return DefineByRun(space, base_cfg)


def trial_config(base_cfg: TrialConfig, space: SearchSpace, params: dict[str, Any]) -> TrialConfig:
    """The full trial config: study base ← space base ← the trial's searched values."""
    return base_cfg.replace(**space.base, **params)
