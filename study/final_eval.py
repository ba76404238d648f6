"""A study's final strong evaluation: its pick must hold under a strong attack.

The search selects on the validation attack (PGD-10, one restart): cheap, and weak enough that a
trial can rank high because its gradients are masked. When the search ends, the top-k trials' best
checkpoints are attacked again on the validation split with a strong attack
(``trainables.strong_eval``), each as a Ray task with one trial's resources, all submitted at once.
Export, status, the end-of-study summary, TensorBoard and the report then rank by that strong figure.

``<study>/final_eval.json`` (written atomically after every finished task, so an interrupted
evaluation keeps what it had; ``advtune resume`` evaluates only what is missing)::

    {"settings": {"attack": "apgd", "images": 128, "top_k": null, "seed": 0},
     "trials": {"<trial id>": {"attack": "apgd-ce+apgd-t", "n": 288, "clean_acc": 0.9, "robust_acc": 0.41,
                               "selection_robust_acc": 0.45, "selection_epoch": 8, "gap": 0.04,
                               "flag": true, "val_attack": "pgd-10-1", "val_attack_acc": 0.45, ...}}}

Accuracies are fractions in [0, 1]. ``selection_robust_acc`` is the figure the search ranked on (the
validation attack's best, whole validation split); ``val_attack_acc`` is that attack on the strong
attack's images, and ``gap`` = ``val_attack_acc`` - ``robust_acc``: both on the same images, so it equals
selection - strong when the images cover the validation split.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from .errors import StudyError
from .records import FINAL_STATES, TrialRecord
from .strong_flags import GAP_FLAG, agreement_lines, apply_flags

__all__ = ["FILE", "CHOICES", "DEFAULT_IMAGES", "resolve_images", "GAP_FLAG", "GAP_WARNING", "check_settings", "resolve_attack",
           "candidates", "study_candidates", "load_final", "strong_of", "rank", "strong_table", "half_width", "run_final_eval", "evaluate_task"]

FILE = "final_eval.json"
CHOICES = ("auto", "autoattack", "apgd", "pgd", "none")
# Default images. 128 kept the default study near 3 minutes on CPUs, but its figure is a noisy sample
# (binomial SE ~4 points at 30%): on the default digits study it read 30.5% where AutoAttack on the test
# split reads 35.1%; the whole 288-image validation split read 35.1% (docs/benchmarks.md section 8). So on
# CPUs up to 512 images (all of a small validation split), about a minute more; with GPUs 1000.
CPU_IMAGES, GPU_IMAGES = 512, 1000
DEFAULT_IMAGES = None  # None: CPU_IMAGES, or GPU_IMAGES when trials have GPUs
MIN_TOP_K = 3
# The flag: a trial whose gap stands out from the other evaluated trials' (study/strong_flags.py says the rule
# and why); GAP_FLAG (3 points) is its floor and the band the report draws.
GAP_WARNING = "possible gradient masking: its gap stands out from the other trials'"


def check_settings(attack: str, top_k: int | None, images: int | None, num_samples: int) -> None:
    """Refuse final-evaluation settings that cannot work, before anything is written or started."""
    from advtune.trainables.strong_eval import NEEDS_AUTOATTACK, autoattack_installed

    if attack not in CHOICES:
        raise StudyError(f"--final-attack {attack!r} is not one of {', '.join(CHOICES)}")
    if top_k is not None and not 1 <= top_k <= num_samples:
        raise StudyError(f"--final-top-k {top_k} is out of range: between 1 and the study's {num_samples} trials "
                         "(--num-samples); leave it out for every trial that reached the last ASHA rung")
    if images is not None and images < 1:
        raise StudyError(f"--final-images {images} is out of range: at least 1 validation image (default "
                         f"{CPU_IMAGES}, {GPU_IMAGES} with GPUs)")
    if attack in NEEDS_AUTOATTACK and not autoattack_installed():
        raise StudyError(f"--final-attack {attack} needs the optional AutoAttack extra, which is not installed: "
                         "pip install 'advtune[autoattack]', or choose --final-attack pgd")


def resolve_images(images: int | None, gpus_per_trial: float) -> int:
    """``--final-images`` left out: 512 on CPU trials, 1000 on GPU trials (all of a smaller split)."""
    return images if images is not None else (GPU_IMAGES if gpus_per_trial > 0 else CPU_IMAGES)


def resolve_attack(attack: str) -> str:
    """``auto``: AutoAttack's APGD pair where the extra is installed, else PGD-50 with 5 restarts."""
    from advtune.trainables.strong_eval import autoattack_installed

    if attack != "auto":
        return attack
    return "apgd" if autoattack_installed() else "pgd"


