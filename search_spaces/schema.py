"""Search-space files: a small documented schema, validated on load.

A space file is YAML with these top-level keys (all but ``params`` optional)::

    name: sfd                     # a short name (default: the file's stem)
    description: one line         # shown by --dry-run
    base:                         # fixed trial-config values for every trial
      schedule: sfd
    params:                       # the searched parameters, in order
      peak_lr:   {loguniform: [0.003, 0.1]}
      warmup:    {uniform: [0.0, 0.3], when: {schedule: sfd}}
      train_eps: {uniform: [0.75, 1.25], scale: eval_eps}
      train_steps: {int: [2, 10], when: {attack: pgd}}
      attack:    {categorical: [pgd, fgsm_rs]}
      epochs: 8                   # a plain value: fixed (same as putting it under base)
    starting_points:              # evaluated first, in order (values in the same units as params)
      - {peak_lr: 0.02, warmup: 0.1, train_eps: 1.0}

Distributions: ``uniform: [lo, hi]``, ``loguniform: [lo, hi]`` (lo > 0), ``int: [lo, hi]``
(optional ``step``, ``log``), ``categorical: [a, b, ...]``. Options: ``when: {param: value or
[values]}`` makes a parameter exist only when earlier parameters (or base values) have those
values; ``scale: eval_eps`` multiplies the bounds (and starting-point values) by the study's
``eval_eps``, so one preset serves any threat model. Every name is a trial-config key, except
the study's threat model and validation set (``THREAT_KEYS``: ``norm``, ``eval_eps``, the validation
attack, the validation images), which are fixed per study so that trials rank on one figure: they
may be fixed under ``base``, never searched.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advtune.trainables.config import ConfigError, TrialConfig, parse_eps

__all__ = ["SpaceError", "Param", "SearchSpace", "load_space", "PRESETS", "preset_path", "THREAT_KEYS"]

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
_TOP_KEYS = ("name", "description", "base", "params", "starting_points")
_DISTS = ("uniform", "loguniform", "int", "categorical")
_OPTIONS = ("when", "scale", "step", "log")
_FIELDS = tuple(TrialConfig.__dataclass_fields__)
# The threat model and the validation set: the attack every trial is validated with and the images it is
# validated on. One study has one of each, or its trials' robust accuracies do not rank together; warm
# starts (study/warm_start.py) refuse a study that differs in any of them.
THREAT_KEYS = ("norm", "eval_eps", "val_steps", "val_step_size", "val_restarts", "dataset", "data_root",
               "image_size", "val_size", "split_seed")
# Pixel-unit fields: a range written in multiples of eval_eps ([0.75, 1.25]) needs `scale: eval_eps`.
_EPS_KEYS = ("train_eps", "train_step_size")


class SpaceError(ValueError):
    """A search-space file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # uniform | loguniform | int | categorical
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    step: int | None = None
    log: bool = False
    when: dict[str, tuple] = field(default_factory=dict)
    scale: str | None = field(default=None, compare=False)  # "eval_eps": bounds were given in its multiples

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when.items())

    def describe(self) -> str:
        rng = f"{list(self.choices)}" if self.kind == "categorical" else f"[{self.low:g}, {self.high:g}]"
        cond = "" if not self.when else "  when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when.items())
        return f"{self.name:<16} {self.kind:<11} {rng}{cond}"


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    description: str
    base: dict[str, Any]
    params: tuple[Param, ...]
    starting_points: tuple[dict[str, Any], ...]

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def max_fraction(self, *names: str, base: TrialConfig) -> float:
        """The largest value any trial can have for fraction-of-training fields ``names``
        (searched upper bound, or the fixed value) — used to place ASHA's first rung."""
        out = 0.0
        for n in names:
            p = self.param(n)
            if p is None:
                out = max(out, float(self.base.get(n, getattr(base, n))))
            elif p.kind == "categorical":
                out = max(out, max(float(c) for c in p.choices))
            else:
                out = max(out, float(p.high))
        return out


def preset_path(name: str) -> Path:
    return PRESET_DIR / f"{name}.yaml"


