"""Worker memory: a trial worker that Tune reuses, trial after trial, with and without advtune's release.

A study reuses trial actors and Ray runs each trial in a new thread of the actor; glibc keeps what a
finished trial freed in that thread's malloc arena. ``trainables.tune_adapter.trial_fn`` therefore
starts every trial with ``release_freed_memory()`` (``gc.collect`` + ``malloc_trim``). This runs the
same trials on one reused worker twice, in one run, under real Ray Tune: once as advtune runs them and
once with the release switched off, sampling the worker's private memory (USS) every 0.3 s, and prints
each trial's peak.

    .venv/bin/python bench/worker_memory.py           # Fashion-MNIST 2,000/1,000 images, 6 trials x 1 epoch
    .venv/bin/python bench/worker_memory.py --quick   # digits, 4 trials x 1 epoch

Prints ``RATIO release=<on|off> first_peak_mb=<x> last_peak_mb=<x> growth_mb=<x>`` for both runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FMNIST = "/usr/share/datasets/fashion-mnist"


def _trial(params: dict, base: dict, study_dir: str, peaks_file: str, release: bool) -> None:
    """advtune's trainable, with a sampler thread (started once per worker) writing each trial's peak USS."""
    import threading

    import psutil

    import advtune.trainables.tune_adapter as adapter

    if not release:
        adapter.release_freed_memory = lambda: None
    state = _trial.__dict__.setdefault("state", {"peaks": []})
    state["peaks"].append(0)
    if "thread" not in state:
        def sample() -> None:
            me = psutil.Process()
            while True:
                state["peaks"][-1] = max(state["peaks"][-1], me.memory_full_info().uss)
                tmp = Path(f"{peaks_file}.{os.getpid()}.tmp")  # whole or not at all: the driver reads it any time
                tmp.write_text(json.dumps(state["peaks"]))
                os.replace(tmp, peaks_file)
                threading.Event().wait(0.3)

        state["thread"] = threading.Thread(target=sample, daemon=True)
        state["thread"].start()
    adapter.trial_fn(params, base=base, study_dir=study_dir)


def run(base: dict, trials: int, release: bool, work: Path) -> list[float]:
    from ray import tune

    peaks = work / f"peaks-{release}.json"
    fn = tune.with_parameters(_trial, base=base, study_dir=str(work / f"study-{release}"), peaks_file=str(peaks),
                              release=release)
    tuner = tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space={"seed": tune.grid_search(list(range(trials)))},
                       tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
                       run_config=tune.RunConfig(stop={"training_iteration": base["epochs"]},
                                                 storage_path=str(work / "ray"), verbose=0))
    tuner.fit()
    return [b / 2**20 for b in json.loads(peaks.read_text())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="digits, 4 trials x 1 epoch")
    ap.add_argument("--trials", type=int, default=None)
    args = ap.parse_args()
    import ray

    if args.quick:
        base = dict(dataset="digits", model="small_cnn", val_steps=3, train_steps=2)
        trials = args.trials or 4
        what = "digits, small_cnn"
    else:
        base = dict(dataset="fashion-mnist", data_root=FMNIST, train_size=2000, val_size=1000, model="small_cnn-16",
                    eval_eps=0.1, attack="fgsm_rs", val_steps=5)
        trials = args.trials or 6
        what = "Fashion-MNIST 2,000/1,000 images, small_cnn-16, FGSM-RS, PGD-5 validation"
    base.update(pretrained="none", epochs=1, device="cpu")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh local Ray for each: "off" patches the worker's module, and no worker may carry that over
        for release in (False, True):
            ray.init(address="local", num_cpus=1, include_dashboard=False)
            try:
                results[release] = run(base, trials, release, Path(tmp))
            finally:
                ray.shutdown()
    print(f"\nworker memory: {trials} trials x 1 epoch on one reused trial worker ({what}); peak USS per trial, MB")
    for release, peaks in results.items():
        print(f"  release {'on ' if release else 'off'}  " + " ".join(f"{p:6.0f}" for p in peaks))
    for release, peaks in results.items():
        print(f"RATIO release={'on' if release else 'off'} first_peak_mb={peaks[0]:.0f} last_peak_mb={peaks[-1]:.0f} "
              f"growth_mb={peaks[-1] - peaks[0]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
