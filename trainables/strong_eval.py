"""The strong attack a study's pick must survive: one checkpoint in, clean and robust accuracy of the
first ``images`` validation images out, in fp32.

A study selects on its validation attack (PGD-10, one restart): cheap, and weak enough that a
trial can look robust because its gradients are masked. Before anything is exported, the study
attacks its top trials' best checkpoints again with one of these (``study/final_eval.py`` runs them
as Ray tasks; this module knows nothing of Ray or of studies):

``autoattack``  AutoAttack ``standard`` (Croce & Hein 2020): APGD-CE, APGD-T (9 target classes),
                FAB-T, Square (5000 queries). Needs the ``autoattack`` extra (pyautoattack).
``apgd``        AutoAttack's two gradient attacks with its standard settings, APGD-CE then APGD-T,
                without FAB-T and Square (the slow, gradient-free part). Needs the extra too.
``pgd``         PGD-50 with 5 random restarts, step 2.5·eps/50, per-example worst case over every
                iterate and restart (no extra needed).

Every trial is attacked on the same images (the first ``images`` of the fixed validation split) with
the same seed, so the figures compare across trials. Beside the strong figure it re-runs the
trial's own validation attack (PGD-``val_steps``) on those same images, so a gap between the two
is never an artefact of a different image set.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["ATTACKS", "APGD_ATTACKS", "NEEDS_AUTOATTACK", "PGD_STEPS", "PGD_RESTARTS", "autoattack_installed",
           "strong_eval", "load_trained", "first_images"]

PGD_STEPS, PGD_RESTARTS = 50, 5
APGD_ATTACKS = ("apgd-ce", "apgd-t")
ATTACKS = {
    "autoattack": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; pyautoattack)",
    "apgd": "APGD-CE + APGD-T (AutoAttack's gradient attacks, standard settings; pyautoattack)",
    "pgd": f"PGD-{PGD_STEPS} with {PGD_RESTARTS} restarts, step 2.5*eps/{PGD_STEPS}",
}
NEEDS_AUTOATTACK = ("autoattack", "apgd")


def autoattack_installed() -> bool:
    """True when the optional ``pyautoattack`` package imports here."""
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        return False
    return True


def load_trained(checkpoint: str | Path):
    """An advtune checkpoint as ``(config, prepared, model)``: the model in eval mode on the config's
    device, every tensor of the file loaded (anything less is an error, not a partial load)."""
    from .checkpoints import FORMAT, CheckpointError, load_file
    from .config import TrialConfig
    from .setup import model_from_checkpoint

    payload = load_file(checkpoint)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise CheckpointError(f"{checkpoint} is not an advtune checkpoint")
    cfg = TrialConfig.from_dict(payload["config"])
    prep, _ = model_from_checkpoint(str(checkpoint), cfg)  # as `advtune eval` loads it: every tensor, or an error
    return cfg, prep, prep.model.to(prep.device).eval()


def first_images(split: Dataset, images: int) -> Dataset:
    """The first ``images`` images of ``split`` (all of it when it has fewer)."""
    if images >= len(split):
        return split
    if isinstance(split, TensorDataset):  # in memory: a slice, batched by indexing like the split itself
        return TensorDataset(*(t[:images] for t in split.tensors))
    return Subset(split, range(images))


def strong_eval(checkpoint: str | Path, attack: str, images: int, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Attack ``checkpoint`` (an advtune best.pt) on the first ``images`` validation images.

    Returns a JSON-ready dict: ``attack`` (its full name), ``n`` (images), ``clean_acc`` and
    ``robust_acc`` of those images (fractions in [0, 1]), ``val_attack``/``val_attack_acc`` (the
    trial's own validation attack on the same images), ``norm``, ``eps`` (pixel units),
    ``seconds`` (wall time of the attacks), ``device``. ``progress``: called with a line per
    AutoAttack attack and chunk of images (``apgd``, ``autoattack``; PGD is one short pass).
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown strong attack {attack!r}; one of {', '.join(ATTACKS)}")
    # building the model seeds torch, batching a Subset draws a seed: leave the caller's stream alone
    with torch.random.fork_rng(devices=[]):
        return _strong_eval(checkpoint, attack, images, seed, progress)


def _strong_eval(checkpoint: str | Path, attack: str, images: int, seed: int,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from .evaluate import evaluate_autoattack, evaluate_pgd

    cfg, prep, model = load_trained(checkpoint)
    split = first_images(prep.splits.val, images)
    kw = dict(batch_size=cfg.eval_batch_size, device=prep.device, seed=seed)
    t0 = time.perf_counter()
    if attack == "pgd":
        res = evaluate_pgd(model, split, cfg.norm, cfg.eval_eps, steps=PGD_STEPS, restarts=PGD_RESTARTS, **kw)
    else:
        res = evaluate_autoattack(model, split, cfg.norm, cfg.eval_eps,
                                  attacks=APGD_ATTACKS if attack == "apgd" else None, progress=progress, **kw)
    seconds = time.perf_counter() - t0
    # fp32 here, whatever AMP the trial trained with: the figure it is compared to is the selection one
    val = evaluate_pgd(model, split, cfg.norm, cfg.eval_eps, steps=cfg.val_steps, restarts=cfg.val_restarts,
                       step=cfg.val_step_value, **kw)
    return {"attack": res.attack, "n": res.n, "clean_acc": res.clean_acc, "robust_acc": res.robust_acc,
            "val_attack": val.attack, "val_attack_acc": val.robust_acc, "norm": cfg.norm, "eps": cfg.eval_eps,
            "seconds": round(seconds, 2), "device": str(prep.device)}
