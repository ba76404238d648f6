"""Tests for trainables.activations (swapping every ReLU, module or functional) and
trainables.models (shapes, normalization as the first layer, head / last block / head replacement)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtune.trainables.activations import ParametricSoftplus, count_relu_calls, make_activation, swap_activations
from advtune.trainables.models import Normalize, NormalizedModel, build_model, head, last_block, replace_head

SMOOTH = ("silu", "gelu", "softplus", "elu", "psoftplus")
CIFAR = ((3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3)


@pytest.fixture(scope="module")
def base_models() -> dict[str, NormalizedModel]:
    torch.manual_seed(0)
    return {name: build_model(name, *CIFAR).eval() for name in ("tv:resnet18", "preact_resnet18")}


@pytest.fixture(scope="module")
def cifar_batch() -> torch.Tensor:
    """16×16 rather than 32×32 keeps PreActResNet-18 fast on CPU (both nets pool adaptively)."""
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def relu_modules(model: nn.Module) -> int:
    return sum(isinstance(m, nn.ReLU) for m in model.modules())


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


class FunctionalNet(nn.Module):
    """ReLUs only as functional calls, in six spellings (in-place ones with their result ignored,
    as user code does); with ``act`` the same net uses ``act`` instead."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act
        if act is None:
            x = F.relu(self.conv1(x))
            x = torch.relu(self.conv2(x)).flatten(1)
            x = self.fc1(x).relu() + 0.1
            F.relu(x, inplace=True)
            x = x - 0.2
            x.relu_()
            x = torch.relu_(x * 1.5 - 0.1)
        else:
            x = act(self.conv1(x))
            x = act(self.conv2(x)).flatten(1)
            x = act(self.fc1(x)) + 0.1
            x = act(x)
            x = act(x - 0.2)
            x = act(x * 1.5 - 0.1)
        return self.fc2(x)


def functional_model(act: nn.Module | None = None) -> NormalizedModel:
    torch.manual_seed(2)
    return NormalizedModel(Normalize((0.5,), (0.25,)), FunctionalNet(act))


# ---------------------------------------------------------------- swapping ReLUs

@pytest.mark.parametrize("act", SMOOTH)
@pytest.mark.parametrize("arch", ("tv:resnet18", "preact_resnet18"))
def test_swap_removes_every_relu(base_models, cifar_batch, arch: str, act: str) -> None:
    original = base_models[arch]
    model = copy.deepcopy(original).train()
    n_modules = relu_modules(model)
    calls_before = count_relu_calls(model.eval(), cifar_batch)
    # (modules, calls): torchvision's BasicBlock calls its one ReLU module twice
    assert (n_modules, calls_before) == {"tv:resnet18": (9, 17), "preact_resnet18": (17, 17)}[arch]
    model.train()
    buffers = bn_buffers(model)

    assert swap_activations(model, act, cifar_batch) == n_modules
    assert relu_modules(model) == 0, "an nn.ReLU module is left"
    assert model.training, "swap_activations must restore the train mode"
    assert all(torch.equal(v, model.get_buffer(k)) for k, v in buffers.items()), "the probe changed BN stats"
    model.eval()
    assert count_relu_calls(model, cifar_batch) == 0, "a ReLU is still called at run time"
    expected = type(make_activation(act))
    assert sum(isinstance(m, expected) for m in model.modules()) == n_modules
    with torch.no_grad():
        out, ref = model(cifar_batch), original(cifar_batch)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref), "the swap did not change the function"
    assert all(torch.equal(p, model.get_parameter(k)) for k, p in original.named_parameters()), \
        "the swap must keep the weights"


@pytest.mark.parametrize("act", SMOOTH)
def test_swap_handles_functional_relu(act: str) -> None:
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    model = functional_model().eval()
    with torch.no_grad():
        before = model(x)
    assert count_relu_calls(model, x) == 6
    assert swap_activations(model, act, x) == 0  # no module to replace: the interceptor does it
    assert model.functional_act is not None
    assert count_relu_calls(model, x) == 0, "a functional ReLU call remains"
    reference = functional_model(make_activation(act)).eval()  # same weights, activation written out
    with torch.no_grad():
        after, expected = model(x), reference(x)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, expected, atol=1e-6), "functional ReLUs were not replaced by the activation"


def test_swap_to_relu_is_a_no_op(base_models, cifar_batch) -> None:
    model = copy.deepcopy(base_models["preact_resnet18"])
    n = relu_modules(model)
    assert swap_activations(model, "relu", cifar_batch) == 0
    assert relu_modules(model) == n and model.functional_act is None
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        make_activation("swish")


