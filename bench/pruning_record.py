"""Record full, unpruned learning curves and final strong figures of a fixed sample of a space's
configurations: the data the pruning-fidelity replay (``bench/pruning_fidelity.py``) judges pruning
rules on, with no re-training per rule.

For one space (a preset) and one problem (digits as ``advtune run`` has it, or the Fashion-MNIST
problem of the search benchmark), it takes the space's own starting points and then Optuna
``RandomSampler`` draws (seeded) up to ``--configs`` configurations, trains each one for the study's
whole ``--max-epochs`` from the same naturally pretrained starting point (``finetune.run``, the code
path every trial runs, validation at every epoch: PGD-``val_steps``, the selection figure), and then
attacks its ``best.pt`` with the study's final strong attack (APGD-CE + APGD-T, AutoAttack's
gradient attacks with standard settings) on the first ``--final-images`` validation images, as the
study's final evaluation would. Two configurations train at once, one torch thread each.

    .venv/bin/python bench/pruning_record.py --problem digits --space sfd --configs 24 \\
        --out docs/data/pruning-digits-sfd.json                     # ~25 min on 2 cores
    .venv/bin/python bench/pruning_record.py --problem fmnist --space sfd --configs 16 \\
        --out docs/data/pruning-fmnist-sfd.json                     # FGSM-RS, ~40 min on 2 cores
    .venv/bin/python bench/pruning_record.py --quick --out /tmp/p.json   # 3 configs, 2 epochs (~1 min)
    .venv/bin/python bench/pruning_record.py --probes 1,2,3 --out docs/data/pruning-digits-sfd.json
    .venv/bin/python bench/pruning_record.py --rung-figures 1.5,1.75,2,2.25 --out docs/data/pruning-digits-sfd.json

``--probes B1,B2,...`` adds to an existing recording, for every recorded configuration, the learning curve of
the same configuration trained for only ``B`` epochs (its schedule and epsilon ramp compressed to ``B`` epochs,
as every schedule is a function of training progress): the figure a budget-compressed probe decides on
(``ProbeRule`` in ``pruning_fidelity.py``, replayed only: not a rule advtune offers). Stored as ``runs[i]["probes"]["B"]``; no strong attack is run for them.

``--rung-figures G1,G2,...`` adds, for every recorded configuration, the validation figure measured exactly ``G``
epochs at full strength into its training (``full_strength_point·epochs + G``: a validation placed mid-epoch
at the first batch end at or after it, not the first epoch end after it): what ASHA judges a study's trial on
(``finetune.run``'s ``validate_at``; ``--aligned`` in ``pruning_fidelity.py``). The configuration is trained
again, validated at every epoch end as recorded and at those points, and stopped after the last; evaluation draws its noise
from its own seed and an epoch's batches do not depend on where it is split, so the trajectory is the
recorded one (each ``rung_figures`` entry says whether the epoch ends before it reproduced the recorded
figures: ``reproduced``). Stored as ``runs[i]["rung_figures"]["G"]``.

The JSON is written after every configuration, and a run with the same ``--out`` skips the
configurations already recorded (an interrupted recording keeps what it measured).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBLEMS = {
    # the default study's problem: `advtune run` with no arguments (TrialConfig's defaults)
    "digits": {},
    # the search benchmark's Fashion-MNIST problem (bench/search_efficiency.py FULL_SETS), FGSM-RS, with 500
    # validation images instead of 1,000 (a configuration took 20 min of a loaded 2-core machine with 1,000)
    "fmnist": {"dataset": "fashion-mnist", "train_size": 2000, "val_size": 500, "model": "small_cnn-16",
               "eval_eps": 0.1, "attack": "fgsm_rs", "val_steps": 5, "pretrain_epochs": 10},
}
QUICK = {"pretrain_epochs": 2, "val_steps": 2, "train_steps": 2}


def sample_configs(space_name: str, base, n: int, seed: int) -> list[dict]:
    """The space's starting points, then random draws: the searched values of ``n`` configurations."""
    import optuna

    from advtune.search_spaces import define_by_run, load_space

    space = load_space(space_name, base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for point in space.starting_points:
        study.enqueue_trial(dict(point))
    fn = define_by_run(space, base)
    out = []
    for _ in range(n):
        trial = study.ask()
        fn(trial)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


class _Stop(Exception):
    """Raised by a :class:`_Collect` reporter once its run has reported what was asked."""


class _Collect:
    """A reporter that keeps every validation's metrics and (with ``out``) the newest best.pt; with ``stop_at``
    it ends the run after the first validation at or after that epoch (:class:`_Stop`)."""

    def __init__(self, out: Path | None, stop_at: float | None = None) -> None:
        self.out, self.stop_at, self.history = out, stop_at, []

    def report(self, metrics, checkpoint_dir) -> None:
        import shutil

        self.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        if checkpoint_dir is not None:
            best = Path(checkpoint_dir) / "best.pt"
            if self.out is not None and best.exists():
                os.replace(best, self.out / "best.pt")
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if self.stop_at is not None and metrics["epoch"] >= self.stop_at - 1e-6:
            raise _Stop


def _recording(out: Path) -> tuple[dict, object]:
    """A recording's data and its base config, with the recording's own starting point (pretrained once)."""
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.pretrain import ensure_pretrained

    data = json.loads(out.read_text())
    base = TrialConfig.from_dict(data["base"])
    return data, base.replace(pretrained=str(ensure_pretrained(base)))


def run_one(cfg_dict: dict, final_images: int, final_attack: str | None) -> dict:
    """Train one configuration to the end, then attack its best checkpoint (in a worker process); with no
    ``final_attack`` (a probe) only train."""
    import torch

    torch.set_num_threads(1)
    from advtune.trainables import finetune
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.strong_eval import strong_eval

    cfg = TrialConfig.from_dict(cfg_dict)
    with tempfile.TemporaryDirectory() as d:
        rep = _Collect(Path(d))
        t0 = time.perf_counter()
        summary = finetune.run(cfg, rep)
        train_s = time.perf_counter() - t0
        best = Path(d) / "best.pt"
        strong = strong_eval(best, final_attack, final_images) if final_attack and best.exists() else None
    return {"history": rep.history, "status": summary["status"], "stop_reason": summary["stop_reason"],
            "train_seconds": round(train_s, 1), "strong": strong}


def run_rungs(cfg_dict: dict, at: list[float]) -> dict:
    """Train one configuration with extra validations at the (fractional) epochs ``at`` (``finetune.run``'s
    ``validate_at``) and stop after the last (in a worker process). Returns every validation's metrics."""
    import torch

    torch.set_num_threads(1)
    from advtune.trainables import finetune
    from advtune.trainables.config import TrialConfig

    rep = _Collect(None, stop_at=max(at))
    try:
        finetune.run(TrialConfig.from_dict(cfg_dict), rep, validate_at=at)
    except _Stop:
        pass
    return {"rows": rep.history}


def record_rung_figures(out: Path, offsets: list[float], workers: int) -> int:
    """Add figures measured exactly ``offsets`` epochs at full strength into training (``runs[i]["rung_figures"]``)
    to the recording ``out``."""
    import torch

    torch.set_num_threads(1)
    from advtune.study.pruning import full_strength_point

    data, base = _recording(out)
    epochs = data["max_epochs"]
    todo = [r for r in data["runs"] if not all(f"{g:g}" in r.get("rung_figures", {}) for g in offsets)]
    print(f"{len(todo)} configurations to measure at {offsets} epochs at full strength in {out}", flush=True)
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {}
        for r in todo:
            start = full_strength_point({**data["base"], **r["params"]}) * epochs
            at = [start + g for g in offsets if start + g < epochs]
            if at:
                futs[pool.submit(run_rungs, base.replace(**r["params"]).to_dict(), at)] = (r, start)
        for fut in cf.as_completed(futs):
            r, start = futs[fut]
            rows = fut.result()["rows"]
            ends = [row for row in rows if abs(row["epoch"] - round(row["epoch"])) < 1e-9]
            reproduced = all(abs(row["robust_acc"] - r["history"][int(round(row["epoch"])) - 1]["robust_acc"]) < 1e-9
                             for row in ends)
            figs = r.setdefault("rung_figures", {})
            for g in offsets:
                hit = next((row for row in rows if row["epoch"] >= start + g - 1e-9), None)
                if hit is not None:
                    figs[f"{g:g}"] = {"epoch": hit["epoch"], "robust_acc": hit["robust_acc"],
                                      "clean_acc": hit["clean_acc"], "grad_passes": hit["grad_passes"],
                                      "reproduced": reproduced}
            out.write_text(json.dumps(data, indent=1))
            print(f"  config {r['index']}: " + ", ".join(f"{g}: {100 * v['robust_acc']:.1f}% at epoch {v['epoch']:.2f}"
                                                     for g, v in figs.items())
                  + f"; epoch ends reproduced: {reproduced} at {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def record_probes(out: Path, budgets: list[int], workers: int) -> int:
    """Add budget-compressed probe curves (``runs[i]["probes"][B]``) to the recording ``out``."""
    import torch

    torch.set_num_threads(1)
    data, base = _recording(out)
    todo = [(r, b) for b in budgets for r in data["runs"] if str(b) not in r.get("probes", {})]
    print(f"{len(todo)} probes to record in {out}", flush=True)
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_one, base.replace(**r["params"], epochs=b).to_dict(), 0, None): (r, b)
                for r, b in todo}
        for fut in cf.as_completed(futs):
            r, b = futs[fut]
            r.setdefault("probes", {})[str(b)] = fut.result()["history"]
            out.write_text(json.dumps(data, indent=1))
            print(f"  probe {b} epochs of config {r['index']}: PGD {100 * r['probes'][str(b)][-1]['robust_acc']:.1f}% "
                  f"at {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), default="digits")
    ap.add_argument("--space", default="sfd")
    ap.add_argument("--configs", type=int, default=24)
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random draws (not of training)")
    ap.add_argument("--final-attack", default="apgd")
    ap.add_argument("--final-images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="3 configurations, 2 epochs, PGD-2: checks the script")
    ap.add_argument("--probes", help="comma-separated budgets in epochs: add budget-compressed probe curves of every "
                    "configuration already recorded in --out")
    ap.add_argument("--rung-figures", help="comma-separated offsets in epochs at full strength: add the validation "
                    "figure measured exactly there (mid-epoch) for every configuration already recorded in --out")
    args = ap.parse_args(argv)
    if args.rung_figures:
        return record_rung_figures(args.out, [float(g) for g in args.rung_figures.split(",")], args.workers)
    if args.probes:
        return record_probes(args.out, [int(b) for b in args.probes.split(",")], args.workers)
    import torch

    # one thread, like the workers: on a loaded 2-core machine two OpenMP threads spin-wait on each other
    # (natural pretraining of 2,000 images took 200 s an epoch that way)
    torch.set_num_threads(1)
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.pretrain import ensure_pretrained

    sets = dict(PROBLEMS[args.problem])
    if args.quick:
        sets.update(QUICK)
        args.configs, args.max_epochs, args.final_attack, args.final_images = 3, 2, "pgd", 64
    base = TrialConfig().replace(**sets, epochs=args.max_epochs)
    from advtune.search_spaces import load_space

    base = base.replace(**load_space(args.space, base).base)
    pre = ensure_pretrained(base)  # once, before any trial: every configuration starts from it
    base = base.replace(pretrained=str(pre))
    configs = sample_configs(args.space, base, args.configs, args.seed)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data.update(problem=args.problem, space=args.space, max_epochs=args.max_epochs, sample_seed=args.seed,
                final_attack=args.final_attack, final_images=args.final_images, sets=sets,
                eval_eps=base.eval_eps, base=base.replace(pretrained="auto").to_dict())
    runs = data.setdefault("runs", [])
    done = {json.dumps(r["params"], sort_keys=True) for r in runs}
    todo = [p for p in configs if json.dumps(p, sort_keys=True) not in done]
    print(f"{len(configs)} configurations of {args.space} on {args.problem}: {len(todo)} to record", flush=True)
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_one, base.replace(**p).to_dict(), args.final_images, args.final_attack): p for p in todo}
        for fut in cf.as_completed(futs):
            p = futs[fut]
            res = fut.result()
            runs.append({"index": configs.index(p), "params": p, **res})
            runs.sort(key=lambda r: r["index"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(data, indent=1))
            s = res["strong"] or {}
            print(f"  [{len(runs)}/{len(configs)}] {p}: best PGD {100 * res['history'][-1]['best_robust_acc']:.1f}%, "
                  f"strong {100 * s.get('robust_acc', float('nan')):.1f}% ({res['status']}, {res['train_seconds']:.0f} s "
                  f"training, {s.get('seconds', 0):.0f} s attack) at {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
