"""Collapse detection: a trial whose model has become a (near-)constant classifier ends as ``diverged``.

Catastrophic failure does not always show as a non-finite loss. FGSM-RS with a cyclic schedule
peaking at 0.2 (issue 20) ended with clean = robust = 10.1% on 10 classes, a constant classifier,
reported as ``completed``: its loss stayed finite (ln 10). A validation says the model has
collapsed when, once past the first epochs,

- its clean validation accuracy is at chance: at most ``1/K`` plus two standard errors of a
  chance-level accuracy on ``n`` images (``sqrt(p(1-p)/n)``, ``p = 1/K``), and never less than
  two points above chance (``CHANCE_MARGIN``) — digits' 288 images, 10 classes: 13.5%; or
- it predicts one class for ~all images: at least ``ONE_CLASS_SHARE`` (95%) of the clean
  predictions are one class (only with 3 or more classes, where a correct model on data with a
  95% majority class is unusual; a two-class problem is judged by accuracy alone).

"After the first epochs": a model trained from scratch, or under a long epsilon ramp, can sit at
chance for a while before it learns (PGD training on MNIST at eps 0.3 is known to plateau near
10% for its first epoch or so), so the check starts once ``CHECK_FROM`` (25%) of training and at
least one full epoch are done; the final validation is always checked. A trial ends only when two
judged validations in a row (or the final one) say so: a model at chance under a high learning rate
mid-training can recover as the schedule decays (small_cnn on digits, FGSM-RS, cyclic at 0.2: 15.3%
clean at epoch 2 of 4, 37% at the end). A validation split of
fewer than ``MIN_IMAGES`` (100) images cannot tell chance from a weak model (its margin would pass
half the range), so it is not judged.
"""
from __future__ import annotations

import math

__all__ = ["CONSECUTIVE", "stop_for_collapse", "CHANCE_MARGIN", "ONE_CLASS_SHARE", "CHECK_FROM", "MIN_IMAGES", "chance_threshold", "collapse_reason", "should_check"]

CHANCE_MARGIN = 0.02  # accuracy fraction above 1/K that still counts as chance, at least
ONE_CLASS_SHARE = 0.95  # share of clean predictions in one class that counts as a constant classifier
MIN_IMAGES = 100  # smaller validation splits are not judged
CONSECUTIVE = 2  # judged validations in a row at collapse that end a trial (the final one alone does)
CHECK_FROM = 0.25  # fraction of training after which (and after >= 1 epoch) collapse is checked


def chance_threshold(num_classes: int, n: int) -> float:
    """Highest clean accuracy (fraction) still read as chance on ``n`` images of ``num_classes``."""
    p = 1.0 / num_classes
    return p + max(CHANCE_MARGIN, 2.0 * math.sqrt(p * (1.0 - p) / max(n, 1)))


def should_check(epochs_done: float, total_epochs: int, final: bool) -> bool:
    """Whether a validation after ``epochs_done`` (fractional) of ``total_epochs`` is judged."""
    return final or (epochs_done >= 1.0 and epochs_done >= CHECK_FROM * total_epochs)


def collapse_reason(clean_acc: float, top_class_share: float, num_classes: int, n: int) -> str | None:
    """Why the model counts as collapsed, or None. ``clean_acc`` and ``top_class_share`` are
    fractions of the ``n`` validation images (the latter: the most predicted class's share)."""
    if num_classes < 2 or n < MIN_IMAGES:
        return None
    limit = chance_threshold(num_classes, n)
    if clean_acc <= limit:
        return (f"collapsed to chance: clean validation accuracy {100 * clean_acc:.1f}% is within chance level "
                f"(1/{num_classes} = {100 / num_classes:.1f}%, limit {100 * limit:.1f}% on {n} images)")
    if num_classes >= 3 and math.isfinite(top_class_share) and top_class_share >= ONE_CLASS_SHARE:
        return (f"collapsed to one class: {100 * top_class_share:.1f}% of the {n} validation images are predicted "
                f"as the same class (clean accuracy {100 * clean_acc:.1f}%)")
    return None


def stop_for_collapse(streak: int, collapsed: bool, final: bool) -> tuple[int, bool]:
    """``(new streak, stop?)`` after a judged validation: the streak counts judged validations in a
    row at collapse; the trial stops at ``CONSECUTIVE`` of them, or at a collapsed final one."""
    streak = streak + 1 if collapsed else 0
    return streak, collapsed and (final or streak >= CONSECUTIVE)
