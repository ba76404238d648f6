"""Weight averaging: an exponential moving average (EMA) of the model, config key ``ema_decay``.

Averaged weights are the largest single gain of recent fast adversarial-training comparisons
(Rebuffi et al. 2021; issue 25). After every optimizer step the averaged model moves toward the
live one::

    d_n  = min(ema_decay, (1 + n) / (10 + n))        n = updates done before this one
    ema ← d_n · ema + (1 − d_n) · live              (torch.lerp: exact when both are equal)

The warm-up of ``d_n`` (TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` form) keeps a
short run's average from being dominated by the starting weights: with 72 steps (digits, 8
epochs) and decay 0.99, a plain EMA would still hold 48% of the initial model.

**BatchNorm.** Every floating-point tensor of the model is averaged, parameters *and buffers*
(BatchNorm's running mean and variance), as Rebuffi et al. do ("we average all parameters and
buffers"): the averaged model's statistics then belong to the same mixture of recent models as
its weights. Copying the live model's running statistics instead would pair averaged weights with
the statistics of the last weights, which is what the averaged model is not. Integer buffers
(``num_batches_tracked``) are copied. Constant buffers (the normalize layer) stay exact: lerp of
equal tensors is the tensor itself.

The averaged model is validated, guarded (catastrophic overfitting) and saved as ``best.pt``; the
live model keeps training. ``last.pt`` holds both, and the update count, so resume is exact.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """EMA of ``model``'s parameters and floating-point buffers (decay per optimizer step)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (warm-up: ``min(decay, (1+n)/(10+n))``)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # Every optimizer step: one fused lerp over the float tensors, no state_dict built (its names, prefixes
        # and hooks per step cost more than the arithmetic on a deep model). Parameters then buffers, in module
        # order: the same order in the live model and its deep copy.
        d = self.current_decay()
        avg = [*self.model.parameters(), *self.model.buffers()]
        live = [*model.parameters(), *model.buffers()]
        floats = [(a, s.detach().to(a.dtype)) for a, s in zip(avg, live) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [s for _, s in floats], 1.0 - d)
        for a, s in zip(avg, live):
            if not a.is_floating_point():
                a.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if float(state["decay"]) != self.decay:  # the average so far was made with another decay
            from .atomic_files import CheckpointError

            raise CheckpointError(f"the checkpoint's weight average used ema_decay {state['decay']}, this run "
                                  f"{self.decay}: resume with the same ema_decay (or start the trial anew)")
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])
