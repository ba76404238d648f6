"""A collapsed model (a constant classifier) ends as `diverged` with a reason, not `completed` (issue 20)."""

from __future__ import annotations

import pytest
import torch

from advtune.trainables import finetune
from advtune.trainables.collapse import chance_threshold, collapse_reason, should_check, stop_for_collapse
from advtune.trainables.config import TrialConfig
from advtune.trainables.setup import prepare

from conftest import DIGITS_N_VAL, TINY


def test_chance_accuracy_is_a_collapse_and_a_learning_model_is_not():
    # issue 20's run: clean = robust = 10.1% on 10 classes
    assert "chance" in collapse_reason(0.101, 0.3, 10, 1000)
    assert chance_threshold(10, DIGITS_N_VAL) == pytest.approx(0.1 + 2 * (0.09 / DIGITS_N_VAL) ** 0.5)
    assert collapse_reason(chance_threshold(10, DIGITS_N_VAL) + 0.01, 0.2, 10, DIGITS_N_VAL) is None
    assert collapse_reason(0.6, 0.15, 10, 1000) is None
    # the margin never falls below 2 points, however many images
    assert collapse_reason(0.115, 0.2, 10, 10 ** 7) is not None and chance_threshold(10, 10 ** 7) == pytest.approx(0.12)


def test_one_class_for_nearly_all_images_is_a_collapse():
    reason = collapse_reason(0.3, 0.96, 10, 1000)
    assert reason is not None and "one class" in reason and "96.0%" in reason
    assert collapse_reason(0.3, 0.90, 10, 1000) is None
    assert collapse_reason(0.9, 0.99, 2, 1000) is None  # two classes: judged by accuracy alone
    assert collapse_reason(0.1, 1.0, 10, 99) is None  # too few images to tell chance from a weak model


def test_the_check_waits_for_the_first_epochs_but_always_judges_the_end():
    assert not should_check(0.5, 10, final=False) and not should_check(2.0, 10, final=False)
    assert should_check(2.5, 10, final=False) and should_check(1.0, 2, final=False)
    assert should_check(0.5, 1, final=True)


def test_one_judged_validation_at_chance_is_not_enough_unless_it_is_the_last():
    assert stop_for_collapse(0, True, final=False) == (1, False)  # may recover as the LR decays
    assert stop_for_collapse(1, False, final=False) == (0, False)  # it did: the streak restarts
    assert stop_for_collapse(1, True, final=False) == (2, True)  # two in a row: a collapse
    assert stop_for_collapse(0, True, final=True) == (1, True)  # at chance at the end: a collapse


def test_a_constant_classifier_ends_as_diverged_with_its_reason(recorder, tmp_path):
    """A starting point whose head always says class 3, trained with a negligible LR: every clean
    prediction is class 3 (10% correct), which is a collapse, not a completed trial."""
    cfg = TrialConfig(**{**TINY, "epochs": 2, "val_steps": 1, "train_steps": 1, "schedule": "constant",
                         "peak_lr": 1e-9})
    model = prepare(cfg).model
    with torch.no_grad():
        model.net.fc.weight.zero_()
        model.net.fc.bias.zero_()
        model.net.fc.bias[3] = 100.0
    torch.save(model.state_dict(), tmp_path / "constant.pt")
    rep = recorder()
    summary = finetune.run(cfg.replace(pretrained=str(tmp_path / "constant.pt")), rep)
    assert summary["status"] == "diverged" and rep.metrics[-1]["status"] == "diverged"
    assert "collapsed" in summary["stop_reason"] and "epoch 2" in summary["stop_reason"]
    assert [m["status"] for m in rep.metrics] == ["running", "diverged"]  # epoch 1 at chance: one more chance
    assert rep.metrics[-1]["clean_acc"] < 0.15
    assert rep.checkpoints[-1] is None  # like any diverged model, never checkpointed
