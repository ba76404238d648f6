"""The trial's LR trace: a few points an epoch of the LR it actually set (a warmup that peaks inside an epoch
shows in TensorBoard, where the per-validation ``lr`` is one point), compact enough for every result."""
from __future__ import annotations

import pytest

from advtune.trainables import finetune
from advtune.trainables.schedules import schedule_from_config


def test_each_report_carries_the_lr_it_set_at_most_50_points_an_epoch(tiny_config, recorder):
    cfg = tiny_config.replace(schedule="sfd", warmup=0.3, epochs=2, evals_per_epoch=2, batch_size=8, attack="none",
                                train_size=448, val_size=64)
    rep = recorder()
    finetune.run(cfg, rep)
    assert cfg.train_size // cfg.batch_size == 56  # steps an epoch: more than 50, so the trace must thin out
    schedule = schedule_from_config(cfg)
    points = [p for m in rep.metrics for p in m["lr_trace"]]
    assert len(points) <= 2 * 50 and len(points) >= 2 * 25
    starts = [0.0] + [m["epoch"] for m in rep.metrics[:-1]]
    for m, start in zip(rep.metrics, starts):  # each report holds the steps since the previous one
        assert m["lr_trace"] and all(start <= ep < m["epoch"] for ep, _ in m["lr_trace"])
    for ep, lr in points:  # the LR the schedule gives at that step (the epoch where the step starts)
        assert lr == pytest.approx(schedule(ep / cfg.epochs), rel=1e-3)  # ep is rounded to 1e-4
    assert points[0] == [0.0, pytest.approx(schedule(0.0))]
    # the warmup's peak is in the trace, inside the first epoch, where the per-validation lr cannot show it
    peak = max(points, key=lambda p: p[1])
    assert 0.5 <= peak[0] <= 0.7 and peak[1] == pytest.approx(cfg.peak_lr, rel=0.05)
    assert len(str(rep.metrics[0]["lr_trace"])) < 2000  # small next to a result: it travels with every one
