"""Smooth activations for adversarial training (Xie et al. 2020, "Smooth Adversarial Training").

:func:`swap_activations` replaces every ReLU of a (pretrained) model: ``nn.ReLU`` modules are
replaced in place, and functional uses (``F.relu``, ``torch.relu``, ``x.relu_()``, as in some
torchvision models) are intercepted during the forward pass with a ``TorchFunctionMode``, which is
only installed when a probe forward pass shows the model makes such calls.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ParametricSoftplus", "make_activation", "swap_activations", "intercept_relu", "count_relu_calls"]


class ParametricSoftplus(nn.Module):
    """``softplus(beta·x)/beta`` with a learnable ``beta`` (init 10: close to ReLU, but smooth)."""

    def __init__(self, beta: float = 10.0) -> None:
        super().__init__()
        self.log_beta = nn.Parameter(torch.tensor(float(beta)).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.log_beta.exp()
        return F.softplus(x * beta) / beta


def make_activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    if name == "softplus":
        return nn.Softplus(beta=10.0)  # Xie et al.: beta=10 keeps the pretrained ReLU's scale
    if name == "elu":
        return nn.ELU()
    if name == "psoftplus":
        return ParametricSoftplus()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; choose relu, silu, gelu, softplus, elu or psoftplus")


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_INPLACE = {torch.relu_, torch.Tensor.relu_}


class _ReluInterceptor(TorchFunctionMode):
    def __init__(self, act: nn.Module | None) -> None:
        super().__init__()
        self.act, self.calls = act, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            self.calls += 1
            if self.act is not None:
                inplace = func in _INPLACE or kwargs.get("inplace") or (func is F.relu and args[1:2] == (True,))
                if inplace:  # the caller may ignore the result (`x.relu_()`), so write it into x
                    return args[0].copy_(self.act(args[0].clone()))
                return self.act(args[0])
        return func(*args, **kwargs)


@contextlib.contextmanager
def intercept_relu(act: nn.Module) -> Iterator[None]:
    """Route every functional ReLU call inside the block to ``act``."""
    with _ReluInterceptor(act):
        yield


def count_relu_calls(model: nn.Module, x: torch.Tensor) -> int:
    """How many ReLU calls (module or functional) one forward pass of ``model`` makes."""
    mode = _ReluInterceptor(None)
    with torch.no_grad(), mode:
        model(x)
    return mode.calls


def swap_activations(model: nn.Module, name: str, example: torch.Tensor) -> int:
    """Replace every ReLU of ``model`` (a NormalizedModel) by activation ``name``; returns the
    number of modules replaced. ``example`` is one input batch for the probe forward pass."""
    if name == "relu":
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, make_activation(name))
                swapped += 1
    was_training = model.training
    model.eval()
    if count_relu_calls(model, example) > 0:
        model.functional_act = make_activation(name)
    model.train(was_training)
    return swapped