def _selection(rec: TrialRecord) -> float:
    return rec.best["robust_acc"] if rec.best else -1.0


def _local_best(rec: TrialRecord) -> bool:
    return bool(rec.directory and (rec.directory / "best.pt").exists())


def candidates(records: list[TrialRecord], last_rung: float | None, top_k: int | None,
               has_best=_local_best, time_of=None, rungs: int = 2, objective=None, reached=None) -> list[TrialRecord]:
    """The trials to evaluate, best selection figure first, among those with a best.pt (``has_best``: in
    the trial's folder; a study in cloud storage asks the bucket): the top ``top_k`` by selection figure;
    by default every trial that reached ASHA's ``last_rung`` (None: a study without rungs, every trial) and
    the 3 best by selection figure, wherever ASHA stopped them (the best selection figure can belong to a
    trial that peaked before a rung, and the export must not miss it).

    With two rungs or more, every trial that *reached* the last rung is a candidate, stopped there or not:
    it survived every earlier rung, and on the default study a trial stopped at the last rung (6th by
    selection figure) had the 2nd-best strong figure. ASHA lets about ``n/rf^(rungs-1)`` trials reach the
    last rung (async promotion a few more), so the cost stays bounded: ~6 of 12 trials on the default
    study. With a single rung every trial reaches it (12 of 12 in a Fashion-MNIST study), so there only the
    trials past it count.
    ``time_of(record)`` is the trial's time in the pruning rule's unit (default: its epochs); ``reached(record)``,
    when given, decides per trial instead (:func:`study_candidates`: each trial's own last rung). "Best by
    selection figure" is the study's one ranking without strong figures (``objectives.rank_trials``):
    under a ``robust:clean>=X`` objective the feasible trials come first."""
    from .objectives import rank_trials

    pool = [r for r in rank_trials(records, None, objective) if has_best(r)]
    if top_k is not None:
        return pool[:top_k]
    if reached is None:  # one last rung for every trial, in ``time_of``'s unit
        if last_rung is None:
            return pool
        time_of = time_of or (lambda r: r.epochs_run)

        def reached(r: TrialRecord) -> bool:
            t = time_of(r)
            return t >= last_rung - 1e-9 if rungs >= 2 else t > last_rung + 1e-9

    return [r for i, r in enumerate(pool) if i < MIN_TOP_K or reached(r)]


def study_candidates(spec, records: list[TrialRecord], has_best=_local_best) -> list[TrialRecord]:
    """:func:`candidates` with a study's own settings (its ``final_top_k`` and objective) and each trial's own
    rungs: under the ``full_strength`` rule a trial meets the rungs at its own epochs, and those that fall after
    its last epoch never judge it (``pruning.trial_rung_epochs``), so "reached the last rung" is asked of the
    last rung *that trial* could reach. The final evaluation and ``advtune resume``'s "is it complete?" both
    ask this."""
    from .pruning import trial_rung_epochs

    spec_dict = spec.to_dict()

    def reached(r: TrialRecord) -> bool:
        own = trial_rung_epochs(spec_dict, r.params)
        if not own:  # never judged by ASHA: ran to its end (or a guard stopped it)
            return True
        judged = [m["epoch"] for m in r.metrics if m["epoch"] >= own[-1] - 1e-9]
        if not judged:  # stopped before its last rung
            return False
        # with one rung every trial reaches it: only those it let past count; with more, reaching the last one
        return r.epochs_run > judged[0] + 1e-9 if len(own) == 1 else True

    return candidates(records, None, spec.final_top_k, has_best=has_best, objective=spec.parsed_objective,
                      reached=reached)


