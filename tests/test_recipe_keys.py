"""Issue 25's trainer keys: ema_decay (weight averaging), eps_ramp_start (delayed epsilon), label_smoothing,
attack nfgsm's keys, and the mnist_cnn model — validation, the invariants each promises, and resume."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtune.trainables import finetune
from advtune.trainables.checkpoints import load_file
from advtune.trainables.config import ConfigError, TrialConfig
from advtune.trainables.ema import WeightEMA
from advtune.trainables.models import MnistCNN, build_model, head
from advtune.trainables.schedules import eps_at

from conftest import DIGITS_N_TRAIN, TINY

NEW_KEYS = ("ema_decay", "eps_ramp_start", "label_smoothing", "nfgsm_noise", "nfgsm_step")


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("key, bad, words", [
    ("ema_decay", 1.0, "0 <= ema_decay < 1"), ("ema_decay", -0.1, "0 <= ema_decay < 1"),
    ("label_smoothing", 1.0, "0 <= label_smoothing < 1"), ("eps_ramp_start", 1.0, "0 <= eps_ramp_start < 1"),
    ("nfgsm_noise", -1.0, "0 <= nfgsm_noise <= 16"), ("nfgsm_step", 0.0, "0 < nfgsm_step <= 16"),
])
def test_a_bad_value_names_the_field_the_value_and_the_range(key, bad, words):
    with pytest.raises(ConfigError, match=rf"'{key}' = {bad!r}.*{re.escape(words)}"):
        TrialConfig(**{key: bad, **({"eps_ramp": 0.99} if key == "eps_ramp_start" else {})})


def test_the_ramp_cannot_start_after_it_ends_and_nfgsm_has_its_own_step():
    with pytest.raises(ConfigError, match=r"eps_ramp_start' = 0.5 is after the ramp's end eps_ramp = 0.3"):
        TrialConfig(eps_ramp_start=0.5, eps_ramp=0.3)
    TrialConfig(eps_ramp_start=0.3, eps_ramp=0.3)  # T1 = T2: a step from 0 to full epsilon
    with pytest.raises(ConfigError, match="nfgsm.*nfgsm_step.*not train_step_size"):
        TrialConfig(attack="nfgsm", train_step_size=0.1)


def test_new_keys_are_documented_and_saved(tmp_path):
    docs = TrialConfig.field_docs()
    for key in NEW_KEYS:
        assert key in docs
    assert "mnist_cnn" in docs and "nfgsm" in docs
    cfg = TrialConfig(ema_decay=0.99, eps_ramp_start=0.1, label_smoothing=0.2, attack="nfgsm", nfgsm_noise=1.5,
                      nfgsm_step=1.25, model="mnist_cnn")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrialConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert cfg.with_overrides(["ema_decay=0.5"]).ema_decay == 0.5


# ---------------------------------------------------------------- eps_ramp_start (T1) .. eps_ramp (T2)

def test_epsilon_trajectory_is_zero_until_t1_then_linear_to_t2():
    eps, t1, t2 = 0.3, 0.2, 0.6
    for t in (0.0, 0.1, 0.1999):
        assert eps_at(t, eps, t2, t1) == 0.0
    assert eps_at(0.2, eps, t2, t1) == 0.0
    assert eps_at(0.4, eps, t2, t1) == pytest.approx(0.15)  # halfway between T1 and T2
    assert eps_at(0.5, eps, t2, t1) == pytest.approx(0.225)
    for t in (0.6, 0.8, 1.0):
        assert eps_at(t, eps, t2, t1) == eps
    assert eps_at(0.3, eps, 0.3, 0.3) == eps and eps_at(0.29, eps, 0.3, 0.3) == 0.0  # T1 = T2: a step
    assert [eps_at(t, eps, 0.5) for t in (0.0, 0.25, 0.5)] == [0.0, pytest.approx(0.15), eps]  # T1 = 0: the old ramp


def test_a_run_follows_the_delayed_trajectory(recorder):
    """Reported train_eps is that of each segment's last batch; before T1 training is natural (1 pass/image)."""
    cfg = TrialConfig(**{**TINY, "epochs": 1, "evals_per_epoch": 4, "attack": "fgsm_rs", "co_guard": False,
                         "val_steps": 1, "eps_ramp_start": 0.26, "eps_ramp": 0.75})
    rep = recorder()
    finetune.run(cfg, rep)
    n = math.ceil(DIGITS_N_TRAIN / cfg.batch_size)  # 9 batches: validations after batches 2, 4, 7, 9
    ends = finetune._segments(n, 4)
    assert len(rep.metrics) == len(ends) == 4
    for end, m in zip(ends, rep.metrics):
        assert m["train_eps"] == pytest.approx(eps_at((end - 1) / n, cfg.train_eps_value, 0.75, 0.26))
    assert rep.metrics[0]["train_eps"] == 0.0 and rep.metrics[0]["grad_passes"] == ends[0] * cfg.batch_size
    assert 0 < rep.metrics[1]["train_eps"] < rep.metrics[2]["train_eps"] < cfg.train_eps_value == rep.metrics[3]["train_eps"]


# ---------------------------------------------------------------- weight averaging