def _err(source: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{source}: key '{key}': {msg}")


def _number(source: str, key: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ConfigError("bool")
        return parse_eps(value, key)
    except ConfigError:
        raise _err(source, key, f"{value!r} is not a number") from None


def _parse_param(source: str, name: str, spec: Any, eval_eps: float) -> Param:
    if name not in _FIELDS:
        near = difflib.get_close_matches(name, _FIELDS, n=1)
        raise _err(source, f"params.{name}", "not a trial-config key" + (f"; did you mean '{near[0]}'?" if near else
                                                                          " (see advtune --help-config)"))
    key = f"params.{name}"
    if name in THREAT_KEYS:
        raise _err(source, key, f"'{name}' is part of the study's threat model or validation set, which every trial "
                                "shares so that their robust accuracies rank together; it cannot be searched. Fix "
                                f"it for the study instead (--set {name}=VALUE, or under the space's base:), and run "
                                "one study per threat model")
    if not isinstance(spec, dict):
        raise _err(source, key, f"expected a mapping like {{uniform: [lo, hi]}}, got {spec!r}")
    unknown = [k for k in spec if k not in _DISTS + _OPTIONS]
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), _DISTS + _OPTIONS, n=1)
        raise _err(source, f"{key}.{unknown[0]}", "unknown option" + (f"; did you mean '{near[0]}'?" if near else
                                                                      f"; allowed: {', '.join(_DISTS + _OPTIONS)}"))
    kinds = [k for k in spec if k in _DISTS]
    if len(kinds) != 1:
        raise _err(source, key, f"needs exactly one distribution of {', '.join(_DISTS)} (got {kinds or 'none'})")
    kind = kinds[0]
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise _err(source, f"{key}.when", f"expected a mapping {{param: value}}, got {when!r}")
    when_t = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    scale = spec.get("scale")
    if scale not in (None, "eval_eps"):
        raise _err(source, f"{key}.scale", f"only 'eval_eps' is supported, got {scale!r}")
    factor = eval_eps if scale == "eval_eps" else 1.0
    values = spec[kind]
    if kind == "categorical":
        if not isinstance(values, list) or not values:
            raise _err(source, f"{key}.categorical", f"expected a non-empty list of choices, got {values!r}")
        return Param(name, kind, choices=tuple(values), when=when_t, scale=scale)
    if not isinstance(values, list) or len(values) != 2:
        raise _err(source, f"{key}.{kind}", f"expected [low, high], got {values!r}")
    low, high = (_number(source, f"{key}.{kind}", v) * factor for v in values)
    if not low < high:
        raise _err(source, f"{key}.{kind}", f"low must be below high, got [{low:g}, {high:g}]")
    if kind == "loguniform" and low <= 0:
        raise _err(source, f"{key}.{kind}", f"loguniform needs low > 0, got {low:g}")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise _err(source, f"{key}.int", f"bounds must be whole numbers, got [{low:g}, {high:g}]")
        low, high = int(low), int(high)
    step = spec.get("step")
    if step is not None and (kind != "int" or not isinstance(step, int) or step < 1):
        raise _err(source, f"{key}.step", "step is a positive integer, for int parameters only")
    return Param(name, kind, low=low, high=high, step=step, log=bool(spec.get("log", kind == "loguniform")),
                 when=when_t, scale=scale)


# Keys whose values must come in this order (T1 <= T2). Searched both, each bound is checked with the other at its
# most permissive bound, and a draw out of order is put in order (search_spaces/optuna_space.ordered).
_ORDERED = ("eps_ramp_start", "eps_ramp")


def _span(p: Param) -> tuple[Any, Any]:
    vals = [c for c in p.choices if isinstance(c, (int, float))] if p.kind == "categorical" else [p.low, p.high]
    return (min(vals), max(vals)) if vals else (None, None)


def _check_against_config(source: str, base: dict, params: tuple[Param, ...], base_cfg: TrialConfig) -> None:
    """Every bound and choice must itself be a valid trial config (catches warmup: [0, 1.5])."""
    try:
        merged = base_cfg.replace(**base)
    except ConfigError as exc:
        raise SpaceError(f"{source}: key 'base': {exc}") from None
    by_name = {p.name: p for p in params}
    first, second = (by_name.get(k) for k in _ORDERED)
    partner: dict[str, dict] = {}
    if first is not None and second is not None and None not in _span(first) + _span(second):
        if _span(first)[0] > _span(second)[1]:
            raise _err(source, f"params.{first.name}", f"its range {list(_span(first))} lies after "
                       f"{second.name}'s {list(_span(second))}: {first.name} <= {second.name} could never hold "
                       f"(every trial would start its epsilon ramp at its end); lower {first.name} or raise "
                       f"{second.name}")
        partner = {first.name: {second.name: _span(second)[1]}, second.name: {first.name: _span(first)[0]}}
    for p in params:
        ctx = merged
        if p.name in partner:
            try:
                ctx = merged.replace(**partner[p.name])
            except ConfigError:
                pass  # the partner's own bounds are checked (and refused) in its turn
        for v in (p.choices if p.kind == "categorical" else (p.low, p.high)):
            try:
                ctx.replace(**{p.name: v})
            except ConfigError as exc:
                raise _err(source, f"params.{p.name}", f"value {v!r} is not valid: {exc}"
                           + _scale_hint(p, merged)) from None


def _scale_hint(p: Param, merged: TrialConfig) -> str:
    """The fix for an epsilon range written in multiples of eval_eps without ``scale: eval_eps``, when
    the scaled bounds would be valid; else nothing."""
    if p.name not in _EPS_KEYS or p.scale is not None or p.kind == "categorical":
        return ""
    eps = merged.eval_eps
    try:
        for v in (p.low, p.high):
            merged.replace(**{p.name: v * eps})
    except ConfigError:
        return ""
    return (f"; if [{p.low:g}, {p.high:g}] are multiples of the study's eval_eps, add `scale: eval_eps` to "
            f"params.{p.name} (bounds then {p.low * eps:.4g} to {p.high * eps:.4g} at eval_eps {eps:.4g})")


