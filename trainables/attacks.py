"""Attacks as short pure functions ``(model, x, y, settings) -> x_adv``.

Inputs are images in [0, 1]; the model normalizes them itself (its first layer), so epsilon and
step sizes are in pixel units and are never divided by a normalization std. Every attack:

- keeps ``x_adv`` inside the eps-ball around ``x`` (``linf`` or ``l2``) and inside [0, 1] — except
  N-FGSM (:func:`nfgsm`), a *training* attack whose perturbation leaves the eps-ball by design
  (it stays in [0, 1]); no evaluation uses it;
- leaves the model's parameters, its ``.training`` flags and BatchNorm running statistics as they
  were (crafting runs in ``bn_mode`` "eval" by default — the choice of torchattacks and the
  robustness library — or "train", whose batch-statistics side effects are rolled back);
- never accumulates into parameters' ``.grad`` (gradients are taken w.r.t. the perturbation only).

Example::

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    >>> x_adv = pgd(model, x, y, eps=0.1, norm="linf", steps=5)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1)
    True
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attack_mode", "fgsm", "fgsm_rs", "nfgsm", "pgd", "project", "random_init", "step_direction", "trades_kl"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, reduction="sum")


def trades_kl(logits_adv: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """TRADES inner loss: KL(clean || adv), summed over the batch."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), clean_probs, reduction="sum")


@contextlib.contextmanager
def attack_mode(model: nn.Module, bn_mode: str = "eval") -> Iterator[None]:
    """Put ``model`` in the mode an attack crafts in, and restore it exactly afterwards: the
    per-module ``.training`` flags, ``requires_grad`` of parameters (switched off so backward
    computes input gradients only, a third cheaper), and BatchNorm buffers in "train" mode."""
    flags = [(m, m.training) for m in model.modules()]
    params = [p for p in model.parameters() if p.requires_grad]
    saved_bn: list[tuple[torch.Tensor, torch.Tensor]] = []
    if bn_mode == "eval":
        model.eval()
    elif bn_mode == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.train()
                saved_bn += [(b, b.detach().clone()) for b in m.buffers()]
    else:
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        with torch.no_grad():
            for buf, copy in saved_bn:
                buf.copy_(copy)
        for m, training in flags:
            m.training = training


