"""Cost of one adversarial training step, as a ratio to a natural step and to its algorithmic bound.

Times advtune's own training steps (``trainables.finetune._train_step`` / ``_free_step``) on random
data, batch 128: natural, FGSM-RS, N-FGSM, PGD-k (k = 3, 7, 10) and free-m (m = 4), for the small CNN at the
digits shape (1x8x8) and the Fashion-MNIST shape (1x28x28), and PreActResNet-18 at 3x32x32 (fewer
repeats). The variants of one model are interleaved (a shuffled order per round) and each figure is
the median over rounds, so load from other processes hits every variant alike.

Bound (forward+backward passes per minibatch, relative to natural): PGD-k (k+1)x, FGSM-RS and N-FGSM 2x,
free-m 1x per replay (m x per minibatch). advtune's attacks switch ``requires_grad`` of the
parameters off while crafting, so an attack pass computes no weight gradients and is cheaper than
a training pass: ratios below 1.00x of the bound are expected.

    .venv/bin/python bench/attack_cost.py            # full: 15 rounds small CNN, 2 rounds PreActResNet-18 (~10 min)
    .venv/bin/python bench/attack_cost.py --quick    # few rounds; batch 8 at 28x28, 4 for PreActResNet-18 (~20 s)

Prints one line per (model, variant):
    RATIO <model> <variant> natural=<x> bound=<y> bound_x=<b> median_ms=<t>
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advtune.trainables.config import TrialConfig  # noqa: E402
from advtune.trainables.finetune import _free_step, _train_step  # noqa: E402
from advtune.trainables.models import build_model  # noqa: E402

# (label, attack, train_steps, bound in natural-step units, replays per call)
VARIANTS = [("natural", "none", 1, 1.0, 1), ("fgsm_rs", "fgsm_rs", 1, 2.0, 1), ("nfgsm", "nfgsm", 1, 2.0, 1),
            ("pgd-3", "pgd", 3, 4.0, 1),
            ("pgd-7", "pgd", 7, 8.0, 1), ("pgd-10", "pgd", 10, 11.0, 1), ("free-4", "free", 1, 1.0, 4)]


def make_step(model_name: str, shape: tuple[int, int, int], batch: int, label: str, attack: str, k: int, replays: int):
    """A closure running one training step of ``attack`` on a fixed random batch."""
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cfg = TrialConfig().replace(attack=attack, train_steps=k, free_replays=replays, eval_eps=0.1)
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    state = {"step": 0, "free_delta": None}
    if attack == "free":
        return lambda: _free_step(cfg, model, opt, scaler, x, y, 0.1, None, state, lambda: None, None)
    return lambda: _train_step(cfg, model, opt, scaler, x, y, 0.1, None)


def measure(model_name: str, shape, batch: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per call of each variant (CPU time is less sensitive to
    other processes on a shared machine; wall time is what a user waits)."""
    steps = {v[0]: make_step(model_name, shape, batch, v[0], v[1], v[2], v[4]) for v in VARIANTS}
    for fn in steps.values():  # warm-up: allocator, oneDNN kernels
        fn()
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            steps[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few rounds; batch 8 at 28x28, batch 4 for PreActResNet-18")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    setups = [("small_cnn", (1, 8, 8), 128, 3 if args.quick else 25),
              ("small_cnn", (1, 28, 28), 8 if args.quick else 128, 2 if args.quick else 15),
              ("preact_resnet18", (3, 32, 32), 4 if args.quick else 128, 1 if args.quick else 2)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; random data; median over interleaved rounds")
    print(f"{'model':<28} {'variant':<14} {'wall ms':>8} {'x natural':>10} {'bound':>6} {'x bound':>8}"
          f" {'cpu ms':>8} {'cpu x bound':>12}")
    for model_name, shape, batch, rounds in setups:
        med, cpu = measure(model_name, shape, batch, rounds)
        tag = f"{model_name}@{'x'.join(map(str, shape))}/b{batch}"
        nat, cnat = med["natural"], cpu["natural"]
        for label, attack, k, bound, replays in VARIANTS:
            rows = [(label, med[label], cpu[label], bound * replays)]
            if attack == "free":  # one call = m replays: report per replay and per minibatch
                rows = [(f"{label}/replay", med[label] / replays, cpu[label] / replays, bound),
                        (f"{label}/batch", med[label], cpu[label], bound * replays)]
            for name, t, c, b in rows:
                print(f"{tag:<28} {name:<14} {1000 * t:8.1f} {t / nat:9.2f}x {b:5.0f}x {t / nat / b:7.2f}x"
                      f" {1000 * c:8.1f} {c / cnat / b:11.2f}x")
                print(f"RATIO {tag} {name} natural={t / nat:.3f} bound={t / nat / b:.3f} bound_x={b:g} "
                      f"cpu_bound={c / cnat / b:.3f} median_ms={1000 * t:.2f} rounds={rounds}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