def load_space(name_or_path: str | Path, base_cfg: TrialConfig | None = None) -> SearchSpace:
    """Load a preset by name (``sfd``, ``cyclic``, ``sat``, ``scope``, ``attack``) or a YAML file."""
    base_cfg = base_cfg or TrialConfig()
    path = Path(name_or_path)
    if str(name_or_path) in PRESETS:
        path = preset_path(str(name_or_path))
    elif not path.exists():
        near = difflib.get_close_matches(str(name_or_path), PRESETS, n=1)
        raise SpaceError(f"search space '{name_or_path}' is neither a preset ({', '.join(PRESETS)}) nor an existing file"
                         + (f"; did you mean '{near[0]}'?" if near else ""))
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping with a 'params' key at the top")
    for key in data:
        if key not in _TOP_KEYS:
            near = difflib.get_close_matches(str(key), _TOP_KEYS, n=1)
            raise _err(source, str(key), "unknown top-level key" + (f"; did you mean '{near[0]}'?" if near else
                                                                    f"; allowed: {', '.join(_TOP_KEYS)}"))
    base = dict(data.get("base") or {})
    if not isinstance(data.get("base") or {}, dict):
        raise _err(source, "base", "expected a mapping of trial-config key: value")
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise _err(source, "params", "expected a non-empty mapping of parameter: distribution")
    for name, spec in raw_params.items():
        if not isinstance(spec, dict):  # a plain value: fixed
            base[name] = spec
    for k in base:
        if k not in _FIELDS:
            near = difflib.get_close_matches(k, _FIELDS, n=1)
            raise _err(source, f"base.{k}", "not a trial-config key" + (f"; did you mean '{near[0]}'?" if near else ""))
    try:
        context = base_cfg.replace(**base).to_dict()
    except ConfigError as exc:
        raise SpaceError(f"{source}: key 'base': {exc}") from None
    params = [_parse_param(source, str(name), spec, context["eval_eps"])
              for name, spec in raw_params.items() if isinstance(spec, dict)]
    _check_conditions(source, params, base, base_cfg)
    _check_against_config(source, base, tuple(params), base_cfg)
    points = _parse_points(source, data.get("starting_points") or [], params, context["eval_eps"], raw_params, context)
    return SearchSpace(str(data.get("name") or path.stem), source, str(data.get("description") or ""), base,
                       tuple(params), points)


def _check_conditions(source: str, params: list[Param], base: dict, base_cfg: TrialConfig) -> None:
    seen: dict[str, Param] = {}
    for p in params:
        for cond, allowed in p.when.items():
            key = f"params.{p.name}.when.{cond}"
            if cond in seen:
                ref = seen[cond]
                if ref.kind != "categorical":
                    raise _err(source, key, f"conditions must refer to a categorical parameter; '{cond}' is {ref.kind}")
                bad = [a for a in allowed if a not in ref.choices]
                if bad:
                    raise _err(source, key, f"{bad[0]!r} is not one of {cond}'s choices {list(ref.choices)}")
            elif any(q.name == cond for q in params):
                raise _err(source, key, f"'{cond}' is searched below this parameter; conditions may only refer "
                                        "to parameters defined above (move it up)")
            elif cond in base or cond in _FIELDS:
                fixed = base.get(cond, getattr(base_cfg, cond, None))
                if fixed not in allowed:
                    raise _err(source, key, f"'{cond}' is fixed to {fixed!r}, so this parameter would never be searched")
            else:
                raise _err(source, key, f"'{cond}' is not a parameter defined above this one")
        seen[p.name] = p


def _parse_points(source: str, points: Any, params: list[Param], eval_eps: float, raw: dict,
                  context: dict) -> tuple[dict, ...]:
    if not isinstance(points, list):
        raise _err(source, "starting_points", "expected a list of mappings")
    by_name = {p.name: p for p in params}
    out = []
    for i, point in enumerate(points):
        key = f"starting_points[{i}]"
        if not isinstance(point, dict):
            raise _err(source, key, "expected a mapping of parameter: value")
        resolved = {}
        for name, value in point.items():
            p = by_name.get(str(name))
            if p is None:
                raise _err(source, f"{key}.{name}", f"not a searched parameter ({', '.join(by_name)})")
            if p.kind == "categorical":
                if value not in p.choices:
                    raise _err(source, f"{key}.{name}", f"{value!r} is not one of {list(p.choices)}")
            else:
                factor = eval_eps if raw[p.name].get("scale") == "eval_eps" else 1.0
                value = _number(source, f"{key}.{name}", value) * factor
                if p.kind == "int":
                    value = int(round(value))
                if not p.low <= value <= p.high:
                    raise _err(source, f"{key}.{name}", f"{value:g} is outside [{p.low:g}, {p.high:g}]")
            resolved[p.name] = value
        for p in params:
            if p.name not in resolved and p.active({**context, **resolved}):
                raise _err(source, key, f"misses the active parameter '{p.name}'")
        out.append(resolved)
    return tuple(out)
