"""``advtune run --warm-start DIR [DIR...]``: seed a new study's sampler with earlier studies' trials.

Nothing is re-run: each finished trial of an earlier study becomes an Optuna ``FrozenTrial`` (its
searched values, their distributions, its value(s) under the NEW study's objective, recomputed from
the trial's own ``metrics.jsonl``) added to the new study's ``optuna.db`` before Tune starts. TPE
counts them among its ``n_startup_trials`` and models them from the first proposal on; the space's
starting points are then skipped (they exist to give a cold sampler a first look).

What is taken from a study:
- COMPLETE (completed, diverged, catastrophic overfitting): the values the live sampler was told,
  best robust accuracy (and clean accuracy at that epoch for ``robust+clean``);
- PRUNED (stopped by ASHA): as pruned, with their per-report ``best_robust_acc`` as intermediate
  values in single-objective studies (TPE ranks pruned trials by how far they got and their last
  value, as it does the new study's own); multi-objective studies keep no intermediate values;
- refused, and said so: errored trials, trials that never finished a validation or are still
  running, trials whose values do not fit the new space.

A study is refused as a whole (an ``error:``, nothing started) unless it is comparable:
- the same searched parameters with the same distributions and conditions, and the same fixed
  values of the space (``base``), because a value means nothing outside its space;
- the same threat model and validation (``search_spaces.THREAT_KEYS``): ``norm``, ``eval_eps``,
  ``val_steps``, ``val_step_size`` (compared as the step the attack used: unset means 2.5·eps/k),
  ``val_restarts`` (the attack the robust accuracy was measured with), ``dataset``, ``val_size``,
  ``split_seed``, and where the dataset reads them ``data_root`` (every dataset but digits) and
  ``image_size`` (imagefolder) (the same held-out images). This is the contract that makes trials of
  one study comparable.
Other fixed settings may differ (more epochs, another model or starting point: the usual next
iteration); each difference is printed, and the earlier values are seeded as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advtune.search_spaces import SearchSpace, load_space
from advtune.search_spaces.schema import THREAT_KEYS
from advtune.trainables.config import TrialConfig

from .errors import StudyError
from .objectives import CONSTRAINT_KEY, WARM_ATTR, Objective
from .records import StudyRecords, read_marker

__all__ = ["WarmStart", "collect", "seed", "space_distributions", "COMPARABLE_KEYS"]

COMPARABLE_KEYS = THREAT_KEYS  # one list for the space schema (never searched) and warm starts (must match)
_FINISHED = ("completed", "diverged", "catastrophic_overfitting")


@dataclass
class WarmStart:
    trials: list = field(default_factory=list)  # optuna FrozenTrials, ready for Study.add_trials
    lines: list[str] = field(default_factory=list)  # what was taken and refused, for the user


def space_distributions(space: SearchSpace) -> dict[str, Any]:
    """Each searched parameter's Optuna distribution, as ``search_spaces.suggest`` asks for it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in space.params:
        if p.kind == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), step=p.step or 1, log=p.log)
        else:
            out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.kind == "loguniform")
    return out


