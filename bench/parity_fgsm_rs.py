"""Parity: the standard from-scratch FGSM-RS recipe as a plain script vs ``advtune train`` configured to it (issue 25).

For each seed: ``bench/reference_fgsm_rs.py --seed S`` (no advtune imports; it evaluates its last epoch with
PGD-50-10 on the first 1,000 test images) and ``advtune train --config bench/configs/fgsm_rs_reference.yaml
--set seed=S``, whose best-validation and last checkpoints ``advtune eval`` attacks with the same PGD-50-10 on
the same 1,000 images. Full Fashion-MNIST (Debian's ``dataset-fashion-mnist``), linf 0.1.

    .venv/bin/python bench/parity_fgsm_rs.py --seeds 0 1 2 --out runs/parity   # ~5 min a seed and arm on 2 cores
    .venv/bin/python bench/parity_fgsm_rs.py --quick                          # 1 seed, 1 epoch, 2,000 images

Prints ``RATIO seed=S script_clean=… script_pgd50=… advtune_best_clean=… advtune_best_pgd50=… advtune_last_pgd50=…``
(accuracies in %) and ``SUMMARY`` with the means and the mean difference advtune (best) - script.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pick_holds import ADVTUNE, ROOT  # noqa: E402  the same CLI invocation as the other benchmarks
from pick_holds import _run as _run_env  # noqa: E402


def _run(cmd: list[str]) -> str:
    return _run_env(cmd, dict(os.environ))


def _eval(ckpt: Path, n: int, target: Path) -> dict:
    if not target.exists():
        _run([*ADVTUNE, "eval", "--checkpoint", str(ckpt), "--attack", "pgd", "--limit", str(n), "--no-sanity",
              "--quiet", "--json", str(target)])
    return json.loads(target.read_text())["results"][-1]


def one_seed(seed: int, out: Path, quick: bool) -> dict[str, float]:
    n = 100 if quick else 1000
    script_file = out / f"script-{seed}.txt"
    if not script_file.exists():
        script_file.write_text(_run([sys.executable, str(ROOT / "bench" / "reference_fgsm_rs.py"), "--seed", str(seed),
                                     *(["--quick"] if quick else [])]))
    m = re.search(r"^RESULT .*clean=(\S+) pgd50_10=(\S+)", script_file.read_text(), flags=re.MULTILINE)
    run = out / f"advtune-{seed}"
    if not (run / "last.pt").exists():
        quick_sets = ["--set", "epochs=1", "--set", "train_size=2000"] if quick else []
        _run([*ADVTUNE, "train", "--config", str(ROOT / "bench" / "configs" / "fgsm_rs_reference.yaml"),
              "--set", f"seed={seed}", *quick_sets, "--out", str(run), "--quiet"])
    best = _eval(run / "best.pt", n, run / f"eval-best-{n}.json")
    last = _eval(run / "last.pt", n, run / f"eval-last-{n}.json")
    return {"script_clean": 100 * float(m.group(1)), "script_pgd50": 100 * float(m.group(2)),
            "advtune_best_clean": 100 * best["clean_acc"], "advtune_best_pgd50": 100 * best["robust_acc"],
            "advtune_last_pgd50": 100 * last["robust_acc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/parity"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        r = one_seed(seed, args.out.resolve(), args.quick)
        rows.append(r)
        print(f"RATIO seed={seed} " + " ".join(f"{k}={v:.2f}" for k, v in r.items()), flush=True)
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    print(f"SUMMARY seeds={len(rows)} " + " ".join(f"{k}_mean={v:.2f}" for k, v in mean.items())
          + f" best_minus_script={mean['advtune_best_pgd50'] - mean['script_pgd50']:.2f}"
          + f" last_minus_script={mean['advtune_last_pgd50'] - mean['script_pgd50']:.2f}")


if __name__ == "__main__":
    main()
