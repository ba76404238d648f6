"""The optimizer of a trial: SGD (the CNN fine-tuning standard) or AdamW (what ViT fine-tuning needs).

Both take the parameter groups of :func:`trainables.setup.param_groups` unchanged: the head and
backbone groups with their ``lr_mult``, and ``weight_decay`` 0 on biases and normalization
parameters. The schedule sets every group's ``lr`` at each step, so the ``lr`` given here is only
the starting value.

Weight decay means what each optimizer means by it: for ``sgd`` the L2 term ``wd·w`` is added to
the gradient (and so goes through momentum); for ``adamw`` it is decoupled (Loshchilov & Hutter):
each step multiplies the weights by ``1 - lr·wd`` outside the adaptive update. The same number is
therefore not the same regularisation: AdamW recipes use ~0.05 where SGD ones use 5e-4.

Resuming needs the optimizer the checkpoint was written with (their state dicts differ: momentum
buffers vs first and second moments); a trial's config is checked against the checkpoint's before
anything is loaded, so a mismatch is refused with the differing key named.
"""
from __future__ import annotations

import torch

from .config import TrialConfig

__all__ = ["make_optimizer"]


def make_optimizer(groups: list[dict], cfg: TrialConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``groups`` (each with its own ``weight_decay``), LR ``cfg.peak_lr``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
