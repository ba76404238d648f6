"""How many trials fANOVA needs before the report's parameter importance can be trusted.

A synthetic problem shaped like the ``sfd`` space and a study's robust accuracy: ``peak_lr``
(log scale) dominates with an optimum near 0.02, ``decay_rate`` matters less, ``warmup`` has no
effect, ``eps_ramp`` a tiny one, plus 1 point of Gaussian noise (the spread of robust accuracy
between seeds on digits). For each trial count n, ``--reps`` random studies of n trials are drawn;
Optuna's fANOVA evaluator (as ``advtune report`` runs it, seed 0) ranks the parameters. Prints,
per n, how often the dominant parameter came first (top1), how often the top two were right in
order (top2), and the median importance given to the parameter without effect:

    RATIO n=<n> top1=<x> top2=<x> irrelevant_median=<x>

    .venv/bin/python bench/importance_reliability.py           # n = 6 8 12 16 20 30, 25 draws each (~2 min)
    .venv/bin/python bench/importance_reliability.py --quick   # n = 8 20, 4 draws each (seconds)
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import warnings


def study_of(n: int, rep: int):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists = {"peak_lr": FloatDistribution(0.003, 0.1, log=True), "warmup": FloatDistribution(0.0, 0.3),
             "decay_rate": FloatDistribution(1.0, 6.0), "eps_ramp": CategoricalDistribution([0.0, 0.3])}
    rng = random.Random(rep)
    study = optuna.create_study(direction="maximize")
    for _ in range(n):
        p = {"peak_lr": 10 ** rng.uniform(math.log10(0.003), -1.0), "warmup": rng.uniform(0.0, 0.3),
             "decay_rate": rng.uniform(1.0, 6.0), "eps_ramp": rng.choice([0.0, 0.3])}
        x = math.log10(p["peak_lr"]) + 1.7
        value = 0.45 - 0.25 * x * x - 0.012 * (p["decay_rate"] - 3.5) ** 2 + 0.01 * p["eps_ramp"] + rng.gauss(0, 0.01)
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, value=value))
    return study


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    args = ap.parse_args()
    sizes = args.sizes or ([8, 20] if args.quick else [6, 8, 12, 16, 20, 30])
    reps = args.reps or (4 if args.quick else 25)
    warnings.filterwarnings("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for n in sizes:
        top1 = top2 = 0
        noise = []
        for rep in range(reps):
            imp = optuna.importance.get_param_importances(
                study_of(n, rep), evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            order = list(imp)
            top1 += order[0] == "peak_lr"
            top2 += order[:2] == ["peak_lr", "decay_rate"]
            noise.append(imp["warmup"])
        print(f"RATIO n={n} top1={top1 / reps:.2f} top2={top2 / reps:.2f} irrelevant_median={statistics.median(noise):.3f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
