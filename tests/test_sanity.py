"""The sanity checks of Carlini et al. (2019) on a real, naturally trained small CNN: they pass for
an honest evaluation, flag a model that masks its gradients, and flag an attack too weak to have
converged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtune.trainables.data import load_splits
from advtune.trainables.evaluate import evaluate_pgd
from advtune.trainables.models import build_model
from advtune.trainables.sanity import SWEEP, large_eps, robust_flags, run_checks

N_IMAGES = 120


@pytest.fixture(scope="module")
def trained():
    """small_cnn-16 trained naturally on digits for 4 epochs (~97% clean), and 120 test images."""
    splits = load_splits("digits", None, 0.2, 0)
    torch.manual_seed(0)
    model = build_model("small_cnn-16", splits.input_shape, splits.num_classes, splits.mean, splits.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = splits.train.tensors
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    xt, yt = splits.test.tensors
    return model, xt[:N_IMAGES], yt[:N_IMAGES]


class Binarized(nn.Module):
    """A "defense" that binarizes its input: zero gradient everywhere (gradient masking), while the
    gray image at linf 0.5 still fools it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x > 0.5).float() + 0 * x)


def test_flags_agree_with_evaluate_pgd(trained):
    from torch.utils.data import TensorDataset

    model, x, y = trained
    res = evaluate_pgd(model, TensorDataset(x, y), "linf", 0.1, steps=5, restarts=2, seed=3)
    assert robust_flags(model, x, y, "linf", 0.0, 5, 2, seed=3).float().mean().item() == pytest.approx(res.clean_acc)
    assert robust_flags(model, x, y, "linf", 0.1, 5, 2, seed=3).float().mean().item() == pytest.approx(res.robust_acc)


def test_an_honest_evaluation_passes_every_check(trained):
    model, x, y = trained
    checks = {c.name: c for c in run_checks(model, x, y, "linf", 0.1, steps=20, restarts=2, sweep_steps=10)}
    assert [c.passed for c in checks.values()] == [True, True, True], [c.line for c in checks.values()]
    acc = checks["monotone"].numbers["acc"]
    assert len(acc) == len(SWEEP) and acc[0] > 0.9  # eps 0 is the clean accuracy of a trained model
    assert all(b <= a + 0.01 for a, b in zip(acc, acc[1:]))
    assert checks["chance"].numbers["eps"] == 0.5
    assert checks["chance"].numbers["chance"] == pytest.approx(float(torch.bincount(y).max()) / N_IMAGES)
    assert all(f"{N_IMAGES} images" in c.line for c in checks.values())


def test_gradient_masking_fails_the_chance_check(trained):
    model, x, y = trained
    masked = Binarized(model).eval()
    checks = {c.name: c for c in run_checks(masked, x, y, "linf", 0.1, steps=5, restarts=1, sweep_steps=5)}
    chance = checks["chance"]
    assert not chance.passed and chance.numbers["acc"] > chance.numbers["chance"] + 0.1, chance.line
    assert "FAIL" not in chance.line and ">" in chance.line


def test_a_weak_attack_fails_the_convergence_check(trained):
    model, x, y = trained
    (check,) = [c for c in run_checks(model, x, y, "linf", 0.1, steps=1, restarts=1, sweep_steps=2)
                if c.name == "converged"]
    assert not check.passed, check.line
    assert check.numbers["acc"] - check.numbers["acc_stronger"] >= 0.01


def test_large_eps_holds_the_gray_image():
    assert large_eps("linf", (3, 32, 32)) == 0.5
    x = torch.rand(3, 32, 32)
    assert (x - 0.5).norm() <= large_eps("l2", (3, 32, 32))
