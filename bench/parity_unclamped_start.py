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
FGSM_RS = RANDOM_INIT = None  # advtune's own, kept by main() before fgsm_rs is replaced


def unclamped_init(x, eps, norm):
    """``attacks.random_init`` without its clamp into the image range (linf only, as the recipe): the same draw."""
    import torch

    assert norm == "linf", "the probe reproduces the linf recipe only"
    return torch.empty_like(x).uniform_(-1.0, 1.0) * eps


def fgsm_rs_unclamped(*args, **kwargs):
    """advtune's own ``fgsm_rs``, run with ``unclamped_init`` as its random start (the module global it calls);
    validation and evaluation attacks keep the clamped start."""
    from advtune.trainables import attacks

    attacks.random_init = unclamped_init
    try:
        return FGSM_RS(*args, **kwargs)
    finally:
        attacks.random_init = RANDOM_INIT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/parity-unclamped"))
    args = p.parse_args()
    from advtune.study.cli import main as advtune
    from advtune.trainables import attacks

    global FGSM_RS, RANDOM_INIT
    FGSM_RS, RANDOM_INIT = attacks.fgsm_rs, attacks.random_init
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
