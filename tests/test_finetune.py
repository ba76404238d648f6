"""Tests for trainables.finetune.run: resume is exact, metrics follow the contract, best.pt is the
best robust epoch, divergence stops cleanly, head-only fine-tuning freezes the backbone, eps ramps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from advtune.trainables import finetune
from advtune.trainables.checkpoints import FORMAT, load_file
from advtune.trainables.config import TrialConfig
from advtune.trainables.data import load_splits
from advtune.trainables.evaluate import evaluate_pgd
from advtune.trainables.models import build_model
from advtune.trainables.setup import prepare

from conftest import DIGITS_N_TRAIN, TINY, RecordingReporter

CONTRACT_KEYS = {"epoch", "lr", "train_loss", "train_acc", "clean_acc", "robust_acc", "best_robust_acc", "train_eps",
                 "grad_passes", "epoch_seconds"}


def assert_same_metrics(resumed: list[dict], uninterrupted: list[dict]) -> None:
    assert len(resumed) == len(uninterrupted)
    for got, want in zip(resumed, uninterrupted):
        assert got["epoch"] == want["epoch"]
        assert got["clean_acc"] == want["clean_acc"], (got, want)
        assert got["robust_acc"] == want["robust_acc"], (got, want)
        assert got["best_robust_acc"] == want["best_robust_acc"]
        assert got["grad_passes"] == want["grad_passes"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
        assert got["train_acc"] == want["train_acc"]
        assert got["lr"] == want["lr"] and got["train_eps"] == want["train_eps"]
        assert got["status"] == want["status"]


def assert_same_model(a: Path, b: Path) -> None:
    ma, mb = load_file(a)["model"], load_file(b)["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory) -> tuple[TrialConfig, RecordingReporter, dict]:
    """The tiny PGD config run for 3 epochs without interruption (shared: it is the reference)."""
    cfg = TrialConfig(**{**TINY, "epochs": 3})
    rep = RecordingReporter(tmp_path_factory.mktemp("three-epochs"))
    summary = finetune.run(cfg, rep)
    return cfg, rep, summary


# ---------------------------------------------------------------- (a) resume is exact

def test_resume_after_epoch_matches_uninterrupted_run(three_epochs, recorder):
    cfg, full, _ = three_epochs
    crashed = recorder(stop_after=1)
    with pytest.raises(recorder.Interrupted):
        finetune.run(cfg, crashed)
    assert crashed.metrics[0] == {**full.metrics[0], "epoch_seconds": crashed.metrics[0]["epoch_seconds"]}
    kept = crashed.checkpoints[0]
    assert (kept / "last.pt").exists() and (kept / "best.pt").exists()
    torch.manual_seed(1234)  # whatever the process did in between must not matter
    resumed = recorder()
    summary = finetune.run(cfg, resumed, resume_from=kept)
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]
    assert_same_metrics(resumed.metrics, full.metrics[1:])
    assert summary["status"] == "completed" and summary["grad_passes"] == full.metrics[-1]["grad_passes"]
    assert_same_model(resumed.checkpoints[-1] / "last.pt", full.checkpoints[-1] / "last.pt")
    assert_same_model(resumed.checkpoints[-1] / "best.pt", full.checkpoints[-1] / "best.pt")
    history = load_file(resumed.checkpoints[-1] / "last.pt")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # the history carries over the interruption


@pytest.mark.parametrize("attack", ["pgd", "free"])
def test_resume_mid_epoch_matches_uninterrupted_run(recorder, attack):
    # free AT also carries its perturbation from one minibatch to the next: it must survive too
    cfg = TrialConfig(**{**TINY, "epochs": 1, "evals_per_epoch": 2, "attack": attack, "free_replays": 2})
    full = recorder()
    finetune.run(cfg, full)
    assert len(full.metrics) == 2 and 0 < full.metrics[0]["epoch"] < 1 and full.metrics[1]["epoch"] == 1
    crashed = recorder(stop_after=1)
    with pytest.raises(recorder.Interrupted):
        finetune.run(cfg, crashed)
    mid = crashed.checkpoints[0]
    progress = load_file(mid / "last.pt")["progress"]
    assert progress["epoch"] == 0 and 0 < progress["batch"] < math.ceil(DIGITS_N_TRAIN / cfg.batch_size)
    resumed = recorder()
    finetune.run(cfg, resumed, resume_from=mid / "last.pt")
    assert_same_metrics(resumed.metrics, full.metrics[1:])
    assert_same_model(resumed.checkpoints[-1] / "last.pt", full.checkpoints[-1] / "last.pt")


def test_validate_at_adds_a_validation_there_and_changes_nothing_else(three_epochs, recorder):
    # what bench/pruning_record.py --rung-figures measures with: one more validation, with its checkpoint and
    # report, at the first batch end at or after each point; training itself is untouched
    cfg, full, _ = three_epochs
    rep = recorder()
    finetune.run(cfg, rep, validate_at=[1.3, 3.0, 7.0])  # 3.0 is an epoch end already; 7.0 lies past the end
    n = math.ceil(DIGITS_N_TRAIN / cfg.batch_size)
    epochs = [m["epoch"] for m in rep.metrics]
    assert epochs[0] == 1 and epochs[2:] == [2, 3] and len(epochs) == 4
    assert 1.3 <= epochs[1] < 1.3 + 1 / n  # never before the point, at most one batch after it
    ends = [m for m in rep.metrics if m["epoch"] in (1, 2, 3)]
    for got, want in zip(ends, full.metrics):  # the same training: epoch-end figures, passes and LR as without
        assert {k: got[k] for k in ("clean_acc", "robust_acc", "grad_passes", "lr")} == \
            {k: want[k] for k in ("clean_acc", "robust_acc", "grad_passes", "lr")}
    assert_same_model(rep.checkpoints[-1] / "last.pt", full.checkpoints[-1] / "last.pt")
    assert full.metrics[0]["grad_passes"] < rep.metrics[1]["grad_passes"] < full.metrics[1]["grad_passes"]
    resumed = recorder()  # from the extra validation's checkpoint: it resumes mid-epoch like any other
    finetune.run(cfg, resumed, resume_from=rep.checkpoints[1] / "last.pt", validate_at=[1.3])
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]
    assert_same_metrics(resumed.metrics, rep.metrics[2:])


def test_resume_with_another_config_is_refused(three_epochs, tmp_path):
    from advtune.trainables.checkpoints import CheckpointError

    cfg, full, _ = three_epochs
    with pytest.raises(CheckpointError, match="different config.*peak_lr"):
        finetune.run(cfg.replace(peak_lr=0.5), RecordingReporter(tmp_path), resume_from=full.checkpoints[0])


# ---------------------------------------------------------------- (b) metrics and cost

def test_every_report_has_the_contract_metrics(three_epochs):
    cfg, full, summary = three_epochs
    assert [m["epoch"] for m in full.metrics] == [1, 2, 3]
    for m in full.metrics:
        assert CONTRACT_KEYS <= m.keys()
        for key in ("clean_acc", "robust_acc", "best_robust_acc", "train_acc"):
            assert 0.0 <= m[key] <= 1.0
        assert m["robust_acc"] <= m["clean_acc"]
        assert m["lr"] > 0 and math.isfinite(m["train_loss"]) and m["epoch_seconds"] > 0
    assert [m["status"] for m in full.metrics] == ["running", "running", "completed"]
    robust = [m["robust_acc"] for m in full.metrics]
    assert [m["best_robust_acc"] for m in full.metrics] == [max(robust[: i + 1]) for i in range(3)]
    assert summary["status"] == "completed" and summary["epochs_run"] == 3


def test_pgd_grad_passes_are_steps_plus_one_per_image(three_epochs):
    cfg, full, _ = three_epochs
    passes = [m["grad_passes"] for m in full.metrics]
    per_epoch = (cfg.train_steps + 1) * DIGITS_N_TRAIN
    assert passes[2] - passes[1] == passes[1] - passes[0] == per_epoch
    # the epsilon ramp starts at 0: the very first batch is a natural step (1 pass per image)
    assert passes[0] == per_epoch - cfg.train_steps * cfg.batch_size


@pytest.mark.parametrize("attack, per_image", [("fgsm_rs", 2), ("free", 3), ("pgd", 2)])
def test_grad_passes_per_attack(recorder, attack, per_image):
    cfg = TrialConfig(**{**TINY, "epochs": 1, "attack": attack, "eps_ramp": 0.0, "free_replays": 3,
                         "train_steps": 1, "val_steps": 1, "co_guard": False})
    rep = recorder()
    finetune.run(cfg, rep)
    (m,) = rep.metrics
    assert m["grad_passes"] == per_image * DIGITS_N_TRAIN
    assert m["train_eps"] == cfg.eval_eps  # no ramp: full epsilon from the first batch


# ---------------------------------------------------------------- (c) best and last checkpoints

def test_best_holds_best_robust_epoch_and_last_the_last(three_epochs):
    cfg, full, summary = three_epochs
    robust = [m["robust_acc"] for m in full.metrics]
    best_i = robust.index(max(robust))
    final = full.checkpoints[-1]
    best = load_file(final / "best.pt")
    last = load_file(final / "last.pt")
    assert best["format"] == last["format"] == FORMAT
    assert best["kind"] == "best" and last["kind"] == "last"
    assert best["metrics"]["epoch"] == full.metrics[best_i]["epoch"]
    assert best["metrics"]["robust_acc"] == max(robust)
    assert TrialConfig.from_dict(best["config"]) == cfg
    assert_same_model(final / "best.pt", full.checkpoints[best_i] / "last.pt")
    assert last["progress"]["epoch"] == 3
    assert summary["best"]["epoch"] == full.metrics[best_i]["epoch"]


def test_best_is_not_simply_the_last_epoch(recorder, monkeypatch, tiny_config):
    """With robust accuracy scripted to peak at epoch 2 of 3, best.pt must hold epoch 2."""
    script = iter([0.30, 0.50, 0.40])
    monkeypatch.setattr(finetune, "_validate", lambda *a, **k: ({"clean_acc": 0.9, "robust_acc": next(script)}, 0.1))
    cfg = tiny_config.replace(epochs=3, train_steps=1, attack="fgsm_rs", co_guard=False)
    rep = recorder()
    summary = finetune.run(cfg, rep)
    assert [m["best_robust_acc"] for m in rep.metrics] == [0.30, 0.50, 0.50]
    final = rep.checkpoints[-1]
    assert load_file(final / "best.pt")["metrics"]["epoch"] == 2
    assert load_file(final / "last.pt")["progress"]["epoch"] == 3
    assert_same_model(final / "best.pt", rep.checkpoints[1] / "last.pt")
    assert summary["best"] == {"epoch": 2, "clean_acc": 0.9, "robust_acc": 0.50}


# ---------------------------------------------------------------- (d) divergence

def _assert_diverged(rep: RecordingReporter, summary: dict) -> None:
    assert summary["status"] == "diverged"
    last = rep.metrics[-1]
    assert last["status"] == "diverged" and "loss became" in last["stop_reason"]
    assert last["robust_acc"] == 0.0 and last["clean_acc"] == 0.0
    assert rep.checkpoints[-1] is None  # a diverged model is never checkpointed
    assert CONTRACT_KEYS <= last.keys()


def test_huge_learning_rate_diverges_without_exception(recorder, tiny_config):
    cfg = tiny_config.replace(peak_lr=1e6, schedule="constant", epochs=3, val_steps=1, train_steps=1)
    rep = recorder()
    summary = finetune.run(cfg, rep)
    _assert_diverged(rep, summary)
    assert len(rep.metrics) == 1 and summary["epochs_run"] == 0  # stopped within the first epoch


def test_nan_model_diverges_without_exception(recorder, tiny_config, tmp_path):
    splits = load_splits("digits", None, 0.2, 0)
    model = build_model("small_cnn", splits.input_shape, splits.num_classes, splits.mean, splits.std)
    state = model.state_dict()
    state["net.fc.weight"].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    rep = recorder()
    summary = finetune.run(tiny_config.replace(pretrained=str(tmp_path / "nan.pt")), rep)
    _assert_diverged(rep, summary)
    assert len(rep.metrics) == 1
    assert rep.metrics[0]["grad_passes"] == tiny_config.batch_size  # stopped after the very first batch


# ---------------------------------------------------------------- (e) fixed features

@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_head_scope_trains_only_the_head(recorder, tiny_config, bn_mode, monkeypatch):
    # a head on random features stays at chance (9.7%), which the collapse check rightly calls diverged;
    # this test is about which parameters train, so it keeps the check out of the way
    monkeypatch.setattr(finetune, "collapse_reason", lambda *a, **k: None)
    cfg = tiny_config.replace(finetune_scope="head", epochs=1, train_steps=1, val_steps=1, attack_bn_mode=bn_mode)
    initial = {k: v.clone() for k, v in prepare(cfg).model.state_dict().items()}
    rep = recorder()
    finetune.run(cfg, rep)
    final = load_file(rep.checkpoints[-1] / "last.pt")["model"]
    head = {"net.fc.weight", "net.fc.bias"}
    for k, v in initial.items():
        if k in head:
            assert not torch.equal(final[k], v), f"head tensor {k} did not train"
        else:  # weights, BN affine parameters, BN running statistics and counters, normalization
            assert torch.equal(final[k], v), f"{k} changed although only the head trains"


# ---------------------------------------------------------------- (f) epsilon ramp

def test_train_eps_ramps_up_over_the_first_epochs(recorder, tiny_config):
    cfg = tiny_config.replace(epochs=3, eps_ramp=0.9, attack="fgsm_rs", co_guard=False, val_steps=1)
    rep = recorder()
    finetune.run(cfg, rep)
    eps = [m["train_eps"] for m in rep.metrics]
    assert 0 < eps[0] < eps[1] < cfg.train_eps_value
    assert eps[2] == cfg.train_eps_value  # the ramp ends at 90% of training
    # linear in progress: the reported epsilon is that of each epoch's last batch
    n_batches = math.ceil(DIGITS_N_TRAIN / cfg.batch_size)
    for e in (0, 1):
        t = ((e + 1) * n_batches - 1) / (cfg.epochs * n_batches)
        assert eps[e] == pytest.approx(cfg.train_eps_value * t / cfg.eps_ramp)


# ---------------------------------------------------------------- the starting point

def test_natural_pretraining_is_not_robust():
    """pretrained=auto trains naturally (and caches under ADVTUNE_CACHE, a tmp dir here): the
    result classifies well but PGD-20 at eps 0.2 breaks it. This is why fine-tuning is needed."""
    import os

    from advtune.trainables.checkpoints import load_starting_point
    from advtune.trainables.pretrain import cached_path, ensure_pretrained

    cfg = TrialConfig(device="cpu")  # digits, small_cnn, pretrained=auto, default pretrain settings
    path = ensure_pretrained(cfg)
    assert path == cached_path(cfg) and str(path).startswith(os.environ["ADVTUNE_CACHE"])
    assert path.stat().st_mtime == ensure_pretrained(cfg).stat().st_mtime  # cached: not trained twice
    prep = prepare(cfg, with_starting_point=False)
    report = load_starting_point(prep.model, path)
    assert not report.missing and not report.reinitialized
    res = evaluate_pgd(prep.model, prep.splits.val, "linf", 0.2, steps=20, restarts=1)
    assert res.clean_acc > 0.9
    assert res.robust_acc < 0.10


def test_trades_loss_trains_and_counts_its_passes(recorder):
    """TRADES (Zhang et al. 2019): a KL attack of k steps, then clean + adversarial forward/backward."""
    cfg = TrialConfig(**{**TINY, "epochs": 2, "loss": "trades", "attack": "pgd", "eps_ramp": 0.0,
                         "train_steps": 2, "val_steps": 2})
    rep = recorder()
    summary = finetune.run(cfg, rep)
    assert summary["status"] == "completed"
    assert rep.metrics[0]["grad_passes"] == (cfg.train_steps + 2) * DIGITS_N_TRAIN
    assert all(math.isfinite(m["train_loss"]) for m in rep.metrics)
    assert rep.metrics[-1]["clean_acc"] > 0.5  # it learns (from scratch, in two epochs)