def load_final(study_dir: str | Path) -> dict[str, Any]:
    """The study's final evaluation ({} when it has none, or the file is unreadable), its flags decided by
    the rule over all its trials (study/strong_flags.py)."""
    path = Path(study_dir) / FILE
    try:
        final = json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        return {}
    return apply_flags(final) if isinstance(final, dict) else {}


def strong_of(final: dict[str, Any], trial_id: str) -> dict[str, Any] | None:
    """The trial's strong-evaluation entry, or None when it has no strong figure."""
    entry = (final.get("trials") or {}).get(trial_id)
    return entry if entry and isinstance(entry.get("robust_acc"), (int, float)) else None


def rank(records: list[TrialRecord], final: dict[str, Any], objective=None) -> list[TrialRecord]:
    """Trials with a validation, ranked by the strong figure; those without one come after, by the
    selection figure. With a ``robust:clean>=X`` objective (study.objectives), trials that meet the
    clean-accuracy floor come first."""
    from .objectives import rank_trials

    return rank_trials(records, final, objective)  # the one ranking (study/objectives.py)


def _entry(rec: TrialRecord, result: dict[str, Any]) -> dict[str, Any]:
    # Paired: the validation attack and the strong one on the same images, so that a subset of the
    # validation split never shows up as a gap (equal to selection - strong when it is the whole split).
    gap = result["val_attack_acc"] - result["robust_acc"]
    # "flag" is decided over all evaluated trials (apply_flags), when the file is saved and read
    return {**result, "selection_robust_acc": rec.best["robust_acc"], "selection_epoch": rec.best["epoch"],
            "gap": gap, "flag": False, "flag_reason": ""}


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def half_width(acc: float, n: int) -> float:
    """Half-width of the 95% interval of an accuracy measured on ``n`` images (normal approximation, at least
    the 1/n resolution). The study's pick was also *selected* on these validation images, which biases its
    figure up beyond this interval (docs/benchmarks.md §8)."""
    import math

    return max(1.96 * math.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1)), 1 / max(n, 1))


def strong_table(records: list[TrialRecord], final: dict[str, Any], objective=None) -> str:
    """The compact table of the end of a study: trial, both figures, the strong figure's 95% interval,
    clean accuracy, gap, flag; ranked as everywhere (``objective``: a clean floor puts feasible trials first)."""
    final = apply_flags(copy.deepcopy(final))  # the flags of the rule over these entries, whoever wrote them
    rows = [r for r in rank(records, final, objective) if strong_of(final, r.trial_id)]
    if not rows:
        return "no strong evaluation"
    val = strong_of(final, rows[0].trial_id)["val_attack"].upper() + "%"
    head = f"{'trial':<12} {'selection%':>10} {val:>10} {'strong%':>8} {'±95%':>5} {'clean%':>7} {'gap':>6}  flag"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = strong_of(final, r.trial_id)
        lines.append(f"{r.trial_id:<12} {_pct(s['selection_robust_acc']):>10} {_pct(s['val_attack_acc']):>10} "
                     f"{_pct(s['robust_acc']):>8} {100 * half_width(s['robust_acc'], s.get('n', 0)):>5.1f} "
                     f"{_pct(s['clean_acc']):>7} {100 * s['gap']:>+6.1f}  "
                     f"{('! ' + GAP_WARNING) if s['flag'] else ''}".rstrip())
    lines += [""] + agreement_lines(final)
    lines += [f"  {r.trial_id}: {strong_of(final, r.trial_id)['flag_reason']}" for r in rows
              if strong_of(final, r.trial_id).get("flag_reason")]
    return "\n".join(lines)


def describe(final: dict[str, Any]) -> str:
    """One line: which attack, on how many images, and what 'selection' means."""
    from advtune.trainables.strong_eval import ATTACKS

    st = final.get("settings", {})
    ns = {e["n"] for e in (final.get("trials") or {}).values() if "n" in e}
    n = ", ".join(str(x) for x in sorted(ns)) or str(st.get("images", "?"))
    val = next(iter(final.get("trials", {}).values()), {}).get("val_attack", "the validation attack").upper()
    return (f"strong attack: {ATTACKS.get(st.get('attack'), st.get('attack'))}, on the first {n} validation images; "
            "selection = the validation attack's best robust accuracy over the whole validation split (what ASHA "
            f"and Optuna ranked on); {val} = the validation attack on the strong attack's images; gap = {val} - "
            "strong, on the same images; ±95% = the strong figure's sampling interval on that many images (the "
            "pick was also selected on them: expect the test split a little lower)")


