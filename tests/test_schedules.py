"""Tests for trainables.schedules: the shape of every schedule family, checked on a fine grid."""
from __future__ import annotations

import math

import pytest

from advtune.trainables.config import TrialConfig
from advtune.trainables.schedules import constant, cosine, cyclic, eps_at, make_schedule, piecewise, schedule_from_config, sfd

GRID = [i / 1000 for i in range(1001)]


def values(fn, grid=GRID) -> list[float]:
    return [fn(t) for t in grid]


def non_decreasing(vs: list[float]) -> bool:
    return all(b >= a - 1e-12 for a, b in zip(vs, vs[1:]))


def non_increasing(vs: list[float]) -> bool:
    return all(b <= a + 1e-12 for a, b in zip(vs, vs[1:]))


# ---------------------------------------------------------------- sfd

@pytest.mark.parametrize("warmup_shape", ("linear", "cosine"))
@pytest.mark.parametrize("warmup", (0.1, 0.25, 0.5))
def test_sfd_shape(warmup: float, warmup_shape: str) -> None:
    peak, rate, start = 0.1, 4.0, 0.2
    fn = make_schedule("sfd", peak_lr=peak, warmup=warmup, decay_rate=rate, start_factor=start,
                       warmup_shape=warmup_shape)
    assert fn(0.0) == pytest.approx(start * peak)
    assert fn(warmup) == pytest.approx(peak)
    assert fn(1.0) == pytest.approx(peak * math.exp(-rate))
    vs = values(fn)
    assert max(vs) == pytest.approx(peak)
    assert GRID[vs.index(max(vs))] == pytest.approx(warmup), "sfd must peak exactly at the end of warmup"
    up = [v for t, v in zip(GRID, vs) if t <= warmup]
    down = [v for t, v in zip(GRID, vs) if t >= warmup]
    assert non_decreasing(up) and non_increasing(down)
    assert up[0] < up[-1] and down[0] > down[-1]
    # the decay is exponential in the post-warmup progress s
    for s in (0.25, 0.5, 0.75):
        assert fn(warmup + s * (1 - warmup)) == pytest.approx(peak * math.exp(-rate * s))


def test_sfd_warmup_shapes_differ_between_the_same_endpoints() -> None:
    kw = dict(peak_lr=1.0, warmup=0.4, decay_rate=3.0, start_factor=0.0)
    lin = make_schedule("sfd", warmup_shape="linear", **kw)
    cos = make_schedule("sfd", warmup_shape="cosine", **kw)
    assert lin(0.0) == cos(0.0) == 0.0 and lin(0.4) == cos(0.4) == 1.0
    assert lin(0.1) == pytest.approx(0.25)
    assert cos(0.1) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.25)))
    assert cos(0.1) < lin(0.1) and cos(0.3) > lin(0.3)  # slower start, faster finish
    assert cos(0.2) == pytest.approx(lin(0.2))  # both are half way at half the warmup
    for t in GRID:
        if t >= 0.4:
            assert cos(t) == lin(t), "the warmup shape must not change the decay"


@pytest.mark.parametrize("start_factor", (0.0, 0.1, 0.5, 1.0))
def test_sfd_start_factor(start_factor: float) -> None:
    fn = make_schedule("sfd", peak_lr=0.2, warmup=0.3, decay_rate=2.0, start_factor=start_factor)
    assert fn(0.0) == pytest.approx(start_factor * 0.2)
    assert fn(0.15) == pytest.approx(0.2 * (start_factor + (1 - start_factor) * 0.5))
    if start_factor == 1.0:
        assert all(v == pytest.approx(0.2) for v in values(fn, [t for t in GRID if t <= 0.3]))


def test_sfd_min_lr_floor() -> None:
    peak, floor = 0.1, 0.01
    fn = make_schedule("sfd", peak_lr=peak, warmup=0.2, decay_rate=8.0, start_factor=0.01, min_lr=floor)
    vs = values(fn)
    assert min(vs) == pytest.approx(floor)
    assert all(v >= floor for v in vs)
    assert fn(0.0) == floor  # 0.01·peak is below the floor
    assert fn(1.0) == floor  # peak·e^-8 is below the floor
    assert fn(0.2) == pytest.approx(peak)
    unfloored = make_schedule("sfd", peak_lr=peak, warmup=0.2, decay_rate=8.0, start_factor=0.01)
    assert all(v == max(u, floor) for v, u in zip(vs, values(unfloored)))


