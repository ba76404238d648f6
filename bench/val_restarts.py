"""Does a validation attack with more restarts select better, and what does it cost? (issue 23)

The default validation attack (PGD-10, ``val_restarts=1``) reads 10-16 points above the final strong attack on
every trial of the default digits study: restarts find what one random start misses. This runs the same study
(same searcher seed) with ``val_restarts`` 1, 2 and 3 and prints, for each, how far the selection figure sits
above the strong one on the evaluated trials (the paired gap: median, min, max), how well the two figures rank
the evaluated trials alike (Kendall's tau; whether the top trial is the same) and the cost per epoch (mean
seconds and grad passes of a trial's epoch, validation included):

    .venv/bin/python bench/val_restarts.py                # the default digits study, seeds 0 (~8 min a run, 3 runs)
    .venv/bin/python bench/val_restarts.py --seeds 0 1 2  # more seeds
    .venv/bin/python bench/val_restarts.py --fmnist       # Fashion-MNIST at linf 0.1 (Debian's dataset)
    .venv/bin/python bench/val_restarts.py --quick        # a 3-trial digits study per setting (~1-2 min each)

Prints ``RATIO seed=S val_restarts=R gap_median=… gap_lo=… gap_hi=… tau=… same_top=0|1 epoch_s=…
epoch_s_over_r1=… strong_best=…`` (gaps in points, accuracies in %), then a ``SUMMARY`` line per setting
with the medians over seeds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pick_holds import ADVTUNE, FMNIST, ROOT  # noqa: E402  the same study commands as the pick-holds benchmark
QUICK = ["--num-samples", "3", "--max-epochs", "2", "--set", "pretrain_epochs=3", "--set", "val_steps=3",
         "--set", "train_steps=2", "--final-attack", "pgd", "--final-images", "64"]


def one_run(seed: int, restarts: int, extra: list[str], runs: Path, env: dict) -> dict[str, float]:
    from advtune.study.final_eval import load_final
    from advtune.study.records import StudyRecords
    from advtune.study.strong_flags import agreement

    name = f"vr-{seed}-{restarts}"
    cmd = [*ADVTUNE, "run", "--seed", str(seed), "--name", name, "--storage-path", str(runs),
           "--set", f"val_restarts={restarts}", *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    study = runs / name
    final = load_final(study)
    gaps = [100 * e["gap"] for e in final["trials"].values()]
    a = agreement(final)
    epochs = [m for r in StudyRecords(study, tensorboard=False).load() for m in r.metrics]
    return {"gap_median": statistics.median(gaps), "gap_lo": min(gaps), "gap_hi": max(gaps),
            "tau": a["tau"] if a["tau"] is not None else float("nan"), "same_top": int(a["top_selection"] == a["top_strong"]),
            "epoch_s": statistics.mean(m["epoch_seconds"] for m in epochs),
            "strong_best": 100 * max(e["robust_acc"] for e in final["trials"].values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--restarts", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--fmnist", action="store_true")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    extra = QUICK if args.quick else (FMNIST if args.fmnist else [])
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    results: dict[int, list[dict[str, float]]] = {r: [] for r in args.restarts}
    with tempfile.TemporaryDirectory(prefix="advtune-val-restarts-") as tmp:
        env["ADVTUNE_CACHE"] = env.get("ADVTUNE_CACHE", str(Path(tmp) / "cache"))
        for seed in args.seeds:
            base = None
            for restarts in args.restarts:
                res = one_run(seed, restarts, extra, Path(tmp), env)
                base = base or res["epoch_s"]
                res["epoch_s_over_r1"] = res["epoch_s"] / base
                results[restarts].append(res)
                print(f"RATIO seed={seed} val_restarts={restarts} " + " ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()), flush=True)
    for restarts, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("gap_median", "tau", "epoch_s_over_r1", "strong_best")}
        print(f"SUMMARY val_restarts={restarts} seeds={len(rs)} " + " ".join(f"{k}={v:.3f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