def _save(study_dir: Path, final: dict[str, Any]) -> None:
    path = study_dir / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(apply_flags(final), indent=2))
    os.replace(tmp, path)


def evaluate_task(checkpoint: str, attack: str, images: int, threads: int) -> dict[str, Any]:
    """The Ray task: one checkpoint, with as many torch threads as the task has CPUs."""
    import torch

    from advtune.trainables.strong_eval import strong_eval

    torch.set_num_threads(max(1, threads))
    if "://" in checkpoint:  # a study in cloud storage: the task's node reads best.pt from the bucket
        from advtune.trainables.cloud_adapter import fetch

        checkpoint = fetch(checkpoint)
    return strong_eval(checkpoint, attack, images)


def run_final_eval(tb, spec, study_dir: Path) -> dict[str, Any] | None:
    """Evaluate the study's top-k trials that have no strong figure yet (Ray must be up). Returns the
    final evaluation, or None when it is off or the search has not finished."""
    from .records import StudyRecords

    attack = spec.final_attack
    if attack == "none":
        print("final strong evaluation: off (--final-attack none); trials rank by the validation attack", flush=True)
        return None
    records = StudyRecords(study_dir, tensorboard=False).load()
    if len(records) < spec.num_samples or any(r.state not in FINAL_STATES for r in records):
        print("final strong evaluation: not yet, the search has not finished (advtune resume finishes both)",
              flush=True)
        return None
    attack = resolve_attack(attack)
    images = resolve_images(spec.final_images, spec.gpus_per_trial)
    checkpoints = spec.storage.best_checkpoints(records)  # in the trials' folders, or (cloud) in the bucket
    chosen = study_candidates(spec, records, has_best=lambda r: r.trial_id in checkpoints)
    settings = {"attack": attack, "images": images, "top_k": spec.final_top_k, "seed": 0}
    final = load_final(study_dir)
    if final.get("settings", {}).get("attack") != attack or final.get("settings", {}).get("images") != images:
        final = {}
    final = {"settings": settings, "trials": dict(final.get("trials") or {})}
    if not chosen:
        print("final strong evaluation: no trial has a best.pt to evaluate", flush=True)
        return None
    todo = [r for r in chosen if r.trial_id not in final["trials"]]
    if not todo:
        return final
    from advtune.trainables.strong_eval import ATTACKS

    threads = int(spec.cpus_per_trial or 1)
    print(f"\nfinal strong evaluation of the top {len(chosen)} trials: {ATTACKS[attack]}, on up to {images} "
          f"validation images, {len(todo)} Ray task(s) with one trial's resources…", flush=True)
    args = [(checkpoints[r.trial_id], attack, images, threads) for r in todo]
    writer = StudyRecords(study_dir)
    for i, result in tb.run_tasks(evaluate_task, args, num_cpus=spec.cpus_per_trial or 1,
                                  num_gpus=spec.gpus_per_trial):
        rec = todo[i]
        if isinstance(result, BaseException):
            print(f"  trial {rec.trial_id}: strong evaluation failed: {_reason(result)}", flush=True)
            continue
        final["trials"][rec.trial_id] = entry = _entry(rec, result)
        _save(study_dir, final)
        writer.on_strong_eval(rec.trial_id, entry["robust_acc"], entry["gap"])
        # no flag here: it compares the trial's gap with the others', known when all are in (strong_table)
        print(f"  trial {rec.trial_id}: {result['attack']} robust {_pct(entry['robust_acc'])}% (selection "
              f"{_pct(entry['selection_robust_acc'])}%, clean {_pct(entry['clean_acc'])}%, {entry['n']} images, "
              f"{result['seconds']:.0f} s; gap {100 * entry['gap']:+.1f} points)", flush=True)
    writer.close()
    return final


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [ln for ln in str(cause).splitlines() if ln.strip()]
    return lines[-1] if lines else type(cause).__name__