def test_sfd_without_warmup_starts_at_peak_and_clips_t() -> None:
    fn = make_schedule("sfd", peak_lr=0.1, warmup=0.0, decay_rate=3.0)
    assert fn(0.0) == pytest.approx(0.1)
    assert non_increasing(values(fn))
    assert fn(-0.5) == fn(0.0) and fn(1.5) == fn(1.0)


def test_sfd_docstring_example() -> None:
    lr = make_schedule("sfd", peak_lr=0.1, warmup=0.2, decay_rate=4.0)
    assert round(lr(0.2), 3) == 0.1 and lr(0.0) < lr(0.1) < lr(0.2) and lr(1.0) < 0.002


# ---------------------------------------------------------------- cyclic

@pytest.mark.parametrize("peak_at", (0.2, 0.4, 0.5, 0.8))
def test_cyclic_triangle(peak_at: float) -> None:
    fn = make_schedule("cyclic", peak_lr=0.2, peak_at=peak_at)
    assert fn(0.0) == 0.0
    assert fn(peak_at) == pytest.approx(0.2)
    assert fn(1.0) == pytest.approx(0.0, abs=1e-15)
    vs = values(fn)
    assert GRID[vs.index(max(vs))] == pytest.approx(peak_at)
    assert non_decreasing([v for t, v in zip(GRID, vs) if t <= peak_at])
    assert non_increasing([v for t, v in zip(GRID, vs) if t >= peak_at])
    # linear on both sides: the midpoints are at half the peak
    assert fn(peak_at / 2) == pytest.approx(0.1)
    assert fn((1 + peak_at) / 2) == pytest.approx(0.1)
    assert all(v >= 0 for v in vs)


def test_cyclic_default_peak_is_at_40_percent() -> None:
    assert cyclic(0.4, peak_lr=1.0) == pytest.approx(1.0)
    assert cyclic(0.3, peak_lr=1.0) < 1.0 and cyclic(0.5, peak_lr=1.0) < 1.0


# ---------------------------------------------------------------- piecewise

@pytest.mark.parametrize("milestones,gamma", [((0.5, 0.75), 0.1), ((0.3,), 0.5), ((0.2, 0.4, 0.9), 0.2)])
def test_piecewise_drops_exactly_at_milestones(milestones: tuple[float, ...], gamma: float) -> None:
    peak = 0.1
    fn = make_schedule("piecewise", peak_lr=peak, milestones=milestones, gamma=gamma)
    assert fn(0.0) == peak
    for k, m in enumerate(milestones):
        assert fn(m - 1e-9) == pytest.approx(peak * gamma ** k), f"dropped before milestone {m}"
        assert fn(m) == pytest.approx(peak * gamma ** (k + 1)), f"no drop at milestone {m}"
    assert fn(1.0) == pytest.approx(peak * gamma ** len(milestones))
    vs = values(fn)
    assert non_increasing(vs)
    assert len(set(vs)) == len(milestones) + 1, "piecewise must be constant between milestones"


def test_piecewise_defaults_are_madry_rice() -> None:
    assert piecewise(0.49, 1.0) == 1.0
    assert piecewise(0.5, 1.0) == pytest.approx(0.1)
    assert piecewise(0.75, 1.0) == pytest.approx(0.01)


# ---------------------------------------------------------------- cosine and constant

@pytest.mark.parametrize("warmup", (0.0, 0.1, 0.3))
@pytest.mark.parametrize("min_lr", (0.0, 0.005))
def test_cosine_shape(warmup: float, min_lr: float) -> None:
    peak = 0.1
    fn = make_schedule("cosine", peak_lr=peak, warmup=warmup, min_lr=min_lr)
    assert fn(0.0) == pytest.approx(0.0 if warmup > 0 else peak)
    assert fn(warmup) == pytest.approx(peak)
    assert fn(1.0) == pytest.approx(min_lr)
    vs = values(fn)
    assert max(vs) == pytest.approx(peak)
    up = [v for t, v in zip(GRID, vs) if t <= warmup]
    down = [v for t, v in zip(GRID, vs) if t >= warmup]
    assert non_decreasing(up) and non_increasing(down)
    assert all(v >= min_lr - 1e-15 for v in down), "min_lr is the floor of the decay"
    if warmup > 0:
        assert fn(warmup / 2) == pytest.approx(peak / 2), "warmup is linear from 0"
    mid = warmup + (1 - warmup) / 2
    assert fn(mid) == pytest.approx((peak + min_lr) / 2), "half way through the decay: half way down"


