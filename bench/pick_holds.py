"""Does a study's pick hold under AutoAttack on the test split?

Runs ``advtune run`` (the study as a user runs it, final strong evaluation included) for several
searcher seeds, takes the exported best trial, and evaluates its checkpoint with AutoAttack
(standard) on the test split with ``advtune eval``. Prints, per seed, the figure the search selected
on (PGD-10, validation), the study's strong figure (validation) and AutoAttack on the test split,
and the differences in points:

    .venv/bin/python bench/pick_holds.py                     # digits default study, seeds 0 1 2 (~6 min a seed)
    .venv/bin/python bench/pick_holds.py --fmnist            # Fashion-MNIST at linf 0.1 (Debian's dataset)
    .venv/bin/python bench/pick_holds.py --quick             # a 2-trial digits study, PGD-5 test (~1 min)

Prints ``RATIO seed=S selection=… strong=… test_aa=… strong_minus_test=… selection_minus_test=…`` per
seed (accuracies in %, differences in points) and a ``SUMMARY`` line with the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ADVTUNE = [sys.executable, "-m", "advtune.study.cli"]
FMNIST = ["--set", "dataset=fashion-mnist", "--set", "eval_eps=0.1", "--set", "train_size=2000",
          "--set", "val_size=1000", "--set", "model=small_cnn-16", "--max-epochs", "4"]
QUICK = ["--num-samples", "2", "--max-epochs", "2", "--set", "pretrain_epochs=3", "--set", "val_steps=3",
         "--set", "train_steps=2", "--final-attack", "pgd", "--final-images", "64"]


def _run(cmd: list[str], env: dict) -> str:
    out = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def one_seed(seed: int, extra: list[str], runs: Path, env: dict, test_args: list[str]) -> dict[str, float]:
    name = f"pick-{seed}"
    _run([*ADVTUNE, "run", "--seed", str(seed), "--name", name, "--storage-path", str(runs), *extra], env)
    study = runs / name
    best = yaml.safe_load((study / "export" / "best.yaml").read_text())["entries"][0]
    final = json.loads((study / "final_eval.json").read_text())["trials"][best["trial_id"]]
    out = runs / f"{name}-test.json"
    # an export names the study's own files relative to the export file (portable exports)
    checkpoint = best["checkpoint"] if "://" in best["checkpoint"] else str(study / "export" / best["checkpoint"])
    _run([*ADVTUNE, "eval", "--checkpoint", checkpoint, "--split", "test", "--no-sanity", "--quiet",
          "--json", str(out), *test_args], env)
    test = json.loads(out.read_text())["results"][-1]
    return {"selection": 100 * final["selection_robust_acc"], "strong": 100 * final["robust_acc"],
            "test": 100 * test["robust_acc"], "test_clean": 100 * test["clean_acc"], "test_n": test["n"],
            "strong_n": final["n"], "attack": test["attack"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fmnist", action="store_true", help="Fashion-MNIST at linf 0.1 instead of digits")
    p.add_argument("--test-images", type=int, default=None, help="test images for AutoAttack (default: all)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    extra = FMNIST if args.fmnist else []
    test_args = ["--attack", "autoattack"]
    if args.quick:
        extra, test_args, args.seeds = QUICK, ["--attack", "pgd", "--steps", "5", "--restarts", "1"], args.seeds[:1]
    if args.test_images:
        test_args += ["--limit", str(args.test_images)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="advtune-pick-") as tmp:
        for seed in args.seeds:
            r = one_seed(seed, extra, Path(tmp), env, test_args)
            rows.append(r)
            print(f"RATIO seed={seed} selection={r['selection']:.1f} strong={r['strong']:.1f} test_aa={r['test']:.1f} "
                  f"strong_minus_test={r['strong'] - r['test']:.1f} selection_minus_test={r['selection'] - r['test']:.1f} "
                  f"test_clean={r['test_clean']:.1f} test_n={r['test_n']} strong_n={r['strong_n']} "
                  f"test_attack={r['attack']}", flush=True)
    med = lambda k: statistics.median(r[k] - r["test"] for r in rows)  # noqa: E731  (median of the differences)
    print(f"SUMMARY seeds={len(rows)} strong_minus_test_median={med('strong'):.1f} "
          f"selection_minus_test_median={med('selection'):.1f} "
          f"within_3_points={sum(abs(r['strong'] - r['test']) <= 3 for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