def test_ema_equals_a_hand_computed_average_of_parameters_and_batchnorm_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = WeightEMA(model, decay=0.6)
    by_hand = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(5):
        x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update(model)
        d = min(0.6, (1 + n) / (10 + n))  # warm-up: 0.1, 0.18, 0.25, 0.31, then 0.6 is not reached in 5
        for k, v in model.state_dict().items():
            by_hand[k] = d * by_hand[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    got = ema.model.state_dict()
    for k, v in by_hand.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert not torch.equal(got["1.running_mean"], model.state_dict()["1.running_mean"])  # BN stats averaged too
    assert int(got["1.num_batches_tracked"]) == 5 and ema.updates == 5
    assert ema.current_decay() == pytest.approx(min(0.6, 6 / 15))


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory):
    """An EMA run of one epoch, validated twice, uninterrupted; and the same run crashed after its first report."""
    from conftest import Interrupted, RecordingReporter

    cfg = TrialConfig(**{**TINY, "epochs": 1, "evals_per_epoch": 2, "ema_decay": 0.8, "val_steps": 2})
    full = RecordingReporter(tmp_path_factory.mktemp("ema-full"))
    finetune.run(cfg, full)
    crashed = RecordingReporter(tmp_path_factory.mktemp("ema-crash"), stop_after=1)
    with pytest.raises(Interrupted):
        finetune.run(cfg, crashed)
    return cfg, full, crashed


def test_best_holds_the_averaged_weights_and_last_holds_both(ema_runs):
    cfg, full, _ = ema_runs
    last = load_file(full.checkpoints[-1] / "last.pt")
    best = load_file(full.checkpoints[-1] / "best.pt")
    assert last["ema"]["updates"] == math.ceil(DIGITS_N_TRAIN / cfg.batch_size)  # one update per optimizer step
    averaged, live = last["ema"]["model"], last["model"]
    assert averaged.keys() == live.keys()
    assert any(not torch.equal(averaged[k], live[k]) for k in live if live[k].is_floating_point())
    # best.pt is the averaged model as it was at the best validation
    at_best = load_file(full.checkpoints[[m["epoch"] for m in full.metrics].index(best["metrics"]["epoch"])] / "last.pt")
    assert all(torch.equal(best["model"][k], at_best["ema"]["model"][k]) for k in averaged)
    assert last["config"]["ema_decay"] == 0.8 and best["config"]["ema_decay"] == 0.8  # the key is saved
    # validation measured the averaged model: re-evaluating best.pt gives the reported figure
    from advtune.trainables.evaluate import evaluate_pgd
    from advtune.trainables.setup import model_from_checkpoint

    prep, _ = model_from_checkpoint(str(full.checkpoints[-1] / "best.pt"), cfg)
    res = evaluate_pgd(prep.model, prep.splits.val, cfg.norm, cfg.eval_eps, steps=cfg.val_steps, step=cfg.val_step_value)
    assert res.clean_acc == best["metrics"]["clean_acc"] and res.robust_acc == best["metrics"]["robust_acc"]


def test_resume_with_ema_is_exact(ema_runs, recorder):
    cfg, full, crashed = ema_runs
    resumed = recorder()
    torch.manual_seed(99)
    finetune.run(cfg, resumed, resume_from=crashed.checkpoints[0])
    got, want = resumed.metrics[-1], full.metrics[-1]
    for key in ("epoch", "clean_acc", "robust_acc", "best_robust_acc", "grad_passes", "train_acc"):
        assert got[key] == want[key], key
    for name in ("best.pt", "last.pt"):
        a, b = load_file(resumed.checkpoints[-1] / name), load_file(full.checkpoints[-1] / name)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), name
    a, b = load_file(resumed.checkpoints[-1] / "last.pt")["ema"], load_file(full.checkpoints[-1] / "last.pt")["ema"]
    assert a["updates"] == b["updates"] and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


# ---------------------------------------------------------------- label smoothing

def test_label_smoothing_enters_the_training_loss(tiny_config):
    from advtune.trainables.setup import prepare

    cfg = tiny_config.replace(attack="none", label_smoothing=0.3, peak_lr=1e-9)
    model = prepare(cfg).model
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        logits = model.eval()(x)
    want = F.cross_entropy(logits, y, label_smoothing=0.3) * 16
    assert not torch.allclose(want, F.cross_entropy(logits, y) * 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_sum, _, _ = finetune._train_step(cfg, model, opt, scaler, x, y, 0.0, None)
    assert loss_sum.item() == pytest.approx(want.item(), rel=1e-5)


# ---------------------------------------------------------------- mnist_cnn

@pytest.mark.parametrize("shape, features", [((1, 28, 28), 32 * 7 * 7), ((1, 8, 8), 32 * 2 * 2), ((3, 32, 32), 32 * 8 * 8),
                                             ((1, 13, 30), 32 * 3 * 7)])
def test_mnist_cnn_has_wongs_shape_for_any_input_size(shape, features):
    model = build_model("mnist_cnn", shape, 7, (0.5,) * shape[0], (0.25,) * shape[0])
    net = model.net
    assert isinstance(net, MnistCNN)
    for conv, cin, cout in ((net.conv1, shape[0], 16), (net.conv2, 16, 32)):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == \
            (cin, cout, (4, 4), (2, 2), (1, 1))
    assert (net.fc1.in_features, net.fc1.out_features) == (features, 100)
    assert head(model) is net.fc and net.fc.out_features == 7
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules())
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_mnist_cnn_refuses_images_too_small():
    with pytest.raises(ValueError, match="at least 4x4"):
        MnistCNN(1, 10, (3, 28))


