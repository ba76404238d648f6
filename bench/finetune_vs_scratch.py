"""Adversarial fine-tuning of a naturally pretrained model vs PGD adversarial training from scratch.

Same model (``small_cnn-16``, the model of the search benchmark), same data, same threat model
(linf eps 0.1), same training attack (PGD-7, step 2.5·eps/7), same batch size (128):

- fine-tuning: ``pretrained: auto`` (natural pretraining, cosine schedule, ``pretrain_epochs``), then
  advtune's best ``sfd`` schedule: ``BEST_SFD``, the configuration advtune's default study (TPE + ASHA)
  found best in ``bench/search_efficiency.py``'s full run (seed 0) on the same data subset;
- scratch: random init, the standard piecewise schedule (LR 0.05, x0.1 at 50% and 75% of training),
  no epsilon ramp.

Compute is ``grad_passes`` (forward+backward passes over single images in training; validation and
evaluation not counted). Fine-tuning's compute INCLUDES its natural pretraining (1 pass per image
per epoch). Both are evaluated with PGD-50 with 10 restarts (step 2.5·eps/50) on a fixed random
subset of the test split; the compute ratio at equal robust accuracy is (scratch's compute when its
robust *validation* accuracy (PGD-10) first reaches fine-tuning's best) / (fine-tuning's total).

Data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) with advtune's own ``train_size`` (a fixed
class-stratified subset of ``--train`` images of the training split) and ``val_size`` (``--val``
images carved from the training split, ``split_seed`` 0); ``--test`` images of the test split, a
fixed random subset, for the final evaluation.

    .venv/bin/python bench/finetune_vs_scratch.py            # full: 2,000 train / 1,000 val / 500 test; pretrain 10 ep + FT 3 ep vs scratch 15 ep (~15 min)
    .venv/bin/python bench/finetune_vs_scratch.py --quick    # digits, tiny (~20 s)

Prints:
    RATIO finetune robust=<acc> clean=<acc> grad_passes=<n> pretrain_passes=<n>
    RATIO scratch robust=<acc> clean=<acc> grad_passes=<n>
    RATIO compute_scratch_over_finetune total=<x> at_equal_robust=<x|nan>
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# the best configuration of the `sfd` space that advtune's default study (TPE + ASHA) found in
# bench/search_efficiency.py's full run, seed 0 (Fashion-MNIST, 2,000 train / 1,000 val images, small_cnn-16)
BEST_SFD = {"peak_lr": 0.05905, "warmup": 0.2547, "decay_rate": 1.567, "train_eps": 0.1051, "eps_ramp": 0.0}


class Recorder:
    def __init__(self, label: str, echo: bool = True) -> None:
        self.label, self.echo, self.metrics = label, echo, []

    def report(self, metrics, checkpoint_dir):
        import shutil

        self.metrics.append(dict(metrics))
        if checkpoint_dir:
            best = Path(checkpoint_dir) / "best.pt"
            if best.exists():
                self.best_path = Path(tempfile.mkdtemp(prefix="advtune-fvs-")) / "best.pt"
                shutil.move(str(best), self.best_path)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if self.echo:
            m = metrics
            print(f"  {self.label:<9} epoch {m['epoch']:>3g}  lr {m['lr']:.4f}  clean {100 * m['clean_acc']:5.1f}%  "
                  f"robust {100 * m['robust_acc']:5.1f}%  grad passes {m['grad_passes']:>10,}  {m['epoch_seconds']:.0f}s",
                  flush=True)


def evaluate(cfg, path: Path, steps: int, restarts: int, n_test: int) -> tuple[float, float, int]:
    import torch
    from torch.utils.data import TensorDataset

    from advtune.trainables.checkpoints import load_starting_point
    from advtune.trainables.evaluate import evaluate_pgd
    from advtune.trainables.setup import prepare

    prep = prepare(cfg.replace(pretrained="none"), with_starting_point=False)
    load_starting_point(prep.model, path, min_fraction=0.999)
    model = prep.model.eval()
    test = prep.splits.test
    if n_test < len(test):  # a fixed random subset of the test split, the same for both arms
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(2))[:n_test].sort().values
        test = TensorDataset(*(t[idx] for t in test.tensors))
    res = evaluate_pgd(model, test, cfg.norm, cfg.eval_eps, steps=steps, restarts=restarts,
                       step=2.5 * cfg.eval_eps / steps, batch_size=cfg.eval_batch_size, device="cpu", seed=0)
    return res.clean_acc, res.robust_acc, res.n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="digits, few epochs, PGD-10-2 evaluation")
    ap.add_argument("--train", type=int, default=2000, help="training images (Fashion-MNIST subset, train_size)")
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--scratch-epochs", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="advtune-fvs-"))
    os.environ.setdefault("ADVTUNE_CACHE", str(tmp / "cache"))

    from advtune.study.records import read_jsonl
    from advtune.trainables import finetune
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.pretrain import cached_path, ensure_pretrained

    if args.quick:
        common = dict(dataset="digits", val_size=0.2, eval_eps=0.1, val_steps=3)
        pre_epochs, ft_epochs, sc_epochs, ev_steps, ev_restarts, n_test = 3, 2, 4, 10, 2, 200
    else:
        common = dict(dataset="fashion-mnist", val_size=args.val, train_size=args.train, eval_eps=0.1, val_steps=10)
        pre_epochs, ft_epochs, sc_epochs, ev_steps, ev_restarts, n_test = (args.pretrain_epochs, args.ft_epochs,
                                                                           args.scratch_epochs, 50, 10, args.test)
    base = TrialConfig().replace(model="small_cnn-16", attack="pgd", train_steps=7, pretrain_epochs=pre_epochs, **common)
    ft_cfg = base.replace(pretrained="auto", schedule="sfd", epochs=ft_epochs, **BEST_SFD)
    sc_cfg = base.replace(pretrained="none", schedule="piecewise", milestones=(0.5, 0.75), gamma=0.1, peak_lr=0.05,
                          eps_ramp=0.0, train_eps=None, epochs=sc_epochs)
    print(f"data {base.dataset} ({base.train_size or 'all'} train images, val {base.val_size}), {base.model}, linf eps {base.eval_eps}, "
          f"PGD-{base.train_steps} training; fine-tuning schedule {BEST_SFD}", flush=True)

    t0 = time.time()
    ensure_pretrained(ft_cfg)
    pre_metrics = read_jsonl(cached_path(ft_cfg).parent / "metrics.jsonl")
    pre_passes = int(pre_metrics[-1]["grad_passes"])
    t_pre = time.time() - t0
    print(f"  pretrain  {pre_epochs} epochs natural: clean val {100 * pre_metrics[-1]['clean_acc']:.1f}%, "
          f"grad passes {pre_passes:,}, {t_pre:.0f}s", flush=True)
    ft = Recorder("finetune")
    t0 = time.time()
    finetune.run(ft_cfg, ft)
    t_ft = time.time() - t0
    sc = Recorder("scratch")
    t0 = time.time()
    finetune.run(sc_cfg, sc)
    t_sc = time.time() - t0

    ft_clean, ft_rob, n = evaluate(ft_cfg, ft.best_path, ev_steps, ev_restarts, n_test)
    sc_clean, sc_rob, _ = evaluate(sc_cfg, sc.best_path, ev_steps, ev_restarts, n_test)
    ft_total = pre_passes + ft.metrics[-1]["grad_passes"]
    sc_total = sc.metrics[-1]["grad_passes"]
    ft_val = max(m["robust_acc"] for m in ft.metrics)
    reach = next((m["grad_passes"] for m in sc.metrics if m["robust_acc"] >= ft_val - 1e-9), math.nan)
    sc_val = max(m["robust_acc"] for m in sc.metrics)

    print(f"\ntest subset: {n} images, PGD-{ev_steps}-{ev_restarts} (step 2.5*eps/{ev_steps}), best-val checkpoint of each")
    print(f"{'run':<44} {'clean':>7} {'robust':>7} {'best val rob':>12} {'grad passes':>12} {'wall s':>7}")
    print(f"{'fine-tuning (pretrain ' + str(pre_epochs) + ' ep + sfd ' + str(ft_epochs) + ' ep)':<44} {100 * ft_clean:6.1f}% "
          f"{100 * ft_rob:6.1f}% {100 * ft_val:11.1f}% {ft_total:>12,} {t_pre + t_ft:7.0f}")
    print(f"{'  of which natural pretraining':<44} {'':>7} {'':>7} {'':>12} {pre_passes:>12,} {t_pre:7.0f}")
    print(f"{'scratch (piecewise, ' + str(sc_epochs) + ' ep)':<44} {100 * sc_clean:6.1f}% {100 * sc_rob:6.1f}% "
          f"{100 * sc_val:11.1f}% {sc_total:>12,} {t_sc:7.0f}")
    if math.isnan(reach):
        print(f"scratch never reached fine-tuning's best robust val acc {100 * ft_val:.1f}% within {sc_epochs} epochs "
              f"(lower bound on the ratio: {sc_total / ft_total:.2f}x)")
    else:
        print(f"scratch first reached fine-tuning's best robust val acc {100 * ft_val:.1f}% after {reach:,} grad passes")
    print(f"\nRATIO finetune robust={ft_rob:.4f} clean={ft_clean:.4f} grad_passes={ft_total} pretrain_passes={pre_passes}")
    print(f"RATIO scratch robust={sc_rob:.4f} clean={sc_clean:.4f} grad_passes={sc_total}")
    print(f"RATIO compute_scratch_over_finetune total={sc_total / ft_total:.3f} at_equal_robust={reach / ft_total:.3f}"
          f" lower_bound={sc_total / ft_total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
