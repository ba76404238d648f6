"""The standard from-scratch FGSM-RS recipe as a plain PyTorch script (no advtune imports): the
baseline advtune's trainer is compared with (issue 25, "parity first").

Recipe (Wong et al. 2020's MNIST setting, at Fashion-MNIST linf 0.1): the 2-conv MNIST net
(conv 16 4x4 s2 p1, conv 32 4x4 s2 p1, fc 100, fc 10), no normalization, Adam (no weight decay),
cyclic LR 0 -> 5e-3 at 40% -> 0 per step, batch 100, 10 epochs, FGSM from a uniform random start
with step 1.25 eps (the start is not clamped to [0, 1] before the gradient, as in Wong et al.'s
code), all 60,000 training images. Evaluation: clean accuracy and PGD-50 with 10 restarts (step
2.5 eps / 50, as advtune eval) on the first --n-test test images.

    python bench/reference_fgsm_rs.py --seed 0              # full recipe (GPU: ~1 min; CPU: ~4 min an epoch)
    python bench/reference_fgsm_rs.py --quick               # 2,000 images, 1 epoch, 100 test images (~1 min CPU)

Matching advtune config: bench/configs/fgsm_rs_reference.yaml. Prints one line:
    RESULT seed=<s> clean=<x> pgd50_10=<x> n_test=<n> train_images=<n> epochs=<e> grad_passes=<n> wall_s=<t>
"""
import argparse, gzip, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(root / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(root / f"{split}-labels-idx1-ubyte.gz")
    return torch.from_numpy(x.copy()).float().div(255).unsqueeze(1), torch.from_numpy(y.copy()).long()


def mnist_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, num_classes))


def pgd(model, x, y, eps, steps, restarts, alpha):
    """Per-example worst case over restarts: an image counts as robust only if no restart fools it."""
    robust = torch.ones_like(y, dtype=torch.bool)
    for _ in range(restarts):
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        with torch.no_grad():
            robust &= model(x + delta).argmax(1) == y
    return robust


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--lr-max", type=float, default=5e-3)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="2,000 training images, 1 epoch, 100 test images")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    x_train, y_train = load(Path(args.data_root), "train")
    x_test, y_test = load(Path(args.data_root), "t10k")
    epochs, n_test = (1, 100) if args.quick else (args.epochs, args.n_test)
    if args.quick:
        x_train, y_train = x_train[:2000], y_train[:2000]
    x_train, y_train = x_train.to(device), y_train.to(device)
    model = mnist_net().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr_max)
    eps, alpha, batch = args.eps, 1.25 * args.eps, 100
    n_batches = (len(y_train) + batch - 1) // batch
    total, passes, t0 = epochs * n_batches, 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), device=device)
        for i in range(n_batches):
            idx = order[i * batch:(i + 1) * batch]
            x, y = x_train[idx], y_train[idx]
            t = (epoch * n_batches + i + 1) / total  # cyclic LR per step: 0 -> lr_max at 40% -> 0
            lr = float(np.interp(t, [0, 0.4, 1], [0, args.lr_max, 0]))
            opt.param_groups[0]["lr"] = lr
            delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
            loss = F.cross_entropy(model(x + delta), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            passes += 2 * len(y)
        print(f"epoch {epoch + 1}/{epochs} lr {lr:.2e} last loss {loss.item():.3f}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    model.eval()
    x, y = x_test[:n_test].to(device), y_test[:n_test].to(device)
    torch.manual_seed(args.seed + 12345)  # the evaluation's random starts
    clean = robust = 0
    for xb, yb in zip(x.split(500), y.split(500)):
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        clean += int(ok.sum())
        robust += int((ok & pgd(model, xb, yb, eps, 50, 10, 2.5 * eps / 50)).sum())
    print(f"RESULT seed={args.seed} clean={clean / len(y):.4f} pgd50_10={robust / len(y):.4f} n_test={len(y)} "
          f"train_images={len(y_train)} epochs={epochs} grad_passes={passes} wall_s={wall:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