def test_psoftplus_with_large_beta_is_close_to_relu(base_models, cifar_batch) -> None:
    x = torch.linspace(-3, 3, 601)
    for beta in (10.0, 100.0, 1e4):
        act = ParametricSoftplus(beta)
        y = act(x)
        assert (y - F.relu(x)).abs().max() <= math.log(2) / beta * (1 + 1e-4)
        assert (y - F.relu(x)).min() >= -1e-6, "softplus lies above ReLU (up to rounding)"
    assert ParametricSoftplus(10.0)(torch.zeros(1)).item() == pytest.approx(math.log(2) / 10)

    original = base_models["preact_resnet18"]
    model = copy.deepcopy(original)
    swap_activations(model, "psoftplus", cifar_batch)
    with torch.no_grad():
        ref = original(cifar_batch)
        smooth = model(cifar_batch)
        for m in model.modules():
            if isinstance(m, ParametricSoftplus):
                m.log_beta.fill_(math.log(1e5))
        sharp = model(cifar_batch)
    scale = ref.abs().max()
    assert (smooth - ref).abs().max() > 1e-3 * scale
    assert (sharp - ref).abs().max() < 1e-3 * scale, "psoftplus with a large beta should match ReLU"
    assert (sharp - ref).abs().max() < (smooth - ref).abs().max() / 10


def test_gradients_reach_psoftplus_beta(base_models, cifar_batch) -> None:
    model = copy.deepcopy(base_models["preact_resnet18"]).train()
    swap_activations(model, "psoftplus", cifar_batch)
    acts = [m for m in model.modules() if isinstance(m, ParametricSoftplus)]
    assert len(acts) == 17
    param_ids = {id(p) for p in model.parameters()}
    assert all(id(a.log_beta) in param_ids for a in acts), "beta must be a parameter the optimizer sees"
    F.cross_entropy(model(cifar_batch), torch.tensor([1, 2])).backward()
    grads = [a.log_beta.grad for a in acts]
    assert all(g is not None and torch.isfinite(g) for g in grads)
    assert sum(bool(g != 0) for g in grads) == len(acts)

    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    fmodel = functional_model()
    swap_activations(fmodel, "psoftplus", x)
    assert any(p is fmodel.functional_act.log_beta for p in fmodel.parameters())
    F.cross_entropy(fmodel(x), torch.tensor([0, 1, 2, 0])).backward()
    g = fmodel.functional_act.log_beta.grad
    assert g is not None and g != 0 and torch.isfinite(g)


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 8, 8)), ("small_cnn", (1, 28, 28)),
                                        ("preact_resnet18", (3, 32, 32)), ("wrn-16-2", (3, 32, 32))])
def test_output_shapes_and_normalization_first(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(5)
    c = shape[0]
    mean, std = tuple(0.1 * (i + 1) for i in range(c)), tuple(0.2 + 0.1 * i for i in range(c))
    model = build_model(name, shape, 7, mean, std).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        out = model(x)
        by_hand = model.net((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1))
    assert out.shape == (3, 7)
    assert torch.allclose(out, by_hand, atol=1e-5), "normalization must be the model's first layer"
    assert head(model).out_features == 7


@pytest.mark.parametrize("arch,head_name,block_name", [("tv:resnet18", "fc", "layer4"),
                                                       ("preact_resnet18", "linear", "layer4"),
                                                       ("wrn-16-2", "fc", "block3")])
def test_head_and_last_block(base_models, arch: str, head_name: str, block_name: str) -> None:
    model = base_models[arch] if arch in base_models else build_model(arch, *CIFAR)
    assert head(model) is getattr(model.net, head_name)
    assert isinstance(head(model), nn.Linear)
    assert last_block(model) is getattr(model.net, block_name)
    assert head(model.net) is head(model) and last_block(model.net) is last_block(model)


def test_replace_head_changes_the_class_count(cifar_batch) -> None:
    model = build_model("tv:resnet18", (3, 32, 32), 1000, (0.5,) * 3, (0.5,) * 3).eval()
    old = head(model)
    assert old.out_features == 1000
    assert replace_head(model.net, 1000) is False and head(model) is old
    assert replace_head(model.net, 5) is True
    new = head(model)
    assert new is model.net.fc and new.out_features == 5 and new.in_features == old.in_features
    assert new.bias is not None
    with torch.no_grad():
        assert model(cifar_batch).shape == (2, 5)

    preact = build_model("preact_resnet18", *CIFAR).eval()
    body = copy.deepcopy(preact.net.layer1.state_dict())
    assert replace_head(preact.net, 100) is True
    assert preact.net.linear.out_features == 100
    assert all(torch.equal(v, preact.net.layer1.state_dict()[k]) for k, v in body.items()), \
        "replacing the head must keep the body"
    with torch.no_grad():
        assert preact(cifar_batch).shape == (2, 100)
