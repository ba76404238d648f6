"""Learning-rate schedules as closed-form functions of training progress.

``t`` is the fraction of all optimizer steps done, in [0, 1]; the LR is recomputed from ``t`` at
every iteration (never only per epoch), so a schedule means the same thing whatever the batch
size, dataset size or number of epochs. Each family is a small pure function.

Example::

    >>> lr = make_schedule("sfd", peak_lr=0.1, warmup=0.2, decay_rate=4.0)
    >>> round(lr(0.2), 3), lr(0.0) < lr(0.1) < lr(0.2), lr(1.0) < 0.002
    (0.1, True, True)
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

__all__ = ["sfd", "cyclic", "piecewise", "cosine", "constant", "make_schedule", "schedule_from_config", "eps_at"]

Schedule = Callable[[float], float]


def _clip(t: float) -> float:
    return min(max(t, 0.0), 1.0)


def sfd(t: float, peak_lr: float, warmup: float, decay_rate: float, start_factor: float = 0.1,
        min_lr: float = 0.0, warmup_shape: str = "linear") -> float:
    """Slow start, fast decay (Jeddi et al. 2020): a ramp from ``start_factor·peak_lr`` to
    ``peak_lr`` over the first ``warmup`` fraction, then ``peak_lr·exp(-decay_rate·s)`` where
    ``s`` in [0,1] is the progress through the rest; floored at ``min_lr``."""
    t = _clip(t)
    if warmup > 0 and t < warmup:
        u = t / warmup
        if warmup_shape == "cosine":
            u = 0.5 * (1.0 - math.cos(math.pi * u))
        lr = peak_lr * (start_factor + (1.0 - start_factor) * u)
    else:
        s = (t - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
        lr = peak_lr * math.exp(-decay_rate * s)
    return max(lr, min_lr)


def cyclic(t: float, peak_lr: float, peak_at: float = 0.4) -> float:
    """Triangle of Wong et al. 2020: 0 → ``peak_lr`` at ``peak_at`` → 0 at the end."""
    t = _clip(t)
    if t <= peak_at:
        return peak_lr * t / peak_at
    return peak_lr * (1.0 - t) / (1.0 - peak_at)


def piecewise(t: float, peak_lr: float, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1) -> float:
    """Constant ``peak_lr`` with a ×``gamma`` drop at each milestone fraction (Madry/Rice)."""
    t = _clip(t)
    return peak_lr * gamma ** sum(1 for m in milestones if t >= m)


def cosine(t: float, peak_lr: float, warmup: float = 0.0, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 over ``warmup``, then half a cosine down to ``min_lr``."""
    t = _clip(t)
    if warmup > 0 and t < warmup:
        return peak_lr * t / warmup
    s = (t - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * s))


def constant(t: float, peak_lr: float) -> float:
    return peak_lr


_FAMILIES: dict[str, tuple[Callable[..., float], tuple[str, ...]]] = {
    "sfd": (sfd, ("peak_lr", "warmup", "decay_rate", "start_factor", "min_lr", "warmup_shape")),
    "cyclic": (cyclic, ("peak_lr", "peak_at")),
    "piecewise": (piecewise, ("peak_lr", "milestones", "gamma")),
    "cosine": (cosine, ("peak_lr", "warmup", "min_lr")),
    "constant": (constant, ("peak_lr",)),
}


def make_schedule(family: str, **params: float) -> Schedule:
    """The schedule ``t -> lr`` of ``family`` with the given parameters (extra ones ignored,
    so a whole config's worth of fields can be passed)."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown schedule {family!r}; choose one of {', '.join(_FAMILIES)}")
    fn, names = _FAMILIES[family]
    return partial(fn, **{k: params[k] for k in names if k in params})


def schedule_from_config(cfg) -> Schedule:
    return make_schedule(cfg.schedule, **{k: getattr(cfg, k) for k in _FAMILIES[cfg.schedule][1]})


def eps_at(t: float, eps: float, ramp: float, start: float = 0.0) -> float:
    """Training epsilon at progress ``t``: 0 before ``start`` (T1), then linear from 0 to ``eps``
    at ``ramp`` (T2, the ramp's END), ``eps`` after. ``start = 0`` is the plain ramp over the first
    ``ramp``; ``start = ramp`` a step from 0 to ``eps`` (Ngnawé et al.'s delayed schedule is T1 > 0)."""
    if t < start:
        return 0.0
    if ramp <= start or t >= ramp:
        return eps
    return eps * (_clip(t) - start) / (ramp - start)
