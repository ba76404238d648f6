"""A model that masks its gradients, for the final evaluation's flag (tests/test_strong_flags.py).

``saturated`` is advtune's small_cnn (same tensors, so any small_cnn checkpoint loads into it) with its
logits multiplied by 1e4: the softmax saturates, so on every image classified with a margin above ~0.01
the cross-entropy and its input gradient are exactly 0 in fp32. PGD on cross-entropy (the validation
attack) then only has its random start and reads near clean accuracy; APGD-T's DLR loss is a ratio of
logit differences, unchanged by the scale, and finds the adversarial images. A defence that looks
robust only because its gradients vanish: what the flag is for.
"""
from __future__ import annotations

import torch

from advtune.trainables.models import SmallCNN

SCALE = 1e4


class SaturatedCNN(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * SCALE


def saturated(num_classes: int, input_shape: tuple[int, int, int]) -> SaturatedCNN:
    return SaturatedCNN(input_shape[0], num_classes)
