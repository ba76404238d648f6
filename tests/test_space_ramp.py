"""A space that searches eps_ramp_start (T1) and eps_ramp (T2) both: every proposal builds a valid trial config
(T1 <= T2), through the real searcher (Ray's OptunaSearch over the define-by-run function, Optuna TPE)."""
from __future__ import annotations

import pytest

from advtune.search_spaces import SpaceError, define_by_run, load_space
from advtune.trainables.config import TrialConfig


def _space(tmp_path, t1, t2, name="ramp.yaml"):
    path = tmp_path / name
    path.write_text(f"params:\n  eps_ramp_start: {{uniform: {list(t1)}}}\n  eps_ramp: {{uniform: {list(t2)}}}\n"
                    "  peak_lr: {loguniform: [0.005, 0.1]}\n")
    return load_space(path)


def _proposals(space, n=40):
    from advtune.study.tune_backend import PruningAwareOptunaSearch, make_sampler

    searcher = PruningAwareOptunaSearch(space=define_by_run(space), metric="best_robust_acc", mode="max",
                                        sampler=make_sampler("tpe", 0, 3))
    out = []
    for i in range(n):
        params = searcher.suggest(f"t{i}")
        out.append((params, searcher._ot_trials[f"t{i}"].params))
        searcher.on_trial_complete(f"t{i}", {"best_robust_acc": params["eps_ramp"] - params["eps_ramp_start"],
                                             "training_iteration": 1, "epoch": 1})
    return out


@pytest.mark.parametrize("t1", [(0.0, 0.3), (0.0, 0.5)])
def test_every_proposal_of_overlapping_ramp_ranges_is_a_valid_trial(tmp_path, t1):
    space = _space(tmp_path, t1, (0.1, 0.6))  # (0, 0.5): was refused at load (checked against eps_ramp 0.3)
    clamped = 0
    for params, drawn in _proposals(space):
        cfg = TrialConfig().replace(**space.base, **params)  # raised ConfigError for a draw with T1 > T2
        assert cfg.eps_ramp_start <= cfg.eps_ramp
        if drawn["eps_ramp_start"] > drawn["eps_ramp"]:  # clamped to T2, and the trial's config says so
            clamped += 1
            assert params["eps_ramp_start"] == params["eps_ramp"] == drawn["eps_ramp"]
        else:
            assert params["eps_ramp_start"] == drawn["eps_ramp_start"]
    assert clamped  # the ranges overlap: some draws had T1 > T2


def test_ramp_ranges_that_cannot_hold_are_refused(tmp_path):
    with pytest.raises(SpaceError, match=r"eps_ramp_start.*lies after eps_ramp.*could never hold"):
        _space(tmp_path, (0.5, 0.6), (0.1, 0.4))
