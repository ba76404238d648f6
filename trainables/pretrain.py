"""Natural pretraining: the starting point when none is given (``pretrained: auto``).

It is the same training loop with ``attack: none`` and a cosine schedule, so there is one code
path that trains. The result is cached under ``$ADVTUNE_CACHE`` (default ``~/.cache/advtune``)
keyed by every setting of the pretraining run that changes its weights (data, split, model, epochs, LR,
batch size, optimizer settings, AMP, ...), never by the trial's own seed or fine-tuning hyperparameters:
every trial of a study starts from the same weights.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

from .cache import cache_dir
from .config import TrialConfig

__all__ = ["pretrain_config", "cached_path", "ensure_pretrained", "pretrain_into"]

# Fields that cannot change naturally pretrained weights (the threat model and training attack only
# matter once there is an attack; evaluation and bookkeeping settings never touch the weights).
# Every other field of the pretraining config is in the cache key, so a field added to TrialConfig
# later is in it by default: reusing weights trained under other settings is the error to avoid.
_NOT_IN_KEY = frozenset({
    "norm", "eval_eps", "val_steps", "val_restarts", "val_step_size", "eval_batch_size", "train_eps", "train_steps",
    "train_step_size", "free_replays", "attack_bn_mode", "trades_beta", "co_guard", "co_gap", "co_drop", "device",
    "download", "trust_checkpoint", "pretrained", "betas", "nfgsm_noise", "nfgsm_step",
    # fixed to one value by pretrain_config, so they tell no two pretrainings apart (and keeping them
    # out keeps the caches made before these keys existed valid)
    "eps_ramp_start", "label_smoothing", "ema_decay"})  # betas: pretraining always uses SGD


def pretrain_config(cfg: TrialConfig) -> TrialConfig:
    """The natural-training config that makes ``cfg``'s starting point."""
    return cfg.replace(attack="none", pretrained="none", activation="relu", schedule="cosine", warmup=0.0,
                       min_lr=0.0, peak_lr=cfg.pretrain_lr, epochs=max(cfg.pretrain_epochs, 1), seed=0,
                       finetune_scope="full", backbone_lr_mult=1.0, eps_ramp=0.0, evals_per_epoch=1,
                       loss="ce", train_eps=None, optimizer="sgd",  # pretrain_lr is an SGD learning rate
                       eps_ramp_start=0.0, label_smoothing=0.0, ema_decay=0.0)  # fine-tuning settings, not pretraining's


def cached_path(cfg: TrialConfig) -> Path:
    key = {k: v for k, v in pretrain_config(cfg).to_dict().items() if k not in _NOT_IN_KEY}
    if cfg.normalization not in ("auto", "data"):
        # before issue 25's fix pretraining (pretrained: none) ignored an explicit normalization and
        # trained behind the data's statistics: such caches must not be taken for the new ones
        key["normalization_applied"] = True
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{cfg.dataset}-{cfg.model.replace(':', '_')}-{digest}"
    return cache_dir() / "pretrained" / name / "best.pt"


def ensure_pretrained(cfg: TrialConfig, progress: bool = False) -> Path:
    """Path of the naturally pretrained model for ``cfg``, training it once if not cached.
    Concurrent trials wait on a file lock instead of training it twice."""
    path = cached_path(cfg)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            from . import finetune
            from .reporting import LocalReporter

            pcfg = pretrain_config(cfg)
            reporter = LocalReporter(path.parent, echo=progress, keep_last=False)
            finetune.run(pcfg, reporter, progress=progress)
    return path


def pretrain_into(cfg: dict, target: str) -> str:
    """Make ``cfg``'s starting point (cached) and copy it to ``target`` atomically. Runs as a Ray
    task on a cluster node, so ``cfg`` is a plain dict."""
    from .checkpoints import copy_atomic

    source = ensure_pretrained(TrialConfig.from_dict(cfg))
    if "://" in str(target):  # a study in cloud storage: into the bucket (an object appears whole or not at all)
        from .cloud_adapter import upload

        upload(source, str(target))
    else:
        copy_atomic(source, target)
    return str(target)
