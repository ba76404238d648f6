"""Defects found in review that changed reported or selected numbers (issue: robustness numbers a
reviewer can trust). Each test failed on the code before its fix."""

from __future__ import annotations

import math

import pytest
import torch

from advtune.trainables import attacks, finetune
from advtune.trainables.checkpoints import load_starting_point
from advtune.trainables.config import ConfigError, TrialConfig
from advtune.trainables.evaluate import evaluate_pgd
from advtune.trainables.loader import iterate
from advtune.trainables.pretrain import cached_path, ensure_pretrained
from advtune.trainables.setup import prepare

from conftest import DIGITS_N_TRAIN, TINY


@pytest.fixture(scope="module")
def pretrained_digits():
    """The naturally pretrained small CNN on digits (the default starting point; cached per session)
    and its validation images."""
    cfg = TrialConfig(device="cpu")
    prep = prepare(cfg, with_starting_point=False)
    load_starting_point(prep.model, ensure_pretrained(cfg))
    return prep.model.eval(), prep.splits.val


# ---------------------------------------------------------------- catastrophic-overfitting guard

def test_fgsm_rs_with_the_default_epsilon_ramp_trains_to_the_end(recorder, pretrained_digits):
    """The guard measured PGD accuracy at the ramping epsilon and compared it with its best at a
    smaller one: the natural fall as epsilon grew tripped it (advtune train --set attack=fgsm_rs
    stopped at epoch 2 while robust validation accuracy rose). Now it measures at the full training
    epsilon and a run whose robust validation accuracy still rises is never stopped."""
    cfg = TrialConfig(device="cpu", attack="fgsm_rs", epochs=4, eps_ramp=0.6, val_steps=3)
    assert cfg.co_guard and cfg.co_gap == 0.3 and cfg.co_drop == 0.2  # the defaults
    rep = recorder()
    summary = finetune.run(cfg, rep)
    assert summary["status"] == "completed", summary["stop_reason"]
    assert [m["epoch"] for m in rep.metrics] == [1, 2, 3, 4]
    assert rep.metrics[-1]["best_robust_acc"] > rep.metrics[0]["robust_acc"]  # it did learn
    assert all(0 <= m["co_pgd_acc"] <= 1 and 0 <= m["co_fgsm_acc"] <= 1 for m in rep.metrics)


def test_guard_still_stops_a_run_forced_to_overfit_and_counts_its_passes(recorder):
    """co_gap=0: any FGSM-over-PGD gap on the guard batch trips it at the first check (no trend
    yet to contradict it); the trial stops, says so, and keeps its best checkpoint. The guard's
    FGSM + PGD-10 passes are counted in guard_passes, not in grad_passes."""
    cfg = TrialConfig(**{**TINY, "attack": "fgsm_rs", "epochs": 3, "co_gap": 0.0, "eps_ramp": 0.0})
    rep = recorder()
    summary = finetune.run(cfg, rep)
    assert summary["status"] == "catastrophic_overfitting"
    assert "catastrophic overfitting at epoch 1" in summary["stop_reason"]
    assert rep.checkpoints[-1] is not None and (rep.checkpoints[-1] / "best.pt").exists()
    m = rep.metrics[-1]
    assert m["grad_passes"] == 2 * DIGITS_N_TRAIN  # FGSM-RS: 2 passes per image, the guard not included
    assert m["guard_passes"] == (1 + 10) * 512  # FGSM + PGD-10 on the 512-image guard batch


def test_guard_names_the_validation_it_stopped_at(recorder):
    """With two validations an epoch the guard that tripped at the first (mid-epoch) said 'at epoch 1'
    (the epoch being trained, counted from 1), which reads as a full epoch of training; the stop
    reason names the training progress of the check, as the metrics do."""
    cfg = TrialConfig(**{**TINY, "attack": "fgsm_rs", "epochs": 2, "evals_per_epoch": 2, "co_gap": 0.0, "eps_ramp": 0.0})
    rep = recorder()
    summary = finetune.run(cfg, rep)
    assert summary["status"] == "catastrophic_overfitting"
    at = rep.metrics[-1]["epoch"]
    assert 0 < at < 1  # the first validation, mid-epoch (its batch boundary: 0.44 of an epoch on TINY's batches)
    assert f"catastrophic overfitting at epoch {at:.3g}:" in summary["stop_reason"], summary["stop_reason"]


# ---------------------------------------------------------------- fp16 attacks

def _zero_grad_fraction(model, x, y, dtype) -> float:
    grad, _ = attacks._grad(model, x, torch.zeros_like(x), y, attacks._ce_sum, dtype)
    return (grad.flatten(1).abs().sum(1) == 0).float().mean().item()