def collect(spec, space: SearchSpace) -> WarmStart:
    """Check every ``spec.warm_start`` study against the new study and turn its finished trials into
    FrozenTrials. Raises StudyError (naming the folder and the mismatch) for a folder that is not a
    study or is not comparable."""
    ws = WarmStart()
    objective = spec.parsed_objective
    new_cfg = spec.base_config.replace(**space.base)
    dists = space_distributions(space)
    for d in dict.fromkeys(spec.warm_start):
        path = Path(d)
        if not path.is_dir():
            raise StudyError(f"--warm-start {d}: no such folder; pass a study directory an earlier `advtune run` wrote")
        try:
            marker = read_marker(path)
            old_cfg = TrialConfig.from_dict(marker["spec"]["base_config"]).replace(**marker.get("space_base", {}))
        except StudyError as exc:
            raise StudyError(f"--warm-start {d}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a marker of another version or hand-edited
            raise StudyError(f"--warm-start {d}: its study record cannot be read ({type(exc).__name__}: {exc})") from None
        _check_threat(d, old_cfg, new_cfg)
        _check_space(d, path, marker, old_cfg, space, dists)
        taken, refused = _trials(path, objective, dists)
        ws.trials += taken
        states = {}
        for t in taken:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        what = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        ws.lines.append(f"warm start from {d}: {len(taken)} trials taken ({what}), {len(refused)} refused")
        ws.lines += [f"  refused {tid}: {why}" for tid, why in refused]
        diffs = _other_differences(path, marker, old_cfg, new_cfg)
        if diffs:
            ws.lines.append(f"  note: it differs in {', '.join(diffs)}; its trials are seeded with the values they had")
    if spec.warm_start:
        ws.lines.append(f"warm start: the sampler starts from {len(ws.trials)} earlier trials"
                        + ("" if ws.trials else " (none usable: this study starts cold)"))
    return ws


def seed(study_dir: Path, spec, ws: WarmStart) -> None:
    """Create the new study's Optuna study in ``study_dir/optuna.db`` holding the warm-start trials;
    OptunaSearch then loads it (``load_if_exists``) instead of creating an empty one."""
    if not ws.trials:
        return
    import optuna

    study = optuna.create_study(storage=f"sqlite:///{Path(study_dir) / 'optuna.db'}", study_name=spec.name,
                                directions=spec.parsed_objective.directions)
    study.add_trials(ws.trials)


def _threat_value(cfg: TrialConfig, key: str):
    """What ``key`` means for the validation: the PGD step the attack used (None is 2.5·eps/k), and
    ``data_root`` / ``image_size`` only where the dataset reads them."""
    if key == "val_step_size":
        return round(cfg.val_step_value, 12)
    if key == "data_root" and cfg.dataset == "digits":
        return None  # bundled with scikit-learn: no root
    if key == "image_size" and cfg.dataset != "imagefolder":
        return None
    return getattr(cfg, key)


def _check_threat(d: str, old: TrialConfig, new: TrialConfig) -> None:
    diff = [f"{k} {_threat_value(old, k)!r} there, {_threat_value(new, k)!r} here" for k in COMPARABLE_KEYS
            if _threat_value(old, k) != _threat_value(new, k)]
    if diff:
        raise StudyError(f"--warm-start {d}: that study measured robust accuracy under another threat model or "
                         f"validation ({'; '.join(diff)}), so its results are not comparable; warm-start only from "
                         "studies with the same norm, eval_eps, validation attack (val_steps, val_step_size, "
                         "val_restarts) and validation images (dataset, data_root, image_size, val_size, split_seed)")


def _check_space(d: str, path: Path, marker: dict, old_cfg: TrialConfig, space: SearchSpace, dists: dict) -> None:
    source = path / "space.yaml"
    if not source.exists():
        source = Path(marker["spec"].get("space", ""))
    try:
        old_space = load_space(source if source.exists() else marker["spec"].get("space", ""), old_cfg)
    except Exception as exc:  # noqa: BLE001 - SpaceError or a missing preset: the study cannot be compared
        raise StudyError(f"--warm-start {d}: its search space cannot be read ({exc})") from None
    old_dists = space_distributions(old_space)
    why = ""
    if set(old_dists) != set(dists):
        only_old, only_new = sorted(set(old_dists) - set(dists)), sorted(set(dists) - set(old_dists))
        why = f"it searched {sorted(old_dists)}, this study searches {sorted(dists)}" + (
            f" (only there: {only_old}" if only_old else " (") + (f"; only here: {only_new})" if only_new else ")")
    else:
        for name in dists:
            if old_dists[name] != dists[name]:
                why = f"{name} is {old_dists[name]} there, {dists[name]} here"
                break
            if old_space.param(name).when != space.param(name).when:
                why = f"{name} is searched under other conditions (when: {old_space.param(name).when} there)"
                break
        if not why and old_space.base != space.base:
            why = f"the space's fixed values differ ({old_space.base} there, {space.base} here)"
    if why:
        raise StudyError(f"--warm-start {d}: its search space is not this study's ({why}); warm-start only from "
                         "studies of the same space (same parameters, ranges and conditions)")


def _trials(path: Path, objective: Objective, dists: dict) -> tuple[list, list[tuple[str, str]]]:
    import optuna
    from optuna.trial import TrialState

    taken, refused = [], []
    for rec in StudyRecords(path, tensorboard=False).load():
        last = rec.metrics[-1] if rec.metrics else {}
        if rec.state == "error":
            refused.append((rec.trial_id, f"it failed ({rec.error or 'error'})"))
            continue
        if rec.state not in _FINISHED + ("pruned",) or rec.best is None:
            refused.append((rec.trial_id, "it never finished (no final state or no validation)"))
            continue
        robust = float(last.get("best_robust_acc", rec.best["robust_acc"]))
        clean = float(last.get("best_clean_acc", rec.best["clean_acc"]))
        v = objective.violation(clean)
        kw: dict[str, Any] = {"constraints": {CONSTRAINT_KEY: v}} if v is not None else {}
        if rec.state == "pruned":
            kw["state"] = TrialState.PRUNED
            if not objective.multi:  # the live searcher's steps: Tune's training_iteration, one per report
                kw["intermediate_values"] = {i + 1: float(m.get("best_robust_acc", m.get("robust_acc", 0.0)))
                                             for i, m in enumerate(rec.metrics)}
        else:
            kw["values"] = objective.values(robust, clean)
        try:
            trial = optuna.trial.create_trial(
                params=dict(rec.params), distributions={k: dists[k] for k in rec.params if k in dists},
                user_attrs={WARM_ATTR: f"{path}/{rec.trial_id}"}, **kw)
            if set(rec.params) - set(dists):
                raise ValueError(f"parameters {sorted(set(rec.params) - set(dists))} are not in this space")
        except ValueError as exc:
            refused.append((rec.trial_id, f"its values do not fit this space ({exc})"))
            continue
        taken.append(trial)
    return taken, refused


def _other_differences(path: Path, marker: dict, old: TrialConfig, new: TrialConfig) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    out = []
    for k in a:
        if k in COMPARABLE_KEYS or a[k] == b.get(k):
            continue
        if k == "pretrained" and marker.get("pretrain_from") is not None and str(b.get(k, "")).endswith(
                "pretrained/best.pt") and str(a[k]).startswith(str(path)):
            continue  # both pretrained their own starting point (pretrained: auto)
        out.append(f"{k} ({a[k]!r} there, {b.get(k)!r} here)")
    return out
