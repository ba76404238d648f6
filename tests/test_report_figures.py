"""The report's figures at unit level (no study needed): the epsilon ramp starts at eps_ramp_start, and the Pareto
plot is drawn on the strong figure where the study has one."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY

from advtune.study.records import TrialRecord
from advtune.study.report import schedules_figure
from advtune.study.report_pareto import pareto_figure
from advtune.study.report_trials import trial_figure
from advtune.trainables.config import TrialConfig

MARKER = {"spec": {"base_config": TrialConfig(**TINY).replace(epochs=4, train_eps=0.2).to_dict()}}


def _rec(tid: str, clean: float, robust: float, params: dict | None = None) -> TrialRecord:
    metrics = [{"epoch": e, "clean_acc": clean, "robust_acc": robust, "train_loss": 1.0, "lr": 0.01} for e in (1, 2)]
    return TrialRecord(tid, params or {}, metrics, "completed")


def _eps_line(ax) -> tuple[np.ndarray, np.ndarray]:
    line = max(ax.get_lines(), key=lambda l: len(l.get_xdata()))  # the ramp, not the eval-eps line
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def test_the_epsilon_ramp_starts_at_eps_ramp_start_in_both_plots():
    rec = _rec("t1", 0.9, 0.4, {"eps_ramp_start": 0.25, "eps_ramp": 0.5})
    rec.metrics.append({**rec.metrics[-1], "epoch": 4})
    ax_eps = schedules_figure(MARKER, [rec]).axes[1]  # over training progress t
    t, eps = _eps_line(ax_eps)
    assert np.all(eps[t < 0.25] == 0) and eps[np.argmin(abs(t - 0.375))] == pytest.approx(0.1, abs=2e-3)
    assert eps[-1] == pytest.approx(0.2)
    ax_eps = trial_figure(1, rec, TrialConfig(**MARKER["spec"]["base_config"]).replace(**rec.params)).axes[3]
    x, eps = _eps_line(ax_eps)  # over epochs (4): T1 is epoch 1, T2 epoch 2
    assert np.all(eps[x < 1.0] == 0) and eps[np.argmin(abs(x - 1.5))] == pytest.approx(0.1, abs=2e-3)


def test_the_pareto_plot_uses_the_strong_figure_where_there_is_one():
    # by the selection figure b dominates a; under the strong attack a holds and b does not
    recs = [_rec("a", 0.90, 0.50), _rec("b", 0.92, 0.60), _rec("c", 0.80, 0.30)]
    final = {"trials": {"a": {"robust_acc": 0.45, "clean_acc": 0.91}, "b": {"robust_acc": 0.30, "clean_acc": 0.93}}}
    fig, front, basis = pareto_figure(recs, recs[:2], None, final)
    assert basis == "strong" and {r.trial_id for r in front} == {"a", "b"}  # c has no strong figure: not drawn
    assert "final strong attack" in fig._suptitle.get_text()
    assert "strong attack's robust accuracy" in fig.axes[0].get_ylabel()
    points = sorted(tuple(map(tuple, c.get_offsets())) for c in fig.axes[0].collections if len(c.get_offsets()))
    assert ((91.0, 45.0), (93.0, 30.0)) in points  # the strong figures, in %
    fig, front, basis = pareto_figure(recs, recs[:2], None, {})  # no strong evaluation: the selection figure
    assert basis == "selection" and [r.trial_id for r in front] == ["b"]
    assert "selection figure" in fig._suptitle.get_text() and "no strong evaluation" in fig._suptitle.get_text()
    one = {"trials": {"a": final["trials"]["a"]}}  # one strong point is no front: the selection figure, said why
    fig, front, basis = pareto_figure(recs, recs[:2], None, one)
    assert basis == "selection" and "only 1 trial has a strong figure" in fig._suptitle.get_text()
