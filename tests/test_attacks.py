"""Tests for trainables.attacks and trainables.evaluate.evaluate_pgd.

Properties of every attack (threat model, no side effects on the model) are checked on a tiny
BatchNorm/Dropout CNN; strength orderings (PGD vs FGSM, eps, restarts) on a small CNN trained
naturally for a few seconds on scikit-learn's digits.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from advtune.trainables.attacks import attack_mode, fgsm, fgsm_rs, nfgsm, pgd, project, random_init
from advtune.trainables.evaluate import RobustResult, evaluate_pgd
from advtune.trainables.models import Normalize, NormalizedModel, build_model

EPS = {"linf": 0.3, "l2": 1.5}  # large enough that the [0, 1] clamp and the ball both bind
NORMS = ("linf", "l2")
BN_MODES = ("eval", "train")

ATTACKS = {
    "fgsm": fgsm,
    "fgsm_big_step": functools.partial(fgsm, step=3.0),  # the step overshoots: projection must catch it
    "fgsm_rs": fgsm_rs,
    "pgd": functools.partial(pgd, steps=4),
    "pgd_big_step": functools.partial(pgd, steps=3, step=2.0),
    "pgd_no_random_start": functools.partial(pgd, steps=3, random_start=False),
    "pgd_restarts": functools.partial(pgd, steps=3, restarts=3),
    "pgd_restarts_track_best": functools.partial(pgd, steps=3, restarts=3, track_best=True),
    "pgd_track_best": functools.partial(pgd, steps=3, track_best=True),
}
# Training attacks that leave the eps-ball by design (N-FGSM: no projection); same side-effect rules.
TRAINING_ONLY = {
    "nfgsm": nfgsm,
    "nfgsm_custom": functools.partial(nfgsm, noise=1.0, step=0.5),
}


# ---------------------------------------------------------------- helpers

def tiny_model(seed: int = 0) -> NormalizedModel:
    """A 1×6×6 → 3-class CNN with BatchNorm and Dropout, inputs in [0, 1]. (Only BatchNorm2d:
    with bn_mode="train", track_best restarts may attack a single remaining example, which a
    BatchNorm1d in train mode rejects; evaluation, the only user of track_best, crafts in eval.)"""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3),
    )
    model = NormalizedModel(Normalize((0.4,), (0.3,)), net)
    # non-trivial running statistics, so that "unchanged" is a real check
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model


def boundary_images(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with about a third of the pixels exactly 0, a third exactly 1, the rest in (0, 1);
    the first image is all 0 and the second all 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g)
    r = torch.rand(n, 1, 6, 6, generator=g)
    x = torch.where(r < 1 / 3, torch.zeros_like(x), torch.where(r > 2 / 3, torch.ones_like(x), x))
    x[0], x[1] = 0.0, 1.0
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def assert_in_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, "x_adv left the image range [0, 1]"
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6, f"linf perturbation {delta.abs().max():.6g} > eps {eps}"
    else:
        norms = delta.norm(dim=1)
        assert (norms <= eps * (1 + 1e-5)).all(), f"l2 perturbation {norms.max():.6g} > eps {eps}"


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "grad": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed (parameter or BatchNorm buffer)"
    assert before["training"] == after["training"], "a module's .training flag changed"
    assert before["requires_grad"] == after["requires_grad"], "requires_grad flags changed"
    for name, g in before["grad"].items():
        g_after = after["grad"][name]
        if g is None:
            assert g_after is None, f"{name}.grad was None and got a gradient"
        else:
            assert g_after is not None and torch.equal(g, g_after), f"{name}.grad changed"


def set_mode(model: nn.Module, mode: str) -> None:
    if mode == "train":
        model.train()
    elif mode == "eval":
        model.eval()
    else:  # mixed: model in train mode but the first BatchNorm and the Dropout frozen in eval mode
        model.train()
        model.net[1].eval()
        model.net[3].eval()


def prepare_grads(model: nn.Module) -> None:
    """Give some parameters an existing .grad, leave others at None, freeze one."""
    params = dict(model.net.named_parameters())
    params["0.weight"].grad = torch.full_like(params["0.weight"], 0.25)
    params["5.weight"].grad = torch.randn_like(params["5.weight"])
    params["8.bias"].requires_grad_(False)  # frozen, e.g. finetune_scope: it must stay frozen


# ---------------------------------------------------------------- threat model

@pytest.mark.parametrize("bn_mode", BN_MODES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_stays_in_eps_ball_and_image_range(attack: str, norm: str, bn_mode: str) -> None:
    model = tiny_model().train()
    x, y = boundary_images()
    torch.manual_seed(2)
    x_adv = ATTACKS[attack](model, x, y, eps=EPS[norm], norm=norm, bn_mode=bn_mode)
    assert_in_threat_model(x_adv, x, EPS[norm], norm)
    assert not x_adv.requires_grad
    assert not torch.equal(x_adv, x), "the attack did not perturb anything"


@pytest.mark.parametrize("norm", NORMS)
def test_attack_on_all_zero_and_all_one_images(norm: str) -> None:
    """Saturated images: the perturbation can only point inward, and must still respect the ball."""
    model = tiny_model().eval()
    x = torch.cat([torch.zeros(3, 1, 6, 6), torch.ones(3, 1, 6, 6)])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for attack in ATTACKS.values():
        torch.manual_seed(3)
        x_adv = attack(model, x, y, eps=EPS[norm], norm=norm)
        assert_in_threat_model(x_adv, x, EPS[norm], norm)
        assert (x_adv[:3] >= 0).all() and (x_adv[3:] <= 1).all()


def test_fgsm_linf_moves_interior_pixels_by_exactly_eps() -> None:
    model = tiny_model().eval()
    torch.manual_seed(4)
    x = 0.2 + 0.6 * torch.rand(6, 1, 6, 6)  # interior: x ± eps stays in [0, 1]
    y = torch.randint(0, 3, (6,))
    eps = 0.1
    delta = fgsm(model, x, y, eps=eps, norm="linf") - x
    moved = delta != 0
    assert moved.float().mean() > 0.9  # the gradient is almost never exactly zero
    assert torch.allclose(delta[moved].abs(), torch.full_like(delta[moved], eps), atol=1e-6)


def test_pgd_l2_reaches_the_sphere_from_interior() -> None:
    model = tiny_model().eval()
    torch.manual_seed(5)
    x = 0.3 + 0.4 * torch.rand(6, 1, 6, 6)
    y = torch.randint(0, 3, (6,))
    eps = 0.2  # small enough that the [0, 1] clamp never binds
    delta = (pgd(model, x, y, eps=eps, norm="l2", steps=10, step=0.1) - x).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((6,), eps), rtol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_project_and_random_init(norm: str) -> None:
    torch.manual_seed(6)
    x, _ = boundary_images(16)
    eps = EPS[norm]
    big = 5 * torch.randn_like(x)
    delta = project(big, x, eps, norm)
    assert_in_threat_model(x + delta, x, eps, norm)
    assert torch.allclose(project(delta, x, eps, norm), delta, atol=1e-6), "projection is not idempotent"
    x_mid = torch.full((16, 1, 6, 6), 0.5)
    inside = 0.01 * big / big.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # l2 norm 0.01, linf smaller
    assert torch.allclose(project(inside, x_mid, eps, norm), inside, atol=1e-7), \
        "a perturbation already inside the ball and the image range must not move"

    init = random_init(x, eps, norm)
    assert_in_threat_model(x + init, x, eps, norm)
    init = random_init(x_mid.repeat(4, 1, 1, 1), eps, norm).flatten(1)
    if norm == "linf":  # uniform in the cube: covers it, and differs across examples
        assert init.abs().max() > 0.9 * eps and init.min() < 0 < init.max()
    else:  # uniform in the ball: in 36 dimensions nearly all the mass is near the sphere
        assert init.norm(dim=1).median() > 0.9 * eps
    assert not torch.equal(init[0], init[1])


@pytest.mark.parametrize("norm", NORMS)
def test_training_pgd_with_zero_eps_returns_x(norm: str) -> None:
    model = tiny_model().train()
    x, y = boundary_images()
    for attack in (functools.partial(pgd, steps=3), fgsm, fgsm_rs, nfgsm):
        x_adv = attack(model, x, y, eps=0.0, norm=norm)
        assert torch.equal(x_adv, x)


# ---------------------------------------------------------------- no side effects on the model

@pytest.mark.parametrize("mode", ("train", "eval", "mixed"))
@pytest.mark.parametrize("bn_mode", BN_MODES)
@pytest.mark.parametrize("norm", NORMS)
def test_attacks_leave_the_model_untouched(mode: str, bn_mode: str, norm: str) -> None:
    model = tiny_model()
    set_mode(model, mode)
    prepare_grads(model)
    x, y = boundary_images()
    before = snapshot(model)
    for name, attack in {**ATTACKS, **TRAINING_ONLY}.items():
        attack(model, x, y, eps=EPS[norm], norm=norm, bn_mode=bn_mode)
        assert_same_snapshot(before, snapshot(model))
    assert not model.net[8].bias.requires_grad


def test_attack_mode_sets_crafting_mode_and_restores_it() -> None:
    model = tiny_model()
    set_mode(model, "mixed")
    prepare_grads(model)
    before = snapshot(model)
    x, _ = boundary_images()

    with attack_mode(model, "eval"):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
    assert_same_snapshot(before, snapshot(model))

    with attack_mode(model, "train"):
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert all(m.training for m in bns)
        assert not model.net[3].training, "bn_mode='train' must only switch BatchNorm, not Dropout"
        assert not any(p.requires_grad for p in model.parameters())
        mean_before = model.net[1].running_mean.clone()
        model(x)  # batch statistics are used, and update the running ones...
        assert not torch.equal(model.net[1].running_mean, mean_before)
    assert_same_snapshot(before, snapshot(model))  # ...which are rolled back


def test_attack_mode_restores_after_an_exception_and_rejects_bad_modes() -> None:
    model = tiny_model().train()
    prepare_grads(model)
    before = snapshot(model)
    x, _ = boundary_images()
    with pytest.raises(RuntimeError, match="boom"):
        with attack_mode(model, "train"):
            model(x)
            raise RuntimeError("boom")
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match="bn_mode"):
        with attack_mode(model, "frozen"):
            pass
    assert_same_snapshot(before, snapshot(model))


def test_bn_mode_changes_the_attack() -> None:
    """bn_mode is a real setting: with batch statistics the crafted images differ."""
    model = tiny_model().eval()
    x, y = boundary_images()
    torch.manual_seed(8)
    a = pgd(model, x, y, eps=0.3, steps=3, bn_mode="eval")
    torch.manual_seed(8)
    b = pgd(model, x, y, eps=0.3, steps=3, bn_mode="train")
    assert not torch.equal(a, b)


# ---------------------------------------------------------------- strength on a trained model

@pytest.fixture(scope="module")
def trained() -> tuple[NormalizedModel, TensorDataset]:
    """small_cnn trained naturally on digits for 3 epochs (~3 s on CPU); the first 128 validation
    images are returned for evaluation."""
    from advtune.trainables.data import load_splits

    splits = load_splits("digits", None, 0.2, 0)
    x, y = splits.train.tensors
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10, (0.5,), (0.5,))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    vx, vy = splits.val.tensors
    val = TensorDataset(vx[:128], vy[:128])
    with torch.no_grad():
        clean = (model(vx[:128]).argmax(1) == vy[:128]).float().mean()
    assert clean > 0.9, f"natural training failed (clean acc {clean:.3f}); the strength tests need a real model"
    return model, val


def fgsm_accuracy(model: nn.Module, val: TensorDataset, norm: str, eps: float) -> float:
    x, y = val.tensors
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x_adv = fgsm(model, x, y, eps, norm)
    with torch.no_grad():
        return float((ok & (model(x_adv).argmax(1) == y)).float().mean())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 0.2), ("l2", 1.0)])
def test_pgd_is_at_least_as_strong_as_fgsm(trained, norm: str, eps: float) -> None:
    model, val = trained
    res = evaluate_pgd(model, val, norm, eps, steps=10, restarts=1)
    assert isinstance(res, RobustResult) and res.n == len(val) and res.attack == "pgd-10-1"
    assert res.robust_acc <= res.clean_acc
    fgsm_acc = fgsm_accuracy(model, val, norm, eps)
    assert res.robust_acc <= fgsm_acc, f"PGD {res.robust_acc:.3f} weaker than FGSM {fgsm_acc:.3f}"
    assert res.robust_acc < res.clean_acc, "PGD found no adversarial example at all"


@pytest.mark.parametrize("norm,eps_grid", [("linf", (0.05, 0.1, 0.2)), ("l2", (0.5, 1.0, 2.0))])
def test_robust_accuracy_decreases_as_eps_grows(trained, norm: str, eps_grid: tuple[float, ...]) -> None:
    model, val = trained
    results = [evaluate_pgd(model, val, norm, eps, steps=10) for eps in eps_grid]
    accs = [r.robust_acc for r in results]
    assert len({r.clean_acc for r in results}) == 1, "clean accuracy must not depend on eps"
    assert all(a >= b for a, b in zip(accs, accs[1:])), f"robust accuracy not monotone in eps: {accs}"
    assert accs[0] > accs[-1]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_restarts_are_at_least_as_strong(trained, norm: str, eps: float) -> None:
    model, val = trained
    # one batch, so that the first restart draws exactly the single run's random start
    torch.manual_seed(0)
    single = evaluate_pgd(model, val, norm, eps, steps=5, restarts=1, batch_size=len(val))
    torch.manual_seed(0)
    multi = evaluate_pgd(model, val, norm, eps, steps=5, restarts=3, batch_size=len(val))
    assert multi.attack == "pgd-5-3" and multi.clean_acc == single.clean_acc
    assert multi.robust_acc <= single.robust_acc

    # per example, with pgd directly: every example fooled by one run stays fooled with restarts
    x, y = val.tensors
    torch.manual_seed(1)
    fooled_1 = model(pgd(model, x, y, eps, norm, steps=5, restarts=1, track_best=True)).argmax(1) != y
    torch.manual_seed(1)
    fooled_3 = model(pgd(model, x, y, eps, norm, steps=5, restarts=3, track_best=True)).argmax(1) != y
    assert (fooled_3 | ~fooled_1).all(), "an example fooled without restarts was not fooled with them"
    assert fooled_3.sum() >= fooled_1.sum()


def test_track_best_keeps_every_fooling_iterate(trained) -> None:
    """Same random start and trajectory: the tracked result fools every example the final iterate
    fools (it keeps the first fooling iterate), so it is at least as strong."""
    model, val = trained
    x, y = val.tensors
    torch.manual_seed(2)
    last = model(pgd(model, x, y, 0.1, "linf", steps=5)).argmax(1) != y
    torch.manual_seed(2)
    best = model(pgd(model, x, y, 0.1, "linf", steps=5, track_best=True)).argmax(1) != y
    assert (best | ~last).all()


def test_evaluate_pgd_is_reproducible_and_leaves_caller_rng_and_mode(trained) -> None:
    model, val = trained
    model.train()
    try:
        torch.manual_seed(123)
        rng = torch.get_rng_state()
        bn = model.net.block1[0][1]
        stats = (bn.running_mean.clone(), bn.running_var.clone())
        a = evaluate_pgd(model, val, "linf", 0.1, steps=5, batch_size=64, seed=7)
        assert torch.equal(torch.get_rng_state(), rng), "evaluate_pgd moved the caller's RNG stream"
        assert model.training, "evaluate_pgd must restore the model's train mode"
        assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
        b = evaluate_pgd(model, val, "linf", 0.1, steps=5, batch_size=64, seed=7)
        assert a == b
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        model.eval()


# ---------------------------------------------------------------- N-FGSM (de Jorge et al. 2022)

def _interior_images(n: int = 64, side: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0.4, 0.6]: N-FGSM at eps 0.05 reaches at most 3·eps = 0.15, so no [0,1] clamp binds."""
    g = torch.Generator().manual_seed(3)
    return 0.4 + 0.2 * torch.rand(n, 1, side, side, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("k", [2.0, 1.0])
def test_nfgsm_linf_noise_is_uniform_in_k_eps_and_the_step_is_alpha_eps(k: float) -> None:
    model, (x, y), eps = tiny_model().eval(), _interior_images(), 0.05
    torch.manual_seed(0)
    noisy = nfgsm(model, x, y, eps, "linf", noise=k, step=0.0)  # the noise alone
    torch.manual_seed(0)
    out = nfgsm(model, x, y, eps, "linf", noise=k, step=1.0)  # same noise, then the step
    noise, step = noisy - x, out - noisy
    assert noise.abs().max() <= k * eps + 1e-6 and noise.abs().max() > 0.95 * k * eps
    assert noise.abs().mean() == pytest.approx(k * eps / 2, rel=0.05)  # |U(-a, a)| has mean a/2
    assert noise.mean().abs() < 0.05 * k * eps
    assert torch.allclose(step.abs(), torch.full_like(step, eps), atol=1e-6)  # every pixel moves by alpha = eps
    # the step ascends the loss at the noisy point: its sign is the input gradient's
    xn = noisy.clone().requires_grad_(True)
    F.cross_entropy(model(xn), y, reduction="sum").backward()
    moved = xn.grad != 0
    assert torch.equal(step.sign()[moved], xn.grad.sign()[moved])
    # no projection: the perturbation leaves the eps-ball (up to (k + 1)·eps), and stays in [0, 1]
    assert (out - x).abs().max() > 1.5 * eps and (out - x).abs().max() <= (k + 1) * eps + 1e-6


def test_nfgsm_l2_noise_radius_and_step_length() -> None:
    model, (x, y), eps = tiny_model().eval(), _interior_images(), 0.05
    torch.manual_seed(0)
    noisy = nfgsm(model, x, y, eps, "l2", noise=2.0, step=0.0)
    torch.manual_seed(0)
    out = nfgsm(model, x, y, eps, "l2", noise=2.0, step=0.5)
    radii = (noisy - x).flatten(1).norm(dim=1)
    assert (radii <= 2 * eps * (1 + 1e-5)).all() and radii.max() > 1.8 * eps  # uniform in the ball: mass near its edge
    assert torch.allclose((out - noisy).flatten(1).norm(dim=1), torch.full((x.shape[0],), 0.5 * eps), rtol=1e-4)


def test_nfgsm_clamps_to_the_image_range() -> None:
    model = tiny_model().eval()
    x, y = boundary_images()
    out = nfgsm(model, x, y, 0.3, "linf")
    assert out.min() >= 0 and out.max() <= 1 and (out - x).abs().max() <= 0.9 + 1e-6
