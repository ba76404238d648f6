"""Parity probe (issue 25): is the FGSM-RS random start clamped into [0, 1] what keeps ``advtune train`` below
the plain script of the same recipe?

advtune's ``fgsm_rs`` clamps its uniform random start into the image range before the FGSM gradient (the start
is an image); ``bench/reference_fgsm_rs.py`` does not (Wong et al.'s MNIST code: the start may leave [0, 1],
and only the step is projected back). This runs ``advtune train --config bench/configs/fgsm_rs_reference.yaml
--set seed=S`` in this process with ``advtune.trainables.attacks.fgsm_rs`` replaced by the unclamped variant
(nothing else changes), then ``advtune eval`` PGD-50-10 on the first 1,000 test images of its best-validation
and last checkpoints, as ``bench/parity_fgsm_rs.py`` does. A probe, not an option of advtune: see
docs/benchmarks.md §10 for what it measured.

    .venv/bin/python bench/parity_unclamped_start.py --seed 0 --out runs/parity-unclamped   # ~5 min a seed

Prints ``RATIO seed=S checkpoint=best|last clean=… pgd50=…`` (fractions).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fgsm_rs_unclamped(model, x, y, eps, norm="linf", step=None, bn_mode="eval", loss_fn=None, amp_dtype=None):
    """advtune's fgsm_rs with the random start left unclamped (linf only, as the recipe)."""
    import torch

    from advtune.trainables import attacks as A

    assert norm == "linf", "the probe reproduces the linf recipe only"
    x = x.detach()
    with A.attack_mode(model, bn_mode):
        delta = torch.empty_like(x).uniform_(-1.0, 1.0) * eps  # no clamp into the image range
        grad, _ = A._grad(model, x, delta, y, loss_fn or A._ce_sum, amp_dtype)
        delta = A.project(delta + A.step_direction(grad, norm) * (1.25 * eps if step is None else step), x, eps, norm)
    return (x + delta).detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/parity-unclamped"))
    args = p.parse_args()
    from advtune.study.cli import main as advtune
    from advtune.trainables import attacks

    attacks.fgsm_rs = fgsm_rs_unclamped  # finetune calls attacks.fgsm_rs through the module
    out = args.out.resolve() / f"seed-{args.seed}"
    if not (out / "last.pt").exists():
        assert advtune(["train", "--config", str(ROOT / "bench" / "configs" / "fgsm_rs_reference.yaml"),
                        "--set", f"seed={args.seed}", "--out", str(out), "--quiet"]) == 0
    for name in ("best", "last"):
        target = out / f"eval-{name}-1000.json"
        if not target.exists():
            assert advtune(["eval", "--checkpoint", str(out / f"{name}.pt"), "--attack", "pgd", "--limit", "1000",
                            "--no-sanity", "--quiet", "--json", str(target)]) == 0
        r = json.loads(target.read_text())["results"][-1]
        print(f"RATIO seed={args.seed} checkpoint={name} clean={r['clean_acc']:.3f} pgd50={r['robust_acc']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
