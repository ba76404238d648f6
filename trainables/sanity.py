"""Sanity checks of a robustness evaluation (Carlini et al. 2019, "On Evaluating Adversarial
Robustness", arXiv 1902.06705, section 5): signs that an attack is too weak or the model masks
its gradients, so that its robust accuracy must not be trusted.

1. **monotone**: accuracy under PGD does not rise with epsilon. It is measured at 0, ¼, ½, 1 and
   2 × eps (0 = clean) with a cheap PGD; a rise of more than 1 point is a FAIL.
2. **chance**: at a large epsilon accuracy falls to chance or below. The large epsilon is one
   whose ball around every image holds the uniform gray image (all pixels 0.5): linf 0.5, or l2
   0.5·sqrt(pixels·channels). A perfect attack can then send every image to that one gray image,
   which the model gives one label, so true accuracy is at most the largest class share among
   the images: that share is the bar (chance for balanced data).
3. **converged**: the evaluation's PGD (``steps``, ``restarts``) and one with twice the steps and
   twice the restarts differ by less than 1 point. Otherwise the reported figure still moves
   with more effort: the attack had not converged.

Every check runs on the same images (the first ``max_images`` of those evaluated), in fp32,
with the model in eval mode and its own fixed attack seed. Cost, in forward+backward passes per
image: 4 × ``sweep_steps`` + 2 × ``sweep_steps`` + 5 × ``steps`` × ``restarts`` (the last term
dominates: about 5 times the evaluation's PGD on those images).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .attacks import pgd
from .evaluate import fixed_rng

__all__ = ["SanityCheck", "robust_flags", "large_eps", "run_checks", "converged_check", "SWEEP", "TOLERANCE"]

SWEEP = (0.0, 0.25, 0.5, 1.0, 2.0)  # multiples of eps for the monotonicity check
TOLERANCE = 0.01  # 1 point of accuracy


@dataclass(frozen=True)
class SanityCheck:
    name: str
    passed: bool
    line: str
    numbers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "line": self.line, **self.numbers}


def robust_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int,
                 restarts: int, seed: int = 0, batch_size: int = 512, step: float | None = None) -> torch.Tensor:
    """Per image: still classified correctly under PGD-``steps``-``restarts`` at ``eps`` (pixel
    units; 0 = clean accuracy). Batches and RNG as :func:`trainables.evaluate.evaluate_pgd`, so on
    the same images and seed both give the same figure."""
    device = x.device
    was_training = model.training
    model.eval()
    out = torch.zeros(y.shape[0], dtype=torch.bool, device=device)
    try:
        with fixed_rng(seed, device), torch.autocast(device.type, enabled=False):
            for start in range(0, y.shape[0], batch_size):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                with torch.no_grad():
                    ok = model(xb).argmax(1) == yb
                if eps > 0 and ok.any():
                    xa = pgd(model, xb[ok], yb[ok], eps, norm, steps=steps, step=step, restarts=restarts,
                             track_best=True)
                    with torch.no_grad():
                        ok[ok.clone()] = model(xa).argmax(1) == yb[ok]
                out[start:start + batch_size] = ok
    finally:
        model.train(was_training)
    return out


def large_eps(norm: str, shape: tuple[int, ...]) -> float:
    """The smallest epsilon whose ball around any image in [0,1] holds the all-0.5 gray image."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(math.prod(shape))


def _acc(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else 0.0


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int,
               restarts: int, seed: int = 0, batch_size: int = 512, sweep_steps: int = 10) -> list[SanityCheck]:
    """The three checks on images ``x`` (N×C×H×W in [0,1], on the model's device) and labels ``y``.
    ``steps``/``restarts`` are the evaluation's PGD; ``sweep_steps`` the cheap PGD of checks 1-2."""
    n = y.shape[0]
    common = dict(seed=seed, batch_size=batch_size)
    out = []

    # 1. monotone in eps
    epsilons = [min(f * eps, 1.0) if norm == "linf" else f * eps for f in SWEEP]
    accs = [_acc(robust_flags(model, x, y, norm, e, sweep_steps, 1, **common)) for e in epsilons]
    rises = [(epsilons[i], epsilons[i + 1], accs[i + 1] - accs[i]) for i in range(len(accs) - 1)
             if accs[i + 1] - accs[i] > TOLERANCE]
    curve = " → ".join(f"{100 * a:.1f}" for a in accs)
    line = (f"accuracy {curve}% at eps {', '.join(f'{e:.4g}' for e in epsilons)} (PGD-{sweep_steps}, {n} images)")
    if rises:
        lo, hi, d = rises[0]
        line += f": rises {100 * d:.1f} points from eps {lo:.4g} to {hi:.4g}"
    out.append(SanityCheck("monotone", not rises, line, {"eps": epsilons, "acc": accs, "images": n}))

    # 2. chance at a large eps
    big = large_eps(norm, tuple(x.shape[1:]))
    big_steps = 2 * sweep_steps
    acc_big = _acc(robust_flags(model, x, y, norm, big, big_steps, 1, **common))
    chance = float(torch.bincount(y).max()) / n if n else 0.0
    passed = acc_big <= chance + 1e-9
    out.append(SanityCheck(
        "chance", passed, f"accuracy {100 * acc_big:.1f}% at {norm} eps {big:.4g} (PGD-{big_steps}, {n} images) "
        f"{'≤' if passed else '>'} chance {100 * chance:.1f}% (the largest class share)",
        {"eps": big, "acc": acc_big, "chance": chance, "images": n}))

    # 3. converged: twice the steps and restarts move it by less than a point
    base = int(robust_flags(model, x, y, norm, eps, steps, restarts, **common).sum())
    strong = int(robust_flags(model, x, y, norm, eps, 2 * steps, 2 * restarts, **common).sum())
    out.append(converged_check(base, strong, n, steps, restarts))
    return out


def _points(v: float, bar: float) -> str:
    """``v`` (points) with the fewest decimals (1 to 3) that keep it on its side of ``bar`` when printed:
    0.99 is never shown as "1.0 < 1"."""
    for d in (1, 2, 3):
        shown = round(v, d)
        if (shown < bar) == (v < bar):
            return f"{shown:.{d}f}"
    return f"{v:.3f}"


def converged_check(base_correct: int, stronger_correct: int, n: int, steps: int, restarts: int) -> SanityCheck:
    """Check 3 from the images still correct under PGD-``steps``-``restarts`` and under twice both: a
    difference of less than 1 point (``TOLERANCE``) passes. Decided on image counts, so float noise
    cannot put exactly 1 point on either side, and printed so that the line agrees with the verdict."""
    diff = abs(base_correct - stronger_correct)
    passed = diff < TOLERANCE * n - 1e-9
    base, strong = base_correct / max(n, 1), stronger_correct / max(n, 1)
    delta = 100 * diff / max(n, 1)
    return SanityCheck(
        "converged", passed, f"PGD-{steps}-{restarts} {100 * base:.1f}% vs PGD-{2 * steps}-{2 * restarts} "
        f"{100 * strong:.1f}% ({_points(delta, 100 * TOLERANCE)} points {'<' if passed else '≥'} 1: {diff} of {n} "
        "images)", {"acc": base, "acc_stronger": strong, "images": n})
