"""Load: a study of many tiny trials (digits, 1 epoch) on local Ray, watching the driver for leaks.

Prints the driver's memory (RSS) and open file descriptors when the study starts and when it ends,
the growth per 100 trials between the first and last quarter of the study, and the per-trial
overhead of orchestration: (wall × concurrency − time trials spent training) / trials.

    .venv/bin/python bench/load_study.py            # 200 trials (the figure in docs/reliability.md)
    .venv/bin/python bench/load_study.py --quick    # 20 trials
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advtune.study.cli import main as advtune  # noqa: E402
from advtune.study.records import StudyRecords  # noqa: E402


def sample(stop: threading.Event, out: list, study: Path) -> None:
    me = psutil.Process()
    while not stop.is_set():
        n = len(list((study / "trials").glob("*/state.json"))) if (study / "trials").exists() else 0
        out.append((time.time(), n, me.memory_info().rss, me.num_fds()))
        stop.wait(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="20 trials")
    args = ap.parse_args()
    n = 20 if args.quick else args.trials
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path(tempfile.mkdtemp(prefix="advtune-load-"))
    os.environ.setdefault("ADVTUNE_CACHE", str(tmp / "cache"))
    study = tmp / "s" / "load"
    samples: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=sample, args=(stop, samples, study), daemon=True)
    watcher.start()
    t0 = time.time()
    rc = advtune(["run", "--name", "load", "--storage-path", str(tmp / "s"), "--num-samples", str(n),
                  "--max-epochs", "1", "--concurrency", str(args.concurrency), "--set", "train_steps=1",
                  "--set", "val_steps=1", "--set", "pretrain_epochs=2", "--final-attack", "none"])
    wall = time.time() - t0
    stop.set()
    watcher.join()
    if rc != 0:
        return rc
    records = StudyRecords(study, tensorboard=False).load()
    train_s = sum(m["epoch_seconds"] for r in records for m in r.metrics)
    running = [s for s in samples if s[1] > 0]
    first, last = running[0], samples[-1]
    q1 = [s for s in samples if s[1] >= n // 4] or samples
    q4 = [s for s in samples if s[1] >= n] or samples[-1:]
    growth = (q4[0][2] - q1[0][2]) / max(q4[0][1] - q1[0][1], 1) * 100
    print(f"\nload study: {len(records)} trials of 1 epoch, concurrency {args.concurrency}, wall {wall:.0f} s")
    print(f"  driver RSS        start {first[2] / 2**20:7.1f} MiB   end {last[2] / 2**20:7.1f} MiB   "
          f"growth {growth / 2**20:+.2f} MiB per 100 trials (from trial {q1[0][1]} to {q4[0][1]})")
    print(f"  driver open fds   start {first[3]:7d}       end {last[3]:7d}")
    print(f"  trials training   {train_s:.0f} s in all, {train_s / len(records):.2f} s a trial")
    print(f"  per-trial overhead (wall x concurrency - training) / trials = "
          f"{(wall * args.concurrency - train_s) / len(records):.2f} s")
    print(f"  study directory   {sum(p.stat().st_size for p in study.rglob('*') if p.is_file()) / 2**20:.1f} MiB "
          f"({tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