def _norms(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball, then so that ``x + delta`` stays in [0, 1]
    (the second projection only shrinks the perturbation, so the first still holds)."""
    if norm == "linf":
        eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
        delta = torch.maximum(torch.minimum(delta, eps_t), -eps_t)
    else:
        delta = delta * torch.clamp(eps / _norms(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def random_init(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform random point of the eps-ball (clipped to the image range)."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-1.0, 1.0) * eps
    else:
        d = x[0].numel()
        direction = torch.randn_like(x)
        radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / d) * eps
        delta = direction / _norms(direction) * radius.view(-1, *([1] * (x.dim() - 1)))
    return project(delta, x, eps, norm)


def step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: sign for linf, normalized gradient for l2."""
    return grad.sign() if norm == "linf" else grad / _norms(grad)


# fp16 input gradients underflow to zero without loss scaling (measured on a naturally pretrained
# digits model: 23% of images got an all-zero gradient, and PGD-10 read 11% robust where fp32 reads
# 2%). The attack's step depends only on the gradient's direction, so the loss is scaled up before
# the backward pass; a scale that overflows is halved until the gradient is finite.
FP16_LOSS_SCALE = 2.0 ** 12
_MIN_LOSS_SCALE = 1.0


def _grad(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: torch.Tensor, loss_fn: LossFn,
          amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn`` w.r.t. ``delta`` (up to a positive factor under fp16, where the loss
    is scaled so that no gradient underflows) and the logits."""
    delta = delta.detach().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x + delta)
    loss = loss_fn(logits, target)
    if amp_dtype != torch.float16:
        (grad,) = torch.autograd.grad(loss, delta)
        return grad, logits.detach()
    scale = FP16_LOSS_SCALE
    while True:
        (grad,) = torch.autograd.grad(loss * scale, delta, retain_graph=scale > _MIN_LOSS_SCALE)
        if scale <= _MIN_LOSS_SCALE or bool(torch.isfinite(grad).all()):
            return grad, logits.detach()
        scale /= 16.0


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
         step: float | None = None, bn_mode: str = "eval", loss_fn: LossFn = _ce_sum,
         amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One step of size ``step`` (default ``eps``) from the clean image (Goodfellow et al.)."""
    x = x.detach()
    with attack_mode(model, bn_mode):
        grad, _ = _grad(model, x, torch.zeros_like(x), y, loss_fn, amp_dtype)
        delta = project(step_direction(grad, norm) * (eps if step is None else step), x, eps, norm)
    return (x + delta).detach()


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
            step: float | None = None, bn_mode: str = "eval", loss_fn: LossFn = _ce_sum,
            amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """FGSM from a uniform random start with step ``1.25·eps`` by default (Wong et al. 2020)."""
    x = x.detach()
    with attack_mode(model, bn_mode):
        delta = random_init(x, eps, norm)
        grad, _ = _grad(model, x, delta, y, loss_fn, amp_dtype)
        delta = project(delta + step_direction(grad, norm) * (1.25 * eps if step is None else step), x, eps, norm)
    return (x + delta).detach()


def nfgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
          noise: float = 2.0, step: float = 1.0, bn_mode: str = "eval", loss_fn: LossFn = _ce_sum,
          amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """N-FGSM (de Jorge et al. 2022): one FGSM step of ``step·eps`` from a noisy start uniform in
    ``[-noise·eps, noise·eps]`` (linf; l2: uniform in the ball of radius ``noise·eps``), with NO
    projection back to the eps-ball: the perturbation may reach ``(noise + step)·eps`` (3·eps with
    the paper's k = 2, alpha = eps), which is what keeps single-step training from catastrophic
    overfitting without a guard. ``noise`` and ``step`` are in units of ``eps``. The image stays in
    [0, 1] (clamped before the gradient and after the step, as in the authors' code)."""
    x = x.detach()
    with attack_mode(model, bn_mode):
        delta = random_init(x, noise * eps, norm)  # the random start of the (noise·eps)-ball, in [0, 1]
        grad, _ = _grad(model, x, delta, y, loss_fn, amp_dtype)
        delta = delta + step * eps * step_direction(grad, norm)
    return (x + delta).clamp(0.0, 1.0).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
        steps: int = 10, step: float | None = None, restarts: int = 1, random_start: bool = True,
        bn_mode: str = "eval", loss_fn: LossFn = _ce_sum, amp_dtype: torch.dtype | None = None,
        track_best: bool = False) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): ``steps`` steps of size ``step`` (default
    ``2.5·eps/steps``) from a random start, with ``restarts``.

    With ``track_best`` (evaluation), each example keeps the first iterate that misclassifies it,
    across all steps and restarts, else its highest-loss iterate; later restarts only attack the
    examples still classified correctly. Without it (training), the final iterate of the last
    restart is returned, the usual choice of adversarial training.
    """
    x = x.detach()
    alpha = 2.5 * eps / steps if step is None else step
    labels = y if y.dtype == torch.long else None  # TRADES passes probabilities; then no misclassification test
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with attack_mode(model, bn_mode):
        for _ in range(restarts):
            idx = (~fooled).nonzero().squeeze(1) if track_best else torch.arange(x.shape[0], device=x.device)
            if idx.numel() == 0:
                break
            xs, ts = x[idx], y[idx]
            delta = random_init(xs, eps, norm) if random_start else torch.zeros_like(xs)
            for i in range(steps + (1 if track_best else 0)):
                if i < steps:
                    grad, logits = _grad(model, xs, delta, ts, loss_fn, amp_dtype)
                else:  # one more forward to score the final iterate
                    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                                                         enabled=amp_dtype is not None):
                        logits = model(xs + delta)
                if track_best:
                    _keep_worst(idx, delta, logits, ts, labels is not None, best, best_loss, fooled)
                if i < steps:
                    delta = project(delta + alpha * step_direction(grad, norm), xs, eps, norm).detach()
            if not track_best:
                best[idx] = delta
    return (x + best).detach()


def _keep_worst(idx: torch.Tensor, delta: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                has_labels: bool, best: torch.Tensor, best_loss: torch.Tensor, fooled: torch.Tensor) -> None:
    """Per example (boolean masks, no Python loop): remember the iterate that misclassifies it,
    or failing that the one with the highest loss so far."""
    loss = F.cross_entropy(logits.float(), target, reduction="none") if has_labels else \
        F.kl_div(F.log_softmax(logits.float(), 1), target, reduction="none").sum(1)
    wrong = logits.argmax(1) != target if has_labels else torch.zeros_like(loss, dtype=torch.bool)
    already = fooled[idx]
    better = ~already & (wrong | (loss > best_loss[idx]))
    sel = idx[better]
    best[sel] = delta[better]
    best_loss[sel] = loss[better]
    fooled[idx[wrong & ~already]] = True