def test_constant() -> None:
    fn = make_schedule("constant", peak_lr=0.03, warmup=0.5, decay_rate=9.0)  # extra fields ignored
    assert set(values(fn)) == {0.03}
    assert constant(0.7, 0.03) == 0.03


def test_make_schedule_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'.*sfd"):
        make_schedule("linear", peak_lr=0.1)


def test_make_schedule_ignores_fields_of_other_families() -> None:
    fn = make_schedule("cyclic", peak_lr=0.2, peak_at=0.5, warmup=0.1, decay_rate=3.0, gamma=0.1)
    assert fn(0.5) == pytest.approx(0.2) and fn(0.25) == pytest.approx(0.1)


# ---------------------------------------------------------------- from a TrialConfig

CONFIGS = [
    dict(schedule="sfd", peak_lr=0.05, warmup=0.2, decay_rate=5.0, start_factor=0.3, min_lr=1e-3,
         warmup_shape="cosine"),
    dict(schedule="sfd"),  # the embedded default
    dict(schedule="cyclic", peak_lr=0.2, peak_at=0.3),
    dict(schedule="piecewise", peak_lr=0.1, milestones=[0.3, 0.6], gamma=0.5),
    dict(schedule="cosine", peak_lr=0.1, warmup=0.15, min_lr=0.002),
    dict(schedule="constant", peak_lr=0.07),
]
REFERENCE = {"sfd": sfd, "cyclic": cyclic, "piecewise": piecewise, "cosine": cosine, "constant": constant}


@pytest.mark.parametrize("fields", CONFIGS, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_schedule_from_config_matches_the_function(fields: dict) -> None:
    cfg = TrialConfig(**fields)
    fn = schedule_from_config(cfg)
    ref = REFERENCE[cfg.schedule]
    params = {
        "sfd": dict(peak_lr=cfg.peak_lr, warmup=cfg.warmup, decay_rate=cfg.decay_rate,
                    start_factor=cfg.start_factor, min_lr=cfg.min_lr, warmup_shape=cfg.warmup_shape),
        "cyclic": dict(peak_lr=cfg.peak_lr, peak_at=cfg.peak_at),
        "piecewise": dict(peak_lr=cfg.peak_lr, milestones=cfg.milestones, gamma=cfg.gamma),
        "cosine": dict(peak_lr=cfg.peak_lr, warmup=cfg.warmup, min_lr=cfg.min_lr),
        "constant": dict(peak_lr=cfg.peak_lr),
    }[cfg.schedule]
    for key, value in fields.items():  # the config really carries the values given
        if key != "schedule":
            assert getattr(cfg, key) == (tuple(value) if isinstance(value, list) else value)
    assert values(fn) == [ref(t, **params) for t in GRID]


# ---------------------------------------------------------------- epsilon ramp

@pytest.mark.parametrize("ramp", (0.1, 0.3, 0.5))
def test_eps_ramp_is_linear_then_constant(ramp: float) -> None:
    eps = 8 / 255
    vs = [eps_at(t, eps, ramp) for t in GRID]
    assert vs[0] == 0.0
    assert eps_at(ramp, eps, ramp) == eps
    assert eps_at(ramp / 2, eps, ramp) == pytest.approx(eps / 2)
    for t, v in zip(GRID, vs):
        if t < ramp:
            assert v == pytest.approx(eps * t / ramp) and v < eps
        else:
            assert v == eps
    assert non_decreasing(vs)


def test_eps_without_ramp_is_constant() -> None:
    assert {eps_at(t, 0.3, 0.0) for t in GRID} == {0.3}
    assert eps_at(-0.1, 0.3, 0.2) == 0.0  # progress before the start is clipped
