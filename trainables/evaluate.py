"""Clean and robust accuracy: PGD-k with restarts, and AutoAttack through the optional extra.

Evaluation draws its attack noise from its own seed inside ``torch.random.fork_rng``: every trial
is attacked with the same random starts, and the caller's RNG stream (training) is left exactly
where it was, so evaluating more or less often never changes what training does.
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from .attacks import pgd
from .loader import iterate, num_batches

__all__ = ["RobustResult", "evaluate_pgd", "evaluate_autoattack", "fixed_rng", "AutoAttackUnavailable"]


class AutoAttackUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class RobustResult:
    clean_acc: float
    robust_acc: float
    n: int
    attack: str
    top_class_share: float = float("nan")  # the most predicted class's share of clean predictions (collapse check)

    def as_dict(self) -> dict:
        return {"clean_acc": self.clean_acc, "robust_acc": self.robust_acc, "n": self.n, "attack": self.attack}


@contextlib.contextmanager
def fixed_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's RNG seeded to ``seed``, restoring the outer state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(seed)
        yield


def evaluate_pgd(model: nn.Module, split: Dataset, norm: str, eps: float, steps: int = 10, restarts: int = 1,
                 step: float | None = None, batch_size: int = 512, device: torch.device | str = "cpu",
                 seed: int = 0, amp_dtype: torch.dtype | None = None, progress: bool = False) -> RobustResult:
    """Clean accuracy and robust accuracy under PGD-``steps`` with ``restarts`` (per-example worst
    case over all iterates and restarts). Only clean-correct images are attacked; the rest count as
    not robust. Runs with the model in eval mode and restores its mode afterwards."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = robust = total = 0
    pred_counts: torch.Tensor | None = None
    batches = iterate(split, batch_size, device)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=num_batches(split, batch_size), desc=f"PGD-{steps}-{restarts}", unit="batch")
    try:
        with fixed_rng(seed, device):
            for x, y in batches:
                with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                     enabled=amp_dtype is not None):
                    logits = model(x)
                    pred = logits.argmax(1)
                    ok = pred == y
                counts = torch.bincount(pred, minlength=logits.shape[1])
                pred_counts = counts if pred_counts is None else pred_counts + counts
                total += y.numel()
                correct += int(ok.sum())
                if ok.any():
                    xa = pgd(model, x[ok], y[ok], eps, norm, steps=steps, step=step, restarts=restarts,
                             amp_dtype=amp_dtype, track_best=True)
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                         enabled=amp_dtype is not None):
                        robust += int((model(xa).argmax(1) == y[ok]).sum())
    finally:
        model.train(was_training)
    share = float(pred_counts.max()) / max(total, 1) if pred_counts is not None else float("nan")
    return RobustResult(correct / max(total, 1), robust / max(total, 1), total, f"pgd-{steps}-{restarts}", share)


def evaluate_autoattack(model: nn.Module, split: Dataset, norm: str, eps: float, batch_size: int = 256,
                        device: torch.device | str = "cpu", seed: int = 0, version: str = "standard",
                        limit: int | None = None, attacks: tuple[str, ...] | None = None,
                        progress: Callable[[str], None] | None = None) -> RobustResult:
    """AutoAttack (Croce & Hein 2020) ``version`` through the ``pyautoattack`` extra, in fp32.

    ``attacks`` (e.g. ``("apgd-ce", "apgd-t")``) runs that subset of the standard version, in that
    order, with the standard version's settings. ``progress``: called with one line as each attack
    starts, after each chunk of images it attacks and when it ends (standard AutoAttack runs for
    minutes to hours on a CPU: without it, nothing shows).

    Our adapter checks the returned images against the threat model itself (eps-ball, [0,1]) and
    computes the accuracy from them, rather than trusting the library's own count.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise AutoAttackUnavailable("AutoAttack needs the optional extra: pip install 'advtune[autoattack]'") from None

    logging.getLogger("pyautoattack").setLevel(logging.WARNING)
    device = torch.device(device)
    xs, ys = zip(*iterate(split, batch_size, torch.device("cpu")))
    x, y = torch.cat(xs), torch.cat(ys)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    was_training = model.training
    model.eval()
    try:
        with fixed_rng(seed, device), torch.autocast(device.type, enabled=False):
            adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                   version="custom" if attacks else version,
                                   attacks=list(attacks) if attacks else None, device=device, seed=seed)
            if attacks:  # 'custom' starts from other defaults (5 APGD restarts): take standard's settings
                adversary.apgd.n_restarts = adversary.apgd_targeted.n_restarts = adversary.fab.n_restarts = 1
                adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 9
                adversary.square.n_queries = 5000
            adversary.verbose = progress is not None  # its progress goes to its logger, which _Progress reads
            with _Progress(getattr(adversary, "logger", None), progress):
                out = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
            x_adv = (out[0] if isinstance(out, tuple) else out).detach()  # pyautoattack 0.2 returns (x_adv, y_adv)
            dist = (x_adv - x.to(device)).flatten(1)
            size = dist.abs().max(1).values if norm == "linf" else dist.norm(dim=1)
            if (size > eps * (1 + 1e-4) + 1e-6).any() or x_adv.min() < 0 or x_adv.max() > 1:
                raise RuntimeError("AutoAttack returned images outside the threat model; refusing its result")
            with torch.no_grad():
                clean = sum(int((model(xb).argmax(1) == yb).sum())
                            for xb, yb in zip(x.to(device).split(batch_size), y.to(device).split(batch_size)))
                rob = sum(int((model(xb).argmax(1) == yb).sum())
                          for xb, yb in zip(x_adv.split(batch_size), y.to(device).split(batch_size)))
    finally:
        model.train(was_training)
    n = y.numel()
    return RobustResult(clean / n, rob / n, n, "+".join(attacks) if attacks else f"autoattack-{version}")


class _Progress(logging.Handler):
    """While active, passes pyautoattack's progress records ("running apgd-ce", "apgd-ce - 1/3 - 12 out
    of 256 successfully perturbed", "robust accuracy after APGD-CE: ...") to ``emit_line``; drops its
    other verbose output (version notes, checks)."""

    KEEP = re.compile(r"^(running |no robust datapoints|[\w-]+ - \d+/\d+ - |robust accuracy after )")

    def __init__(self, logger: logging.Logger | None, emit_line: Callable[[str], None] | None) -> None:
        super().__init__(logging.DEBUG)
        self.target, self.emit_line, self.level_before = logger, emit_line, None

    def __enter__(self) -> "_Progress":
        if self.target is not None and self.emit_line is not None:
            self.level_before, self.propagate_before = self.target.level, self.target.propagate
            self.target.setLevel(logging.DEBUG)
            self.target.propagate = False  # nobody else's handlers get its debug lines
            self.target.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        if self.level_before is not None:
            self.target.removeHandler(self)
            self.target.setLevel(self.level_before)
            self.target.propagate = self.propagate_before

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.KEEP.match(msg):
            self.emit_line(f"AutoAttack: {msg.replace(chr(9), ' ').strip()}")
