"""How close do the final evaluation's cheaper attacks land to full AutoAttack, and what do they cost?

For every trial's best checkpoint of the given studies, on the same first N validation images, in
fp32: the study's validation attack (PGD-val_steps, what selected the trial), PGD-50 with 5 restarts
(``--final-attack pgd``), APGD-CE alone, APGD-CE + APGD-T (``apgd``, the default where pyautoattack is installed)
and AutoAttack standard (``autoattack``). Same seed for every attack and checkpoint.

    .venv/bin/python bench/strong_attacks.py STUDY_DIR [STUDY_DIR ...] [--images 128] [--top 5] [--threads 1]

``--top N`` takes each study's N best trials by the selection figure (the ones a final evaluation
attacks); the ``seconds`` are wall time on one thread (on a shared machine, compare them only as ratios).

Prints one line per checkpoint and attack:
    ROW <trial> <attack> robust=<%> clean=<%> n=<images> seconds=<s>
then, per attack, the mean and largest difference to AutoAttack standard in points:
    DIFF <attack> mean=<pts> max=<pts> over=<checkpoints>
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advtune.trainables.evaluate import evaluate_autoattack, evaluate_pgd  # noqa: E402
from advtune.trainables.strong_eval import APGD_ATTACKS, PGD_RESTARTS, PGD_STEPS, first_images, load_trained  # noqa: E402


def attacks(cfg):
    """(label, function of (model, split, kw) -> RobustResult), the reference (AutoAttack) last."""
    eps, norm = cfg.eval_eps, cfg.norm
    return [
        (f"pgd-{cfg.val_steps} (selection)",
         lambda m, s, kw: evaluate_pgd(m, s, norm, eps, steps=cfg.val_steps, restarts=cfg.val_restarts,
                                       step=cfg.val_step_value, **kw)),
        (f"pgd-{PGD_STEPS}-{PGD_RESTARTS}",
         lambda m, s, kw: evaluate_pgd(m, s, norm, eps, steps=PGD_STEPS, restarts=PGD_RESTARTS, **kw)),
        ("apgd-ce", lambda m, s, kw: evaluate_autoattack(m, s, norm, eps, attacks=("apgd-ce",), **kw)),
        ("apgd-ce+apgd-t", lambda m, s, kw: evaluate_autoattack(m, s, norm, eps, attacks=APGD_ATTACKS, **kw)),
        ("autoattack-standard", lambda m, s, kw: evaluate_autoattack(m, s, norm, eps, **kw)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=None, help="each study's N best trials by the selection figure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    robust: dict[str, dict[str, float]] = {}
    for study in map(Path, args.studies):
        from advtune.study.records import StudyRecords

        recs = sorted((r for r in StudyRecords(study, tensorboard=False).load()
                       if r.best and (r.directory / "best.pt").exists()), key=lambda r: -r.best["robust_acc"])
        for ckpt in [r.directory / "best.pt" for r in recs[:args.top]]:
            trial = f"{study.name}/{ckpt.parent.name}"
            cfg, prep, model = load_trained(ckpt)
            split = first_images(prep.splits.val, args.images)
            kw = dict(batch_size=cfg.eval_batch_size, device=prep.device, seed=0)
            for label, run in attacks(cfg):
                t0 = time.perf_counter()
                res = run(model, split, kw)
                secs = time.perf_counter() - t0
                robust.setdefault(label, {})[trial] = res.robust_acc
                print(f"ROW {trial} {label.replace(' ', '')} robust={100 * res.robust_acc:.2f} "
                      f"clean={100 * res.clean_acc:.2f} n={res.n} seconds={secs:.1f}", flush=True)
    ref = robust["autoattack-standard"]
    for label, per in robust.items():
        diffs = [100 * (per[t] - ref[t]) for t in ref]
        print(f"DIFF {label.replace(' ', '')} mean={statistics.mean(diffs):+.2f} max={max(diffs):+.2f} "
              f"min={min(diffs):+.2f} over={len(diffs)}")


if __name__ == "__main__":
    main()
