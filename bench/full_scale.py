"""Issue 25's two benchmarks at full Fashion-MNIST scale (60,000 training images, linf 0.1, the 2-conv net).

Every arm is a real ``advtune train`` (or ``advtune run``) of the 2-conv MNIST-style net (``mnist_cnn``) on
full Fashion-MNIST (1,000 of the 60,000 training images carved out for validation, ``split_seed`` 0),
evaluated on the test split with ``advtune eval``: PGD-50 with 10 restarts on the first ``--pgd-images``
(1,000) test images and AutoAttack standard on the first ``--aa-images`` (500), the best-validation
checkpoint (``best.pt``) of each.

Arms (``bench/configs/``):

- ``baseline``   the standard from-scratch FGSM-RS recipe (``fgsm_rs_reference.yaml``: Adam, cyclic LR
                 0 -> 5e-3 at 40% -> 0, step 1.25 eps, batch 100, 10 epochs)
- ``scratch_pgd7`` the same recipe with PGD-7 training (step 2.5 eps / 7): adversarial training from scratch
                 with the fine-tuning arm's attack
- ``ft_default`` advtune's default fine-tuning config with this net and data (natural pretraining
                 ``pretrained: auto``, then sfd PGD-7, eps ramp 0.3, 8 epochs)
- ``ft_fgsm_rs`` / ``ft_nfgsm`` the default fine-tuning config with a single-step attack and 5 epochs
                 (half the baseline's training passes)
- ``ft_recipe``  the baseline recipe (Adam, cyclic, FGSM-RS) fine-tuning the naturally pretrained net for 5 epochs
- ``ft_recipe_pgd7`` the baseline recipe with PGD-7, fine-tuning the naturally pretrained net for 4 epochs
- ``study``      an advtune study (``full_scale_space.yaml``, TPE + ASHA: 8 trials of at most 10 epochs of a 2-pass
                 attack from scratch, so their training passes sum to at most 8x the baseline's), then its exported
                 best config rerun once (``study_rerun``)

Benchmark 1 (fine-tuning vs scratch, the paper's measure): compute at equal robust accuracy, from the
validation curves (PGD-10, evaluated twice an epoch): the robust level both arms reach, X = the lower of
their best validation figures; each arm's passes until its curve first reaches X; fine-tuning's count
includes its natural pretraining (reported apart too, as a published checkpoint's cost would be).
Pairs: ft_default vs scratch_pgd7 (PGD-7 both), ft_fgsm_rs vs baseline (FGSM-RS both).

Benchmark 2 (advtune vs the standard recipe): each arm's test figures and training passes against the
baseline's.

    .venv/bin/python bench/full_scale.py                 # all arms (~1.5 h on 2 cores); resumable: --out keeps each arm
    .venv/bin/python bench/full_scale.py --only baseline # some arms (e.g. in parallel processes, one thread each)
    .venv/bin/python bench/full_scale.py --quick         # digits, tiny (baseline, ft_recipe and a 2-trial study; ~2 min)

Prints ``RATIO arm=<a> clean=… pgd50=… aa=… train_passes=… pretrain_passes=… passes_over_baseline=…
wall_s=…``, ``RATIO pair=<ft>/<scratch> level=… ft_passes=… scratch_passes=… at_equal_robust=…
at_equal_robust_no_pretrain=…`` and ``RATIO study budget_passes=… budget_over_baseline=…``; writes
``results.json`` in --out (docs/data/full-scale-fmnist.json is a copy of a full run) and, with matplotlib,
``curves.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bench" / "configs"
ADVTUNE = [sys.executable, "-m", "advtune.study.cli"]
DATA = {"dataset": "fashion-mnist", "val_size": 1000, "model": "mnist_cnn", "eval_eps": 0.1, "evals_per_epoch": 2}
QUICK_DATA = {"dataset": "digits", "val_size": 0.2, "model": "small_cnn", "eval_eps": 0.1, "evals_per_epoch": 2,
              "val_steps": 3, "pretrain_epochs": 2}
ARMS = ("baseline", "scratch_pgd7", "ft_default", "ft_fgsm_rs", "ft_nfgsm", "ft_recipe", "ft_recipe_pgd7", "study")
QUICK_ARMS = ("baseline", "ft_recipe", "study")
PAIRS = (("ft_default", "scratch_pgd7"), ("ft_fgsm_rs", "baseline"), ("ft_nfgsm", "baseline"), ("ft_recipe", "baseline"),
         ("ft_recipe_pgd7", "scratch_pgd7"))
BUDGET_X = 8


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); see {log}")


def arm_config(arm: str, quick: bool) -> dict:
    data = QUICK_DATA if quick else DATA
    ref = yaml.safe_load((CONFIGS / "fgsm_rs_reference.yaml").read_text())
    ref.update(data)
    default_ft = dict(data)  # everything else: advtune's embedded default config
    cfg = {
        "baseline": ref,
        "scratch_pgd7": {**ref, "attack": "pgd", "train_steps": 7, "train_step_size": None},
        "ft_default": default_ft,
        "ft_fgsm_rs": {**default_ft, "attack": "fgsm_rs", "epochs": 5},
        "ft_nfgsm": {**default_ft, "attack": "nfgsm", "epochs": 5},
        "ft_recipe": {**ref, "pretrained": "auto", "epochs": 5},
        "ft_recipe_pgd7": {**ref, "pretrained": "auto", "epochs": 4, "attack": "pgd", "train_steps": 7, "train_step_size": None},
    }[arm]
    if quick:
        cfg = {**cfg, "epochs": 2, "train_steps": 2}  # train_steps: PGD arms only; the others ignore it
    return cfg


def metrics(run: Path) -> list[dict]:
    from advtune.study.records import read_jsonl

    return read_jsonl(run / "metrics.jsonl")


def train(arm: str, cfg: dict, out: Path, seed: int) -> None:
    run = out / arm
    if (run / "done").exists():
        return
    run.mkdir(parents=True, exist_ok=True)
    (run / "input.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.time()
    _run([*ADVTUNE, "train", "--config", str(run / "input.yaml"), "--set", f"seed={seed}", "--out", str(run),
          "--quiet"], out / f"{arm}.log")
    (run / "done").write_text(json.dumps({"wall_s": time.time() - t0}))


STUDY_NAME = "full-scale"


def study(out: Path, seed: int, quick: bool) -> None:
    """The study arm: a search whose trials' passes sum to at most BUDGET_X x the baseline's, then its best rerun."""
    runs = out / "studies"
    data = QUICK_DATA if quick else DATA
    sets = [a for k, v in data.items() for a in ("--set", f"{k}={v}")]
    samples, max_epochs = (2, 1) if quick else (8, 10)
    if not (out / "study.done").exists():
        t0 = time.time()
        _run([*ADVTUNE, "run", "--space", str(CONFIGS / "full_scale_space.yaml"), *sets, "--num-samples", str(samples),
              "--max-epochs", str(max_epochs), "--seed", str(seed), "--name", STUDY_NAME, "--storage-path", str(runs),
              "--final-attack", "pgd" if quick else "apgd", "--final-images", "64" if quick else "500"],
             out / "study.log")
        (out / "study.done").write_text(json.dumps({"wall_s": time.time() - t0}))
    export = sorted((runs / STUDY_NAME / "export").glob("01-*.yaml"))[0]
    rerun = out / "study_rerun"
    if not (rerun / "done").exists():
        t0 = time.time()
        _run([*ADVTUNE, "train", "--config", str(export), "--out", str(rerun), "--quiet"], out / "study_rerun.log")
        (rerun / "done").write_text(json.dumps({"wall_s": time.time() - t0}))


def study_summary(out: Path, baseline_passes: int) -> dict:
    """What the finished study spent and picked (read only: reporting never starts a run)."""
    from advtune.study.records import StudyRecords

    study_dir = out / "studies" / STUDY_NAME
    records = StudyRecords(study_dir, tensorboard=False).load()
    spent = sum(r.grad_passes for r in records)
    best = yaml.safe_load((study_dir / "export" / "best.yaml").read_text())["entries"][0]
    return {"budget_passes": spent, "budget_over_baseline": spent / baseline_passes, "trials": len(records),
            "wall_s": json.loads((out / "study.done").read_text())["wall_s"], "best_trial": best["trial_id"],
            "best_params": {k: v for k, v in best.items() if k not in ("trial_id", "checkpoint")}}


def evaluate(run: Path, attack: str, images: int, log: Path) -> dict:
    target = run / f"eval-{attack}-{images}.json"
    if not target.exists():
        args = ["--attack", "pgd"] if attack == "pgd" else ["--attack", "autoattack"]
        _run([*ADVTUNE, "eval", "--checkpoint", str(run / "best.pt"), *args, "--limit", str(images), "--no-sanity",
              "--quiet", "--json", str(target)], log)
    return json.loads(target.read_text())["results"][-1]


def pretrain_passes(run: Path) -> int:
    """Natural pretraining passes of a fine-tuning run (the cached starting point's own metrics)."""
    from advtune.trainables.config import TrialConfig
    from advtune.trainables.pretrain import cached_path

    cfg = TrialConfig.load(run / "config.yaml")
    if cfg.pretrained != "auto":
        return 0
    pre = metrics(cached_path(cfg).parent)
    return int(pre[-1]["grad_passes"])


def first_reach(curve: list[dict], level: float, offset: int) -> int:
    return next(offset + int(m["grad_passes"]) for m in curve if m["robust_acc"] >= level - 1e-9)


def plot(results: dict, out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm, r in results["arms"].items():
        xs = [(r["pretrain_passes"] + m["grad_passes"]) / 1e6 for m in r["curve"]]
        ax.plot(xs, [100 * m["robust_acc"] for m in r["curve"]], marker=".", label=arm)
    ax.set_xlabel("training passes incl. natural pretraining (millions of single-image forward+backward)")
    ax.set_ylabel("validation robust acc, PGD-10 (%)")
    ax.set_title("Fashion-MNIST, linf 0.1, 2-conv net: validation curves of each arm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="default runs/full-scale (--quick: runs/full-scale-quick)")
    ap.add_argument("--only", nargs="+", choices=ARMS, default=None, help="train/evaluate these arms only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pgd-images", type=int, default=1000)
    ap.add_argument("--aa-images", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="digits, 2 epochs, tiny study; PGD-50-10 on 100 images, no AutoAttack")
    args = ap.parse_args()
    out = (args.out or Path("runs/full-scale-quick" if args.quick else "runs/full-scale")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ADVTUNE_CACHE", str(out / "cache"))
    if args.quick:
        args.pgd_images, args.aa_images = 100, 0
    arms = args.only or list(QUICK_ARMS if args.quick else ARMS)

    for arm in [a for a in arms if a != "study"]:
        train(arm, arm_config(arm, args.quick), out, args.seed)
        evaluate(out / arm, "pgd", args.pgd_images, out / f"{arm}.log")
        if args.aa_images:
            evaluate(out / arm, "autoattack", args.aa_images, out / f"{arm}.log")
    if "study" in arms:
        if not (out / "baseline" / "done").exists():
            raise SystemExit("the study's budget is 8x the baseline's passes: run the baseline arm first")
        study(out, args.seed, args.quick)
        for attack, n in (("pgd", args.pgd_images), ("autoattack", args.aa_images)):
            if n:
                evaluate(out / "study_rerun", attack, n, out / "study_rerun.log")

    # report every arm that has finished (other arms may run in other processes)
    results: dict = {"data": QUICK_DATA if args.quick else DATA, "seed": args.seed, "arms": {}}
    for arm in [*[a for a in ARMS if a != "study"], "study_rerun"]:
        run = out / arm
        pgd = run / f"eval-pgd-{args.pgd_images}.json"
        if not (run / "done").exists() or not pgd.exists():
            continue
        curve = metrics(run)
        aa_file = run / f"eval-autoattack-{args.aa_images}.json"
        aa = json.loads(aa_file.read_text())["results"][-1] if aa_file.exists() else None
        pgd_r = json.loads(pgd.read_text())["results"][-1]
        results["arms"][arm] = {
            "clean": pgd_r["clean_acc"], "pgd50": pgd_r["robust_acc"], "pgd_n": pgd_r["n"],
            "aa": aa["robust_acc"] if aa else None, "aa_n": aa["n"] if aa else 0,
            "train_passes": int(curve[-1]["grad_passes"]), "pretrain_passes": pretrain_passes(run),
            "wall_s": json.loads((run / "done").read_text())["wall_s"],
            "best_val": max(m["robust_acc"] for m in curve), "curve": [
                {"epoch": m["epoch"], "grad_passes": int(m["grad_passes"]), "robust_acc": m["robust_acc"],
                 "clean_acc": m["clean_acc"]} for m in curve]}
    study_info = None
    if (out / "study.done").exists() and "baseline" in results["arms"]:
        study_info = study_summary(out, results["arms"]["baseline"]["train_passes"])
    results["study"] = study_info
    base = results["arms"].get("baseline")
    for arm, r in results["arms"].items():
        ratio = r["train_passes"] / base["train_passes"] if base else float("nan")
        aa = f"{100 * r['aa']:.2f}" if r["aa"] is not None else "nan"
        print(f"RATIO arm={arm} clean={100 * r['clean']:.2f} pgd50={100 * r['pgd50']:.2f} aa={aa} "
              f"train_passes={r['train_passes']} pretrain_passes={r['pretrain_passes']} passes_over_baseline={ratio:.3f} "
              f"wall_s={r['wall_s']:.0f}")
    for ft, sc in PAIRS:
        if ft in results["arms"] and sc in results["arms"]:
            a, b = results["arms"][ft], results["arms"][sc]
            level = min(a["best_val"], b["best_val"])
            ft_total = first_reach(a["curve"], level, a["pretrain_passes"])
            ft_own = first_reach(a["curve"], level, 0)
            sc_passes = first_reach(b["curve"], level, 0)
            results.setdefault("pairs", {})[f"{ft}/{sc}"] = {"level": level, "ft_passes": ft_total, "ft_passes_no_pretrain": ft_own,
                                                             "scratch_passes": sc_passes}
            print(f"RATIO pair={ft}/{sc} level={100 * level:.2f} ft_passes={ft_total} scratch_passes={sc_passes} "
                  f"at_equal_robust={sc_passes / ft_total:.3f} at_equal_robust_no_pretrain={sc_passes / ft_own:.3f}")
    if study_info:
        print(f"RATIO study budget_passes={study_info['budget_passes']} "
              f"budget_over_baseline={study_info['budget_over_baseline']:.3f} trials={study_info['trials']}")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