def test_fp16_attack_gradients_do_not_underflow(pretrained_digits):
    """Without loss scaling 23% of the images got an all-zero input gradient under fp16 autocast, and
    PGD-10 read 11% robust where fp32 reads 2%."""
    model, val = pretrained_digits
    x, y = next(iterate(val, 288, torch.device("cpu")))
    assert _zero_grad_fraction(model, x, y, None) == 0.0
    assert _zero_grad_fraction(model, x, y, torch.float16) == 0.0
    accs = {}
    for dtype in (None, torch.float16):
        xa = attacks.pgd(model, x, y, 0.2, steps=10, amp_dtype=dtype, track_best=True)
        assert (xa - x).abs().max() <= 0.2 + 1e-6 and 0 <= xa.min() and xa.max() <= 1
        with torch.no_grad():
            accs[dtype] = (model(xa).argmax(1) == y).float().mean().item()
    assert abs(accs[torch.float16] - accs[None]) <= 0.01, accs


def test_validation_is_fp32_whatever_the_trial_trains_in(recorder):
    """robust_acc (what ASHA and the searcher select on) must not depend on amp: the model trained
    in fp16 is validated exactly as an fp32 evaluation of the same weights."""
    cfg = TrialConfig(**{**TINY, "epochs": 1, "amp": "fp16"})
    rep = recorder()
    finetune.run(cfg, rep)
    prep = prepare(cfg.replace(pretrained="none"), with_starting_point=False)
    state = torch.load(rep.checkpoints[-1] / "best.pt", weights_only=True)["model"]
    prep.model.load_state_dict(state)
    res = evaluate_pgd(prep.model, prep.splits.val, cfg.norm, cfg.eval_eps, steps=cfg.val_steps,
                       step=cfg.val_step_value, batch_size=cfg.eval_batch_size)
    assert rep.metrics[-1]["robust_acc"] == res.robust_acc and rep.metrics[-1]["clean_acc"] == res.clean_acc


# ---------------------------------------------------------------- pretraining cache key

@pytest.mark.parametrize("change", [{"weight_decay": 1e-3}, {"momentum": 0.5}, {"nesterov": True}, {"amp": "bf16"}])
def test_pretraining_cache_key_holds_every_setting_that_changes_the_weights(change, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVTUNE_CACHE", str(tmp_path))
    base = TrialConfig()
    assert cached_path(base.replace(**change)) != cached_path(base)


def test_pretraining_cache_key_ignores_fine_tuning_and_threat_model_settings(tmp_path, monkeypatch):
    """Trials that differ only in what natural training never uses share one starting point."""
    monkeypatch.setenv("ADVTUNE_CACHE", str(tmp_path))
    base = TrialConfig()
    same = [{"peak_lr": 0.1}, {"train_steps": 3}, {"eval_eps": 0.1}, {"attack": "fgsm_rs"}, {"seed": 7},
            {"epochs": 3}, {"val_steps": 20}, {"schedule": "cyclic"}]
    assert {cached_path(base.replace(**kw)) for kw in same} == {cached_path(base)}


# ---------------------------------------------------------------- smaller defects

def test_trades_without_an_attack_is_refused():
    """loss=trades with attack=none was accepted and reported nan% robust accuracy."""
    with pytest.raises(ConfigError, match="trades.*attack=pgd"):
        TrialConfig(loss="trades", attack="none")


def test_trades_clean_target_leaves_batchnorm_statistics_alone(tiny_config):
    """TRADES computed its clean target in train-mode BatchNorm, updating the running statistics
    with an extra forward pass per batch. In the attack's BN mode (eval) only the training forward
    passes (clean + adversarial) may touch them: two updates per batch, not three."""
    cfg = tiny_config.replace(loss="trades", attack="pgd", eps_ramp=0.0, train_steps=1)
    prep = prepare(cfg, with_starting_point=False)
    model = prep.model.train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = next(iterate(prep.splits.train, 64, torch.device("cpu")))
    before = int(bn.num_batches_tracked)
    finetune._train_step(cfg, model, opt, scaler, x, y, cfg.eval_eps, None)
    assert int(bn.num_batches_tracked) - before == 2


def test_free_at_crafts_in_train_mode_and_refuses_eval_mode():
    """Free AT takes the perturbation's gradient from the training pass (train-mode BatchNorm): the
    recorded setting says so, and asking for eval mode is refused instead of silently ignored."""
    assert TrialConfig(attack="free").attack_bn_value == "train"
    assert TrialConfig(attack="pgd").attack_bn_value == "eval"
    with pytest.raises(ConfigError, match="attack_bn_mode=eval cannot hold"):
        TrialConfig(attack="free", attack_bn_mode="eval")


def test_reported_lr_is_the_lr_of_the_last_step_taken(recorder, tiny_config):
    """The reported lr was the next step's, and the last epoch reported schedule(1.0), never used."""
    from advtune.trainables.schedules import schedule_from_config

    cfg = tiny_config.replace(schedule="sfd", warmup=0.3, decay_rate=3.0, epochs=2)
    rep = recorder()
    finetune.run(cfg, rep)
    schedule = schedule_from_config(cfg)
    steps_per_epoch = math.ceil(DIGITS_N_TRAIN / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for m in rep.metrics:
        last_step = int(m["epoch"]) * steps_per_epoch - 1
        assert m["lr"] == pytest.approx(schedule(last_step / total))
    assert rep.metrics[-1]["lr"] != pytest.approx(schedule(1.0))
