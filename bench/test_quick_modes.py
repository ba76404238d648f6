"""Every benchmark's ``--quick`` mode runs and prints the ratio lines it promises (with numbers).

Runs each ``bench/*.py --quick`` as a subprocess (digits only: no dataset outside the package is
needed). They run at once, one torch thread each: about 5 min on the 2-core CPU machine (overhead.py, which
starts local Ray five times, is the longest). Not part of the test suite (it checks the measurement scripts,
not advtune, and would be a fifth of the suite's time): ``make bench-check`` runs it, and CI runs that after
``make test``.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUM = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf)"

# script -> regexes, each must match a line; every named number in it must parse as a float
PROMISES = {
    "attack_cost.py": [
        rf"^RATIO small_cnn@1x8x8/b128 {name} natural={NUM} bound={NUM} bound_x=\S+ cpu_bound={NUM}"
        for name in ("natural", "fgsm_rs", "nfgsm", "pgd-3", "pgd-7", "pgd-10", "free-4/replay", "free-4/batch")
    ] + [rf"^RATIO preact_resnet18@3x32x32/\S+ pgd-10 natural={NUM} bound={NUM}",
         rf"^RATIO small_cnn@1x28x28/\S+ free-4/replay natural={NUM} bound={NUM}"],
    "overhead.py": [
        rf"^RATIO wall_cli_study1_vs_cli_train={NUM} rounds=1",
        rf"^RATIO at_equal_epochs_cli_study1_vs_cli_train={NUM} fixed_s_train={NUM} fixed_s_study={NUM} epochs_s={NUM}",
        rf"^RATIO wall_study1_vs_standalone={NUM}",
        rf"^RATIO wall_study1_cpus1_vs_standalone={NUM}",
        rf"^RATIO wall_studyN_vs_standalone={NUM} n=2 throughput={NUM}",
        rf"^RATIO startup_s standalone={NUM} study1={NUM} study1_from_cli={NUM}",
        rf"^RATIO next_trial_gap_s median={NUM} max={NUM}",
    ],
    "search_efficiency.py": [
        rf"^RATIO seed=0 method={m} best={NUM} total_gp={NUM} reach_gp={NUM} reach_frac_of_a={NUM}" for m in "abc"
    ] + [rf"^RATIO median method={m} reach_frac_of_a={NUM} total_frac_of_a={NUM}" for m in "abc"]
      + [rf"^RATIO method={m} best_within_30pct_of_a_compute={NUM} mean={NUM}" for m in "abc"],
    "importance_reliability.py": [rf"^RATIO n={n} top1={NUM} top2={NUM} irrelevant_median={NUM}" for n in (8, 20)],
    "cloud_upload.py": [
        rf"^RATIO upload_over_epoch={NUM} model=small_cnn upload_s={NUM} epoch_s={NUM} ckpt_mb={NUM} "
        rf"upload_mb_per_s={NUM}",
    ],
    "pick_holds.py": [
        rf"^RATIO seed=0 selection={NUM} strong={NUM} test_aa={NUM} strong_minus_test={NUM} selection_minus_test={NUM}",
        rf"^SUMMARY seeds=1 strong_minus_test_median={NUM} selection_minus_test_median={NUM}",
    ],
    "finetune_vs_scratch.py": [
        rf"^RATIO finetune robust={NUM} clean={NUM} grad_passes={NUM} pretrain_passes={NUM}",
        rf"^RATIO scratch robust={NUM} clean={NUM} grad_passes={NUM}",
        rf"^RATIO compute_scratch_over_finetune total={NUM} at_equal_robust={NUM} lower_bound={NUM}",
    ],
    "full_scale.py": [
        rf"^RATIO arm=baseline clean={NUM} pgd50={NUM} aa={NUM} train_passes={NUM} pretrain_passes={NUM} "
        rf"passes_over_baseline={NUM}",
        rf"^RATIO pair=ft_recipe/baseline level={NUM} ft_passes={NUM} scratch_passes={NUM} at_equal_robust={NUM} "
        rf"at_equal_robust_no_pretrain={NUM}",
        rf"^RATIO study budget_passes={NUM} budget_over_baseline={NUM} trials={NUM}",
    ],
    "pruning_fidelity.py": [
        rf'^RATIO data=\S+ rule="{label}" rungs=\S+ spearman={NUM} kendall={NUM} best_survives={NUM} regret_pts={NUM} '
        rf"regret_images={NUM} worst_regret_pts={NUM} compute={NUM} spearman_rungs=\S+"
        for label in (r"epoch \(old default\)", r"full_strength g1.75 rf4 \(previous default\)",
                      r"full_strength 0.75 keep 1/2, 1.75 keep 1/3 \(default\)", r"probe 1 rf4",
                      r"full_strength g1.75 then 3.5 rf3", r"full_strength g1 rf4 at the rung")],
    "worker_memory.py": [rf"^RATIO release={r} first_peak_mb={NUM} last_peak_mb={NUM} growth_mb={NUM}" for r in ("off", "on")],
}
# numbers that must be finite and positive (the others may be nan: e.g. a target never reached)
# (at_equal_robust is nan when scratch never reaches fine-tuning's accuracy; the lower bound is then what counts)
MUST_BE_FINITE = {"pick_holds.py": (), "importance_reliability.py": None, "attack_cost.py": None, "cloud_upload.py": None, "overhead.py": None, "finetune_vs_scratch.py": (0, 2), "search_efficiency.py": (),
                  "full_scale.py": (0, 1),  # the quick mode runs no AutoAttack (aa=nan)
                  "worker_memory.py": (0, 1),  # growth may be negative
                  "pruning_fidelity.py": (2, 6)}  # best_survives, compute (3 tiny configurations: ranks may tie)


def test_every_benchmark_quick_mode_prints_its_ratios(tmp_path):
    # One thread per process: four torch processes with a thread per core each would oversubscribe the
    # cores and spin-wait (several times slower); the quick modes check that ratios come out, not speed.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "ADVTUNE_CACHE": str(tmp_path / "cache"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    failures = []
    # all at once: much of their time is Ray starting up, which waits rather than computes
    procs = {script: subprocess.Popen([sys.executable, str(ROOT / "bench" / script), "--quick"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for script in PROMISES}
    outputs = {script: p.communicate(timeout=600) + (p.returncode,) for script, p in procs.items()}
    for script, patterns in PROMISES.items():
        out, err, rc = outputs[script]
        if rc != 0:
            failures.append(f"{script} exited {rc}:\n{err[-3000:]}")
            continue
        for pat in patterns:
            m = re.search(pat, out, flags=re.MULTILINE)
            if m is None:
                failures.append(f"{script}: no line matching {pat!r} in:\n{out[-2000:]}")
                continue
            values = [float(g) for g in m.groups()]
            finite_idx = MUST_BE_FINITE[script]
            check = range(len(values)) if finite_idx is None else finite_idx
            for i in check:
                if not (math.isfinite(values[i]) and values[i] >= 0):
                    failures.append(f"{script}: {m.group(0)!r}: value {i} is {values[i]}")
    assert not failures, "\n\n".join(failures)
